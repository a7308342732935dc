"""Fill the compile cache from a child process, so that the serving process compiles from a warm cache.

Compiling beside serving slows requests down: the compiler runs Python for seconds on end, and an eager request
needs the GIL back after each of its thousands of ops (`quick_gil_handoffs` in bot.engine.compiled shortens
each wait, but the waits remain). A child process has a GIL of its own. It loads the same models, compiles the
same warm-up batches, and leaves inductor's and AOTAutograd's caches filled. The serving process then compiles
from that cache: dynamo still traces there, but the backend reads compiled graphs from disk instead of building
them (with the tiny model on the CPU: 15 s of compiling instead of 122 s, `bench.startup`). Beside a compiler
thread, a forward of the tiny UNet on 8x8 latents took 10 times as long as alone; beside a compiler process, as
long as alone (`bench.compile_stall`).

A marker file per plan records that the cache was filled, so that a restart starts no child. A stale marker (a
cache emptied by hand) costs only speed: the serving process then compiles from a cold cache, as it would
without a child. The cache keys are torch's, so a marker can never make a wrong graph run.

The child needs a second copy of the weights on the GPU beside the serving process, and a batch of its own, so
the engine starts one only where the free memory holds them (`COMPILE_CHILD`, `compile_child_batch` in
bot.engine.service). The child's batches may be smaller than the serving process's: at 2 images they compile
the graphs of every batch size above 1 (`covering_batch_images`), so a card that cannot hold a second batch of
8 may still hold a child.

The child loads no styles. The twins compile a UNet without adapter layers, which styles run on with weights of
their own (bot.engine.fused_styles), so the same graphs serve a bot with or without styles: a change to
`STYLES_FILE` needs no child.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import diffusers
import torch

from bot.engine.compiled import CompiledTwins
from bot.engine.generation import render
from bot.engine.pipelines import load_pipelines
from bot.settings import Settings

log = logging.getLogger(__name__)

FILL_TIMEOUT = 1800  # seconds; a cold compile of every bucket took about 2 minutes on an H100
PARENT_CHECK_INTERVAL = 1.0  # seconds between the child's checks that the serving process still runs
MARKER_FOLDER = "filled-by-child"
# What loading the models reads (bot.engine.pipelines): the plan carries these alone, so that neither the child's
# input nor the marker file holds a secret (DISCORD_TOKEN, a password in REDIS_URL), and a change to any other
# setting does not start another child.
MODEL_SETTINGS = ("model_base", "model_unet", "model_vae", "model_tiny_vae", "device", "dtype", "base_resolution")
# torch gives sizes of 1 graphs of their own, and every larger batch size one symbol, whose value the cache keys
# leave out (its guards, such as "at least 2", are checked at lookup): the graphs compiled for 2 images are the
# ones any larger batch looks up. On the CPU with the tiny model, a child at 2 images filled the cache for a
# serving process at 4 and at 8 images: every graph and AOTAutograd entry hit, none missed.
COVERING_BATCH_IMAGES = 2


@dataclass(frozen=True)
class CompilePlan:
    """What the twins compile. The same models, buckets and batch sizes give the same graphs, so the
    child's cache entries are the ones the serving process looks up."""

    settings: Settings
    buckets: dict[str, tuple[int, int]]
    max_batch_images: int

    def to_json(self) -> str:
        """The plan for the child's standard input and for the marker file."""
        return json.dumps(
            {
                "settings": self.settings.model_dump(mode="json", include=set(MODEL_SETTINGS)),
                "buckets": self.buckets,
                "max_batch_images": self.max_batch_images,
            },
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, text: str) -> CompilePlan:
        data = json.loads(text)
        return cls(
            settings=Settings(**data["settings"], _env_file=None),
            buckets={aspect: (width, height) for aspect, (width, height) in data["buckets"].items()},
            max_batch_images=data["max_batch_images"],
        )

    def fingerprint(self) -> str:
        """Names the plan's marker: the plan, and what else decides the compiled code (library versions, GPU)."""
        machine = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
        versions = f"torch {torch.__version__}, diffusers {diffusers.__version__}, {machine}"
        return hashlib.sha256(f"{self.to_json()}\n{versions}".encode()).hexdigest()[:32]


def marker_path(plan: CompilePlan) -> Path:
    """Inside inductor's cache folder, so that emptying the cache also forgets that it was filled."""
    from torch._inductor.runtime.cache_dir_utils import cache_dir

    return Path(cache_dir()) / MARKER_FOLDER / f"{plan.fingerprint()}.json"


def needs_filling(plan: CompilePlan) -> bool:
    return not marker_path(plan).exists()


def covering_batch_images(batch_images: int) -> int:
    """The fewest images per batch that compile every graph a serving process at `batch_images` runs."""
    return min(batch_images, COVERING_BATCH_IMAGES)


def fill_compile_cache(plan: CompilePlan, child_batch_images: int, timeout: float = FILL_TIMEOUT) -> bool:
    """Compile `plan` in a child process whose largest warm-up batches hold `child_batch_images` images (no fewer
    than `covering_batch_images`), and wait for it (on the compile thread: waiting holds no GIL). True when the
    cache is filled. A child that fails is logged and harmless: the serving process compiles as before."""
    started = time.perf_counter()
    log.info(
        "compiling in a child process first (batches of up to %d images), so that serving is not slowed down by"
        " the compiler",
        child_batch_images,
    )
    arguments = [str(os.getpid()), plan.settings.log_level, str(child_batch_images)]
    command = [sys.executable, "-m", "bot.engine.cache_filler", *arguments]
    try:
        done = subprocess.run(command, input=plan.to_json(), text=True, timeout=timeout, check=False)
    except (OSError, subprocess.SubprocessError) as exc:
        log.warning("the compile child did not finish (%r); compiling here from a colder cache", exc)
        return False
    if done.returncode != 0:
        log.warning("the compile child failed (exit status %d, see above); compiling here", done.returncode)
        return False
    marker = marker_path(plan)
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(plan.to_json())
    log.info("the compile child filled the compile cache in %.1f s", time.perf_counter() - started)
    return True


def exit_with_parent(parent: int, interval: float = PARENT_CHECK_INTERVAL) -> None:
    """End this process as soon as `parent` has ended: a bot that stops must not leave a compiler behind."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(interval)
        os._exit(1)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def main() -> int:
    """The child: read the plan from standard input, compile it on this thread, exit 0 when compiled. Its
    arguments: the parent's pid (a parent that ended before the child looked is noticed too), the log level, and
    the images in its largest batches. The compile cache folder is the parent's, which the environment carries
    (`use_compile_cache`)."""
    parent, log_level, batch_images = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    exit_with_parent(parent)
    logging.basicConfig(level=log_level, format="%(asctime)s %(levelname)s compile child: %(message)s")
    plan = CompilePlan.from_json(sys.stdin.read())
    pipes = load_pipelines(plan.settings)
    twins = CompiledTwins(pipes, plan.buckets, batch_images)
    return 0 if twins.compile_here(render) else 1


if __name__ == "__main__":
    sys.exit(main())
