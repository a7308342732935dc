"""Per-guild settings: what a server's managers change with /settings, stored as one JSON row per guild."""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass

from bot.storage.database import Database


@dataclass(frozen=True)
class GuildSettings:
    default_count: int = 1
    user_images_per_hour: int | None = None  # None: the bot-wide setting
    guild_images_per_hour: int | None = None
    allowed_channels: tuple[int, ...] = ()  # empty: every channel
    blocklist: tuple[str, ...] = ()  # words or phrases; `*` matches any letters
    spoilers_outside_nsfw: bool = False
    gallery_channel: int | None = None  # where shared prompts are posted

    def blocked_term(self, text: str) -> str | None:
        """The first blocklist entry found in `text` as a whole word or phrase, ignoring case."""
        for term in self.blocklist:
            if _term_pattern(term).search(text):
                return term
        return None


def _term_pattern(term: str) -> re.Pattern[str]:
    # Escaped, so a moderator's entry can never be a slow or broken regular expression; `*` is the one wildcard.
    body = r"\w*".join(re.escape(part) for part in term.split("*"))
    return re.compile(rf"(?<!\w){body}(?!\w)", re.IGNORECASE)


class GuildSettingsStore:
    """Read on every request before it is acknowledged, so kept in memory; this process is the only writer."""

    def __init__(self, database: Database) -> None:
        self._db = database.connection
        self._cache: dict[int, GuildSettings] = {}

    async def get(self, guild_id: int | None) -> GuildSettings:
        if guild_id is None:
            return GuildSettings()
        if guild_id not in self._cache:
            self._cache[guild_id] = await self._load(guild_id)
        return self._cache[guild_id]

    async def _load(self, guild_id: int) -> GuildSettings:
        async with self._db.execute("SELECT settings FROM guild_settings WHERE guild_id = ?", (guild_id,)) as cursor:
            row = await cursor.fetchone()
        if row is None:
            return GuildSettings()
        stored = json.loads(row[0])
        known = {item.name for item in dataclasses.fields(GuildSettings)}
        values = {
            key: tuple(value) if isinstance(value, list) else value for key, value in stored.items() if key in known
        }
        return GuildSettings(**values)

    async def update(self, guild_id: int, **changes: object) -> GuildSettings:
        updated = dataclasses.replace(await self.get(guild_id), **changes)
        await self._db.execute(
            "INSERT INTO guild_settings (guild_id, settings) VALUES (?, ?)"
            " ON CONFLICT (guild_id) DO UPDATE SET settings = excluded.settings",
            (guild_id, json.dumps(dataclasses.asdict(updated))),
        )
        await self._db.commit()
        self._cache[guild_id] = updated
        return updated
