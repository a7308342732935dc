"""/history (your recent generations, with Run again), /queue (how busy the GPUs are) and /stats (the server's
usage, for its managers)."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

from bot.engine.requests import Kind
from bot.errors import InvalidRequest, NotAllowed
from bot.storage.usage import GuildStats, HistoryEntry
from cogs.utils.buttons import guarded
from cogs.utils.results import COLOUR

if TYPE_CHECKING:
    from bot.app import LcmBot
    from cogs.generate import GenerateCog

HISTORY_LENGTH = 10
RUN_AGAIN_BUTTONS = 5
PROMPT_PREVIEW = 80


class UsageCog(commands.Cog):
    def __init__(self, bot: LcmBot) -> None:
        self.bot = bot

    @app_commands.command(name="history")
    @app_commands.allowed_contexts(guilds=True, dms=True, private_channels=False)
    async def history(self, interaction: discord.Interaction) -> None:
        """Your recent generations, with a button to run one again."""
        entries = await self.bot.usage.history(interaction.user.id, HISTORY_LENGTH)
        if not entries:
            await interaction.response.send_message("You have not generated anything yet.", ephemeral=True)
            return
        view = discord.ui.View(timeout=None)
        for number, entry in enumerate(entries, start=1):
            if entry.command == Kind.IMAGINE and len(view.children) < RUN_AGAIN_BUTTONS:
                view.add_item(RunAgainButton(entry.id, number))
        await interaction.response.send_message(embed=history_embed(entries), view=view, ephemeral=True)

    @app_commands.command(name="stats")
    @app_commands.guild_only()
    @app_commands.default_permissions(manage_guild=True)
    async def stats(self, interaction: discord.Interaction) -> None:
        """This server's image generation over the last day and week."""
        if not interaction.permissions.manage_guild:  # default_permissions is only a default owners can change
            raise NotAllowed("Only members who can manage this server can see its statistics.")
        stats = await self.bot.usage.stats(interaction.guild_id or 0)
        executor = self.bot.engine.executor
        embed = stats_embed(stats, queue_depth=executor.queue_depth, workers=executor.workers_alive)
        await interaction.response.send_message(embed=embed, ephemeral=True)

    @app_commands.command(name="queue")
    @app_commands.allowed_contexts(guilds=True, dms=True, private_channels=False)
    async def queue(self, interaction: discord.Interaction) -> None:
        """How many requests are waiting, how many GPU workers serve them, and how many of them are yours."""
        executor = self.bot.engine.executor
        await interaction.response.send_message(
            queue_text(executor.queue_depth, executor.workers_alive, executor.pending_for(interaction.user.id)),
            ephemeral=True,
        )

    async def run_again(self, interaction: discord.Interaction, entry_id: int) -> None:
        entry = await self.bot.usage.entry(entry_id)
        if entry is None or entry.command != Kind.IMAGINE:
            raise InvalidRequest("That generation can't be run again.")
        generate: GenerateCog = self.bot.get_cog("GenerateCog")  # type: ignore[assignment]
        parameters = entry.parameters
        values = dict(prompt=entry.prompt, negative=entry.negative, aspect=parameters.get("aspect"))
        values |= dict(
            steps=parameters.get("steps"), guidance=parameters.get("guidance"), count=parameters.get("count")
        )
        values["style"] = parameters.get("style")
        await generate.flow.run_job(interaction, Kind.IMAGINE, values)


class RunAgainButton(discord.ui.DynamicItem[discord.ui.Button], template=r"lcm:again:(?P<entry>[0-9]+):(?P<n>[0-9]+)"):
    def __init__(self, entry_id: int, number: int) -> None:
        self.entry_id = entry_id
        super().__init__(discord.ui.Button(label=f"Run #{number} again", custom_id=f"lcm:again:{entry_id}:{number}"))

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction, item: discord.ui.Item, match: re.Match
    ) -> RunAgainButton:
        return cls(int(match["entry"]), int(match["n"]))

    @guarded
    async def callback(self, interaction: discord.Interaction) -> None:
        cog: UsageCog = interaction.client.get_cog("UsageCog")  # type: ignore[assignment]
        await cog.run_again(interaction, self.entry_id)


def history_embed(entries: list[HistoryEntry]) -> discord.Embed:
    lines = []
    for number, entry in enumerate(entries, start=1):
        prompt = entry.prompt if len(entry.prompt) <= PROMPT_PREVIEW else entry.prompt[: PROMPT_PREVIEW - 1] + "…"
        prompt = discord.utils.escape_markdown(prompt)
        lines.append(f"**{number}.** /{entry.command} · {entry.status} · <t:{int(entry.created_at)}:R>\n{prompt}")
    return discord.Embed(title="Your recent generations", description="\n".join(lines), colour=COLOUR)


def queue_text(waiting: int, workers: int, yours: int) -> str:
    lines = [f"{waiting} {_plural(waiting, 'request')} waiting; {_workers(workers)}."]
    if yours:
        lines.append(f"{yours} of the requests waiting or running are yours.")
    return "\n".join(lines)


def stats_embed(stats: GuildStats, *, queue_depth: int, workers: int) -> discord.Embed:
    embed = discord.Embed(title="Image generation on this server", colour=COLOUR)
    embed.add_field(name="Images", value=f"{stats.images_today} today, {stats.images_week} in 7 days")
    embed.add_field(name="Queue now", value=f"{queue_depth} waiting; {_workers(workers)}")
    top = "\n".join(f"<@{user}>: {images}" for user, images in stats.top_users) or "nobody yet"
    embed.add_field(name="Top users (7 days)", value=top, inline=False)
    embed.add_field(name="Wait p50 / p95", value=f"{_seconds(stats.wait_p50)} / {_seconds(stats.wait_p95)}")
    embed.add_field(
        name="Generation p50 / p95", value=f"{_seconds(stats.generation_p50)} / {_seconds(stats.generation_p95)}"
    )
    refused = "\n".join(f"{reason}: {count}" for reason, count in stats.rejections) or "none"
    embed.add_field(name="Refused requests (7 days)", value=refused, inline=False)
    return embed


def _workers(count: int) -> str:
    return f"{count} GPU {_plural(count, 'worker')} online" if count else "no GPU worker online right now"


def _plural(count: int, noun: str) -> str:
    return noun if count == 1 else f"{noun}s"


def _seconds(value: float | None) -> str:
    return "–" if value is None else f"{value:.1f} s"


async def setup(bot: LcmBot) -> None:
    await bot.add_cog(UsageCog(bot))
