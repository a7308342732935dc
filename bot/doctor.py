"""`lcm-bot doctor`: check a machine before connecting it to Discord, one line per check."""

from __future__ import annotations

import base64
import binascii
import re
import sqlite3
from dataclasses import dataclass
from pathlib import Path

import torch
from huggingface_hub import try_to_load_from_cache

from bot.engine.compile_cache import compile_cache_folder, prepare_writable_folder
from bot.engine.pipelines import ModelUnavailable, resolve_device
from bot.engine.service import compile_enabled
from bot.settings import Settings

TOKEN_SHAPE = re.compile(r"^[A-Za-z0-9_-]{18,40}\.[A-Za-z0-9_-]{4,10}\.[A-Za-z0-9_-]{20,}$")


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str


def run_checks(settings: Settings) -> list[Check]:
    optional_weights = {"MODEL_VAE": settings.model_vae, "MODEL_TINY_VAE": settings.model_tiny_vae}
    return [
        _check_device(settings),
        _check_weights("MODEL_BASE", settings.model_base, "model_index.json"),
        _check_weights("MODEL_UNET", settings.model_unet, "config.json"),
        *(_check_weights(name, source, "config.json") for name, source in optional_weights.items() if source),
        *_compile_cache_checks(settings),
        _check_database(settings.database_path),
        _check_token(settings),
    ]


def _check_device(settings: Settings) -> Check:
    try:
        device = resolve_device(settings.device)
    except ModelUnavailable as exc:
        return Check("device", False, str(exc))
    if device.type != "cuda":
        return Check("device", True, "CPU (no CUDA GPU): works, but each image takes seconds to minutes")
    free, total = torch.cuda.mem_get_info(device)
    name = torch.cuda.get_device_name(device)
    return Check("device", True, f"{name}, {free / 2**30:.1f} of {total / 2**30:.1f} GiB free")


def _check_weights(setting: str, source: str, marker: str) -> Check:
    folder = Path(source).expanduser()
    if folder.is_dir():
        ok = (folder / marker).is_file()
        return Check(setting, ok, f"local folder {folder}" + ("" if ok else f" has no {marker}"))
    cached = try_to_load_from_cache(source, marker)
    if isinstance(cached, str):
        return Check(setting, True, f"{source} is in the Hugging Face cache")
    return Check(setting, False, f"{source} is not downloaded yet: run `hf download {source}`")


def _compile_cache_checks(settings: Settings) -> list[Check]:
    """Where the bot compiles (`COMPILE`): a cache folder it cannot write costs each restart a full compile."""
    try:
        compiles = compile_enabled(settings, resolve_device(settings.device))
    except ModelUnavailable:
        return []  # the device check says why
    if not compiles:
        return []
    folder = compile_cache_folder(settings.compile_cache_dir)
    try:
        prepare_writable_folder(folder)
    except OSError as exc:
        detail = f"{folder} is not writable ({exc.strerror or exc}): each restart would compile again, for minutes"
        return [Check("COMPILE_CACHE_DIR", False, detail)]
    return [Check("COMPILE_CACHE_DIR", True, f"{folder} is writable")]


def _check_database(path: Path) -> Check:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with sqlite3.connect(path) as connection:
            connection.execute("CREATE TABLE IF NOT EXISTS doctor_probe (x)")
            connection.execute("DROP TABLE doctor_probe")
    except (OSError, sqlite3.Error) as exc:
        return Check("DATABASE_PATH", False, f"{path} is not writable: {exc}")
    return Check("DATABASE_PATH", True, f"{path} is writable")


def _check_token(settings: Settings) -> Check:
    if settings.discord_token is None:
        return Check("DISCORD_TOKEN", False, "not set: the bot cannot log in (the CLI works without it)")
    token = settings.discord_token.get_secret_value()
    if not TOKEN_SHAPE.match(token):
        return Check("DISCORD_TOKEN", False, "does not look like a bot token (three dot-separated parts)")
    first = token.split(".")[0]
    try:
        user_id = base64.urlsafe_b64decode(first + "=" * (-len(first) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError):
        user_id = ""
    if not user_id.isdigit():
        return Check("DISCORD_TOKEN", False, "its first part is not a base64 user id: copy the whole token again")
    return Check("DISCORD_TOKEN", True, f"well-formed, for bot user id {user_id}")
