"""Start-up of the real bot process code against the fake Discord: token handling, syncing, broken cogs."""

from __future__ import annotations

import asyncio
import logging

import pytest
from pydantic import SecretStr

from bot import app
from bot.__main__ import main
from bot.app import LcmBot, run_bot
from bot.settings import Settings
from tests.fakediscord import FakeDiscord

COMMANDS = {"imagine", "remix", "inpaint", "history", "stats", "settings", "prompts"}


async def test_missing_token_is_one_line_and_exit_2(settings: Settings, capsys) -> None:
    assert await asyncio.to_thread(run_bot, settings.model_copy(update={"discord_token": None})) == 2
    assert capsys.readouterr().err.strip() == (
        "lcm-bot: DISCORD_TOKEN is not set; put the bot token in .env (see .env.example)."
    )


async def test_rejected_token_is_one_line_and_exit_1(fake: FakeDiscord, settings: Settings, capsys) -> None:
    fake.fail("GET", "/users/@me", 401, 0, "401: Unauthorized")
    bad = settings.model_copy(update={"discord_token": SecretStr("wrong")})
    assert await asyncio.to_thread(run_bot, bad) == 1
    assert capsys.readouterr().err.strip() == (
        "lcm-bot: Discord rejected DISCORD_TOKEN; copy the token again from the developer portal."
    )
    assert ("GET", "/gateway/bot") not in fake.requests  # stopped before loading weights or connecting


async def test_unusable_database_is_one_line_and_exit_1(settings: Settings, tmp_path, capsys) -> None:
    corrupt = tmp_path / "corrupt.sqlite3"
    corrupt.write_bytes(b"not sqlite" * 500)
    broken = settings.model_copy(update={"discord_token": SecretStr("token"), "database_path": corrupt})
    assert await asyncio.to_thread(run_bot, broken) == 1
    error = capsys.readouterr().err
    assert error.startswith("lcm-bot: DATABASE_PATH=") and error.count("\n") == 1


async def test_sync_command_registers_globally_only_when_asked(fake: FakeDiscord, env_for) -> None:
    env_for(DISCORD_TOKEN="fake-token")
    assert await asyncio.to_thread(main, ["sync"]) == 0
    assert {command["name"] for command in fake.commands[None]} == COMMANDS
    assert fake.guild_id not in fake.commands


async def test_start_syncs_to_the_dev_guild_only(fake: FakeDiscord, start_bot) -> None:
    await start_bot()
    assert {command["name"] for command in fake.commands[fake.guild_id]} == COMMANDS
    assert None not in fake.commands  # never a global sync at start


async def test_a_broken_cog_is_logged_and_the_rest_still_loads(
    fake: FakeDiscord, start_bot, monkeypatch: pytest.MonkeyPatch, caplog
) -> None:
    monkeypatch.setattr(app, "EXTENSIONS", ("cogs.does_not_exist", *app.EXTENSIONS))
    with caplog.at_level(logging.ERROR, logger="bot.app"):
        bot = await start_bot()
    assert "failed to load extension cogs.does_not_exist" in caplog.text
    assert bot.get_cog("GenerateCog") is not None


async def test_close_lets_the_running_job_be_delivered(fake: FakeDiscord, start_bot) -> None:
    bot: LcmBot = await start_bot()
    interaction = await fake.run_command(fake.add_user("last"), "imagine", {"prompt": "just in time"})
    await fake.wait_for(lambda: bot.engine.executor.pending_for(interaction.user_id) == 1)
    await bot.close()
    delivered = [message for message in interaction.messages() if message.attachments]
    failed = [message for message in interaction.messages() if message.ephemeral]
    assert delivered or failed, "the job neither delivered nor reported at shutdown"
