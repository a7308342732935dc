from __future__ import annotations

import sqlite3
from pathlib import Path

import aiosqlite
import pytest

from bot.storage.database import StorageUnavailable, migrate, migrations, open_database


async def test_migrates_an_empty_file_to_the_latest_schema_in_wal_mode(tmp_path: Path) -> None:
    async with open_database(tmp_path / "new" / "bot.sqlite3") as database:
        assert await database.schema_version() == migrations()[-1][0]
        async with database.connection.execute("PRAGMA journal_mode") as cursor:
            assert (await cursor.fetchone())[0] == "wal"


@pytest.mark.parametrize("start", [0, *(number for number, _ in migrations()[:-1])])
async def test_migrates_from_every_earlier_version_keeping_rows(tmp_path: Path, start: int) -> None:
    path = tmp_path / "old.sqlite3"
    async with aiosqlite.connect(path) as connection:
        assert await migrate(connection, target=start) == start
        if start >= 1:  # a file that was in use: one request already logged
            await connection.execute(
                "INSERT INTO requests (created_at, user_id, command, prompt, parameters, status)"
                " VALUES (1.0, 5, 'imagine', 'kept', '{}', 'done')"
            )
            await connection.commit()
    async with open_database(path) as database:
        assert await database.schema_version() == migrations()[-1][0]
        async with database.connection.execute("SELECT prompt FROM requests") as cursor:
            assert [row[0] for row in await cursor.fetchall()] == (["kept"] if start >= 1 else [])


async def test_reopening_is_idempotent(tmp_path: Path) -> None:
    path = tmp_path / "bot.sqlite3"
    for _ in range(2):
        async with open_database(path) as database:
            assert await database.schema_version() == migrations()[-1][0]


async def test_corrupt_file_is_one_clear_line(tmp_path: Path) -> None:
    path = tmp_path / "bot.sqlite3"
    path.write_bytes(b"this is not a database" * 100)
    with pytest.raises(StorageUnavailable, match=r"DATABASE_PATH=.*bot.sqlite3 is not a usable SQLite database"):
        async with open_database(path):
            pass


async def test_unusable_path_is_one_clear_line(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("a file where a folder should be")
    with pytest.raises(StorageUnavailable, match="DATABASE_PATH="):
        async with open_database(blocker / "bot.sqlite3"):
            pass


async def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "future.sqlite3"
    with sqlite3.connect(path) as connection:
        connection.execute("PRAGMA user_version = 999")
    with pytest.raises(StorageUnavailable, match="newer lcm-bot"):
        async with open_database(path):
            pass
