"""The database file: opened once, in WAL mode, migrated to the latest schema at start.

Migrations are `migrations/V{n}__{what}.sql`, applied in order, each in its own transaction; the number of the
last one applied is the file's `PRAGMA user_version`, so a file from any earlier version is brought up to date
and a file from a newer version is refused instead of being misread.
"""

from __future__ import annotations

import contextlib
import re
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import aiosqlite

MIGRATIONS = Path(__file__).with_name("migrations")
MIGRATION_NAME = re.compile(r"V(\d+)__\w+\.sql")


class StorageUnavailable(Exception):
    """The database file cannot be used; the message says which file and why."""


class Database:
    def __init__(self, connection: aiosqlite.Connection) -> None:
        self.connection = connection

    async def schema_version(self) -> int:
        async with self.connection.execute("PRAGMA user_version") as cursor:
            (version,) = await cursor.fetchone()
        return version


def migrations() -> list[tuple[int, Path]]:
    found = []
    for path in MIGRATIONS.iterdir():
        match = MIGRATION_NAME.fullmatch(path.name)
        if match:
            found.append((int(match[1]), path))
    return sorted(found)


async def migrate(connection: aiosqlite.Connection, *, target: int | None = None) -> int:
    """Apply every migration above the file's version (up to `target`); return the version reached."""
    async with connection.execute("PRAGMA user_version") as cursor:
        (version,) = await cursor.fetchone()
    known = migrations()
    latest = known[-1][0] if known else 0
    if version > latest:
        raise StorageUnavailable(f"the database is from a newer lcm-bot (schema {version}, this one knows {latest})")
    for number, path in known:
        if version < number <= (latest if target is None else target):
            # executescript commits first; BEGIN/COMMIT make each migration all-or-nothing.
            await connection.executescript(f"BEGIN;\n{path.read_text()}\nPRAGMA user_version = {number};\nCOMMIT;")
            version = number
    return version


@contextlib.asynccontextmanager
async def open_database(path: Path) -> AsyncIterator[Database]:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        connection = await aiosqlite.connect(path)
    except (OSError, sqlite3.Error) as exc:
        raise StorageUnavailable(f"DATABASE_PATH={path} cannot be opened: {exc}") from None
    try:
        try:
            await connection.execute("PRAGMA journal_mode = WAL")
            await connection.execute("PRAGMA synchronous = NORMAL")  # safe with WAL; a crash loses no commit
            await connection.execute("PRAGMA busy_timeout = 5000")
            await migrate(connection)
        except sqlite3.DatabaseError as exc:
            raise StorageUnavailable(f"DATABASE_PATH={path} is not a usable SQLite database: {exc}") from None
        except StorageUnavailable as exc:
            raise StorageUnavailable(f"DATABASE_PATH={path}: {exc}") from None
        yield Database(connection)
    finally:
        await connection.close()
