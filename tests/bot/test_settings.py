from __future__ import annotations

from pathlib import Path

import pytest
from dotenv import dotenv_values
from pydantic import ValidationError

from bot.settings import Settings, describe_invalid


def test_defaults_are_the_production_recipe(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = Settings(_env_file=None)
    assert settings.model_base == "segmind/SSD-1B"
    assert settings.model_unet == "latent-consistency/lcm-ssd-1b"
    assert settings.base_resolution == 1024 and settings.device == "auto"
    assert settings.discord_token is None


def test_the_example_env_file_sets_every_setting_it_names_to_its_default() -> None:
    """.env.example is where operators read the defaults: a changed default must change it too."""
    example_file = Path(__file__).parents[2] / ".env.example"
    named = [name.lower() for name in dotenv_values(example_file) if name != "DISCORD_TOKEN"]  # a blank to fill in
    assert "cuda_graphs" in named and "compile" in named
    example, default = Settings(_env_file=example_file), Settings(_env_file=None)
    assert {name: getattr(example, name) for name in named} == {name: getattr(default, name) for name in named}


def test_environment_names_are_the_settings_names(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DISCORD_TOKEN", "secret")
    monkeypatch.setenv("USER_MAX_PENDING", "5")
    settings = Settings(_env_file=None)
    assert settings.discord_token.get_secret_value() == "secret"
    assert settings.user_max_pending == 5
    assert "secret" not in repr(settings)


def test_invalid_values_become_one_line_naming_each_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BASE_RESOLUTION", "100")
    monkeypatch.setenv("DEVICE", "tpu")
    with pytest.raises(ValidationError) as caught:
        Settings(_env_file=None)
    message = describe_invalid(caught.value)
    assert "\n" not in message
    assert "BASE_RESOLUTION" in message and "DEVICE" in message
