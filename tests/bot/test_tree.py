"""The error ladder: our errors verbatim, anything else as an error id (logged with the options)."""

from __future__ import annotations

import logging

import pytest

from tests.fakediscord import FakeDiscord


async def test_unexpected_error_shows_an_error_id_and_logs_the_options(
    fake: FakeDiscord, start_bot, monkeypatch: pytest.MonkeyPatch, caplog
) -> None:
    def broken_check(*args: object, **kwargs: object) -> None:
        raise RuntimeError("a bug")

    bot = await start_bot()
    # load_extension imports the cog module afresh, so patch the loaded cog, not an imported class.
    monkeypatch.setattr(bot.get_cog("GenerateCog").flow, "check", broken_check)
    with caplog.at_level(logging.ERROR, logger="bot.tree"):
        interaction = await fake.run_command(fake.add_user("unlucky"), "imagine", {"prompt": "a secret fox"})
        await fake.wait_for(lambda: interaction.messages())
    [reply] = interaction.messages()
    assert reply.ephemeral and "error id `" in reply.content and "a bug" not in reply.content
    error_id = reply.content.split("`")[1]
    assert error_id in caplog.text and "a secret fox" in caplog.text and "RuntimeError: a bug" in caplog.text
