from __future__ import annotations

from pathlib import Path

import pytest

from bot.storage import open_database
from bot.storage.database import Database
from bot.storage.jobs import PendingJobs
from bot.storage.usage import Status, UsageLog


@pytest.fixture
async def database(tmp_path: Path):
    async with open_database(tmp_path / "bot.sqlite3") as opened:
        yield opened


async def queued_request(database: Database, prompt: str) -> int:
    """A request recorded as queued, for one image."""
    return await UsageLog(database).record(
        user_id=1,
        guild_id=10,
        channel_id=100,
        command="imagine",
        prompt=prompt,
        negative=None,
        parameters={"steps": 4},
        status=Status.QUEUED,
        seeds=[7],
        image_count=1,
    )


async def pending_request(database: Database, prompt: str) -> int:
    """A request recorded as queued, with its token and inputs kept, as a job is before it enters the queue."""
    row = await queued_request(database, prompt)
    await PendingJobs(database).add(
        row,
        requester_name="fox",
        application_id=5,
        interaction_token=f"token for {prompt}",
        interaction_created_at=1.0,
        response_message_id=None,
        init_image=b"png bytes",
        mask=None,
    )
    return row


async def test_queued_and_running_jobs_are_unfinished_with_their_token_and_inputs(database: Database) -> None:
    queued = await pending_request(database, "queued")
    running = await pending_request(database, "running")
    await UsageLog(database).mark_running(running)
    jobs = await PendingJobs(database).unfinished()
    assert [(job.request_id, job.prompt, job.interaction_token) for job in jobs] == [
        (queued, "queued", "token for queued"),
        (running, "running", "token for running"),
    ]
    assert jobs[0].init_image == b"png bytes" and jobs[0].seeds == [7]


async def test_a_job_recorded_as_ended_but_never_forgotten_is_forgotten_at_the_next_start(database: Database) -> None:
    """The process was killed between recording the job's end and forgetting its token."""
    usage, pending = UsageLog(database), PendingJobs(database)
    ended = {status: await pending_request(database, status.value) for status in (Status.DONE, Status.FAILED)}
    for status, row in ended.items():
        await usage.finish(row, status)
    waiting = await pending_request(database, "still waiting")
    assert await pending.forget_ended() == 2
    assert [job.request_id for job in await pending.unfinished()] == [waiting]
    async with database.connection.execute("SELECT request_id FROM pending_jobs") as cursor:
        assert await cursor.fetchall() == [(waiting,)]
    assert await pending.forget_ended() == 0


async def test_requests_recorded_but_never_kept_are_found(database: Database) -> None:
    """The process was killed between recording the request and keeping its job: nothing can run it again."""
    unkept = [await queued_request(database, prompt) for prompt in ("queued", "running")]
    await UsageLog(database).mark_running(unkept[1])
    kept = await pending_request(database, "kept")
    ended = await queued_request(database, "ended")
    await UsageLog(database).finish(ended, Status.FAILED)
    assert await PendingJobs(database).unkept() == unkept
    assert [job.request_id for job in await PendingJobs(database).unfinished()] == [kept]
