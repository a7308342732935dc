"""`python -m tests.support.bot_process`: the production entry point (`lcm-bot`), pointed at a fake Discord.

A separate process, so that a test can SIGKILL the bot mid-job and start it again. Only the API base URL
differs from production; everything else comes from the environment like a real deployment.
"""

import os
import sys

import discord

from bot.__main__ import main

if __name__ == "__main__":
    discord.http.Route.BASE = os.environ["FAKE_DISCORD_URL"] + "/api/v10"
    sys.exit(main([]))
