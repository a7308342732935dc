"""Pytest fixtures: a fake Discord per test and bots connected to it, with the engine on the tiny model."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator, Awaitable, Callable

import discord
import pytest
from pydantic import SecretStr

from bot.app import LcmBot
from bot.engine.executor import BatchRunner
from bot.engine.generation import generate
from bot.engine.pipelines import Pipelines
from bot.engine.service import Engine, local_engine
from bot.settings import Settings
from bot.storage import Database, open_database
from tests.fakediscord.server import FakeDiscord
from tests.fakediscord.spec import OpenApiSpec

# The fake sends its one guild right after READY, so the bot need not wait discord.py's default 2 s for more.
GUILD_READY_TIMEOUT = 0.05


@pytest.fixture(scope="session")
def discord_spec() -> OpenApiSpec:
    return OpenApiSpec()


@pytest.fixture
async def fake(discord_spec: OpenApiSpec, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[FakeDiscord]:
    server = FakeDiscord(discord_spec)
    base_url = await server.start()
    monkeypatch.setattr(discord.http.Route, "BASE", f"{base_url}/api/v10")
    yield server
    await server.stop()
    assert server.violations == [], "the bot sent requests Discord's API description does not allow"


def make_engine(pipes: Pipelines, settings: Settings, runner: BatchRunner | None = None) -> Engine:
    """The production engine around the session's tiny pipelines, optionally behind a test runner."""
    return local_engine(settings, pipes, runner or functools.partial(generate, pipes), settings.max_batch_images or 4)


BotStarter = Callable[..., Awaitable[LcmBot]]


async def connect_bot(
    fake: FakeDiscord, settings: Settings, database: Database, engine: Engine
) -> tuple[LcmBot, asyncio.Task]:
    """Log a real `LcmBot` in to the fake and wait until it is ready; the task runs its gateway connection."""
    bot = LcmBot(settings, database, engine, guild_ready_timeout=GUILD_READY_TIMEOUT)
    await bot.login("fake-token")
    fake.identified.clear()
    task = asyncio.create_task(bot.serve())
    await asyncio.wait_for(bot.wait_until_ready(), 30)
    return bot, task


@pytest.fixture
async def database(tmp_path) -> AsyncIterator[Database]:
    """A fresh database file, shared by every bot a test starts (as across a restart)."""
    async with open_database(tmp_path / "bot.sqlite3") as opened:
        yield opened


@pytest.fixture
async def start_bot(
    fake: FakeDiscord, settings: Settings, pipes: Pipelines, database: Database
) -> AsyncIterator[BotStarter]:
    """Start bots against the fake; each is closed at the end of the test (a test may restart its bot)."""
    running: list[tuple[LcmBot, asyncio.Task]] = []

    async def start(runner: BatchRunner | None = None, **overrides: object) -> LcmBot:
        bot_settings = settings.model_copy(
            update={"dev_guild_id": fake.guild_id, "discord_token": SecretStr("fake-token"), **overrides}
        )
        bot, task = await connect_bot(fake, bot_settings, database, make_engine(pipes, bot_settings, runner))
        running.append((bot, task))
        return bot

    yield start
    for bot, task in running:
        if not bot.is_closed():
            await bot.close()
        await asyncio.wait_for(task, 30)
