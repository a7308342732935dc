"""/imagine, /remix and /inpaint, and the buttons on their results.

Discord glue only: each command and button turns its options into values for `JobFlow.run_job`
(`cogs/utils/jobs.py`), the one path every generation takes.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

from bot.engine.requests import (
    ASPECTS_AT_1024,
    PROMPT_MAX_CHARS,
    SEED_MAX,
    Kind,
)
from bot.errors import InvalidRequest, NotAllowed
from bot.tree import report_error
from cogs.styles import style_choices
from cogs.utils.jobs import JobFlow
from cogs.utils.mask_previews import MaskPreviews
from cogs.utils.results import ResultState

if TYPE_CHECKING:
    from bot.app import LcmBot

VARIATION_STRENGTH = 0.6
ASPECT_CHOICES = [app_commands.Choice(name=name, value=name) for name in ASPECTS_AT_1024]
Prompt = app_commands.Range[str, 1, PROMPT_MAX_CHARS]
Steps = app_commands.Range[int, 1, 8]
Seed = app_commands.Range[int, 0, SEED_MAX]
Strength = app_commands.Range[float, 0.05, 1.0]
StyleName = app_commands.Range[str, 1, 32]

OPTION_HELP = {
    "prompt": "What to draw",
    "negative": "What to avoid (only used when guidance is above 1)",
    "steps": "Denoising steps, 1 to 8 (default 4)",
    "seed": "Seed for reproducible results (random when empty)",
    "style": "A named style of this bot (see /styles)",
}


def everywhere(command: app_commands.Command) -> app_commands.Command:
    """Usable in servers and in DMs with the bot."""
    command = app_commands.allowed_installs(guilds=True, users=False)(command)
    return app_commands.allowed_contexts(guilds=True, dms=True, private_channels=False)(command)


class GenerateCog(commands.Cog):
    def __init__(self, bot: LcmBot) -> None:
        self.bot = bot
        self.flow = JobFlow(bot)
        self.masks = MaskPreviews(bot, self.flow)

    async def drain(self, timeout: float) -> None:
        """Wait for generations in flight to be delivered (or reported), e.g. at shutdown."""
        await self.flow.drain(timeout)

    async def resume_unfinished(self) -> None:
        """Called by the bot before it connects (`LcmBot.serve`)."""
        await self.flow.resume_unfinished()

    # -- commands --------------------------------------------------------------------------------------------

    @everywhere
    @app_commands.command(name="imagine")
    @app_commands.describe(
        **OPTION_HELP,
        aspect="Image shape (default 1:1)",
        guidance="How closely to follow the prompt, 0 to 2 (default 1)",
        count="How many images, 1 to 4 (default 1)",
    )
    @app_commands.choices(aspect=ASPECT_CHOICES)
    @app_commands.autocomplete(style=style_choices)
    async def imagine(
        self,
        interaction: discord.Interaction,
        prompt: Prompt,
        negative: Prompt | None = None,
        aspect: str | None = None,
        steps: Steps | None = None,
        guidance: app_commands.Range[float, 0.0, 2.0] | None = None,
        seed: Seed | None = None,
        count: app_commands.Range[int, 1, 4] | None = None,
        style: StyleName | None = None,
    ) -> None:
        """Turn a text prompt into images."""
        values = dict(prompt=prompt, negative=negative, aspect=aspect, steps=steps, guidance=guidance, seed=seed)
        values["style"] = style
        await self.flow.run_job(interaction, Kind.IMAGINE, values | {"count": count})

    @everywhere
    @app_commands.command(name="remix")
    @app_commands.describe(
        **OPTION_HELP,
        image="The picture to start from",
        strength="How much to change it, 0.05 to 1 (default 0.6)",
    )
    @app_commands.autocomplete(style=style_choices)
    async def remix(
        self,
        interaction: discord.Interaction,
        image: discord.Attachment,
        prompt: Prompt,
        strength: Strength | None = None,
        negative: Prompt | None = None,
        steps: Steps | None = None,
        seed: Seed | None = None,
        style: StyleName | None = None,
    ) -> None:
        """Redraw a picture following a prompt."""
        values = dict(prompt=prompt, negative=negative, steps=steps, seed=seed, strength=strength, style=style)
        await self.flow.run_job(interaction, Kind.REMIX, values, image=image)

    @everywhere
    @app_commands.command(name="inpaint")
    @app_commands.describe(
        **OPTION_HELP,
        image="The picture to repaint (its transparent pixels are repainted when there is no mask)",
        mask="White where the picture should be repainted, black where it stays",
        strength="How much to change the masked part, 0.05 to 1 (default 1)",
        mask_prompt='Or describe what to repaint ("the sky"): you see the mask and confirm it first',
    )
    @app_commands.autocomplete(style=style_choices)
    async def inpaint(
        self,
        interaction: discord.Interaction,
        image: discord.Attachment,
        prompt: Prompt,
        mask: discord.Attachment | None = None,
        strength: Strength | None = None,
        negative: Prompt | None = None,
        steps: Steps | None = None,
        seed: Seed | None = None,
        style: StyleName | None = None,
        mask_prompt: app_commands.Range[str, 1, 100] | None = None,
    ) -> None:
        """Repaint part of a picture following a prompt."""
        values = dict(prompt=prompt, negative=negative, steps=steps, seed=seed, strength=strength, style=style)
        if mask_prompt is not None:
            if mask is not None:
                raise InvalidRequest("Give either a `mask` or a `mask_prompt`, not both.")
            await self.masks.start(interaction, values, image, mask_prompt)
            return
        await self.flow.run_job(interaction, Kind.INPAINT, values, image=image, mask=mask)

    # -- buttons and modal -----------------------------------------------------------------------------------

    async def reroll(self, interaction: discord.Interaction) -> None:
        state = _result_state(interaction)
        values = dict(prompt=state.prompt, negative=state.negative, aspect=state.aspect, steps=state.steps)
        await self.flow.run_job(
            interaction,
            Kind.IMAGINE,
            values | {"guidance": state.guidance, "count": len(state.seeds), "style": state.style},
        )

    async def variation(self, interaction: discord.Interaction, index: int, prompt: str | None = None) -> None:
        """A remix of image `index` of the result, with its prompt or a new one."""
        state = _result_state(interaction)
        attachments = interaction.message.attachments if interaction.message else []
        if index >= len(attachments):
            raise InvalidRequest("That image is no longer attached to the message.")
        values = dict(
            prompt=prompt or state.prompt,
            negative=state.negative,
            steps=state.steps,
            guidance=state.guidance,
            style=state.style,
        )
        await self.flow.run_job(
            interaction, Kind.REMIX, values | {"strength": VARIATION_STRENGTH}, image=attachments[index]
        )

    async def open_remix_modal(self, interaction: discord.Interaction) -> None:
        state = _result_state(interaction)
        image_count = len(interaction.message.attachments) if interaction.message else 0
        await interaction.response.send_modal(RemixModal(self, state.prompt, image_count))

    async def delete(self, interaction: discord.Interaction, author_id: int) -> None:
        if interaction.user.id != author_id and not interaction.permissions.manage_messages:
            raise NotAllowed("Only the person who made this image, or a moderator, can delete it.")
        await interaction.response.defer()
        if interaction.message is not None:
            with contextlib.suppress(discord.NotFound):  # already gone: the goal is reached
                await interaction.message.delete()

    async def cancel(self, interaction: discord.Interaction, author_id: int, job_id: str) -> None:
        if interaction.user.id != author_id:
            raise NotAllowed("Only the person who asked for this can cancel it.")
        if not self.bot.engine.executor.cancel(job_id):
            raise InvalidRequest("This request is no longer waiting in the queue, so it can't be cancelled.")
        await interaction.response.defer()  # the waiting job reports the cancellation to its author


class RemixModal(discord.ui.Modal, title="Remix with a new prompt"):
    def __init__(self, cog: GenerateCog, prompt: str, image_count: int) -> None:
        super().__init__(timeout=15 * 60)
        self.cog = cog
        self.prompt = discord.ui.TextInput(
            label="New prompt", style=discord.TextStyle.paragraph, max_length=PROMPT_MAX_CHARS, default=prompt
        )
        self.add_item(self.prompt)
        self.image_number: discord.ui.TextInput | None = None
        if image_count > 1:
            self.image_number = discord.ui.TextInput(
                label=f"Which image (1 to {image_count})", required=False, max_length=1, placeholder="1"
            )
            self.add_item(self.image_number)
        self.image_count = image_count

    async def on_submit(self, interaction: discord.Interaction) -> None:
        number = (self.image_number.value if self.image_number else "") or "1"
        # Compared as text: `int` reads other scripts' digits and rejects superscripts that `isdigit` accepts.
        numbers = [str(position) for position in range(1, max(1, self.image_count) + 1)]
        if number not in numbers:
            raise InvalidRequest(f"Pick an image number from 1 to {self.image_count}.")
        await self.cog.variation(interaction, numbers.index(number), prompt=self.prompt.value)

    async def on_error(self, interaction: discord.Interaction, error: Exception) -> None:
        await report_error(interaction, error)


def _result_state(interaction: discord.Interaction) -> ResultState:
    message = interaction.message
    try:
        return ResultState.from_embed(message.embeds[0])  # type: ignore[union-attr]
    except (AttributeError, IndexError, KeyError, ValueError):
        raise InvalidRequest("That message holds no result to start from.") from None


async def setup(bot: LcmBot) -> None:
    await bot.add_cog(GenerateCog(bot))
