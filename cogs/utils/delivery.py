"""Deliver a finished job: through the interaction while its token lives, else as a channel message.

An interaction token is valid for 15 minutes; a job that waited longer (or whose token Discord no longer
accepts) is posted to the channel with a mention, so nothing finished is ever dropped. Files are rebuilt for
each attempt because a `discord.File` can be sent only once.
"""

from __future__ import annotations

import asyncio
import io
import logging
from collections.abc import Sequence

import discord

from bot.engine.images import fit_upload_limit
from bot.tree import send_ephemeral

log = logging.getLogger(__name__)

DEAD_TOKEN_CODES = {50027, 10015, 10062}  # invalid webhook token, unknown webhook, unknown interaction
DEFAULT_UPLOAD_LIMIT = 10 * 1024 * 1024


class SpecFile(discord.File):
    """A `discord.File` whose attachment id is a string, as the API schema types snowflakes."""

    def to_dict(self, index: int) -> dict:
        payload = super().to_dict(index)
        payload["id"] = str(index)
        return payload


async def prepare_files(pngs: Sequence[bytes], limit: int | None) -> tuple[list[tuple[str, bytes]], str | None]:
    """(filename, bytes) pairs within the upload limit, and a note when some had to become JPEG."""
    fitted = await asyncio.gather(
        *(asyncio.to_thread(fit_upload_limit, png, limit or DEFAULT_UPLOAD_LIMIT) for png in pngs)
    )
    files = [(f"image-{index + 1}.{extension}", data) for index, (extension, data) in enumerate(fitted)]
    converted = any(extension != "png" for extension, _ in fitted)
    return files, "Sent as JPEG to fit this server's upload limit." if converted else None


def as_discord_files(files: Sequence[tuple[str, bytes]]) -> list[discord.File]:
    return [SpecFile(io.BytesIO(data), filename=name) for name, data in files]


async def deliver(
    interaction: discord.Interaction,
    *,
    content: str | None,
    embed: discord.Embed,
    view: discord.ui.View,
    files: Sequence[tuple[str, bytes]],
) -> None:
    """Replace the interaction's status message with the result, or post it to the channel if that fails."""
    if not interaction.is_expired():
        try:
            await interaction.edit_original_response(
                content=content, embed=embed, view=view, attachments=as_discord_files(files)
            )
            return
        except discord.HTTPException as exc:
            if exc.code not in DEAD_TOKEN_CODES and exc.code != 10008:  # 10008: the status message was deleted
                raise
            log.info("interaction %s can no longer be edited (%s); posting to the channel", interaction.id, exc.code)
    await post_to_channel(interaction, content, embed=embed, view=view, files=as_discord_files(files))


async def deliver_error(interaction: discord.Interaction, message: str) -> None:
    """Tell the requester their job did not succeed: ephemerally while the token lives, else in the channel."""
    if not interaction.is_expired():
        try:
            await send_ephemeral(interaction, message)
            return
        except discord.HTTPException as exc:
            if exc.code not in DEAD_TOKEN_CODES:
                raise
    await post_to_channel(interaction, message)


async def post_to_channel(interaction: discord.Interaction, content: str | None, **message: object) -> None:
    """A channel message that mentions the requester (and no one else), for when the token is dead."""
    channel = interaction.client.get_partial_messageable(interaction.channel_id or 0)
    await channel.send(
        content=f"{interaction.user.mention} {content or ''}".strip(),
        # Our content holds only this mention and our own notices (prompts live in the embed, which never pings),
        # so "users" can be allowed by type; listing ids would send them as integers, not the API's strings.
        allowed_mentions=discord.AllowedMentions(users=True, everyone=False, roles=False),
        **message,
    )
