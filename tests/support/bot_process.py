"""`python -m tests.support.bot_process`: the production entry point (`lcm-bot`), pointed at a fake Discord.

A separate process, so that a test can SIGKILL the bot mid-job and start it again, or read its HTTP endpoints.
Only the API base URL differs from production; everything else comes from the environment like a real
deployment. `start_bot_process` starts one and waits until it has identified to the fake gateway.
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tests.fakediscord import FakeDiscord
    from tests.support.tiny_model import TinyModel

REPOSITORY = Path(__file__).resolve().parents[2]


async def start_bot_process(
    fake: FakeDiscord, model: TinyModel, database: Path, **settings: str
) -> asyncio.subprocess.Process:
    """`settings` are extra environment variables (`USER_MAX_PENDING="6"`)."""
    environment = {
        **os.environ,
        "PYTHONPATH": str(REPOSITORY),
        "FAKE_DISCORD_URL": fake.base_url,
        "DISCORD_TOKEN": "fake-token",
        "DEV_GUILD_ID": str(fake.guild_id),
        "MODEL_BASE": str(model.base),
        "MODEL_UNET": str(model.lcm_unet),
        "BASE_RESOLUTION": "256",
        "DEVICE": "cpu",
        "DATABASE_PATH": str(database),
        "HF_HUB_OFFLINE": "1",
        "LOG_LEVEL": "WARNING",
        **settings,
    }
    fake.identified.clear()
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.support.bot_process", cwd=REPOSITORY, env=environment
    )
    await asyncio.wait_for(fake.identified.wait(), 120)
    return process


if __name__ == "__main__":
    import discord

    from bot.__main__ import main

    discord.http.Route.BASE = os.environ["FAKE_DISCORD_URL"] + "/api/v10"
    sys.exit(main([]))
