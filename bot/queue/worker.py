"""`lcm-bot worker`: a GPU worker for `QUEUE_BACKEND=redis`. Loads the pipeline once and serves Celery tasks.

Celery runs tasks on threads; each thread hands its job to the same local executor the embedded bot uses
(on an event loop of its own), so the jobs a worker holds at once are batched together. The worker holds one
task more than a batch, so the next job is already waiting when a batch ends. A task delivered again while the
worker still holds it (the bot sends every task in flight again after a Redis restart) waits for the same job.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import socket
import threading
import uuid

from celery import Task

from bot import log_context
from bot.engine.executor import Executor, Job, JobResult
from bot.engine.generation import generate
from bot.engine.pipelines import Pipelines
from bot.engine.requests import GenerationRequest, bucket_sizes
from bot.engine.service import load_engine, warm_up_serving_thread
from bot.errors import UserFacingError
from bot.metrics import Health, serve_metrics
from bot.queue.celery_app import GENERATE_TASK, make_celery
from bot.queue.payloads import request_from_payload, result_to_payload
from bot.settings import Settings

log = logging.getLogger(__name__)


def run_worker(settings: Settings) -> int:
    pipes, batch_images = load_engine(settings)
    buckets = bucket_sizes(settings.base_resolution)
    threads = batch_images + 1
    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, name="worker-loop", daemon=True).start()
    opened = asyncio.run_coroutine_threadsafe(_open_services(settings, pipes, batch_images, threads), loop)
    executor, services = opened.result()
    task_jobs = TaskJobs(executor)

    app = make_celery(settings)
    name = f"lcm-worker-{uuid.uuid4().hex[:6]}@{socket.gethostname()}"

    @app.task(name=GENERATE_TASK, bind=True)
    def generate_task(task: Task, payload: object) -> dict[str, object]:
        task_id = task.request.id
        log_context.for_jobs([task_id])
        try:
            request = request_from_payload(payload, buckets, pipes.styles.book)
            result = asyncio.run_coroutine_threadsafe(task_jobs.result(request, task_id), loop).result()
        except UserFacingError as exc:
            log.warning("task %s: %s", task_id, exc)
            return {"error": {"code": exc.code, "message": str(exc)}}
        log.info("task %s done: %.2f s on the GPU, batch size %d", task_id, result.generation_time,
                 result.batch_images)  # fmt: skip
        return {**result_to_payload(result), "worker": name}

    # Celery's own line for each success quotes the result, which here is kilobytes of PNG bytes; ours is above
    logging.getLogger("celery.app.trace").setLevel(logging.WARNING)
    log.info("worker %s on %s: %d threads, batches of up to %d", name, settings.redis_url, threads, batch_images)
    try:
        app.worker_main(
            ["worker", "--pool=threads", f"--concurrency={threads}", "--without-gossip", "--without-mingle",
             f"--hostname={name}", f"--loglevel={settings.log_level}"]
        )  # fmt: skip
    finally:
        asyncio.run_coroutine_threadsafe(services.aclose(), loop).result(120)
        loop.call_soon_threadsafe(loop.stop)
    return 0


async def _open_services(
    settings: Settings, pipes: Pipelines, batch_images: int, threads: int
) -> tuple[Executor, contextlib.AsyncExitStack]:
    """The executor (one batch at a time on the GPU thread) and, with `METRICS_PORT`, metrics and health."""
    services = contextlib.AsyncExitStack()
    executor = worker_executor(pipes, batch_images, threads, settings.batch_timeout)
    executor.start()
    services.push_async_callback(executor.close)
    await warm_up_serving_thread(executor, pipes, bucket_sizes(settings.base_resolution))
    if settings.metrics_port is not None:
        health = functools.partial(_health, executor)
        await services.enter_async_context(serve_metrics(settings.metrics_port, executor.metrics, health))
    return executor, services


def worker_executor(pipes: Pipelines, batch_images: int, threads: int, batch_timeout: float) -> Executor:
    """One job per task, each task its own "user": fairness was applied by the bot."""
    return Executor(
        functools.partial(generate, pipes),
        model_name=pipes.model_name,
        max_batch_images=batch_images,
        queue_max=threads,
        user_max_pending=1,
        batch_timeout=batch_timeout,
    )


class TaskJobs:
    """The executor's job for each task this worker holds, by task id. After a Redis restart the bot sends every
    task in flight again under the same id, and a worker that still holds one gets it twice. Submitted again,
    the second delivery would be refused as a second request from the same "user" (one pending each), and that
    refusal would become the task's result: the user's picture lost. It waits for the first delivery's job
    instead. Used on the worker's event loop only."""

    def __init__(self, executor: Executor) -> None:
        self._executor = executor
        self._jobs: dict[str, Job] = {}

    async def result(self, request: GenerationRequest, task_id: str) -> JobResult:
        job = self._jobs.get(task_id)
        if job is None:
            job = self._executor.submit(request, user_id=task_id)
            self._jobs[task_id] = job
            job.future.add_done_callback(lambda _: self._jobs.pop(task_id, None))
        return await job.result()


def _health(executor: Executor) -> Health:
    return Health(ok=executor.serving, detail={"engine": executor.serving, "queue_depth": executor.queue_depth})
