"""How long a request's model call takes while the compiler works on another thread, by GIL switch interval,
and while it works in another process.

    python -m bench.compile_stall [--seconds 20] [--also 0.00002 0.001]    # --also: more intervals, seconds

On a GPU an eager UNet forward is thousands of short kernel launches, and every torch op lets go of the GIL.
Beside a thread that runs Python for seconds on end (the compiler tracing and lowering), each op then waits for
that thread's switch interval before it gets the GIL back. This measures that without a GPU: the tiny UNet on
8x8 latents, where each op takes microseconds as a kernel launch does, is timed alone, then beside a thread
that compiles another copy of it again and again (dynamo and AOTAutograd: the compiler's Python, without
building kernels), at Python's default switch interval and at the one `CompiledTwins` sets while compiling.
The last row runs the same compiler in a child process, as the compile child does (bot.engine.cache_filler):
no GIL is shared, and each side has a core of its own.
"""

from __future__ import annotations

import argparse
import copy
import multiprocessing
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import torch
from diffusers import UNet2DConditionModel

from bench.knobs import unet_inputs
from bot.engine.compiled import COMPILE_SWITCH_INTERVAL, quick_gil_handoffs
from bot.engine.thread_local_tracing import make_tracing_thread_local
from tests.support.tiny_model import build_tiny_model

PYTHON_DEFAULT_SWITCH_INTERVAL = 0.005


def forward_seconds(forward: Callable[[], object], seconds: float) -> list[float]:
    """Time `forward` back to back for about `seconds`."""
    times: list[float] = []
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        start = time.perf_counter()
        forward()
        times.append(time.perf_counter() - start)
    return times


@torch.no_grad()
def compile_again_and_again(unet: UNet2DConditionModel, stop: threading.Event, done: list[float]) -> None:
    """Compile a fresh copy of `unet` until `stop`, appending each compile's seconds to `done`; calling the
    compiled copy once makes dynamo trace it."""
    while not stop.is_set():
        start = time.perf_counter()
        torch._dynamo.reset()
        compiled = torch.compile(copy.deepcopy(unet), backend="aot_eager", dynamic=False)
        unet_inputs(compiled, side=8, batch=1)()
        done.append(time.perf_counter() - start)


def compile_in_child(
    unet_folder: str, started: multiprocessing.Event, stop: multiprocessing.Event, done: multiprocessing.Queue
) -> None:
    """`compile_again_and_again` in a process of its own, on one thread as the parent's compiler has."""
    torch.set_num_threads(1)
    make_tracing_thread_local()
    unet = UNet2DConditionModel.from_pretrained(unet_folder).eval()
    compiles: list[float] = []
    started.set()
    compile_again_and_again(unet, stop_thread_when(stop), compiles)
    done.put(compiles)


def stop_thread_when(stop: multiprocessing.Event) -> threading.Event:
    """A thread event that turns set when the process event does: `compile_again_and_again` polls one."""
    event = threading.Event()
    threading.Thread(target=lambda: (stop.wait(), event.set()), daemon=True).start()
    return event


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=20, help="per row")
    parser.add_argument("--also", type=float, nargs="*", default=[], help="more switch intervals to try, seconds")
    args = parser.parse_args()
    make_tracing_thread_local()  # as CompiledTwins does: traces on the compile thread patch modules there only
    torch.set_num_threads(1)
    model = build_tiny_model(Path(tempfile.gettempdir()) / "lcm-bench-stall")
    unet = UNet2DConditionModel.from_pretrained(model.lcm_unet).eval()
    forward = torch.no_grad()(unet_inputs(unet, side=8, batch=1))

    forward_seconds(forward, 1)  # warm-up
    print(f"tiny UNet forward on 8x8 latents, {args.seconds:.0f} s per row, torch {torch.__version__}")
    print("| beside | switch interval | forwards | median, ms | worst, ms | compiles | median compile, s |")
    print("| --- | --- | --- | --- | --- | --- | --- |")

    def row(label: str, interval: float, times: list[float], compiles: list[float]) -> None:
        cells = [label, f"{interval * 1000:g} ms", str(len(times))]
        cells += [f"{statistics.median(times) * 1000:.1f}", f"{max(times) * 1000:.1f}", str(len(compiles))]
        cells.append(f"{statistics.median(compiles):.2f}" if compiles else "")
        print("| " + " | ".join(cells) + " |", flush=True)

    row("nothing", PYTHON_DEFAULT_SWITCH_INTERVAL, forward_seconds(forward, args.seconds), [])
    for interval in (PYTHON_DEFAULT_SWITCH_INTERVAL, COMPILE_SWITCH_INTERVAL, *args.also):
        stop, compiles = threading.Event(), []
        compiler = threading.Thread(target=compile_again_and_again, args=(unet, stop, compiles), daemon=True)
        with quick_gil_handoffs(interval):
            compiler.start()
            time.sleep(1)  # into the compiler's first trace
            times = forward_seconds(forward, args.seconds)
            stop.set()
            compiler.join()
        row("compiler", interval, times, compiles)

    context = multiprocessing.get_context("spawn")
    started, stop, done = context.Event(), context.Event(), context.Queue()
    child = context.Process(target=compile_in_child, args=(str(model.lcm_unet), started, stop, done), daemon=True)
    child.start()
    started.wait()
    time.sleep(1)  # into the child's first trace
    times = forward_seconds(forward, args.seconds)
    stop.set()
    compiles = done.get()
    child.join()
    row("compiler process", PYTHON_DEFAULT_SWITCH_INTERVAL, times, compiles)


if __name__ == "__main__":
    main()
