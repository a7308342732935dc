"""The styles' LoRA adapters: loaded once at start through diffusers' peft integration, switched per batch.

Switching is `set_adapters` / `disable_lora` on the peft layers already in the UNet: nothing is read from disk
again and no weight is rewritten, so a switch costs microseconds to milliseconds (bench/styles.py), and with
every adapter disabled the UNet computes exactly what it computed before any was loaded.
"""

from __future__ import annotations

import logging
from pathlib import Path

from diffusers import StableDiffusionXLPipeline

from bot.styles import Style, StyleBook

log = logging.getLogger(__name__)


class StyleAdapters:
    """The style book the engine serves, and which adapter is active."""

    def __init__(self, pipe: StableDiffusionXLPipeline | None = None, book: StyleBook | None = None) -> None:
        self._pipe = pipe
        self.book = book or StyleBook()
        self._active: str | None = None

    @classmethod
    def load(cls, pipe: StableDiffusionXLPipeline, book: StyleBook) -> StyleAdapters:
        """Load every style's LoRA; a style whose adapter cannot be loaded is dropped with one log line."""
        broken = set()
        for style in book:
            if style.lora is None:
                continue
            try:
                if _looks_like_a_path(style.lora) and not Path(style.lora).expanduser().exists():
                    raise FileNotFoundError("no such file or folder")
                pipe.load_lora_weights(style.lora, adapter_name=style.name)
            except Exception as exc:  # a missing file, a hub id offline, a LoRA for another model
                log.error("style %s is disabled: its LoRA %s cannot be loaded (%s)", style.name, style.lora, exc)
                broken.add(style.name)
        adapters = cls(pipe, book.without(broken))
        if any(style.lora for style in adapters.book):
            pipe.disable_lora()
        return adapters

    def style(self, name: str | None) -> Style | None:
        return None if name is None else self.book.get(name)

    def uses_adapter(self, name: str | None) -> bool:
        style = self.style(name)
        return style is not None and style.lora is not None

    def activate(self, style: Style | None) -> None:
        """Make the UNet compute with `style`'s adapter, or with none."""
        wanted = style.name if style is not None and style.lora is not None else None
        if wanted == self._active or self._pipe is None:
            return
        if wanted is None:
            self._pipe.disable_lora()
        else:
            self._pipe.enable_lora()
            self._pipe.set_adapters([wanted], adapter_weights=[style.weight])
        self._active = wanted


def _looks_like_a_path(source: str) -> bool:
    return source.startswith(("/", ".", "~")) or source.endswith(".safetensors")
