"""Shared by the benchmarks: push a stream of requests through a fresh executor and time it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

from bot.engine.executor import BatchRunner, Executor
from bot.engine.requests import GenerationRequest


async def time_stream(
    runner: BatchRunner,
    requests: Sequence[GenerationRequest],
    *,
    users: int,
    batch_images: int,
    png_workers: int = 2,
) -> float:
    """Seconds from submitting every request (user `index % users`) until the last result is encoded."""
    executor = Executor(
        runner,
        model_name="bench",
        max_batch_images=batch_images,
        queue_max=len(requests),
        user_max_pending=len(requests),
        batch_timeout=600,
        png_workers=png_workers,
    )
    executor.start()
    start = time.perf_counter()
    jobs = [executor.submit(request, user_id=index % users) for index, request in enumerate(requests)]
    await asyncio.gather(*(job.result() for job in jobs))
    elapsed = time.perf_counter() - start
    await executor.close()
    return elapsed
