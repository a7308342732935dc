"""Batches on models without peft's adapter layers: styled ones on a UNet, and text encoders, whose weights hold
the style's LoRA.

peft computes a LoRA beside every layer it adapts: two small matrix products, a scale and an add, each its own
operation. On SSD-1B's UNet, a LoRA on the attention projections adapts 272 layers, which makes 6,959 operations
per forward instead of 4,239. At batch 1 a GPU waits on operations being launched, not on their arithmetic, so
those extra operations cost nearly their number: on SSD-1B's module tree at a tenth of its channels, on one CPU
thread (`bench.styles`, Table 3), a styled forward took 1.27 to 1.47x an unstyled one in eight runs. Here the
style's update is added into a copy of the adapted layers' weights, W + scale * B @ A, once per style switch, and
the UNet then runs as if no adapter existed: 0.88 to 1.03x (once 1.29x).

- The fused UNet is a twin of the eager one (bot.engine.weight_sharing): it shares every weight except those of
  the adapted layers, which it holds once however many styles there are (about 0.87 GB in float16 for the
  attention projections of SSD-1B).
- Every fuse starts from the eager model's untouched weights, so switching back and forth never drifts, as
  merging into the weights and unmerging again would (bench.styles).
- (W + ΔW) x rounds differently from W x + ΔW x, so a styled picture here is close to, not bit-identical with,
  the one peft computes; a seed still gives one picture.
- Only plain LoRA on linear and 2-D convolution layers is fused (peft's own `get_delta_weight`). A style whose
  adapter has anything else (DoRA, a LoRA bias, another layer type) keeps peft's layers, as before.
- The compiled twins (bot.engine.compiled) compile a twin of the fused UNet that shares its fused weights; the
  weights are inputs to the compiled graphs, so one set of graphs serves every style.
- Unstyled batches run on a twin of the eager UNet in which each adapter layer is the layer it adapts: it
  computes exactly what the eager UNet computes with its adapters off, without peft's checks in 272 layers
  (0.87 to 0.98x the time of a forward through the adapter layers switched off), and holds no memory. Their
  prompts are encoded on such twins of the text encoders, and so are those of styles whose LoRA leaves the text
  encoders alone (many adapt only the UNet), fused or not: they encode to exactly what the eager encoders give
  them.
- The styles whose LoRA adapts the text encoders too (as many trained SDXL LoRAs do) encode on fused text
  encoders, built the same way (`FusedTextEncoders`): a new prompt of theirs no longer runs peft's layers, and
  with `CUDA_GRAPHS` it replays graphs, as an unstyled one does. A style that the fused text encoders cannot
  hold keeps the eager ones, whose adapter layers the style switches on.
- With `CUDA_GRAPHS`, both UNets and both kinds of text encoders are graphed twins (bot.engine.cuda_graphs),
  and the pipelines here serve unstyled batches even where no style brought adapter layers: batches of one
  image replay CUDA graphs, and so does encoding new prompts, up to a batch's worth. A fuse copies into the fused
  weights, so the graphs captured on them serve every style. With `COMPILE` too, both UNets' graphs are captured
  again over their compiled twins (bot.engine.compiled).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypeVar

import torch
from diffusers import DiffusionPipeline, UNet2DConditionModel
from peft.tuners import lora

from bot.engine.adapters import adapter_of, adapters_in, held_adapters, tuner_layers
from bot.engine.cuda_graphs import Capture, GraphedForward, graphed_twin
from bot.engine.pipelines import TEXT_ENCODERS, Pipelines, ServedXLPipeline, pipeline_over, task_pipelines
from bot.engine.requests import Kind
from bot.engine.text_embeddings import conditioning_only
from bot.engine.weight_sharing import weight_sharing_twin
from bot.styles import Style, StyleBook

FUSABLE_LAYERS = (lora.Linear, lora.Conv2d)
AdaptedLayer = lora.Linear | lora.Conv2d
Model = TypeVar("Model", bound=torch.nn.Module)


class FusedModel:
    """An adapter-free twin of a model (the UNet, a text encoder) in which each fusable adapter layer is a copy of
    the layer it adapts, with a weight of its own that holds the base weight plus one adapter's update."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = adapter_free_twin(model)
        self._layers: list[tuple[AdaptedLayer, torch.nn.Module]] = []
        for name, layer in _adapted_layers(model):
            fused = weight_sharing_twin(layer.get_base_layer(), own=lambda parameter: parameter == "weight")
            self.model.set_submodule(name, fused)
            self._layers.append((layer, fused))
        self.adapters = fusable_adapters(model)
        self.held = adapters_in(model)  # fusable or not
        self._fused: tuple[str, float] | None = None
        self._plain: set[torch.nn.Module] = {fused for _, fused in self._layers}  # holding the base weight as is

    @torch.no_grad()
    def fuse(self, adapter: str, scale: float) -> None:
        """Make the twin compute with `adapter` at `scale` (a style's weight), from the untouched base weights."""
        if self._fused == (adapter, scale):
            return
        self._fused = None  # until every layer holds the new update
        for layer, fused in self._layers:
            base = layer.get_base_layer().weight
            if adapter not in layer.lora_A:
                if fused not in self._plain:  # a layer the style does not adapt, left changed by another
                    fused.weight.copy_(base)
                    self._plain.add(fused)
                continue
            layer.set_scale(adapter, scale)
            # Added in float32, then rounded once to the weight's dtype.
            fused.weight.copy_(base.float() + layer.get_delta_weight(adapter).float())
            self._plain.discard(fused)
        self._fused = (adapter, scale)


