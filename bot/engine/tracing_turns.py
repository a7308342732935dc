"""Model calls and torch.fx tracing take turns, because a trace changes every module in the process.

While torch.fx traces (torch.compile does, on the compile thread, each time it turns a region into a graph),
it replaces `torch.nn.Module.__call__` for the whole process, not only for its own thread. A model call on
another thread at that moment runs into the tracer and fails with "module is not installed as a submodule"
(pytorch/pytorch#112775). On an H100 this crashed an eager request served while the compiled twins compiled.

So a trace and a model call on another thread never overlap. Model calls go first: a trace waits while one runs
or waits, and a model call waits only for the trace in flight. With a plain lock instead, one request served
during compilation waited 34 s on an H100. A lock does not queue its waiters: the thread that releases it can
take it straight back, so back-to-back traces can keep a waiting batch out. The rest of compiling (code
generation, Triton builds) runs beside serving either way.
"""

from __future__ import annotations

import contextlib
import functools
import threading
from collections import Counter
from collections.abc import Iterator

from torch.fx import Tracer


class _Turns:
    """Who may run now: one thread's traces, or model calls on any threads."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._tracer: int | None = None  # the thread tracing now
        self._trace_depth = 0  # a trace may start another one inside it
        self._model_threads: Counter[int] = Counter()  # threads running or waiting to run models

    @contextlib.contextmanager
    def model_call(self) -> Iterator[None]:
        me = threading.get_ident()
        with self._changed:
            self._model_threads[me] += 1
            self._changed.wait_for(lambda: self._tracer in (None, me))
        try:
            yield
        finally:
            with self._changed:
                self._model_threads[me] -= 1
                self._changed.notify_all()

    @contextlib.contextmanager
    def trace(self) -> Iterator[None]:
        me = threading.get_ident()
        with self._changed:
            self._changed.wait_for(lambda: self._tracer in (None, me) and not self._models_elsewhere(me))
            self._tracer = me
            self._trace_depth += 1
        try:
            yield
        finally:
            with self._changed:
                self._trace_depth -= 1
                if self._trace_depth == 0:
                    self._tracer = None
                self._changed.notify_all()

    def _models_elsewhere(self, me: int) -> bool:
        return any(count for thread, count in self._model_threads.items() if thread != me)


_turns = _Turns()


def make_traces_take_turns() -> None:
    """From now on every torch.fx trace in this process waits for model calls on other threads (idempotent)."""
    if getattr(Tracer.trace, "takes_turns", False):
        return
    trace = Tracer.trace

    @functools.wraps(trace)
    def trace_in_turn(self: Tracer, *args: object, **kwargs: object) -> object:
        with _turns.trace():
            return trace(self, *args, **kwargs)

    trace_in_turn.takes_turns = True  # type: ignore[attr-defined]
    Tracer.trace = trace_in_turn  # type: ignore[method-assign]


def model_turn() -> contextlib.AbstractContextManager[None]:
    """Hold while running models on any thread but the compile thread."""
    return _turns.model_call()
