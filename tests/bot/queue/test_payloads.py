from __future__ import annotations

import io

import pytest
from PIL import Image

from bot.engine.executor import JobResult
from bot.engine.requests import Kind, check_inputs
from bot.errors import InvalidRequest
from bot.queue.payloads import request_from_payload, request_to_payload, result_from_payload, result_to_payload


def gradient(size: tuple[int, int]) -> Image.Image:
    return Image.linear_gradient("L").resize(size).convert("RGB")


@pytest.mark.parametrize("kind", list(Kind))
def test_requests_survive_the_trip(buckets, kind: Kind) -> None:
    size = buckets["16:9"]
    images = {}
    if kind is not Kind.IMAGINE:
        images["init_image"] = gradient(size)
    if kind is Kind.INPAINT:
        images["mask"] = Image.new("L", size, 255)
    options = {"count": 3, "aspect": "16:9"} if kind is Kind.IMAGINE else {}
    request = check_inputs(kind, "a fox", buckets=buckets, negative="blur", steps=6, seed=41, **options, **images)
    again = request_from_payload(request_to_payload(request), buckets)
    assert again.batch_key == request.batch_key and again.seeds == request.seeds
    assert (again.prompt, again.negative) == (request.prompt, request.negative)
    for name in ("init_image", "mask"):
        ours, theirs = getattr(request, name), getattr(again, name)
        assert (ours is None and theirs is None) or ours.tobytes() == theirs.tobytes()


@pytest.mark.parametrize(
    "change",
    [
        {"kind": "upscale"},
        {"steps": 99},
        {"steps": "4"},
        {"guidance": True},
        {"seed": 1.5},
        {"prompt": 7},
        {"aspect": "5:1"},
        {"image": b"not a png"},
    ],
)
def test_anything_a_bot_would_not_send_is_refused(buckets, change: dict) -> None:
    payload = request_to_payload(check_inputs(Kind.IMAGINE, "a fox", buckets=buckets))
    with pytest.raises(InvalidRequest):
        request_from_payload(payload | change, buckets)


def test_images_must_be_pngs_of_a_bucket_size(buckets) -> None:
    payload = request_to_payload(
        check_inputs(Kind.REMIX, "a fox", buckets=buckets, init_image=gradient(buckets["1:1"]))
    )
    jpeg = io.BytesIO()
    gradient(buckets["1:1"]).save(jpeg, format="JPEG")
    odd = io.BytesIO()
    gradient((100, 100)).save(odd, format="PNG")
    for image in (jpeg.getvalue(), odd.getvalue()):
        with pytest.raises(InvalidRequest):
            request_from_payload(payload | {"image": image}, buckets)
    with pytest.raises(InvalidRequest):
        request_from_payload(["not", "a", "mapping"], buckets)


def test_results_survive_the_trip() -> None:
    result = JobResult(images=[b"png-1", b"png-2"], seeds=(4, 5), queue_wait=0.5, generation_time=1.25, batch_images=3)
    assert result_from_payload(result_to_payload(result)) == result
