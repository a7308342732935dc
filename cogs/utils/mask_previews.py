"""`/inpaint mask_prompt:"the sky"`: make the mask from words, show it tinted on the picture, and queue the
inpaint only when its author presses Confirm. Invert and Grow adjust the mask; Cancel drops it.

Previews live in memory for as long as the interaction token does (15 minutes): a mask is too big for a
`custom_id`, and a preview lost in a restart costs the user one more `/inpaint`, never a generation.
"""

from __future__ import annotations

import asyncio
import functools
import io
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import discord
from PIL import Image

from bot.engine.images import fit_to_bucket
from bot.engine.requests import Kind
from bot.engine.text_masks import check_coverage, grow, invert, overlay_png
from bot.errors import InvalidRequest, NotAllowed
from cogs.utils.attachments import read_image
from cogs.utils.buttons import guarded
from cogs.utils.delivery import SpecFile

if TYPE_CHECKING:
    from bot.app import LcmBot
    from cogs.utils.jobs import JobFlow

PREVIEW_SECONDS = 15 * 60
PHRASE_MAX_CHARS = 100
ACTIONS: dict[str, tuple[str, discord.ButtonStyle]] = {
    "confirm": ("Confirm", discord.ButtonStyle.success),
    "invert": ("Invert", discord.ButtonStyle.secondary),
    "grow": ("Grow", discord.ButtonStyle.secondary),
    "cancel": ("Cancel", discord.ButtonStyle.danger),
}
ADJUSTMENTS: dict[str, Callable[[Image.Image], Image.Image]] = {"invert": invert, "grow": grow}


@dataclass
class Preview:
    id: str
    author_id: int
    phrase: str
    values: dict[str, Any]
    image: Image.Image
    mask: Image.Image
    created: float


class MaskPreviews:
    def __init__(self, bot: LcmBot, flow: JobFlow) -> None:
        self.bot = bot
        self.flow = flow
        self._previews: dict[str, Preview] = {}

    async def start(
        self, interaction: discord.Interaction, values: dict[str, Any], image: discord.Attachment, phrase: str
    ) -> None:
        """Check what can be checked, acknowledge (ephemeral: the preview is for its author), make the mask."""
        engine = self.bot.engine
        phrase = " ".join(phrase.split())
        if not phrase or len(phrase) > PHRASE_MAX_CHARS:
            raise InvalidRequest(f"`mask_prompt` must be 1 to {PHRASE_MAX_CHARS} characters.")
        if engine.masker is None:
            raise InvalidRequest("Masks described in words need this bot's own GPU; attach a `mask` instead.")
        # The same checks as the inpaint itself, so a request the server refuses never costs a mask
        rules = await self.bot.guild_settings.get(interaction.guild_id)
        await self.flow.admit(interaction, Kind.INPAINT, values, rules, (image,))
        await interaction.response.defer(ephemeral=True, thinking=True)
        decoded = await read_image(image, "image")
        fitted = await asyncio.to_thread(fit_to_bucket, decoded.image, engine.buckets)
        mask = await engine.executor.run_on_gpu(functools.partial(engine.masker.mask, fitted, phrase))
        preview = Preview(secrets.token_hex(6), interaction.user.id, phrase, values, fitted, mask, time.monotonic())
        self._forget_expired()
        self._previews[preview.id] = preview
        await interaction.edit_original_response(**await self._message(preview))

    async def act(self, interaction: discord.Interaction, action: str, author_id: int, preview_id: str) -> None:
        if interaction.user.id != author_id:
            raise NotAllowed("Only the person who asked for this mask can use these buttons.")
        preview = self._previews.get(preview_id)
        if preview is None or time.monotonic() - preview.created > PREVIEW_SECONDS:
            raise InvalidRequest("This mask preview has expired. Run `/inpaint` again.")
        if action == "cancel":
            del self._previews[preview_id]
            await interaction.response.edit_message(content="Cancelled: nothing was queued.", attachments=[], view=None)
        elif action in ADJUSTMENTS:
            preview.mask = await asyncio.to_thread(ADJUSTMENTS[action], preview.mask)
            await interaction.response.edit_message(**await self._message(preview))
        else:
            check_coverage(preview.mask)
            del self._previews[preview_id]
            await self.flow.run_job(
                interaction, Kind.INPAINT, preview.values, image=preview.image, mask=preview.mask,
                note=f"Mask: “{preview.phrase}”",
            )  # fmt: skip

    async def _message(self, preview: Preview) -> dict[str, Any]:
        png = await asyncio.to_thread(overlay_png, preview.image, preview.mask)
        text = f"The tinted part is what “{preview.phrase}” selects; it will be repainted."
        try:
            check_coverage(preview.mask)
        except InvalidRequest as problem:
            text = f"{text}\n{problem.message}"
        return {
            "content": f"{text}\nConfirm to queue the inpaint, or adjust the mask first.",
            "attachments": [SpecFile(io.BytesIO(png), filename="mask-preview.png")],
            "view": preview_view(preview.author_id, preview.id),
        }

    def _forget_expired(self) -> None:
        now = time.monotonic()
        for key in [key for key, kept in self._previews.items() if now - kept.created > PREVIEW_SECONDS]:
            del self._previews[key]


class MaskButton(
    discord.ui.DynamicItem[discord.ui.Button],
    template=r"lcm:mask:(?P<action>confirm|invert|grow|cancel):(?P<author>[0-9]+):(?P<preview>[0-9a-f]{12})",
):
    def __init__(self, action: str, author_id: int, preview_id: str) -> None:
        self.action, self.author_id, self.preview_id = action, author_id, preview_id
        label, style = ACTIONS[action]
        custom_id = f"lcm:mask:{action}:{author_id}:{preview_id}"
        super().__init__(discord.ui.Button(label=label, style=style, custom_id=custom_id))

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction, item: discord.ui.Item, match: re.Match
    ) -> MaskButton:
        return cls(match["action"], int(match["author"]), match["preview"])

    @guarded
    async def callback(self, interaction: discord.Interaction) -> None:
        cog = interaction.client.get_cog("GenerateCog")
        await cog.masks.act(interaction, self.action, self.author_id, self.preview_id)  # type: ignore[union-attr]


def preview_view(author_id: int, preview_id: str) -> discord.ui.View:
    view = discord.ui.View(timeout=None)
    for action in ACTIONS:
        view.add_item(MaskButton(action, author_id, preview_id))
    return view
