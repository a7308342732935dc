"""/imagine, /remix and /inpaint, and the buttons on their results.

Every generation follows one path (`run_job`): cheap checks answer ephemerally before anything else; then the
interaction is deferred at once (well inside Discord's 3 seconds, whatever the GPU is doing); attachments are
downloaded and decoded off the event loop; the job is queued and its message shows the queue position until
the result replaces it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import discord
from discord import app_commands
from discord.ext import commands

from bot.engine.executor import Job, JobResult, JobState
from bot.engine.images import decode_image, decode_mask, encode_png, fit_to_bucket, prepare_mask
from bot.engine.requests import (
    ASPECTS_AT_1024,
    DEFAULT_GUIDANCE,
    PROMPT_MAX_CHARS,
    SEED_MAX,
    CheckedOptions,
    GenerationRequest,
    Kind,
    check_options,
)
from bot.errors import InvalidImage, InvalidRequest, NotAllowed, Refused, ShuttingDown, UserFacingError
from bot.limits import Budgets
from bot.storage.guilds import GuildSettings
from bot.storage.jobs import PendingJob
from bot.tree import PUBLIC_DEFER, report_error, send_ephemeral
from cogs.utils.attachments import check_attachment, read_bytes, read_image
from cogs.utils.buttons import queued_view, result_view
from cogs.utils.delivery import ReplyTarget, deliver, deliver_error, prepare_files
from cogs.utils.results import ResultState, build_embed, status_text
from cogs.utils.usage import UsageEntry

if TYPE_CHECKING:
    from bot.app import LcmBot

log = logging.getLogger(__name__)

STATUS_INTERVAL = 3.0  # at least this many seconds between edits of a queued message (Discord rate-limits edits)
STATUS_JITTER = 1.0  # spread over this many more seconds, so a burst of jobs does not edit all at once
VARIATION_STRENGTH = 0.6
RESTART_NOTICE = "The bot is restarting; this request is saved and will be made as soon as it is back."
ASPECT_CHOICES = [app_commands.Choice(name=name, value=name) for name in ASPECTS_AT_1024]
Prompt = app_commands.Range[str, 1, PROMPT_MAX_CHARS]
Steps = app_commands.Range[int, 1, 8]
Seed = app_commands.Range[int, 0, SEED_MAX]
Strength = app_commands.Range[float, 0.05, 1.0]

OPTION_HELP = {
    "prompt": "What to draw",
    "negative": "What to avoid (only used when guidance is above 1)",
    "steps": "Denoising steps, 1 to 8 (default 4)",
    "seed": "Seed for reproducible results (random when empty)",
}


def everywhere(command: app_commands.Command) -> app_commands.Command:
    """Usable in servers and in DMs with the bot."""
    command = app_commands.allowed_installs(guilds=True, users=False)(command)
    return app_commands.allowed_contexts(guilds=True, dms=True, private_channels=False)(command)


@dataclass(frozen=True)
class Presentation:
    """How a result is shown: credited to whom, within which upload limit, blurred or not."""

    requester_name: str
    upload_limit: int | None
    spoiler: bool
    shareable: bool  # results in servers can be shared with the server's gallery
    notes: tuple[str, ...] = ()  # extra lines above the images, such as who shared the prompt


class GenerateCog(commands.Cog):
    def __init__(self, bot: LcmBot) -> None:
        self.bot = bot
        self._flows: set[asyncio.Task] = set()
        self._resumed = False

    async def drain(self, timeout: float) -> None:
        """Wait for generations in flight to be delivered (or reported), e.g. at shutdown."""
        if self._flows:
            await asyncio.wait(self._flows, timeout=timeout)

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
    ) -> None:
        """Turn a text prompt into images."""
        values = dict(prompt=prompt, negative=negative, aspect=aspect, steps=steps, guidance=guidance, seed=seed)
        await self.run_job(interaction, Kind.IMAGINE, values | {"count": count})

    @everywhere
    @app_commands.command(name="remix")
    @app_commands.describe(
        **OPTION_HELP,
        image="The picture to start from",
        strength="How much to change it, 0.05 to 1 (default 0.6)",
    )
    async def remix(
        self,
        interaction: discord.Interaction,
        image: discord.Attachment,
        prompt: Prompt,
        strength: Strength | None = None,
        negative: Prompt | None = None,
        steps: Steps | None = None,
        seed: Seed | None = None,
    ) -> None:
        """Redraw a picture following a prompt."""
        values = dict(prompt=prompt, negative=negative, steps=steps, seed=seed, strength=strength)
        await self.run_job(interaction, Kind.REMIX, values, image=image)

    @everywhere
    @app_commands.command(name="inpaint")
    @app_commands.describe(
        **OPTION_HELP,
        image="The picture to repaint (its transparent pixels are repainted when there is no mask)",
        mask="White where the picture should be repainted, black where it stays",
        strength="How much to change the masked part, 0.05 to 1 (default 1)",
    )
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
    ) -> None:
        """Repaint part of a picture following a prompt."""
        values = dict(prompt=prompt, negative=negative, steps=steps, seed=seed, strength=strength)
        await self.run_job(interaction, Kind.INPAINT, values, image=image, mask=mask)

    # -- buttons and modal -----------------------------------------------------------------------------------

    async def reroll(self, interaction: discord.Interaction) -> None:
        state = _result_state(interaction)
        values = dict(prompt=state.prompt, negative=state.negative, aspect=state.aspect, steps=state.steps)
        await self.run_job(interaction, Kind.IMAGINE, values | {"guidance": state.guidance, "count": len(state.seeds)})

    async def variation(self, interaction: discord.Interaction, index: int, prompt: str | None = None) -> None:
        """A remix of image `index` of the result, with its prompt or a new one."""
        state = _result_state(interaction)
        attachments = interaction.message.attachments if interaction.message else []
        if index >= len(attachments):
            raise InvalidRequest("That image is no longer attached to the message.")
        values = dict(
            prompt=prompt or state.prompt, negative=state.negative, steps=state.steps, guidance=state.guidance
        )
        await self.run_job(interaction, Kind.REMIX, values | {"strength": VARIATION_STRENGTH}, image=attachments[index])

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

    # -- the one generation path -----------------------------------------------------------------------------

    def check(self, kind: Kind, prompt: str, **options: object) -> CheckedOptions:
        pipes = self.bot.engine.pipes
        guidance = options.get("guidance")
        return check_options(
            kind,
            prompt,
            buckets=self.bot.engine.buckets,
            count_tokens=pipes.count_tokens,
            negative_has_effect=pipes.negative_has_effect(DEFAULT_GUIDANCE if guidance is None else guidance),
            **options,
        )

    async def run_job(
        self,
        interaction: discord.Interaction,
        kind: Kind,
        values: dict[str, Any],
        *,
        image: discord.Attachment | None = None,
        mask: discord.Attachment | None = None,
        note: str | None = None,
    ) -> None:
        """Check, acknowledge, queue, show progress, deliver; every outcome is written to the usage log.

        `note` is a line shown above the result (who shared the prompt, say).
        """
        task = asyncio.current_task()
        assert task is not None
        self._flows.add(task)
        try:
            await self._run_job(interaction, kind, values, image, mask, note)
        finally:
            self._flows.discard(task)

    async def _run_job(
        self,
        interaction: discord.Interaction,
        kind: Kind,
        values: dict[str, Any],
        image: discord.Attachment | None,
        mask: discord.Attachment | None,
        note: str | None,
    ) -> None:
        executor = self.bot.engine.executor
        usage = UsageEntry(self.bot.usage, interaction, kind, values)
        rules = await self.bot.guild_settings.get(interaction.guild_id)
        if kind is Kind.IMAGINE and values.get("count") is None:
            values = values | {"count": rules.default_count}
        # 1. Server rules, options, attachment metadata and the user's caps, before acknowledging: refusals
        #    stay ephemeral
        try:
            self._check_server_rules(interaction, rules, values)
            options = self.check(kind, **values)
            for attachment, what in ((image, "image"), (mask, "mask")):
                if attachment is not None:
                    check_attachment(attachment, what)
            executor.check_admission(interaction.user.id)
            if not self._exempt_from_budgets(interaction):
                budgets = Budgets(
                    _first_set(rules.user_images_per_hour, self.bot.settings.user_images_per_hour),
                    _first_set(rules.guild_images_per_hour, self.bot.settings.guild_images_per_hour),
                )
                await self.bot.limits.check(
                    budgets, user_id=interaction.user.id, guild_id=interaction.guild_id, images=len(options.seeds)
                )
        except UserFacingError as exc:
            await usage.rejected(exc)
            raise
        # 2. Acknowledge at once with a public "thinking" message, which becomes the result
        response = await interaction.response.defer(thinking=True)
        interaction.extras[PUBLIC_DEFER] = True
        target = ReplyTarget.live(interaction, response.message_id if response else None)
        # 3. Build the request (attachments are downloaded and decoded here), write it down, then queue it
        try:
            request = await self._build_request(options, image, mask)
            await usage.queued(request)
            await self._remember(usage, target, interaction.user.display_name, request)
            job = executor.submit(request, interaction.user.id)
        except UserFacingError as exc:
            await usage.rejected(exc)
            if usage.row is not None:
                await self.bot.pending.remove(usage.row)
            await send_ephemeral(interaction, exc.message)
            return
        # 4. Show the queue position until the job ends, then hand over its outcome
        try:
            outcome: JobResult | UserFacingError = await self._wait_showing_progress(interaction, job, usage)
        except UserFacingError as exc:
            outcome = exc
        presentation = Presentation(
            requester_name=interaction.user.display_name,
            upload_limit=interaction.filesize_limit,
            spoiler=rules.spoilers_outside_nsfw and not _is_nsfw(interaction.channel),
            shareable=interaction.guild_id is not None,
            notes=(note,) if note else (),
        )
        await self._finish(target, usage, request, outcome, presentation)

    def _check_server_rules(
        self, interaction: discord.Interaction, rules: GuildSettings, values: dict[str, Any]
    ) -> None:
        if rules.allowed_channels and interaction.channel_id not in rules.allowed_channels:
            channels = ", ".join(f"<#{channel}>" for channel in rules.allowed_channels)
            raise Refused(f"Images are made in {channels} on this server, not here.")
        for text in (values.get("prompt"), values.get("negative")):
            term = rules.blocked_term(str(text or ""))
            if term is not None:
                raise Refused(f"This server does not allow “{term}” in prompts.")

    def _exempt_from_budgets(self, interaction: discord.Interaction) -> bool:
        if interaction.permissions.administrator:
            return True
        roles = getattr(interaction.user, "roles", [])  # a Member in a server, a User in DMs
        return any(role.id in self.bot.settings.limit_exempt_roles for role in roles)

    async def _wait_showing_progress(self, interaction: discord.Interaction, job: Job, usage: UsageEntry) -> JobResult:
        executor = self.bot.engine.executor
        interval = STATUS_INTERVAL + random.uniform(0, STATUS_JITTER)
        shown = None
        while True:
            if job.state is JobState.RUNNING:
                await usage.running()  # seen at the next status update, so within a few seconds
            text = status_text(executor.position(job), executor.eta(job))
            if text != shown and not interaction.is_expired() and not job.future.done():
                view = queued_view(interaction.user.id, job.id) if job.state is JobState.QUEUED else None
                try:
                    await interaction.edit_original_response(content=text, view=view)
                    shown = text
                except discord.HTTPException as exc:
                    log.debug("could not update the status of job %s: %s", job.id, exc)
            try:
                return await asyncio.wait_for(job.result(), interval)
            except TimeoutError:
                continue

    async def _finish(
        self,
        target: ReplyTarget,
        usage: UsageEntry,
        request: GenerationRequest | None,
        outcome: JobResult | UserFacingError,
        presentation: Presentation,
    ) -> None:
        """Deliver the images (or the error), then record the outcome and forget the job's token.

        In that order: a crash in between makes the job run again after the restart, and its second delivery
        replaces the same status message rather than adding one. A job stopped by a shutdown is left as it is
        recorded, queued with its token, for the next start to run.
        """
        if isinstance(outcome, ShuttingDown):
            if target.token_alive:
                with contextlib.suppress(discord.HTTPException):
                    await target.edit(content=RESTART_NOTICE, view=None)
            return
        try:
            if isinstance(outcome, UserFacingError) or request is None:
                await deliver_error(target, str(outcome))
            else:
                files, note = await prepare_files(
                    outcome.images, presentation.upload_limit, spoiler=presentation.spoiler
                )
                await deliver(
                    target,
                    content="\n".join([*request.notices, *presentation.notes, *([note] if note else [])]) or None,
                    embed=build_embed(request, outcome, presentation.requester_name),
                    view=result_view(request.kind, target.user_id, len(files), shareable=presentation.shareable),
                    files=files,
                )
        except discord.HTTPException as exc:
            # Missing permissions or a deleted channel: nothing more we can do for this job, and no other job
            # depends on it.
            log.warning("could not deliver to user %s in channel %s: %s", target.user_id, target.channel_id, exc)
        if isinstance(outcome, UserFacingError):
            await usage.ended(outcome)
        else:
            await usage.done(outcome)
        await self.bot.pending.remove(usage.row)

    async def _remember(
        self, usage: UsageEntry, target: ReplyTarget, requester_name: str, request: GenerationRequest
    ) -> None:
        """Store what the job needs to run again after a crash: its token and its input images."""
        init_image, mask = await asyncio.to_thread(
            lambda: tuple(
                None if image is None else encode_png(image, {}) for image in (request.init_image, request.mask)
            )
        )
        await self.bot.pending.add(
            usage.row,
            requester_name=requester_name,
            application_id=target.application_id,
            interaction_token=target.token,
            interaction_created_at=target.created_at,
            response_message_id=target.message_id,
            init_image=init_image,
            mask=mask,
        )

    # -- after a restart -------------------------------------------------------------------------------------

    @commands.Cog.listener()
    async def on_ready(self) -> None:
        """Run again, once per process, the jobs that were queued or running when the last one stopped."""
        if self._resumed:
            return
        self._resumed = True
        for pending in await self.bot.pending.unfinished():
            task = asyncio.create_task(self._resume(pending), name=f"resume-{pending.request_id}")
            self._flows.add(task)
            task.add_done_callback(self._flows.discard)

    async def _resume(self, pending: PendingJob) -> None:
        target = ReplyTarget(
            client=self.bot,
            user_id=pending.user_id,
            channel_id=pending.channel_id or 0,
            application_id=pending.application_id,
            token=pending.interaction_token,
            created_at=pending.interaction_created_at,
            message_id=pending.response_message_id,
        )
        usage = UsageEntry.resumed(self.bot.usage, pending.request_id)
        request = None
        try:
            request = await asyncio.to_thread(self._rebuild, pending)
            job = self.bot.engine.executor.submit(request, pending.user_id)
            outcome: JobResult | UserFacingError = await job.result()
        except UserFacingError as exc:  # e.g. the settings changed so that it is no longer valid
            outcome = exc
        rules = await self.bot.guild_settings.get(pending.guild_id)
        # The channel's NSFW flag is not stored: when the server wants spoilers, assume the safe side.
        presentation = Presentation(
            pending.requester_name,
            upload_limit=None,
            spoiler=rules.spoilers_outside_nsfw,
            shareable=pending.guild_id is not None,
        )
        await self._finish(target, usage, request, outcome, presentation)

    def _rebuild(self, pending: PendingJob) -> GenerationRequest:
        parameters = pending.parameters
        options = check_options(
            Kind(pending.command),
            pending.prompt,
            buckets=self.bot.engine.buckets,
            negative=pending.negative,
            aspect=parameters.get("aspect") if pending.command == Kind.IMAGINE else None,
            steps=parameters.get("steps"),
            guidance=parameters.get("guidance"),
            strength=parameters.get("strength"),
            seed=pending.seeds[0],
            count=len(pending.seeds),
        )
        images = [None if data is None else decode_image(data).image for data in (pending.init_image, pending.mask)]
        mask = None if images[1] is None else images[1].convert("L")
        return options.to_request(self.bot.engine.buckets, images[0], mask)

    # -- request builders ------------------------------------------------------------------------------------

    async def _build_request(
        self, options: CheckedOptions, image: discord.Attachment | None, mask: discord.Attachment | None
    ) -> GenerationRequest:
        """Download and fit the attachments (off the event loop) and complete the request."""
        buckets = self.bot.engine.buckets
        if image is None:
            return options.to_request(buckets)
        decoded = await read_image(image, "image")
        fitted_mask = None
        if mask is not None:
            fitted_mask = await asyncio.to_thread(
                decode_mask, await read_bytes(mask, "mask"), decoded.image.size, buckets
            )
        elif options.kind is Kind.INPAINT:
            if decoded.alpha_mask is None:
                raise InvalidImage("Attach a `mask` (white = repaint), or use an image with transparent parts.")
            fitted_mask = await asyncio.to_thread(prepare_mask, decoded.alpha_mask, decoded.image.size, buckets)
        fitted = await asyncio.to_thread(fit_to_bucket, decoded.image, buckets)
        return options.to_request(buckets, fitted, fitted_mask)


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
        if not number.isdigit() or not 1 <= int(number) <= max(1, self.image_count):
            raise InvalidRequest(f"Pick an image number from 1 to {self.image_count}.")
        await self.cog.variation(interaction, int(number) - 1, prompt=self.prompt.value)

    async def on_error(self, interaction: discord.Interaction, error: Exception) -> None:
        await report_error(interaction, error)


def _result_state(interaction: discord.Interaction) -> ResultState:
    message = interaction.message
    try:
        return ResultState.from_embed(message.embeds[0])  # type: ignore[union-attr]
    except (AttributeError, IndexError, KeyError, ValueError):
        raise InvalidRequest("That message holds no result to start from.") from None


def _is_nsfw(channel: object) -> bool:
    is_nsfw = getattr(channel, "is_nsfw", None)  # DMs and partial channels have no flag
    return bool(is_nsfw()) if callable(is_nsfw) else False


def _first_set(override: int | None, default: int) -> int:
    return default if override is None else override


async def setup(bot: LcmBot) -> None:
    await bot.add_cog(GenerateCog(bot))
