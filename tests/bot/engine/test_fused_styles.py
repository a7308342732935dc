"""Styled batches on the fused UNet, against the same styles computed by peft's adapter layers, on the tiny model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import UNet2DConditionModel
from peft import LoraConfig
from peft.tuners.tuners_utils import BaseTunerLayer
from PIL import Image

from bot.engine.adapters import StyleAdapters, tuner_layers
from bot.engine.fused_styles import (
    FusedModel,
    FusedStyles,
    fusable_adapters,
    fused_text_encoder_bytes,
    fused_weight_bytes,
)
from bot.engine.generation import generate
from bot.engine.pipelines import Pipelines, load_pipelines
from bot.engine.requests import Kind, check_inputs
from bot.settings import Settings
from bot.styles import Style, StyleBook
from tests.support.tiny_model import TinyModel

ATTENTION = ["to_q", "to_k", "to_v", "to_out.0"]


def styled_pipelines(settings: Settings, book: StyleBook) -> Pipelines:
    pipes = load_pipelines(settings)
    pipes.styles = StyleAdapters.load(pipes.text2img, book)
    return pipes


@pytest.fixture(scope="module")
def book(loras: dict[str, Path]) -> StyleBook:
    return StyleBook(
        [
            Style(name="ink", description="Ink", lora=str(loras["ink"])),
            Style(name="neon", description="Neon", lora=str(loras["neon"]), weight=0.7),
        ]
    )


@pytest.fixture(scope="module")
def by_peft(settings: Settings, book: StyleBook) -> Pipelines:
    """The styles computed by peft's adapter layers, as the bot did before fusing."""
    return styled_pipelines(settings, book)


@pytest.fixture(scope="module")
def fused(settings: Settings, book: StyleBook) -> Pipelines:
    pipes = styled_pipelines(settings, book)
    pipes.fused_styles = FusedStyles.of(pipes, fuse=True)
    return pipes


def pixels(images: list[Image.Image]) -> np.ndarray:
    return np.stack([np.asarray(image, dtype=np.int16) for image in images])


def picture(pipes: Pipelines, buckets, book: StyleBook, style: str | None, kind: Kind = Kind.IMAGINE, **options):
    request = check_inputs(kind, "a fox", buckets=buckets, seed=9, steps=2, style=style, styles=book, **options)
    return pixels(generate(pipes, [request])[0])


@pytest.mark.parametrize("style", ["ink", "neon"])  # neon has a weight of 0.7
def test_a_fused_style_paints_what_peft_paints_but_for_rounding(fused, by_peft, book, buckets, style) -> None:
    ours, theirs = picture(fused, buckets, book, style), picture(by_peft, buckets, book, style)
    unstyled = picture(by_peft, buckets, book, None)
    assert np.abs(ours - theirs).max() <= 2 and np.abs(ours - theirs).mean() < 0.01
    assert np.abs(ours - unstyled).mean() > 1


def test_remix_and_inpaint_run_styled_batches_on_the_fused_unet(fused, by_peft, book, buckets) -> None:
    start = Image.fromarray(np.random.default_rng(1).integers(0, 255, (256, 256, 3), dtype=np.uint8))
    mask = Image.new("L", (256, 256), 255)
    for kind, options in [(Kind.REMIX, {}), (Kind.INPAINT, {"mask": mask})]:
        pipe = fused.for_kind(kind, book.get("ink"))
        assert pipe.unet is fused.fused_styles.fused.model
        ours = picture(fused, buckets, book, "ink", kind, init_image=start, **options)
        theirs = picture(by_peft, buckets, book, "ink", kind, init_image=start, **options)
        assert np.abs(ours - theirs).max() <= 2


def test_switching_fused_styles_never_drifts_and_leaves_the_eager_weights_alone(fused, book, buckets) -> None:
    eager_weights = {name: weight.clone() for name, weight in fused.text2img.unet.named_parameters()}
    first = picture(fused, buckets, book, "ink")
    for style in ("neon", None, "neon"):
        picture(fused, buckets, book, style)
    assert np.array_equal(picture(fused, buckets, book, "ink"), first)
    for name, weight in fused.text2img.unet.named_parameters():
        assert torch.equal(weight, eager_weights[name]), name


