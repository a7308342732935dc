"""The GPU executor: a fair asyncio queue in front of one worker thread that runs batches of compatible jobs.

Everything slow happens off the event loop: generation on the single GPU thread (one batch at a time, which is
what one GPU can do), PNG encoding on a small CPU pool while the GPU already runs the next batch. The loop only
forms batches and settles futures, so Discord heartbeats and acknowledgements never wait for the GPU.

Failures stay with their job: a batch that fails for any reason is run again job by job, so only the job that
really fails gets an error, and nothing else queued is lost.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TypeVar

from bot import log_context
from bot.engine.fairqueue import FairQueue
from bot.engine.images import Picture
from bot.engine.png import encode_png_in_strips, strips_for
from bot.engine.requests import GenerationRequest, denoising_steps
from bot.errors import (
    GenerationFailed,
    InvalidRequest,
    JobCancelled,
    QueueFull,
    ShuttingDown,
    TooManyPending,
    UserFacingError,
)
from bot.metrics import Metrics

log = logging.getLogger(__name__)

T = TypeVar("T")
BatchRunner = Callable[[Sequence[GenerationRequest], Callable[[], bool]], list[list[Picture]]]
"""Runs one batch on the GPU thread; the second argument says when to stop early (timeout, shutdown)."""

INITIAL_SECONDS_PER_IMAGE = 1.0  # ETA guess until the first batch is measured
ETA_SMOOTHING = 0.3


class JobState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


@dataclass
class JobResult:
    images: list[bytes]  # PNG files, one per seed
    seeds: tuple[int, ...]
    queue_wait: float  # seconds from submission to the start of its batch
    generation_time: float  # seconds its batch spent on the GPU
    batch_images: int  # how many images shared that batch


@dataclass(eq=False)
class Job:
    request: GenerationRequest
    user_id: Hashable
    future: asyncio.Future[JobResult]
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    key: str | None = None  # stable across restarts, unlike `id` (see `JobQueue.submit`)
    state: JobState = JobState.QUEUED
    submitted_at: float = field(default_factory=time.monotonic)
    started_at: float | None = None

    async def result(self) -> JobResult:
        """Wait for the PNGs; raises a `UserFacingError` when the job failed or was cancelled."""
        return await asyncio.shield(self.future)


class JobQueue(abc.ABC):
    """What every backend shares: admission (global and per-user caps), the fair queue, cancelling, position
    and ETA, settling futures, metrics. Subclasses decide how queued jobs are run (`_serve`)."""

    def __init__(
        self,
        *,
        model_name: str,
        max_batch_images: int,
        queue_max: int,
        user_max_pending: int,
        batch_timeout: float,
        metrics: Metrics | None = None,
    ) -> None:
        self._model_name = model_name
        self.max_batch_images = max_batch_images
        self.queue_max = queue_max
        self.user_max_pending = user_max_pending
        self.batch_timeout = batch_timeout
        self._queue: FairQueue[Job] = FairQueue()
        self._running: list[Job] = []
        self._jobs: dict[str, Job] = {}
        self._wakeup = asyncio.Event()
        self._closing = False
        self._serve_task: asyncio.Task[None] | None = None
        self._seconds_per_image = INITIAL_SECONDS_PER_IMAGE
        self._batch_started_at = 0.0
        self.metrics = metrics or Metrics()
        self.metrics.watch(queue_depth=lambda: self.queue_depth, workers=lambda: self.workers_alive)

    # -- lifecycle -------------------------------------------------------------------------------------------

    def start(self) -> None:
        self._serve_task = asyncio.create_task(self._serve(), name="job-queue")

    async def close(self, *, drain: bool = False, timeout: float = 60.0) -> None:
        """Stop taking work. `drain` runs what is queued first; otherwise queued jobs fail with `ShuttingDown`.

        What runs gets `timeout` seconds to finish, then `_stop` asks it to stop.
        """
        if self._closing:
            return
        self._closing = True
        if not drain:
            for job in list(self._queue):
                self._queue.remove(job.user_id, job)
                self._settle(job, JobState.CANCELLED, ShuttingDown("The bot stopped before this request ran."))
        self._wakeup.set()
        if self._serve_task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._serve_task), timeout)
            except TimeoutError:
                self._stop()
                await self._serve_task
        await self._closed()

    @abc.abstractmethod
    async def _serve(self) -> None:
        """Take jobs from the fair queue and run them until closed."""

    async def run_on_gpu(self, work: Callable[[], T]) -> T:
        """Run `work` on the thread that owns the GPU, between batches (small models beside the pipeline)."""
        raise InvalidRequest("This needs the GPU of the bot's own machine, which this setup does not have.")

    @abc.abstractmethod
    def _stop(self) -> None:
        """Ask what runs to stop early (close timed out)."""

    @abc.abstractmethod
    async def _closed(self) -> None:
        """Release what the backend holds, once nothing runs."""

    # -- submitting ------------------------------------------------------------------------------------------

    def check_admission(self, user_id: Hashable) -> None:
        """Raise the rejection a new job from `user_id` would get now (cheap; no side effects)."""
        if self._closing:
            raise ShuttingDown("The bot is restarting; please try again in a minute.")
        if len(self._queue) >= self.queue_max:
            raise QueueFull(f"The queue is full ({self.queue_max} jobs). Please try again in a minute.")
        pending = self.pending_for(user_id)
        if pending >= self.user_max_pending:
            raise TooManyPending(
                f"You already have {pending} requests waiting; the limit is {self.user_max_pending}. "
                "Send this one when one of them is done."
            )

    def submit(self, request: GenerationRequest, user_id: Hashable, *, key: str | None = None) -> Job:
        """`key` names the job for good (its usage-log row): a job run again after a restart has the same key,
        which lets a remote backend find a result that finished while the bot was down."""
        self.check_admission(user_id)
        job = Job(request=request, user_id=user_id, future=asyncio.get_running_loop().create_future(), key=key)
        self._queue.push(user_id, job)
        self._jobs[job.id] = job
        self._wakeup.set()
        return job

    def cancel(self, job_id: str) -> bool:
        """Cancel a queued job. A running one cannot be stopped without failing its whole batch: False."""
        job = self._jobs.get(job_id)
        if job is None or job.state is not JobState.QUEUED:
            return False
        self._queue.remove(job.user_id, job)
        self._settle(job, JobState.CANCELLED, JobCancelled("Cancelled before it ran."))
        return True

    # -- observing -------------------------------------------------------------------------------------------

    def pending_for(self, user_id: Hashable) -> int:
        return self._queue.pending_for(user_id) + sum(1 for job in self._running if job.user_id == user_id)

    @property
    def queue_depth(self) -> int:
        return len(self._queue)

    @property
    def serving(self) -> bool:
        """The serve loop is alive: started, not closed, not crashed."""
        return self._serve_task is not None and not self._serve_task.done() and not self._closing

    @property
    def workers_alive(self) -> int:
        """GPU workers that can take jobs: the local GPU thread while serving."""
        return int(self.serving)

    def position(self, job: Job) -> int | None:
        """1 for the next job to run, 0 while running, None once finished."""
        if job.state is JobState.RUNNING:
            return 0
        index = self._queue.position(job)
        return None if index is None else index + 1

    def eta(self, job: Job) -> float:
        """Seconds until `job` is done, from the measured seconds per image of recent batches."""
        if job.state not in (JobState.QUEUED, JobState.RUNNING):
            return 0.0
        running_images = sum(item.request.count for item in self._running)
        elapsed = time.monotonic() - self._batch_started_at
        remaining = max(0.0, running_images * self._seconds_per_image - elapsed)
        if job.state is JobState.RUNNING:
            return remaining
        ahead = 0
        for queued in self._queue:
            ahead += queued.request.count
            if queued is job:
                break
        return remaining + ahead * self._seconds_per_image

    def _settle(self, job: Job, state: JobState, outcome: JobResult | Exception) -> None:
        job.state = state
        self._jobs.pop(job.id, None)
        if job.future.done():
            return
        self.metrics.job_settled(state.value)
        if isinstance(outcome, Exception):
            job.future.set_exception(outcome)
        else:
            job.future.set_result(outcome)


class Executor(JobQueue):
    """The local backend: batches of compatible jobs on one GPU thread, PNG encoding on a small CPU pool."""

    def __init__(self, runner: BatchRunner, *, png_workers: int | None = None, **options: object) -> None:
        super().__init__(**options)
        self._runner = runner
        self._stop_running = threading.Event()
        self._gpu = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gpu")
        self.png_workers = png_workers or default_png_workers()
        self._png = ThreadPoolExecutor(max_workers=self.png_workers, thread_name_prefix="png")
        self._finishing: set[asyncio.Task[None]] = set()

    def _stop(self) -> None:
        self._stop_running.set()

    async def run_on_gpu(self, work: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._gpu, work)

    async def _closed(self) -> None:
        if self._finishing:
            await asyncio.gather(*self._finishing, return_exceptions=True)
        # Both pools are idle now (the serve loop and the encoders have finished): never block the loop here.
        self._gpu.shutdown(wait=False)
        self._png.shutdown(wait=False)

    async def _serve(self) -> None:
        while True:
            if not len(self._queue):
                if self._closing:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            batch = self._queue.take(user_of=lambda job: job.user_id, fits=self._fits)
            await self._run(batch, isolate_on_failure=True)

    def _fits(self, batch: list[Job], job: Job) -> bool:
        images = sum(item.request.count for item in batch) + job.request.count
        return job.request.batch_key == batch[0].request.batch_key and images <= self.max_batch_images

    async def _run(self, batch: list[Job], *, isolate_on_failure: bool) -> None:
        log_context.for_jobs(job.id for job in batch)
        started = time.monotonic()
        self._running = batch
        self._batch_started_at = started
        for job in batch:
            if job.started_at is None:  # a job retried alone after its batch failed has already waited
                self.metrics.job_started(started - job.submitted_at)
            job.state, job.started_at = JobState.RUNNING, started
        try:
            images = await self._generate([job.request for job in batch])
        except Exception as exc:
            self._running = []
            if self._closing and self._stop_running.is_set():  # stopped by shutdown, not its own fault: no retry
                for job in batch:
                    self._settle(job, JobState.FAILED, ShuttingDown("The bot restarted while this was being made."))
                return
            if isolate_on_failure and len(batch) > 1:
                log.warning("batch of %d jobs failed (%r); retrying them one by one", len(batch), exc)
                for job in batch:
                    await self._run([job], isolate_on_failure=False)
                return
            self._settle(batch[0], JobState.FAILED, _as_user_facing(exc, batch[0]))
            return
        self._running = []
        generation_time = time.monotonic() - started
        count = sum(job.request.count for job in batch)
        self._seconds_per_image += ETA_SMOOTHING * (generation_time / count - self._seconds_per_image)
        self.metrics.batch_done(count, generation_time)
        for job, job_images in zip(batch, images, strict=True):
            task = asyncio.create_task(self._finish(job, job_images, generation_time, count))
            self._finishing.add(task)
            task.add_done_callback(self._finishing.discard)

    async def _generate(self, requests: list[GenerationRequest]) -> list[list[Picture]]:
        """Run the batch on the GPU thread, interrupting it between steps when it overruns its timeout."""
        self._stop_running.clear()
        stop = self._stop_running
        future = asyncio.get_running_loop().run_in_executor(self._gpu, self._runner, requests, stop.is_set)
        try:
            return await asyncio.wait_for(asyncio.shield(future), self.batch_timeout)
        except TimeoutError:
            stop.set()
            with contextlib.suppress(Exception):
                await future  # the thread stops at the next step; never start another batch beside it
            raise GenerationFailed(
                f"Generation took longer than {self.batch_timeout:.0f} s and was stopped. Please try again."
            ) from None

    async def _finish(self, job: Job, images: list[Picture], generation_time: float, batch_images: int) -> None:
        request = job.request
        parameters = [
            {
                "prompt": request.prompt,
                "negative": request.negative or "",
                "seed": seed,
                "steps": denoising_steps(request.steps, request.strength),
                "guidance": request.guidance,
                "strength": request.strength,
                "size": f"{request.width}x{request.height}",
                "model": self._model_name,
            }
            for seed in request.seeds
        ]
        # The batch's pictures share the PNG pool: a lone picture is encoded in strips on all of it.
        threads = max(1, self.png_workers // batch_images)
        try:
            pngs = await asyncio.gather(
                *(
                    encode_png_in_strips(self._png, image, params, strips_for(image.shape[0], threads))
                    for image, params in zip(images, parameters, strict=True)
                )
            )
        except Exception as exc:
            self._settle(job, JobState.FAILED, _as_user_facing(exc, job))
            return
        result = JobResult(
            images=list(pngs),
            seeds=request.seeds,
            queue_wait=(job.started_at or job.submitted_at) - job.submitted_at,
            generation_time=generation_time,
            batch_images=batch_images,
        )
        self._settle(job, JobState.DONE, result)


def default_png_workers() -> int:
    """Half the CPUs, 2 to 8. The encoder lets go of the GIL, and a GPU batch of 8 images brings 8 PNGs at once.
    Sized when Pillow encoded: on an H100 machine's 16 cores, 1024x1024 noise pictures took 75 ms per image on 2
    threads and 20 ms on 8 (bench.knobs), while the GPU made one every 78 ms (tiny autoencoder, batch of 8).
    `encode_png` takes a quarter to a half of Pillow's time, so this leaves room. The other half of the CPUs
    serves the GPU thread and the event loop."""
    return min(8, max(2, (os.cpu_count() or 2) // 2))


def _as_user_facing(exc: Exception, job: Job) -> UserFacingError:
    if isinstance(exc, UserFacingError):
        return exc
    error_id = uuid.uuid4().hex[:8]
    log.error("job %s failed (error id %s): %r", job.id, error_id, job.request, exc_info=exc)
    return GenerationFailed(f"Something went wrong while generating (error id `{error_id}`).")
