from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from bot.limits import WINDOW, Budgets, Limits, OverBudget
from bot.storage import open_database
from bot.storage.usage import Status, UsageLog


@pytest.fixture
async def usage(tmp_path: Path):
    async with open_database(tmp_path / "limits.sqlite3") as database:
        yield UsageLog(database)


async def spend(usage: UsageLog, images: int, *, user_id: int = 1, guild_id: int = 9, status=Status.QUEUED) -> int:
    return await usage.record(
        user_id=user_id, guild_id=guild_id, channel_id=1, command="imagine", prompt="p", negative=None,
        parameters={}, status=status, image_count=images,
    )  # fmt: skip


async def test_user_budget_counts_images_and_says_when_to_retry(usage: UsageLog) -> None:
    limits, budgets = Limits(usage), Budgets(user_images_per_hour=5, guild_images_per_hour=0)
    await spend(usage, 4)
    await limits.check(budgets, user_id=1, guild_id=9, images=1)
    with pytest.raises(OverBudget, match="used your 5 images") as caught:
        await limits.check(budgets, user_id=1, guild_id=9, images=2)
    retry_at = int(re.search(r"<t:(\d+):R>", caught.value.message)[1])
    assert abs(retry_at - (time.time() + WINDOW)) < 5
    await limits.check(budgets, user_id=2, guild_id=9, images=5)  # another user has their own budget


async def test_failed_and_cancelled_requests_are_refunded(usage: UsageLog) -> None:
    limits, budgets = Limits(usage), Budgets(user_images_per_hour=4, guild_images_per_hour=0)
    failed, cancelled = await spend(usage, 2), await spend(usage, 2)
    await usage.finish(failed, Status.FAILED)
    await usage.finish(cancelled, Status.CANCELLED)
    await limits.check(budgets, user_id=1, guild_id=9, images=4)


async def test_the_window_slides(usage: UsageLog) -> None:
    limits, budgets = Limits(usage), Budgets(user_images_per_hour=2, guild_images_per_hour=0)
    await spend(usage, 2)
    with pytest.raises(OverBudget):
        await limits.check(budgets, user_id=1, guild_id=9, images=1)
    await limits.check(budgets, user_id=1, guild_id=9, images=1, now=time.time() + WINDOW + 1)


async def test_guild_budget_and_oversized_requests(usage: UsageLog) -> None:
    limits, budgets = Limits(usage), Budgets(user_images_per_hour=10, guild_images_per_hour=6)
    await spend(usage, 4, user_id=1)
    await spend(usage, 2, user_id=2)
    with pytest.raises(OverBudget, match="This server has used its 6 images"):
        await limits.check(budgets, user_id=3, guild_id=9, images=1)
    await limits.check(budgets, user_id=3, guild_id=None, images=1)  # direct messages have no guild budget
    with pytest.raises(OverBudget, match="ask for fewer than 11"):
        await limits.check(budgets, user_id=4, guild_id=10, images=11)
