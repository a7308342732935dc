"""The scale-out for real: a redis-server on 127.0.0.1, `lcm-bot worker` processes on the tiny model, and the
bot's `RemoteExecutor` (and once, the whole bot process against the fake Discord). `.ci/run` installs
redis-server where it is missing."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import msgpack
import pytest
import redis
from celery.result import AsyncResult

from bot.engine.requests import Kind, check_inputs
from bot.errors import GenerationFailed, ShuttingDown
from bot.queue import remote as remote_module
from bot.queue.celery_app import GENERATE_TASK
from bot.queue.remote import RemoteExecutor, open_remote_executor, task_id_for
from bot.settings import Settings
from tests.cogs.test_generate import ephemeral_reply
from tests.fakediscord import FakeDiscord
from tests.support.bot_process import start_bot_process
from tests.support.scale_out import RedisServer, Workers
from tests.support.tiny_model import TinyModel

pytestmark = pytest.mark.timeout(300)
VISIBILITY_TIMEOUT = 3
RESULT_COMMANDS = {"get", "mget", "subscribe", "unsubscribe", "psubscribe", "punsubscribe"}


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    assert shutil.which("redis-server"), "redis-server is missing (`.ci/run` installs it)"
    server = RedisServer(tmp_path)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def settings_for(tiny_model: TinyModel, redis_server: RedisServer) -> Settings:
    return Settings(
        model_base=str(tiny_model.base),
        model_unet=str(tiny_model.lcm_unet),
        base_resolution=256,
        device="cpu",
        max_batch_images=2,
        queue_backend="redis",
        redis_url=redis_server.url,
        redis_visibility_timeout=VISIBILITY_TIMEOUT,
        user_max_pending=20,
        _env_file=None,
    )


@pytest.fixture
def workers(settings_for: Settings) -> Iterator[Workers]:
    started = Workers(settings_for)
    yield started
    started.close()


@pytest.fixture
async def remote(settings_for: Settings) -> AsyncIterator[RemoteExecutor]:
    async with open_remote_executor(settings_for) as executor:
        yield executor


def worker_of(executor: RemoteExecutor, job) -> str:
    return AsyncResult(task_id_for(job), app=executor._app).result["worker"]


async def test_jobs_spread_over_two_workers(workers: Workers, remote: RemoteExecutor, buckets) -> None:
    await asyncio.to_thread(workers.start)
    await asyncio.to_thread(workers.start)
    jobs = [
        remote.submit(check_inputs(Kind.IMAGINE, f"fox {n}", buckets=buckets, steps=2, seed=n), user_id=n % 4)
        for n in range(12)
    ]
    results = await asyncio.wait_for(asyncio.gather(*(job.result() for job in jobs)), 180)
    assert all(len(result.images) == 1 and result.images[0].startswith(b"\x89PNG") for result in results)
    assert len({worker_of(remote, job) for job in jobs}) == 2
    await _until(lambda: remote.workers_alive == 2, 15)  # counted every few seconds


async def test_a_worker_killed_mid_job_leaves_it_to_another(
    workers: Workers, remote: RemoteExecutor, redis_server: RedisServer, buckets
) -> None:
    first = await asyncio.to_thread(workers.start)
    request = check_inputs(Kind.IMAGINE, "a slow fox", buckets=buckets, steps=8, count=2)
    job = remote.submit(request, user_id=1)
    with redis.Redis.from_url(redis_server.url) as queue:
        await _until(lambda: job.state.value == "running" and queue.llen("celery") == 0, 30)
    first.send_signal(signal.SIGKILL)
    first.wait(10)
    assert AsyncResult(task_id_for(job), app=remote._app).state != "SUCCESS", "the job ended before the kill"
    await asyncio.to_thread(workers.start)
    result = await asyncio.wait_for(job.result(), 120)
    assert len(result.images) == 2
    assert remote.metrics.jobs.labels(status="done")._value.get() == 1


async def test_redis_restarting_mid_run_loses_nothing(
    workers: Workers, remote: RemoteExecutor, redis_server: RedisServer, buckets
) -> None:
    await asyncio.to_thread(workers.start)
    jobs = [
        remote.submit(check_inputs(Kind.IMAGINE, f"owl {n}", buckets=buckets, steps=4, seed=n), user_id=n)
        for n in range(6)
    ]
    await asyncio.sleep(0.3)
    with workers.restarted_when_they_exit():  # as the compose file's restart policy does
        redis_server.stop()  # without persistence: every message and result in it is gone
        more = remote.submit(check_inputs(Kind.IMAGINE, "while redis is down", buckets=buckets, steps=1), user_id=9)
        await asyncio.sleep(2)
        redis_server.start()
        results = await asyncio.wait_for(asyncio.gather(*(job.result() for job in [*jobs, more])), 240)
    assert [len(result.images) for result in results] == [1] * 7


async def test_a_tampered_payload_is_refused_not_run(
    workers: Workers, remote: RemoteExecutor, buckets, tmp_path: Path
) -> None:
    await asyncio.to_thread(workers.start)
    marker = tmp_path / "pwned"
    remote._app.send_task(GENERATE_TASK, args=[MakesADirectory(marker)], serializer="pickle", task_id="tampered")
    job = remote.submit(check_inputs(Kind.IMAGINE, "after the attack", buckets=buckets, steps=1), user_id=1)
    assert len((await asyncio.wait_for(job.result(), 120)).images) == 1
    assert not marker.exists()
    assert AsyncResult("tampered", app=remote._app).state != "SUCCESS"


async def test_a_restarted_bot_collects_what_finished_while_it_was_down(
    workers: Workers, settings_for: Settings, buckets
) -> None:
    worker = await asyncio.to_thread(workers.start)
    request = check_inputs(Kind.IMAGINE, "a patient fox", buckets=buckets, steps=2, seed=3)
    async with open_remote_executor(settings_for) as first:
        job = first.submit(request, user_id=1, key="request-17")
        await _until(lambda: job.state.value == "running", 30)
    # the bot is down; the worker finishes the job, then goes away too
    task = AsyncResult(task_id_for(job), app=workers.app)
    await _until(lambda: task.state == "SUCCESS", 60)
    worker.terminate()
    worker.wait(30)
    async with open_remote_executor(settings_for) as second:
        again = second.submit(request, user_id=1, key="request-17")
        result = await asyncio.wait_for(again.result(), 30)
    assert result.seeds == (3,) and len(result.images) == 1


async def test_a_closed_bot_leaves_no_connection_for_results_open(
    settings_for: Settings, redis_server: RedisServer, buckets
) -> None:
    """Reading results (and Celery's subscription to each task's result) leaves connections that only the
    garbage collector would close otherwise. Sending tasks and pinging workers use kombu's pool of broker
    connections, which outlives any one Celery app."""
    request = check_inputs(Kind.IMAGINE, "a fox nobody makes", buckets=buckets, steps=1)
    async with open_remote_executor(settings_for) as remote:
        job = remote.submit(request, user_id=1)
        await _until(lambda: job.state.value == "running", 30)  # published, and swept for since
        await asyncio.sleep(2 * remote_module.SWEEP_SECONDS)
    with pytest.raises(ShuttingDown):
        await job.result()
    with redis.Redis.from_url(redis_server.url) as observer:
        # Result channels close without waiting for Redis: give the loop a moment to let go of their sockets.
        await _until(lambda: not {client["cmd"] for client in observer.client_list()} & RESULT_COMMANDS, 5)


async def test_results_arrive_on_their_channel_without_waiting_for_a_sweep(
    workers: Workers, settings_for: Settings, buckets, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(remote_module, "SWEEP_SECONDS", 3600)  # after the sweeps at start, only the channel is left
    await asyncio.to_thread(workers.start)
    async with open_remote_executor(settings_for) as remote:
        await asyncio.sleep(1)  # subscribed, and the start's sweeps are done
        job = remote.submit(check_inputs(Kind.IMAGINE, "a prompt fox", buckets=buckets, steps=1), user_id=1)
        assert len((await asyncio.wait_for(job.result(), 60)).images) == 1


async def test_a_forged_result_fails_its_job_and_the_next_result_still_arrives(
    workers: Workers, settings_for: Settings, redis_server: RedisServer, buckets, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(remote_module, "SWEEP_SECONDS", 3600)
    async with open_remote_executor(settings_for) as remote:
        forged = remote.submit(check_inputs(Kind.IMAGINE, "forged", buckets=buckets, steps=1), user_id=1)
        await _until(lambda: forged.state.value == "running", 30)
        key = remote._app.backend.get_key_for_task(task_id_for(forged))
        with redis.Redis.from_url(redis_server.url) as channel:
            for record in (b"\x80\x04not msgpack", msgpack.packb({"status": "SUCCESS", "result": {"error": 7}})):
                channel.publish(key, record)
        with pytest.raises(GenerationFailed, match="broken result"):
            await asyncio.wait_for(forged.result(), 30)
        await asyncio.to_thread(workers.start)
        honest = remote.submit(check_inputs(Kind.IMAGINE, "honest", buckets=buckets, steps=1), user_id=2)
        assert len((await asyncio.wait_for(honest.result(), 60)).images) == 1


async def test_the_bot_serves_discord_through_a_remote_worker(
    fake: FakeDiscord, tiny_model: TinyModel, workers: Workers, redis_server: RedisServer, tmp_path: Path
) -> None:
    await asyncio.to_thread(workers.start)
    bot = await start_bot_process(
        fake, tiny_model, tmp_path / "bot.sqlite3", QUEUE_BACKEND="redis", REDIS_URL=redis_server.url
    )
    try:
        user = fake.add_user("ada")
        interaction = await fake.run_command(user, "imagine", {"prompt": "a lighthouse", "count": 2})
        await fake.wait_for(lambda: any(message.attachments for message in interaction.messages()), 120)
        [delivered] = [message for message in interaction.messages() if message.attachments]
        assert len(delivered.attachments) == 2
        assert "1 GPU worker online" in await ephemeral_reply(fake, await fake.run_command(user, "queue"))
    finally:
        bot.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(bot.wait(), 60) == 0


class MakesADirectory:
    """Unpickling this creates a directory: proof of code execution if a worker ever unpickles it."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple:
        return (os.mkdir, (str(self.path),))


async def _until(condition: Callable[[], bool], seconds: float) -> None:
    """Poll until `condition` holds; TimeoutError after `seconds`, so that no test hangs on it."""
    async with asyncio.timeout(seconds):
        while not condition():
            await asyncio.sleep(0.02)
