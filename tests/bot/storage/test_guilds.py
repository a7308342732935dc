from __future__ import annotations

from pathlib import Path

from bot.storage import open_database
from bot.storage.guilds import GuildSettings, GuildSettingsStore


async def test_settings_default_then_persist(tmp_path: Path) -> None:
    path = tmp_path / "bot.sqlite3"
    async with open_database(path) as database:
        store = GuildSettingsStore(database)
        assert await store.get(1) == GuildSettings() and await store.get(None) == GuildSettings()
        await store.update(1, default_count=3, blocklist=("a b", "c*"), allowed_channels=(5, 6))
    async with open_database(path) as database:
        settings = await GuildSettingsStore(database).get(1)
    assert settings == GuildSettings(default_count=3, blocklist=("a b", "c*"), allowed_channels=(5, 6))


def test_blocklist_matches_whole_words_phrases_and_wildcards() -> None:
    rules = GuildSettings(blocklist=("gore", "red wine", "drag*n", "a.b+c"))
    assert rules.blocked_term("lots of GORE here") == "gore"
    assert rules.blocked_term("gorey") is None and rules.blocked_term("a gorge") is None
    assert rules.blocked_term("a glass of red   wine") is None  # a phrase is matched as written
    assert rules.blocked_term("a glass of red wine") == "red wine"
    assert rules.blocked_term("dragon and dragoon") == "drag*n"
    assert rules.blocked_term("literal a.b+c only") == "a.b+c" and rules.blocked_term("aXbbc") is None
