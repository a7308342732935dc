"""The styles' LoRA adapters: loaded once at start through diffusers' peft integration, switched per batch.

Switching selects another adapter on the peft layers already in the models: nothing is read from disk again and
no weight is rewritten, and with every adapter disabled the UNet computes exactly what it computed before any
was loaded. The switch calls peft's own per-layer methods, as diffusers' `set_adapters` / `disable_lora` do, but
on a list of the adapter layers made once at load: diffusers walks all 4,590 modules of the full-size UNet (and
the text encoders) on every call, which makes a switch cost 2.4 to 4 times as much (bench/styles.py).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from diffusers import DiffusionPipeline, StableDiffusionXLPipeline
from peft.tuners.tuners_utils import BaseTunerLayer

from bot.styles import Style, StyleBook

log = logging.getLogger(__name__)


class StyleAdapters:
    """The style book the engine serves, and which adapter each model's layers compute with."""

    def __init__(self, pipe: StableDiffusionXLPipeline | None = None, book: StyleBook | None = None) -> None:
        """Switches the adapter layers of `pipe`'s models, and only those: the compiled twins' text encoders have
        copies of their own, switched by the twins' own object. Every adapter starts off."""
        self.book = book or StyleBook()
        models = _models(pipe) if pipe is not None else {}
        self._switches = {
            name: (models[name], _AdapterSwitch(layers)) for name, layers in _layers_by_model(models).items()
        }

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
        # peft adds its layers in training mode. A LoRA saved with its training configuration brings dropout
        # layers, which would then drop at random: one seed would give a different picture each time.
        for model in _models(pipe).values():
            model.eval()
        return cls(pipe, book.without(broken))

    @property
    def layers(self) -> tuple[BaseTunerLayer, ...]:
        return tuple(layer for _, switch in self._switches.values() for layer in switch.layers)

    def style(self, name: str | None) -> Style | None:
        return None if name is None else self.book.get(name)

    def adapter(self, name: str | None) -> str | None:
        """The adapter the style called `name` computes with."""
        return adapter_of(self.style(name))

    def activate(self, style: Style | None, runs: DiffusionPipeline) -> None:
        """Make the models that `runs` runs compute with `style`'s adapter, or with none. The others' layers stay
        as they are: a batch on another UNet or other text encoders (bot.engine.fused_styles) never reads them,
        and switching the full-size UNet's 272 layers would be work for nothing on the GPU thread."""
        for name, (model, switch) in self._switches.items():
            if getattr(runs, name, None) is model:
                switch.activate(style)


class _AdapterSwitch:
    """The adapter layers of one model, and the adapter they compute with."""

    def __init__(self, layers: list[BaseTunerLayer]) -> None:
        self.layers = layers
        for layer in layers:
            layer.enable_adapters(False)
        self._active: str | None = None  # the adapter the layers compute with; None: all disabled
        self._selected: str | None = None  # the adapter last selected on the layers, kept while they are disabled

    def activate(self, style: Style | None) -> None:
        wanted = adapter_of(style)
        if wanted == self._active:
            return
        for layer in self.layers:
            if wanted is None:
                layer.enable_adapters(False)
                continue
            if self._active is None:
                layer.enable_adapters(True)
            if wanted != self._selected:
                layer.set_adapter([wanted])
            layer.set_scale(wanted, style.weight)
        self._active = wanted
        self._selected = wanted or self._selected


def adapter_of(style: Style | None) -> str | None:
    """A style's adapter is named after it; no style, or a template-only one, computes with none."""
    return style.name if style is not None and style.lora is not None else None


def is_adapter_weight(name: str) -> bool:
    """Whether a parameter name is one of a LoRA adapter's own weights (peft names them `lora_A`, `lora_B`, …)."""
    return ".lora_" in name


def tuner_layers(model: torch.nn.Module) -> list[tuple[str, BaseTunerLayer]]:
    """The layers peft put adapters into, in `model`, by name."""
    return [(name, module) for name, module in model.named_modules() if isinstance(module, BaseTunerLayer)]


def held_adapters(layer: BaseTunerLayer) -> set[str]:
    """The adapters that have weights in `layer`."""
    return {adapter for attribute in layer.adapter_layer_names for adapter in getattr(layer, attribute)}


def adapters_in(model: torch.nn.Module) -> frozenset[str]:
    """The adapters that change what `model` computes: those with weights in any of its layers."""
    return frozenset(adapter for _, layer in tuner_layers(model) for adapter in held_adapters(layer))


def _layers_by_model(models: dict[str, torch.nn.Module]) -> dict[str, list[BaseTunerLayer]]:
    """The adapter layers per model that has any (the UNet, the text encoders)."""
    layers = {name: [layer for _, layer in tuner_layers(model)] for name, model in models.items()}
    return {name: model_layers for name, model_layers in layers.items() if model_layers}


def _models(pipe: StableDiffusionXLPipeline) -> dict[str, torch.nn.Module]:
    return {name: component for name, component in pipe.components.items() if isinstance(component, torch.nn.Module)}


def _looks_like_a_path(source: str) -> bool:
    return source.startswith(("/", ".", "~")) or source.endswith(".safetensors")
