"""Pending jobs: the part of a queued request that lets it run again after a crash and still reach its author."""

from __future__ import annotations

import json
from dataclasses import dataclass

from bot.storage.database import Database


@dataclass(frozen=True)
class PendingJob:
    request_id: int
    user_id: int
    guild_id: int | None
    channel_id: int | None
    command: str
    prompt: str
    negative: str | None
    parameters: dict[str, object]
    seeds: list[int]
    requester_name: str
    application_id: int
    interaction_token: str
    interaction_created_at: float
    response_message_id: int | None
    init_image: bytes | None
    mask: bytes | None


class PendingJobs:
    def __init__(self, database: Database) -> None:
        self._db = database.connection

    async def add(
        self,
        request_id: int,
        *,
        requester_name: str,
        application_id: int,
        interaction_token: str,
        interaction_created_at: float,
        response_message_id: int | None,
        init_image: bytes | None,
        mask: bytes | None,
    ) -> None:
        await self._db.execute(
            "INSERT INTO pending_jobs (request_id, requester_name, application_id, interaction_token,"
            " interaction_created_at, response_message_id, init_image, mask) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (request_id, requester_name, application_id, interaction_token, interaction_created_at,
             response_message_id, init_image, mask),
        )  # fmt: skip
        await self._db.commit()

    async def remove(self, request_id: int) -> None:
        """Forget the job's inputs and its interaction token: it has been delivered or reported."""
        await self._db.execute("DELETE FROM pending_jobs WHERE request_id = ?", (request_id,))
        await self._db.commit()

    async def forget_ended(self) -> int:
        """Forget the tokens and inputs of jobs recorded as ended, and say how many. A process killed after
        recording a job's end and before `remove` leaves them behind, and nothing would ever run it again."""
        cursor = await self._db.execute(
            "DELETE FROM pending_jobs WHERE request_id IN"
            " (SELECT id FROM requests WHERE status NOT IN ('queued', 'running'))"
        )
        await self._db.commit()
        return cursor.rowcount

    async def unkept(self) -> list[int]:
        """The requests still recorded as queued or running whose job was never kept (`add`). A process killed
        between recording a request and keeping its job leaves them: without a token, nothing can run them or
        answer their author."""
        async with self._db.execute(
            "SELECT id FROM requests WHERE status IN ('queued', 'running')"
            " AND id NOT IN (SELECT request_id FROM pending_jobs) ORDER BY id"
        ) as cursor:
            return [row_id for (row_id,) in await cursor.fetchall()]

    async def unfinished(self) -> list[PendingJob]:
        """Jobs that were queued or running when the process stopped, oldest first."""
        async with self._db.execute(
            "SELECT r.id, r.user_id, r.guild_id, r.channel_id, r.command, r.prompt, r.negative, r.parameters,"
            " r.seeds, p.requester_name, p.application_id, p.interaction_token, p.interaction_created_at,"
            " p.response_message_id, p.init_image, p.mask"
            " FROM requests r JOIN pending_jobs p ON p.request_id = r.id"
            " WHERE r.status IN ('queued', 'running') ORDER BY r.created_at"
        ) as cursor:
            rows = await cursor.fetchall()
        return [
            PendingJob(
                *row[:7],
                parameters=json.loads(row[7]),
                seeds=json.loads(row[8]),
                requester_name=row[9],
                application_id=row[10],
                interaction_token=row[11],
                interaction_created_at=row[12],
                response_message_id=row[13],
                init_image=row[14],
                mask=row[15],
            )
            for row in rows
        ]
