"""A fake Discord for end-to-end tests of the real discord.py client (see `server.py`)."""

from tests.fakediscord.server import FakeDiscord, FakeInteraction, FakeMessage
from tests.fakediscord.spec import OpenApiSpec

__all__ = ["FakeDiscord", "FakeInteraction", "FakeMessage", "OpenApiSpec"]
