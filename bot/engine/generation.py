"""Run one batch of compatible requests through the pipeline, on the GPU worker thread (and, to warm up the
compiled models, on their compile thread).

A batch is flattened to one prompt and one seeded generator per image, so each image's noise comes from its
own seed whatever else shares the batch: a seed reproduces its image alone or batched. Generators live on the
CPU so the same seed gives the same noise on any device.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from diffusers import DiffusionPipeline

from bot.engine.compiled import BatchShape
from bot.engine.images import Picture
from bot.engine.pipelines import Pipelines
from bot.engine.requests import GenerationRequest, Kind, check_inputs, scheduled_steps
from bot.engine.vae import NonFiniteOutput
from bot.errors import GenerationFailed


class GenerationInterrupted(RuntimeError):
    """`should_stop` turned true during the denoising loop (timeout or shutdown)."""


def generate(
    pipes: Pipelines,
    requests: Sequence[GenerationRequest],
    should_stop: Callable[[], bool] = lambda: False,
) -> list[list[Picture]]:
    """Pictures for each request, in order. All requests must share one `batch_key`."""
    # 1. Check the batch is one pipeline call
    first = requests[0]
    if any(request.batch_key != first.batch_key for request in requests):
        raise ValueError("`requests` must share one batch_key")

    # 2. Render on the compiled twins when they cover this shape, else on the eager models
    count = sum(request.count for request in requests)
    shape = BatchShape(count, first.width, first.height, adapter=pipes.styles.adapter(first.style))
    try:
        images = None
        if pipes.compiled is not None:
            images = pipes.compiled.serve(shape, lambda twins: render(twins, requests, should_stop))
        if images is None:
            images = render(pipes, requests, should_stop)
    except torch.cuda.OutOfMemoryError:
        torch.cuda.empty_cache()
        raise GenerationFailed("The GPU ran out of memory on this request. Try a smaller `count`.") from None
    except NonFiniteOutput:
        raise GenerationFailed("The image came out broken (a numerical overflow). Try another seed.") from None

    # 3. Hand each request its images
    results, offset = [], 0
    for request in requests:
        results.append(images[offset : offset + request.count])
        offset += request.count
    return results


def render(
    pipes: Pipelines,
    requests: Sequence[GenerationRequest],
    should_stop: Callable[[], bool] = lambda: False,
) -> list[Picture]:
    """Denoise and decode one batch on `pipes`, one seeded generator per image."""
    generators = [torch.Generator("cpu").manual_seed(seed) for request in requests for seed in request.seeds]
    latents = _denoise(pipes, requests, generators, should_stop)
    if should_stop():
        raise GenerationInterrupted("stopped before the last step")
    return pipes.codec.decode(latents)


def _denoise(
    pipes: Pipelines,
    requests: Sequence[GenerationRequest],
    generators: list[torch.Generator],
    should_stop: Callable[[], bool],
) -> torch.Tensor:
    """Latents for every image of the batch, from one call of the task's pipeline."""
    first = requests[0]
    task_inputs: dict[str, object] = {}
    if first.kind is not Kind.IMAGINE:
        # Starting latents come from our codec (see bot.engine.vae); diffusers takes 4-channel input as latents.
        task_inputs["image"] = pipes.codec.encode([request.init_image for request in requests])
        task_inputs["strength"] = first.strength
    if first.kind is Kind.INPAINT:
        task_inputs["mask_image"] = [request.mask for request in requests]
    style = pipes.styles.style(first.style)
    pipe = pipes.for_kind(first.kind, style)
    pipes.styles.activate(style, pipe)
    prompts, negatives = [], []
    for request in requests:
        prompt, negative = (
            (request.prompt, request.negative) if style is None else style.apply(request.prompt, request.negative)
        )
        prompts += [prompt] * request.count
        negatives += [negative or ""] * request.count
    embeddings = pipes.embeddings.pipeline_inputs(
        pipe, prompts, negatives, with_negative=pipes.rules.negative_has_effect(first.guidance), variant=first.style
    )

    def on_step_end(pipe: DiffusionPipeline, step: int, timestep: object, tensors: dict) -> dict:
        if should_stop():
            pipe._interrupt = True  # diffusers skips the remaining steps
        return tensors

    return pipe(
        **embeddings,
        num_inference_steps=scheduled_steps(first.steps, first.strength),
        guidance_scale=first.guidance,
        width=first.width,
        height=first.height,
        generator=generators,
        output_type="latent",
        callback_on_step_end=on_step_end,
        **task_inputs,
    ).images


def warm_up(pipes: Pipelines, buckets: dict[str, tuple[int, int]]) -> None:
    """One one-step image per bucket at start, so that no user pays for lazy initialisation. Call it on the
    thread that will serve: much of that initialisation is per thread and per shape (cuDNN's convolution plans).
    On an H100 the first request on a new thread took 1.7 s against 0.7 s.

    Each bucket's prompt is its own, so that the text encoders run here whatever the prompt cache holds (the
    compile thread's warm-up fills it too): with `CUDA_GRAPHS`, this captures their graphs. Where styles run on
    a graphed fused UNet, one of them comes to each bucket too, to capture its graphs (which serve every fused
    style), so that no styled request waits for a capture either."""
    book = pipes.styles.book
    styled = pipes.fused_styles.graphed_style(book) if pipes.fused_styles is not None else None
    for aspect in buckets:
        for style in [None] if styled is None else [None, styled.name]:
            request = check_inputs(
                Kind.IMAGINE,
                f"warm-up {aspect}",
                buckets=buckets,
                aspect=aspect,
                steps=1,
                seed=0,
                style=style,
                styles=book,
            )
            generate(pipes, [request])
