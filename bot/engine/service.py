"""Assemble the engine from settings: load the pipelines, warm up, size batches, start the executor.

The bot, the CLI and the benchmarks all go through `open_engine`, so there is one way to build the engine and
one place that decides the batch size.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import torch

from bot.engine.adapters import StyleAdapters, tuner_layers
from bot.engine.cache_filler import CompilePlan, covering_batch_images, fill_compile_cache, needs_filling
from bot.engine.compile_cache import use_compile_cache
from bot.engine.compiled import CompiledTwins
from bot.engine.cuda_graphs import Capture, cuda_graph_capture
from bot.engine.executor import BatchRunner, Executor, JobQueue
from bot.engine.fused_styles import FusedStyles, fusable_adapters, fused_text_encoder_bytes, fused_weight_bytes
from bot.engine.generation import generate, render, warm_up
from bot.engine.pipelines import Pipelines, PromptRules, load_pipelines
from bot.engine.requests import bucket_sizes
from bot.engine.text_masks import TextMasker
from bot.settings import Settings
from bot.styles import StyleBook, StylesUnavailable, load_style_book

log = logging.getLogger(__name__)

GIB = 2**30
CPU_BATCH_IMAGES = 4
MAX_AUTO_BATCH_IMAGES = 8
# GPU memory per image in a batch at 1024x1024, and a reserve on top. Measured on an H100 (bench.gpu, bfloat16
# VAE): about 4.1 GiB of weights, a peak of 7.9 GiB at 1 image and 15.1 GiB at 8. The VAE decode dominates, about
# 2.4 GiB per image of a decode chunk (bot.engine.vae), so these err on the safe side past one chunk.
GIB_PER_IMAGE_AT_1024 = 2.0
GIB_DECODE_RESERVE = 4.0


@dataclass
class Engine:
    """What the bot talks to: the queue of jobs, the size buckets, and the rules for checking a request.
    `pipes` is None when the pipelines live in remote workers (`QUEUE_BACKEND=redis`)."""

    rules: PromptRules
    executor: JobQueue
    buckets: dict[str, tuple[int, int]]
    pipes: Pipelines | None = None
    styles: StyleBook = field(default_factory=StyleBook)
    masker: TextMasker | None = None  # masks described in words; loaded on first use


def choose_batch_images(settings: Settings, device: torch.device) -> int:
    """`MAX_BATCH_IMAGES` when set; otherwise as many images as the GPU's free memory holds (at most 8)."""
    if settings.max_batch_images is not None:
        return settings.max_batch_images
    if device.type != "cuda":
        return CPU_BATCH_IMAGES
    free_bytes, _total = torch.cuda.mem_get_info(device)
    images = int((free_bytes / GIB - GIB_DECODE_RESERVE) / gib_per_image(settings))
    return max(1, min(MAX_AUTO_BATCH_IMAGES, images))


def gib_per_image(settings: Settings) -> float:
    return GIB_PER_IMAGE_AT_1024 * (settings.base_resolution / 1024) ** 2


def batch_peak_gib(settings: Settings, batch_images: int) -> float:
    """What a batch of `batch_images` may take on top of the weights: the estimate `choose_batch_images` fills
    the free memory with."""
    return GIB_DECODE_RESERVE + gib_per_image(settings) * batch_images


def compile_child_batch(settings: Settings, device: torch.device, batch_images: int) -> int | None:
    """The images in the compile child's largest warm-up batches (bot.engine.cache_filler); None: no child.

    `COMPILE_CHILD=on`: a child wherever it is, at the fewest images that compile the same graphs
    (`covering_batch_images`), where it needs the least memory. `auto`: on a CUDA GPU where the child fits
    (`child_batch_that_fits`). Not on a CPU: there the child's compile takes the cores the requests run on. With
    the tiny model on 2 cores (`bench.gpu --tiny --compile-only`), requests served meanwhile took 1.57 s median
    and 14.0 s at worst with a child, 1.26 and 3.0 s without, and compiled speed came after 266 against 173 s.
    A GPU's requests need a core and the GIL to launch kernels; the child leaves them both."""
    if settings.compile_child == "off":
        return None
    if settings.compile_child == "on":
        return covering_batch_images(batch_images)
    if device.type != "cuda":
        return None
    free_bytes, _total = torch.cuda.mem_get_info(device)
    weights_gib = torch.cuda.memory_allocated(device) / GIB
    return child_batch_that_fits(settings, batch_images, free_gib=free_bytes / GIB, weights_gib=weights_gib)


