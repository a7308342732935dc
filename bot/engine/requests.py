"""Generation requests: option validation, aspect buckets and the step arithmetic of partial denoising.

`check_inputs` is the single gate between untrusted option values (Discord does not enforce ranges on the
bot's side) and the executor: everything it returns is valid, so nothing downstream re-checks.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TypeVar

from PIL import Image

from bot.errors import InvalidRequest
from bot.styles import StyleBook

PROMPT_MAX_CHARS = 1000
CLIP_WINDOW_TOKENS = 77
STEPS_RANGE = (1, 8)
GUIDANCE_RANGE = (0.0, 2.0)
COUNT_RANGE = (1, 4)
STRENGTH_RANGE = (0.05, 1.0)
SEED_MAX = 2**32 - 1
DEFAULT_STEPS = 4
DEFAULT_GUIDANCE = 1.0

# SDXL's trained resolutions at a base of 1024 pixels, by the aspect name users pick.
ASPECTS_AT_1024: dict[str, tuple[int, int]] = {
    "1:1": (1024, 1024),
    "4:3": (1152, 896),
    "3:4": (896, 1152),
    "3:2": (1216, 832),
    "2:3": (832, 1216),
    "16:9": (1344, 768),
    "9:16": (768, 1344),
}
Number = TypeVar("Number", int, float)
SIZE_MULTIPLE = 32  # the UNet downsamples latents (1/8 of pixels) twice more


class Kind(StrEnum):
    IMAGINE = "imagine"
    REMIX = "remix"
    INPAINT = "inpaint"


DEFAULT_STRENGTH = {Kind.IMAGINE: 1.0, Kind.REMIX: 0.6, Kind.INPAINT: 1.0}


def bucket_sizes(base_resolution: int) -> dict[str, tuple[int, int]]:
    """Scale the SDXL buckets to `base_resolution`, keeping each aspect ratio as close as multiples of 32 allow."""
    scale = base_resolution / 1024
    buckets = {}
    for name, (width, height) in ASPECTS_AT_1024.items():
        target = width / height
        candidates = [(w, h) for w in _multiples_around(width * scale) for h in _multiples_around(height * scale)]
        buckets[name] = min(
            candidates,
            key=lambda wh: (
                round(abs(math.log(wh[0] / wh[1] / target)), 9),  # aspect first; rounding makes ties ties
                abs(wh[0] - width * scale) + abs(wh[1] - height * scale),
            ),
        )
    return buckets


def _multiples_around(value: float) -> tuple[int, int]:
    low = max(SIZE_MULTIPLE, int(value // SIZE_MULTIPLE) * SIZE_MULTIPLE)
    return low, low + SIZE_MULTIPLE


def nearest_aspect(width: int, height: int, buckets: dict[str, tuple[int, int]]) -> str:
    """The bucket whose aspect ratio is closest to the image's (compared in log space, so 2:1 and 1:2 are even)."""
    ratio = width / height
    return min(buckets, key=lambda name: abs(math.log(buckets[name][0] / buckets[name][1] / ratio)))


def scheduled_steps(steps: int, strength: float) -> int:
    """The `num_inference_steps` to hand diffusers so that partial denoising runs at least one UNet step.

    img2img and inpaint run only `int(num_inference_steps * strength)` of the schedule, and crash when that is
    0 (steps 1 at strength 0.6, say). We keep the user's `steps` when it already gives one step or more, and
    otherwise lengthen the schedule until its last step falls inside the strength window: the image is then
    changed by exactly one small step, which is what a low strength asks for. At the lowest strength (0.05)
    this is 20, well inside LCM's 50-step original schedule.
    """
    scheduled = steps
    while int(scheduled * strength) < 1:
        scheduled += 1
    return scheduled


def denoising_steps(steps: int, strength: float) -> int:
    """How many UNet steps a job really runs (shown to users, and what a batch's cost depends on)."""
    return int(scheduled_steps(steps, strength) * strength)


@dataclass(eq=False)
class GenerationRequest:
    """A validated request. `seeds` has one seed per image: seed `i` reproduces image `i` on its own."""

    kind: Kind
    prompt: str
    negative: str | None
    aspect: str
    width: int
    height: int
    steps: int
    guidance: float
    strength: float
    seeds: tuple[int, ...]
    init_image: Image.Image | None = None
    mask: Image.Image | None = None
    notices: tuple[str, ...] = field(default=())
    style: str | None = None  # a name from the style book; applied on the GPU thread (bot.engine.generation)

    @property
    def count(self) -> int:
        return len(self.seeds)

    @property
    def batch_key(self) -> tuple[object, ...]:
        """Requests with equal keys can share one pipeline call."""
        return (self.kind, self.width, self.height, self.steps, self.guidance, self.strength, self.style)


