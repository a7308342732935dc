from __future__ import annotations

import time
from pathlib import Path

import pytest

from bot.storage import open_database
from bot.storage.usage import Status, UsageLog


@pytest.fixture
async def log(tmp_path: Path):
    async with open_database(tmp_path / "bot.sqlite3") as database:
        yield UsageLog(database)


def row(**overrides: object) -> dict:
    values = {
        "user_id": 1,
        "guild_id": 10,
        "channel_id": 100,
        "command": "imagine",
        "prompt": "a fox",
        "negative": None,
        "parameters": {"steps": 4},
        "status": Status.QUEUED,
    }
    return values | overrides


async def test_prompts_are_stored_verbatim(log: UsageLog) -> None:
    tricky = "'); DROP TABLE requests; -- " + "ü" * 990
    row_id = await log.record(**row(prompt=tricky, negative='"quoted"'))
    entry = await log.entry(row_id)
    assert entry.prompt == tricky and entry.negative == '"quoted"'


async def test_history_is_newest_first_and_skips_refusals(log: UsageLog) -> None:
    first = await log.record(**row(prompt="first"))
    await log.record(**row(prompt="refused", status=Status.REJECTED, reason="invalid_options"))
    second = await log.record(**row(prompt="second", seeds=[5, 6]))
    await log.record(**row(user_id=2, prompt="someone else"))
    entries = await log.history(1)
    assert [entry.id for entry in entries] == [second, first]
    assert entries[0].seeds == [5, 6] and entries[0].parameters == {"steps": 4}


async def test_stats_count_images_users_percentiles_and_refusals(log: UsageLog) -> None:
    now = time.time()
    for index in range(20):
        row_id = await log.record(**row(user_id=1 + index % 2))
        await log.finish(row_id, Status.DONE, image_count=2, queue_wait=float(index), generation_time=1.0 + index)
    failed = await log.record(**row())
    await log.finish(failed, Status.FAILED, reason="generation_failed", error="boom")
    await log.record(**row(status=Status.REJECTED, reason="too_many_pending"))
    await log.record(**row(status=Status.REJECTED, reason="too_many_pending"))
    await log.record(**row(guild_id=99, status=Status.REJECTED, reason="queue_full"))
    stats = await log.stats(10, now=now + 1)
    assert stats.images_today == 40 and stats.images_week == 40
    assert sorted(stats.top_users) == [(1, 20), (2, 20)]
    assert (stats.wait_p50, stats.wait_p95) == (9.0, 18.0)
    assert (stats.generation_p50, stats.generation_p95) == (10.0, 19.0)
    assert stats.rejections == [("too_many_pending", 2)]
    later = await log.stats(10, now=now + 2 * 24 * 3600)
    assert later.images_today == 0 and later.images_week == 40


async def test_empty_guild_has_no_percentiles(log: UsageLog) -> None:
    stats = await log.stats(12345)
    assert stats.images_week == 0 and stats.wait_p50 is None and stats.top_users == []
