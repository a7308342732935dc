"""The command tree and its one error ladder: every failure becomes a friendly ephemeral message.

Our `UserFacingError`s are shown as written. Anything else is a bug or an outage: it is logged with the
command's options under a short error id, and the user sees only that id. Buttons and modals route their
errors here too (`report_error`), so there is one place that decides what a user sees.
"""

from __future__ import annotations

import contextlib
import logging
import uuid

import discord
from discord import app_commands

from bot.errors import UserFacingError

log = logging.getLogger(__name__)

PUBLIC_DEFER = "public_defer"  # Interaction.extras key: the response is a public "thinking" message


class BotTree(app_commands.CommandTree):
    async def on_error(self, interaction: discord.Interaction, error: app_commands.AppCommandError) -> None:
        await report_error(interaction, error)


async def report_error(interaction: discord.Interaction, error: BaseException) -> None:
    original = getattr(error, "original", error)  # CommandInvokeError wraps what the command raised
    if isinstance(original, UserFacingError):
        message = original.message
    elif isinstance(original, app_commands.TransformerError | app_commands.CheckFailure):
        message = str(original)
    else:
        error_id = uuid.uuid4().hex[:8]
        command = interaction.command.qualified_name if interaction.command else interaction.type.name
        # The raw interaction data holds the options (or a button's custom_id) exactly as the user sent them.
        log.error(
            "interaction %s failed (error id %s), data %r", command, error_id, interaction.data, exc_info=original
        )
        message = f"Something went wrong on our side (error id `{error_id}`). Please try again."
    try:
        await send_ephemeral(interaction, message)
    except discord.HTTPException:
        log.warning("could not tell user %s about an error: %s", interaction.user.id, message)


async def send_ephemeral(interaction: discord.Interaction, message: str) -> None:
    """An ephemeral reply at any stage of the interaction.

    A followup sent while a public "thinking" message is showing would replace it and stay public, so that
    message is deleted first and the reply goes out as a fresh ephemeral followup.
    """
    if not interaction.response.is_done():
        await interaction.response.send_message(message, ephemeral=True)
        return
    if interaction.extras.pop(PUBLIC_DEFER, False):
        with contextlib.suppress(discord.NotFound):
            await interaction.delete_original_response()
    await interaction.followup.send(message, ephemeral=True)
