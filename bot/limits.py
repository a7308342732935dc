"""Hourly image budgets, per user and per guild, read from the usage log (so they survive restarts).

A request costs its image count; requests still queued count as spent, failed and cancelled ones are refunded.
A refusal names the budget and the moment it will have room again, as a Discord timestamp every client shows
in its own time zone.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from bot.errors import UserFacingError
from bot.storage.usage import UsageLog

WINDOW = 60 * 60  # seconds


class OverBudget(UserFacingError):
    """An hourly image budget would be exceeded."""

    code = "over_budget"


@dataclass(frozen=True)
class Budgets:
    user_images_per_hour: int  # 0: no user budget
    guild_images_per_hour: int  # 0: no guild budget


class Limits:
    def __init__(self, usage: UsageLog) -> None:
        self._usage = usage

    async def check(
        self, budgets: Budgets, *, user_id: int, guild_id: int | None, images: int, now: float | None = None
    ) -> None:
        """Raise `OverBudget` when `images` more would exceed the user's or the guild's hourly budget."""
        now = time.time() if now is None else now
        if budgets.user_images_per_hour:
            spent = await self._usage.images_since(now - WINDOW, user_id=user_id)
            _check(spent, images, budgets.user_images_per_hour, who="You have", whose="your")
        if budgets.guild_images_per_hour and guild_id is not None:
            spent = await self._usage.images_since(now - WINDOW, guild_id=guild_id)
            _check(spent, images, budgets.guild_images_per_hour, who="This server has", whose="its")


def _check(spent: list[tuple[float, int]], wanted: int, budget: int, *, who: str, whose: str) -> None:
    if wanted > budget:
        raise OverBudget(f"{who} a budget of {budget} images an hour; ask for fewer than {wanted}.")
    used = sum(images for _, images in spent)
    if used + wanted <= budget:
        return
    for created_at, images in spent:  # oldest first: the first to leave the hour's window
        used -= images
        if used + wanted <= budget:
            raise OverBudget(
                f"{who} used {whose} {budget} images for this hour. "
                f"There is room for {wanted} more <t:{int(created_at + WINDOW) + 1}:R>."
            )
