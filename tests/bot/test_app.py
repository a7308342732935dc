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
from tests.fakediscord import FakeDiscord, FakeInteraction
from tests.fakediscord.fixtures import make_engine
from tests.support.runners import RecordingRunner

COMMANDS = {"imagine", "remix", "inpaint", "history", "queue", "stats", "settings", "prompts", "styles"}


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


async def close_while_running(bot: LcmBot, runner: RecordingRunner) -> None:
    """Close `bot` (SIGTERM does exactly this) while `runner` holds its GPU, then let the running batch end."""
    closing = asyncio.create_task(bot.close())
    await asyncio.sleep(0.2)
    runner.gate.set()
    await closing


async def stop_with_jobs_saved(fake: FakeDiscord, start_bot, pipes, prompts: list[str]) -> list[FakeInteraction]:
    """Send `prompts` (one user each) to a bot whose GPU is held, then stop it gracefully: the first job is
    delivered and the others stay saved for the next start."""
    runner = RecordingRunner(pipes)
    runner.gate.clear()
    bot: LcmBot = await start_bot(runner=runner, max_batch_images=1)
    interactions = [
        await fake.run_command(fake.add_user(f"user{index}"), "imagine", {"prompt": prompt})
        for index, prompt in enumerate(prompts)
    ]
    await fake.wait_for(lambda: all(i.original is not None and i.original.content for i in interactions))
    await close_while_running(bot, runner)
    return interactions


async def test_graceful_restart_finishes_the_running_job_and_keeps_the_queued_ones(
    fake: FakeDiscord, start_bot, pipes
) -> None:
    interactions = await stop_with_jobs_saved(fake, start_bot, pipes, ["job 0", "job 1", "job 2"])

    def results(interaction: FakeInteraction) -> int:
        return sum(1 for message in interaction.messages() if message.attachments)

    assert [results(interaction) for interaction in interactions] == [1, 0, 0]  # the running one finished
    assert all("this request is saved" in interaction.original.content for interaction in interactions[1:])
    await start_bot()
    await fake.wait_for(lambda: [results(interaction) for interaction in interactions] == [1, 1, 1])


async def test_a_job_that_arrives_before_ready_runs_once(fake: FakeDiscord, settings, database, pipes) -> None:
    # discord.py dispatches interactions before `on_ready`; a job recorded then is not one to resume.
    runner = RecordingRunner(pipes)
    runner.gate.clear()  # the GPU is busy until the bot is ready
    bot_settings = settings.model_copy(update={"dev_guild_id": fake.guild_id, "discord_token": SecretStr("t")})
    bot = LcmBot(bot_settings, database, make_engine(pipes, bot_settings, runner))
    await bot.login("fake-token")
    fake.identified.clear()
    serving = asyncio.create_task(bot.serve())
    try:
        await asyncio.wait_for(fake.identified.wait(), 30)
        early = await fake.run_command(fake.add_user("early"), "imagine", {"prompt": "early bird"})
        await fake.wait_for(lambda: early.original is not None and early.original.content)  # recorded and queued
        await asyncio.wait_for(bot.wait_until_ready(), 30)
        runner.gate.set()
        await fake.wait_for(lambda: any(message.attachments for message in early.messages()))
        await fake.wait_for(lambda: bot.engine.executor.queue_depth == 0 and not runner.waiting.is_set())
        assert runner.prompts == ["early bird"]
    finally:
        await bot.close()
        await asyncio.wait_for(serving, 30)


async def test_a_resumed_job_that_fails_tells_its_requester(fake: FakeDiscord, start_bot, pipes) -> None:
    interactions = await stop_with_jobs_saved(fake, start_bot, pipes, ["fine", "boom"])

    await start_bot(runner=RecordingRunner(pipes))  # "boom" fails there, like a model failure
    doomed = interactions[1]
    await fake.wait_for(lambda: any(message.ephemeral for message in doomed.messages()))
    [told] = [message for message in doomed.messages() if message.ephemeral]
    assert "Something went wrong" in told.content


async def test_a_graceful_restart_delivers_a_resumed_job_it_was_running(fake: FakeDiscord, start_bot, pipes) -> None:
    interactions = await stop_with_jobs_saved(fake, start_bot, pipes, ["saved 0", "saved 1"])

    resuming = RecordingRunner(pipes)
    resuming.gate.clear()
    restarted: LcmBot = await start_bot(runner=resuming, max_batch_images=1)
    await asyncio.wait_for(asyncio.to_thread(resuming.waiting.wait, 30), 35)  # the resumed job is on the GPU
    await close_while_running(restarted, resuming)
    assert any(message.attachments for message in interactions[1].messages())  # delivered before the close ended
