from __future__ import annotations

import asyncio
import functools
import io
import time
from collections.abc import Callable, Sequence

import numpy as np
import pytest
from PIL import Image

from bot.engine.executor import Executor, JobState, default_png_workers
from bot.engine.generation import generate
from bot.engine.pipelines import Pipelines
from bot.engine.png import encode_png
from bot.engine.requests import GenerationRequest, Kind, check_inputs
from bot.errors import GenerationFailed, JobCancelled, QueueFull, ShuttingDown, TooManyPending
from tests.support.runners import RecordingRunner


def make_executor(runner, **overrides: object) -> Executor:
    options = {"max_batch_images": 4, "queue_max": 50, "user_max_pending": 10, "batch_timeout": 60.0}
    options.update(overrides)
    return Executor(runner, model_name="tiny", **options)


def imagine(buckets, prompt: str = "a fox", **options: object) -> GenerationRequest:
    return check_inputs(Kind.IMAGINE, prompt, buckets=buckets, steps=options.pop("steps", 1), **options)


async def test_job_result_holds_pngs_with_parameters(pipes: Pipelines, buckets) -> None:
    executor = make_executor(functools.partial(generate, pipes))
    executor.start()
    job = executor.submit(imagine(buckets, seed=7, count=2), user_id=1)
    result = await job.result()
    await executor.close()
    assert result.seeds == (7, 8) and len(result.images) == 2
    with Image.open(io.BytesIO(result.images[1])) as png:
        assert png.size == buckets["1:1"]
        assert png.text["seed"] == "8" and png.text["model"] == "tiny" and png.text["prompt"] == "a fox"
    assert result.generation_time > 0 and result.queue_wait >= 0
    assert job.state is JobState.DONE


async def test_users_are_served_round_robin(pipes: Pipelines, buckets) -> None:
    runner = RecordingRunner(pipes)
    executor = make_executor(runner, max_batch_images=1)
    jobs = [executor.submit(imagine(buckets, prompt), user_id=prompt[0]) for prompt in ("A1", "A2", "A3", "B1", "C1")]
    assert [executor.position(job) for job in jobs] == [1, 4, 5, 2, 3]
    executor.start()
    await asyncio.gather(*(job.result() for job in jobs))
    await executor.close()
    assert runner.batches == [["A1"], ["B1"], ["C1"], ["A2"], ["A3"]]


async def test_compatible_jobs_share_a_batch_up_to_the_image_cap(pipes: Pipelines, buckets) -> None:
    runner = RecordingRunner(pipes)
    executor = make_executor(runner, max_batch_images=4)
    prompts = [("a", 1, "1:1"), ("b", 2, "1:1"), ("c", 1, "16:9"), ("d", 2, "1:1"), ("e", 1, "1:1")]
    jobs = [
        executor.submit(imagine(buckets, prompt, count=count, aspect=aspect), user_id=index)
        for index, (prompt, count, aspect) in enumerate(prompts)
    ]
    executor.start()
    results = await asyncio.gather(*(job.result() for job in jobs))
    await executor.close()
    assert runner.batches == [["a", "b", "e"], ["c"], ["d"]]
    assert [result.batch_images for result in results] == [4, 4, 1, 2, 4]


async def test_caps_reject_with_reasons(pipes: Pipelines, buckets) -> None:
    executor = make_executor(functools.partial(generate, pipes), queue_max=3, user_max_pending=2)
    executor.submit(imagine(buckets), user_id="a")
    executor.submit(imagine(buckets), user_id="a")
    with pytest.raises(TooManyPending, match="limit is 2"):
        executor.submit(imagine(buckets), user_id="a")
    executor.submit(imagine(buckets), user_id="b")
    with pytest.raises(QueueFull, match="queue is full"):
        executor.submit(imagine(buckets), user_id="c")
    assert executor.queue_depth == 3
    await executor.close()


async def test_queued_job_can_be_cancelled(pipes: Pipelines, buckets) -> None:
    runner = RecordingRunner(pipes)
    executor = make_executor(runner, max_batch_images=1)
    keep = executor.submit(imagine(buckets, "keep"), user_id=1)
    drop = executor.submit(imagine(buckets, "drop"), user_id=2)
    assert executor.cancel(drop.id)
    assert not executor.cancel(drop.id)
    executor.start()
    await keep.result()
    with pytest.raises(JobCancelled):
        await drop.result()
    await executor.close()
    assert runner.batches == [["keep"]]
    assert drop.state is JobState.CANCELLED


async def test_failed_batch_is_retried_job_by_job(pipes: Pipelines, buckets) -> None:
    runner = RecordingRunner(pipes)
    executor = make_executor(runner)
    jobs = [executor.submit(imagine(buckets, prompt), user_id=prompt) for prompt in ("ok1", "boom", "ok2")]
    executor.start()
    outcomes = await asyncio.gather(*(job.result() for job in jobs), return_exceptions=True)
    await executor.close()
    assert runner.batches == [["ok1", "boom", "ok2"], ["ok1"], ["boom"], ["ok2"]]
    assert not isinstance(outcomes[0], Exception) and not isinstance(outcomes[2], Exception)
    assert isinstance(outcomes[1], GenerationFailed) and "error id" in outcomes[1].message


