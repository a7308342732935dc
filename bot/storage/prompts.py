"""Shared prompts: what members share from their results, browsed, searched and liked by their server."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from enum import StrEnum

from bot.storage.database import Database


class Sort(StrEnum):
    TOP = "top"
    NEW = "new"


@dataclass(frozen=True)
class SharedPrompt:
    id: int
    guild_id: int
    author_id: int
    author_name: str
    created_at: float
    prompt: str
    negative: str | None
    parameters: dict[str, object]
    seed: int
    thumbnail: bytes
    gallery_channel_id: int | None
    gallery_message_id: int | None
    likes: int


COLUMNS = (
    "id, guild_id, author_id, author_name, created_at, prompt, negative, parameters, seed, thumbnail,"
    " gallery_channel_id, gallery_message_id, likes"
)


class SharedPrompts:
    def __init__(self, database: Database) -> None:
        self._db = database.connection

    async def share(
        self,
        *,
        guild_id: int,
        author_id: int,
        author_name: str,
        prompt: str,
        negative: str | None,
        parameters: dict[str, object],
        seed: int,
        thumbnail: bytes,
    ) -> int:
        async with self._db.execute(
            "INSERT INTO shared_prompts (guild_id, author_id, author_name, created_at, prompt, negative, parameters,"
            " seed, thumbnail) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (guild_id, author_id, author_name, time.time(), prompt, negative, json.dumps(parameters), seed, thumbnail),
        ) as cursor:
            prompt_id = cursor.lastrowid
        await self._db.commit()
        return prompt_id

    async def set_gallery_message(self, prompt_id: int, channel_id: int, message_id: int) -> None:
        await self._db.execute(
            "UPDATE shared_prompts SET gallery_channel_id = ?, gallery_message_id = ? WHERE id = ?",
            (channel_id, message_id, prompt_id),
        )
        await self._db.commit()

    async def get(self, prompt_id: int) -> SharedPrompt | None:
        async with self._db.execute(f"SELECT {COLUMNS} FROM shared_prompts WHERE id = ?", (prompt_id,)) as cursor:
            row = await cursor.fetchone()
        return None if row is None else _shared(row)

    async def page(
        self, guild_id: int, *, sort: Sort, offset: int, query: str = "", author_id: int | None = None
    ) -> tuple[SharedPrompt | None, int]:
        """The prompt at `offset` in this order, and how many match in all."""
        where = ["guild_id = ?"]
        parameters: list[object] = [guild_id]
        if query:
            where.append("prompt LIKE ? ESCAPE '\\'")
            parameters.append("%" + query.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%")
        if author_id is not None:
            where.append("author_id = ?")
            parameters.append(author_id)
        condition = " AND ".join(where)
        order = "likes DESC, created_at DESC" if sort is Sort.TOP else "created_at DESC"
        async with self._db.execute(f"SELECT COUNT(*) FROM shared_prompts WHERE {condition}", parameters) as cursor:
            (total,) = await cursor.fetchone()
        async with self._db.execute(
            f"SELECT {COLUMNS} FROM shared_prompts WHERE {condition} ORDER BY {order}, id DESC LIMIT 1 OFFSET ?",
            [*parameters, offset],
        ) as cursor:
            row = await cursor.fetchone()
        return (None if row is None else _shared(row)), total

    async def toggle_like(self, prompt_id: int, user_id: int) -> tuple[bool, int]:
        """Like, or take back a like; returns (liked now, likes). One statement each: safe when two members
        press at the same moment, and the count is recomputed rather than incremented."""
        async with self._db.execute(
            "INSERT OR IGNORE INTO prompt_likes (prompt_id, user_id) SELECT ?, ? WHERE EXISTS"
            " (SELECT 1 FROM shared_prompts WHERE id = ?)",
            (prompt_id, user_id, prompt_id),
        ) as cursor:
            liked = cursor.rowcount == 1
        if not liked:
            await self._db.execute("DELETE FROM prompt_likes WHERE prompt_id = ? AND user_id = ?", (prompt_id, user_id))
        await self._db.execute(
            "UPDATE shared_prompts SET likes = (SELECT COUNT(*) FROM prompt_likes WHERE prompt_id = ?) WHERE id = ?",
            (prompt_id, prompt_id),
        )
        await self._db.commit()
        async with self._db.execute("SELECT likes FROM shared_prompts WHERE id = ?", (prompt_id,)) as cursor:
            row = await cursor.fetchone()
        return liked, (row[0] if row else 0)

    async def unshare(self, prompt_id: int) -> None:
        await self._db.execute("DELETE FROM prompt_likes WHERE prompt_id = ?", (prompt_id,))
        await self._db.execute("DELETE FROM shared_prompts WHERE id = ?", (prompt_id,))
        await self._db.commit()


def _shared(row: tuple) -> SharedPrompt:
    values = list(row)
    values[7] = json.loads(values[7])
    return SharedPrompt(*values)
