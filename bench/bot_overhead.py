"""Acknowledgement latency and event-loop lag of the real bot under a burst, against the fake Discord.

    .venv/bin/python -m bench.bot_overhead [--interactions 200] [--users 50]

The fake Discord runs on its own event loop in a second thread, so its work (it validates every body against
the OpenAPI document) does not stall the bot's loop; it still shares the process, the GIL and the two cores
with the bot and the tiny model on the CPU, so the figures are an upper bound for the bot's own. Latency is
from dispatching INTERACTION_CREATE to receiving the bot's acknowledgement; lag is how late a 10 ms ticker on
the bot's event loop wakes up.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import threading
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import discord
from pydantic import SecretStr

from bot.app import LcmBot
from bot.engine.service import load_engine
from bot.settings import Settings
from bot.storage import open_database
from tests.fakediscord import FakeDiscord, OpenApiSpec
from tests.fakediscord.fixtures import connect_bot, make_engine
from tests.support.tiny_model import build_tiny_model

TICK = 0.01
T = TypeVar("T")


class FakeDiscordThread:
    """The fake on its own loop in a daemon thread; `call` runs one of its coroutines from the bot's loop."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, daemon=True).start()
        self.fake = FakeDiscord(OpenApiSpec())

    async def call(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coroutine, self.loop))


async def measure(interactions: int, users: int) -> None:
    remote = FakeDiscordThread()
    fake = remote.fake
    with tempfile.TemporaryDirectory() as folder:
        model = build_tiny_model(Path(folder))
        discord.http.Route.BASE = f"{await remote.call(fake.start())}/api/v10"
        settings = Settings(
            model_base=str(model.base),
            model_unet=str(model.lcm_unet),
            base_resolution=256,
            device="cpu",
            max_batch_images=4,
            queue_max=interactions,
            user_max_pending=-(-interactions // users),
            dev_guild_id=fake.guild_id,
            discord_token=SecretStr("fake-token"),
            _env_file=None,
        )
        pipes, _ = await asyncio.to_thread(load_engine, settings)  # as at a real start: load, freeze
        async with open_database(Path(folder) / "bench.sqlite3") as database:
            bot, connection = await connect_bot(fake, settings, database, make_engine(pipes, settings))
            await run_burst(remote, bot, connection, interactions, users)


async def run_burst(
    remote: FakeDiscordThread, bot: LcmBot, connection: asyncio.Task, interactions: int, users: int
) -> None:
    fake = remote.fake
    lags: list[float] = []
    stop = asyncio.Event()

    async def ticker() -> None:
        while not stop.is_set():
            before = time.perf_counter()
            await asyncio.sleep(TICK)
            lags.append(time.perf_counter() - before - TICK)

    ticking = asyncio.create_task(ticker())
    member_ids = [fake.add_user(f"user{index}") for index in range(users)]
    started = time.perf_counter()
    sent = [
        await remote.call(fake.run_command(member_ids[index % users], "imagine", {"prompt": f"burst {index}"}))
        for index in range(interactions)
    ]
    await remote.call(fake.wait_for(lambda: all(any(m.attachments for m in i.messages()) for i in sent), 1800))
    elapsed = time.perf_counter() - started
    stop.set()
    await ticking
    await bot.close()
    await connection
    await remote.call(fake.stop())

    latencies = sorted(i.ack_latency * 1000 for i in sent)
    p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
    print(f"{interactions} /imagine interactions from {users} users, tiny model at 256 px on the CPU")
    print("| measure                          | value    | target   |")
    print("|----------------------------------|----------|----------|")
    print(f"| acknowledgement p50, ms          | {statistics.median(latencies):8.1f} |          |")
    print(f"| acknowledgement p99, ms          | {p99:8.1f} | < 250    |")
    print(f"| acknowledgement max, ms          | {latencies[-1]:8.1f} | < 3000   |")
    print(f"| event loop worst lag, ms         | {max(lags) * 1000:8.1f} | < 50     |")
    print(f"| all delivered after, s           | {elapsed:8.1f} |          |")
    print(f"| spec violations                  | {len(fake.violations):8d} | 0        |")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--interactions", type=int, default=200)
    parser.add_argument("--users", type=int, default=50)
    args = parser.parse_args()
    asyncio.run(measure(args.interactions, args.users))


if __name__ == "__main__":
    main()
