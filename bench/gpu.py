"""Plain diffusers against each of our optimisations on a full-size random-weight LCM SSD-1B, in one run.

    python -m bench.gpu --configs DIR --budget 500     # on a CUDA GPU, full size
    python -m bench.gpu --tiny --requests 8            # smoke run of the same code on the tiny model, on the CPU

Columns, each adding one thing to the one before, all on the same card in the same process:
- plain: the model card recipe, one pipeline call per request, float16, the VAE upcast to float32 per decode;
- executor: our engine (bfloat16 VAE decoded in chunks, cached prompt embeddings) fed a stream of single-image
  requests from many users with mixed aspects, so it batches what it can; its single requests go one at a time
  through one executor, PNG encoding included, as the bot serves them;
- tiny VAE: the executor with a tiny autoencoder decoding (`MODEL_TINY_VAE`, TAESD's architecture) instead
  of the VAE; softer pictures, so it stands beside the executor column rather than under the next one;
- +compiled: the executor with the compiled twins (bot.engine.compiled), compiled in the background first;
  as the bot does where memory allows, a child process compiles first and fills the cache
  (bot.engine.cache_filler; `--compile-in here` compiles in this process only). As the bot serves by default
  on a GPU, batches of one replay CUDA graphs, captured again over the compiled UNet once it is compiled, and
  the twins serve from 2 images (`CUDA_GRAPHS=off`: the twins serve from 1).
On a GPU, the executor and tiny VAE columns also time lone requests and the stream with CUDA graphs, and the
stream in batches of twice the bot's size. Then `bench.startup` runs as a fresh process on the weights saved to
disk, with the compile cache this run filled (a restart). Then tiny+compiled: the tiny autoencoder served by
compiled twins of its own. Last, when time is left, `bench.startup` with no compilation (time to the first image).
On a GPU, a lone request and 8 images in one call also say how long the GPU computed in one of them ("GPU busy",
from torch's profiler): the rest of its time the GPU waited on the host, on Python between kernels and host syncs.
How many host syncs one such call made ("host waits") comes from torch's sync debug mode. The stream runs once more
under the profiler, for the share of its time in which the GPU computed ("stream, profiled").
Random weights: speed and memory are real, the pictures are noise. Phases that would overrun `--budget` seconds are
skipped and say so. `--targets` runs only plain and tiny+compiled, the bot's fastest settings, whose child compiles
the tiny autoencoder too, and whose twins also serve the stream in batches of twice the bot's size: the issue's two
ratios in one command that fits a device session.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import copy
import dataclasses
import functools
import gc
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
from diffusers import (
    AutoencoderKL,
    AutoencoderTiny,
    LCMScheduler,
    StableDiffusionXLImg2ImgPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from bench.streams import local_latency, time_stream
from bot.engine.cache_filler import CompilePlan, fill_compile_cache
from bot.engine.compile_cache import use_compile_cache
from bot.engine.compiled import CompiledTwins
from bot.engine.cuda_graphs import cuda_graph_capture
from bot.engine.executor import BatchRunner
from bot.engine.fused_styles import FusedStyles
from bot.engine.generation import generate, render
from bot.engine.pipelines import Pipelines, assemble_pipelines, pipeline_over, vae_dtype
from bot.engine.requests import COUNT_RANGE, GenerationRequest, Kind, bucket_sizes, check_inputs
from bot.engine.service import choose_batch_images, graph_capture_for
from bot.engine.vae import LatentCodec
from bot.settings import Settings
from tests.support.tiny_model import build_tiny_model, byte_level_tokenizer

DEFAULT_CONFIGS = Path(__file__).resolve().parents[2] / "shared" / "model-configs" / "ssd-1b"
STREAM_ASPECTS = ("1:1", "16:9", "9:16", "4:3")
STEPS = 4
COLUMNS = ("plain", "executor", "tiny VAE", "+compiled", "tiny+compiled")
PROFILED_STREAM_SECONDS = 60  # its warm-up, the stream, and reading the profiler's events, with room to spare


def full_size_pipeline(configs: Path, device: torch.device, workdir: Path) -> StableDiffusionXLPipeline:
    """Random weights in the real shapes, built on the GPU (initialising 2 B parameters on the CPU is slow).

    In eval mode, as `from_pretrained` leaves a model. Built from a config, a model is in training mode, where
    its graphs differ from the bot's (dropout): a restart, which loads the saved weights, then missed every
    AOTAutograd entry the first process had compiled (on the CPU too, in training mode)."""

    def config(name: str) -> dict:
        return json.loads((configs / name / "config.json").read_text())

    with torch.device(device):
        unet = UNet2DConditionModel.from_config(config("unet")).half().eval()
        vae = AutoencoderKL.from_config(config("vae")).half().eval()
        text_encoder = CLIPTextModel(CLIPTextConfig(**config("text_encoder"))).half().eval()
        text_encoder_2 = CLIPTextModelWithProjection(CLIPTextConfig(**config("text_encoder_2"))).half().eval()
    tokenizer = byte_level_tokenizer(workdir / "tokenizer")  # byte-level: same 77-token shapes as CLIP's vocabulary
    scheduler = LCMScheduler.from_config(json.loads((configs / "scheduler" / "scheduler_config.json").read_text()))
    return StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=tokenizer,
        tokenizer_2=tokenizer,
        unet=unet,
        scheduler=scheduler,
        add_watermarker=False,
    )


def tiny_pipeline(workdir: Path) -> StableDiffusionXLPipeline:
    model = build_tiny_model(workdir)
    pipe = StableDiffusionXLPipeline.from_pretrained(model.base, add_watermarker=False)
    pipe.unet = UNet2DConditionModel.from_pretrained(model.lcm_unet)
    pipe.scheduler = LCMScheduler.from_config(pipe.scheduler.config)
    return pipe


def ours_from(plain: StableDiffusionXLPipeline, device: torch.device) -> Pipelines:
    """Our engine over the same UNet and text encoders, with its own VAE copy in an overflow-safe dtype."""
    vae = copy.deepcopy(plain.vae).to(vae_dtype(device, plain.unet.dtype, fp16_safe_vae=False))
    vae.register_to_config(force_upcast=False)
    components = {**plain.components, "vae": vae, "scheduler": copy.deepcopy(plain.scheduler)}
    return assemble_pipelines(StableDiffusionXLPipeline(**components), device, model_name="random")


def with_tiny_decoder(ours: Pipelines) -> Pipelines:
    """`ours` decoding with a tiny autoencoder (TAESD's architecture, random weights), uncompiled."""
    tiny = AutoencoderTiny().to(ours.device, ours.dtype).eval()
    return dataclasses.replace(ours, codec=LatentCodec(ours.codec.vae, ours.dtype, tiny), compiled=None)


@dataclasses.dataclass
class GpuBusy:
    """Filled in when `Bench.watching_the_gpu` ends."""

    seconds: float = float("nan")


class Bench:
    """Timing helpers that respect the GPU's asynchrony, a table being filled in, and the time budget."""

    def __init__(self, device: torch.device, budget: float) -> None:
        self.device = device
        self.deadline = time.perf_counter() + budget
        self.table: dict[str, dict[str, str]] = {}
        self.plain_stream_seconds = float("nan")
        self.held_gib = float("nan")

    def left(self) -> float:
        return self.deadline - time.perf_counter()

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()

    def seconds(self, run: Callable[[], object], repeats: int = 1) -> float:
        times = []
        for _ in range(repeats):
            self.sync()
            start = time.perf_counter()
            run()
            self.sync()
            times.append(time.perf_counter() - start)
        return statistics.median(times)

    def gpu_busy_seconds(self, run: Callable[[], object]) -> float:
        """How long the GPU computed during one `run`. Beside `run`'s time, the rest is what the GPU waited on the
        host: Python between kernels, and host syncs, which only a GPU can tell."""
        busy = GpuBusy()
        with self.watching_the_gpu([ProfilerActivity.CPU, ProfilerActivity.CUDA], busy):
            run()
        return busy.seconds

    @contextlib.contextmanager
    def watching_the_gpu(self, activities: list[ProfilerActivity], busy: GpuBusy) -> Iterator[None]:
        """How long the GPU computed within the block, into `busy` when it ends: the union of the intervals of
        the kernels and copies that torch's profiler records, those replayed from CUDA graphs included (not the
        annotations of compiled regions, which span gaps too)."""
        with profile(activities=activities) as profiled:
            yield
            self.sync()
        intervals = sorted(
            (event.time_range.start, event.time_range.end)
            for event in profiled.events()
            if event.device_type == DeviceType.CUDA and not event.is_user_annotation  # those span their kernels
        )
        busy_us, reached = 0.0, float("-inf")
        for start, end in intervals:
            busy_us += max(0.0, end - max(start, reached))
            reached = max(reached, end)
        busy.seconds = busy_us / 1e6

    @staticmethod
    def host_waits(run: Callable[[], object]) -> int:
        """How many times one `run` made the host wait for the GPU (reading a value back, a copy from pageable
        memory), by torch's sync debug mode. After each wait the GPU idles until the host queues more work."""
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                run()
            finally:
                torch.cuda.set_sync_debug_mode("default")
        return sum("synchronizing CUDA operation" in str(warning.message) for warning in caught)

    def record_seconds(self, row: str, column: str, run: Callable[[], object], repeats: int = 1) -> None:
        """`run`'s time as `row` and, on a GPU, under it, how much of one more `run` the GPU computed and how many
        times the host waited for it."""
        self.record(row, column, f"{self.seconds(run, repeats):.3f}")
        if self.device.type == "cuda":
            label = row.removesuffix(", s")
            self.record(f"{label}: GPU busy, s", column, f"{self.gpu_busy_seconds(run):.3f}")
            self.record(f"{label}: host waits", column, str(self.host_waits(run)))

    def peak_gib(self, run: Callable[[], object]) -> float:
        """Peak GPU memory allocated during `run`, counting what was held before it (the weights, and in one
        process what earlier phases still hold: `held_gib` says how much)."""
        if self.device.type != "cuda":
            return float("nan")
        gc.collect()  # tensors of earlier phases that only reference cycles keep alive
        self.held_gib = torch.cuda.memory_allocated() / 2**30
        torch.cuda.reset_peak_memory_stats()
        run()
        return torch.cuda.max_memory_allocated() / 2**30

    def record(self, row: str, column: str, value: str) -> None:
        self.table.setdefault(row, {})[column] = value
        print(f"  {column:>10} | {row}: {value}", flush=True)

    def print_table(self) -> None:
        width = max(10, *map(len, COLUMNS))
        label_width = max(len("measure"), *map(len, self.table))
        print(f"| {'measure':<{label_width}} | " + " | ".join(f"{column:>{width}}" for column in COLUMNS) + " |")
        print(f"|{'-' * (label_width + 2)}|" + "|".join("-" * (width + 2) for _ in COLUMNS) + "|")
        for row, values in self.table.items():
            cells = " | ".join(f"{values.get(column, ''):>{width}}" for column in COLUMNS)
            print(f"| {row:<{label_width}} | {cells} |")


def split_count(images: int) -> list[int]:
    """`count`s of requests that make one batch of `images` (a request asks for at most COUNT_RANGE[1])."""
    most = COUNT_RANGE[1]
    return [most] * (images // most) + ([images % most] if images % most else [])


def stream_requests(buckets: dict[str, tuple[int, int]], count: int, tag: str) -> list[GenerationRequest]:
    return [
        check_inputs(Kind.IMAGINE, f"{tag} {i}", buckets=buckets, aspect=STREAM_ASPECTS[i % 4], seed=i)
        for i in range(count)
    ]


def measure_plain(bench: Bench, plain: StableDiffusionXLPipeline, buckets, requests: int) -> None:
    def call(prompts: list[str], size: tuple[int, int]) -> None:
        plain(prompt=prompts, num_inference_steps=STEPS, guidance_scale=1.0, width=size[0], height=size[1])

    # Each shape runs once off the clock, as ours do: its first call on a thread builds cuDNN's plans
    square = buckets["1:1"]
    for aspect in STREAM_ASPECTS:
        call(["warm-up"], buckets[aspect])
    bench.record_seconds("one request alone, s", "plain", lambda: call(["a fox"], square), 3)
    bench.record("peak memory, one image, GiB", "plain", f"{bench.peak_gib(lambda: call(['a fox'], square)):.2f}")
    bench.record("  of which held before, GiB", "plain", f"{bench.held_gib:.2f}")
    call(["warm-up"] * 8, square)
    bench.record_seconds("8 images in one call, s", "plain", lambda: call(["a fox"] * 8, square))
    sizes = [buckets[STREAM_ASPECTS[i % 4]] for i in range(requests)]
    elapsed = bench.seconds(lambda: [call([f"plain {i}"], size) for i, size in enumerate(sizes)])
    bench.record("stream, images/s", "plain", f"{requests / elapsed:.2f}")
    bench.plain_stream_seconds = elapsed


def check_scheduler_pictures(bench: Bench, ours: Pipelines, buckets) -> None:
    """Whether our LCM scheduler (bot.engine.scheduler) and pipelines (their starting noise and conditioning,
    bot.engine.pipelines) paint diffusers' latents to the bit, and whether a seed paints the same latents after a
    remix as before it, with either. Only a GPU can tell: there, how an operand is rounded depends on whether it is
    a CPU scalar or a GPU tensor; on a CPU both round alike."""
    width, height = buckets["1:1"]
    common = {"num_inference_steps": STEPS, "guidance_scale": 1.0, "width": width, "height": height}

    def seeded(pipe: object, **task: object) -> torch.Tensor:
        generator = [torch.Generator().manual_seed(1)]
        return pipe(prompt=["a fox"], generator=generator, output_type="latent", **common, **task).images

    def compared(first: torch.Tensor, second: torch.Tensor) -> str:
        return "identical" if torch.equal(first, second) else f"differ, max {(first - second).abs().max().item():.1e}"

    starting = torch.randn(1, 4, height // 8, width // 8, generator=torch.Generator().manual_seed(2))
    painted = {}
    kinds = (
        ("ours", type(ours.text2img.scheduler), type(ours.text2img), type(ours.img2img)),
        ("diffusers'", LCMScheduler, StableDiffusionXLPipeline, StableDiffusionXLImg2ImgPipeline),
    )
    for name, scheduler_class, text2img_class, img2img_class in kinds:
        scheduler = scheduler_class.from_config(ours.text2img.scheduler.config)
        text2img = pipeline_over(text2img_class, ours.text2img, scheduler=scheduler)
        img2img = pipeline_over(img2img_class, ours.text2img, scheduler=scheduler)
        for pipe in (text2img, img2img):
            pipe.set_progress_bar_config(disable=True)
        painted[name] = before = seeded(text2img)
        bench.record(f"{name}: a seed painted twice", "executor", compared(before, seeded(text2img)))
        seeded(img2img, image=starting.to(ours.device, ours.dtype), strength=0.5)
        bench.record(f"{name}: a seed after a remix", "executor", compared(before, seeded(text2img)))
    bench.record(
        "ours against diffusers' (pipelines, scheduler)", "executor", compared(painted["ours"], painted["diffusers'"])
    )


def eight_images(buckets) -> list[GenerationRequest]:
    """Two requests of 4 images: one batch of 8, the largest a full-size GPU serves."""
    four = check_inputs(Kind.IMAGINE, "a fox", buckets=buckets, count=4)
    return [four, four]


def measure_ours(bench: Bench, ours: Pipelines, column: str, buckets, requests: int, users: int, batch: int) -> None:
    run_ours = functools.partial(generate, ours)
    for aspect in STREAM_ASPECTS:  # eager warm-up of every stream shape (cuDNN picks its algorithms)
        generate(ours, [check_inputs(Kind.IMAGINE, "warm-up", buckets=buckets, aspect=aspect, count=2)])

    # One at a time through one executor, as the bot serves: its GPU thread starts with the first request
    prompts = [f"first {column}", *(f"new prompt {index} {column}" for index in range(3)), *["a fox"] * 3]
    alone = [check_inputs(Kind.IMAGINE, prompt, buckets=buckets, seed=1) for prompt in prompts]
    seconds = asyncio.run(local_latency(run_ours, alone, batch_images=1)).totals
    bench.record("first request on a new GPU thread, s", column, f"{seconds[0]:.3f}")
    bench.record("one request alone, s", column, f"{statistics.median(seconds[1:4]):.3f}")
    bench.record("one request alone, cached prompt, s", column, f"{statistics.median(seconds[4:]):.3f}")
    bench.record_seconds("  the same without queue and PNG, s", column, lone_and_bare(ours, buckets, column), 3)
    eager_on_gpu = bench.device.type == "cuda" and ours.compiled is None  # the rows only eager models have
    if eager_on_gpu:
        try:
            measure_graphs(bench, ours, column, buckets, requests=requests, users=users, batch=batch)
        except Exception as exc:  # said, and the rest of the table still gets its GPU time
            print(f"CUDA graphs rows failed: {exc!r}", flush=True)
        gc.collect()  # the graphs' module trees hold references to themselves
        torch.cuda.empty_cache()
    one = check_inputs(Kind.IMAGINE, "a fox", buckets=buckets, seed=3)
    bench.record("peak memory, one image, GiB", column, f"{bench.peak_gib(lambda: generate(ours, [one])):.2f}")
    bench.record("  of which held before, GiB", column, f"{bench.held_gib:.2f}")
    eight = eight_images(buckets)
    generate(ours, eight)  # off the clock: this thread's first batch of 8 builds cuDNN's plans for it
    bench.record_seconds("8 images in one call, s", column, lambda: generate(ours, eight))
    bench.record("peak memory, 8 images, GiB", column, f"{bench.peak_gib(lambda: generate(ours, eight)):.2f}")
    warm_up = stream_warm_up(buckets, [1], split_count(batch))
    run_stream(bench, run_ours, column, "stream", buckets, requests=requests, users=users, batch=batch, warm_up=warm_up)
    # Compiled twins that serve batches of twice the bot's size (`--targets`) time them too; others would run eager.
    larger_served = ours.compiled is None or ours.compiled.max_batch_images >= 2 * batch
    if bench.device.type == "cuda" and larger_served:
        try:
            measure_larger_batches(bench, ours, column, buckets, requests=requests, users=users, batch=2 * batch)
        except Exception as exc:  # out of memory, say: the rest of the table still gets its GPU time
            print(f"larger batches failed: {exc!r}", flush=True)


def run_stream(
    bench: Bench,
    run: BatchRunner,
    column: str,
    label: str,
    buckets,
    *,
    requests: int,
    users: int,
    batch: int,
    warm_up: list[list[GenerationRequest]],
) -> None:
    """Time the stream through an executor that forms batches of up to `batch` images, and record it as `label`.
    Its prompts are new to the prompt cache (they name `label` and `column`), as a stream's are."""
    stream = stream_requests(buckets, requests, f"{label} {column}")
    timing = asyncio.run(time_stream(run, stream, users=users, batch_images=batch, warm_up=warm_up))
    bench.record(f"{label}, images/s", column, f"{requests / timing.seconds:.2f}")
    bench.record(f"{label}, speed-up over plain", column, f"{bench.plain_stream_seconds / timing.seconds:.2f}x")
    bench.record(f"  {label}: batches, GPU thread busy", column, f"{timing.batches}, {timing.busy_share:.0%}")


def record_stream_gpu_busy(
    bench: Bench, ours: Pipelines, column: str, buckets, *, requests: int, users: int, batch: int
) -> None:
    """Of the stream's time, the share in which the GPU computed, from the stream run once more, with new
    prompts, under torch's profiler (kernels and copies only, to disturb it least). Near 100 %, only faster
    kernels make the stream faster; below, the GPU waits on the host: between batches, or within them."""
    if bench.left() < PROFILED_STREAM_SECONDS:
        print(f"skipped the profiled stream: {bench.left():.0f} s left", flush=True)
        return
    stream = stream_requests(buckets, requests, f"profiled stream {column}")
    warm_up = stream_warm_up(buckets, [1], split_count(batch))
    busy = GpuBusy()
    watch = functools.partial(bench.watching_the_gpu, [ProfilerActivity.CUDA], busy)
    run = functools.partial(generate, ours)
    timing = asyncio.run(time_stream(run, stream, users=users, batch_images=batch, warm_up=warm_up, watch=watch))
    profiled = f"{requests / timing.seconds:.2f}, {busy.seconds / timing.seconds:.0%}"
    bench.record("  stream, profiled: images/s, GPU busy", column, profiled)


def measure_larger_batches(
    bench: Bench, ours: Pipelines, column: str, buckets, *, requests: int, users: int, batch: int
) -> None:
    """The stream in batches of up to `batch` images, more than the bot forms on its own (`MAX_AUTO_BATCH_IMAGES`;
    `MAX_BATCH_IMAGES` allows more). A batch of 8 took 0.54 s on an H200 with the tiny VAE, where its UNet steps
    computed under half the card's rate: larger batches show whether the UNet does better, and how much of a
    batch's time is fixed, before the bot forms them on large cards."""
    warm_up = stream_warm_up(buckets, split_count(batch))
    run = functools.partial(generate, ours)
    label = f"stream in batches of {batch}"
    run_stream(bench, run, column, label, buckets, requests=requests, users=users, batch=batch, warm_up=warm_up)


def stream_warm_up(buckets, *batches: list[int]) -> list[list[GenerationRequest]]:
    """For every stream aspect, one batch of requests of each of these counts: the shapes a stream will run."""
    return [
        [check_inputs(Kind.IMAGINE, "warm-up", buckets=buckets, aspect=aspect, count=count) for count in counts]
        for aspect in STREAM_ASPECTS
        for counts in batches
    ]


def lone_and_bare(pipes: Pipelines, buckets, tag: str) -> Callable[[], object]:
    """A lone request's generation without the queue and its PNG, with a new prompt each call."""
    fresh = itertools.count()
    return lambda: generate(pipes, [check_inputs(Kind.IMAGINE, f"bare {next(fresh)} {tag}", buckets=buckets, seed=1)])


def measure_graphs(
    bench: Bench, ours: Pipelines, column: str, buckets, *, requests: int, users: int, batch: int
) -> None:
    """Lone requests with the UNet's batches of one, and the text encoders' new prompts, replayed from CUDA graphs
    (`CUDA_GRAPHS`), square bucket only: the first request captures, later ones replay (new against cached
    prompts shows the text encoders' part). Then the stream, where only the text encoders replay graphs (up to
    `batch` new prompts). The graphs' memory is their pool, read as what stays reserved once the allocator has
    let go of its free blocks (an eager decode's, which would count otherwise); it goes back when they do, at the
    end."""
    reserved_before = reserved_gib_after_release()
    fused_styles = FusedStyles.of(ours, fuse=False, capture=cuda_graph_capture(), max_prompts=batch)
    graphed = dataclasses.replace(ours, fused_styles=fused_styles)
    capturing = [check_inputs(Kind.IMAGINE, f"capture {column}", buckets=buckets, seed=1)]
    seconds = bench.seconds(functools.partial(generate, graphed, capturing))
    bench.record("CUDA graphs: request that captures, s", column, f"{seconds:.3f}")
    graph_gib = reserved_gib_after_release() - reserved_before
    bench.record("CUDA graphs: memory of one aspect's graphs, GiB", column, f"{graph_gib:.2f}")
    # As in `measure_ours`: the first request on the executor's new GPU thread is left out (cuDNN's set-up)
    prompts = [f"first graphed {column}", *(f"graphed prompt {index} {column}" for index in range(3)), *["a fox"] * 3]
    alone = [check_inputs(Kind.IMAGINE, prompt, buckets=buckets, seed=1) for prompt in prompts]
    seconds = asyncio.run(local_latency(functools.partial(generate, graphed), alone, batch_images=1)).totals
    bench.record("CUDA graphs: one request alone, s", column, f"{statistics.median(seconds[1:4]):.3f}")
    bench.record("CUDA graphs: alone, cached prompt, s", column, f"{statistics.median(seconds[4:]):.3f}")
    bare = lone_and_bare(graphed, buckets, f"graphed {column}")
    bench.record_seconds("CUDA graphs: alone, no queue or PNG, s", column, bare, 3)
    warm_up = [  # every stream aspect alone and at the largest batch of new prompts: each captures its graphs
        group
        for aspect in STREAM_ASPECTS
        for group in (
            [check_inputs(Kind.IMAGINE, f"warm-up {aspect}", buckets=buckets, aspect=aspect)],
            [check_inputs(Kind.IMAGINE, f"warm-up {index}", buckets=buckets, aspect=aspect) for index in range(batch)],
        )
    ]
    run = functools.partial(generate, graphed)
    label = "CUDA graphs: stream"
    run_stream(bench, run, column, label, buckets, requests=requests, users=users, batch=batch, warm_up=warm_up)
    graph_gib = reserved_gib_after_release() - reserved_before
    bench.record(f"  memory of its graphs (4 aspects, 1 to {batch} prompts), GiB", column, f"{graph_gib:.2f}")


def reserved_gib_after_release() -> float:
    """GPU memory still reserved once unreferenced tensors and the allocator's free blocks are let go of: the
    weights, what the caches hold, and CUDA graphs' pools, which the allocator never releases while they live."""
    gc.collect()
    torch.cuda.empty_cache()
    return torch.cuda.memory_reserved() / 2**30


def measure_compiled(
    bench: Bench,
    ours: Pipelines,
    column: str,
    buckets,
    requests: int,
    users: int,
    batch: int,
    fill_cache: Callable[[], bool] | None = None,
    twins_images: int | None = None,
) -> bool:
    """Compile twins of `ours` in the background, then measure `ours` served by them; whether they compiled in
    time. The twins serve batches of up to `twins_images` (default `batch`): beyond them, the stream in larger
    batches runs eager."""
    twins_images = twins_images or batch
    compiled = bench.left() > 120 and compile_twins(bench, ours, column, buckets, twins_images, fill_cache=fill_cache)
    if compiled:
        measure_ours(bench, ours, column, buckets, requests, users, batch)
        bench.record("batches served compiled", column, str(ours.compiled.batches_served))
    else:
        print(f"skipped {column}: {bench.left():.0f} s left", flush=True)
    return compiled


def compile_twins(
    bench: Bench,
    ours: Pipelines,
    column: str,
    buckets,
    batch: int,
    *,
    share_budget: bool = True,
    fill_cache: Callable[[], bool] | None = None,
) -> bool:
    """Compile in the background as the bot does, timing eager requests served meanwhile. `share_budget` gives
    up once the compile has taken half the time left beyond a minute, keeping the rest for later phases.
    `fill_cache`: the cache filler's child compiles first (bot.engine.cache_filler)."""
    twins = CompiledTwins(ours, buckets, batch)
    started = time.perf_counter()
    twins.start(render, fill_cache)
    request = check_inputs(Kind.IMAGINE, "served while compiling", buckets=buckets, seed=5)
    latencies: dict[float, float] = {}  # seconds into the compile when a request was sent: its latency
    while not twins.wait(timeout=0.5):
        give_up = time.perf_counter() - started > bench.left() - 60 if share_budget else bench.left() < 10
        if give_up or twins.finished:
            break
        latencies[time.perf_counter() - started] = bench.seconds(lambda: generate(ours, [request]))
    if latencies:
        worst_at, worst = max(latencies.items(), key=lambda item: item[1])
        slow = sum(seconds > 2 for seconds in latencies.values())
        bench.record("eager latency while compiling, s", column, f"{statistics.median(latencies.values()):.3f} med")
        bench.record("  (worst of the above)", column, f"{worst:.3f}")
        bench.record("  (worst sent at, s into the compile)", column, f"{worst_at:.1f}")
        bench.record("  (requests over 2 s, of all)", column, f"{slow} of {len(latencies)}")
    if not twins.ready:
        print("compilation did not finish in the budget (or failed; see the log)", flush=True)
        return False
    bench.record("compiled speed after, s", column, f"{time.perf_counter() - started:.1f}")
    if twins.cache_fill_seconds is not None:
        bench.record("  of which the compile child, s", column, f"{twins.cache_fill_seconds:.1f}")
    bench.record("compile in this process, s", column, f"{twins.compile_seconds:.1f}")
    bench.record("  of which starting compile workers, s", column, f"{twins.workers_seconds:.1f}")
    bench.record("graphs compiled", column, str(twins.graphs_compiled))
    bench.record("CUDA graphs captured again, compiled", column, str(twins.graphs_recaptured))
    ours.compiled = twins
    return True


def measure_restart(bench: Bench, model_dir: Path, resolution: int, device: str, compile_setting: str) -> None:
    """`bench.startup` in a fresh process: with `compile_setting` "on", a restart that finds the compile cache
    this run filled; "off", the time to a first image without compiling."""
    label = "restart, compile cache warm" if compile_setting == "on" else "start, no compile"
    if bench.left() < 100:
        print(f"skipped {label}: {bench.left():.0f} s left", flush=True)
        return
    command = [
        sys.executable, "-m", "bench.startup", "--model-base", str(model_dir), "--model-unet",
        str(model_dir / "unet"), "--resolution", str(resolution), "--compile", compile_setting,
        "--device", device, "--compile-timeout", str(max(10, bench.left() - 40)),
    ]  # fmt: skip
    env = dict(os.environ)
    if "TORCH_LOGS_OUT" in env:  # the fresh process logs to a file of its own, beside this process's log
        env["TORCH_LOGS_OUT"] = f"{env['TORCH_LOGS_OUT']}.{label.replace(' ', '-').replace(',', '')}"
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=max(30, bench.left() - 10), env=env)
    except subprocess.TimeoutExpired:
        print(f"{label}: did not finish in the budget", flush=True)
        return
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if not lines:
        print(f"{label} failed:\n{done.stderr[-3000:]}", flush=True)
        return
    report = json.loads(lines[-1])
    column = "+compiled" if compile_setting == "on" else "executor"
    print(f"{label}: {report}", flush=True)
    bench.record("fresh process: first image, s", column, f"{report['first_image_s']:.1f}")
    if "compiled_ready_s" in report:
        bench.record("fresh process: compiled ready, s", column, f"{report['compiled_ready_s']:.1f}")
        phases = "{dynamo} / {tracing} / {backend}".format(**report["compile_phases_s"])
        bench.record("  compiling: all / tracing / backend, s", column, phases)
        bench.record("  starting compile workers, s", column, f"{report['compile_workers_s']:.1f}")
        bench.record("  CUDA graphs captured again, compiled", column, str(report["graphs_recaptured"]))
    bench.record("fresh process: alone, s", column, f"{report['alone_s']:.3f}")
    if "peak_batch1_gib" in report:
        bench.record("fresh process: peak, one image, GiB", column, f"{report['peak_batch1_gib']:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--configs", type=Path, default=DEFAULT_CONFIGS)
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--users", type=int, default=16)
    parser.add_argument("--budget", type=float, default=900, help="seconds; later phases are skipped past it")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "lcm-bench")
    parser.add_argument("--tiny", action="store_true", help="tiny test model on the CPU (smoke run)")
    parser.add_argument(
        "--compile-only", action="store_true", help="only compile the twins, timing eager requests meanwhile"
    )
    parser.add_argument(
        "--targets",
        action="store_true",
        help="only what the issue's targets compare: plain, then the fastest settings (tiny VAE, compiled twins)",
    )
    parser.add_argument(
        "--compile-in",
        choices=["child", "here"],
        default="child",
        help="child: a child process fills the compile cache first, as the bot does where memory allows",
    )
    parser.add_argument(
        "--child-images",
        type=int,
        help="the compile child's largest batches (default: the batch size; the bot's 40 and 48 GB cards use 2)",
    )
    args = parser.parse_args()

    device = torch.device("cpu" if args.tiny else "cuda")
    resolution = 256 if args.tiny else 1024
    buckets = bucket_sizes(resolution)
    bench = Bench(device, args.budget)
    use_compile_cache(args.workdir / "compile-cache")
    args.workdir.mkdir(parents=True, exist_ok=True)
    name = torch.cuda.get_device_name() if device.type == "cuda" else "CPU (tiny model)"
    print(f"device: {name}; torch {torch.__version__}; {resolution}px, {STEPS} steps", flush=True)

    # 0. The model, also saved to disk for the fresh-process measurements
    started = time.perf_counter()
    plain = tiny_pipeline(args.workdir) if args.tiny else full_size_pipeline(args.configs, device, args.workdir)
    plain.to(device)
    plain.set_progress_bar_config(disable=True)
    model_dir = args.workdir / "model"
    plain.save_pretrained(model_dir)
    print(f"model built and saved in {time.perf_counter() - started:.0f} s", flush=True)
    settings = Settings(base_resolution=resolution, _env_file=None)
    batch = choose_batch_images(settings, device)
    print(f"stream: {args.requests} single-image requests from {args.users} users, aspects "
          f"{', '.join(STREAM_ASPECTS)}; batches of up to {batch}", flush=True)  # fmt: skip

    ours = ours_from(plain, device)
    # The compiled columns serve as the bot does (bot.engine.service.load_engine): with `CUDA_GRAPHS` (on a GPU by
    # default), batches of one replay graphs, which are captured again over the compiled UNet.
    capture = graph_capture_for(settings, device)

    def graphed_beside_the_twins(pipes: Pipelines) -> None:
        """Graphs for batches of one, as the bot has them when its compile ends: the serving warm-up captured them.
        The measured lone requests are square, so that bucket's is captured (eager, off the clock)."""
        if capture is not None:
            pipes.fused_styles = FusedStyles.of(pipes, fuse=False, capture=capture, max_prompts=batch)
        generate(pipes, [check_inputs(Kind.IMAGINE, "warm-up", buckets=buckets)])

    tiny_decoded = with_tiny_decoder(ours) if args.targets else None  # built first: the compile child loads it
    fill_cache = None
    if args.compile_in == "child":  # the child loads the saved model, as a restart does
        model_settings = {"model_base": str(model_dir), "model_unet": str(model_dir / "unet"), "device": device.type}
        if tiny_decoded is not None:  # the child compiles the decoder that will serve: the tiny autoencoder
            tiny_decoded.codec.decoder.save_pretrained(model_dir / "tiny-vae")
            model_settings["model_tiny_vae"] = str(model_dir / "tiny-vae")
        plan = CompilePlan(settings.model_copy(update=model_settings), buckets, batch)
        fill_cache = functools.partial(fill_compile_cache, plan, args.child_images or batch)
    if args.compile_only:
        graphed_beside_the_twins(ours)
        compiled = compile_twins(bench, ours, "+compiled", buckets, batch, share_budget=False, fill_cache=fill_cache)
        if compiled:
            # The kernels' speed at the size that serves, whatever size the child compiled them at
            eight = eight_images(buckets)
            bench.record_seconds("8 images in one call, s", "+compiled", lambda: generate(ours, eight))
        bench.print_table()
        return
    if args.targets:  # one command answers the stream and lone-request targets, in one device session
        measure_plain(bench, plain, buckets, args.requests)
        check_scheduler_pictures(bench, ours, buckets)
        graphed_beside_the_twins(tiny_decoded)
        # The twins serve the stream's larger batches too, as they would with MAX_BATCH_IMAGES at that size; the
        # child's batches stay the bot's, whose compiled graphs take any size above 1 (they are dynamic).
        compiled = measure_compiled(
            bench, tiny_decoded, "tiny+compiled", buckets, args.requests, args.users, batch, fill_cache, 2 * batch
        )
        if compiled and device.type == "cuda":
            sizes = {"requests": args.requests, "users": args.users, "batch": batch}
            try:
                record_stream_gpu_busy(bench, tiny_decoded, "tiny+compiled", buckets, **sizes)
            except Exception as exc:  # said, and the table still prints
                print(f"profiled stream failed: {exc!r}", flush=True)
        bench.print_table()
        return

    # 1. Plain diffusers, 2. our executor, 3. with the tiny autoencoder, 4. + compiled twins
    measure_plain(bench, plain, buckets, args.requests)
    check_scheduler_pictures(bench, ours, buckets)
    measure_ours(bench, ours, "executor", buckets, args.requests, args.users, batch)
    tiny_decoded = with_tiny_decoder(ours)
    measure_ours(bench, tiny_decoded, "tiny VAE", buckets, args.requests, args.users, batch)
    graphed_beside_the_twins(ours)
    measure_compiled(bench, ours, "+compiled", buckets, args.requests, args.users, batch, fill_cache)
    del plain
    gc.collect()

    # 5. A fresh process on the saved weights: a restart with the compile cache
    measure_restart(bench, model_dir, resolution, device.type, compile_setting="on")

    # 6. Both: the tiny autoencoder served by compiled twins (the UNet's graphs come from the cache by now)
    graphed_beside_the_twins(tiny_decoded)
    measure_compiled(bench, tiny_decoded, "tiny+compiled", buckets, args.requests, args.users, batch)

    # 7. If time is left, a fresh process without compiling: the time to a first image
    measure_restart(bench, model_dir, resolution, device.type, compile_setting="off")
    print()
    bench.print_table()


if __name__ == "__main__":
    main()
