from __future__ import annotations

import discord
import pytest
from PIL import Image

from bot.engine.executor import JobResult
from bot.engine.requests import Kind, check_inputs
from bot.styles import Style, StyleBook
from cogs.utils.results import ResultState, build_embed, status_text


def job_result(seeds: tuple[int, ...]) -> JobResult:
    return JobResult(images=[b""] * len(seeds), seeds=seeds, queue_wait=1.25, generation_time=0.5, batch_images=2)


def test_embed_round_trips_to_the_state_buttons_need(buckets) -> None:
    request = check_inputs(
        Kind.IMAGINE,
        "a fox `with` **markdown**",
        buckets=buckets,
        negative="blur",
        aspect="9:16",
        seed=9,
        count=3,
        steps=6,
        guidance=1.5,
    )
    embed = build_embed(request, job_result(request.seeds), "alice")
    state = ResultState.from_embed(discord.Embed.from_dict(embed.to_dict()))
    assert state == ResultState(Kind.IMAGINE, request.prompt, "blur", 6, 1.5, "9:16", (9, 10, 11))
    assert len(embed) <= 6000


def test_remix_embed_shows_strength_and_steps_run(buckets) -> None:
    image = Image.new("RGB", buckets["1:1"])
    request = check_inputs(Kind.REMIX, "x", buckets=buckets, init_image=image, strength=0.3, steps=4)
    fields = {field.name: field.value for field in build_embed(request, job_result(request.seeds), "alice").fields}
    assert fields["Strength"] == "0.3" and fields["Steps"] == "4 (1 run)"
    assert ResultState.from_embed(build_embed(request, job_result(request.seeds), "alice")).steps == 4


def test_foreign_embed_is_refused() -> None:
    with pytest.raises((KeyError, ValueError)):
        ResultState.from_embed(discord.Embed(title="hello", description="world"))


def test_status_text() -> None:
    assert status_text(3, 12.4) == "Queued: position 3, about 10 s."
    assert status_text(3, 13.0) == "Queued: position 3, about 15 s."
    assert status_text(9, 150) == "Queued: position 9, about 2 min."
    assert status_text(0, 2.0) == "Generating… a few seconds left."


def test_a_style_is_shown_and_kept_for_the_buttons(buckets) -> None:
    book = StyleBook([Style(name="ink", description="Ink", template="ink drawing of {prompt}")])
    request = check_inputs(Kind.IMAGINE, "a fox", buckets=buckets, seed=4, style="ink", styles=book)
    embed = build_embed(request, job_result(request.seeds), "alice")
    assert ResultState.from_embed(discord.Embed.from_dict(embed.to_dict())).style == "ink"
    assert embed.description == "a fox"  # the user's prompt; the template is applied on the GPU thread
