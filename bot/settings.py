"""Settings read from the environment and `.env`.

Every field is named after its environment variable (case-insensitive), so `.env.example` documents exactly
these names. A bad value must stop the process with one readable line: `describe_invalid` turns pydantic's
validation report into one line that names each offending variable.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore")

    discord_token: SecretStr | None = None
    dev_guild_id: int | None = None
    model_base: str = "segmind/SSD-1B"
    model_unet: str = "latent-consistency/lcm-ssd-1b"
    model_vae: str | None = None
    model_tiny_vae: str | None = None  # decodes instead of the full VAE (bot.engine.vae)
    device: Literal["auto", "cuda", "cpu"] = "auto"
    dtype: Literal["auto", "float16", "bfloat16", "float32"] = "auto"
    base_resolution: int = Field(default=1024, ge=256, le=2048, multiple_of=64)
    database_path: Path = Path("data/lcm-bot.sqlite3")
    max_batch_images: int | None = Field(default=None, ge=1, le=64)
    queue_max: int = Field(default=200, ge=1)
    user_max_pending: int = Field(default=3, ge=1)
    user_images_per_hour: int = Field(default=60, ge=0)
    guild_images_per_hour: int = Field(default=0, ge=0)
    limit_exempt_roles: list[int] = Field(default_factory=list)
    batch_timeout: float = Field(default=120.0, gt=0)
    compile: Literal["auto", "on", "off"] = "off"
    compile_cache_dir: Path = Path("data/compile-cache")
    compile_child: Literal["auto", "on", "off"] = "auto"  # bot.engine.cache_filler
    cuda_graphs: Literal["auto", "on", "off"] = "auto"  # bot.engine.cuda_graphs
    metrics_port: int | None = Field(default=None, ge=1, le=65535)
    queue_backend: Literal["local", "redis"] = "local"
    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_visibility_timeout: float = Field(default=300.0, gt=0)
    styles_file: Path | None = None
    mask_model: str = "CIDAS/clipseg-rd64-refined"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"


def describe_invalid(error: ValidationError) -> str:
    """One line naming every bad variable and what is wrong with it."""
    problems = []
    for detail in error.errors():
        name = "_".join(str(part) for part in detail["loc"]).upper() or "settings"
        problems.append(f"{name}: {detail['msg']}")
    return "invalid settings: " + "; ".join(problems)
