"""The one path every generation takes, from a slash command, a button or a restart.

Cheap checks answer ephemerally before anything else; then the interaction is deferred at once (well inside
Discord's 3 seconds, whatever the GPU is doing); attachments are downloaded and decoded off the event loop; the
job is written down, queued, and its message shows the queue position until the result replaces it. Jobs left
unfinished by a crash or a restart are run again from what was written down.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import discord
from PIL import Image

from bot import log_context
from bot.engine.executor import Job, JobResult, JobState
from bot.engine.images import decode_image, decode_mask, fit_to_bucket, prepare_mask
from bot.engine.png import encode_png
from bot.engine.requests import (
    DEFAULT_GUIDANCE,
    CheckedOptions,
    GenerationRequest,
    Kind,
    check_options,
)
from bot.errors import InvalidImage, Refused, ShuttingDown, UserFacingError
from bot.limits import Budgets
from bot.storage.guilds import GuildSettings
from bot.storage.jobs import PendingJob
from bot.tree import PUBLIC_DEFER, send_ephemeral
from cogs.utils.attachments import check_attachment, read_bytes, read_image
from cogs.utils.buttons import queued_view, result_view
from cogs.utils.delivery import ReplyTarget, deliver, deliver_error, prepare_files
from cogs.utils.results import build_embed, status_text
from cogs.utils.usage import UsageEntry

if TYPE_CHECKING:
    from bot.app import LcmBot

log = logging.getLogger(__name__)

STATUS_INTERVAL = 3.0  # at least this many seconds between edits of a queued message (Discord rate-limits edits)
STATUS_JITTER = 1.0  # spread over this many more seconds, so a burst of jobs does not edit all at once
UNKEPT_ERROR = "The bot stopped before this request was written down."
RESTART_NOTICE = "The bot is restarting; this request is saved and will be made as soon as it is back."


@dataclass(frozen=True)
class Presentation:
    """How a result is shown: credited to whom, within which upload limit, blurred or not."""

    requester_name: str
    upload_limit: int | None
    spoiler: bool
    shareable: bool  # results in servers can be shared with the server's gallery
    notes: tuple[str, ...] = ()  # extra lines above the images, such as who shared the prompt


ImageInput = discord.Attachment | Image.Image  # an attachment to download, or an image fitted to a bucket


class JobFlow:
    def __init__(self, bot: LcmBot) -> None:
        self.bot = bot
        self._flows: set[asyncio.Task] = set()

    async def drain(self, timeout: float) -> None:
        """Wait for generations in flight to be delivered (or reported), e.g. at shutdown."""
        if self._flows:
            await asyncio.wait(self._flows, timeout=timeout)

    def check(self, kind: Kind, prompt: str, **options: object) -> CheckedOptions:
        rules = self.bot.engine.rules
        guidance = options.get("guidance")
        return check_options(
            kind,
            prompt,
            buckets=self.bot.engine.buckets,
            count_tokens=rules.count_tokens,
            negative_has_effect=rules.negative_has_effect(DEFAULT_GUIDANCE if guidance is None else guidance),
            styles=self.bot.engine.styles,
            **options,
        )

    async def run_job(
        self,
        interaction: discord.Interaction,
        kind: Kind,
        values: dict[str, Any],
        *,
        image: ImageInput | None = None,
        mask: ImageInput | None = None,
        note: str | None = None,
    ) -> None:
        """Check, acknowledge, queue, show progress, deliver; every outcome is written to the usage log.

        `image` and `mask` are attachments to download, or images already fitted to a bucket (a mask made from
        words). `note` is a line shown above the result (who shared the prompt, say).
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
        image: ImageInput | None,
        mask: ImageInput | None,
        note: str | None,
    ) -> None:
        executor = self.bot.engine.executor
        usage = UsageEntry(self.bot.usage, interaction, kind, values)
        rules = await self.bot.guild_settings.get(interaction.guild_id)
        # 1. Server rules, options, attachment metadata and the user's caps, before acknowledging: refusals
        #    stay ephemeral
        try:
            values, options = await self.admit(interaction, kind, values, rules, (image, mask))
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
            job = executor.submit(request, interaction.user.id, key=str(usage.row))
            log_context.for_jobs([job.id])
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

    async def admit(
        self,
        interaction: discord.Interaction,
        kind: Kind,
        values: dict[str, Any],
        rules: GuildSettings,
        inputs: tuple[ImageInput | None, ...] = (),
    ) -> tuple[dict[str, Any], CheckedOptions]:
        """Everything that can refuse a request before it is acknowledged: the server's rules, the options,
        the attachments' metadata, the queue's caps and the hourly budgets. Returns the values with the
        server's defaults filled in, and the checked options."""
        if kind is Kind.IMAGINE and values.get("count") is None:
            values = values | {"count": rules.default_count}
        self._check_server_rules(interaction, rules, values)
        options = self.check(kind, **values)
        for attachment, what in zip(inputs, ("image", "mask"), strict=False):
            if isinstance(attachment, discord.Attachment):
                check_attachment(attachment, what)
        self.bot.engine.executor.check_admission(interaction.user.id)
        if not self._exempt_from_budgets(interaction):
            budgets = Budgets(
                _first_set(rules.user_images_per_hour, self.bot.settings.user_images_per_hour),
                _first_set(rules.guild_images_per_hour, self.bot.settings.guild_images_per_hour),
            )
            await self.bot.limits.check(
                budgets, user_id=interaction.user.id, guild_id=interaction.guild_id, images=len(options.seeds)
            )
        return values, options

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

    async def resume_unfinished(self) -> None:
        """Run again the jobs that were queued or running when the last process stopped. Call it before any
        interaction can arrive (`LcmBot.serve`): every job recorded by then is one the last process left."""
        if forgotten := await self.bot.pending.forget_ended():
            log.info("forgot the tokens of %d jobs that ended just before the last process stopped", forgotten)
        for row in await self.bot.pending.unkept():
            # Recorded as failed, so its images no longer count against the hourly budgets.
            await UsageEntry.resumed(self.bot.usage, row).ended(ShuttingDown(UNKEPT_ERROR))
            log.warning("request %d was recorded but not kept when the last process stopped; failed", row)
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
            job = self.bot.engine.executor.submit(request, pending.user_id, key=str(pending.request_id))
            log_context.for_jobs([job.id])
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
            style=parameters.get("style"),
            styles=self.bot.engine.styles,
        )
        images = [None if data is None else decode_image(data).image for data in (pending.init_image, pending.mask)]
        mask = None if images[1] is None else images[1].convert("L")
        return options.to_request(self.bot.engine.buckets, images[0], mask)

    # -- request builders ------------------------------------------------------------------------------------

    async def _build_request(
        self, options: CheckedOptions, image: ImageInput | None, mask: ImageInput | None
    ) -> GenerationRequest:
        """Download and fit the attachments (off the event loop) and complete the request."""
        buckets = self.bot.engine.buckets
        if image is None:
            return options.to_request(buckets)
        if isinstance(image, Image.Image) and isinstance(mask, Image.Image):
            return options.to_request(buckets, image, mask)
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


def _is_nsfw(channel: object) -> bool:
    is_nsfw = getattr(channel, "is_nsfw", None)  # DMs and partial channels have no flag
    return bool(is_nsfw()) if callable(is_nsfw) else False


def _first_set(override: int | None, default: int) -> int:
    return default if override is None else override
