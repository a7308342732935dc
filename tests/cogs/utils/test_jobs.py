from __future__ import annotations

from bot.storage import Database
from bot.storage.usage import Status, UsageLog
from tests.bot.storage.test_jobs import pending_request, queued_request


async def test_a_start_mends_what_a_kill_between_two_commits_left(start_bot, database: Database) -> None:
    ended = await pending_request(database, "delivered, then the process was killed")
    await UsageLog(database).finish(ended, Status.DONE)
    unkept = await queued_request(database, "recorded, then the process was killed")
    await start_bot()
    async with database.connection.execute("SELECT COUNT(*) FROM pending_jobs") as cursor:
        assert await cursor.fetchone() == (0,)  # the ended job's token is forgotten
    usage = UsageLog(database)
    assert (await usage.entry(ended)).status == Status.DONE  # not run again
    assert (await usage.entry(unkept)).status == Status.FAILED
    assert await usage.images_since(0, user_id=1) == []  # the unkept request no longer counts
