"""/settings end to end: who may change it, and each rule as members meet it."""

from __future__ import annotations

from tests.cogs.test_generate import ephemeral_reply, result
from tests.fakediscord import FakeDiscord, FakeInteraction


async def settings_reply(fake: FakeDiscord, interaction: FakeInteraction) -> dict[str, str]:
    await fake.wait_for(lambda: interaction.original is not None)
    assert interaction.original.ephemeral
    return {field["name"]: field["value"] for field in interaction.original.embeds[0]["fields"]}


async def test_only_server_managers_change_settings(fake: FakeDiscord, start_bot) -> None:
    await start_bot()
    member, manager = fake.add_user("member"), fake.add_user("manager", moderator=True)
    refused = await fake.run_command(member, "settings images", {"default_count": 2})
    assert "manage this server" in await ephemeral_reply(fake, refused)
    fields = await settings_reply(fake, await fake.run_command(manager, "settings show"))
    assert fields["Default count"] == "1" and fields["Per member per hour"] == "60 (bot default)"
    registered = fake.registered("settings", fake.guild_id)
    assert int(registered["default_member_permissions"]) == 0x20  # Manage Server, by default


async def test_default_count_and_budget_override(fake: FakeDiscord, start_bot) -> None:
    await start_bot()
    manager, member = fake.add_user("manager", moderator=True), fake.add_user("member")
    fields = await settings_reply(
        fake, await fake.run_command(manager, "settings images", {"default_count": 2, "user_per_hour": 3})
    )
    assert fields["Default count"] == "2" and fields["Per member per hour"] == "3"
    first = await result(fake, await fake.run_command(member, "imagine", {"prompt": "two by default"}))
    assert len(first.attachments) == 2
    refused = await fake.run_command(member, "imagine", {"prompt": "over the server's budget"})
    assert "used your 3 images" in await ephemeral_reply(fake, refused)


async def test_channels_blocklist_and_spoilers(fake: FakeDiscord, start_bot) -> None:
    await start_bot()
    manager, member = fake.add_user("manager", moderator=True), fake.add_user("member")
    await settings_reply(fake, await fake.run_command(manager, "settings blocklist", {"add": "cat"}))
    await settings_reply(fake, await fake.run_command(manager, "settings blocklist", {"add": "drag*n"}))
    refused = await fake.run_command(member, "imagine", {"prompt": "A CAT on a mat"})
    assert "does not allow “cat”" in await ephemeral_reply(fake, refused)
    refused = await fake.run_command(member, "imagine", {"prompt": "x", "negative": "red dragon"})
    assert "does not allow “drag*n”" in await ephemeral_reply(fake, refused)
    allowed = await fake.run_command(member, "imagine", {"prompt": "a catalogue of maps"})  # whole words only
    assert len((await result(fake, allowed)).attachments) == 1

    await settings_reply(fake, await fake.run_command(manager, "settings spoilers", {"enabled": True}))
    blurred = await result(fake, await fake.run_command(member, "imagine", {"prompt": "a surprise"}))
    assert blurred.attachments[0]["filename"].startswith("SPOILER_")

    fields = await settings_reply(
        fake, await fake.run_command(manager, "settings channel", {"channel": fake.other_channel_id, "allowed": True})
    )
    assert fields["Channels"] == f"<#{fake.other_channel_id}>"
    elsewhere = await fake.run_command(member, "imagine", {"prompt": "in the wrong channel"})
    assert f"Images are made in <#{fake.other_channel_id}>" in await ephemeral_reply(fake, elsewhere)
    fields = await settings_reply(
        fake, await fake.run_command(manager, "settings channel", {"channel": fake.other_channel_id, "allowed": False})
    )
    assert fields["Channels"] == "every channel"