class FusedTextEncoders:
    """Fused twins of the text encoders that styles' LoRAs adapt, for the styles whose adapter every one of them
    holding it can fuse. Each pipeline attribute maps to what serves it: a fused twin (or its graph), or for a text
    encoder no style adapts, the adapter-free one unstyled prompts encode on."""

    def __init__(self, fused: Mapping[str, FusedModel], serving: Mapping[str, torch.nn.Module]) -> None:
        self.fused = dict(fused)
        self.serving = dict(serving)
        held = frozenset().union(*(encoder.held for encoder in self.fused.values()))
        self.adapters = frozenset(
            adapter
            for adapter in held
            if all(adapter in encoder.adapters for encoder in self.fused.values() if adapter in encoder.held)
        )

    def fuse(self, adapter: str, scale: float) -> None:
        for encoder in self.fused.values():
            encoder.fuse(adapter, scale)


class FusedStyles:
    """The task pipelines for batches that peft's adapter layers need not run, or need run only in the UNet:
    unstyled ones on an adapter-free UNet, styled ones on a fused UNet (`FusedModel`) where it holds their adapter,
    and on adapter-free text encoders where their LoRA leaves those alone, or else on fused ones where those hold
    it. Runs on the GPU thread, between batches, as style switches do."""

    def __init__(
        self,
        pipes: Pipelines,
        *,
        plain_unet: UNet2DConditionModel | None,
        fused: FusedModel | None,
        fused_unet: torch.nn.Module | None = None,
        plain_encoders: Mapping[str, torch.nn.Module] | None = None,
        peft_unet: UNet2DConditionModel | None = None,
        fused_encoders: FusedTextEncoders | None = None,
    ) -> None:
        """Pipelines over `pipes`' components with `plain_unet` and `plain_encoders` (adapter-free text encoders
        by attribute name, in place of `pipes`' own) for unstyled batches (no `plain_unet`: `pipes`' own serve
        them), and with `fused_unet` for the styles `fused` holds: its own UNet, or a (compiled) twin of it that
        shares its fused weights. Those styles encode on `plain_encoders` too, unless their LoRA adapts
        `pipes`' text encoders: then on `fused_encoders` where those hold it, else on `pipes`' own. The styles
        `fused` does not hold run on `peft_unet` (with peft's adapter layers), where it is given, and encode on
        `plain_encoders` if their LoRA leaves the text encoders alone."""
        self.plain_encoders = dict(plain_encoders or {})
        self.plain_unet = plain_unet
        self._plain: dict[Kind, DiffusionPipeline] = {}
        if plain_unet is not None:
            self._plain = _task_pipelines_over(pipes, plain_unet, **self.plain_encoders)
        self.fused = fused
        if fused is not None and fused_unet is None:
            fused_unet = fused.model
        self.fused_unet = fused_unet
        # The adapters with weights in the text encoders: their styles encode on the fused ones where those hold
        # them, else on the eager ones
        self.text_adapters = frozenset().union(*(adapters_in(getattr(pipes.text2img, name)) for name in TEXT_ENCODERS))
        self._fused: dict[Kind, DiffusionPipeline] = {}  # for styles that leave the text encoders alone
        self._fused_with_text_adapters: dict[Kind, DiffusionPipeline] = {}
        self.fused_encoders = fused_encoders
        self._fused_text: dict[Kind, DiffusionPipeline] = {}  # for those whose LoRA the fused encoders hold
        if fused_unet is not None:
            self._fused = _task_pipelines_over(pipes, fused_unet, **self.plain_encoders)
            self._fused_with_text_adapters = _task_pipelines_over(pipes, fused_unet)
            if fused_encoders is not None:
                self._fused_text = _task_pipelines_over(pipes, fused_unet, **fused_encoders.serving)
        self._unfused: dict[Kind, DiffusionPipeline] = {}  # for the others that leave the text encoders alone
        if peft_unet is not None:
            self._unfused = _task_pipelines_over(pipes, peft_unet, **self.plain_encoders)

    @classmethod
    def of(
        cls,
        eager: Pipelines,
        *,
        fuse: bool,
        fuse_text_encoders: bool = True,
        capture: Capture | None = None,
        max_prompts: int = 1,
    ) -> FusedStyles:
        """For the eager pipelines; `fuse`: a fused UNet, and with `fuse_text_encoders` fused text encoders where
        styles adapt those, too (they take memory); `capture`: both UNets replay graphs for batches of one image,
        and the text encoders for up to `max_prompts` new prompts at once (bot.engine.cuda_graphs)."""
        unet = eager.text2img.unet
        plain_unet = adapter_free_twin(unet)
        encoders = {name: getattr(eager.text2img, name) for name in TEXT_ENCODERS}
        plain_encoders = {name: adapter_free_twin(encoder) for name, encoder in encoders.items()}
        fused = FusedModel(unet) if fuse else None
        fuse_texts = fuse and fuse_text_encoders
        fused_texts = {
            name: FusedModel(encoder) for name, encoder in encoders.items() if fuse_texts and adapters_in(encoder)
        }
        fused_unet = None
        fused_text_encoders = {name: encoder.model for name, encoder in fused_texts.items()}
        if capture is not None:
            prompts = range(1, max_prompts + 1)

            def graphed(served: dict[str, torch.nn.Module]) -> dict[str, torch.nn.Module]:
                return {
                    name: graphed_twin(encoder, capture, batch_sizes=prompts, keep=conditioning_only)
                    for name, encoder in served.items()
                }

            plain_unet = graphed_twin(plain_unet, capture)
            plain_encoders, fused_text_encoders = graphed(plain_encoders), graphed(fused_text_encoders)
            fused_unet = graphed_twin(fused.model, capture) if fused is not None else None
        fused_encoders = FusedTextEncoders(fused_texts, plain_encoders | fused_text_encoders) if fused_texts else None
        return cls(
            eager,
            plain_unet=plain_unet,
            fused=fused,
            fused_unet=fused_unet,
            plain_encoders=plain_encoders,
            peft_unet=unet,
            fused_encoders=fused_encoders,
        )

    @property
    def adapters(self) -> frozenset[str]:
        """The adapters whose styles run fused."""
        return self.fused.adapters if self.fused is not None else frozenset()

    @property
    def text_fused_adapters(self) -> frozenset[str]:
        """The adapters that the fused text encoders hold."""
        return self.fused_encoders.adapters if self.fused_encoders is not None else frozenset()

    @property
    def peft_text_adapters(self) -> frozenset[str]:
        """The adapters whose styles encode new prompts through peft's adapter layers in the text encoders."""
        return self.text_adapters - (self.adapters & self.text_fused_adapters)

    def graphed_style(self, book: StyleBook) -> Style | None:
        """A style of `book` whose batches of one replay the fused UNet's graphs, which serve every fused style
        (the serving warm-up brings it to each bucket); None where the fused UNet has no graphs. One whose LoRA
        the fused text encoders hold where there is one: its prompts capture their graphs too."""
        if self.fused is None or not isinstance(self._fused[Kind.IMAGINE].unet.forward, GraphedForward):
            return None
        fused = [style for style in book if adapter_of(style) in self.fused.adapters]
        return min(fused, key=lambda style: adapter_of(style) not in self.text_fused_adapters, default=None)

    def pipeline(self, kind: Kind, style: Style | None) -> DiffusionPipeline | None:
        """The task's pipeline for a batch in `style`; None when `pipes`' own must run it, with peft's layers in
        every model: a style this does not fuse whose LoRA adapts the text encoders (or any this does not fuse,
        without a `peft_unet`)."""
        adapter = adapter_of(style)
        if style is None or adapter is None:
            return self._plain.get(kind)
        adapts_text = adapter in self.text_adapters
        if self.fused is not None and adapter in self.fused.adapters:
            self.fused.fuse(adapter, style.weight)
            if not adapts_text:
                return self._fused[kind]
            if adapter in self.text_fused_adapters:
                self.fused_encoders.fuse(adapter, style.weight)
                return self._fused_text[kind]
            return self._fused_with_text_adapters[kind]
        return None if adapts_text else self._unfused.get(kind)


