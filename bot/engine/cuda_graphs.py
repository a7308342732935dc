"""Batches of one image, and new prompts, replayed from CUDA graphs (`CUDA_GRAPHS`): a UNet step's kernels, or
the text encoders', launched all at once.

At batch 1 the GPU waits on the CPU launching kernels, not on their arithmetic: an SSD-1B UNet forward is over
4,000 operations and took 47 ms on an H200 for 4.2 TFLOP, where the card computes that in about 6 ms. A CUDA
graph records a forward's kernels once; a replay launches them all with one call, and no Python runs.

- One graph per input signature: the shapes, dtypes and devices of the tensor arguments, whether autograd
  records, and every other argument's value. It is captured the first time its signature comes; that call runs
  eagerly and its result is returned. The serving thread's warm-up (bot.engine.generation.warm_up) brings
  every bucket at batch 1, unstyled and in one fused style, so no user waits for a capture. Remix and
  inpainting give the UNet the same inputs as text-to-image, so they replay its graphs.
- A graph reads its inputs from tensors of its own and writes its outputs to tensors of its own: a replay
  copies the call's inputs in and hands out copies of the outputs, so a later replay never overwrites a result.
- The graphs of one `cuda_graph_capture` share a memory pool, so a forward's activations are held once for
  all shapes. That is safe because replays run one at a time, under one lock, and each one's outputs are copied
  before the next replay.
- A graph reads the weights at the addresses it was captured with: a graphed module's weights may change only
  in place (the fused styles copy into theirs: bot.engine.fused_styles).
- Python in the forward runs only at capture. Whatever it decides per call is frozen into the graph, such as
  which of peft's adapters are on: graph only modules without adapter layers.
- Only batches of one for now (`GRAPHED_BATCH_SIZES`): at batch 8 a forward computes long enough per kernel to
  hide its launches (96 ms on the H200, twice batch 1's time for eight times the work). The sizes in between
  wait for a GPU to measure what graphs give them, and the memory their activations would hold.
- The text encoders without adapter layers are graphed the same way, for every number of new prompts up to the
  batch size: their activations at 77 tokens a prompt are small. Their 44 layers run before the first step, as
  launch-bound at 8 prompts as at 1: a new prompt took 48 and 59 ms longer than a cached one in the H100
  table's lone requests, and a stream's batches encode new prompts each time (bench/README.md). They encode
  every batch but those of styles whose LoRA adapts the text encoders, which keep peft's text encoders, whose
  adapters the style switches on (bot.engine.fused_styles).
- A capture that fails leaves its signature eager, with one warning.
- With `COMPILE` too, once the compiled twins are ready, each UNet graph is captured again over the compiled
  twin of its UNet (`GraphedForward.recapture`, bot.engine.compiled): the same inputs and outputs, the same
  arithmetic (to rounding), fewer and fused kernels. A replay runs no Python, so it can never recompile. The
  new graph replaces the old one only once both, replayed from the same inputs, `agree`.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable, Collection, Hashable
from typing import Any, Protocol

import torch
from torch.utils import _pytree as pytree

from bot.engine.weight_sharing import weight_sharing_twin

log = logging.getLogger(__name__)

GRAPHED_BATCH_SIZES = frozenset({1})
# Signatures per graphed module: 7 aspect buckets, with room for image-to-image's and inpainting's inputs should
# they ever differ. Past it, new signatures run eager rather than take memory without bound.
MAX_GRAPHS = 16
WARM_UPS = 2  # eager runs on the capture's side stream first: cuBLAS and cuDNN set up outside the capture
# How far a graph captured again may stray from the one it replaces, as a share of each output's largest value:
# compiled kernels round differently, by far less; a graph that reads the wrong memory is off by the whole value.
AGREEMENT = 0.05
# Graphs share a memory pool, so replays (and the copies of their outputs) run one at a time.
_REPLAY_LOCK = threading.Lock()


class Graph(Protocol):
    """A captured call: `replay` recomputes `outputs` in place from the tensors the call read."""

    outputs: Any

    def replay(self) -> None: ...


Capture = Callable[[Callable[[], Any]], Graph]


class CudaGraph:
    """`run` captured as a CUDA graph, after warm-up runs on a side stream (as torch's documentation does it), on
    which it is captured too: cuBLAS keeps a workspace per stream, set up by then."""

    def __init__(self, run: Callable[[], Any], pool: tuple[int, int] | None = None) -> None:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(WARM_UPS):
                run()
        torch.cuda.current_stream().wait_stream(side)
        self._graph = torch.cuda.CUDAGraph()
        # thread_local: CUDA calls that other threads make meanwhile (the compile thread's) do not end the capture
        with torch.cuda.graph(self._graph, pool=pool, stream=side, capture_error_mode="thread_local"):
            self.outputs = run()

    def replay(self) -> None:
        self._graph.replay()


def cuda_graph_capture() -> Capture:
    """Captures as CUDA graphs that share one memory pool: a forward's activations are held once for all."""
    pool = torch.cuda.graph_pool_handle()
    return lambda run: CudaGraph(run, pool)


class _Captured:
    def __init__(self, graph: Graph, inputs: list[object], spec: pytree.TreeSpec, grad_enabled: bool) -> None:
        self.graph = graph
        self.inputs = inputs  # the flattened arguments the graph reads; tensors are its own
        self.spec = spec  # how `inputs` make the call's arguments
        self.grad_enabled = grad_enabled


class GraphedForward:
    """A module's forward that replays a graph for each signature it has seen at a batch size of
    `batch_sizes` (the first tensor argument's first dimension), and runs eager otherwise."""

    def __init__(
        self,
        forward: Callable[..., Any],
        capture: Capture,
        *,
        batch_sizes: Collection[int] = GRAPHED_BATCH_SIZES,
        max_graphs: int = MAX_GRAPHS,
    ) -> None:
        self._forward = forward
        self._capture = capture
        self._batch_sizes = batch_sizes
        self._max_graphs = max_graphs
        self._graphs: dict[Hashable, _Captured] = {}
        self._eager: set[Hashable] = set()  # signatures whose capture failed

    @property
    def graphs(self) -> int:
        return len(self._graphs)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        leaves, spec = pytree.tree_flatten((args, kwargs))
        key = self._signature(leaves, spec)
        if key is None or key in self._eager:
            return self._forward(*args, **kwargs)
        with _REPLAY_LOCK:
            captured = self._graphs.get(key)
            if captured is not None:
                for own, leaf in zip(captured.inputs, leaves, strict=True):
                    if isinstance(own, torch.Tensor):
                        own.copy_(leaf)
                captured.graph.replay()
                return pytree.tree_map_only(torch.Tensor, torch.clone, captured.graph.outputs)
            if len(self._graphs) < self._max_graphs:  # a capture allocates from the shared pool: under the lock
                return self._run_and_capture(key, leaves, spec)
        return self._forward(*args, **kwargs)

    def _signature(self, leaves: list[Any], spec: pytree.TreeSpec) -> Hashable | None:
        """What a graph is valid for; None: a call this never graphs (its batch size, or an argument that
        cannot be told apart from another by value)."""
        tensors = [leaf for leaf in leaves if isinstance(leaf, torch.Tensor)]
        if not tensors or tensors[0].dim() == 0 or tensors[0].shape[0] not in self._batch_sizes:
            return None
        parts: list[Hashable] = [spec, torch.is_grad_enabled()]
        for leaf in leaves:
            if isinstance(leaf, torch.Tensor):
                # Not its strides: a replay copies the values in, whatever their layout.
                parts.append((tuple(leaf.shape), leaf.dtype, leaf.device, leaf.requires_grad))
            elif isinstance(leaf, Hashable) and not isinstance(leaf, torch.nn.Module):
                parts.append((type(leaf), leaf))
            else:
                return None
        return tuple(parts)

    def _run_and_capture(self, key: Hashable, leaves: list[Any], spec: pytree.TreeSpec) -> Any:
        """The eager result of this call; the capture for later calls follows it."""
        args, kwargs = pytree.tree_unflatten(leaves, spec)
        result = self._forward(*args, **kwargs)
        inputs = [leaf.clone() if isinstance(leaf, torch.Tensor) else leaf for leaf in leaves]
        own_args, own_kwargs = pytree.tree_unflatten(inputs, spec)
        try:
            graph = self._capture(lambda: self._forward(*own_args, **own_kwargs))
        except Exception as exc:  # whatever the capture met, the eager forward still serves this shape
            self._eager.add(key)
            log.warning("a batch of one could not be captured as a CUDA graph; its shape runs eager: %r", exc)
        else:
            self._graphs[key] = _Captured(graph, inputs, spec, torch.is_grad_enabled())
        return result

    def recapture(self, forward: Callable[..., Any]) -> int:
        """Capture every graph again over `forward`, which computes what this one's forward computes (a compiled
        twin of its module), from the graph's own inputs; returns how many graphs it replaced.

        Each is run once first, outside the lock, so that whatever it compiles, it compiles while the graphs
        keep replaying, and not inside the capture, where inductor's first call breaks it (pytorch#185074); its
        result, read from inputs a replay may be writing, is thrown away. Then, under the lock, it is captured,
        and the new graph and the old one are replayed from the same inputs: a graph whose outputs do not
        `agree` with the old one's, or a capture that fails, keeps the old graph, so a capture that went wrong on
        some GPU costs speed, never pictures (on ROCm, such a capture has replayed wrong results without an
        error: pytorch#155684). Signatures that come later are captured over the eager forward: capturing one
        over `forward` could compile, under the lock, on a user's request."""
        with _REPLAY_LOCK:
            graphs = list(self._graphs.items())
        replaced = 0
        for key, captured in graphs:
            args, kwargs = pytree.tree_unflatten(captured.inputs, captured.spec)
            with torch.set_grad_enabled(captured.grad_enabled):
                forward(*args, **kwargs)
                with _REPLAY_LOCK:
                    try:
                        graph = self._capture(functools.partial(forward, *args, **kwargs))
                        captured.graph.replay()
                        graph.replay()
                        problem = None if agree(captured.graph.outputs, graph.outputs) else "its outputs differ"
                    except Exception as exc:  # the graph it has still serves
                        problem = repr(exc)
                    if problem is not None:
                        log.warning("a batch of one's graph was not captured again (%s); it keeps its own", problem)
                        continue
                    self._graphs[key] = _Captured(graph, captured.inputs, captured.spec, captured.grad_enabled)
            replaced += 1
        return replaced


def agree(reference: Any, candidate: Any, tolerance: float = AGREEMENT) -> bool:
    """Whether each tensor of `candidate` is the one of `reference` in the same place, to within `tolerance` of
    that tensor's largest finite value, with the same entries not a number or infinite (of the same sign).
    Kernels that fuse or order their arithmetic differently round differently; a graph that reads or writes the
    wrong memory does not come close."""
    for expected, actual in zip(pytree.tree_leaves(reference), pytree.tree_leaves(candidate), strict=True):
        if not isinstance(expected, torch.Tensor):
            continue
        expected, actual = expected.float(), actual.float()
        if any(not torch.equal(test(expected), test(actual)) for test in (torch.isnan, torch.isposinf, torch.isneginf)):
            return False
        finite = expected.isfinite()
        expected, actual = expected[finite], actual[finite]
        if expected.numel() and (actual - expected).abs().max() > tolerance * expected.abs().max():
            return False
    return True


def graphed_twin(
    module: torch.nn.Module,
    capture: Capture,
    *,
    batch_sizes: Collection[int] = GRAPHED_BATCH_SIZES,
    keep: Callable[[Any], Any] | None = None,
) -> torch.nn.Module:
    """A twin of `module` (sharing every weight) whose batches of `batch_sizes` replay graphs. Nothing may copy
    the twin: its forward is an attribute of its own, bound to it. `keep` picks what the twin returns of
    `module`'s output, eager or replayed: a graph holds only those outputs, and its other tensors' memory goes
    back to the pool."""
    twin = weight_sharing_twin(module)
    forward = twin.forward if keep is None else _keeping(twin.forward, keep)
    twin.forward = GraphedForward(forward, capture, batch_sizes=batch_sizes)
    return twin


def _keeping(forward: Callable[..., Any], keep: Callable[[Any], Any]) -> Callable[..., Any]:
    def kept(*args: Any, **kwargs: Any) -> Any:
        return keep(forward(*args, **kwargs))

    return kept