def test_batches_on_other_unets_leave_the_eager_unet_s_adapter_layers_off(fused, book, buckets) -> None:
    layers = [layer for layer in fused.text2img.unet.modules() if isinstance(layer, BaseTunerLayer)]
    for style in ("ink", None, "neon"):
        picture(fused, buckets, book, style)
        assert all(layer.disable_adapters for layer in layers)


def test_unstyled_batches_run_adapter_free_and_paint_exactly_what_the_eager_unet_paints(
    fused, by_peft, book, buckets
) -> None:
    unet = fused.for_kind(Kind.IMAGINE, None).unet
    assert not any(isinstance(module, BaseTunerLayer) for module in unet.modules())
    assert {id(tensor) for tensor in unet.parameters()} <= {id(tensor) for tensor in fused.text2img.unet.parameters()}
    assert np.array_equal(picture(fused, buckets, book, None), picture(by_peft, buckets, book, None))


def test_a_style_that_leaves_the_text_encoders_alone_encodes_on_adapter_free_ones(
    settings: Settings, unet_and_text_styles: StyleBook, buckets
) -> None:
    book = unet_and_text_styles
    by_peft = styled_pipelines(settings, book)
    for fuse, rounding in ((True, 2), (False, 0)):  # without room to fuse, the UNet computes with peft's layers
        pipes = styled_pipelines(settings, book)
        pipes.fused_styles = FusedStyles.of(pipes, fuse=fuse)
        plain_encoder = pipes.for_kind(Kind.IMAGINE).text_encoder
        assert pipes.for_kind(Kind.IMAGINE, book.get("ink")).text_encoder is plain_encoder
        ink = picture(pipes, buckets, book, "ink")
        assert all(layer.disable_adapters for _, layer in tuner_layers(pipes.text2img.text_encoder))  # never on
        assert np.abs(ink - picture(by_peft, buckets, book, "ink")).max() <= rounding


def test_a_style_that_adapts_a_text_encoder_encodes_on_a_fused_one_where_there_is_room(
    settings: Settings, unet_and_text_styles: StyleBook, buckets
) -> None:
    book = unet_and_text_styles  # pencil adapts the UNet and the first text encoder
    by_peft = styled_pipelines(settings, book)
    pencil_by_peft = picture(by_peft, buckets, book, "pencil")
    assert np.abs(pencil_by_peft - picture(by_peft, buckets, book, None)).mean() > 1

    pipes = styled_pipelines(settings, book)
    pipes.fused_styles = FusedStyles.of(pipes, fuse=True)
    pencil = pipes.for_kind(Kind.IMAGINE, book.get("pencil"))
    for encoder in (pencil.text_encoder, pencil.text_encoder_2):
        assert not any(isinstance(module, BaseTunerLayer) for module in encoder.modules())
    assert pencil.text_encoder is not pipes.for_kind(Kind.IMAGINE).text_encoder  # it holds pencil's LoRA
    assert pencil.text_encoder_2 is pipes.for_kind(Kind.IMAGINE).text_encoder_2  # pencil leaves it alone
    for style in ("pencil", "ink", None, "pencil"):  # switching back and forth never drifts
        ours, theirs = picture(pipes, buckets, book, style), picture(by_peft, buckets, book, style)
        assert np.abs(ours - theirs).max() <= 2 and np.abs(ours - theirs).mean() < 0.01, style
    for _, layer in tuner_layers(pipes.text2img.text_encoder):  # peft's layers never ran
        assert layer.disable_adapters

    without_room = styled_pipelines(settings, book)
    without_room.fused_styles = FusedStyles.of(without_room, fuse=False)
    assert without_room.for_kind(Kind.IMAGINE, book.get("pencil")).text_encoder is without_room.text2img.text_encoder
    assert np.array_equal(picture(without_room, buckets, book, "pencil"), pencil_by_peft)


