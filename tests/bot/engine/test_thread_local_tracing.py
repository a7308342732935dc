from __future__ import annotations

import threading
from collections.abc import Iterator

import numpy as np
import pytest
import torch

from bot.engine.generation import generate
from bot.engine.pipelines import Pipelines
from bot.engine.requests import Kind, check_inputs
from bot.engine.thread_local_tracing import make_tracing_thread_local

WAIT = 30  # seconds; only reached when something is broken


class HeldTrace:
    """A torch.fx trace on another thread that stays inside the trace until `release`, the way the compile
    thread's traces do for a while. Its module calls a submodule, which the trace must record."""

    def __init__(self) -> None:
        self.inside = threading.Event()
        self.release = threading.Event()
        self.graph: torch.fx.GraphModule | None = None
        held = self

        class Waits(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.inner = torch.nn.Linear(2, 2)

            def forward(self, x: torch.Tensor) -> torch.Tensor:
                held.inside.set()
                held.release.wait(WAIT)
                return self.inner(x) + 1

        self.thread = threading.Thread(target=self._trace, args=(Waits(),))

    def _trace(self, module: torch.nn.Module) -> None:
        self.graph = torch.fx.symbolic_trace(module)

    def start(self) -> None:
        self.thread.start()
        assert self.inside.wait(WAIT)

    def end(self) -> None:
        self.release.set()
        self.thread.join(WAIT)


@pytest.fixture
def held_trace() -> Iterator[HeldTrace]:
    make_tracing_thread_local()
    trace = HeldTrace()
    yield trace
    trace.end()


def test_a_model_call_beside_a_trace_runs_at_once_untouched(held_trace: HeldTrace) -> None:
    model = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))
    expected = model(torch.ones(2))
    held_trace.start()
    result = model(torch.ones(2))  # untouched by the trace: without the fix, "not installed as a submodule"
    assert held_trace.thread.is_alive()  # the trace is still in flight: nothing waited for it
    assert torch.equal(result, expected)


def test_the_tracing_thread_still_records_its_module_calls(held_trace: HeldTrace) -> None:
    held_trace.start()
    torch.nn.Linear(2, 2)(torch.ones(2))  # a call elsewhere during the trace
    held_trace.end()
    assert held_trace.graph is not None
    calls = [node.target for node in held_trace.graph.graph.nodes if node.op == "call_module"]
    assert calls == ["inner"]
    assert torch.equal(held_trace.graph(torch.zeros(2)), held_trace.graph.inner(torch.zeros(2)) + 1)


def test_the_patches_are_gone_once_the_trace_ends(held_trace: HeldTrace) -> None:
    call, getattr_ = torch.nn.Module.__call__, torch.nn.Module.__getattr__
    held_trace.start()
    assert torch.nn.Module.__call__ is not call  # patched meanwhile, for the tracing thread
    held_trace.end()
    assert (torch.nn.Module.__call__, torch.nn.Module.__getattr__) == (call, getattr_)


def test_a_generation_during_a_trace_gives_its_usual_images_at_once(
    pipes: Pipelines, buckets, held_trace: HeldTrace
) -> None:
    request = check_inputs(Kind.IMAGINE, "a fox", buckets=buckets, steps=1, seed=4)
    [[expected]] = generate(pipes, [request])
    held_trace.start()
    [[image]] = generate(pipes, [request])
    assert held_trace.thread.is_alive()
    assert np.array_equal(np.asarray(image), np.asarray(expected))
