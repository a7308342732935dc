from __future__ import annotations

import math

import pytest
from PIL import Image

from bot.engine.requests import (
    ASPECTS_AT_1024,
    SEED_MAX,
    Kind,
    bucket_sizes,
    check_inputs,
    denoising_steps,
    nearest_aspect,
    scheduled_steps,
)
from bot.errors import InvalidRequest


def test_buckets_at_1024_are_the_sdxl_sizes() -> None:
    assert bucket_sizes(1024) == ASPECTS_AT_1024


@pytest.mark.parametrize("base", [256, 512, 768, 1536])
def test_scaled_buckets_are_multiples_of_32_and_keep_the_aspect(base: int) -> None:
    for name, (width, height) in bucket_sizes(base).items():
        reference = ASPECTS_AT_1024[name][0] / ASPECTS_AT_1024[name][1]
        assert width % 32 == 0 and height % 32 == 0
        assert abs(width / height / reference - 1) < 0.05
        assert abs(width * height / base**2 - 1) < 0.2


def test_nearest_aspect_picks_by_ratio() -> None:
    buckets = bucket_sizes(1024)
    assert nearest_aspect(1920, 1080, buckets) == "16:9"
    assert nearest_aspect(1000, 1010, buckets) == "1:1"
    assert nearest_aspect(600, 900, buckets) == "2:3"


@pytest.mark.parametrize("steps", range(1, 9))
def test_every_allowed_steps_and_strength_pair_runs_at_least_one_step(steps: int) -> None:
    for hundredths in range(5, 101):
        strength = hundredths / 100
        scheduled = scheduled_steps(steps, strength)
        assert int(scheduled * strength) >= 1
        assert scheduled <= 50  # LCMScheduler refuses more than its original 50-step schedule
        if int(steps * strength) >= 1:
            assert scheduled == steps  # the user's schedule is kept whenever it already works
    assert denoising_steps(4, 0.6) == 2
    assert denoising_steps(4, 0.05) == 1


def test_defaults_and_one_seed_per_image(buckets: dict[str, tuple[int, int]]) -> None:
    request = check_inputs(Kind.IMAGINE, "  a fox  ", buckets=buckets, seed=10, count=3)
    assert request.prompt == "a fox"
    assert (request.steps, request.guidance, request.strength, request.aspect) == (4, 1.0, 1.0, "1:1")
    assert request.seeds == (10, 11, 12)
    assert (request.width, request.height) == buckets["1:1"]


def test_seed_is_random_when_absent_and_wraps_at_the_top(buckets: dict[str, tuple[int, int]]) -> None:
    seeds = {check_inputs(Kind.IMAGINE, "x", buckets=buckets).seeds[0] for _ in range(20)}
    assert len(seeds) > 15
    assert check_inputs(Kind.IMAGINE, "x", buckets=buckets, seed=SEED_MAX, count=2).seeds == (SEED_MAX, 0)


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"prompt": "   "}, "prompt"),
        ({"prompt": "x" * 1001}, "prompt"),
        ({"negative": "y" * 1001}, "negative"),
        ({"steps": 0}, "steps"),
        ({"steps": 9}, "steps"),
        ({"guidance": -0.1}, "guidance"),
        ({"guidance": 2.5}, "guidance"),
        ({"guidance": math.nan}, "guidance"),
        ({"count": 5}, "count"),
        ({"count": 0}, "count"),
        ({"seed": -1}, "seed"),
        ({"seed": SEED_MAX + 1}, "seed"),
        ({"aspect": "5:4"}, "aspect"),
        ({"steps": True}, "steps"),
    ],
)
def test_bad_options_name_the_option(options: dict, named: str, buckets: dict[str, tuple[int, int]]) -> None:
    prompt = options.pop("prompt", "a fox")
    with pytest.raises(InvalidRequest, match=f"`{named}`"):
        check_inputs(Kind.IMAGINE, prompt, buckets=buckets, **options)


def test_strength_is_checked_for_remix(buckets: dict[str, tuple[int, int]]) -> None:
    image = Image.new("RGB", buckets["1:1"])
    for strength in (0.0, 0.04, 1.01):
        with pytest.raises(InvalidRequest, match="`strength`"):
            check_inputs(Kind.REMIX, "x", buckets=buckets, init_image=image, strength=strength)
    assert check_inputs(Kind.REMIX, "x", buckets=buckets, init_image=image).strength == 0.6


def test_image_tasks_take_their_size_from_the_image(buckets: dict[str, tuple[int, int]]) -> None:
    image = Image.new("RGB", buckets["9:16"])
    mask = Image.new("L", buckets["9:16"], 255)
    request = check_inputs(Kind.INPAINT, "x", buckets=buckets, init_image=image, mask=mask)
    assert (request.aspect, request.width, request.height, request.strength) == ("9:16", *buckets["9:16"], 1.0)
    with pytest.raises(InvalidRequest, match="`inpaint` needs a `mask`"):
        check_inputs(Kind.INPAINT, "x", buckets=buckets, init_image=image)
    with pytest.raises(InvalidRequest, match="needs an `image`"):
        check_inputs(Kind.REMIX, "x", buckets=buckets)
    with pytest.raises(InvalidRequest, match="`mask` must have the size"):
        check_inputs(Kind.INPAINT, "x", buckets=buckets, init_image=image, mask=Image.new("L", (64, 64)))
    with pytest.raises(InvalidRequest, match="`count`"):
        check_inputs(Kind.REMIX, "x", buckets=buckets, init_image=image, count=2)


def test_long_prompt_and_useless_negative_are_reported(buckets: dict[str, tuple[int, int]]) -> None:
    request = check_inputs(
        Kind.IMAGINE,
        "a very long prompt",
        buckets=buckets,
        negative="blurry",
        count_tokens=lambda prompt: 90,
        negative_has_effect=False,
    )
    assert request.negative is None
    assert any("negative prompt has no effect" in notice for notice in request.notices)
    assert any("88 tokens" in notice and "first 75" in notice for notice in request.notices)
    quiet = check_inputs(Kind.IMAGINE, "short", buckets=buckets, negative="blurry", count_tokens=lambda prompt: 5)
    assert quiet.notices == () and quiet.negative == "blurry"


def test_control_characters_are_dropped(buckets: dict[str, tuple[int, int]]) -> None:
    assert check_inputs(Kind.IMAGINE, "a\x00 fox\x07", buckets=buckets).prompt == "a fox"


def test_batch_key_groups_only_compatible_requests(buckets: dict[str, tuple[int, int]]) -> None:
    first = check_inputs(Kind.IMAGINE, "a", buckets=buckets, seed=1)
    same = check_inputs(Kind.IMAGINE, "b", buckets=buckets, seed=2, count=2, negative="c")
    other_size = check_inputs(Kind.IMAGINE, "a", buckets=buckets, aspect="16:9")
    other_steps = check_inputs(Kind.IMAGINE, "a", buckets=buckets, steps=2)
    assert first.batch_key == same.batch_key
    assert first.batch_key != other_size.batch_key
    assert first.batch_key != other_steps.batch_key