@dataclass(frozen=True)
class CheckedOptions:
    """Every option but the images, validated: what can be checked before an attachment is downloaded."""

    kind: Kind
    prompt: str
    negative: str | None
    aspect: str | None  # imagine only; image tasks take the size of their image
    steps: int
    guidance: float
    strength: float
    seeds: tuple[int, ...]
    notices: tuple[str, ...]
    style: str | None = None

    def to_request(
        self,
        buckets: dict[str, tuple[int, int]],
        init_image: Image.Image | None = None,
        mask: Image.Image | None = None,
    ) -> GenerationRequest:
        """Add the images (already fitted to a bucket by `bot.engine.images`) and fix the output size."""
        if self.kind is Kind.IMAGINE:
            if init_image is not None or mask is not None:
                raise InvalidRequest("`imagine` takes no image; use `remix` or `inpaint`.")
            aspect = self.aspect or "1:1"
            width, height = buckets[aspect]
        else:
            if init_image is None:
                raise InvalidRequest(f"`{self.kind}` needs an `image`.")
            if self.kind is Kind.INPAINT and mask is None:
                raise InvalidRequest("`inpaint` needs a `mask`, or an image with transparent pixels to repaint.")
            if self.kind is Kind.REMIX and mask is not None:
                raise InvalidRequest("`remix` takes no mask; use `inpaint`.")
            width, height = init_image.size
            aspect = nearest_aspect(width, height, buckets)
            if buckets[aspect] != (width, height):
                raise InvalidRequest("`image` was not fitted to a size bucket.")  # a caller bug, reported clearly
            if mask is not None and mask.size != init_image.size:
                raise InvalidRequest("`mask` must have the size of the image.")
        return GenerationRequest(
            kind=self.kind,
            prompt=self.prompt,
            negative=self.negative,
            aspect=aspect,
            width=width,
            height=height,
            steps=self.steps,
            guidance=self.guidance,
            strength=self.strength,
            seeds=self.seeds,
            init_image=init_image,
            mask=mask,
            notices=self.notices,
            style=self.style,
        )


def check_options(
    kind: Kind,
    prompt: str,
    *,
    buckets: dict[str, tuple[int, int]],
    negative: str | None = None,
    aspect: str | None = None,
    steps: int | None = None,
    guidance: float | None = None,
    seed: int | None = None,
    count: int | None = None,
    strength: float | None = None,
    count_tokens: Callable[[str], int] | None = None,
    negative_has_effect: bool = True,
    style: str | None = None,
    styles: StyleBook | None = None,
) -> CheckedOptions:
    """Validate every option and fill in defaults. Raises `InvalidRequest` naming the option at fault."""
    notices: list[str] = []
    prompt = _clean_text(prompt)
    if not prompt:
        raise InvalidRequest("`prompt` is empty: describe the image you want.")
    _check_length("prompt", prompt)
    negative = _clean_text(negative or "") or None
    if negative is not None:
        _check_length("negative", negative)
        if not negative_has_effect:
            notices.append("The negative prompt has no effect with this model at this guidance, so it was not used.")
            negative = None
    if count_tokens is not None:
        tokens = count_tokens(prompt)
        if tokens > CLIP_WINDOW_TOKENS:
            notices.append(
                f"Your prompt is {tokens - 2} tokens long; the model reads only the first "
                f"{CLIP_WINDOW_TOKENS - 2}, so its end was ignored."
            )

    steps = _in_range("steps", DEFAULT_STEPS if steps is None else steps, STEPS_RANGE)
    guidance = float(_in_range("guidance", DEFAULT_GUIDANCE if guidance is None else guidance, GUIDANCE_RANGE))
    count = _in_range("count", 1 if count is None else count, COUNT_RANGE)
    strength = float(_in_range("strength", DEFAULT_STRENGTH[kind] if strength is None else strength, STRENGTH_RANGE))
    if seed is None:
        seed = secrets.randbelow(SEED_MAX + 1)
    seed = _in_range("seed", seed, (0, SEED_MAX))
    if kind is Kind.IMAGINE:
        strength = 1.0
        if aspect is not None and aspect not in buckets:
            raise InvalidRequest(f"`aspect` must be one of {', '.join(buckets)}.")
    elif count != 1:
        raise InvalidRequest("`count` is only for `imagine`.")
    if style is not None:
        style = (styles or StyleBook()).get(style).name
    return CheckedOptions(
        kind=kind,
        prompt=prompt,
        negative=negative,
        aspect=aspect if kind is Kind.IMAGINE else None,
        steps=steps,
        guidance=guidance,
        strength=strength,
        seeds=tuple((seed + index) % (SEED_MAX + 1) for index in range(count)),
        notices=tuple(notices),
        style=style,
    )


def check_inputs(
    kind: Kind,
    prompt: str,
    *,
    buckets: dict[str, tuple[int, int]],
    init_image: Image.Image | None = None,
    mask: Image.Image | None = None,
    **options: object,
) -> GenerationRequest:
    """`check_options` and `CheckedOptions.to_request` in one call, for callers that have the images already."""
    return check_options(kind, prompt, buckets=buckets, **options).to_request(buckets, init_image, mask)


def _clean_text(text: str) -> str:
    return "".join(ch for ch in text if ch.isprintable() or ch in "\n\t").strip()


def _check_length(name: str, text: str) -> None:
    if len(text) > PROMPT_MAX_CHARS:
        raise InvalidRequest(f"`{name}` is {len(text)} characters; the limit is {PROMPT_MAX_CHARS}.")


def _in_range(name: str, value: Number, bounds: tuple[Number, Number]) -> Number:
    low, high = bounds
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
        raise InvalidRequest(f"`{name}` must be a number.")
    if not low <= value <= high:
        raise InvalidRequest(f"`{name}` must be between {low} and {high}; got {value}.")
    return value
