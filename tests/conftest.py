"""Shared fixtures: the tiny offline model, settings pointing at it, and the pipelines loaded once per session."""

from __future__ import annotations

import os
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"  # before any Hugging Face import: tests never reach the Hub

import pytest
import torch

from bot.engine.pipelines import Pipelines, load_pipelines
from bot.engine.requests import bucket_sizes
from bot.settings import Settings
from bot.styles import Style, StyleBook
from tests.support.tiny_model import (
    TinyModel,
    build_tiny_clipseg,
    build_tiny_decoder,
    build_tiny_lora,
    build_tiny_model,
)

TEST_RESOLUTION = 256

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> TinyModel:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture(scope="session")
def settings(tiny_model: TinyModel, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return Settings(
        model_base=str(tiny_model.base),
        model_unet=str(tiny_model.lcm_unet),
        base_resolution=TEST_RESOLUTION,
        device="cpu",
        database_path=tmp_path_factory.mktemp("db") / "bot.sqlite3",
        max_batch_images=4,
        mask_model=str(build_tiny_clipseg(tmp_path_factory.mktemp("tiny-clipseg") / "clipseg")),
        discord_token=None,
        _env_file=None,
    )


@pytest.fixture(scope="session")
def pipes(settings: Settings) -> Pipelines:
    return load_pipelines(settings)


@pytest.fixture(scope="session")
def tiny_decoder_pipes(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Pipelines:
    """The tiny model with a tiny autoencoder decoding (`MODEL_TINY_VAE`)."""
    decoder = build_tiny_decoder(tmp_path_factory.mktemp("tiny-decoder") / "taesd")
    return load_pipelines(settings.model_copy(update={"model_tiny_vae": str(decoder)}))


@pytest.fixture(scope="session")
def loras(tiny_model: TinyModel, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two random LoRAs for the tiny UNet, in the diffusers format, as style adapters."""
    folder = tmp_path_factory.mktemp("loras")
    return {name: build_tiny_lora(tiny_model.lcm_unet, folder / f"{name}.safetensors", seed=seed) for seed, name in
            enumerate(("ink", "neon"), start=1)}  # fmt: skip


@pytest.fixture(scope="session")
def unet_and_text_styles(
    tiny_model: TinyModel, loras: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> StyleBook:
    """Two LoRA styles: "ink" adapts only the UNet, "pencil" the first text encoder too."""
    pencil = build_tiny_lora(
        tiny_model.lcm_unet,
        tmp_path_factory.mktemp("text-lora") / "pencil.safetensors",
        seed=7,
        text_encoder_folder=tiny_model.base / "text_encoder",
    )
    return StyleBook(
        [
            Style(name="ink", description="Ink", lora=str(loras["ink"])),
            Style(name="pencil", description="Pencil", lora=str(pencil)),
        ]
    )


@pytest.fixture(scope="session")
def buckets() -> dict[str, tuple[int, int]]:
    return bucket_sizes(TEST_RESOLUTION)


@pytest.fixture
def env_for(settings: Settings, monkeypatch: pytest.MonkeyPatch):
    """Put the test settings into the environment, for code that reads settings itself (the CLI, the bot)."""

    def apply(**extra: str) -> None:
        monkeypatch.setenv("MODEL_BASE", settings.model_base)
        monkeypatch.setenv("MODEL_UNET", settings.model_unet)
        monkeypatch.setenv("BASE_RESOLUTION", str(settings.base_resolution))
        monkeypatch.setenv("DEVICE", "cpu")
        monkeypatch.setenv("DATABASE_PATH", str(settings.database_path))
        for key, value in extra.items():
            monkeypatch.setenv(key, value)

    return apply


pytest_plugins = ["tests.fakediscord.fixtures"]
