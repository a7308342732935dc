from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from bot.engine.generation import GenerationInterrupted, generate
from bot.engine.pipelines import Pipelines
from bot.engine.requests import Kind, check_inputs
from bot.engine.vae import NonFiniteOutput


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


def source_image(size: tuple[int, int]) -> Image.Image:
    gradient = np.linspace(0, 255, size[0] * size[1] * 3).reshape(size[1], size[0], 3).astype(np.uint8)
    return Image.fromarray(gradient)


def half_mask(size: tuple[int, int]) -> Image.Image:
    mask = Image.new("L", size, 0)
    mask.paste(255, (0, 0, size[0] // 2, size[1]))
    return mask


@pytest.mark.parametrize("aspect", ["1:1", "4:3", "3:4", "3:2", "2:3", "16:9", "9:16"])
def test_every_task_gives_the_bucket_size(pipes: Pipelines, buckets, aspect: str) -> None:
    size = buckets[aspect]
    requests = {
        Kind.IMAGINE: check_inputs(Kind.IMAGINE, "a fox", buckets=buckets, aspect=aspect, steps=2, seed=1),
        Kind.REMIX: check_inputs(Kind.REMIX, "a fox", buckets=buckets, init_image=source_image(size), steps=2),
        Kind.INPAINT: check_inputs(
            Kind.INPAINT, "a fox", buckets=buckets, init_image=source_image(size), mask=half_mask(size), steps=2
        ),
    }
    for request in requests.values():
        [[image]] = generate(pipes, [request])
        width, height = size
        assert image.shape == (height, width, 3) and image.dtype == np.uint8  # RGB


def test_same_seed_gives_identical_pixels(pipes: Pipelines, buckets) -> None:
    request = check_inputs(Kind.IMAGINE, "a fox", buckets=buckets, seed=42)
    [[first]] = generate(pipes, [request])
    [[second]] = generate(pipes, [request])
    [[other]] = generate(pipes, [check_inputs(Kind.IMAGINE, "a fox", buckets=buckets, seed=43)])
    assert np.array_equal(pixels(first), pixels(second))
    assert not np.array_equal(pixels(first), pixels(other))


def test_batched_images_match_their_seeds_alone(pipes: Pipelines, buckets) -> None:
    fox = check_inputs(Kind.IMAGINE, "a fox", buckets=buckets, seed=5, count=2)
    owl = check_inputs(Kind.IMAGINE, "an owl", buckets=buckets, seed=900)
    batched = generate(pipes, [fox, owl])
    alone_fox_second = generate(pipes, [check_inputs(Kind.IMAGINE, "a fox", buckets=buckets, seed=6)])[0][0]
    alone_owl = generate(pipes, [owl])[0][0]
    # Batched matrix products may round differently in the last bit; one 8-bit level is the tolerance.
    assert np.abs(pixels(batched[0][1]) - pixels(alone_fox_second)).max() <= 1
    assert np.abs(pixels(batched[1][0]) - pixels(alone_owl)).max() <= 1


def test_remix_batch_matches_remix_alone(pipes: Pipelines, buckets) -> None:
    size = buckets["1:1"]
    one = check_inputs(Kind.REMIX, "a fox", buckets=buckets, init_image=source_image(size), seed=1)
    two = check_inputs(Kind.REMIX, "an owl", buckets=buckets, init_image=half_mask(size).convert("RGB"), seed=2)
    batched = generate(pipes, [one, two])
    assert np.abs(pixels(batched[1][0]) - pixels(generate(pipes, [two])[0][0])).max() <= 1


def test_inpaint_keeps_the_unmasked_half_closer_to_the_source(pipes: Pipelines, buckets) -> None:
    size = buckets["1:1"]
    source = source_image(size)
    request = check_inputs(Kind.INPAINT, "a fox", buckets=buckets, init_image=source, mask=half_mask(size), seed=3)
    [[image]] = generate(pipes, [request])
    change = np.abs(pixels(image) - pixels(source)).mean(axis=2)
    half = size[0] // 2
    assert change[:, half + 8 :].mean() < change[:, : half - 8].mean()


def test_mixed_batch_is_refused(pipes: Pipelines, buckets) -> None:
    square = check_inputs(Kind.IMAGINE, "a", buckets=buckets)
    wide = check_inputs(Kind.IMAGINE, "a", buckets=buckets, aspect="16:9")
    with pytest.raises(ValueError, match="batch_key"):
        generate(pipes, [square, wide])


def test_stop_request_interrupts_between_steps(pipes: Pipelines, buckets) -> None:
    calls = []

    def stop_after_first_step() -> bool:
        calls.append(1)
        return True

    with pytest.raises(GenerationInterrupted):
        generate(pipes, [check_inputs(Kind.IMAGINE, "a", buckets=buckets, steps=8)], stop_after_first_step)
    assert len(calls) <= 3  # asked after the first step, then once more after the loop


def test_a_tiny_autoencoder_decodes_the_same_latents_into_other_pixels(
    pipes: Pipelines, tiny_decoder_pipes: Pipelines, buckets
) -> None:
    source = Image.new("RGB", buckets["16:9"], (200, 120, 40))
    requests = [
        check_inputs(Kind.IMAGINE, "a fox", buckets=buckets, aspect="16:9", seed=3),
        check_inputs(Kind.REMIX, "a fox", buckets=buckets, init_image=source, seed=3),
    ]
    for request in requests:
        [[full]] = generate(pipes, [request])
        [[tiny]] = generate(tiny_decoder_pipes, [request])
        assert tiny.shape == full.shape == (request.height, request.width, 3)
        assert np.abs(np.asarray(tiny, dtype=np.int16) - np.asarray(full, dtype=np.int16)).mean() > 1
        latents = tiny_decoder_pipes.codec.encode([full])  # the full VAE encodes, whatever decodes
        assert torch.equal(latents, pipes.codec.encode([full]))


def test_non_finite_latents_are_detected(pipes: Pipelines) -> None:
    latents = torch.zeros(2, 4, 8, 8)
    latents[1, 0, 0, 0] = float("nan")
    with pytest.raises(NonFiniteOutput) as caught:
        pipes.codec.decode(latents)
    assert caught.value.indices == [1]
