"""The usage-log row of one generation request, written at each of its decision points."""

from __future__ import annotations

from typing import Any

import discord

from bot.engine.executor import JobResult
from bot.engine.requests import GenerationRequest, Kind
from bot.errors import JobCancelled, UserFacingError
from bot.storage.usage import Status, UsageLog


class UsageEntry:
    def __init__(self, log: UsageLog, interaction: discord.Interaction, kind: Kind, values: dict[str, Any]) -> None:
        self._log = log
        self.row: int | None = None
        self._running_recorded = False
        self._base = {
            "user_id": interaction.user.id,
            "guild_id": interaction.guild_id,
            "channel_id": interaction.channel_id,
            "command": str(kind),
            "prompt": str(values.get("prompt") or ""),
            "negative": values.get("negative"),
        }
        # As sent, for refusals; replaced by the validated values once the request is queued.
        self._raw = {key: value for key, value in values.items() if key not in ("prompt", "negative")}

    @classmethod
    def resumed(cls, log: UsageLog, row: int) -> UsageEntry:
        """The entry of a job queued before a restart, to record how it ends."""
        entry = cls.__new__(cls)
        entry._log, entry.row, entry._running_recorded = log, row, False
        return entry

    async def rejected(self, error: UserFacingError) -> None:
        if self.row is None:
            self.row = await self._log.record(
                **self._base, parameters=self._raw, status=Status.REJECTED, reason=error.code, error=error.message
            )
        else:
            await self._log.finish(self.row, Status.REJECTED, reason=error.code, error=error.message)

    async def queued(self, request: GenerationRequest) -> None:
        """Written before the job enters the queue."""
        parameters = {
            "aspect": request.aspect,
            "steps": request.steps,
            "guidance": request.guidance,
            "strength": request.strength,
            "count": request.count,
            "style": request.style,
        }
        self.row = await self._log.record(
            **self._base | {"negative": request.negative},
            parameters=parameters,
            status=Status.QUEUED,
            seeds=request.seeds,
            image_count=request.count,
        )

    async def running(self) -> None:
        if not self._running_recorded:
            self._running_recorded = True
            await self._log.mark_running(self._require_row())

    async def ended(self, error: UserFacingError) -> None:
        status = Status.CANCELLED if isinstance(error, JobCancelled) else Status.FAILED
        await self._log.finish(self._require_row(), status, reason=error.code, error=error.message)

    async def done(self, result: JobResult) -> None:
        await self._log.finish(
            self._require_row(),
            Status.DONE,
            image_count=len(result.images),
            queue_wait=result.queue_wait,
            generation_time=result.generation_time,
        )

    def _require_row(self) -> int:
        if self.row is None:
            raise RuntimeError("the request was never recorded as queued")
        return self.row
