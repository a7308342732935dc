"""The Discord side of the bot: the `AutoShardedBot` subclass and how a process runs it.

Start-up order matters for server owners: the database opens (a bad path fails at once), the token is checked
(a typo fails in a second, not after a minute of loading weights), then the engine loads and warms up, and only
then does the bot connect to the gateway, so no interaction ever arrives before the GPU is ready to take it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
from typing import Any, Protocol, runtime_checkable

import discord
from discord.ext import commands

from bot.engine.service import Engine, open_engine
from bot.limits import Limits
from bot.metrics import Health, serve_metrics
from bot.settings import Settings
from bot.storage import Database, StorageUnavailable, open_database
from bot.storage.guilds import GuildSettingsStore
from bot.storage.jobs import PendingJobs
from bot.storage.prompts import SharedPrompts
from bot.storage.usage import UsageLog
from bot.tree import BotTree
from cogs.prompts import PROMPT_ITEMS
from cogs.usage import RunAgainButton
from cogs.utils.buttons import DYNAMIC_ITEMS
from cogs.utils.mask_previews import MaskButton

log = logging.getLogger(__name__)

EXTENSIONS = ("cogs.generate", "cogs.usage", "cogs.guild_settings", "cogs.prompts", "cogs.styles")
SHUTDOWN_GRACE = 30.0  # seconds for the running batch and deliveries to finish on SIGTERM


@runtime_checkable
class Drainable(Protocol):
    """A cog with work in flight (generations, deliveries) that should finish before the connection closes:
    its own jobs and the ones it resumed at start, which no interaction's task covers."""

    async def drain(self, timeout: float) -> None: ...


@runtime_checkable
class Resumable(Protocol):
    """A cog that runs again the work the last process left unfinished."""

    async def resume_unfinished(self) -> None: ...


class LcmBot(commands.AutoShardedBot):
    def __init__(
        self, settings: Settings, database: Database, engine: Engine | None = None, **client_options: Any
    ) -> None:
        """`client_options` go to discord.py's client as they are: the tests' fake Discord, which sends its one
        guild at once, shortens `guild_ready_timeout`, the 2 s that discord.py waits after the last guild
        arrives before it calls the bot ready."""
        super().__init__(
            # Mention prefix: no privileged message-content intent needed; the bot itself is slash-command only.
            command_prefix=commands.when_mentioned,
            intents=discord.Intents(guilds=True),
            tree_cls=BotTree,
            help_command=None,
            **client_options,
        )
        self.settings = settings
        self.usage = UsageLog(database)
        self.pending = PendingJobs(database)
        self.limits = Limits(self.usage)
        self.guild_settings = GuildSettingsStore(database)
        self.prompts = SharedPrompts(database)
        self._engine = engine

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            raise RuntimeError("the engine is not started yet")
        return self._engine

    @engine.setter
    def engine(self, engine: Engine) -> None:
        self._engine = engine

    def health(self) -> Health:
        """Healthy while connected to Discord with the engine serving: what `/healthz` reports."""
        discord_ready = self.is_ready() and not self.is_closed()
        engine_serving = self._engine is not None and self._engine.executor.serving
        detail = {"discord": discord_ready, "engine": engine_serving}
        if self._engine is not None:
            detail["queue_depth"] = self._engine.executor.queue_depth
        return Health(ok=discord_ready and engine_serving, detail=detail)

    async def setup_hook(self) -> None:
        for extension in EXTENSIONS:
            try:
                await self.load_extension(extension)
            except Exception:
                log.exception("failed to load extension %s; continuing without it", extension)
        self.add_dynamic_items(*DYNAMIC_ITEMS, RunAgainButton, *PROMPT_ITEMS, MaskButton)
        if self.settings.dev_guild_id is not None:
            guild = discord.Object(id=self.settings.dev_guild_id)
            self.tree.copy_global_to(guild=guild)
            synced = await self.tree.sync(guild=guild)
            log.info("synced %d commands to development guild %s", len(synced), guild.id)

    async def serve(self) -> None:
        """Run again what the last process left unfinished, then connect to the gateway (until closed).

        In that order, so that the unfinished jobs are read before any interaction can arrive. Read on `on_ready`
        instead, they included jobs that had arrived since connecting (discord.py dispatches interactions
        before `on_ready`): each of those then ran twice."""
        for cog in self.cogs.values():
            if isinstance(cog, Resumable):
                await cog.resume_unfinished()
        await self.connect()

    async def close(self) -> None:
        """Finish the running batch and let finished jobs be delivered before the connection goes away."""
        if self._engine is not None:
            await self._engine.executor.close(timeout=SHUTDOWN_GRACE)
            pending = [
                task
                for task in asyncio.all_tasks()
                if task.get_name().startswith("discord-ui") or task.get_name().startswith("CommandTree")
            ]
            waits = [cog.drain(SHUTDOWN_GRACE) for cog in self.cogs.values() if isinstance(cog, Drainable)]
            if pending:
                waits.append(asyncio.wait(pending, timeout=SHUTDOWN_GRACE))
            await asyncio.gather(*waits)
        await super().close()


def run_bot(settings: Settings) -> int:
    if settings.discord_token is None:
        print("lcm-bot: DISCORD_TOKEN is not set; put the bot token in .env (see .env.example).", file=sys.stderr)
        return 2
    return asyncio.run(_serve(settings))


async def _serve(settings: Settings) -> int:
    try:
        async with open_database(settings.database_path) as database:
            return await _serve_with(settings, database)
    except StorageUnavailable as exc:
        print(f"lcm-bot: {exc}", file=sys.stderr)
        return 1


async def _serve_with(settings: Settings, database: Database) -> int:
    async with LcmBot(settings, database) as bot:
        if not await _login(bot, settings):
            return 1
        async with open_engine(settings) as engine, contextlib.AsyncExitStack() as extras:
            bot.engine = engine
            if settings.metrics_port is not None:
                await extras.enter_async_context(
                    serve_metrics(settings.metrics_port, engine.executor.metrics, bot.health)
                )
            loop = asyncio.get_running_loop()
            for stop_signal in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(stop_signal, lambda: asyncio.ensure_future(bot.close()))
            await bot.serve()
    return 0


async def _login(bot: LcmBot, settings: Settings) -> bool:
    try:
        await bot.login(settings.discord_token.get_secret_value())
    except discord.LoginFailure:
        print(
            "lcm-bot: Discord rejected DISCORD_TOKEN; copy the token again from the developer portal.", file=sys.stderr
        )
        return False
    return True


def sync_commands(settings: Settings, guild_id: int | None) -> int:
    """Register the slash commands globally (or in one guild). Global sync is rate-limited by Discord per day,
    so it is this explicit command, run by the owner, never something the bot does at every start."""
    if settings.discord_token is None:
        print("lcm-bot: DISCORD_TOKEN is not set.", file=sys.stderr)
        return 2

    async def sync() -> int:
        async with open_database(settings.database_path) as database, LcmBot(settings, database) as bot:
            if not await _login(bot, settings):
                return 1
            guild = discord.Object(id=guild_id) if guild_id else None
            if guild is not None:
                bot.tree.copy_global_to(guild=guild)
            synced = await bot.tree.sync(guild=guild)
            print(f"synced {len(synced)} commands {'to guild ' + str(guild_id) if guild_id else 'globally'}")
        return 0

    return asyncio.run(sync())
