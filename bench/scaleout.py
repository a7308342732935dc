"""Jobs through Redis with 1, 2 and 4 tiny-model workers on this machine, against the in-process queue.

    .venv/bin/python -m bench.scaleout [--jobs 200]

Every job is one image at one step, so the table shows what the distribution itself costs. The Redis overhead
per job is measured one job at a time, where nothing else competes for the CPUs: the median of each job's
latency less its generation time (as its executor measured it), through Redis with one worker, minus the same
in process. Generation itself is the same work on both sides, but on two shared cores its time varies by tens
of milliseconds between processes, so the raw latencies are printed too.

On a machine with few cores, more workers compete for the same CPUs: images/s measures the plumbing here,
not what GPU workers on separate machines would give.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from bench.streams import Latency, local_latency, one_at_a_time, time_stream
from bot.engine.generation import generate
from bot.engine.pipelines import load_pipelines
from bot.engine.requests import GenerationRequest, Kind, bucket_sizes, check_inputs
from bot.queue.remote import open_remote_executor
from bot.settings import Settings
from tests.support.scale_out import RedisServer, Workers
from tests.support.tiny_model import build_tiny_model

USERS = 20
BATCH = 4
LATENCY_JOBS = 30


def job_requests(count: int, tag: str = "job") -> list[GenerationRequest]:
    buckets = bucket_sizes(256)
    return [check_inputs(Kind.IMAGINE, f"{tag} {n}", buckets=buckets, steps=1, seed=n) for n in range(count)]


async def through_redis(settings: Settings, requests: list[GenerationRequest]) -> float:
    async with open_remote_executor(settings) as remote:
        start = time.perf_counter()
        jobs = [remote.submit(request, user_id=n % USERS) for n, request in enumerate(requests)]
        await asyncio.gather(*(job.result() for job in jobs))
        return time.perf_counter() - start


async def redis_latency(settings: Settings, requests: list[GenerationRequest]) -> Latency:
    async with open_remote_executor(settings) as remote:
        return await one_at_a_time(remote, requests)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=200)
    args = parser.parse_args()
    requests = job_requests(args.jobs)
    with tempfile.TemporaryDirectory() as folder:
        model = build_tiny_model(Path(folder) / "model")
        base = Settings(
            model_base=str(model.base), model_unet=str(model.lcm_unet), base_resolution=256, device="cpu",
            max_batch_images=BATCH, queue_max=args.jobs, user_max_pending=args.jobs, _env_file=None,
        )  # fmt: skip
        pipes = load_pipelines(base)
        generate(pipes, requests[:1])
        local = asyncio.run(
            time_stream(functools.partial(generate, pipes), requests, users=USERS, batch_images=BATCH)
        ).seconds
        rows = [("in process", local)]
        alone = job_requests(LATENCY_JOBS, "alone")  # prompts new to both sides: no cached embeddings
        latency_local = asyncio.run(local_latency(functools.partial(generate, pipes), alone, batch_images=BATCH))
        latency_redis = Latency([float("nan")], [float("nan")])
        for count in (1, 2, 4):
            redis_server = RedisServer(Path(folder))
            redis_server.start()
            settings = base.model_copy(update={"queue_backend": "redis", "redis_url": redis_server.url})
            workers = Workers(settings)
            try:
                for _ in range(count):
                    workers.start()
                if count == 1:
                    latency_redis = asyncio.run(redis_latency(settings, alone))
                rows.append(
                    (f"Redis, {count} worker{'s' if count > 1 else ''}", asyncio.run(through_redis(settings, requests)))
                )
            finally:
                workers.close()
                redis_server.stop()
    print(f"{args.jobs} jobs of one image at one step, {USERS} users, batches of up to {BATCH}; tiny model, CPU")
    print(f"| {'queue':<18} | {'seconds':>8} | {'images/s':>8} |")
    print(f"|{'-' * 20}|{'-' * 10}|{'-' * 10}|")
    for label, seconds in rows:
        print(f"| {label:<18} | {seconds:>8.2f} | {args.jobs / seconds:>8.1f} |")
    print(f"one job at a time, median of {LATENCY_JOBS} (ms):")
    print(f"| {'queue':<18} | {'latency':>8} | {'besides generation':>18} |")
    print(f"|{'-' * 20}|{'-' * 10}|{'-' * 20}|")
    for label, latency in (("in process", latency_local), ("Redis, 1 worker", latency_redis)):
        print(f"| {label:<18} | {latency.total * 1000:>8.1f} | {latency.besides * 1000:>18.1f} |")
    overhead = latency_redis.besides - latency_local.besides
    print(f"Redis adds {overhead * 1000:.1f} ms per job (besides generation, Redis minus in process)")


if __name__ == "__main__":
    main()
