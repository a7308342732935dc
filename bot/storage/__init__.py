"""SQLite storage: one aiosqlite connection, numbered migrations, one small module per area. No SQL elsewhere."""

from bot.storage.database import Database, StorageUnavailable, open_database

__all__ = ["Database", "StorageUnavailable", "open_database"]
