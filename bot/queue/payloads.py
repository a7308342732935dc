"""What travels through Redis: a request and its result as msgpack-ready dicts of plain values and bytes.

A worker trusts nothing it reads from Redis: `request_from_payload` validates every field again with the
same checks the bot applies to Discord input, and images must be PNGs already fitted to a size bucket.
"""

from __future__ import annotations

import io
from collections.abc import Mapping

from PIL import Image, UnidentifiedImageError

from bot.engine.executor import JobResult
from bot.engine.requests import GenerationRequest, Kind, check_options
from bot.errors import InvalidRequest
from bot.styles import StyleBook

FIELDS = ("kind", "prompt", "negative", "aspect", "steps", "guidance", "strength", "seed", "count")


def request_to_payload(request: GenerationRequest) -> dict[str, object]:
    return {
        "kind": request.kind.value,
        "prompt": request.prompt,
        "negative": request.negative,
        "aspect": request.aspect if request.kind is Kind.IMAGINE else None,
        "steps": request.steps,
        "guidance": request.guidance,
        "strength": request.strength,
        "seed": request.seeds[0],
        "count": request.count,
        "style": request.style,
        "image": _png(request.init_image),
        "mask": _png(request.mask),
    }


def request_from_payload(
    payload: object, buckets: dict[str, tuple[int, int]], styles: StyleBook | None = None
) -> GenerationRequest:
    """Raises `InvalidRequest` for anything a well-behaved bot would not have sent."""
    if not isinstance(payload, Mapping) or not set(FIELDS) <= set(payload):
        raise InvalidRequest("malformed job payload")
    try:
        kind = Kind(payload["kind"])
        options = check_options(
            kind,
            _text(payload["prompt"]),
            buckets=buckets,
            negative=None if payload["negative"] is None else _text(payload["negative"]),
            aspect=payload["aspect"],
            steps=_number(payload["steps"], int),
            guidance=_number(payload["guidance"], float),
            strength=_number(payload["strength"], float),
            seed=_number(payload["seed"], int),
            count=_number(payload["count"], int),
            style=None if payload.get("style") is None else _text(payload["style"]),
            styles=styles,
        )
    except (ValueError, TypeError) as exc:
        raise InvalidRequest(f"malformed job payload: {exc}") from None
    return options.to_request(buckets, _image(payload.get("image"), "RGB"), _image(payload.get("mask"), "L"))


def result_to_payload(result: JobResult) -> dict[str, object]:
    return {
        "images": list(result.images),
        "seeds": list(result.seeds),
        "queue_wait": result.queue_wait,
        "generation_time": result.generation_time,
        "batch_images": result.batch_images,
    }


def result_from_payload(payload: Mapping[str, object]) -> JobResult:
    return JobResult(
        images=[bytes(image) for image in payload["images"]],
        seeds=tuple(int(seed) for seed in payload["seeds"]),
        queue_wait=float(payload["queue_wait"]),
        generation_time=float(payload["generation_time"]),
        batch_images=int(payload["batch_images"]),
    )


def _png(image: Image.Image | None) -> bytes | None:
    if image is None:
        return None
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1)  # lossless and fast; it only crosses the network once
    return buffer.getvalue()


def _image(data: object, mode: str) -> Image.Image | None:
    if data is None:
        return None
    if not isinstance(data, bytes):
        raise InvalidRequest("malformed job payload: an image must be bytes")
    try:
        image = Image.open(io.BytesIO(data), formats=["PNG"])
        if image.mode != mode:
            raise InvalidRequest(f"malformed job payload: expected a {mode} image")
        image.load()
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError):
        raise InvalidRequest("malformed job payload: unreadable image") from None
    return image


def _text(value: object) -> str:
    if not isinstance(value, str):
        raise TypeError("text fields must be strings")
    return value


def _number(value: object, kind: type[int] | type[float]) -> int | float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError("numeric fields must be numbers")
    if kind is int and value != int(value):
        raise ValueError("integer fields must be whole numbers")
    return kind(value)
