"""Attachments from slash commands: refuse obvious misfits before deferring, decode the rest off the loop."""

from __future__ import annotations

import asyncio

import discord

from bot.engine.images import MAX_INPUT_BYTES, MAX_INPUT_PIXELS, MIN_INPUT_SIDE, DecodedImage, decode_image
from bot.errors import InvalidImage


def check_attachment(attachment: discord.Attachment, what: str) -> None:
    """Cheap checks on what Discord says about the file, so that most bad uploads get an answer at once.

    The same limits are enforced again when the bytes are decoded: this metadata is only a hint.
    """
    if attachment.content_type is not None and not attachment.content_type.startswith("image/"):
        raise InvalidImage(f"The {what} must be an image (PNG, JPEG, WebP or GIF), not `{attachment.filename}`.")
    if attachment.size > MAX_INPUT_BYTES:
        raise InvalidImage(
            f"The {what} is {attachment.size / 2**20:.1f} MiB; the limit is {MAX_INPUT_BYTES // 2**20} MiB."
        )
    if attachment.width and attachment.height:
        if attachment.width * attachment.height > MAX_INPUT_PIXELS:
            raise InvalidImage(
                f"The {what} is {attachment.width}x{attachment.height}; the limit is {MAX_INPUT_PIXELS / 1e6:.0f} MP."
            )
        if min(attachment.width, attachment.height) < MIN_INPUT_SIDE:
            raise InvalidImage(f"The {what} is too small; each side must be at least {MIN_INPUT_SIDE} px.")


async def read_bytes(attachment: discord.Attachment, what: str) -> bytes:
    try:
        return await attachment.read()
    except discord.HTTPException:
        raise InvalidImage(f"The {what} could not be downloaded from Discord; please attach it again.") from None


async def read_image(attachment: discord.Attachment, what: str) -> DecodedImage:
    return await asyncio.to_thread(decode_image, await read_bytes(attachment, what), what=what)
