"""The bot's side of `QUEUE_BACKEND=redis`: the same fair queue and caps as the local executor, dispatching
each job as one Celery task and collecting its result, without ever blocking the event loop.

- Results arrive as they are stored: Celery's Redis backend publishes each result on a channel named after its
  key, and the bot listens to those channels. A sweep of all keys in flight (one MGET) every second collects
  whatever was published while the bot was not listening (at start, across a Redis restart).
- Fairness holds across workers because jobs leave the bot's fair queue only as fast as the workers can take
  them: at most twice what a live worker holds (batch size + 1) is in Redis at once, so a worker never waits
  for the bot to notice a result before it gets more work; the rest wait here, in turn.
- Redis down: publishing fails, the job goes back to the queue and is sent again later; the bot keeps
  accepting meanwhile (every job is in its database anyway). When Redis answers again after an outage, every
  job in flight is sent again under the same task id: a task lost with Redis runs again, and one that was not
  lost finishes once more into the same result key. The bot takes one result per job, so each is delivered once.
- A restarted bot submits its unfinished jobs under their old names; a result that finished while it was down
  is collected instead of generated again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor

import redis.asyncio
from celery import Celery
from celery.result import AsyncResult

from bot.engine.executor import ETA_SMOOTHING, Job, JobQueue, JobState
from bot.errors import GenerationFailed, InvalidImage, InvalidRequest, ShuttingDown, UserFacingError
from bot.queue.celery_app import GENERATE_TASK, make_celery
from bot.queue.payloads import request_to_payload, result_from_payload
from bot.settings import Settings

log = logging.getLogger(__name__)

SWEEP_SECONDS = 1.0  # how often every result in flight is looked up, for those published while not listening
TASK_ID_PREFIX = "lcm-bot-"
BROKEN_RESULT = "A worker sent back a broken result."
IN_FLIGHT_PER_SLOT = 2  # tasks in Redis per slot a worker can hold: one running, one ready behind it
PING_SECONDS = 5.0  # how often live workers are counted
WORKER_HEARD_SECONDS = 2 * PING_SECONDS + 1  # a worker counts as online this long after it was last heard from
RETRY_SECONDS = 1.0  # pause after Redis refused a message
ERRORS_BY_CODE: dict[str, type[UserFacingError]] = {
    error.code: error for error in (InvalidRequest, InvalidImage, GenerationFailed)
}


def task_id_for(job: Job) -> str:
    return f"{TASK_ID_PREFIX}{job.key or job.id}"


class RemoteExecutor(JobQueue):
    def __init__(self, app: Celery, **options: object) -> None:
        super().__init__(**options)
        self._app = app
        self._in_flight: dict[str, Job] = {}
        self._last_heard: dict[str, float] = {}  # worker name -> when it last answered a ping or sent a result
        self._redis_lost = False
        self._sweep_now = asyncio.Event()
        self._io = ThreadPoolExecutor(max_workers=2, thread_name_prefix="redis")  # blocking Redis calls
        # Celery gives each thread a result backend of its own (`app.backend` is thread-local), with Redis
        # connections of its own, and `send_task` subscribes to the task's result channel through the sending
        # thread's. So tasks are sent from one thread, and every result is read through that thread's backend:
        # one set of connections, which `_closed` closes.
        self._publishing = ThreadPoolExecutor(max_workers=1, thread_name_prefix="redis-publish")
        self._backend = self._publishing.submit(lambda: app.backend).result()

    @property
    def workers_alive(self) -> int:
        """Workers heard from lately: a ping reply or a result. A result counts because a ping reply can be
        missed (the first ping of a connection often is), and a worker that just delivered is plainly alive."""
        cutoff = time.monotonic() - WORKER_HEARD_SECONDS
        return sum(1 for heard in self._last_heard.values() if heard >= cutoff)

    def _capacity(self) -> int:
        return max(1, self.workers_alive) * (self.max_batch_images + 1) * IN_FLIGHT_PER_SLOT

    # -- serving ---------------------------------------------------------------------------------------------

    async def _serve(self) -> None:
        watcher = asyncio.create_task(self._watch(), name="redis-results")
        try:
            while not self._closing or len(self._queue):
                while len(self._queue) and len(self._in_flight) < self._capacity() and not self._redis_lost:
                    [job] = self._queue.take(user_of=lambda item: item.user_id, fits=lambda batch, item: False)
                    if not await self._dispatch(job):
                        self._queue.push(job.user_id, job)
                        await asyncio.sleep(RETRY_SECONDS)
                        break
                self._wakeup.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wakeup.wait(), PING_SECONDS)
        finally:
            await _cancelled(watcher)

    async def _dispatch(self, job: Job) -> bool:
        """Publish the job as a task (or find its finished result); False when Redis refused it."""
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self._publishing, self._publish, job)
        except Exception as exc:  # kombu and redis raise many kinds of connection errors
            log.warning("job %s: Redis refused the task (%s); it stays queued", job.id, exc)
            return False
        now = time.monotonic()
        if job.started_at is None:
            self.metrics.job_started(now - job.submitted_at)
        job.state, job.started_at = JobState.RUNNING, now
        self._running.append(job)
        self._in_flight[task_id_for(job)] = job
        return True

    def _publish(self, job: Job) -> None:
        task_id = task_id_for(job)
        if AsyncResult(task_id, app=self._app, backend=self._backend).state == "SUCCESS":
            return  # finished while the bot was away: `_watch` collects it
        self._app.send_task(GENERATE_TASK, args=[request_to_payload(job.request)], task_id=task_id)

    def _republish(self) -> None:
        for job in list(self._in_flight.values()):
            self._publish(job)

    async def _watch(self) -> None:
        """Sweep for finished results, count live workers, and resend what was in flight after a Redis outage."""
        loop = asyncio.get_running_loop()
        listener = asyncio.create_task(self._listen(), name="redis-result-channels")
        next_ping = 0.0
        try:
            while True:
                try:
                    if time.monotonic() >= next_ping:
                        self._heard_from(await loop.run_in_executor(self._io, self._ping_workers))
                        next_ping = time.monotonic() + PING_SECONDS
                    if self._redis_lost:
                        await loop.run_in_executor(self._publishing, self._republish)
                        log.warning("Redis is back; %d jobs in flight were sent again", len(self._in_flight))
                        self._redis_lost = False
                        self._wakeup.set()
                    self._collect(await loop.run_in_executor(self._io, self._finished, list(self._in_flight)))
                except Exception as exc:
                    if not self._redis_lost:
                        log.warning("Redis is unreachable (%s); jobs wait until it is back", exc)
                    self._redis_lost = True
                    self._last_heard.clear()
                self._sweep_now.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._sweep_now.wait(), SWEEP_SECONDS)
        finally:
            await _cancelled(listener)

    async def _listen(self) -> None:
        """Take each result the moment a worker stores it, from the channel Celery publishes it on."""
        key_prefix = self._backend.task_keyprefix  # bytes: the result key is this prefix and the task id
        while True:
            try:
                url = self._app.conf.result_backend
                async with redis.asyncio.Redis.from_url(url) as client, client.pubsub() as channels:
                    await channels.psubscribe(key_prefix + TASK_ID_PREFIX.encode() + b"*")
                    self._sweep_now.set()  # what was stored before this subscription is found by a sweep
                    async for message in channels.listen():
                        task_id = message["channel"][len(key_prefix) :].decode()
                        if message["type"] == "pmessage" and task_id in self._in_flight:
                            self._collect(self._outcomes({task_id: message["data"]}))
            except (redis.RedisError, OSError) as exc:
                log.debug("not listening for results (%s); the sweep collects them meanwhile", exc)
                await asyncio.sleep(RETRY_SECONDS)

    def _ping_workers(self) -> list[str]:
        """The names of the workers that answer a ping within half a second."""
        return [name for reply in self._app.control.ping(timeout=0.5) for name in reply]

    def _heard_from(self, workers: list[str]) -> None:
        now = time.monotonic()
        for name, heard in list(self._last_heard.items()):
            if heard < now - WORKER_HEARD_SECONDS:
                del self._last_heard[name]  # a worker that restarted comes back under a new name
        self._last_heard.update(dict.fromkeys(workers, now))

    def _finished(self, task_ids: list[str]) -> dict[str, object]:
        """The outcomes of the tasks that ended, read in one round trip (MGET) however many are in flight."""
        if not task_ids:
            return {}
        stored = self._backend.client.mget([self._backend.get_key_for_task(task_id) for task_id in task_ids])
        return self._outcomes(dict(zip(task_ids, stored, strict=True)))

    def _outcomes(self, stored: dict[str, bytes | None]) -> dict[str, object]:
        """The outcomes of the tasks that ended, from their stored (msgpack) result records.

        Anyone who can write to Redis can forge a record, so it is only decoded (msgpack, nothing else is
        accepted), never turned back into an exception object the way Celery's `decode_result` does."""
        outcomes: dict[str, object] = {}
        for task_id, raw in stored.items():
            if raw is None:
                continue
            try:
                meta = self._backend.decode(raw)
                status = meta["status"]
            except Exception:  # kombu refuses content that is not msgpack with errors of its own
                status = "BROKEN"
            if status == "SUCCESS":
                outcomes[task_id] = meta.get("result")
            elif status in ("FAILURE", "BROKEN"):
                message = "The worker failed." if status == "FAILURE" else BROKEN_RESULT
                outcomes[task_id] = {"error": {"code": "generation_failed", "message": message}}
        return outcomes

    def _collect(self, outcomes: dict[str, object]) -> None:
        for task_id, outcome in outcomes.items():
            self._complete(task_id, outcome)
        if outcomes:
            self._wakeup.set()

    def _complete(self, task_id: str, outcome: object) -> None:
        job = self._in_flight.pop(task_id, None)
        if job is None:
            return
        self._running.remove(job)
        error = outcome.get("error") if isinstance(outcome, dict) else None
        if isinstance(error, dict):
            self._settle(job, JobState.FAILED, ERRORS_BY_CODE.get(str(error.get("code")), GenerationFailed)(
                str(error.get("message", "Generation failed."))
            ))  # fmt: skip
            return
        try:
            result = result_from_payload(outcome)
        except (KeyError, TypeError, ValueError):
            self._settle(job, JobState.FAILED, GenerationFailed(BROKEN_RESULT))
            return
        if isinstance(outcome.get("worker"), str):
            self._heard_from([outcome["worker"]])
        per_image = result.generation_time / max(1, result.batch_images)
        self._seconds_per_image += ETA_SMOOTHING * (per_image - self._seconds_per_image)
        self.metrics.batch_done(len(result.images), result.generation_time)
        self._settle(job, JobState.DONE, result)

    def _stop(self) -> None:
        """Nothing to interrupt here: tasks run on the workers, and `_closed` hands them over to the next start."""

    async def _closed(self) -> None:
        """Jobs still in Redis stay recorded; the next start submits them under the same names and collects
        whatever finished meanwhile."""
        for job in list(self._in_flight.values()):
            self._settle(job, JobState.FAILED, ShuttingDown("The bot restarted while this was being made."))
        self._in_flight.clear()
        self._running.clear()
        # Let a Redis call still running finish before its connection closes (a ping waits at most half a
        # second), without blocking the loop. Celery never closes its result backend's connections: they
        # would stay open until garbage collection. Its broker connections stay in kombu's pool, which every
        # Celery app of the process with the same broker shares.
        await asyncio.to_thread(self._io.shutdown)
        await asyncio.to_thread(self._publishing.shutdown)
        self._backend.client.connection_pool.disconnect()


async def _cancelled(task: asyncio.Task[None]) -> None:
    """Cancel `task` and wait until it has closed its Redis connections."""
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


@contextlib.asynccontextmanager
async def open_remote_executor(settings: Settings, *, drain_on_close: bool = False) -> AsyncIterator[RemoteExecutor]:
    executor = RemoteExecutor(
        make_celery(settings),
        model_name=settings.model_unet,
        max_batch_images=settings.max_batch_images or 8,
        queue_max=settings.queue_max,
        user_max_pending=settings.user_max_pending,
        batch_timeout=settings.batch_timeout,
    )
    executor.start()
    try:
        yield executor
    finally:
        await executor.close(drain=drain_on_close)
