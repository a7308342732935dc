"""Start the engine the way the bot does and time the way to the first image and to compiled speed.

    python -m bench.startup --model-base DIR --model-unet DIR [--compile on]

Run as its own process (bench/gpu.py does, twice: with a cold and a warm compile cache) so the clock includes
importing torch and diffusers and loading the weights from disk. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

STARTED = time.perf_counter()
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from bot.engine.compile_cache import compile_cache_counters  # noqa: E402
from bot.engine.generation import generate, warm_up  # noqa: E402
from bot.engine.requests import Kind, bucket_sizes, check_inputs  # noqa: E402
from bot.engine.service import load_engine  # noqa: E402
from bot.settings import Settings  # noqa: E402


def seconds_since_start() -> float:
    return round(time.perf_counter() - STARTED, 2)


def timed(run) -> float:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    run()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model-base", required=True)
    parser.add_argument("--model-unet", required=True)
    parser.add_argument("--resolution", type=int, default=1024)
    parser.add_argument("--compile", default="on", choices=["on", "off"])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--compile-timeout", type=float, default=400)
    args = parser.parse_args()

    settings = Settings(
        model_base=args.model_base,
        model_unet=args.model_unet,
        base_resolution=args.resolution,
        compile=args.compile,
        device=args.device,
        _env_file=None,
    )
    buckets = bucket_sizes(args.resolution)
    report: dict[str, object] = {"imports_s": seconds_since_start()}
    pipes, batch_images = load_engine(settings)
    report["engine_loaded_s"] = seconds_since_start()
    warm_up(pipes, buckets)  # on the thread that serves here, as the bot does on its GPU thread
    first = check_inputs(Kind.IMAGINE, "a lighthouse at dusk", buckets=buckets, seed=1)
    generate(pipes, [first])
    report["first_image_s"] = seconds_since_start()
    report["batch_images"] = batch_images
    if pipes.compiled is not None:
        report["compiled_ready"] = pipes.compiled.wait(args.compile_timeout)
        report["compiled_ready_s"] = seconds_since_start()
    request = check_inputs(Kind.IMAGINE, "a lighthouse at dusk", buckets=buckets, seed=2)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    report["alone_s"] = round(statistics.median(timed(lambda: generate(pipes, [request])) for _ in range(3)), 4)
    if torch.cuda.is_available():
        report["peak_batch1_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    if pipes.compiled is not None:
        report["served_compiled"] = pipes.compiled.batches_served
        report["compile_cache"] = compile_cache_counters()
        report["compile_phases_s"] = compile_phase_seconds()
        report["compile_workers_s"] = round(pipes.compiled.workers_seconds, 1)
        report["graphs_recaptured"] = pipes.compiled.graphs_recaptured
    print(json.dumps(report), flush=True)


def compile_phase_seconds() -> dict[str, float]:
    """Where this process's compile time went, summed over every frame dynamo compiled: tracing Python bytecode
    into graphs (which a warm cache does not skip), then the backend (AOTAutograd and inductor, which it does)."""
    from torch._dynamo.utils import compilation_time_metrics

    phases = {
        "dynamo": "_compile.compile_inner",
        "tracing": "bytecode_tracing",
        "backend": "OutputGraph.call_user_compiler",
    }
    return {name: round(sum(compilation_time_metrics.get(key, [])), 1) for name, key in phases.items()}


if __name__ == "__main__":
    main()