def adapter_free_twin(model: Model) -> Model:
    """A twin of `model` (sharing every weight) in which each peft adapter layer is the layer it adapts: it computes
    exactly what `model` computes with its adapters off, without peft's checks in every adapted layer."""
    twin = weight_sharing_twin(model)
    for name, _ in tuner_layers(model):
        twin.set_submodule(name, twin.get_submodule(name).get_base_layer())
    return twin


def fused_weight_bytes(model: torch.nn.Module) -> int:
    """The memory a `FusedModel` of `model` holds on its own: a copy of each adapted layer's weight."""
    return sum(layer.get_base_layer().weight.nbytes for _, layer in _adapted_layers(model))


def fused_text_encoder_bytes(pipe: DiffusionPipeline) -> int:
    """The memory the fused text encoders take for `pipe`'s: the adapted weights of those that styles adapt."""
    return sum(fused_weight_bytes(getattr(pipe, name)) for name in TEXT_ENCODERS)


def fusable_adapters(model: torch.nn.Module) -> frozenset[str]:
    """The adapters whose every layer in `model` is a plain LoRA on a fusable layer."""
    adapters: set[str] = set()
    unfusable: set[str] = set()
    for _, layer in tuner_layers(model):
        held = held_adapters(layer)
        adapters |= held
        if not _fusable_layer(layer):
            unfusable |= held
            continue
        unfusable |= {adapter for adapter in held if not _plain_lora(layer, adapter)}
    return frozenset(adapters - unfusable)


