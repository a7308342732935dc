from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator

import pytest

from bot import log_context
from bot.engine.executor import Executor
from bot.engine.requests import Kind, check_inputs
from bot.errors import GenerationFailed
from tests.support.runners import RecordingRunner


@pytest.fixture
def installed() -> Iterator[None]:
    factory = logging.getLogRecordFactory()
    log_context.install("INFO")
    yield
    logging.setLogRecordFactory(factory)


def test_records_carry_the_job_of_their_task(installed, caplog) -> None:
    async def handle(job_id: str) -> None:
        log_context.for_jobs([job_id])
        await asyncio.sleep(0)
        logging.getLogger("cogs.test").warning("delivering")

    async def two_jobs() -> None:
        await asyncio.gather(handle("a1"), handle("b2"))

    with caplog.at_level(logging.WARNING):
        asyncio.run(two_jobs())
        logging.getLogger("bot.test").warning("no job here")
    assert sorted(record.job_id for record in caplog.records) == ["-", "a1", "b2"]
    line = logging.Formatter(log_context.LOG_FORMAT).format(caplog.records[0])
    assert "[job " in line and line.endswith("delivering")


async def test_a_failing_batch_names_its_jobs(installed, caplog, pipes, buckets) -> None:
    executor = Executor(
        RecordingRunner(pipes), model_name="tiny", max_batch_images=4, queue_max=9, user_max_pending=9, batch_timeout=60
    )
    executor.start()
    jobs = [
        executor.submit(check_inputs(Kind.IMAGINE, prompt, buckets=buckets, steps=1), user_id=user)
        for user, prompt in enumerate(["boom", "fine"])
    ]
    with caplog.at_level(logging.WARNING, logger="bot.engine.executor"):
        with pytest.raises(GenerationFailed):
            await jobs[0].result()
        await jobs[1].result()
    await executor.close()
    [retry] = [record for record in caplog.records if "retrying them one by one" in record.getMessage()]
    assert retry.job_id == f"{jobs[0].id},{jobs[1].id}"
    [failure] = [record for record in caplog.records if "failed (error id" in record.getMessage()]
    assert failure.job_id == jobs[0].id