def test_without_room_to_fuse_styled_batches_keep_peft_s_layers(settings, by_peft, book, buckets) -> None:
    pipes = styled_pipelines(settings, book)
    pipes.fused_styles = FusedStyles.of(pipes, fuse=False)
    assert pipes.for_kind(Kind.IMAGINE, book.get("ink")).unet is pipes.text2img.unet
    assert np.array_equal(picture(pipes, buckets, book, "ink"), picture(by_peft, buckets, book, "ink"))


def assert_owns_only_the_adapted_weights(eager: torch.nn.Module, twin: torch.nn.Module) -> None:
    assert not any(isinstance(module, BaseTunerLayer) for module in twin.modules())
    shared = {id(tensor) for tensor in eager.parameters()}
    own = [tensor for tensor in twin.parameters() if id(tensor) not in shared]
    adapted = [module for module in eager.modules() if isinstance(module, BaseTunerLayer)]
    assert len(own) == len(adapted) > 0
    assert sum(tensor.nbytes for tensor in own) == fused_weight_bytes(eager)


def test_the_fused_unet_owns_only_the_adapted_weights(fused: Pipelines) -> None:
    assert_owns_only_the_adapted_weights(fused.text2img.unet, fused.fused_styles.fused.model)
    assert fused.fused_styles.fused_encoders is None  # no style adapts a text encoder


def test_the_fused_text_encoder_owns_only_the_adapted_weights(settings: Settings, unet_and_text_styles) -> None:
    pipes = styled_pipelines(settings, unet_and_text_styles)
    styles = FusedStyles.of(pipes, fuse=True)
    encoders = styles.fused_encoders
    assert set(encoders.fused) == {"text_encoder"} and encoders.adapters == {"pencil"}
    assert_owns_only_the_adapted_weights(pipes.text2img.text_encoder, encoders.fused["text_encoder"].model)
    assert fused_text_encoder_bytes(pipes.text2img) == fused_weight_bytes(pipes.text2img.text_encoder) > 0
    assert not styles.peft_text_adapters
    for without_room in ({"fuse": False}, {"fuse": True, "fuse_text_encoders": False}):
        styles = FusedStyles.of(pipes, **without_room)
        assert styles.fused_encoders is None and styles.peft_text_adapters == {"pencil"}


def test_an_adapter_peft_must_compute_itself_is_not_fused(tiny_model: TinyModel) -> None:
    unet = UNet2DConditionModel.from_pretrained(tiny_model.lcm_unet)
    unet.add_adapter(LoraConfig(r=4, target_modules=ATTENTION, init_lora_weights=False), adapter_name="plain")
    unet.add_adapter(LoraConfig(r=4, target_modules=ATTENTION, use_dora=True), adapter_name="dora")
    # A LoRA bias needs a layer with a bias of its own: of the attention projections, the output's
    unet.add_adapter(LoraConfig(r=4, target_modules=["to_out.0"], lora_bias=True), adapter_name="biased")
    assert fusable_adapters(unet) == {"plain"}
    assert FusedModel(unet).adapters == {"plain"}


def test_a_style_leaves_the_layers_it_does_not_adapt_at_their_base_weights(tiny_model: TinyModel) -> None:
    unet = UNet2DConditionModel.from_pretrained(tiny_model.lcm_unet)
    unet.add_adapter(LoraConfig(r=4, target_modules=["to_q"], init_lora_weights=False), adapter_name="q")
    unet.add_adapter(LoraConfig(r=4, target_modules=["to_k"], init_lora_weights=False), adapter_name="k")
    fused = FusedModel(unet)
    fused_q = fused.model.down_blocks[1].attentions[0].transformer_blocks[0].attn1.to_q.weight
    base_q = unet.down_blocks[1].attentions[0].transformer_blocks[0].attn1.to_q.get_base_layer().weight
    fused.fuse("q", 1.0)
    assert not torch.equal(fused_q, base_q)
    fused.fuse("k", 1.0)
    assert torch.equal(fused_q, base_q)