def _plain_lora(layer: AdaptedLayer, adapter: str) -> bool:
    """No DoRA, no LoRA bias, no other variant: an update that `get_delta_weight` describes in full. (peft before
    0.14 has neither variants nor LoRA biases.)"""
    variants = getattr(layer, "lora_variant", {})
    return not (layer.use_dora.get(adapter) or getattr(layer, "lora_bias", {}).get(adapter) or adapter in variants)


def _adapted_layers(model: torch.nn.Module) -> list[tuple[str, AdaptedLayer]]:
    return [(name, layer) for name, layer in tuner_layers(model) if _fusable_layer(layer)]


def _task_pipelines_over(
    eager: Pipelines, unet: torch.nn.Module, **text_encoders: torch.nn.Module
) -> dict[Kind, DiffusionPipeline]:
    text2img = pipeline_over(ServedXLPipeline, eager.text2img, unet=unet, **text_encoders)
    img2img, inpaint = task_pipelines(text2img)
    return {Kind.IMAGINE: text2img, Kind.REMIX: img2img, Kind.INPAINT: inpaint}


def _fusable_layer(module: torch.nn.Module) -> bool:
    return isinstance(module, FUSABLE_LAYERS) and isinstance(module.get_base_layer(), torch.nn.Linear | torch.nn.Conv2d)
