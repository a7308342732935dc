"""Run one batch of compatible requests through the pipeline. Called on the GPU worker thread only.

A batch is flattened to one prompt and one seeded generator per image, so each image's noise comes from its
own seed whatever else shares the batch: a seed reproduces its image alone or batched. Generators live on the
CPU so the same seed gives the same noise on any device.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from PIL import Image

from bot.engine.pipelines import Pipelines
from bot.engine.requests import GenerationRequest, Kind, scheduled_steps


class GenerationInterrupted(RuntimeError):
    """`should_stop` turned true during the denoising loop (timeout or shutdown)."""


def generate(
    pipes: Pipelines,
    requests: Sequence[GenerationRequest],
    should_stop: Callable[[], bool] = lambda: False,
) -> list[list[Image.Image]]:
    """Images for each request, in order. All requests must share one `batch_key`."""
    # 1. Check the batch is one pipeline call
    first = requests[0]
    if any(request.batch_key != first.batch_key for request in requests):
        raise ValueError("`requests` must share one batch_key")

    # 2. One prompt, negative and generator per image
    prompts = [request.prompt for request in requests for _ in request.seeds]
    negatives = [request.negative or "" for request in requests for _ in request.seeds]
    generators = [torch.Generator("cpu").manual_seed(seed) for request in requests for seed in request.seeds]

    # 3. Task-specific inputs: starting latents (encoded by our codec) and masks
    task_inputs: dict[str, object] = {}
    if first.kind is not Kind.IMAGINE:
        task_inputs["image"] = pipes.codec.encode([request.init_image for request in requests])
        task_inputs["strength"] = first.strength
    if first.kind is Kind.INPAINT:
        task_inputs["mask_image"] = [request.mask for request in requests]

    # 4. Denoise, stopping between steps when asked
    def on_step_end(pipe: object, step: int, timestep: object, tensors: dict) -> dict:
        if should_stop():
            pipe._interrupt = True
        return tensors

    latents = pipes.for_kind(first.kind)(
        prompt=prompts,
        negative_prompt=negatives,
        num_inference_steps=scheduled_steps(first.steps, first.strength),
        guidance_scale=first.guidance,
        width=first.width,
        height=first.height,
        generator=generators,
        output_type="latent",
        callback_on_step_end=on_step_end,
        **task_inputs,
    ).images
    if should_stop():
        raise GenerationInterrupted("stopped before the last step")

    # 5. Decode and hand each request its images
    images = pipes.codec.decode(latents)
    results, start = [], 0
    for request in requests:
        results.append(images[start : start + request.count])
        start += request.count
    return results


def warm_up(pipes: Pipelines, request: GenerationRequest) -> None:
    """One small generation at start, so the first user does not pay for lazy initialisation."""
    generate(pipes, [request])
