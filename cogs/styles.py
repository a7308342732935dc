"""/styles (the presets this bot offers, with an example image each when one is configured) and the `style`
option's autocomplete, shared by /imagine, /remix and /inpaint."""

from __future__ import annotations

import asyncio
import io
from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

from bot.styles import Style
from cogs.utils.delivery import SpecFile
from cogs.utils.results import COLOUR

if TYPE_CHECKING:
    from bot.app import LcmBot

MAX_EMBEDS = 10  # Discord's limit per message


async def style_choices(interaction: discord.Interaction, current: str) -> list[app_commands.Choice[str]]:
    book = interaction.client.engine.styles  # type: ignore[attr-defined]
    return [
        app_commands.Choice(name=f"{style.name}: {style.description}"[:100], value=style.name)
        for style in book.matching(current)
    ]


class StylesCog(commands.Cog):
    def __init__(self, bot: LcmBot) -> None:
        self.bot = bot

    @app_commands.command(name="styles")
    @app_commands.allowed_contexts(guilds=True, dms=True, private_channels=False)
    async def styles(self, interaction: discord.Interaction) -> None:
        """The named styles you can pick with the `style` option."""
        book = self.bot.engine.styles
        if not len(book):
            await interaction.response.send_message("This bot has no styles set up.", ephemeral=True)
            return
        embeds, files = [], []
        shown = list(book)[:MAX_EMBEDS]
        for style in shown:
            embed = discord.Embed(title=style.name, description=style.description, colour=COLOUR)
            embed.add_field(name="Prompt", value=style.template.replace("{prompt}", "…"), inline=False)
            example = await _example(style)
            if example is not None:
                name = f"{style.name}{style.example.suffix.lower()}"
                files.append(SpecFile(io.BytesIO(example), filename=name))
                embed.set_thumbnail(url=f"attachment://{name}")
            embeds.append(embed)
        more = len(book) - len(shown)
        content = f"…and {more} more: type in the `style` option to search them all." if more else None
        await interaction.response.send_message(content, embeds=embeds, files=files, ephemeral=True)


async def _example(style: Style) -> bytes | None:
    """The example image's bytes, read off the event loop; a missing file only loses the thumbnail."""
    if style.example is None:
        return None
    try:
        return await asyncio.to_thread(style.example.read_bytes)
    except OSError:
        return None


async def setup(bot: LcmBot) -> None:
    await bot.add_cog(StylesCog(bot))
