"""Prometheus series for the engine, and the small HTTP server that serves them with a health check.

Each `Metrics` owns its registry rather than using prometheus-client's global one, so two bots in one process
(the tests start many) never share counters. Series are named `lcm_bot_*`; the README lists them.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import torch
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

# Seconds: from a few milliseconds of queueing to many minutes of a full queue.
WAIT_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
GENERATION_BUCKETS = (0.05, 0.1, 0.2, 0.35, 0.5, 0.75, 1, 1.5, 2, 3, 5, 10, 30, 120)
BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 32, 64)


class Metrics:
    """What the executor reports: jobs by outcome, waits, batch sizes and GPU time, and live gauges."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        # Counters are exported with a `_total` suffix: lcm_bot_jobs_total, lcm_bot_images_total.
        self.jobs = Counter("lcm_bot_jobs", "Jobs by final status.", ["status"], registry=self.registry)
        self.images = Counter("lcm_bot_images", "Images generated.", registry=self.registry)
        self.queue_wait = Histogram(
            "lcm_bot_queue_wait_seconds", "From submission to the start of the job's batch.", buckets=WAIT_BUCKETS,
            registry=self.registry,
        )  # fmt: skip
        self.generation = Histogram(
            "lcm_bot_generation_seconds", "GPU time of one batch.", buckets=GENERATION_BUCKETS, registry=self.registry
        )
        self.batch_images = Histogram(
            "lcm_bot_batch_images", "Images per batch.", buckets=BATCH_BUCKETS, registry=self.registry
        )
        self.queue_depth = Gauge("lcm_bot_queue_depth", "Jobs waiting for the GPU.", registry=self.registry)
        self.workers = Gauge("lcm_bot_workers", "GPU workers alive.", registry=self.registry)
        self.gpu_memory = Gauge(
            "lcm_bot_gpu_memory_bytes", "GPU memory held by tensors (0 without a GPU).", registry=self.registry
        )
        self.gpu_memory.set_function(_gpu_memory_bytes)

    def watch(self, queue_depth: Callable[[], int], workers: Callable[[], int]) -> None:
        """Read the gauges from the live engine at each scrape."""
        self.queue_depth.set_function(queue_depth)
        self.workers.set_function(workers)

    def batch_done(self, images: int, seconds: float) -> None:
        self.images.inc(images)
        self.generation.observe(seconds)
        self.batch_images.observe(images)

    def job_started(self, waited: float) -> None:
        self.queue_wait.observe(waited)

    def job_settled(self, status: str) -> None:
        self.jobs.labels(status=status).inc()

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


def _gpu_memory_bytes() -> float:
    return float(torch.cuda.memory_allocated()) if torch.cuda.is_available() else 0.0


@dataclass(frozen=True)
class Health:
    ok: bool
    detail: dict[str, object]


@contextlib.asynccontextmanager
async def serve_metrics(
    port: int, metrics: Metrics, health: Callable[[], Health], host: str = "0.0.0.0"
) -> AsyncIterator[web.AppRunner]:
    """`/metrics` for Prometheus and `/healthz` (200 when healthy, 503 otherwise) for Docker and orchestrators,
    on the bot's own event loop: both answers are cheap reads."""

    async def metrics_page(request: web.Request) -> web.Response:
        response = web.Response(body=metrics.exposition())
        response.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return response

    async def health_page(request: web.Request) -> web.Response:
        state = health()
        return web.json_response({"ok": state.ok, **state.detail}, status=200 if state.ok else 503)

    app = web.Application()
    app.router.add_get("/metrics", metrics_page)
    app.router.add_get("/healthz", health_page)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    try:
        yield runner
    finally:
        await runner.cleanup()
