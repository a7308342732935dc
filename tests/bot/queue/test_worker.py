"""The worker's side of a task on the tiny model: its executor as the worker builds it, and a task delivered twice."""

from __future__ import annotations

import asyncio

from bot.engine.pipelines import Pipelines
from bot.engine.requests import Kind, check_inputs
from bot.queue.worker import TaskJobs, worker_executor


async def test_a_task_delivered_again_while_the_worker_holds_it_waits_for_the_same_job(
    pipes: Pipelines, buckets
) -> None:
    executor = worker_executor(pipes, batch_images=2, threads=3, batch_timeout=120)
    executor.start()
    try:
        tasks = TaskJobs(executor)
        owl = check_inputs(Kind.IMAGINE, "an owl", buckets=buckets, steps=1, seed=3)
        fox = check_inputs(Kind.IMAGINE, "a fox", buckets=buckets, steps=1, seed=4)
        first, again, other = await asyncio.gather(
            tasks.result(owl, "task-1"), tasks.result(owl, "task-1"), tasks.result(fox, "task-2")
        )
        assert again is first and other.images != first.images
        later = await tasks.result(owl, "task-1")  # delivered once more after it finished: it runs again
        assert later is not first and later.seeds == first.seeds and len(later.images) == 1
    finally:
        await executor.close()