def child_batch_that_fits(settings: Settings, batch_images: int, *, free_gib: float, weights_gib: float) -> int | None:
    """The child's batch size where the free memory holds, at once, the child's copy of the weights, its batch,
    and a batch of this process: this process's own batch size where that fits (the child then tunes its
    kernels at the sizes that serve), else the fewest images that compile the same graphs, else None.

    By `batch_peak_gib`'s estimate, at batches of 8: an 80 GB card holds the first (about 4 + 20 + 20 GiB), a
    40 or 48 GB card the second (4 + 20 + 8), a 24 or 32 GB card neither."""
    for child_images in dict.fromkeys([batch_images, covering_batch_images(batch_images)]):
        needed = weights_gib + batch_peak_gib(settings, batch_images) + batch_peak_gib(settings, child_images)
        if free_gib >= needed:
            return child_images
    return None


def fused_styles_for(
    settings: Settings, pipes: Pipelines, batch_images: int, capture: Capture | None = None
) -> FusedStyles | None:
    """UNets without peft's adapter layers (bot.engine.fused_styles), where styles brought adapter layers or
    batches of one replay graphs made by `capture`: the adapter-free twin costs no memory, and the fused UNet (and
    text encoders) only where their own weights leave batches of `batch_images` their room, since they make styled
    batches faster and must not make every batch smaller."""
    unet = pipes.text2img.unet
    if not tuner_layers(unet) and capture is None:
        return None
    unet_gib = fused_weight_bytes(unet) / GIB
    text_gib = fused_text_encoder_bytes(pipes.text2img) / GIB
    fuse, fuse_text = bool(fusable_adapters(unet)), True
    if fuse and pipes.device.type == "cuda":
        free_gib = torch.cuda.mem_get_info(pipes.device)[0] / GIB
        fuse, fuse_text = what_to_fuse(settings, batch_images, free_gib=free_gib, unet_gib=unet_gib, text_gib=text_gib)
        if not fuse_text:
            log.info(
                "styles compute their LoRAs in adapter layers%s: fusing them needs %.2f GiB, which batches of %d "
                "images need",
                " in the text encoders" if fuse else "",
                text_gib + (0 if fuse else unet_gib),
                batch_images,
            )
    if fuse:
        fused_gib = unet_gib + (text_gib if fuse_text else 0)
        log.info("styles' LoRAs are fused into %.2f GiB of weights of their own", fused_gib)
    styles = FusedStyles.of(pipes, fuse=fuse, fuse_text_encoders=fuse_text, capture=capture, max_prompts=batch_images)
    if capture is not None and styles.peft_text_adapters:
        # Said once at start, so that a server owner knows why these styles answer a new prompt more slowly
        log.info(
            "the LoRAs of these styles adapt the text encoders through adapter layers, so their new prompts encode "
            "without CUDA graphs: %s",
            ", ".join(sorted(styles.peft_text_adapters)),
        )
    return styles


def what_to_fuse(
    settings: Settings, batch_images: int, *, free_gib: float, unet_gib: float, text_gib: float
) -> tuple[bool, bool]:
    """Whether the fused UNet, and then the fused text encoders beside it, leave batches their room. The UNet
    comes first: every LoRA style adapts it, and it runs every step, where the text encoders run once for a new
    prompt."""
    fuse = room_beside_batches(settings, batch_images, free_gib=free_gib, needed_gib=unet_gib)
    return fuse, fuse and room_beside_batches(settings, batch_images, free_gib=free_gib, needed_gib=unet_gib + text_gib)


def graph_capture_for(settings: Settings, device: torch.device) -> Capture | None:
    """How batches of one are captured as CUDA graphs (bot.engine.cuda_graphs); None: they run eager. `auto`, the
    default, graphs on CUDA GPUs: on an H200 they took a lone request from 0.243 to 0.110 s with the tiny VAE
    (0.265 to 0.187 s with the VAE), for at most 0.5 GiB of graph memory, and kept requests served during a
    compile under 0.7 s (bench/README.md). On a CPU the kernels are not launch-bound, and there is no capture."""
    if settings.cuda_graphs == "off":
        return None
    if device.type != "cuda":
        if settings.cuda_graphs == "on":
            log.warning("CUDA_GRAPHS=on needs a CUDA GPU; on %s, batches of one run eager", device)
        return None
    log.info("batches of one image replay CUDA graphs, captured for each shape the first time it comes")
    return cuda_graph_capture()


def room_beside_batches(settings: Settings, batch_images: int, *, free_gib: float, needed_gib: float) -> bool:
    """Whether `needed_gib` more leaves batches of `batch_images` the memory `batch_peak_gib` gives them."""
    return free_gib - needed_gib >= batch_peak_gib(settings, batch_images)


