"""The usage log seen from Discord: one row per request with its outcome, /history and /stats."""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path

from tests.cogs.test_generate import ephemeral_reply, photo, result, upload
from tests.fakediscord import FakeDiscord
from tests.support.runners import RecordingRunner


def rows(database: Path) -> list[tuple]:
    """Read the bot's database file as any other SQLite client would (WAL allows it while the bot runs)."""
    with contextlib.closing(sqlite3.connect(database)) as connection:
        return connection.execute("SELECT prompt, status, reason, image_count FROM requests ORDER BY id").fetchall()


async def test_every_request_leaves_one_row_with_its_outcome(
    fake: FakeDiscord, start_bot, pipes, tmp_path: Path
) -> None:
    runner = RecordingRunner(pipes)
    await start_bot(runner=runner)
    user = fake.add_user("logged")
    await result(fake, await fake.run_command(user, "imagine", {"prompt": "done", "count": 2}))
    await ephemeral_reply(fake, await fake.run_command(user, "imagine", {"prompt": "bad steps", "steps": 99}))
    text_file = fake.upload("a.png", b"not an image at all" * 10)
    await ephemeral_reply(fake, await fake.run_command(user, "remix", {"image": text_file, "prompt": "bad image"}))
    await ephemeral_reply(fake, await fake.run_command(user, "imagine", {"prompt": "boom"}))

    runner.gate.clear()
    other = fake.add_user("other")
    holder = await fake.run_command(other, "imagine", {"prompt": "holds the gpu"})
    await fake.wait_for(runner.waiting.is_set)
    # While the GPU works on it, the row says so (recorded at the next status update, within a few seconds).
    await fake.wait_for(lambda: ("holds the gpu", "running") in [row[:2] for row in rows(tmp_path / "bot.sqlite3")])
    queued = await fake.run_command(user, "imagine", {"prompt": "cancelled"})
    await fake.wait_for(lambda: queued.original is not None and queued.original.custom_ids())
    await fake.click(user, queued.original, queued.original.custom_ids()[0])
    await ephemeral_reply(fake, queued)
    runner.gate.set()
    await result(fake, holder)
    # A job is recorded as done just after its delivery.
    await fake.wait_for(lambda: all(row[1] not in ("queued", "running") for row in rows(tmp_path / "bot.sqlite3")))

    all_rows = rows(tmp_path / "bot.sqlite3")
    assert len(all_rows) == 6  # one per request, whatever became of it
    recorded = {prompt: (status, reason, images) for prompt, status, reason, images in all_rows}
    assert recorded == {
        "done": ("done", None, 2),
        "bad steps": ("rejected", "invalid_options", 0),
        "bad image": ("rejected", "invalid_image", 0),
        "boom": ("failed", "generation_failed", 0),
        "holds the gpu": ("done", None, 1),
        "cancelled": ("cancelled", "cancelled", 0),
    }


async def test_history_lists_and_runs_again(fake: FakeDiscord, start_bot) -> None:
    await start_bot()
    user = fake.add_user("historian")
    await result(fake, await fake.run_command(user, "imagine", {"prompt": "a quiet harbour", "aspect": "16:9"}))
    await result(fake, await fake.run_command(user, "remix", {"image": upload(fake, photo()), "prompt": "remixed"}))
    listing = await fake.run_command(user, "history")
    await fake.wait_for(lambda: listing.original is not None)
    message = listing.original
    assert message.ephemeral
    description = message.embeds[0]["description"]
    assert description.index("remixed") < description.index("a quiet harbour")
    [again] = message.custom_ids()  # only text-to-image entries can be run again
    rerun = await result(fake, await fake.click(user, message, again))
    assert rerun.embeds[0]["description"] == "a quiet harbour"
    assert "(16:9)" in {field["name"]: field["value"] for field in rerun.embeds[0]["fields"]}["Size"]


async def test_stats_are_for_server_managers(fake: FakeDiscord, start_bot, tmp_path: Path) -> None:
    await start_bot()
    member, manager = fake.add_user("member"), fake.add_user("manager", moderator=True)
    await result(fake, await fake.run_command(member, "imagine", {"prompt": "counted", "count": 3}))
    await fake.wait_for(lambda: rows(tmp_path / "bot.sqlite3")[0][1] == "done")
    refused = await fake.run_command(member, "stats")
    assert "manage this server" in await ephemeral_reply(fake, refused)
    shown = await fake.run_command(manager, "stats")
    await fake.wait_for(lambda: shown.original is not None)
    fields = {field["name"]: field["value"] for field in shown.original.embeds[0]["fields"]}
    assert shown.original.ephemeral
    assert fields["Images"] == "3 today, 3 in 7 days"
    assert fields["Queue now"] == "0 waiting; 1 GPU worker online"
    assert fields["Top users (7 days)"] == f"<@{member}>: 3"
    assert "not_allowed" not in fields["Refused requests (7 days)"]


async def test_queue_shows_waiting_requests_workers_and_your_share(fake: FakeDiscord, start_bot, pipes) -> None:
    runner = RecordingRunner(pipes)
    runner.gate.clear()
    await start_bot(runner=runner, max_batch_images=1)
    ada, bo = fake.add_user("ada"), fake.add_user("bo")
    requests = [
        await fake.run_command(user, "imagine", {"prompt": prompt})
        for user, prompt in ((ada, "first"), (ada, "second"), (bo, "third"))
    ]
    await fake.wait_for(runner.waiting.is_set)
    # A request shows its first status once it is queued; the commands are handled concurrently
    await fake.wait_for(lambda: all(request.original is not None and request.original.content for request in requests))
    try:
        assert await ephemeral_reply(fake, await fake.run_command(ada, "queue")) == (
            "2 requests waiting; 1 GPU worker online.\n2 of the requests waiting or running are yours."
        )
    finally:
        runner.gate.set()
