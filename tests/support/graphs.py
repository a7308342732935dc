"""What a CUDA graph does, on the CPU: the tests' stand-in for `bot.engine.cuda_graphs.CudaGraph`, which needs a
GPU. A replay computes the captured call again from the tensors it read, into the tensors it returned first, so a
graph that is not handed a call's inputs, or whose outputs are handed out without copying, gives wrong pictures
here as it would on a GPU."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.utils import _pytree as pytree


class RerunGraph:
    def __init__(self, run: Callable[[], Any]) -> None:
        self._run = run
        self.outputs = run()
        self.replays = 0

    def replay(self) -> None:
        for own, new in zip(pytree.tree_leaves(self.outputs), pytree.tree_leaves(self._run()), strict=True):
            if isinstance(own, torch.Tensor):
                own.copy_(new)
        self.replays += 1


class RerunCapture:
    """A `bot.engine.cuda_graphs.Capture` that keeps the graphs it made."""

    def __init__(self) -> None:
        self.graphs: list[RerunGraph] = []

    def __call__(self, run: Callable[[], Any]) -> RerunGraph:
        self.graphs.append(RerunGraph(run))
        return self.graphs[-1]

    @property
    def replays(self) -> int:
        return sum(graph.replays for graph in self.graphs)