def load_engine(settings: Settings) -> tuple[Pipelines, int]:
    """Blocking part of start-up: load weights, pick the batch size, start compiling (run it in a thread).
    Warming up is the serving thread's job: `warm_up_serving_thread`."""
    pipes = load_pipelines(settings)
    pipes.styles = StyleAdapters.load(pipes.text2img, read_style_book(settings))
    buckets = bucket_sizes(settings.base_resolution)
    batch_images = choose_batch_images(settings, pipes.device)
    capture = graph_capture_for(settings, pipes.device)
    pipes.fused_styles = fused_styles_for(settings, pipes, batch_images, capture)
    fill_cache = None
    if compile_enabled(settings, pipes.device):
        use_compile_cache(settings.compile_cache_dir)
        pipes.compiled = CompiledTwins(pipes, buckets, batch_images)
        plan = CompilePlan(settings, buckets, batch_images)
        child_images = compile_child_batch(settings, pipes.device, batch_images) if needs_filling(plan) else None
        if child_images is not None:
            fill_cache = functools.partial(fill_compile_cache, plan, child_images)
    freeze_loaded_objects()
    if pipes.compiled is not None:
        pipes.compiled.start(render, fill_cache)
    log.info("engine ready on %s; batches of up to %d images", pipes.device, batch_images)
    return pipes, batch_images


def read_style_book(settings: Settings) -> StyleBook:
    """The styles of `STYLES_FILE`; a broken file is one log line and no styles, never a failed start."""
    try:
        return load_style_book(settings.styles_file)
    except StylesUnavailable as exc:
        log.error("%s The bot runs without styles.", exc)
        return StyleBook()


def compile_enabled(settings: Settings, device: torch.device) -> bool:
    """`COMPILE=auto` compiles on GPUs only: on a CPU the compile takes minutes for little gain. The default is
    off: on an H200 the twins gained 3 % on the tiny-VAE stream and nothing on a batch of 8 with the VAE, for
    about two minutes of compiling (bench/README.md)."""
    if settings.compile == "auto":
        return device.type == "cuda"
    return settings.compile == "on"


def freeze_loaded_objects() -> None:
    """Exempt what is loaded by now (models, libraries: millions of long-lived objects) from cyclic garbage
    collection. A full collection walks every tracked object while holding the GIL; over that heap it takes
    hundreds of milliseconds, and the event loop (heartbeats, acknowledgements) would stall meanwhile."""
    gc.collect()
    gc.freeze()


@contextlib.asynccontextmanager
async def open_engine(settings: Settings, *, drain_on_close: bool = False) -> AsyncIterator[Engine]:
    """The local engine (pipelines on this machine), or with `QUEUE_BACKEND=redis` the bot's side of the
    scale-out: the same queue, dispatching to Celery workers, and no model weights at all."""
    buckets = bucket_sizes(settings.base_resolution)
    if settings.queue_backend == "redis":
        from bot.queue.remote import open_remote_executor  # Celery is an optional dependency

        rules = await asyncio.to_thread(PromptRules.load, settings)
        async with open_remote_executor(settings, drain_on_close=drain_on_close) as executor:
            yield Engine(rules=rules, executor=executor, buckets=buckets, styles=read_style_book(settings))
        return
    pipes, batch_images = await asyncio.to_thread(load_engine, settings)
    engine = local_engine(settings, pipes, functools.partial(generate, pipes), batch_images)
    try:
        await warm_up_serving_thread(engine.executor, pipes, buckets)
        yield engine
    finally:
        await engine.executor.close(drain=drain_on_close)


async def warm_up_serving_thread(executor: Executor, pipes: Pipelines, buckets: dict[str, tuple[int, int]]) -> None:
    """`warm_up` on the executor's GPU thread, before it serves anyone."""
    await executor.run_on_gpu(functools.partial(warm_up, pipes, buckets))


def local_engine(settings: Settings, pipes: Pipelines, runner: BatchRunner, batch_images: int) -> Engine:
    """The engine around loaded pipelines, its executor started (on the running event loop)."""
    executor = Executor(
        runner,
        model_name=pipes.model_name,
        max_batch_images=batch_images,
        queue_max=settings.queue_max,
        user_max_pending=settings.user_max_pending,
        batch_timeout=settings.batch_timeout,
    )
    executor.start()
    return Engine(
        rules=pipes.rules,
        executor=executor,
        buckets=bucket_sizes(settings.base_resolution),
        pipes=pipes,
        styles=pipes.styles.book,
        masker=TextMasker(settings.mask_model, pipes.device),
    )
