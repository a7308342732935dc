"""/imagine, /remix, /inpaint and their buttons, end to end: the real bot against the fake Discord."""

from __future__ import annotations

import asyncio
import io
import logging
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from tests.fakediscord import FakeDiscord, FakeInteraction, FakeMessage
from tests.support.runners import RecordingRunner


def encoded(image: Image.Image, fmt: str = "PNG", **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def photo(size: tuple[int, int] = (640, 480)) -> Image.Image:
    gradient = np.linspace(0, 255, size[0] * size[1] * 3).reshape(size[1], size[0], 3).astype(np.uint8)
    return Image.fromarray(gradient)


def upload(fake: FakeDiscord, image: Image.Image, name: str = "photo.png", fmt: str = "PNG") -> dict:
    return fake.upload(name, encoded(image, fmt), width=image.width, height=image.height)


async def result(fake: FakeDiscord, interaction: FakeInteraction) -> FakeMessage:
    """The message holding the interaction's images, wherever it was delivered."""

    def delivered() -> FakeMessage | None:
        for message in interaction.messages():
            if message.attachments:
                return message
        for message in fake.channel_messages(interaction.channel_id):
            if message.attachments and f"<@{interaction.user_id}>" in message.content:
                return message
        return None

    await fake.wait_for(delivered)
    return delivered()


async def ephemeral_reply(fake: FakeDiscord, interaction: FakeInteraction) -> str:
    def reply() -> FakeMessage | None:
        return next((message for message in interaction.messages() if message.ephemeral and message.content), None)

    await fake.wait_for(reply, timeout=15)
    assert all(message.ephemeral for message in interaction.messages()), "a public message was left behind"
    return reply().content


# -- registration -------------------------------------------------------------------------------------------------


async def test_commands_are_registered_with_the_design_options(fake: FakeDiscord, start_bot) -> None:
    await start_bot()
    expected = {
        "imagine": ["prompt", "negative", "aspect", "steps", "guidance", "seed", "count", "style"],
        "remix": ["image", "prompt", "strength", "negative", "steps", "seed", "style"],
        "inpaint": ["image", "prompt", "mask", "strength", "negative", "steps", "seed", "style", "mask_prompt"],
    }
    for name, option_names in expected.items():
        command = fake.registered(name, fake.guild_id)
        options = command["options"]
        assert [option["name"] for option in options] == option_names
        assert 1 <= len(command["description"]) <= 100
        assert all(1 <= len(option["description"]) <= 100 for option in options)
        required = [option.get("required", False) for option in options]
        assert required == sorted(required, reverse=True), "required options must come first"
    imagine = {option["name"]: option for option in fake.registered("imagine", fake.guild_id)["options"]}
    assert [choice["value"] for choice in imagine["aspect"]["choices"]] == [
        "1:1", "4:3", "3:4", "3:2", "2:3", "16:9", "9:16",
    ]  # fmt: skip
    assert (imagine["steps"]["min_value"], imagine["steps"]["max_value"]) == (1, 8)
    assert (imagine["count"]["min_value"], imagine["count"]["max_value"]) == (1, 4)
    assert (imagine["guidance"]["min_value"], imagine["guidance"]["max_value"]) == (0, 2)
    assert imagine["style"]["autocomplete"] is True
    remix = {option["name"]: option for option in fake.registered("remix", fake.guild_id)["options"]}
    assert remix["image"]["type"] == 11 and remix["image"]["required"]
    assert (remix["strength"]["min_value"], remix["strength"]["max_value"]) == (0.05, 1)


# -- the three commands -------------------------------------------------------------------------------------------


async def test_imagine_delivers_pngs_with_an_embed_and_buttons(fake: FakeDiscord, start_bot, buckets) -> None:
    await start_bot()
    alice = fake.add_user("alice")
    interaction = await fake.run_command(
        alice, "imagine", {"prompt": "a red fox", "aspect": "16:9", "count": 2, "seed": 5}
    )
    message = await result(fake, interaction)
    assert [image.size for image in message.images()] == [buckets["16:9"]] * 2
    assert all(image.format == "PNG" and image.text["prompt"] == "a red fox" for image in message.images())
    embed = message.embeds[0]
    fields = {field["name"]: field["value"] for field in embed["fields"]}
    assert embed["title"] == "/imagine" and embed["description"] == "a red fox"
    assert fields["Seeds"] == "`5` `6`" and fields["Steps"] == "4"
    assert fields["Size"] == f"{buckets['16:9'][0]}x{buckets['16:9'][1]} (16:9)"
    assert "s generating" in fields["Time"] and "in queue" in fields["Time"]
    assert message.custom_ids() == [
        "lcm:variation:0",
        "lcm:variation:1",
        "lcm:reroll",
        "lcm:remix",
        "lcm:share",
        f"lcm:delete:{alice}",
    ]
    assert not message.ephemeral and interaction.ack_latency < 1.0


async def test_remix_fits_the_image_to_its_bucket(fake: FakeDiscord, start_bot, buckets) -> None:
    await start_bot()
    user = fake.add_user("bob")
    interaction = await fake.run_command(user, "remix", {"image": upload(fake, photo((640, 480))), "prompt": "in snow"})
    message = await result(fake, interaction)
    assert [image.size for image in message.images()] == [buckets["4:3"]]
    fields = {field["name"]: field["value"] for field in message.embeds[0]["fields"]}
    assert fields["Strength"] == "0.6" and fields["Steps"] == "4 (2 run)"


async def test_inpaint_with_a_mask_and_with_transparency(fake: FakeDiscord, start_bot, buckets) -> None:
    await start_bot()
    user = fake.add_user("carol")
    mask = Image.new("L", (480, 640), 0)
    mask.paste(255, (0, 0, 240, 640))
    with_mask = await fake.run_command(
        user,
        "inpaint",
        {"image": upload(fake, photo((480, 640))), "mask": upload(fake, mask, "mask.png"), "prompt": "a door"},
    )
    assert [image.size for image in (await result(fake, with_mask)).images()] == [buckets["3:4"]]
    holed = photo((500, 500)).convert("RGBA")
    holed.paste((0, 0, 0, 0), (100, 100, 300, 300))
    transparent = await fake.run_command(user, "inpaint", {"image": upload(fake, holed), "prompt": "a window"})
    assert [image.size for image in (await result(fake, transparent)).images()] == [buckets["1:1"]]


async def test_works_in_direct_messages(fake: FakeDiscord, start_bot) -> None:
    bot = await start_bot()
    await bot.tree.sync()  # global commands, as `lcm-bot sync` registers them
    user = fake.add_user("dm-user")
    interaction = await fake.run_command(user, "imagine", {"prompt": "a lighthouse"}, dm=True)
    message = await result(fake, interaction)
    assert message.channel_id != fake.channel_id and len(message.attachments) == 1


async def test_long_prompt_is_flagged(fake: FakeDiscord, start_bot) -> None:
    await start_bot()
    user = fake.add_user("verbose")
    interaction = await fake.run_command(user, "imagine", {"prompt": "a very long prompt " * 8})
    message = await result(fake, interaction)
    assert "model reads only the first 75" in message.content


# -- queueing -----------------------------------------------------------------------------------------------------


async def test_acknowledgement_is_immediate_while_the_gpu_is_busy(fake: FakeDiscord, start_bot, pipes) -> None:
    runner = RecordingRunner(pipes)
    runner.gate.clear()
    await start_bot(runner=runner)
    first_user, second_user = fake.add_user("first"), fake.add_user("second")
    first = await fake.run_command(first_user, "imagine", {"prompt": "busy"})
    await fake.wait_for(runner.waiting.is_set)
    second = await fake.run_command(second_user, "imagine", {"prompt": "waiting"})
    await fake.wait_for(lambda: second.original is not None and "Queued" in second.original.content)
    assert second.ack_latency < 1.0
    assert second.original.content.startswith("Queued: position 1")
    assert second.original.custom_ids() == [f"lcm:cancel:{second_user}:{second.original.custom_ids()[0][-12:]}"]
    runner.gate.set()
    await result(fake, first)
    await result(fake, second)


async def test_burst_from_eight_users_is_served_fairly_and_fully(fake: FakeDiscord, start_bot, pipes) -> None:
    runner = RecordingRunner(pipes)
    runner.gate.clear()
    await start_bot(runner=runner, user_max_pending=3, max_batch_images=4)
    users = [fake.add_user(f"user{index}") for index in range(8)]
    jobs_per_user = [3, 3, 3, 3, 2, 2, 2, 2]
    commands = [
        fake.run_command(user, "imagine", {"prompt": f"u{index} job{job}"})
        for job in range(3)
        for index, user in enumerate(users)
        if job < jobs_per_user[index]
    ]
    interactions = [await command for command in commands]
    assert len(interactions) == 20
    # Every job queued (its status shown) while the first batch holds the GPU; then let the GPU go.
    await fake.wait_for(lambda: all(i.original is not None and i.original.content for i in interactions))
    runner.gate.set()
    messages = await asyncio.gather(*(result(fake, interaction) for interaction in interactions))
    assert all(len(message.attachments) == 1 for message in messages)
    served_ordinals, seen = [], {}
    for prompt in runner.prompts:
        user = prompt.split()[0]
        served_ordinals.append(seen.get(user, 0))
        seen[user] = seen.get(user, 0) + 1
    assert served_ordinals == sorted(served_ordinals), f"unfair order: {runner.prompts}"
    assert max(len(batch) for batch in runner.batches) == 4


async def test_cancel_is_for_the_author_and_only_while_queued(fake: FakeDiscord, start_bot, pipes) -> None:
    runner = RecordingRunner(pipes)
    runner.gate.clear()
    await start_bot(runner=runner)
    author, stranger = fake.add_user("author"), fake.add_user("stranger")
    first = await fake.run_command(stranger, "imagine", {"prompt": "first"})
    await fake.wait_for(runner.waiting.is_set)
    queued = await fake.run_command(author, "imagine", {"prompt": "to cancel"})
    await fake.wait_for(lambda: queued.original is not None and queued.original.custom_ids())
    [cancel_id] = queued.original.custom_ids()
    refused = await fake.click(stranger, queued.original, cancel_id)
    assert "Only the person who asked" in await ephemeral_reply(fake, refused)
    await fake.click(author, queued.original, cancel_id)
    assert "Cancelled before it ran" in await ephemeral_reply(fake, queued)
    runner.gate.set()
    await result(fake, first)
    assert "to cancel" not in runner.prompts


# -- buttons ------------------------------------------------------------------------------------------------------


async def test_reroll_variation_and_remix_buttons(fake: FakeDiscord, start_bot, buckets) -> None:
    await start_bot()
    author, other = fake.add_user("author"), fake.add_user("other")
    original = await result(
        fake, await fake.run_command(author, "imagine", {"prompt": "a castle", "aspect": "3:2", "seed": 1})
    )

    reroll = await result(fake, await fake.click(other, original, "lcm:reroll"))
    fields = {field["name"]: field["value"] for field in reroll.embeds[0]["fields"]}
    assert reroll.embeds[0]["description"] == "a castle" and fields["Seeds"] != "`1`"
    assert [image.size for image in reroll.images()] == [buckets["3:2"]]

    variation = await result(fake, await fake.click(other, original, "lcm:variation:0"))
    assert variation.embeds[0]["title"] == "/remix" and variation.embeds[0]["description"] == "a castle"
    assert [image.size for image in variation.images()] == [buckets["3:2"]]

    opened = await fake.click(other, original, "lcm:remix")
    await fake.wait_for(lambda: opened.modal is not None)
    [[prompt_input]] = [row["components"] for row in opened.modal["components"]]
    assert prompt_input["value"] == "a castle"
    remixed = await result(
        fake, await fake.submit_modal(other, opened, {prompt_input["custom_id"]: "a castle at night"})
    )
    assert remixed.embeds[0]["description"] == "a castle at night"


async def test_remix_modal_asks_which_image_and_refuses_other_numbers(fake: FakeDiscord, start_bot, pipes) -> None:
    runner = RecordingRunner(pipes)
    await start_bot(runner=runner)
    user = fake.add_user("picker")
    original = await result(fake, await fake.run_command(user, "imagine", {"prompt": "two foxes", "count": 2}))
    first, second = (np.asarray(image.convert("RGB")) for image in original.images())
    assert not np.array_equal(first, second)

    opened = await fake.click(user, original, "lcm:remix")
    await fake.wait_for(lambda: opened.modal is not None)
    [[prompt_input], [number_input]] = [row["components"] for row in opened.modal["components"]]
    assert number_input["label"] == "Which image (1 to 2)"
    for number in ("0", "3", "x", "\N{SUPERSCRIPT TWO}"):
        refused = await fake.submit_modal(user, opened, {number_input["custom_id"]: number})
        assert await ephemeral_reply(fake, refused) == "Pick an image number from 1 to 2."
    remixed = await result(
        fake,
        await fake.submit_modal(user, opened, {prompt_input["custom_id"]: "one fox", number_input["custom_id"]: "2"}),
    )
    assert remixed.embeds[0]["description"] == "one fox"
    [_, remix_request] = runner.requests
    assert np.array_equal(np.asarray(remix_request.init_image.convert("RGB")), second)


async def test_delete_is_for_the_author_and_moderators(fake: FakeDiscord, start_bot) -> None:
    await start_bot()
    author, other = fake.add_user("author"), fake.add_user("other")
    moderator = fake.add_user("mod", moderator=True)
    first = await result(fake, await fake.run_command(author, "imagine", {"prompt": "one"}))
    second = await result(fake, await fake.run_command(author, "imagine", {"prompt": "two"}))
    refused = await fake.click(other, first, f"lcm:delete:{author}")
    assert "Only the person who made this image" in await ephemeral_reply(fake, refused)
    assert not first.deleted
    await fake.click(author, first, f"lcm:delete:{author}")
    await fake.wait_for(lambda: first.deleted)
    await fake.click(moderator, second, f"lcm:delete:{author}")
    await fake.wait_for(lambda: second.deleted)


async def test_buttons_work_after_a_restart(fake: FakeDiscord, start_bot) -> None:
    first_bot = await start_bot()
    user = fake.add_user("patient")
    message = await result(fake, await fake.run_command(user, "imagine", {"prompt": "before restart"}))
    await first_bot.close()
    await start_bot()
    rerolled = await result(fake, await fake.click(user, message, "lcm:reroll"))
    assert rerolled.embeds[0]["description"] == "before restart"


# -- bad inputs ---------------------------------------------------------------------------------------------------


def header_only_png(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    )


BAD_OPTIONS = [
    ("imagine", {"prompt": "x", "steps": 20}, "`steps` must be between 1 and 8"),
    ("imagine", {"prompt": "x", "guidance": 5.0}, "`guidance` must be between 0.0 and 2.0"),
    ("imagine", {"prompt": "x", "count": 9}, "`count` must be between 1 and 4"),
    ("imagine", {"prompt": "   "}, "`prompt` is empty"),
    ("imagine", {"prompt": "x", "negative": "n" * 1500}, "`negative` is 1500 characters"),
    ("imagine", {"prompt": "x", "aspect": "5:4"}, "`aspect` must be one of"),
    ("imagine", {"prompt": "x", "seed": -3}, "`seed` must be between"),
]


@pytest.mark.parametrize(("command", "options", "message"), BAD_OPTIONS, ids=[m for _, _, m in BAD_OPTIONS])
async def test_bad_options_get_an_ephemeral_error(fake: FakeDiscord, start_bot, command, options, message) -> None:
    await start_bot()
    interaction = await fake.run_command(fake.add_user("typo"), command, options)
    assert message in await ephemeral_reply(fake, interaction)
    assert interaction.callback_type == 4  # answered before any deferral: nothing public was ever shown


async def test_every_bad_image_gets_an_ephemeral_error_and_the_bot_keeps_serving(
    fake: FakeDiscord, start_bot, buckets
) -> None:
    await start_bot()
    user = fake.add_user("uploader")
    frames = [Image.new("RGB", (200, 200), colour) for colour in ("red", "blue")]
    cases = [
        ("remix", fake.upload("notes.png", b"just some text, not a picture\n" * 20), "not a PNG, JPEG, WebP or GIF"),
        ("remix", fake.upload("cut.png", encoded(photo())[:300]), "damaged or cut short"),
        ("remix", upload(fake, Image.new("RGB", (1, 1))), "too small"),
        ("remix", fake.upload("huge.png", header_only_png(5000, 4000), width=5000, height=4000), "the limit is 17 MP"),
        ("remix", fake.upload("bomb.png", header_only_png(60000, 60000)), "limit is 17 MP"),  # metadata lies
        ("remix", fake.upload("doc.txt", b"hello", content_type="text/plain"), "must be an image"),
        ("inpaint", upload(fake, photo()), "Attach a `mask`"),
    ]
    for command, attachment, message in cases:
        interaction = await fake.run_command(user, command, {"image": attachment, "prompt": "x"})
        assert message in await ephemeral_reply(fake, interaction), message
    odd_mask = upload(fake, Image.new("L", (300, 100), 255), "mask.png")
    interaction = await fake.run_command(
        user, "inpaint", {"image": upload(fake, photo()), "mask": odd_mask, "prompt": "x"}
    )
    assert "same shape" in await ephemeral_reply(fake, interaction)

    converted = [
        upload(fake, Image.new("CMYK", (300, 300), (0, 255, 255, 0)), "cmyk.jpg", "JPEG"),
        fake.upload("grey16.png", encoded(Image.fromarray(np.full((300, 300), 30000, dtype=np.uint16)))),
        fake.upload("anim.gif", encoded(frames[0], "GIF", save_all=True, append_images=frames[1:])),
    ]
    for attachment in converted:
        message = await result(fake, await fake.run_command(user, "remix", {"image": attachment, "prompt": "x"}))
        assert [image.size for image in message.images()] == [buckets["1:1"]]


# -- delivery -----------------------------------------------------------------------------------------------------


async def test_expired_token_delivers_to_the_channel_with_a_mention(fake: FakeDiscord, start_bot, pipes) -> None:
    runner = RecordingRunner(pipes)
    runner.gate.clear()
    await start_bot(runner=runner)
    user = fake.add_user("slowpoke")
    interaction = await fake.run_command(user, "imagine", {"prompt": "late"})
    await fake.wait_for(runner.waiting.is_set)
    fake.expire(interaction)
    runner.gate.set()
    message = await result(fake, interaction)
    assert message.interaction_token is None and message.content.startswith(f"<@{user}>")
    assert message.channel_id == fake.channel_id and len(message.attachments) == 1


async def test_forbidden_delivery_is_logged_and_the_next_job_runs(fake: FakeDiscord, start_bot, caplog) -> None:
    await start_bot()
    blocked, fine = fake.add_user("blocked"), fake.add_user("fine")
    fake.fail("PATCH", r"/webhooks/\d+/token-\d+/messages/@original", 403, 50013, "Missing Permissions", times=100)
    with caplog.at_level(logging.WARNING, logger="cogs.utils.jobs"):
        first = await fake.run_command(blocked, "imagine", {"prompt": "nowhere to go"})
        await fake.wait_for(lambda: "could not deliver" in caplog.text)
    fake.failures.clear()
    second = await fake.run_command(fine, "imagine", {"prompt": "delivered"})
    assert len((await result(fake, second)).attachments) == 1
    assert not any(message.attachments for message in first.messages())


async def test_upload_limit_falls_back_to_jpeg(fake: FakeDiscord, start_bot) -> None:
    await start_bot()
    fake.upload_limit = 60_000  # the tiny model's random-noise PNGs are larger than this
    interaction = await fake.run_command(fake.add_user("nitro-less"), "imagine", {"prompt": "noise"})
    message = await result(fake, interaction)
    assert message.attachments[0]["filename"].endswith(".jpg")
    assert message.images()[0].format == "JPEG"
    assert "Sent as JPEG" in message.content


async def test_failed_job_is_reported_and_others_are_not_lost(fake: FakeDiscord, start_bot, pipes) -> None:
    runner = RecordingRunner(pipes)
    runner.gate.clear()
    await start_bot(runner=runner)
    users = [fake.add_user(name) for name in ("a", "b", "c")]
    interactions = [
        await fake.run_command(user, "imagine", {"prompt": prompt})
        for user, prompt in zip(users, ("fine one", "boom", "fine two"), strict=True)
    ]
    await fake.wait_for(lambda: all(i.original is not None and i.original.content for i in interactions))
    runner.gate.set()
    assert "error id" in await ephemeral_reply(fake, interactions[1])
    for interaction in (interactions[0], interactions[2]):
        assert len((await result(fake, interaction)).attachments) == 1


# -- hourly budgets -----------------------------------------------------------------------------------------------


async def test_hourly_budget_persists_across_a_restart_and_exempts_admins_and_roles(
    fake: FakeDiscord, start_bot
) -> None:
    budget = {"user_images_per_hour": 3, "limit_exempt_roles": [fake.role_ids["supporter"]]}
    first_bot = await start_bot(**budget)
    user = fake.add_user("heavy")
    await result(fake, await fake.run_command(user, "imagine", {"prompt": "two", "count": 2}))
    refused = await fake.run_command(user, "imagine", {"prompt": "two more", "count": 2})
    reply = await ephemeral_reply(fake, refused)
    assert "used your 3 images for this hour" in reply and "<t:" in reply and ":R>" in reply
    await first_bot.close()

    await start_bot(**budget)
    still_refused = await fake.run_command(user, "imagine", {"prompt": "after restart", "count": 2})
    assert "used your 3 images" in await ephemeral_reply(fake, still_refused)
    one_more = await fake.run_command(user, "imagine", {"prompt": "fits", "count": 1})
    assert len((await result(fake, one_more)).attachments) == 1

    admin = fake.add_user("admin", moderator=True)
    supporter = fake.add_user("supporter", roles=("supporter",))
    for exempt in (admin, supporter):
        for index in range(2):
            interaction = await fake.run_command(exempt, "imagine", {"prompt": f"exempt {index}", "count": 2})
            assert len((await result(fake, interaction)).attachments) == 2
