"""Model calls and torch.fx tracing take turns, because a trace changes every module in the process.

While torch.fx traces (torch.compile does, on the compile thread, each time it turns a region into a graph), it
replaces `torch.nn.Module.__call__` for the whole process, not only for its own thread. A model call on another
thread at that moment runs into the tracer and fails with "module is not installed as a submodule"
(pytorch/pytorch#112775). On an H100 this crashed an eager request served while the compiled twins compiled.

So a trace and a model call outside the compile thread never overlap: a trace waits for the batch in flight and a
batch waits for the trace in flight (seconds at most). The rest of compiling (code generation, Triton builds)
still runs beside serving.
"""

from __future__ import annotations

import contextlib
import functools
import threading
from collections.abc import Iterator

from torch.fx import Tracer

_turns = threading.RLock()  # reentrant: a trace may start another one inside it


def make_traces_take_turns() -> None:
    """From now on every torch.fx trace in this process waits for model calls to finish (idempotent)."""
    if getattr(Tracer.trace, "takes_turns", False):
        return
    trace = Tracer.trace

    @functools.wraps(trace)
    def trace_in_turn(self: Tracer, *args: object, **kwargs: object) -> object:
        with _turns:
            return trace(self, *args, **kwargs)

    trace_in_turn.takes_turns = True  # type: ignore[attr-defined]
    Tracer.trace = trace_in_turn  # type: ignore[method-assign]


@contextlib.contextmanager
def model_turn() -> Iterator[None]:
    """Hold while running models on any thread but the compile thread."""
    with _turns:
        yield
