"""Where inductor keeps compiled graphs and kernels on disk, and how often this process found them there.

The cache is what makes a restart fast: it replays what an earlier process compiled instead of compiling for
minutes again. So its folder must be the one the settings name, on a volume that outlives the container, and
one the bot can write: `lcm-bot doctor` checks it before the bot runs.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

import torch

log = logging.getLogger(__name__)


def use_compile_cache(folder: Path) -> None:
    """Point inductor's on-disk cache (compiled graphs and Triton kernels) at `compile_cache_folder(folder)`.
    Must run before the first compilation.

    A folder that cannot be written costs speed, not the start: the bot logs it and compiles into torch's
    temporary folder, so only a restart pays (it compiles everything again)."""
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    chosen = compile_cache_folder(folder)
    try:
        prepare_writable_folder(chosen)
    except OSError as exc:
        log.warning(
            "the compile cache folder %s cannot be written (%s); compiled graphs go to %s, which a restart may"
            " not find, and then it compiles everything again",
            chosen,
            exc.strerror or exc,
            default_cache_dir(),
        )
        chosen = Path(default_cache_dir())
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(chosen.resolve())


def compile_cache_folder(folder: Path) -> Path:
    """Where compiled graphs are kept: `TORCHINDUCTOR_CACHE_DIR` where the operator set it, else `folder`
    (`COMPILE_CACHE_DIR`).

    Importing diffusers imports dynamo, which sets `TORCHINDUCTOR_CACHE_DIR` to torch's default (a folder in
    /tmp) as it computes a path: so that value counts as unset. Taking any value as the operator's left
    `COMPILE_CACHE_DIR` without effect, and in Docker the cache in the container's /tmp, gone at each restart."""
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    chosen = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    if chosen is None or os.path.abspath(chosen) == os.path.abspath(default_cache_dir()):
        return folder
    return Path(chosen)


def prepare_writable_folder(folder: Path) -> None:
    """Create `folder` and write a file in it. Raises OSError where either fails: a file in the way, no
    permission, a read-only volume. Creating alone would pass a folder that exists but refuses writes."""
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryFile(dir=folder):
        pass


def compile_cache_counters() -> dict[str, int]:
    """How often inductor's graph cache and AOTAutograd's cache were hit, missed or bypassed in this process:
    what the time to compiled speed depends on, after a restart or a cache filler's child."""
    counters = torch._dynamo.utils.counters
    return {
        **{
            f"graph_{key.removeprefix('fxgraph_cache_')}": n
            for key, n in counters["inductor"].items()
            if "fxgraph_cache" in key
        },
        **{
            f"aot_{key.removeprefix('autograd_cache_')}": n
            for key, n in counters["aot_autograd"].items()
            if "autograd_cache" in key
        },
    }
