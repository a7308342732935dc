"""Executor overhead per job on the tiny model, side by side with calling the pipeline directly.

    .venv/bin/python -m bench.engine_cpu [--jobs 64]

Rows: the pipeline called once per request (plus PNG encoding, as the executor does), the executor with
batches of one (same GPU work: the difference is queueing, threads and futures), the executor batching up to
4 images, and the executor around a runner that returns ready images (pure bookkeeping and PNG cost).

Everything that runs the model here runs on a thread of its own that ends before the next row, as the bot loads
its pipelines on a worker thread and serves from the executor's. torch's CPU operators run in OpenMP thread
teams, one for each thread that calls them, which lives as long as that thread. With two live teams libgomp has
more threads than cores, so its idle threads spin only briefly before they sleep, and waking them costs: small
operators took 115 instead of 22 us on 2 cores (an elementwise op on 200,000 floats, in a scratch script). When
this benchmark loaded the model and ran the direct row on its main thread, which outlives every row, the
executor's rows ran that much slower, and its "overhead per job" was 65 to 104 ms (three runs), where lone
requests through `open_engine` spend 2.8 ms besides generating.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import os
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

os.environ.setdefault("HF_HUB_OFFLINE", "1")


from bench.streams import time_stream
from bot.engine.generation import generate
from bot.engine.images import Picture
from bot.engine.pipelines import Pipelines, load_pipelines
from bot.engine.png import encode_png
from bot.engine.requests import GenerationRequest, Kind, bucket_sizes, check_inputs
from bot.settings import Settings
from tests.support.tiny_model import build_tiny_model

USERS = 16
T = TypeVar("T")


def requests_for(jobs: int, buckets: dict[str, tuple[int, int]]) -> list[GenerationRequest]:
    return [check_inputs(Kind.IMAGINE, f"prompt {index}", buckets=buckets, seed=index) for index in range(jobs)]


def on_a_thread_of_its_own(work: Callable[[], T]) -> T:
    """`work` on a new thread, which ends (and its OpenMP team with it) before this returns: see above."""
    results: list[T] = []
    thread = threading.Thread(target=lambda: results.append(work()))
    thread.start()
    thread.join()
    if not results:
        raise RuntimeError("the benchmark's work failed on its thread; its traceback is above")
    return results[0]


def direct(pipes: Pipelines, requests: list[GenerationRequest]) -> float:
    start = time.perf_counter()
    for request in requests:
        [[image]] = generate(pipes, [request])
        encode_png(image, {"prompt": request.prompt, "seed": request.seeds[0]})
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=64)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        model = build_tiny_model(Path(folder))
        settings = Settings(
            model_base=str(model.base),
            model_unet=str(model.lcm_unet),
            base_resolution=256,
            device="cpu",
            _env_file=None,
        )
        pipes = on_a_thread_of_its_own(lambda: load_pipelines(settings))
    buckets = bucket_sizes(256)
    requests = requests_for(args.jobs, buckets)
    on_a_thread_of_its_own(lambda: generate(pipes, requests[:1]))  # warm-up
    ready = on_a_thread_of_its_own(lambda: generate(pipes, requests[:1]))[0]

    def ready_runner(batch: Sequence[GenerationRequest], should_stop: Callable[[], bool]) -> list[list[Picture]]:
        return [ready * request.count for request in batch]

    run = functools.partial(generate, pipes)
    png_start = time.perf_counter()
    for request in requests:
        encode_png(ready[0], {"prompt": request.prompt, "seed": request.seeds[0]})
    png_seconds = time.perf_counter() - png_start
    rows = [
        ("pipeline called per request + PNG", on_a_thread_of_its_own(lambda: direct(pipes, requests))),
        ("executor, batches of 1", asyncio.run(time_stream(run, requests, users=USERS, batch_images=1)).seconds),
        ("executor, batches of up to 4", asyncio.run(time_stream(run, requests, users=USERS, batch_images=4)).seconds),
        (
            "executor, ready images, 1 PNG thread",
            asyncio.run(time_stream(ready_runner, requests, users=USERS, batch_images=1, png_workers=1)).seconds,
        ),
        ("PNG encoding alone", png_seconds),
    ]
    baseline = rows[0][1]
    print(f"{args.jobs} single-image jobs from {USERS} users, tiny model at 256 px, 4 steps, CPU")
    print(f"| {'path':<44} | {'total s':>8} | {'ms/job':>8} | {'vs direct':>9} |")
    print(f"|{'-' * 46}|{'-' * 10}|{'-' * 10}|{'-' * 11}|")
    for name, seconds in rows:
        print(f"| {name:<44} | {seconds:8.2f} | {seconds / args.jobs * 1000:8.1f} | {seconds / baseline:8.2f}x |")
    overhead = (rows[1][1] - baseline) / args.jobs * 1000
    bookkeeping = (rows[3][1] - png_seconds) / args.jobs * 1000
    print(f"executor overhead per job: {overhead:.1f} ms (batches of 1 minus direct)")
    print(f"executor bookkeeping per job: {bookkeeping:.1f} ms (ready images on 1 PNG thread minus PNG encoding alone)")


if __name__ == "__main__":
    main()
