"""/settings: a server's own rules for image generation, for members who can manage the server."""

from __future__ import annotations

from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

from bot.errors import InvalidRequest
from bot.storage.guilds import GuildSettings
from cogs.utils.results import COLOUR

if TYPE_CHECKING:
    from bot.app import LcmBot

BLOCKLIST_MAX = 200
TERM_MAX_CHARS = 100


@app_commands.guild_only()
@app_commands.default_permissions(manage_guild=True)
class GuildSettingsCog(commands.GroupCog, group_name="settings", group_description="This server's image rules"):
    def __init__(self, bot: LcmBot) -> None:
        self.bot = bot
        super().__init__()

    async def interaction_check(self, interaction: discord.Interaction) -> bool:
        # default_permissions is only a default that server owners can change; this check is the rule.
        if not interaction.permissions.manage_guild:
            raise app_commands.CheckFailure("Only members who can manage this server can change its image settings.")
        return True

    @app_commands.command(name="show")
    async def show(self, interaction: discord.Interaction) -> None:
        """Show this server's image rules."""
        await self._reply(interaction, await self.bot.guild_settings.get(interaction.guild_id))

    @app_commands.command(name="images")
    @app_commands.describe(
        default_count="Images per /imagine when the member does not say",
        user_per_hour="Images one member may ask for per hour (0: no limit)",
        guild_per_hour="Images the whole server may ask for per hour (0: no limit)",
    )
    async def images(
        self,
        interaction: discord.Interaction,
        default_count: app_commands.Range[int, 1, 4] | None = None,
        user_per_hour: app_commands.Range[int, 0, 100_000] | None = None,
        guild_per_hour: app_commands.Range[int, 0, 1_000_000] | None = None,
    ) -> None:
        """Default image count and hourly budgets."""
        changes = {}
        if default_count is not None:
            changes["default_count"] = _bounded("default_count", default_count, 1, 4)
        if user_per_hour is not None:
            changes["user_images_per_hour"] = _bounded("user_per_hour", user_per_hour, 0, 100_000)
        if guild_per_hour is not None:
            changes["guild_images_per_hour"] = _bounded("guild_per_hour", guild_per_hour, 0, 1_000_000)
        await self._update(interaction, **changes)

    @app_commands.command(name="channel")
    @app_commands.describe(channel="A channel of this server", allowed="Whether image commands work there")
    async def channel(self, interaction: discord.Interaction, channel: discord.TextChannel, allowed: bool) -> None:
        """Limit image commands to some channels (none listed: every channel)."""
        current = await self.bot.guild_settings.get(interaction.guild_id)
        channels = [item for item in current.allowed_channels if item != channel.id]
        if allowed:
            channels.append(channel.id)
        await self._update(interaction, allowed_channels=tuple(channels))

    @app_commands.command(name="blocklist")
    @app_commands.describe(add="A word or phrase to refuse in prompts (* matches any letters)", remove="One to drop")
    async def blocklist(
        self,
        interaction: discord.Interaction,
        add: app_commands.Range[str, 1, TERM_MAX_CHARS] | None = None,
        remove: app_commands.Range[str, 1, TERM_MAX_CHARS] | None = None,
    ) -> None:
        """Words and phrases refused in prompts."""
        terms = list((await self.bot.guild_settings.get(interaction.guild_id)).blocklist)
        if add is not None:
            term = add.strip()
            if not term.strip("*") or len(term) > TERM_MAX_CHARS:
                raise InvalidRequest(f"A blocked term is 1 to {TERM_MAX_CHARS} characters, not only `*`.")
            if len(terms) >= BLOCKLIST_MAX:
                raise InvalidRequest(f"The blocklist holds at most {BLOCKLIST_MAX} terms.")
            if term.lower() not in (existing.lower() for existing in terms):
                terms.append(term)
        if remove is not None:
            terms = [existing for existing in terms if existing.lower() != remove.strip().lower()]
        await self._update(interaction, blocklist=tuple(terms))

    @app_commands.command(name="gallery")
    @app_commands.describe(channel="Where shared prompts are posted (leave empty to stop posting)")
    async def gallery(self, interaction: discord.Interaction, channel: discord.TextChannel | None = None) -> None:
        """The channel where members' shared prompts are posted."""
        await self._update(interaction, gallery_channel=None if channel is None else channel.id)

    @app_commands.command(name="spoilers")
    @app_commands.describe(enabled="Blur results posted in channels that are not age-restricted")
    async def spoilers(self, interaction: discord.Interaction, enabled: bool) -> None:
        """Post results as spoilers outside age-restricted channels."""
        await self._update(interaction, spoilers_outside_nsfw=enabled)

    async def _update(self, interaction: discord.Interaction, **changes: object) -> None:
        updated = await self.bot.guild_settings.update(interaction.guild_id or 0, **changes)
        await self._reply(interaction, updated)

    async def _reply(self, interaction: discord.Interaction, settings: GuildSettings) -> None:
        await interaction.response.send_message(embed=settings_embed(settings, self.bot), ephemeral=True)


def settings_embed(settings: GuildSettings, bot: LcmBot) -> discord.Embed:
    defaults = bot.settings
    user = settings.user_images_per_hour
    guild = settings.guild_images_per_hour
    embed = discord.Embed(title="Image rules on this server", colour=COLOUR)
    embed.add_field(name="Default count", value=str(settings.default_count))
    embed.add_field(name="Per member per hour", value=_budget(user, defaults.user_images_per_hour))
    embed.add_field(name="Server per hour", value=_budget(guild, defaults.guild_images_per_hour))
    channels = ", ".join(f"<#{channel}>" for channel in settings.allowed_channels) or "every channel"
    embed.add_field(name="Channels", value=channels, inline=False)
    blocked = ", ".join(f"`{term}`" for term in settings.blocklist) or "nothing"
    embed.add_field(name="Blocked in prompts", value=blocked[:1024], inline=False)
    embed.add_field(
        name="Spoilers outside age-restricted channels", value="on" if settings.spoilers_outside_nsfw else "off"
    )
    gallery = f"<#{settings.gallery_channel}>" if settings.gallery_channel else "none"
    embed.add_field(name="Gallery", value=gallery)
    return embed


def _budget(override: int | None, default: int) -> str:
    value = default if override is None else override
    text = "no limit" if value == 0 else str(value)
    return text if override is not None else f"{text} (bot default)"


def _bounded(name: str, value: int, low: int, high: int) -> int:
    """Discord does not enforce option ranges on the bot's side."""
    if not low <= value <= high:
        raise InvalidRequest(f"`{name}` must be between {low} and {high}.")
    return value


async def setup(bot: LcmBot) -> None:
    await bot.add_cog(GuildSettingsCog(bot))
