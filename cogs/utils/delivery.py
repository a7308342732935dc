"""Deliver a finished job: through the interaction while its token lives, else as a channel message.

An interaction token is valid for 15 minutes; a job that waited longer (or whose token Discord no longer
accepts) is posted to the channel with a mention, so nothing finished is ever dropped. Files are rebuilt for
each attempt because a `discord.File` can be sent only once.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import discord

from bot.engine.images import fit_upload_limit
from bot.tree import send_ephemeral

log = logging.getLogger(__name__)

DEAD_TOKEN_CODES = {50027, 10015, 10062}  # invalid webhook token, unknown webhook, unknown interaction
DEFAULT_UPLOAD_LIMIT = 10 * 1024 * 1024
TOKEN_LIFETIME = 15 * 60 - 10  # seconds; a little margin for the request itself


class SpecFile(discord.File):
    """A `discord.File` whose attachment id is a string, as the API schema types snowflakes."""

    def to_dict(self, index: int) -> dict:
        payload = super().to_dict(index)
        payload["id"] = str(index)
        return payload


async def prepare_files(
    pngs: Sequence[bytes], limit: int | None, *, spoiler: bool = False
) -> tuple[list[tuple[str, bytes]], str | None]:
    """(filename, bytes) pairs within the upload limit, and a note when some had to become JPEG."""
    fitted = await asyncio.gather(
        *(asyncio.to_thread(fit_upload_limit, png, limit or DEFAULT_UPLOAD_LIMIT) for png in pngs)
    )
    prefix = "SPOILER_" if spoiler else ""  # Discord blurs attachments named so until clicked
    files = [(f"{prefix}image-{index + 1}.{extension}", data) for index, (extension, data) in enumerate(fitted)]
    converted = any(extension != "png" for extension, _ in fitted)
    return files, "Sent as JPEG to fit this server's upload limit." if converted else None


def as_discord_files(files: Sequence[tuple[str, bytes]]) -> list[discord.File]:
    return [SpecFile(io.BytesIO(data), filename=name) for name, data in files]


@dataclass
class ReplyTarget:
    """Where a job's outcome goes: its interaction (live, or rebuilt from the database after a restart) and,
    once the token is dead, its channel."""

    client: discord.Client
    user_id: int
    channel_id: int
    application_id: int
    token: str
    created_at: float  # unix seconds
    message_id: int | None  # the status message, when known
    interaction: discord.Interaction | None = None  # present for live requests

    @classmethod
    def live(cls, interaction: discord.Interaction, message_id: int | None) -> ReplyTarget:
        return cls(
            client=interaction.client,
            user_id=interaction.user.id,
            channel_id=interaction.channel_id or 0,
            application_id=interaction.application_id,
            token=interaction.token,
            created_at=interaction.created_at.timestamp(),
            message_id=message_id,
            interaction=interaction,
        )

    @property
    def token_alive(self) -> bool:
        return time.time() < self.created_at + TOKEN_LIFETIME

    def _webhook(self) -> discord.Webhook:
        """The interaction's followup webhook, as `Interaction.followup` makes it. An application webhook (type 3):
        only those may send ephemeral messages, and `Webhook.partial` makes an incoming one, with which
        discord.py refused to tell a resumed job's requester that it failed."""
        data = {"id": self.application_id, "type": 3, "token": self.token}
        return discord.Webhook.from_state(data, self.client._connection)  # type: ignore[arg-type]

    async def edit(self, **message: Any) -> None:
        if self.interaction is not None:
            await self.interaction.edit_original_response(**message)
        elif self.message_id is not None:
            await self._webhook().edit_message(self.message_id, **message)
        else:
            await self._webhook().send(wait=True, **message)

    async def ephemeral(self, text: str) -> None:
        if self.interaction is not None:
            await send_ephemeral(self.interaction, text)
            return
        if self.message_id is not None:
            with contextlib.suppress(discord.NotFound):
                await self._webhook().delete_message(self.message_id)
        await self._webhook().send(text, ephemeral=True)

    async def post_to_channel(self, content: str | None, **message: Any) -> None:
        """A channel message that mentions the requester (and no one else), for when the token is dead."""
        channel = self.client.get_partial_messageable(self.channel_id)
        await channel.send(
            content=f"<@{self.user_id}> {content or ''}".strip(),
            # Our content holds only this mention and our own notices (prompts live in the embed, which never
            # pings), so "users" can be allowed by type; listing ids would send them as integers, not strings.
            allowed_mentions=discord.AllowedMentions(users=True, everyone=False, roles=False),
            **message,
        )


async def deliver(
    target: ReplyTarget,
    *,
    content: str | None,
    embed: discord.Embed,
    view: discord.ui.View,
    files: Sequence[tuple[str, bytes]],
) -> None:
    """Replace the status message with the result, or post it to the channel if that is no longer possible."""
    if target.token_alive:
        try:
            await target.edit(content=content, embed=embed, view=view, attachments=as_discord_files(files))
            return
        except discord.HTTPException as exc:
            if exc.code not in DEAD_TOKEN_CODES and exc.code != 10008:  # 10008: the status message was deleted
                raise
            log.info("the interaction of user %s can no longer be edited (%s)", target.user_id, exc.code)
    await target.post_to_channel(content, embed=embed, view=view, files=as_discord_files(files))


async def deliver_error(target: ReplyTarget, message: str) -> None:
    """Tell the requester their job did not succeed: ephemerally while the token lives, else in the channel."""
    if target.token_alive:
        try:
            await target.ephemeral(message)
            return
        except discord.HTTPException as exc:
            if exc.code not in DEAD_TOKEN_CODES:
                raise
    await target.post_to_channel(message)
