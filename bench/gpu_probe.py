"""Where one request's time and memory go, ours against plain diffusers, for issue 6's open question: on a GPU
our generation measured slower than a plain diffusers call over the very same UNet.

    python -m bench.gpu_probe [--configs DIR] [--compile-seconds 120]   # CUDA GPU, full size, 1024x1024
    python -m bench.gpu_probe --tiny --compile-seconds 0                # smoke run on the CPU

Prints, each side by side in one process on one card:
1. one UNet forward at batch 1, the latent-only pipeline call (text encoders + 4 UNet steps) of plain and of
   ours, alternated so that clock or thermal drift hits both alike;
2. ours taken apart: prompt encoding (a new prompt), denoising (cached prompt), VAE decode, PNG encoding,
   the executor around it, each with its peak memory, against plain's whole call and its peak; then the
   same at 8 images;
3. the ten costliest operators of plain's and of our latent-only call, and of our VAE decode (torch.profiler,
   device time on a GPU);
4. VAE decode per dtype at batch 1 and at the decode chunk, and with `--compile-seconds` above 0, the
   regional compile of the 1:1 bucket; then one UNet forward at batch 1, eager, eager on cuDNN's attention
   kernels, eager with fused attention projections, and compiled (when it was), each also replayed from a CUDA
   graph.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import itertools
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
from torch.profiler import ProfilerActivity, profile

from bench.gpu import DEFAULT_CONFIGS, STEPS, Bench, full_size_pipeline, ours_from, tiny_pipeline
from bench.knobs import cuda_graphed, cudnn_attention, fused_projections
from bench.streams import time_stream
from bot.engine.compile_cache import use_compile_cache
from bot.engine.compiled import CompiledTwins
from bot.engine.generation import _denoise, generate, render
from bot.engine.png import encode_png
from bot.engine.requests import GenerationRequest, Kind, bucket_sizes, check_inputs
from bot.engine.vae import DECODE_CHUNK
from bot.engine.weight_sharing import weight_sharing_twin

REPEATS = 3


class Probe(Bench):
    """bench.gpu's timing and peak memory, printed a line per measure."""

    def report(self, label: str, run: Callable[[], object], repeats: int = REPEATS) -> None:
        peak = self.peak_gib(run)
        print(f"{label:<44} {self.seconds(run, repeats) * 1000:9.1f} ms   peak {peak:6.2f} GiB", flush=True)

    def top_operators(self, label: str, run: Callable[[], object]) -> None:
        on_gpu = self.device.type == "cuda"
        activities = [ProfilerActivity.CPU, *([ProfilerActivity.CUDA] if on_gpu else [])]
        with profile(activities=activities) as profiled:
            run()
            self.sync()
        sort_by = "self_cuda_time_total" if on_gpu else "self_cpu_time_total"
        print(f"-- {label}: ten costliest operators", flush=True)
        print(profiled.key_averages().table(sort_by=sort_by, row_limit=10, max_name_column_width=48), flush=True)


