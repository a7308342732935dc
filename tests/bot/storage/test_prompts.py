from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from bot.storage import open_database
from bot.storage.prompts import SharedPrompts, Sort


@pytest.fixture
async def prompts(tmp_path: Path):
    async with open_database(tmp_path / "bot.sqlite3") as database:
        yield SharedPrompts(database)


async def share(prompts: SharedPrompts, prompt: str, *, author: int = 1, guild: int = 7) -> int:
    return await prompts.share(
        guild_id=guild, author_id=author, author_name="a", prompt=prompt, negative=None,
        parameters={"aspect": "1:1"}, seed=3, thumbnail=b"jpeg",
    )  # fmt: skip


async def test_paging_sorting_and_search(prompts: SharedPrompts) -> None:
    first, second, third = [await share(prompts, text) for text in ("a red fox", "a blue owl", "100% red_wine")]
    await share(prompts, "other server", guild=8)
    await prompts.toggle_like(second, 50)
    pages = [await prompts.page(7, sort=Sort.TOP, offset=index) for index in range(4)]
    assert [page[0].id if page[0] else None for page in pages] == [second, third, first, None]
    assert {total for _, total in pages} == {3}
    newest, _ = await prompts.page(7, sort=Sort.NEW, offset=0)
    assert newest.id == third
    found, total = await prompts.page(7, sort=Sort.NEW, offset=0, query="red")
    assert total == 2 and found.id == third
    assert (await prompts.page(7, sort=Sort.NEW, offset=0, query="0% red_"))[1] == 1  # % and _ are literal
    assert (await prompts.page(7, sort=Sort.NEW, offset=0, query="d_w"))[1] == 1
    assert (await prompts.page(7, sort=Sort.NEW, offset=0, query="d%w"))[1] == 0
    mine, mine_total = await prompts.page(7, sort=Sort.NEW, offset=0, author_id=2)
    assert mine is None and mine_total == 0


async def test_likes_toggle_and_survive_a_race(prompts: SharedPrompts) -> None:
    prompt_id = await share(prompts, "liked")
    results = await asyncio.gather(prompts.toggle_like(prompt_id, 1), prompts.toggle_like(prompt_id, 2))
    assert all(liked for liked, _ in results)
    assert (await prompts.get(prompt_id)).likes == 2
    assert await prompts.toggle_like(prompt_id, 1) == (False, 1)
    await prompts.unshare(prompt_id)
    assert await prompts.get(prompt_id) is None
    assert await prompts.toggle_like(prompt_id, 3) == (False, 0)


async def test_prompts_are_stored_verbatim(prompts: SharedPrompts) -> None:
    tricky = "'); DROP TABLE shared_prompts; -- " + "é" * 960
    stored = await prompts.get(await share(prompts, tricky))
    assert stored.prompt == tricky and stored.thumbnail == b"jpeg"
