"""Buttons on queued and finished results. They are `DynamicItem`s: the `custom_id` carries their state and
the message they sit on carries the rest (see `results`), so they keep working after a restart.

Each button only parses its `custom_id` and hands over to the generate cog, which owns the behaviour.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import discord

from bot.engine.requests import Kind
from bot.tree import report_error

if TYPE_CHECKING:
    from cogs.generate import GenerateCog

MAX_VARIATION_BUTTONS = 4


def guarded(callback: Callable[[Any, discord.Interaction], Awaitable[None]]) -> Callable:
    """Send a button's errors through the tree's error ladder (a DynamicItem's own default only logs them)."""

    @functools.wraps(callback)
    async def wrapper(self: Any, interaction: discord.Interaction) -> None:
        try:
            await callback(self, interaction)
        except Exception as exc:
            await report_error(interaction, exc)

    return wrapper


def _cog(interaction: discord.Interaction) -> GenerateCog:
    return interaction.client.get_cog("GenerateCog")  # type: ignore[return-value]


class RerollButton(discord.ui.DynamicItem[discord.ui.Button], template=r"lcm:reroll"):
    def __init__(self) -> None:
        super().__init__(discord.ui.Button(label="Reroll", emoji="🎲", custom_id="lcm:reroll"))

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction, item: discord.ui.Item, match: re.Match
    ) -> RerollButton:
        return cls()

    @guarded
    async def callback(self, interaction: discord.Interaction) -> None:
        await _cog(interaction).reroll(interaction)


class VariationButton(discord.ui.DynamicItem[discord.ui.Button], template=r"lcm:variation:(?P<index>[0-9])"):
    def __init__(self, index: int) -> None:
        self.index = index
        super().__init__(discord.ui.Button(label=f"V{index + 1}", custom_id=f"lcm:variation:{index}"))

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction, item: discord.ui.Item, match: re.Match
    ) -> VariationButton:
        return cls(int(match["index"]))

    @guarded
    async def callback(self, interaction: discord.Interaction) -> None:
        await _cog(interaction).variation(interaction, self.index)


class RemixButton(discord.ui.DynamicItem[discord.ui.Button], template=r"lcm:remix"):
    def __init__(self) -> None:
        super().__init__(discord.ui.Button(label="Remix with a new prompt", emoji="✏️", custom_id="lcm:remix"))

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction, item: discord.ui.Item, match: re.Match
    ) -> RemixButton:
        return cls()

    @guarded
    async def callback(self, interaction: discord.Interaction) -> None:
        await _cog(interaction).open_remix_modal(interaction)


class DeleteButton(discord.ui.DynamicItem[discord.ui.Button], template=r"lcm:delete:(?P<author>[0-9]+)"):
    def __init__(self, author_id: int) -> None:
        self.author_id = author_id
        super().__init__(
            discord.ui.Button(
                label="Delete", emoji="🗑️", style=discord.ButtonStyle.danger, custom_id=f"lcm:delete:{author_id}"
            )
        )

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction, item: discord.ui.Item, match: re.Match
    ) -> DeleteButton:
        return cls(int(match["author"]))

    @guarded
    async def callback(self, interaction: discord.Interaction) -> None:
        await _cog(interaction).delete(interaction, self.author_id)


class CancelButton(
    discord.ui.DynamicItem[discord.ui.Button], template=r"lcm:cancel:(?P<author>[0-9]+):(?P<job>[0-9a-f]{12})"
):
    def __init__(self, author_id: int, job_id: str) -> None:
        self.author_id, self.job_id = author_id, job_id
        super().__init__(
            discord.ui.Button(
                label="Cancel", style=discord.ButtonStyle.secondary, custom_id=f"lcm:cancel:{author_id}:{job_id}"
            )
        )

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction, item: discord.ui.Item, match: re.Match
    ) -> CancelButton:
        return cls(int(match["author"]), match["job"])

    @guarded
    async def callback(self, interaction: discord.Interaction) -> None:
        await _cog(interaction).cancel(interaction, self.author_id, self.job_id)


class ShareButton(discord.ui.DynamicItem[discord.ui.Button], template=r"lcm:share"):
    def __init__(self) -> None:
        super().__init__(discord.ui.Button(label="Share", emoji="📣", custom_id="lcm:share"))

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction, item: discord.ui.Item, match: re.Match
    ) -> ShareButton:
        return cls()

    @guarded
    async def callback(self, interaction: discord.Interaction) -> None:
        await interaction.client.get_cog("PromptsCog").share(interaction)  # type: ignore[union-attr]


DYNAMIC_ITEMS = (RerollButton, VariationButton, RemixButton, ShareButton, DeleteButton, CancelButton)


def result_view(kind: Kind, author_id: int, image_count: int, *, shareable: bool) -> discord.ui.View:
    """Buttons under a finished result: Reroll (text-to-image only: its inputs are all in the embed),
    a variation per image, Remix with a new prompt, Share (in servers), Delete."""
    view = discord.ui.View(timeout=None)
    for index in range(min(image_count, MAX_VARIATION_BUTTONS)):
        view.add_item(VariationButton(index))
    if kind is Kind.IMAGINE:
        view.add_item(RerollButton())
    view.add_item(RemixButton())
    if shareable and kind is Kind.IMAGINE:
        view.add_item(ShareButton())
    view.add_item(DeleteButton(author_id))
    return view


def queued_view(author_id: int, job_id: str) -> discord.ui.View:
    view = discord.ui.View(timeout=None)
    view.add_item(CancelButton(author_id, job_id))
    return view
