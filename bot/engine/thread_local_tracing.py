"""torch.fx traces change modules for their own thread only, so models keep serving beside the compile thread.

While torch.fx traces (torch.compile does, on the compile thread, each time it turns a region into a graph), it
replaces `torch.nn.Module.__call__` and `__getattr__` on the class, so for every thread in the process. A model
call on another thread at that moment runs into the tracer and fails with "module is not installed as a
submodule" (pytorch/pytorch#112775); on an H100 that crashed an eager request served while the twins compiled.

The first answer made model calls wait for traces. Here nothing waits: every method patch a tracer makes
applies to the thread that traces, and other threads keep the method they had, untouched by the trace. The
tracer's other patches (functions wrapped with `torch.fx.wrap`, `math`) already pass ordinary arguments straight
through. On an H100 the worst request served during the compile took 31.6 s with the waits and 37.2 s without
them, so the waits were not what stalled it (bot.engine.compiled, `quick_gil_handoffs`), and this way needs no
turn-taking at every model call.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable

from torch.fx._symbolic_trace import _Patcher


def make_tracing_thread_local() -> None:
    """From now on, the method patches of every torch.fx trace in this process hold only on the tracing thread
    (idempotent)."""
    if getattr(_Patcher.patch_method, "thread_local", False):
        return
    patch_method = _Patcher.patch_method

    @functools.wraps(patch_method)
    def patch_method_on_this_thread(
        self: _Patcher, cls: type, name: str, new_fn: Callable[..., object], deduplicate: bool = True
    ) -> None:
        tracing_thread = threading.get_ident()
        elsewhere = getattr(cls, name)  # what every other thread keeps calling

        @functools.wraps(new_fn)
        def on_tracing_thread_only(*args: object, **kwargs: object) -> object:
            if threading.get_ident() == tracing_thread:
                return new_fn(*args, **kwargs)
            return elsewhere(*args, **kwargs)

        patch_method(self, cls, name, on_tracing_thread_only, deduplicate)

    patch_method_on_this_thread.thread_local = True  # type: ignore[attr-defined]
    _Patcher.patch_method = patch_method_on_this_thread  # type: ignore[method-assign]
