"""Batch runners for tests: the real tiny pipeline behind a gate, recording what ran."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence

from bot.engine.generation import generate
from bot.engine.images import Picture
from bot.engine.pipelines import Pipelines
from bot.engine.requests import GenerationRequest


class RecordingRunner:
    """Runs the real tiny pipeline and records each batch's prompts, and every request it ran.

    Clearing `gate` holds the GPU thread before its next batch (a busy GPU, on demand); a prompt containing
    "boom" raises inside the batch, like a model failure would.
    """

    def __init__(self, pipes: Pipelines) -> None:
        self.pipes = pipes
        self.batches: list[list[str]] = []
        self.requests: list[GenerationRequest] = []
        self.gate = threading.Event()
        self.gate.set()
        self.waiting = threading.Event()

    @property
    def prompts(self) -> list[str]:
        return [prompt for batch in self.batches for prompt in batch]

    def __call__(self, requests: Sequence[GenerationRequest], should_stop: Callable[[], bool]) -> list[list[Picture]]:
        self.waiting.set()
        self.gate.wait(timeout=60)
        self.waiting.clear()
        self.batches.append([request.prompt for request in requests])
        self.requests.extend(requests)
        if any("boom" in request.prompt for request in requests):
            raise RuntimeError("simulated failure")
        return generate(self.pipes, requests, should_stop)
