"""Nothing lost: SIGKILL the bot process with jobs queued and running, start it again, each job arrives once."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sqlite3
from pathlib import Path

from tests.fakediscord import FakeDiscord, FakeInteraction
from tests.support.bot_process import start_bot_process
from tests.support.tiny_model import TinyModel

JOBS = 6


def delivered(interaction: FakeInteraction) -> int:
    return sum(1 for message in interaction.messages() if message.attachments)


async def test_sigkill_with_jobs_in_flight_then_restart_delivers_each_once(
    fake: FakeDiscord, tiny_model: TinyModel, tmp_path: Path
) -> None:
    database = tmp_path / "bot.sqlite3"
    first = await start_bot_process(fake, tiny_model, database, MAX_BATCH_IMAGES="1", USER_MAX_PENDING=str(JOBS))
    try:
        user = fake.add_user("patient")
        interactions = [
            await fake.run_command(user, "imagine", {"prompt": f"job {index}", "steps": 8}) for index in range(JOBS)
        ]
        # Every job written down and queued (its status shown) before the kill.
        await fake.wait_for(lambda: all(i.original is not None and i.original.content for i in interactions), 60)
        await fake.wait_for(lambda: delivered(interactions[0]) == 1, timeout=120)
    finally:
        first.send_signal(signal.SIGKILL)
        await first.wait()
    unfinished = sum(1 for interaction in interactions if not delivered(interaction))
    assert unfinished >= 2, "the kill came too late to test anything"

    second = await start_bot_process(fake, tiny_model, database, MAX_BATCH_IMAGES="1", USER_MAX_PENDING=str(JOBS))
    try:
        # Finished means recorded as done with its token forgotten, not only visible: a job delivered just
        # before the kill may run and be delivered again (onto the same message).
        try:
            await fake.wait_for(lambda: database_state(database) == ([("done",)] * JOBS, 0), timeout=180)
        except TimeoutError:  # say how far it got
            delivered_counts = [delivered(interaction) for interaction in interactions]
            raise AssertionError(f"after 180 s: {database_state(database)}, delivered {delivered_counts}") from None
    finally:
        second.send_signal(signal.SIGTERM)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(second.wait(), 60)
    assert [delivered(interaction) for interaction in interactions] == [1] * JOBS
    assert not any(message.attachments for message in fake.channel_messages())


def database_state(database: Path) -> tuple[list[tuple[str]], int]:
    """Every request's status, and how many jobs still keep a token and inputs. Never waits for a lock: this runs
    on the event loop that also serves the fake Discord, and sqlite's default is to wait up to 5 s."""
    try:
        with contextlib.closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=0)) as connection:
            statuses = connection.execute("SELECT status FROM requests ORDER BY id").fetchall()
            pending = connection.execute("SELECT COUNT(*) FROM pending_jobs").fetchone()[0]
    except sqlite3.OperationalError:  # busy for a moment: the next poll asks again
        return [], -1
    return statuses, pending
