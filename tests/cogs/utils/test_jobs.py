from __future__ import annotations

from bot.storage import Database
from bot.storage.usage import Status, UsageLog
from tests.bot.storage.test_jobs import pending_request


async def test_a_start_forgets_the_token_of_a_job_that_ended_just_before_the_last_process_stopped(
    start_bot, database: Database
) -> None:
    ended = await pending_request(database, "delivered, then the process was killed")
    await UsageLog(database).finish(ended, Status.DONE)
    await start_bot()
    async with database.connection.execute("SELECT COUNT(*) FROM pending_jobs") as cursor:
        assert await cursor.fetchone() == (0,)
    assert (await UsageLog(database).entry(ended)).status == Status.DONE  # not run again