def captured_unet_inputs(unet: torch.nn.Module, call: Callable[[], object]) -> tuple[tuple, dict]:
    """The arguments of the UNet's first forward in `call`, to replay that forward alone."""
    captured: list[tuple[tuple, dict]] = []
    handle = unet.register_forward_pre_hook(
        lambda module, args, kwargs: captured.append((args, kwargs)) if not captured else None, with_kwargs=True
    )
    try:
        call()
    finally:
        handle.remove()
    return captured[0]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--configs", type=Path, default=DEFAULT_CONFIGS)
    parser.add_argument("--compile-seconds", type=float, default=120)
    parser.add_argument("--tiny", action="store_true", help="tiny test model on the CPU (smoke run)")
    args = parser.parse_args()
    device = torch.device("cpu" if args.tiny else "cuda")
    probe = Probe(device, budget=float("inf"))
    workdir = Path(tempfile.mkdtemp())
    use_compile_cache(workdir / "compile-cache")
    print(torch.cuda.get_device_name() if device.type == "cuda" else "CPU (tiny model)", flush=True)
    plain = tiny_pipeline(workdir) if args.tiny else full_size_pipeline(args.configs, device, workdir)
    plain.to(device)
    plain.set_progress_bar_config(disable=True)
    ours = ours_from(plain, device)
    buckets = bucket_sizes(256 if args.tiny else 1024)
    width, height = buckets["1:1"]

    def plain_call(output_type: str = "pil", images: int = 1) -> object:
        return plain(
            prompt=["a fox"] * images, num_inference_steps=STEPS, guidance_scale=1.0, width=width, height=height,
            output_type=output_type,
        )  # fmt: skip

    def ours_latent_only() -> object:
        return ours.text2img(
            prompt="a fox", num_inference_steps=STEPS, guidance_scale=1.0, width=width, height=height,
            output_type="latent",
        )  # fmt: skip

    # 1. The same work through both pipeline objects, alternated
    unet = plain.unet
    size = (height // 8, width // 8)
    with torch.no_grad():
        unet_inputs = captured_unet_inputs(unet, lambda: plain_call("latent"))
        plain_call()
        generate(ours, [check_inputs(Kind.IMAGINE, "warm-up", buckets=buckets, seed=1)])
        probe.report("UNet forward, batch 1", lambda: unet(*unet_inputs[0], **unet_inputs[1]))
        for round_ in (1, 2):
            probe.report(f"plain, latent-only call (round {round_})", lambda: plain_call("latent"))
            probe.report(f"ours, latent-only call (round {round_})", ours_latent_only)

    # 2. Ours taken apart, against plain's whole call
    request = check_inputs(Kind.IMAGINE, "a fox", buckets=buckets, seed=1)
    fresh = itertools.count()
    probe.report(
        "ours: prompt encoding, new prompt",
        lambda: ours.embeddings.pipeline_inputs(ours.text2img, [f"new {next(fresh)}"], [""], with_negative=False),
    )

    def generators() -> list[torch.Generator]:
        return [torch.Generator("cpu").manual_seed(1)]

    def eight_generators() -> list[torch.Generator]:
        return [torch.Generator("cpu").manual_seed(seed) for seed in range(8)]

    async def one_through_executor(one: GenerationRequest) -> None:
        await time_stream(functools.partial(generate, ours), [one], users=1, batch_images=1)

    probe.report("ours: denoising, cached prompt", lambda: _denoise(ours, [request], generators(), lambda: False))
    latents = _denoise(ours, [request], generators(), lambda: False)
    probe.report(f"ours: VAE decode ({ours.codec.vae.dtype})", lambda: ours.codec.decode(latents))
    image = ours.codec.decode(latents)[0]
    probe.report("ours: PNG encoding", lambda: encode_png(image, {"prompt": "a fox"}))
    probe.report("ours: generate, cached prompt", lambda: generate(ours, [request]))
    probe.report("ours: through a fresh executor, PNG included", lambda: asyncio.run(one_through_executor(request)))
    probe.report("plain: whole call (VAE upcast to float32)", plain_call)

    # 2b. The same at batch 8, where ours measured twice plain's time
    eight = check_inputs(Kind.IMAGINE, "a fox", buckets=buckets, seed=1, count=4)
    probe.report("ours: denoising, 8 images", lambda: _denoise(ours, [eight, eight], eight_generators(), lambda: False))
    latents8 = _denoise(ours, [eight, eight], eight_generators(), lambda: False)
    probe.report("ours: VAE decode, 8 images", lambda: ours.codec.decode(latents8))
    probe.report("ours: generate, 8 images", lambda: generate(ours, [eight, eight]), repeats=2)
    probe.report("plain: latent-only call, 8 images", lambda: plain_call("latent", 8), repeats=2)
    probe.report("plain: whole call, 8 images", lambda: plain_call("pil", 8), repeats=2)
    print(f"float32 retries: {ours.codec.float32_retries}", flush=True)

    # 3. Where the time goes inside each latent-only call
    with torch.no_grad():
        probe.top_operators("plain, latent-only call", lambda: plain_call("latent"))
        probe.top_operators("ours, latent-only call", ours_latent_only)
    probe.top_operators(f"ours, VAE decode ({ours.codec.vae.dtype})", lambda: ours.codec.decode(latents))

    # 4. VAE dtypes and the compile of one bucket
    scale = plain.vae.config.scaling_factor
    dtypes = (torch.float32,) if args.tiny else (torch.float32, torch.bfloat16, torch.float16)
    with torch.no_grad():
        for dtype, batch in itertools.product(dtypes, (1, DECODE_CHUNK)):
            vae = plain.vae.to(dtype)
            decode_latents = torch.randn(batch, plain.vae.config.latent_channels, *size, device=device, dtype=dtype)
            finite = torch.isfinite(vae.decode(decode_latents / scale).sample).all().item()
            probe.report(
                f"VAE decode {dtype}, batch {batch}, finite {finite}",
                lambda vae=vae, latents=decode_latents: vae.decode(latents / scale),
            )
        plain.vae.to(plain.unet.dtype)
    cudnn_unet = weight_sharing_twin(unet)
    cudnn_attention(cudnn_unet)
    fused_unet = weight_sharing_twin(unet)  # its fused projections are weights of its own
    fused_projections(fused_unet)
    unets = {"eager": unet, "eager, cuDNN attention": cudnn_unet, "eager, fused QKV": fused_unet}
    if args.compile_seconds > 0:
        twins = CompiledTwins(ours, {"1:1": buckets["1:1"]}, 1)
        started = time.perf_counter()
        twins.start(render)
        ready = twins.wait(args.compile_seconds)
        print(f"compile 1:1 at batch 1: ready {ready} after {time.perf_counter() - started:.1f} s", flush=True)
        if ready:
            ours.compiled = twins
            probe.report("compiled: generate, cached prompt", lambda: generate(ours, [request]))
            unets["compiled"] = twins.pipes.text2img.unet
    unet_forward_rows(probe, unets, unet_inputs)


def unet_forward_rows(probe: Probe, unets: dict[str, torch.nn.Module], inputs: tuple[tuple, dict]) -> None:
    """One forward of each UNet on the same inputs, and on a GPU replayed from a CUDA graph too. A lone request's
    steps replay graphs (bot.engine.cuda_graphs), where launches no longer count, and with `COMPILE` those graphs
    are captured again over the compiled UNet (bot.engine.compiled): the graphed rows say what that gains a step,
    and what cuDNN's attention kernels would (bench.knobs). And fused projections: eager, they saved 1 ms a forward
    at batch 1 on an H100, which launches may explain; but at batch 1 a projection of 1,024 tokens keeps only part
    of the card's cores busy, and one projection three times as wide keeps more, which a graph would keep too."""
    args, kwargs = inputs
    with torch.no_grad():
        for name, unet in unets.items():
            forward = functools.partial(unet, *args, **kwargs)
            probe.report(f"UNet forward, batch 1, {name}", forward)
            if probe.device.type == "cuda":
                probe.report(f"UNet forward, batch 1, {name}, CUDA graph", cuda_graphed(lambda f=forward: f().sample))


if __name__ == "__main__":
    main()
