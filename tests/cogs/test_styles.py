from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from PIL import Image

from bot.engine.adapters import StyleAdapters
from bot.engine.pipelines import Pipelines
from bot.styles import TEMPLATE_MAX_CHARS, Style, StyleBook
from tests.cogs.test_generate import ephemeral_reply, result
from tests.fakediscord import FakeDiscord
from tests.support.runners import RecordingRunner


@pytest.fixture
def with_styles(pipes: Pipelines, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> StyleBook:
    """Template-only styles (the adapter tests cover LoRAs), one with an example image."""
    example = tmp_path / "ink.png"
    Image.new("RGB", (16, 16), (20, 20, 20)).save(example)
    book = StyleBook(
        [
            Style(name="ink", description="Black ink", template="ink drawing of {prompt}", example=example),
            Style(name="oil", description="Oil painting", template="{prompt}, oil on canvas"),
        ]
    )
    monkeypatch.setattr(pipes, "styles", StyleAdapters(None, book))
    return book


async def test_styles_lists_each_preset_with_its_example(fake: FakeDiscord, start_bot, with_styles) -> None:
    await start_bot()
    listing = await fake.run_command(fake.add_user("ada"), "styles")
    await fake.wait_for(lambda: listing.original is not None)
    assert listing.original.ephemeral
    assert [embed["title"] for embed in listing.original.embeds] == ["ink", "oil"]
    assert listing.original.embeds[0]["fields"][0]["value"] == "ink drawing of …"
    assert [attachment["filename"] for attachment in listing.original.attachments] == ["ink.png"]


async def test_more_styles_than_one_message_holds_point_to_the_search(
    fake: FakeDiscord, start_bot, pipes: Pipelines, monkeypatch: pytest.MonkeyPatch
) -> None:
    long_template = "{prompt}, " + "x" * (TEMPLATE_MAX_CHARS - len("{prompt}, "))
    book = StyleBook([Style(name=f"s{n}", description="d" * 100, template=long_template) for n in range(12)])
    monkeypatch.setattr(pipes, "styles", StyleAdapters(None, book))
    await start_bot()
    listing = await fake.run_command(fake.add_user("ada"), "styles")
    await fake.wait_for(lambda: listing.original is not None)
    assert len(listing.original.embeds) == 10  # the fake checks the body against Discord's schema and limits
    assert listing.original.content == "…and 2 more: type in the `style` option to search them all."


async def test_a_style_is_applied_and_an_unknown_one_is_refused_kindly(
    fake: FakeDiscord, start_bot, with_styles
) -> None:
    await start_bot()
    user = fake.add_user("ada")
    styled = await fake.run_command(user, "imagine", {"prompt": "a fox", "style": "ink"})
    assert (await result(fake, styled)).attachments
    refused = await fake.run_command(user, "imagine", {"prompt": "a fox", "style": "neon"})
    assert "There is no style called `neon`. Styles: ink, oil." in await ephemeral_reply(fake, refused)


@pytest.mark.parametrize("command", ["imagine", "remix", "inpaint"])
async def test_the_style_option_suggests_matching_styles(fake: FakeDiscord, start_bot, with_styles, command) -> None:
    await start_bot()
    user = fake.add_user("ada")
    typing = await fake.autocomplete(user, command, {"prompt": "a fox", "style": "OIL"}, focused="style")
    await fake.wait_for(lambda: typing.choices is not None)
    assert typing.choices == [{"name": "oil: Oil painting", "value": "oil"}]
    typing = await fake.autocomplete(user, command, {"style": ""}, focused="style")
    await fake.wait_for(lambda: typing.choices is not None)
    assert [choice["value"] for choice in typing.choices] == ["ink", "oil"]


async def test_without_styles_the_command_says_so(fake: FakeDiscord, start_bot) -> None:
    await start_bot()
    listing = await fake.run_command(fake.add_user("ada"), "styles")
    assert await ephemeral_reply(fake, listing) == "This bot has no styles set up."


class StyleRecorder(RecordingRunner):
    def __init__(self, pipes: Pipelines) -> None:
        super().__init__(pipes)
        self.styles: list[str | None] = []

    def __call__(self, requests, should_stop):
        self.styles += [request.style for request in requests]
        return super().__call__(requests, should_stop)


async def test_a_queued_styled_job_keeps_its_style_across_a_restart(
    fake: FakeDiscord, start_bot, pipes: Pipelines, with_styles
) -> None:
    held = StyleRecorder(pipes)
    held.gate.clear()
    bot = await start_bot(runner=held, max_batch_images=1)
    ada, bo = fake.add_user("ada"), fake.add_user("bo")
    await fake.run_command(ada, "imagine", {"prompt": "first", "style": "oil"})
    waiting = await fake.run_command(bo, "imagine", {"prompt": "second", "style": "ink"})
    await fake.wait_for(lambda: held.waiting.is_set() and waiting.original is not None and waiting.original.content)
    closing = asyncio.create_task(bot.close())
    await asyncio.sleep(0.2)
    held.gate.set()
    await closing
    resumed = StyleRecorder(pipes)
    await start_bot(runner=resumed)
    assert (await result(fake, waiting)).attachments
    assert held.styles == ["oil"] and resumed.styles == ["ink"]