async def test_batch_timeout_interrupts_and_the_next_job_runs(pipes: Pipelines, buckets) -> None:
    def slow_runner(requests: Sequence[GenerationRequest], should_stop: Callable[[], bool]) -> list:
        if requests[0].prompt == "slow":
            deadline = time.monotonic() + 10
            while not should_stop() and time.monotonic() < deadline:
                time.sleep(0.01)
        return generate(pipes, requests, should_stop)

    executor = make_executor(slow_runner, batch_timeout=0.3, max_batch_images=1)
    slow = executor.submit(imagine(buckets, "slow"), user_id=1)
    fast = executor.submit(imagine(buckets, "fast"), user_id=2)
    executor.start()
    with pytest.raises(GenerationFailed, match="longer than"):
        await slow.result()
    assert len((await fast.result()).images) == 1
    await executor.close()


async def test_close_fails_queued_jobs_but_finishes_the_running_one(pipes: Pipelines, buckets) -> None:
    runner = RecordingRunner(pipes)
    runner.gate.clear()
    executor = make_executor(runner, max_batch_images=1)
    running = executor.submit(imagine(buckets, "running"), user_id=1)
    queued = executor.submit(imagine(buckets, "queued"), user_id=2)
    executor.start()
    while running.state is not JobState.RUNNING:
        await asyncio.sleep(0.01)
    closing = asyncio.create_task(executor.close())
    await asyncio.sleep(0.05)
    with pytest.raises(ShuttingDown):
        executor.submit(imagine(buckets), user_id=3)
    runner.gate.set()
    await closing
    assert len((await running.result()).images) == 1
    with pytest.raises(ShuttingDown):
        await queued.result()


async def test_close_with_drain_runs_everything(pipes: Pipelines, buckets) -> None:
    executor = make_executor(functools.partial(generate, pipes), max_batch_images=1)
    jobs = [executor.submit(imagine(buckets, str(index)), user_id=index) for index in range(3)]
    executor.start()
    await executor.close(drain=True)
    assert all(job.state is JobState.DONE for job in jobs)


async def test_position_and_eta_follow_the_queue(pipes: Pipelines, buckets) -> None:
    runner = RecordingRunner(pipes)
    runner.gate.clear()
    executor = make_executor(runner, max_batch_images=1)
    jobs = [executor.submit(imagine(buckets, str(index), count=2), user_id=index) for index in range(3)]
    executor.start()
    while jobs[0].state is not JobState.RUNNING:
        await asyncio.sleep(0.01)
    assert [executor.position(job) for job in jobs] == [0, 1, 2]
    etas = [executor.eta(job) for job in jobs]
    assert etas[0] < etas[1] < etas[2]
    runner.gate.set()
    await asyncio.gather(*(job.result() for job in jobs))
    assert executor.position(jobs[0]) is None and executor.eta(jobs[0]) == 0
    await executor.close()


async def test_event_loop_stays_responsive_while_generating(pipes: Pipelines, buckets) -> None:
    executor = make_executor(functools.partial(generate, pipes), max_batch_images=4)
    executor.start()
    jobs = [executor.submit(imagine(buckets, f"p{index}", steps=4, count=4), user_id=index) for index in range(4)]
    worst_lag = 0.0
    done = asyncio.gather(*(job.result() for job in jobs))
    while not done.done():
        before = time.perf_counter()
        await asyncio.sleep(0.005)
        worst_lag = max(worst_lag, time.perf_counter() - before - 0.005)
    await done
    await executor.close()
    assert worst_lag < 0.05, f"event loop blocked for {worst_lag * 1000:.0f} ms"


@pytest.mark.parametrize(("cpus", "workers"), [(None, 2), (1, 2), (4, 2), (16, 8), (128, 8)])
def test_png_encoders_grow_with_the_machine(monkeypatch: pytest.MonkeyPatch, cpus: int | None, workers: int) -> None:
    monkeypatch.setattr("os.cpu_count", lambda: cpus)
    assert default_png_workers() == workers


def test_executor_encodes_on_the_default_pool_unless_told(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("os.cpu_count", lambda: 12)
    never_runs = functools.partial(pytest.fail, "no job was submitted")
    default, told = make_executor(never_runs), make_executor(never_runs, png_workers=1)
    assert (default.png_workers, told.png_workers) == (6, 1)


def idat_chunks(png: bytes) -> int:
    count, position = 0, 8
    while position < len(png):
        length = int.from_bytes(png[position : position + 4], "big")
        count += png[position + 4 : position + 8] == b"IDAT"
        position += 12 + length
    return count


def encoded_whole(png: bytes) -> bool:
    """Whether `png` is `encode_png`'s file of its own pixels and parameters, as one thread makes it."""
    with Image.open(io.BytesIO(png)) as reopened:
        parameters = {key: value for key, value in reopened.text.items() if key != "parameters"}
        return encode_png(np.asarray(reopened), parameters) == png


async def test_a_lone_picture_is_encoded_in_strips_on_the_whole_png_pool(pipes: Pipelines, buckets) -> None:
    executor = make_executor(functools.partial(generate, pipes), png_workers=2, max_batch_images=2)
    lone = executor.submit(imagine(buckets, "a fox"), user_id=1)
    executor.start()
    lone_png = (await lone.result()).images[0]
    pair = executor.submit(imagine(buckets, "a fox", count=2), user_id=1)
    pair_pngs = (await pair.result()).images
    await executor.close()
    assert idat_chunks(lone_png) == 3 and not encoded_whole(lone_png)  # 2 strips, then the zlib checksum
    assert all(encoded_whole(png) for png in pair_pngs)  # a picture per thread
