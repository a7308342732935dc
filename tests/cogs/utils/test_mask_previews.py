"""/inpaint with `mask_prompt`, end to end against the fake Discord, with a tiny random-weight CLIPSeg."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from PIL import Image

from bot.engine import text_masks
from bot.engine.pipelines import Pipelines
from bot.engine.text_masks import check_coverage, grow, invert
from bot.errors import InvalidRequest
from tests.cogs.test_generate import ephemeral_reply, photo, result, upload
from tests.cogs.test_guild_settings import settings_reply
from tests.fakediscord import FakeDiscord, FakeInteraction, FakeMessage
from tests.support.runners import RecordingRunner


def tinted(message: FakeMessage) -> np.ndarray:
    """Where the preview shows the mask: pixels pushed towards the tint colour."""
    [image] = message.images()
    pixels = np.asarray(image.convert("RGB"), dtype=np.int16)
    return (pixels[..., 0] - pixels[..., 1]) > 60


def button(message: FakeMessage, action: str) -> str:
    [custom_id] = [custom_id for custom_id in message.custom_ids() if custom_id.startswith(f"lcm:mask:{action}:")]
    return custom_id


async def preview_for_reply(fake: FakeDiscord, user: int, phrase: str = "the sky") -> FakeInteraction:
    grey = Image.new("RGB", (256, 256), (128, 128, 128))  # no red: any red in the preview is the tint
    return await fake.run_command(
        user, "inpaint", {"image": upload(fake, grey), "prompt": "a storm", "mask_prompt": phrase}
    )


async def preview_for(fake: FakeDiscord, user: int, phrase: str = "the sky") -> FakeInteraction:
    asked = await preview_for_reply(fake, user, phrase)
    await fake.wait_for(lambda: asked.original is not None and asked.original.attachments, timeout=60)
    return asked


async def test_the_preview_shows_the_mask_and_its_buttons(fake: FakeDiscord, start_bot) -> None:
    await start_bot()
    asked = await preview_for(fake, fake.add_user("ada"))
    message = asked.original
    assert message.ephemeral and "“the sky” selects" in message.content
    assert [custom_id.split(":")[2] for custom_id in message.custom_ids()] == ["confirm", "invert", "grow", "cancel"]
    assert message.attachments[0]["filename"] == "mask-preview.png"


async def test_invert_and_grow_change_the_mask(fake: FakeDiscord, start_bot) -> None:
    await start_bot()
    user = fake.add_user("ada")
    asked = await preview_for(fake, user)
    before = tinted(asked.original)
    await fake.click(user, asked.original, button(asked.original, "invert"))
    await fake.wait_for(lambda: not np.array_equal(tinted(asked.original), before))
    assert np.array_equal(tinted(asked.original), ~before)
    inverted = tinted(asked.original)
    await fake.click(user, asked.original, button(asked.original, "grow"))
    await fake.wait_for(lambda: not np.array_equal(tinted(asked.original), inverted))
    assert tinted(asked.original).sum() > inverted.sum()


async def test_confirm_queues_the_inpaint_and_cancel_queues_nothing(fake: FakeDiscord, start_bot) -> None:
    await start_bot()
    user = fake.add_user("ada")
    first = await preview_for(fake, user)
    confirmed = await fake.click(user, first.original, button(first.original, "confirm"))
    delivered = await result(fake, confirmed)
    assert delivered.attachments and "Mask: “the sky”" in delivered.content
    second = await preview_for(fake, user, "the ground")
    await fake.click(user, second.original, button(second.original, "cancel"))
    await fake.wait_for(lambda: second.original.content.startswith("Cancelled"))
    assert not second.original.attachments and not second.original.custom_ids()


async def test_only_the_author_can_press_and_a_used_preview_is_gone(fake: FakeDiscord, start_bot) -> None:
    await start_bot()
    ada, bo = fake.add_user("ada"), fake.add_user("bo")
    asked = await preview_for(fake, ada)
    confirm = button(asked.original, "confirm")
    refused = await fake.click(bo, asked.original, confirm)
    assert "Only the person who asked" in await ephemeral_reply(fake, refused)
    await result(fake, await fake.click(ada, asked.original, confirm))
    again = await fake.click(ada, asked.original, confirm)
    assert "expired" in await ephemeral_reply(fake, again)


async def test_a_mask_and_a_mask_prompt_together_are_refused(fake: FakeDiscord, start_bot) -> None:
    await start_bot()
    user = fake.add_user("ada")
    image, mask = upload(fake, photo()), upload(fake, Image.new("L", (640, 480), 255), name="mask.png")
    asked = await fake.run_command(
        user, "inpaint", {"image": image, "mask": mask, "prompt": "a storm", "mask_prompt": "the sky"}
    )
    assert "either a `mask` or a `mask_prompt`" in await ephemeral_reply(fake, asked)


async def test_confirming_an_empty_or_full_mask_is_refused_and_queues_nothing(
    fake: FakeDiscord, start_bot, pipes: Pipelines, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(text_masks, "THRESHOLD", 2.0)  # no score reaches it: the mask comes out empty
    runner = RecordingRunner(pipes)
    await start_bot(runner=runner)
    user = fake.add_user("ada")
    asked = await preview_for(fake, user)
    assert "The mask selects nothing" in asked.original.content
    refused = await fake.click(user, asked.original, button(asked.original, "confirm"))
    assert "The mask selects nothing" in await ephemeral_reply(fake, refused)
    await fake.click(user, asked.original, button(asked.original, "invert"))
    await fake.wait_for(lambda: "whole picture" in asked.original.content)
    refused = await fake.click(user, asked.original, button(asked.original, "confirm"))
    assert "The mask selects the whole picture" in await ephemeral_reply(fake, refused)
    await fake.click(user, asked.original, button(asked.original, "cancel"))  # the preview was kept until now
    await fake.wait_for(lambda: asked.original.content.startswith("Cancelled"))
    assert runner.batches == []


async def test_the_mask_is_made_on_the_thread_that_runs_the_pipeline(
    fake: FakeDiscord, start_bot, pipes: Pipelines, monkeypatch: pytest.MonkeyPatch
) -> None:
    threads: dict[str, str] = {}

    class ThreadRecorder(RecordingRunner):
        def __call__(self, requests, should_stop):
            threads["pipeline"] = threading.current_thread().name
            return super().__call__(requests, should_stop)

    bot = await start_bot(runner=ThreadRecorder(pipes))
    make_mask = bot.engine.masker.mask

    def recording_mask(image, phrase):
        threads["mask"] = threading.current_thread().name
        return make_mask(image, phrase)

    monkeypatch.setattr(bot.engine.masker, "mask", recording_mask)
    user = fake.add_user("ada")
    asked = await preview_for(fake, user)
    await result(fake, await fake.click(user, asked.original, button(asked.original, "confirm")))
    assert threads["mask"] == threads["pipeline"] != threading.main_thread().name


async def test_a_mask_model_that_cannot_load_leaves_a_way_out(fake: FakeDiscord, start_bot) -> None:
    await start_bot(mask_model="/nowhere/clipseg")
    asked = await preview_for_reply(fake, fake.add_user("ada"))
    assert "Attach a `mask` instead" in await ephemeral_reply(fake, asked)


def test_an_empty_or_full_mask_is_refused_with_a_way_out() -> None:
    empty, full = Image.new("L", (64, 64), 0), Image.new("L", (64, 64), 255)
    with pytest.raises(InvalidRequest, match="selects nothing"):
        check_coverage(empty)
    with pytest.raises(InvalidRequest, match="whole picture"):
        check_coverage(full)
    assert np.array_equal(np.asarray(invert(full)), np.asarray(empty))
    dot = Image.new("L", (64, 64), 0)
    dot.putpixel((32, 32), 255)
    assert np.asarray(grow(dot)).astype(bool).sum() > 1
    check_coverage(grow(dot))


async def test_the_server_rules_refuse_before_any_mask_is_made(fake: FakeDiscord, start_bot, monkeypatch) -> None:
    bot = await start_bot()
    masks: list[str] = []
    make_mask = bot.engine.masker.mask
    monkeypatch.setattr(
        bot.engine.masker, "mask", lambda image, phrase: masks.append(phrase) or make_mask(image, phrase)
    )
    manager, member = fake.add_user("manager", moderator=True), fake.add_user("member")
    await settings_reply(fake, await fake.run_command(manager, "settings blocklist", {"add": "storm"}))
    grey = Image.new("RGB", (256, 256), (128, 128, 128))
    refused = await fake.run_command(
        member, "inpaint", {"image": upload(fake, grey), "prompt": "a storm", "mask_prompt": "the sky"}
    )
    assert "does not allow “storm”" in await ephemeral_reply(fake, refused)
    assert masks == []
