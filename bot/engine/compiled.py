"""Compiled twins of the UNet and the VAE decoder, compiled in the background while the eager models serve.

`torch.compile` makes every step cheaper, but compiling costs tens of seconds per new input shape and the bot
serves seven aspect buckets at every batch size. These choices keep that cost away from users:

- Twins: the compiled UNet, VAE and text encoders are copies of the module trees that share every weight
  with the eager models (all but the styles' small LoRA weights in the text encoders), so they cost next to no
  memory and the eager models keep serving while the twins compile on a thread.
- Regional, dynamic compilation: the UNet compiles only its repeated transformer blocks (diffusers'
  `compile_repeated_blocks`), where most of its time goes; one compiled block serves every instance of it. Sizes
  are symbolic (`dynamic=True`), so one compilation covers every bucket and batch size; only batch 1 gets
  graphs of its own (torch specialises sizes of 1). Warming each bucket at batch 1 and at the largest batch
  checks that nothing else specialises, instead of compiling per shape.
- CUDA graphs: where batches of one replay the eager UNets' graphs (bot.engine.cuda_graphs), the twins serve from
  2 images, and once compiled, those graphs are captured again over the twins' UNets: a replay then launches the
  compiled kernels, still all at once. Compiled without graphs, a batch of one launches its kernels from Python
  as eagerly as before, which made a lone request slower on an H200 (0.281 against 0.243 s, bench/README.md);
  under graphs the launches are gone, and what compiling fuses (norms, activations, the adds between layers) is
  what is left to gain. The graphs are captured again on the compile thread, so no user waits for a capture:
  those the serving thread's warm-up captured, which starts with the compile and takes seconds where the compile
  takes tens of them (a bucket captured later keeps an eager graph). Where a capture fails, or its graph's output
  strays from the eager graph's beyond rounding, the eager graph stays.
- A persistent cache: inductor keeps compiled kernels in `COMPILE_CACHE_DIR` (bot.engine.compile_cache), so a
  restart replays them.
- Styles: the twins' UNet has no adapter layers (bot.engine.fused_styles). A styled batch runs on a second
  compiled twin, of the fused-style UNet, which shares its fused weights: weights are inputs to the compiled
  graphs, not constants, so the graphs that serve unstyled batches serve every style too, and a LoRA style
  compiles nothing (on the CPU with the tiny model, 4 graphs with a LoRA style instead of 6). Its prompts are
  encoded on the eager side's fused text encoders where those hold its LoRA; else the twins' text encoders hold
  copies of the styles' adapter layers, switched by the twins' own `StyleAdapters`. A style that the fused UNet
  does not hold (or none, where its memory did not fit) runs eager.
- The twins take over only once every bucket has run through them, and then run under `fail_on_recompile`:
  a batch that would still need compiling falls back to eager (and its shape stays eager) rather than stall.
- The compile thread's torch.fx traces patch modules for that thread alone (bot.engine.thread_local_tracing):
  a trace would otherwise break a model call made beside it.
- While the twins compile, threads hand the GIL over every 0.1 ms instead of every 5 ms (`quick_gil_handoffs`):
  the eager models' requests would otherwise crawl beside the compiler's Python.
- Where memory allows, a child process compiles first and fills the cache (bot.engine.cache_filler), so that the
  compile in this process reads compiled graphs from disk instead of building them beside the requests.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TypeVar

import torch
from diffusers import StableDiffusionXLPipeline

from bot.engine.adapters import StyleAdapters, is_adapter_weight
from bot.engine.compile_cache import compile_cache_counters
from bot.engine.cuda_graphs import GraphedForward
from bot.engine.fused_styles import FusedStyles, adapter_free_twin
from bot.engine.pipelines import TEXT_ENCODERS, Pipelines, assemble_pipelines, pipeline_over
from bot.engine.requests import GenerationRequest, Kind, check_inputs
from bot.engine.thread_local_tracing import make_tracing_thread_local
from bot.engine.weight_sharing import weight_sharing_twin

log = logging.getLogger(__name__)

T = TypeVar("T")
RECOMPILE_LIMIT = 64
COMPILE_WORKERS_TIMEOUT = 120  # seconds for inductor's worker processes to start (they import torch)
COMPILE_SWITCH_INTERVAL = 0.0001  # seconds; see `quick_gil_handoffs`
RECOMPILE_REFUSED = "fail_on_recompile"  # torch's message names the stance that refused to recompile


@dataclass(frozen=True)
class BatchShape:
    """What decides whether the twins serve a batch: its size, and the LoRA adapter its style computes with
    (which the fused UNet must hold)."""

    images: int
    width: int
    height: int
    adapter: str | None = None


class CompiledTwins:
    """Owns the compiled pipelines and decides, batch by batch, whether they may serve it."""

    def __init__(self, eager: Pipelines, buckets: dict[str, tuple[int, int]], max_batch_images: int) -> None:
        """Twins for batches of up to `max_batch_images` images: from 2 where the eager UNets replay CUDA graphs
        for batches of one, which are then captured again over the twins' UNets."""
        make_tracing_thread_local()
        self.buckets = buckets
        self.max_batch_images = max_batch_images
        unet = adapter_free_twin(eager.text2img.unet)
        unet.compile_repeated_blocks(fullgraph=True, dynamic=True)
        fused = eager.fused_styles.fused if eager.fused_styles is not None else None
        fused_unet = weight_sharing_twin(fused.model) if fused is not None else None  # its fused weights too
        if fused_unet is not None:
            fused_unet.compile_repeated_blocks(fullgraph=True, dynamic=True)
        vae = weight_sharing_twin(eager.codec.vae)
        tiny = None if eager.codec.decoder is eager.codec.vae else weight_sharing_twin(eager.codec.decoder)
        (tiny or vae).decoder.compile(fullgraph=True, dynamic=True)  # whichever decodes (MODEL_TINY_VAE)
        # Text encoders of their own (sharing weights): styles' adapter layers live in them, and switching a
        # style sets `requires_grad` on its adapter weights, so the twins' are their own (a few MB per style).
        encoders = {
            name: weight_sharing_twin(getattr(eager.text2img, name), own=is_adapter_weight) for name in TEXT_ENCODERS
        }
        text2img = pipeline_over(StableDiffusionXLPipeline, eager.text2img, unet=unet, vae=vae, **encoders)
        self.pipes = assemble_pipelines(
            text2img, eager.device, model_name=eager.model_name, embeddings=eager.embeddings, decoder=tiny
        )
        self.pipes.styles = StyleAdapters(self.pipes.text2img, eager.styles.book)
        # Unstyled prompts, and those of styles that leave the text encoders alone, are encoded on the eager side's
        # text encoders without adapter layers (graphed with CUDA_GRAPHS): nothing switches them, so both threads
        # may run them. Those of the styles that its fused text encoders hold are encoded on those, which only the
        # GPU thread runs (the compile thread's warm-up is unstyled), as it does the fused UNet.
        eager_styles = eager.fused_styles  # where the eager side's graphed UNets are
        self.pipes.fused_styles = FusedStyles(
            self.pipes,
            plain_unet=unet,
            plain_encoders=eager_styles.plain_encoders if eager_styles is not None else None,
            fused=fused,
            fused_unet=fused_unet,
            fused_encoders=eager_styles.fused_encoders if eager_styles is not None else None,
        )
        self._graphed = graphed_counterparts(
            [(eager_styles.plain_unet, unet), (eager_styles.fused_unet, fused_unet)] if eager_styles is not None else []
        )
        self.smallest_images = 2 if self._graphed else 1
        self.graphs_recaptured = 0  # the eager UNets' graphs captured again over the twins' UNets
        self.compile_seconds: float | None = None
        self.cache_fill_seconds: float | None = None  # the child's compile, when one filled the cache first
        self.workers_seconds = 0.0  # of `compile_seconds`, the wait for inductor's worker processes
        self.graphs_compiled = 0  # during the warm-up; each costs tens of seconds
        self.batches_served = 0
        self._ready = threading.Event()
        self._finished = threading.Event()  # set when compilation ends, ready or failed
        self._excluded: set[BatchShape] = set()
        self._thread: threading.Thread | None = None

    @property
    def ready(self) -> bool:
        return self._ready.is_set()

    @property
    def finished(self) -> bool:
        """Compilation has ended, ready or failed."""
        return self._finished.is_set()

    def start(
        self,
        render: Callable[[Pipelines, list[GenerationRequest]], object],
        fill_cache: Callable[[], bool] | None = None,
    ) -> None:
        """Compile in a background thread by rendering warm-up batches through the twins with `render`. When
        given, `fill_cache` runs first on that thread (bot.engine.cache_filler)."""
        self._thread = threading.Thread(
            target=self._compile_in_background, args=(render, fill_cache), name="compile", daemon=True
        )
        self._thread.start()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the twins serve (tests, benchmarks); False if compilation failed or timed out."""
        self._finished.wait(timeout)
        return self.ready

    def warm_up_batches(self) -> list[list[GenerationRequest]]:
        """Every bucket at 1 image and at the largest batch, unstyled: the shapes whose compilation could differ
        (torch gives batches of 1 graphs of their own, and every larger size one symbol). Batches of one compile
        where the twins do not serve them too: the eager UNets' graphs are captured again over their kernels.
        Styled batches run the same graphs (see the module's docstring). The warm-up must not fuse a style: the
        fused weights are the eager models', and the GPU thread may be using them."""
        return [
            [check_inputs(Kind.IMAGINE, "warm-up", buckets=self.buckets, aspect=aspect, steps=1, seed=seed)
             for seed in range(images)]
            for aspect in self.buckets
            for images in sorted({1, self.max_batch_images})
        ]  # fmt: skip

    def serve(self, shape: BatchShape, work: Callable[[Pipelines], T]) -> T | None:
        """`work(twins)` when the twins cover `shape` without compiling; None means: run it eager."""
        if not self._covers(shape):
            return None
        try:
            with torch.compiler.set_stance("fail_on_recompile"):
                result = work(self.pipes)
        except RuntimeError as exc:
            if RECOMPILE_REFUSED not in str(exc):
                raise
            self._excluded.add(shape)
            log.warning("compiled models would recompile for %s; it runs eager from now on. %s", shape, exc)
            return None
        self.batches_served += 1
        return result

    def _covers(self, shape: BatchShape) -> bool:
        return (
            self.ready
            and self.smallest_images <= shape.images <= self.max_batch_images
            and (shape.width, shape.height) in self.buckets.values()
            and (shape.adapter is None or shape.adapter in self.pipes.fused_styles.adapters)
            and shape not in self._excluded
        )

    def _compile_in_background(
        self, render: Callable[[Pipelines, list[GenerationRequest]], object], fill_cache: Callable[[], bool] | None
    ) -> None:
        if fill_cache is not None:
            started = time.perf_counter()
            if fill_cache():
                self.cache_fill_seconds = time.perf_counter() - started
        self.compile_here(render)

    def compile_here(self, render: Callable[[Pipelines, list[GenerationRequest]], object]) -> bool:
        """Compile on the calling thread (the compile thread, or the cache filler's child); True when the twins
        serve from now on."""
        started, graphs_before = time.perf_counter(), compiled_graph_count()
        try:
            with compiler_settings(), quick_gil_handoffs():
                self.workers_seconds = start_compile_workers(self.pipes.device)
                for batch in self.warm_up_batches():
                    render(self.pipes, batch)
                self.graphs_recaptured = sum(graphed.recapture(twin) for graphed, twin in self._graphed)
        except Exception:
            log.exception("compiling the models failed; serving stays eager")
        else:
            self.compile_seconds = time.perf_counter() - started
            self.graphs_compiled = compiled_graph_count() - graphs_before
            log.info(
                "compiled models ready after %.1f s (%d graphs; compile cache %s); they serve from now on, and %d "
                "CUDA graphs of batches of one replay their kernels",
                self.compile_seconds,
                self.graphs_compiled,
                compile_cache_counters(),
                self.graphs_recaptured,
            )
            self._ready.set()
        finally:
            self._finished.set()
        return self.ready


def graphed_counterparts(
    pairs: Iterable[tuple[torch.nn.Module | None, torch.nn.Module | None]],
) -> list[tuple[GraphedForward, torch.nn.Module]]:
    """For each pair of an eager UNet and its twin, the eager one's graphed forward and the twin, where both exist
    and the eager one replays CUDA graphs."""
    return [
        (eager.forward, twin)
        for eager, twin in pairs
        if twin is not None and isinstance(getattr(eager, "forward", None), GraphedForward)
    ]


@contextlib.contextmanager
def compiler_settings() -> Iterator[None]:
    """torch's compiler settings for the thread that compiles. They must be set there: an assignment to
    torch's config modules holds only for the thread that makes it."""
    # Every compiled module shares one code object (`Module._call_impl`), so all their graphs count against one
    # per-code limit (8 by default); past it dynamo would run them eager without a word.
    recompile_limit = max(torch._dynamo.config.recompile_limit, RECOMPILE_LIMIT)
    # "Duck sizing" makes sizes that happen to be equal one symbol, so square latents (1:1) would get VAE
    # decoder graphs of their own, compiled again for the other aspects.
    # Floats (norm epsilons, LoRA scales) as constants: traced as inputs, every UNet block's first attempt was
    # thrown away and traced again, and the discarded attempt missed the compile cache at every restart. No float
    # in the compiled regions varies between requests (a LoRA scale is per style, and each style has its graphs).
    # On this CPU with the tiny model: restart to compiled speed 23 s instead of 31 to 36 s.
    with (
        torch._dynamo.config.patch(recompile_limit=recompile_limit, specialize_float=True),
        torch.fx.experimental._config.patch(use_duck_shape=False),
    ):
        yield


@contextlib.contextmanager
def quick_gil_handoffs(interval: float = COMPILE_SWITCH_INTERVAL) -> Iterator[None]:
    """Make threads hand the GIL over every `interval` seconds (Python's default is 5 ms) until the block ends.

    Every eager torch op lets go of the GIL, and a thread that wants it back waits for the holder's switch
    interval to end. Beside the compiler, which runs Python for seconds on end, each op of a request then costs
    up to 5 ms instead of microseconds, and an eager UNet forward is thousands of ops: on an H100 a 0.5 s request
    took up to 37 s while the twins compiled. On the CPU (`bench.compile_stall`, three runs), a forward of the
    tiny UNet that takes 21 to 31 ms alone took 1.2 to 2.9 s (median) beside a compiler at 5 ms, and 0.19 to
    0.27 s at 0.1 ms; the compiler was no slower. At 0.02 ms the worst case was no better and a compile took
    longer. The setting is process-wide, so it ends with the compile."""
    before = sys.getswitchinterval()
    sys.setswitchinterval(min(before, interval))
    try:
        yield
    finally:
        sys.setswitchinterval(before)


def start_compile_workers(device: torch.device) -> float:
    """Start inductor's compile worker processes and wait until they take jobs, before the first compile;
    returns the seconds waited.

    Until its workers are up, inductor builds each Triton kernel on the compiling thread itself (pytorch#146417),
    and Triton holds the GIL through much of a build (triton-lang/triton#2088), so the serving thread can hardly
    launch a kernel meanwhile (on top of the wait `quick_gil_handoffs` shortens). On an H200 machine the workers
    took 10.2 to 10.9 s to start (bench/README.md). Workers build only Triton (GPU) kernels, so a CPU has nothing
    to wait for. When the cache holds every kernel (a restart, or after the compile child), the wait may be all
    they cost: the benchmarks report it."""
    if device.type != "cuda":
        return 0.0
    # Imported here: inductor is slow to import, and most runs never compile.
    from torch._inductor.async_compile import AsyncCompile

    started = time.perf_counter()
    AsyncCompile.warm_pool()
    try:
        AsyncCompile.wait_pool_ready(timeout=COMPILE_WORKERS_TIMEOUT)
    except Exception as exc:  # whatever stops the workers, compiling on this thread still works
        log.warning("inductor's compile workers did not start (%r); kernels are built on the compile thread", exc)
    else:
        log.info("compile workers ready after %.1f s", time.perf_counter() - started)
    return time.perf_counter() - started


def compiled_graph_count() -> int:
    """Graphs dynamo has compiled in this process, whatever the thread."""
    return torch._dynamo.utils.counters["stats"]["unique_graphs"]
