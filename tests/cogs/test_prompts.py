"""Community prompts end to end: share to the gallery, browse and search, likes, reuse, unshare."""

from __future__ import annotations

import asyncio
import io

from PIL import Image

from tests.cogs.test_generate import ephemeral_reply, result
from tests.cogs.test_guild_settings import settings_reply
from tests.fakediscord import FakeDiscord, FakeMessage


async def make_and_share(fake: FakeDiscord, user: int, prompt: str) -> FakeMessage:
    message = await result(fake, await fake.run_command(user, "imagine", {"prompt": prompt, "aspect": "16:9"}))
    shared = await fake.click(user, message, "lcm:share")
    await fake.wait_for(lambda: any(m.content.startswith("Shared") for m in shared.messages()))
    return message


async def browse_page(fake: FakeDiscord, user: int, options: dict | None = None) -> FakeMessage:
    interaction = await fake.run_command(user, "prompts browse", options or {})
    await fake.wait_for(lambda: interaction.original is not None)
    return interaction.original


def page_title(message: FakeMessage) -> str:
    return message.embeds[0]["title"] if message.embeds else message.content


async def test_share_posts_to_the_gallery_with_a_stored_thumbnail(fake: FakeDiscord, start_bot) -> None:
    await start_bot()
    manager, author = fake.add_user("manager", moderator=True), fake.add_user("author")
    await settings_reply(fake, await fake.run_command(manager, "settings gallery", {"channel": fake.other_channel_id}))
    await make_and_share(fake, author, "a paper boat")
    [posted] = [message for message in fake.channel_messages(fake.other_channel_id)]
    assert posted.embeds[0]["description"] == "a paper boat"
    assert posted.custom_ids()[:2] == ["lcm:like:1", "lcm:use:1"]
    with Image.open(io.BytesIO(posted.files[posted.attachments[0]["id"]])) as thumbnail:
        assert thumbnail.format == "JPEG" and max(thumbnail.size) <= 256
    fake.files.clear()  # Discord's attachment URLs expire: browsing must not need them
    page = await browse_page(fake, author)
    assert page.embeds[0]["description"] == "a paper boat" and page.attachments and page.ephemeral


async def test_browse_pages_sorts_and_searches(fake: FakeDiscord, start_bot) -> None:
    await start_bot()
    users = [fake.add_user(f"user{index}") for index in range(3)]
    for user, prompt in zip(users, ("red fox", "blue owl", "red kite"), strict=True):
        await make_and_share(fake, user, prompt)
    first = await browse_page(fake, users[0], {"sort": "new"})
    assert page_title(first) == "Shared prompt 1 of 3" and first.embeds[0]["description"] == "red kite"
    following = await fake.click(users[0], first, "lcm:page:new:1:0:Next")
    await fake.wait_for(lambda: first.embeds[0]["description"] == "blue owl")
    assert following.callback_type == 7 and page_title(first) == "Shared prompt 2 of 3"
    await fake.click(users[0], first, "lcm:page:new:0:0:Previous")
    await fake.wait_for(lambda: first.embeds[0]["description"] == "red kite")

    search = await browse_page(fake, users[1], {"sort": "new", "query": "red"})
    assert page_title(search) == "Shared prompt 1 of 2" and search.embeds[0]["footer"]["text"] == "Search: red"
    await fake.click(users[1], search, "lcm:page:new:1:0:Next")
    await fake.wait_for(lambda: search.embeds[0]["description"] == "red fox")

    mine = await fake.run_command(users[1], "prompts mine")
    await fake.wait_for(lambda: mine.original is not None)
    assert page_title(mine.original) == "Your prompt 1 of 1" and mine.original.embeds[0]["description"] == "blue owl"


async def test_likes_from_two_members_at_once_and_top_order(fake: FakeDiscord, start_bot) -> None:
    await start_bot()
    author, first_fan, second_fan = (fake.add_user(name) for name in ("author", "fan1", "fan2"))
    await make_and_share(fake, author, "older but loved")
    await make_and_share(fake, author, "newer")
    page = await browse_page(fake, first_fan, {"sort": "new"})
    await fake.click(first_fan, page, "lcm:page:new:1:0:Next")
    await fake.wait_for(lambda: page.embeds[0]["description"] == "older but loved")
    [like] = [custom_id for custom_id in page.custom_ids() if custom_id.startswith("lcm:like:")]
    clicks = await asyncio.gather(fake.click(first_fan, page, like), fake.click(second_fan, page, like))
    replies = [await ephemeral_reply(fake, click) for click in clicks]
    assert all("You like this prompt" in reply for reply in replies)
    top = await browse_page(fake, author, {"sort": "top"})
    assert top.embeds[0]["description"] == "older but loved"
    assert {f["name"]: f["value"] for f in top.embeds[0]["fields"]}["Likes"] == "2"
    undo = await fake.click(first_fan, top, like)
    assert "Like taken back (1 likes)" in await ephemeral_reply(fake, undo)


async def test_use_this_prompt_runs_under_the_pressers_limits(fake: FakeDiscord, start_bot) -> None:
    await start_bot(user_images_per_hour=2)
    author, user, spent = fake.add_user("author"), fake.add_user("user"), fake.add_user("spent")
    await make_and_share(fake, author, "a lantern festival")
    await result(fake, await fake.run_command(spent, "imagine", {"prompt": "use up", "count": 2}))
    page = await browse_page(fake, user)
    [use] = [custom_id for custom_id in page.custom_ids() if custom_id.startswith("lcm:use:")]
    made = await result(fake, await fake.click(user, page, use))
    assert made.embeds[0]["description"] == "a lantern festival"
    assert "Prompt shared by author." in made.content
    refused = await fake.click(spent, page, use)
    assert "used your 2 images" in await ephemeral_reply(fake, refused)


async def test_unshare_is_for_the_author_and_moderators(fake: FakeDiscord, start_bot) -> None:
    await start_bot()
    manager, author, other = fake.add_user("mod", moderator=True), fake.add_user("author"), fake.add_user("other")
    await settings_reply(fake, await fake.run_command(manager, "settings gallery", {"channel": fake.other_channel_id}))
    await make_and_share(fake, author, "first")
    await make_and_share(fake, author, "second")
    page = await browse_page(fake, other, {"sort": "new"})
    [unshare] = [custom_id for custom_id in page.custom_ids() if custom_id.startswith("lcm:unshare:")]
    assert "Only the member who shared" in await ephemeral_reply(fake, await fake.click(other, page, unshare))
    assert "Unshared" in await ephemeral_reply(fake, await fake.click(author, page, unshare))
    remaining = await browse_page(fake, manager, {"sort": "new"})
    assert remaining.embeds[0]["description"] == "first"
    [unshare_first] = [custom_id for custom_id in remaining.custom_ids() if custom_id.startswith("lcm:unshare:")]
    assert "Unshared" in await ephemeral_reply(fake, await fake.click(manager, remaining, unshare_first))
    assert not fake.channel_messages(fake.other_channel_id)  # the gallery posts went with them
    empty = await browse_page(fake, other)
    assert empty.content == "Nothing shared yet."


async def test_sql_looking_and_long_prompts_are_shown_verbatim(fake: FakeDiscord, start_bot) -> None:
    await start_bot()
    author = fake.add_user("author")
    tricky = "'); DROP TABLE shared_prompts; -- *bold* " + "word " * 190
    await make_and_share(fake, author, tricky.strip())
    page = await browse_page(fake, author)
    assert page.embeds[0]["description"] == tricky.strip()
