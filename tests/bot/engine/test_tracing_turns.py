from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

import numpy as np
import pytest
import torch

from bot.engine.generation import generate
from bot.engine.pipelines import Pipelines
from bot.engine.requests import Kind, check_inputs
from bot.engine.tracing_turns import make_traces_take_turns, model_turn

WAIT = 30  # seconds; only reached when something is broken


class HeldTrace:
    """A torch.fx trace on another thread that stays inside the trace until `release`, the way the compile
    thread's traces do for a while."""

    def __init__(self) -> None:
        self.inside = threading.Event()
        self.release = threading.Event()
        held = self

        class Waits(torch.nn.Module):
            def forward(self, x: torch.Tensor) -> torch.Tensor:
                held.inside.set()
                held.release.wait(WAIT)
                return x + 1

        self.module = Waits()
        self.thread = threading.Thread(target=lambda: torch.fx.symbolic_trace(self.module))

    def start(self) -> None:
        self.thread.start()

    def end(self) -> None:
        self.release.set()
        self.thread.join(WAIT)


@pytest.fixture
def held_trace() -> Iterator[HeldTrace]:
    make_traces_take_turns()
    trace = HeldTrace()
    yield trace
    trace.end()


def run_beside(work: Callable[[], object]) -> tuple[threading.Thread, dict[str, object]]:
    outcome: dict[str, object] = {}

    def run() -> None:
        try:
            outcome["result"] = work()
        except Exception as exc:  # the test reports it
            outcome["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    return thread, outcome


def test_a_model_call_waits_for_a_trace_on_another_thread(held_trace: HeldTrace) -> None:
    linear = torch.nn.Linear(2, 2)
    expected = linear(torch.ones(2))
    with model_turn():  # a batch in flight: the trace waits for it
        held_trace.start()
        assert not held_trace.inside.wait(0.3)
    assert held_trace.inside.wait(WAIT)

    def call() -> torch.Tensor:
        with model_turn():
            return linear(torch.ones(2))

    caller, outcome = run_beside(call)
    caller.join(0.3)
    assert caller.is_alive()  # waits for the trace rather than running into it
    held_trace.end()
    caller.join(WAIT)
    assert "error" not in outcome
    assert torch.equal(outcome["result"], expected)


def test_a_waiting_model_call_goes_before_the_next_trace(held_trace: HeldTrace) -> None:
    events: list[str] = []
    model_may_end = threading.Event()

    class Records(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            events.append("trace")
            return x + 1

    def call() -> None:
        with model_turn():
            events.append("model")
            model_may_end.wait(WAIT)

    # the compile thread's way: one trace straight after another
    held_trace.thread = threading.Thread(
        target=lambda: [torch.fx.symbolic_trace(module) for module in (held_trace.module, Records())]
    )
    held_trace.start()
    assert held_trace.inside.wait(WAIT)
    caller, outcome = run_beside(call)
    time.sleep(0.3)  # the call is waiting for the first trace now
    held_trace.release.set()
    time.sleep(0.3)
    assert events == ["model"]  # the call went first, and the second trace waits for it to end
    model_may_end.set()
    held_trace.end()
    caller.join(WAIT)
    assert events == ["model", "trace"] and "error" not in outcome


def test_a_generation_during_a_trace_waits_and_gives_its_usual_images(
    pipes: Pipelines, buckets, held_trace: HeldTrace
) -> None:
    request = check_inputs(Kind.IMAGINE, "a fox", buckets=buckets, steps=1, seed=4)
    [[expected]] = generate(pipes, [request])
    held_trace.start()
    assert held_trace.inside.wait(WAIT)
    generation, outcome = run_beside(lambda: generate(pipes, [request]))
    generation.join(0.5)
    assert generation.is_alive()
    held_trace.end()
    generation.join(WAIT)
    assert "error" not in outcome
    [[image]] = outcome["result"]
    assert np.array_equal(np.asarray(image), np.asarray(expected))
