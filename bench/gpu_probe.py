"""A short GPU probe of where one request's time goes, for the open question of issue 6 (our pipeline call is
slower than plain diffusers on a GPU). Full-size random weights, 1024x1024, 4 steps.

    python -m bench.gpu_probe [--configs DIR] [--compile-seconds 120]

Prints: VAE decode time and finiteness per dtype; our `generate` at 1 and 8 images with the number of float32
retries; the latent-only pipeline call (text encoders + UNet steps); and the regional compile of one bucket.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from bench.gpu import DEFAULT_CONFIGS, full_size_pipeline, ours_from
from bot.engine.compiled import CompiledTwins, use_compile_cache
from bot.engine.generation import generate, render
from bot.engine.requests import Kind, bucket_sizes, check_inputs


def seconds(run, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        torch.cuda.synchronize()
        start = time.perf_counter()
        run()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return round(statistics.median(times), 4)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--configs", type=Path, default=DEFAULT_CONFIGS)
    parser.add_argument("--compile-seconds", type=float, default=120)
    args = parser.parse_args()
    device = torch.device("cuda")
    use_compile_cache(Path(tempfile.gettempdir()) / "lcm-probe-cache")
    print(torch.cuda.get_device_name(), flush=True)
    plain = full_size_pipeline(args.configs, device, Path(tempfile.mkdtemp()))
    plain.set_progress_bar_config(disable=True)
    latents = torch.randn(1, 4, 128, 128, device=device)
    scale = plain.vae.config.scaling_factor
    with torch.no_grad():
        for dtype in (torch.float32, torch.bfloat16, torch.float16):
            vae = plain.vae.to(dtype)
            pixels = vae.decode(latents.to(dtype) / scale).sample
            decode = seconds(lambda vae=vae, dtype=dtype: vae.decode(latents.to(dtype) / scale))
            print(f"vae decode {dtype}: finite {torch.isfinite(pixels).all().item()}, {decode} s", flush=True)
        plain.vae.to(torch.float16)
    ours = ours_from(plain, device)
    buckets = bucket_sizes(1024)
    one = check_inputs(Kind.IMAGINE, "a fox", buckets=buckets, seed=1)
    four = check_inputs(Kind.IMAGINE, "a fox", buckets=buckets, count=4)
    generate(ours, [one])
    alone, eight = seconds(lambda: generate(ours, [one])), seconds(lambda: generate(ours, [four, four]), 1)
    print(f"ours: 1 image {alone} s, 8 images {eight} s, float32 retries {ours.codec.float32_retries}", flush=True)

    def latent_only(pipe) -> None:
        pipe(prompt="a fox", num_inference_steps=4, guidance_scale=1.0, output_type="latent")

    print(f"ours, latent-only pipeline call: {seconds(lambda: latent_only(ours.text2img))} s", flush=True)
    print(f"plain, latent-only pipeline call: {seconds(lambda: latent_only(plain))} s", flush=True)
    twins = CompiledTwins(ours, {"1:1": buckets["1:1"]}, 1)
    started = time.perf_counter()
    twins.start(render)
    ready = twins.wait(args.compile_seconds)
    print(f"compile 1:1 at batch 1: ready {ready} after {time.perf_counter() - started:.1f} s", flush=True)
    if ready:
        ours.compiled = twins
        print(f"compiled: 1 image {seconds(lambda: generate(ours, [one]))} s", flush=True)
        print(f"compiled, latent-only: {seconds(lambda: latent_only(twins.pipes.text2img))} s", flush=True)


if __name__ == "__main__":
    main()
