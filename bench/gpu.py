"""Plain diffusers against our executor on a full-size random-weight LCM SSD-1B, side by side in one run.

    python -m bench.gpu                      # on a CUDA GPU, full size, from ../shared/model-configs/ssd-1b
    python -m bench.gpu --tiny --requests 8  # smoke run of the same code on the tiny test model, on the CPU

Plain diffusers is the model card recipe: one pipeline call per request, float16, the VAE upcast to float32 by
diffusers for each decode. Ours is the production executor (bot.engine) fed a stream of single-image requests
from many users with mixed aspects, so it batches what it can. Both share the same UNet and text encoders.
Random weights: speed and memory are real, the pictures are noise.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import functools
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
from diffusers import AutoencoderKL, LCMScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from bench.streams import time_stream
from bot.engine.generation import generate
from bot.engine.pipelines import Pipelines, assemble_pipelines, vae_dtype
from bot.engine.requests import GenerationRequest, Kind, bucket_sizes, check_inputs
from bot.engine.service import choose_batch_images
from bot.settings import Settings
from tests.support.tiny_model import build_tiny_model, byte_level_tokenizer

DEFAULT_CONFIGS = Path(__file__).resolve().parents[2] / "shared" / "model-configs" / "ssd-1b"
STREAM_ASPECTS = ("1:1", "16:9", "9:16", "4:3")
STEPS = 4


def full_size_pipeline(configs: Path, device: torch.device, workdir: Path) -> StableDiffusionXLPipeline:
    """Random weights in the real shapes, built on the GPU (initialising 2 B parameters on the CPU is slow)."""

    def config(name: str) -> dict:
        return json.loads((configs / name / "config.json").read_text())

    with torch.device(device):
        unet = UNet2DConditionModel.from_config(config("unet")).half()
        vae = AutoencoderKL.from_config(config("vae")).half()
        text_encoder = CLIPTextModel(CLIPTextConfig(**config("text_encoder"))).half()
        text_encoder_2 = CLIPTextModelWithProjection(CLIPTextConfig(**config("text_encoder_2"))).half()
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


class Stopwatch:
    def __init__(self, device: torch.device) -> None:
        self.device = device

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()

    def reset_peak(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()

    def peak_gib(self) -> float:
        return torch.cuda.max_memory_allocated() / 2**30 if self.device.type == "cuda" else float("nan")


def plain_call(pipe: StableDiffusionXLPipeline, prompts: list[str], size: tuple[int, int]) -> None:
    pipe(prompt=prompts, num_inference_steps=STEPS, guidance_scale=1.0, width=size[0], height=size[1])


def median_seconds(watch: Stopwatch, run, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        watch.sync()
        start = time.perf_counter()
        run()
        watch.sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def stream_requests(buckets: dict[str, tuple[int, int]], count: int) -> list[GenerationRequest]:
    return [
        check_inputs(Kind.IMAGINE, f"prompt {index}", buckets=buckets, aspect=STREAM_ASPECTS[index % 4], seed=index)
        for index in range(count)
    ]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--configs", type=Path, default=DEFAULT_CONFIGS)
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--users", type=int, default=16)
    parser.add_argument("--tiny", action="store_true", help="tiny test model on the CPU (smoke run)")
    args = parser.parse_args()

    device = torch.device("cpu" if args.tiny else "cuda")
    resolution = 256 if args.tiny else 1024
    buckets = bucket_sizes(resolution)
    square = buckets["1:1"]
    watch = Stopwatch(device)
    with tempfile.TemporaryDirectory() as folder:
        plain = tiny_pipeline(Path(folder)) if args.tiny else full_size_pipeline(args.configs, device, Path(folder))
    plain.to(device)
    plain.set_progress_bar_config(disable=True)
    ours = ours_from(plain, device)
    settings = Settings(base_resolution=resolution, _env_file=None)
    batch_images = choose_batch_images(settings, device)

    # 1. Plain diffusers: warm up, one request alone, batch of 8 prompts, then the request stream one by one
    plain_call(plain, ["warm-up"], square)
    watch.reset_peak()
    plain_alone = median_seconds(watch, lambda: plain_call(plain, ["a fox"], square), repeats=3)
    plain_peak_1 = watch.peak_gib()
    watch.reset_peak()
    plain_batch8 = median_seconds(watch, lambda: plain_call(plain, ["a fox"] * 8, square), repeats=1)
    plain_peak_8 = watch.peak_gib()
    stream = [buckets[STREAM_ASPECTS[index % 4]] for index in range(args.requests)]
    plain_stream = median_seconds(
        watch, lambda: [plain_call(plain, [f"prompt {i}"], size) for i, size in enumerate(stream)], repeats=1
    )

    # 2. Ours: warm up every stream shape, one request alone, a batch of 8, then the stream through the executor
    for aspect in STREAM_ASPECTS:
        generate(ours, [check_inputs(Kind.IMAGINE, "warm-up", buckets=buckets, aspect=aspect)])
    watch.reset_peak()
    run_ours = functools.partial(generate, ours)
    one = stream_requests(buckets, 1)
    ours_alone = statistics.median(asyncio.run(time_stream(run_ours, one, users=1, batch_images=1)) for _ in range(3))
    ours_peak_1 = watch.peak_gib()
    watch.reset_peak()
    eight = check_inputs(Kind.IMAGINE, "a fox", buckets=buckets, count=4)
    ours_batch8 = median_seconds(watch, lambda: generate(ours, [eight, eight]), repeats=1)
    ours_peak_8 = watch.peak_gib()
    ours_stream = asyncio.run(
        time_stream(run_ours, stream_requests(buckets, args.requests), users=args.users, batch_images=batch_images)
    )

    name = torch.cuda.get_device_name() if device.type == "cuda" else "CPU (tiny model)"
    print(f"device: {name}; {resolution}px base, {STEPS} steps; stream: {args.requests} single-image requests")
    print(f"from {args.users} users, aspects {', '.join(STREAM_ASPECTS)}; executor batches up to {batch_images}")
    rows = [
        ("one request alone, s", f"{plain_alone:.3f}", f"{ours_alone:.3f}", f"{ours_alone / plain_alone:.2f}x"),
        ("8 images in one call, s", f"{plain_batch8:.3f}", f"{ours_batch8:.3f}", f"{ours_batch8 / plain_batch8:.2f}x"),
        (
            "stream, images/s",
            f"{args.requests / plain_stream:.2f}",
            f"{args.requests / ours_stream:.2f}",
            f"{plain_stream / ours_stream:.2f}x",
        ),
        ("peak memory at batch 1, GiB", f"{plain_peak_1:.1f}", f"{ours_peak_1:.1f}", ""),
        ("peak memory at batch 8, GiB", f"{plain_peak_8:.1f}", f"{ours_peak_8:.1f}", ""),
    ]
    print(f"| {'measure':<30} | {'plain diffusers':>15} | {'lcm-bot':>10} | {'ratio':>8} |")
    print(f"|{'-' * 32}|{'-' * 17}|{'-' * 12}|{'-' * 10}|")
    for label, plain_value, ours_value, ratio in rows:
        print(f"| {label:<30} | {plain_value:>15} | {ours_value:>10} | {ratio:>8} |")


if __name__ == "__main__":
    main()
