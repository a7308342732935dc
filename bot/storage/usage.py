"""The usage log: one row per generation request, whatever became of it, and the queries over it."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum

from bot.storage.database import Database

DAY = 24 * 60 * 60


class Status(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"
    REJECTED = "rejected"


@dataclass(frozen=True)
class HistoryEntry:
    id: int
    created_at: float
    command: str
    prompt: str
    negative: str | None
    parameters: dict[str, object]
    seeds: list[int]
    status: Status


@dataclass(frozen=True)
class GuildStats:
    images_today: int
    images_week: int
    top_users: list[tuple[int, int]]  # (user id, images in 7 days)
    wait_p50: float | None
    wait_p95: float | None
    generation_p50: float | None
    generation_p95: float | None
    rejections: list[tuple[str, int]]  # (reason, count in 7 days)


class UsageLog:
    def __init__(self, database: Database) -> None:
        self._db = database.connection

    async def record(
        self,
        *,
        user_id: int,
        guild_id: int | None,
        channel_id: int | None,
        command: str,
        prompt: str,
        negative: str | None,
        parameters: Mapping[str, object],
        status: Status,
        reason: str | None = None,
        error: str | None = None,
        seeds: Sequence[int] = (),
        image_count: int = 0,
    ) -> int:
        """`image_count` of a queued request is what it asked for (it counts against budgets until it ends)."""
        now = time.time()
        finished = now if status is Status.REJECTED else None
        async with self._db.execute(
            "INSERT INTO requests (created_at, user_id, guild_id, channel_id, command, prompt, negative, parameters,"
            " seeds, image_count, status, reason, error, finished_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                now,
                user_id,
                guild_id,
                channel_id,
                command,
                prompt,
                negative,
                json.dumps(dict(parameters)),
                json.dumps(list(seeds)),
                image_count,
                status,
                reason,
                error,
                finished,
            ),
        ) as cursor:
            row_id = cursor.lastrowid
        await self._db.commit()
        return row_id

    async def mark_running(self, row_id: int) -> None:
        await self._db.execute("UPDATE requests SET status = 'running' WHERE id = ? AND status = 'queued'", (row_id,))
        await self._db.commit()

    async def finish(
        self,
        row_id: int,
        status: Status,
        *,
        image_count: int = 0,
        queue_wait: float | None = None,
        generation_time: float | None = None,
        reason: str | None = None,
        error: str | None = None,
    ) -> None:
        await self._db.execute(
            "UPDATE requests SET status = ?, image_count = ?, queue_wait = ?, generation_time = ?, reason = ?,"
            " error = ?, finished_at = ? WHERE id = ?",
            (status, image_count, queue_wait, generation_time, reason, error, time.time(), row_id),
        )
        await self._db.commit()

    async def images_since(
        self, since: float, *, user_id: int | None = None, guild_id: int | None = None
    ) -> list[tuple[float, int]]:
        """(time, images) of the requests of a user or a guild since `since` that count against a budget: the ones
        made or still on their way (queued, running, done), oldest first."""
        column, value = ("user_id", user_id) if user_id is not None else ("guild_id", guild_id)
        async with self._db.execute(
            f"SELECT created_at, image_count FROM requests WHERE {column} = ? AND created_at >= ?"
            " AND status IN ('queued', 'running', 'done') AND image_count > 0 ORDER BY created_at",
            (value, since),
        ) as cursor:
            return [(created_at, images) for created_at, images in await cursor.fetchall()]

    async def history(self, user_id: int, limit: int = 10) -> list[HistoryEntry]:
        async with self._db.execute(
            "SELECT id, created_at, command, prompt, negative, parameters, seeds, status FROM requests"
            " WHERE user_id = ? AND status != 'rejected' ORDER BY created_at DESC LIMIT ?",
            (user_id, limit),
        ) as cursor:
            return [_entry(row) for row in await cursor.fetchall()]

    async def entry(self, row_id: int) -> HistoryEntry | None:
        async with self._db.execute(
            "SELECT id, created_at, command, prompt, negative, parameters, seeds, status FROM requests WHERE id = ?",
            (row_id,),
        ) as cursor:
            row = await cursor.fetchone()
        return None if row is None else _entry(row)

    async def stats(self, guild_id: int, now: float | None = None) -> GuildStats:
        now = time.time() if now is None else now
        week, today = now - 7 * DAY, now - DAY
        images = """SELECT COALESCE(SUM(image_count), 0) FROM requests
                    WHERE guild_id = ? AND created_at >= ? AND status = 'done'"""
        images_today = await self._scalar(images, (guild_id, today))
        images_week = await self._scalar(images, (guild_id, week))
        async with self._db.execute(
            "SELECT user_id, SUM(image_count) AS images FROM requests"
            " WHERE guild_id = ? AND created_at >= ? AND status = 'done'"
            " GROUP BY user_id ORDER BY images DESC LIMIT 5",
            (guild_id, week),
        ) as cursor:
            top_users = [(user, count) for user, count in await cursor.fetchall()]
        async with self._db.execute(
            "SELECT reason, COUNT(*) FROM requests WHERE guild_id = ? AND created_at >= ? AND status = 'rejected'"
            " GROUP BY reason ORDER BY COUNT(*) DESC",
            (guild_id, week),
        ) as cursor:
            rejections = [(reason or "unknown", count) for reason, count in await cursor.fetchall()]
        return GuildStats(
            images_today=images_today,
            images_week=images_week,
            top_users=top_users,
            wait_p50=await self._percentile("queue_wait", guild_id, week, 0.50),
            wait_p95=await self._percentile("queue_wait", guild_id, week, 0.95),
            generation_p50=await self._percentile("generation_time", guild_id, week, 0.50),
            generation_p95=await self._percentile("generation_time", guild_id, week, 0.95),
            rejections=rejections,
        )

    async def _scalar(self, query: str, parameters: tuple) -> int:
        async with self._db.execute(query, parameters) as cursor:
            (value,) = await cursor.fetchone()
        return value

    async def _percentile(self, column: str, guild_id: int, since: float, fraction: float) -> float | None:
        """Nearest-rank percentile of a duration column over finished jobs (SQLite has no percentile function)."""
        where = f"guild_id = ? AND created_at >= ? AND status = 'done' AND {column} IS NOT NULL"
        count = await self._scalar(f"SELECT COUNT(*) FROM requests WHERE {where}", (guild_id, since))
        if count == 0:
            return None
        rank = max(0, math.ceil(fraction * count) - 1)
        async with self._db.execute(
            f"SELECT {column} FROM requests WHERE {where} ORDER BY {column} LIMIT 1 OFFSET ?",
            (guild_id, since, min(rank, count - 1)),
        ) as cursor:
            (value,) = await cursor.fetchone()
        return value


def _entry(row: tuple) -> HistoryEntry:
    row_id, created_at, command, prompt, negative, parameters, seeds, status = row
    return HistoryEntry(
        id=row_id,
        created_at=created_at,
        command=command,
        prompt=prompt,
        negative=negative,
        parameters=json.loads(parameters),
        seeds=json.loads(seeds or "[]"),
        status=Status(status),
    )
