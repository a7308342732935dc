"""Shared by the benchmarks: time requests through an executor, as a stream or one at a time."""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass

from prometheus_client import Histogram

from bot.engine.executor import BatchRunner, Executor, JobQueue
from bot.engine.requests import GenerationRequest


@dataclass(frozen=True)
class StreamTiming:
    """A timed stream: its wall time, and how much of it the GPU thread spent in batches (and how many)."""

    seconds: float
    busy_seconds: float
    batches: int

    @property
    def busy_share(self) -> float:
        """Of the stream's wall time, the share its batches ran: what is left is time between batches."""
        return self.busy_seconds / self.seconds


async def time_stream(
    runner: BatchRunner,
    requests: Sequence[GenerationRequest],
    *,
    users: int,
    batch_images: int,
    png_workers: int | None = None,
    warm_up: Sequence[Sequence[GenerationRequest]] = (),
    watch: Callable[[], AbstractContextManager[object]] = contextlib.nullcontext,
) -> StreamTiming:
    """From submitting every request (user `index % users`) until the last result is encoded.
    `warm_up` runs first and off the clock, one batch (a group of requests) at a time, as the bot warms its
    long-lived GPU thread: cuDNN builds its plans per thread and shape, which cost a new thread about a second
    per shape on an H100. `watch` wraps the timed part alone (`bench.gpu` profiles the GPU with it)."""
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
    for batch in warm_up:
        await asyncio.gather(*(executor.submit(request, user_id=0).result() for request in batch))
    batches_before, busy_before = histogram_totals(executor.metrics.generation)
    with watch():
        start = time.perf_counter()
        jobs = [executor.submit(request, user_id=index % users) for index, request in enumerate(requests)]
        await asyncio.gather(*(job.result() for job in jobs))
        elapsed = time.perf_counter() - start
    batches, busy = histogram_totals(executor.metrics.generation)
    await executor.close()
    return StreamTiming(elapsed, busy - busy_before, int(batches - batches_before))


def histogram_totals(histogram: Histogram) -> tuple[float, float]:
    """(count, sum) of a Prometheus histogram: here batches run, and their seconds."""
    samples = {sample.name.rsplit("_", 1)[-1]: sample.value for sample in histogram.collect()[0].samples}
    return samples["count"], samples["sum"]


@dataclass(frozen=True)
class Latency:
    """Jobs sent one at a time: each one's seconds from submitting to its PNGs, and the same less generation."""

    totals: list[float]
    besides_generation: list[float]

    @property
    def total(self) -> float:
        return statistics.median(self.totals)

    @property
    def besides(self) -> float:
        return statistics.median(self.besides_generation)


async def one_at_a_time(queue: JobQueue, requests: Sequence[GenerationRequest]) -> Latency:
    totals, besides = [], []
    for request in requests:
        start = time.perf_counter()
        result = await queue.submit(request, user_id=0).result()
        totals.append(time.perf_counter() - start)
        besides.append(totals[-1] - result.generation_time)
    return Latency(totals, besides)


async def local_latency(runner: BatchRunner, requests: Sequence[GenerationRequest], *, batch_images: int) -> Latency:
    """`one_at_a_time` through one executor, as the bot keeps one: its GPU thread lives from the first request
    to the last."""
    executor = Executor(
        runner, model_name="bench", max_batch_images=batch_images, queue_max=1, user_max_pending=1, batch_timeout=600
    )
    executor.start()
    try:
        return await one_at_a_time(executor, requests)
    finally:
        await executor.close()
