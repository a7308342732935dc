"""Community prompts: Share a result with the server, browse and search what others shared, like, reuse.

A shared prompt keeps its own thumbnail in the database, so the gallery keeps working after Discord's signed
attachment URLs expire. Browsing is one prompt per (ephemeral) page; the page state (sort, position, whose)
is in the buttons' custom_ids and the search text in the embed, so paging works after a restart too.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import re
from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

from bot.engine.images import thumbnail_jpeg
from bot.engine.requests import Kind
from bot.errors import InvalidRequest, NotAllowed
from bot.storage.prompts import SharedPrompt, Sort
from cogs.utils.attachments import read_bytes
from cogs.utils.buttons import guarded
from cogs.utils.delivery import SpecFile
from cogs.utils.results import COLOUR, ResultState

if TYPE_CHECKING:
    from bot.app import LcmBot
    from cogs.generate import GenerateCog

THUMBNAIL_NAME = "thumbnail.jpg"
SEARCH_PREFIX = "Search: "
QUERY_MAX = 100


@app_commands.guild_only()
class PromptsCog(commands.GroupCog, group_name="prompts", group_description="Prompts shared on this server"):
    def __init__(self, bot: LcmBot) -> None:
        self.bot = bot
        super().__init__()

    @app_commands.command(name="browse")
    @app_commands.describe(sort="Most liked or newest first", query="Only prompts containing this text")
    async def browse(
        self,
        interaction: discord.Interaction,
        sort: Sort = Sort.TOP,
        query: app_commands.Range[str, 1, QUERY_MAX] | None = None,
    ) -> None:
        """Page through the prompts members shared."""
        await self.show_page(interaction, sort=Sort(sort), offset=0, query=(query or "")[:QUERY_MAX], mine=False)

    @app_commands.command(name="mine")
    async def mine(self, interaction: discord.Interaction) -> None:
        """Page through the prompts you shared."""
        await self.show_page(interaction, sort=Sort.NEW, offset=0, query="", mine=True)

    # -- what the buttons do ---------------------------------------------------------------------------------

    async def share(self, interaction: discord.Interaction) -> None:
        if interaction.guild_id is None or interaction.message is None:
            raise InvalidRequest("Prompts are shared with a server; this result is not in one.")
        try:
            state = ResultState.from_embed(interaction.message.embeds[0])
        except (IndexError, KeyError, ValueError):
            raise InvalidRequest("That message holds no result to share.") from None
        if not interaction.message.attachments:
            raise InvalidRequest("That result has no image left to share.")
        await interaction.response.defer(ephemeral=True, thinking=True)
        image = await read_bytes(interaction.message.attachments[0], "image")
        thumbnail = await asyncio.to_thread(thumbnail_jpeg, image)
        prompt_id = await self.bot.prompts.share(
            guild_id=interaction.guild_id,
            author_id=interaction.user.id,
            author_name=interaction.user.display_name,
            prompt=state.prompt,
            negative=state.negative,
            parameters={"aspect": state.aspect, "steps": state.steps, "guidance": state.guidance},
            seed=state.seeds[0],
            thumbnail=thumbnail,
        )
        shared = await self.bot.prompts.get(prompt_id)
        rules = await self.bot.guild_settings.get(interaction.guild_id)
        where = "Shared. Members can find it with `/prompts browse`."
        if rules.gallery_channel and shared is not None:
            embed, file, view = prompt_card(shared)
            gallery = self.bot.get_partial_messageable(rules.gallery_channel)
            try:
                posted = await gallery.send(embed=embed, file=file, view=view)
                await self.bot.prompts.set_gallery_message(prompt_id, rules.gallery_channel, posted.id)
                where = f"Shared in <#{rules.gallery_channel}>."
            except discord.HTTPException:
                where += " (It could not be posted in the gallery channel: check the bot's permissions there.)"
        await interaction.followup.send(where, ephemeral=True)

    async def like(self, interaction: discord.Interaction, prompt_id: int) -> None:
        shared = await self._shared(interaction, prompt_id)
        liked, likes = await self.bot.prompts.toggle_like(shared.id, interaction.user.id)
        text = f"You like this prompt ({likes} likes)." if liked else f"Like taken back ({likes} likes)."
        await interaction.response.send_message(text, ephemeral=True)

    async def use(self, interaction: discord.Interaction, prompt_id: int) -> None:
        """Run the shared prompt for whoever pressed, under their own limits, crediting its author."""
        shared = await self._shared(interaction, prompt_id)
        parameters = shared.parameters
        values = dict(prompt=shared.prompt, negative=shared.negative, aspect=parameters.get("aspect"))
        values |= dict(steps=parameters.get("steps"), guidance=parameters.get("guidance"))
        generate: GenerateCog = self.bot.get_cog("GenerateCog")  # type: ignore[assignment]
        await generate.flow.run_job(interaction, Kind.IMAGINE, values, note=f"Prompt shared by {shared.author_name}.")

    async def unshare(self, interaction: discord.Interaction, prompt_id: int) -> None:
        shared = await self._shared(interaction, prompt_id)
        if interaction.user.id != shared.author_id and not interaction.permissions.manage_messages:
            raise NotAllowed("Only the member who shared this prompt, or a moderator, can unshare it.")
        await self.bot.prompts.unshare(shared.id)
        if shared.gallery_channel_id and shared.gallery_message_id:
            gallery = self.bot.get_partial_messageable(shared.gallery_channel_id)
            # Already deleted, or no permission: the prompt is unshared either way.
            with contextlib.suppress(discord.HTTPException):
                await gallery.get_partial_message(shared.gallery_message_id).delete()
        await interaction.response.send_message("Unshared.", ephemeral=True)

    async def show_page(
        self, interaction: discord.Interaction, *, sort: Sort, offset: int, query: str, mine: bool
    ) -> None:
        """Show one shared prompt; a first page is a new ephemeral message, later pages replace it."""
        shared, total = await self.bot.prompts.page(
            interaction.guild_id or 0,
            sort=sort,
            offset=max(0, offset),
            query=query,
            author_id=interaction.user.id if mine else None,
        )
        if shared is None:
            text = "Nothing shared yet." if not query else f"No shared prompt contains “{query}”."
            if interaction.type is discord.InteractionType.component:
                await interaction.response.edit_message(content=text, embed=None, attachments=[], view=None)
            else:
                await interaction.response.send_message(text, ephemeral=True)
            return
        embed, file, view = prompt_card(shared)
        embed.title = f"{'Your' if mine else 'Shared'} prompt {offset + 1} of {total}"
        if query:
            embed.set_footer(text=SEARCH_PREFIX + query)
        if offset > 0:
            view.add_item(PageButton(sort, offset - 1, mine, "Previous"))
        if offset + 1 < total:
            view.add_item(PageButton(sort, offset + 1, mine, "Next"))
        if interaction.type is discord.InteractionType.component:
            await interaction.response.edit_message(embed=embed, attachments=[file], view=view)
        else:
            await interaction.response.send_message(embed=embed, file=file, view=view, ephemeral=True)

    async def _shared(self, interaction: discord.Interaction, prompt_id: int) -> SharedPrompt:
        shared = await self.bot.prompts.get(prompt_id)
        if shared is None or shared.guild_id != interaction.guild_id:
            raise InvalidRequest("That prompt is no longer shared.")
        return shared


def prompt_card(shared: SharedPrompt) -> tuple[discord.Embed, discord.File, discord.ui.View]:
    """The embed, thumbnail file and buttons that present a shared prompt (in the gallery and when browsing)."""
    embed = discord.Embed(title="Shared prompt", description=shared.prompt, colour=COLOUR)
    embed.set_thumbnail(url=f"attachment://{THUMBNAIL_NAME}")
    embed.add_field(name="Shared by", value=f"<@{shared.author_id}>")
    embed.add_field(name="Likes", value=str(shared.likes))
    parameters = shared.parameters
    embed.add_field(
        name="Parameters",
        value=f"{parameters.get('aspect')} · {parameters.get('steps')} steps · guidance {parameters.get('guidance')}",
    )
    if shared.negative:
        embed.add_field(name="Negative", value=shared.negative, inline=False)
    view = discord.ui.View(timeout=None)
    view.add_item(LikeButton(shared.id))
    view.add_item(UseButton(shared.id))
    view.add_item(UnshareButton(shared.id))
    return embed, SpecFile(io.BytesIO(shared.thumbnail), filename=THUMBNAIL_NAME), view


def _cog(interaction: discord.Interaction) -> PromptsCog:
    return interaction.client.get_cog("PromptsCog")  # type: ignore[return-value]


class LikeButton(discord.ui.DynamicItem[discord.ui.Button], template=r"lcm:like:(?P<id>[0-9]+)"):
    def __init__(self, prompt_id: int) -> None:
        self.prompt_id = prompt_id
        super().__init__(discord.ui.Button(label="Like", emoji="❤️", custom_id=f"lcm:like:{prompt_id}"))

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction, item: discord.ui.Item, match: re.Match
    ) -> LikeButton:
        return cls(int(match["id"]))

    @guarded
    async def callback(self, interaction: discord.Interaction) -> None:
        await _cog(interaction).like(interaction, self.prompt_id)


class UseButton(discord.ui.DynamicItem[discord.ui.Button], template=r"lcm:use:(?P<id>[0-9]+)"):
    def __init__(self, prompt_id: int) -> None:
        self.prompt_id = prompt_id
        super().__init__(discord.ui.Button(label="Use this prompt", emoji="🎨", custom_id=f"lcm:use:{prompt_id}"))

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction, item: discord.ui.Item, match: re.Match
    ) -> UseButton:
        return cls(int(match["id"]))

    @guarded
    async def callback(self, interaction: discord.Interaction) -> None:
        await _cog(interaction).use(interaction, self.prompt_id)


class UnshareButton(discord.ui.DynamicItem[discord.ui.Button], template=r"lcm:unshare:(?P<id>[0-9]+)"):
    def __init__(self, prompt_id: int) -> None:
        self.prompt_id = prompt_id
        button = discord.ui.Button(
            label="Unshare", style=discord.ButtonStyle.danger, custom_id=f"lcm:unshare:{prompt_id}"
        )
        super().__init__(button)

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction, item: discord.ui.Item, match: re.Match
    ) -> UnshareButton:
        return cls(int(match["id"]))

    @guarded
    async def callback(self, interaction: discord.Interaction) -> None:
        await _cog(interaction).unshare(interaction, self.prompt_id)


class PageButton(
    discord.ui.DynamicItem[discord.ui.Button],
    template=r"lcm:page:(?P<sort>top|new):(?P<offset>[0-9]+):(?P<mine>[01]):(?P<label>Previous|Next)",
):
    def __init__(self, sort: Sort, offset: int, mine: bool, label: str) -> None:
        self.sort, self.offset, self.mine = sort, offset, mine
        custom_id = f"lcm:page:{sort}:{offset}:{int(mine)}:{label}"
        super().__init__(discord.ui.Button(label=label, style=discord.ButtonStyle.secondary, custom_id=custom_id))

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction, item: discord.ui.Item, match: re.Match
    ) -> PageButton:
        return cls(Sort(match["sort"]), int(match["offset"]), match["mine"] == "1", match["label"])

    @guarded
    async def callback(self, interaction: discord.Interaction) -> None:
        footer = (
            interaction.message.embeds[0].footer.text if interaction.message and interaction.message.embeds else None
        )
        query = footer.removeprefix(SEARCH_PREFIX) if footer and footer.startswith(SEARCH_PREFIX) else ""
        await _cog(interaction).show_page(interaction, sort=self.sort, offset=self.offset, query=query, mine=self.mine)


PROMPT_ITEMS = (LikeButton, UseButton, UnshareButton, PageButton)


async def setup(bot: LcmBot) -> None:
    await bot.add_cog(PromptsCog(bot))
