"""The database under load: 100,000 usage rows and 20,000 shared prompts, then /stats, /history and
/prompts browse timed.

    .venv/bin/python -m bench.storage [--rows 100000] [--shared 20000]

Rows spread over 30 days, 20 guilds and 2,000 users, like a busy shared bot; the guild and user asked about
are typical ones. Each query is run 20 times and the median and worst are printed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from bot.storage import open_database
from bot.storage.prompts import SharedPrompts, Sort
from bot.storage.usage import Status, UsageLog

GUILDS = 20
USERS = 2000
DAYS = 30
REPEATS = 20


async def fill(log_connection, rows: int) -> None:
    rng = random.Random(1)
    now = time.time()
    statuses = [Status.DONE] * 17 + [Status.REJECTED, Status.FAILED, Status.CANCELLED]
    batch = []
    for _ in range(rows):
        status = rng.choice(statuses)
        done = status is Status.DONE
        batch.append(
            (
                now - rng.random() * DAYS * 86400,
                rng.randrange(USERS),
                rng.randrange(GUILDS),
                1,
                "imagine",
                "a prompt " * rng.randrange(1, 20),
                json.dumps({"aspect": "1:1", "steps": 4, "guidance": 1.0, "strength": 1.0, "count": 1}),
                status,
                rng.randrange(1, 5) if done else 0,
                rng.random() * 30 if done else None,
                0.3 + rng.random() if done else None,
                None if done else "too_many_pending",
            )
        )
    await log_connection.executemany(
        "INSERT INTO requests (created_at, user_id, guild_id, channel_id, command, prompt, parameters, status,"
        " image_count, queue_wait, generation_time, reason) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        batch,
    )
    await log_connection.commit()


async def fill_shared(connection, count: int) -> None:
    rng = random.Random(2)
    now = time.time()
    words = ["fox", "owl", "castle", "harbour", "neon", "forest", "dragon", "lantern", "storm", "garden"]
    await connection.executemany(
        "INSERT INTO shared_prompts (guild_id, author_id, author_name, created_at, prompt, parameters, seed,"
        " thumbnail, likes) VALUES (?, ?, 'member', ?, ?, '{}', 1, ?, ?)",
        [
            (
                rng.randrange(GUILDS),
                rng.randrange(USERS),
                now - rng.random() * DAYS * 86400,
                " ".join(rng.choice(words) for _ in range(6)),
                b"\xff" * 8000,  # a thumbnail's size
                rng.randrange(50),
            )
            for _ in range(count)
        ],
    )
    await connection.commit()


async def timed(query: Callable[[], Awaitable[object]]) -> tuple[float, float]:
    times = []
    for _ in range(REPEATS):
        start = time.perf_counter()
        await query()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times), max(times)


async def measure(rows: int, shared: int) -> None:
    with tempfile.TemporaryDirectory() as folder:
        async with open_database(Path(folder) / "bench.sqlite3") as database:
            log = UsageLog(database)
            start = time.perf_counter()
            await fill(database.connection, rows)
            await fill_shared(database.connection, shared)
            filled = time.perf_counter() - start
            prompts = SharedPrompts(database)
            results = {
                "/stats (one guild, 7 days)": await timed(lambda: log.stats(7)),
                "/history (one user, last 10)": await timed(lambda: log.history(42)),
                "/prompts browse top, page 30": await timed(lambda: prompts.page(7, sort=Sort.TOP, offset=30)),
                "/prompts browse new, page 30": await timed(lambda: prompts.page(7, sort=Sort.NEW, offset=30)),
                "/prompts browse search": await timed(lambda: prompts.page(7, sort=Sort.TOP, offset=0, query="neon")),
                "/prompts mine": await timed(lambda: prompts.page(7, sort=Sort.NEW, offset=0, author_id=42)),
                "record + finish one request": await timed(lambda: _record_and_finish(log)),
            }
    print(f"{rows} usage rows and {shared} shared prompts over {DAYS} days, {GUILDS} guilds, {USERS} users")
    print(f"(inserted in {filled:.1f} s)")
    print(f"| {'query':<30} | {'median ms':>9} | {'worst ms':>8} | target |")
    print(f"|{'-' * 32}|{'-' * 11}|{'-' * 10}|--------|")
    for name, (median, worst) in results.items():
        print(f"| {name:<30} | {median:9.2f} | {worst:8.2f} | < 50   |")


async def _record_and_finish(log: UsageLog) -> None:
    row = await log.record(
        user_id=1,
        guild_id=7,
        channel_id=1,
        command="imagine",
        prompt="x",
        negative=None,
        parameters={},
        status=Status.QUEUED,
    )
    await log.finish(row, Status.DONE, image_count=1, queue_wait=1.0, generation_time=0.5)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--shared", type=int, default=20_000)
    args = parser.parse_args()
    asyncio.run(measure(args.rows, args.shared))


if __name__ == "__main__":
    main()
