"""The compile child fills the cache the serving process reads, for real (inductor on the CPU, tiny model)."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bot.engine.cache_filler import CompilePlan, fill_compile_cache, marker_path, needs_filling
from bot.settings import Settings

pytestmark = pytest.mark.timeout(900)

# The bot's start-up in a process of its own (torch keeps compiled code and counters per process), with the
# settings of the environment: it reports what its compile read from the cache.
START_AND_COMPILE = """
import json
from bot.engine.compile_cache import compile_cache_counters
from bot.engine.service import load_engine
from bot.settings import Settings

pipes, _ = load_engine(Settings(_env_file=None))
ready = pipes.compiled.wait(timeout=800)
print(json.dumps({"ready": ready, "child_s": pipes.compiled.cache_fill_seconds, "cache": compile_cache_counters()}))
"""


@pytest.fixture
def plan(settings: Settings, buckets, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> CompilePlan:
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "cache"))
    return CompilePlan(settings, {"1:1": buckets["1:1"]}, max_batch_images=2)


def test_the_plan_reaches_the_child_with_the_models_and_no_secret(plan: CompilePlan) -> None:
    secrets = {"discord_token": "secret-token", "redis_url": "redis://:secret-password@cache:6379/0"}
    text = dataclasses.replace(plan, settings=plan.settings.model_copy(update=secrets)).to_json()
    assert "secret" not in text  # it is written to the marker file too
    again = CompilePlan.from_json(text)
    assert again.settings.model_base == plan.settings.model_base
    assert again.settings.base_resolution == plan.settings.base_resolution
    assert again.buckets == plan.buckets and again.max_batch_images == 2
    assert again.fingerprint() == plan.fingerprint()


def test_a_plan_is_filled_once_and_another_plan_is_not(plan: CompilePlan) -> None:
    assert needs_filling(plan)
    marker_path(plan).parent.mkdir(parents=True)
    marker_path(plan).write_text(plan.to_json())
    assert not needs_filling(plan)
    assert needs_filling(dataclasses.replace(plan, max_batch_images=3))
    assert needs_filling(dataclasses.replace(plan, settings=plan.settings.model_copy(update={"dtype": "bfloat16"})))
    # A setting the models do not read needs no child:
    assert not needs_filling(dataclasses.replace(plan, settings=plan.settings.model_copy(update={"queue_max": 7})))


def test_a_child_that_fails_leaves_no_marker(plan: CompilePlan, tmp_path: Path) -> None:
    broken = dataclasses.replace(plan, settings=plan.settings.model_copy(update={"model_unet": str(tmp_path / "x")}))
    assert fill_compile_cache(broken, child_batch_images=2, timeout=300) is False
    assert needs_filling(broken)


def test_the_child_ends_with_the_process_that_started_it() -> None:
    # A bot that stops must not leave a compiler holding GPU memory: the parent here exits as soon as its child
    # watches it, and prints the child's pid.
    child = (
        "import os, time\n"
        "from bot.engine.cache_filler import exit_with_parent\n"
        "exit_with_parent(os.getppid(), interval=0.1)\n"
        "print('watching', flush=True)\n"
        "time.sleep(300)\n"
    )
    parent = (
        "import subprocess, sys\n"
        f"child = subprocess.Popen([sys.executable, '-c', {child!r}], stdout=subprocess.PIPE,\n"
        "                         stderr=subprocess.DEVNULL, text=True)\n"
        "assert child.stdout.readline() == 'watching\\n'\n"
        "print(child.pid)\n"
    )
    done = subprocess.run([sys.executable, "-c", parent], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    pid, deadline = int(done.stdout), time.monotonic() + 30
    while running(pid):
        assert time.monotonic() < deadline, "the child outlived its parent"
        time.sleep(0.1)


def running(pid: int) -> bool:
    """Alive and not a zombie waiting to be reaped (Linux)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def start_and_compile(env_for, tmp_path: Path, styles_file: Path) -> dict:
    env_for(
        COMPILE="on",
        COMPILE_CHILD="on",
        COMPILE_CACHE_DIR=str(tmp_path / "cache"),
        MAX_BATCH_IMAGES="3",  # the child's batches hold 2 (`covering_batch_images`): its graphs serve 3 too
        STYLES_FILE=str(styles_file),
        LOG_LEVEL="WARNING",
    )
    done = subprocess.run([sys.executable, "-c", START_AND_COMPILE], capture_output=True, text=True, timeout=850)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def lora_style(name: str, lora: Path) -> str:
    return f'[[style]]\nname = "{name}"\ndescription = "{name.title()}"\nlora = "{lora}"\n'


def test_the_child_compiles_so_that_serving_reads_every_graph_from_the_cache(
    env_for, tmp_path: Path, loras: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)  # COMPILE_CACHE_DIR decides
    styles = tmp_path / "styles.toml"  # a LoRA style, which the child does not load
    styles.write_text(lora_style("ink", loras["ink"]))
    first = start_and_compile(env_for, tmp_path, styles)
    assert first["ready"] and first["child_s"] is not None
    assert first["cache"]["graph_hit"] > 0 and first["cache"]["aot_hit"] > 0
    assert "graph_miss" not in first["cache"] and "aot_miss" not in first["cache"]
    [marker] = (tmp_path / "cache" / "filled-by-child").iterdir()

    # Another style: the marker still says the cache is filled, and no child runs
    styles.write_text(lora_style("ink", loras["ink"]) + lora_style("neon", loras["neon"]))
    restart = start_and_compile(env_for, tmp_path, styles)
    assert restart["ready"] and restart["child_s"] is None
    assert "graph_miss" not in restart["cache"] and "aot_miss" not in restart["cache"]
    assert list((tmp_path / "cache" / "filled-by-child").iterdir()) == [marker]
