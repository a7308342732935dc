"""Batches of one replayed from graphs, on the CPU with `RerunGraph` standing in for a CUDA graph (none can be
captured without a GPU): the graphs' inputs, outputs, signatures and fallbacks, and the pictures they paint on
the tiny model against the eager UNet's, and the prompts they encode against the eager text encoders'."""

from __future__ import annotations

import dataclasses
import functools
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils import _pytree as pytree

from bot.engine import cuda_graphs
from bot.engine.adapters import StyleAdapters
from bot.engine.cuda_graphs import GraphedForward, agree, graphed_twin
from bot.engine.fused_styles import FusedStyles
from bot.engine.generation import generate, warm_up
from bot.engine.pipelines import Pipelines, load_pipelines
from bot.engine.requests import Kind, check_inputs
from bot.engine.text_embeddings import TextEmbeddingCache, encode_texts
from bot.settings import Settings
from bot.styles import Style, StyleBook
from tests.support.graphs import RerunCapture


def scaled(x: torch.Tensor, *, scale: float = 2.0) -> torch.Tensor:
    return x * scale + 1


def test_a_replay_computes_from_the_call_s_inputs_and_hands_out_copies() -> None:
    capture = RerunCapture()
    forward = GraphedForward(scaled, capture)
    first = forward(torch.full((1, 3), 1.0))  # eager, then captured
    second = forward(torch.full((1, 3), 2.0))  # replayed
    third = forward(torch.full((1, 3), 3.0))
    assert len(capture.graphs) == 1 and capture.replays == 2
    assert torch.equal(first, torch.full((1, 3), 3.0))
    assert torch.equal(second, torch.full((1, 3), 5.0))  # not overwritten by the third call's replay
    assert torch.equal(third, torch.full((1, 3), 7.0))


def test_a_twin_that_keeps_part_of_its_output_is_graphed_with_that_part_alone() -> None:
    capture = RerunCapture()
    halves = torch.nn.Linear(3, 4)
    twin = graphed_twin(halves, capture, keep=lambda output: output[:, :2])
    for value in (1.0, 2.0):
        x = torch.full((1, 3), value)
        with torch.no_grad():
            assert torch.equal(twin(x), halves(x)[:, :2])
    [graph] = capture.graphs
    assert graph.outputs.shape == (1, 2) and graph.replays == 1


def test_each_signature_has_a_graph_of_its_own() -> None:
    capture = RerunCapture()
    forward = GraphedForward(scaled, capture)
    ones = torch.ones(1, 3)
    for _ in range(2):
        with torch.no_grad():
            assert torch.equal(forward(ones, scale=3.0), torch.full((1, 3), 4.0))  # a value is in the signature
            assert torch.equal(forward(ones), torch.full((1, 3), 3.0))
            assert torch.equal(forward(torch.ones(1, 5)), torch.full((1, 5), 3.0))
            assert torch.equal(forward(ones.double()), torch.full((1, 3), 3.0, dtype=torch.float64))
            assert not forward(ones.clone().requires_grad_()).requires_grad
        assert forward(ones.clone().requires_grad_()).requires_grad
    assert forward.graphs == len(capture.graphs) == 6


def test_only_batches_of_one_are_graphed_and_only_so_many() -> None:
    capture = RerunCapture()
    forward = GraphedForward(scaled, capture, max_graphs=2)
    assert torch.equal(forward(torch.ones(2, 3)), torch.full((2, 3), 3.0))
    assert forward.graphs == 0
    for width in (3, 4, 5, 5):
        assert torch.equal(forward(torch.ones(1, width)), torch.full((1, width), 3.0))
    assert forward.graphs == 2 and capture.replays == 0  # the third signature runs eager, each time


def test_a_capture_that_fails_leaves_its_signature_eager(caplog: pytest.LogCaptureFixture) -> None:
    attempts = []

    def failing(run: object) -> None:
        attempts.append(run)
        raise RuntimeError("operation not permitted when stream is capturing")

    forward = GraphedForward(scaled, failing)
    with caplog.at_level(logging.WARNING, logger="bot.engine.cuda_graphs"):
        results = [forward(torch.ones(1, 3)) for _ in range(3)]
    assert all(torch.equal(result, torch.full((1, 3), 3.0)) for result in results)
    assert len(attempts) == 1 and forward.graphs == 0
    assert len(caplog.records) == 1 and "runs eager" in caplog.records[0].getMessage()


def test_graphs_captured_again_replay_the_new_forward_from_the_call_s_inputs() -> None:
    capture = RerunCapture()
    forward = GraphedForward(scaled, capture)
    with torch.no_grad():
        forward(torch.ones(1, 3))
        forward(torch.ones(1, 5))
    calls = []

    def twin(x: torch.Tensor, *, scale: float = 2.0) -> torch.Tensor:  # stands in for a compiled twin
        calls.append((cuda_graphs._REPLAY_LOCK.locked(), torch.is_grad_enabled()))
        return torch.addcmul(torch.ones_like(x), x, torch.full_like(x, scale))  # the same values, other kernels

    assert forward.recapture(twin) == 2
    # Each ran once outside the lock, where it may compile while replays go on, then under it was captured and
    # replayed beside the old graph, with autograd as when the graph was first captured
    assert calls == [(False, False), (True, False), (True, False)] * 2
    with torch.no_grad():
        assert torch.equal(forward(torch.full((1, 3), 2.0)), torch.full((1, 3), 5.0))
        assert torch.equal(forward(torch.full((1, 5), 1.0)), torch.full((1, 5), 3.0))
        assert torch.equal(forward(torch.ones(2, 3)), torch.full((2, 3), 3.0))  # never graphed: the eager forward
        assert torch.equal(forward(torch.ones(1, 7)), torch.full((1, 7), 3.0))  # a new signature: captured eager
    assert forward.graphs == 3 and len(calls) == 6 + 2  # the stand-in's two replays ran the twin; eager calls not


def test_a_graph_that_cannot_be_captured_again_keeps_its_own(caplog: pytest.LogCaptureFixture) -> None:
    graphs = RerunCapture()

    def first_capture_only(run):
        if graphs.graphs:
            raise RuntimeError("operation not permitted when stream is capturing")
        return graphs(run)

    forward = GraphedForward(scaled, first_capture_only)
    forward(torch.ones(1, 3))
    with caplog.at_level(logging.WARNING, logger="bot.engine.cuda_graphs"):
        assert forward.recapture(scaled) == 0
    assert torch.equal(forward(torch.full((1, 3), 2.0)), torch.full((1, 3), 5.0))
    assert graphs.replays == 1
    assert len(caplog.records) == 1 and "not permitted" in caplog.records[0].getMessage()


def test_a_graph_captured_again_that_paints_otherwise_keeps_the_old_one(caplog: pytest.LogCaptureFixture) -> None:
    capture = RerunCapture()
    forward = GraphedForward(scaled, capture)
    forward(torch.ones(1, 3))
    with caplog.at_level(logging.WARNING, logger="bot.engine.cuda_graphs"):
        assert forward.recapture(functools.partial(scaled, scale=2.5)) == 0
    assert torch.equal(forward(torch.full((1, 3), 2.0)), torch.full((1, 3), 5.0))
    assert len(caplog.records) == 1 and "outputs differ" in caplog.records[0].getMessage()


def test_graphs_agree_to_rounding_with_the_same_entries_not_finite() -> None:
    reference = (torch.tensor([[100.0, -50.0, float("nan")]]), None, torch.ones(2))
    assert agree(reference, reference)
    assert agree(reference, (torch.tensor([[104.0, -50.0, float("nan")]]), None, torch.ones(2)))
    assert not agree(reference, (torch.tensor([[106.0, -50.0, float("nan")]]), None, torch.ones(2)))  # 6 of 100
    assert not agree(reference, (torch.tensor([[100.0, -50.0, 0.0]]), None, torch.ones(2)))
    assert not agree(reference, (torch.tensor([[100.0, -50.0, float("inf")]]), None, torch.ones(2)))
    assert not agree(reference, (torch.tensor([[100.0, -50.0, float("nan")]]), None, torch.zeros(2)))


def pixels(pipes: Pipelines, requests) -> np.ndarray:
    return np.stack([np.asarray(image) for images in generate(pipes, requests) for image in images])


def with_graphs(pipes: Pipelines, capture: RerunCapture, *, fuse: bool = False) -> Pipelines:
    """`pipes` with graphs, and a prompt cache of their own, so that they encode every prompt themselves."""
    fused_styles = FusedStyles.of(pipes, fuse=fuse, capture=capture)
    return dataclasses.replace(pipes, fused_styles=fused_styles, embeddings=TextEmbeddingCache())


def test_batches_of_one_replay_graphs_that_paint_what_the_eager_unet_paints(pipes: Pipelines, buckets) -> None:
    capture = RerunCapture()
    graphed = with_graphs(pipes, capture)
    start = Image.fromarray(np.random.default_rng(1).integers(0, 255, (256, 256, 3), dtype=np.uint8))
    requests = [
        check_inputs(Kind.IMAGINE, "a fox", buckets=buckets, seed=1, steps=3),
        check_inputs(Kind.IMAGINE, "a lighthouse at dusk", buckets=buckets, seed=2, steps=3),
        check_inputs(Kind.IMAGINE, "a fox", buckets=buckets, seed=1, steps=3, aspect="16:9"),
        check_inputs(Kind.REMIX, "a fox in snow", buckets=buckets, seed=3, init_image=start),
        check_inputs(
            Kind.INPAINT, "a hat", buckets=buckets, seed=4, init_image=start, mask=Image.new("L", (256, 256), 255)
        ),
    ]
    for request in requests:
        assert np.array_equal(pixels(graphed, [request]), pixels(pipes, [request])), request.kind
    unet = graphed.for_kind(Kind.IMAGINE).unet
    assert unet.forward.graphs == 2  # the two aspects; remix and inpaint replay 1:1's
    assert len(capture.graphs) == 4  # and one for each text encoder
    assert capture.replays > 0
    assert {id(tensor) for tensor in unet.parameters()} <= {id(tensor) for tensor in pipes.text2img.unet.parameters()}


def test_the_serving_warm_up_captures_every_graph_an_unstyled_request_alone_replays(pipes: Pipelines, buckets) -> None:
    capture = RerunCapture()
    graphed = with_graphs(pipes, capture)
    # The compile thread's warm-up may have encoded its prompt first, into the same cache.
    graphed.embeddings.pipeline_inputs(graphed.text2img, ["warm-up"], [""], with_negative=False)
    warm_up(graphed, buckets)
    assert len(capture.graphs) == len(buckets) + 2  # the UNet's for each bucket, and each text encoder's
    for aspect in ("1:1", "16:9"):
        generate(graphed, [check_inputs(Kind.IMAGINE, f"a new prompt {aspect}", buckets=buckets, aspect=aspect)])
    assert len(capture.graphs) == len(buckets) + 2


def test_a_larger_batch_runs_eager(pipes: Pipelines, buckets) -> None:
    capture = RerunCapture()
    graphed = with_graphs(pipes, capture)
    two = [check_inputs(Kind.IMAGINE, "a fox", buckets=buckets, seed=1, steps=2, count=2)]
    assert np.array_equal(pixels(graphed, two), pixels(pipes, two))
    assert graphed.for_kind(Kind.IMAGINE).unet.forward.graphs == 0


def test_styled_batches_of_one_replay_one_graph_for_every_fused_style(
    settings: Settings, loras: dict[str, Path], buckets
) -> None:
    book = StyleBook(
        [
            Style(name="ink", description="Ink", lora=str(loras["ink"])),
            Style(name="neon", description="Neon", lora=str(loras["neon"]), weight=0.7),
        ]
    )
    pipes = load_pipelines(settings)
    pipes.styles = StyleAdapters.load(pipes.text2img, book)
    fused = dataclasses.replace(pipes, fused_styles=FusedStyles.of(pipes, fuse=True))
    capture = RerunCapture()
    graphed = with_graphs(pipes, capture, fuse=True)

    def request(style: str | None) -> list:
        return [check_inputs(Kind.IMAGINE, "a fox", buckets=buckets, seed=5, steps=2, style=style, styles=book)]

    for style in ("ink", "neon", None, "ink"):  # a fuse rewrites the weights that the styled graph reads
        assert np.array_equal(pixels(graphed, request(style)), pixels(fused, request(style))), style
    assert graphed.for_kind(Kind.IMAGINE, book.get("ink")).unet.forward.graphs == 1
    assert graphed.for_kind(Kind.IMAGINE).unet.forward.graphs == 1


def with_ink_style(settings: Settings, loras: dict[str, Path]) -> tuple[Pipelines, StyleBook]:
    """Fresh pipelines (styles load adapters into their models) serving one style, "ink"."""
    book = StyleBook([Style(name="ink", description="Ink", lora=str(loras["ink"]))])
    pipes = load_pipelines(settings)
    pipes.styles = StyleAdapters.load(pipes.text2img, book)
    return pipes, book


def test_the_serving_warm_up_captures_the_fused_styles_graphs_too(
    settings: Settings, unet_and_text_styles: StyleBook, buckets
) -> None:
    book = unet_and_text_styles  # pencil adapts a text encoder too: its prompts encode on a fused one
    pipes = load_pipelines(settings)
    pipes.styles = StyleAdapters.load(pipes.text2img, book)
    capture = RerunCapture()
    graphed = with_graphs(pipes, capture, fuse=True)
    assert graphed.fused_styles.graphed_style(book) == book.get("pencil")
    warm_up(graphed, buckets)
    assert graphed.for_kind(Kind.IMAGINE, book.get("ink")).unet.forward.graphs == len(buckets)
    captured = len(capture.graphs)
    for aspect, style in (("1:1", "ink"), ("16:9", "pencil"), ("4:3", "ink"), ("1:1", "pencil")):
        request = check_inputs(Kind.IMAGINE, f"a {style} fox", buckets=buckets, aspect=aspect, style=style, styles=book)
        generate(graphed, [request])
    assert len(capture.graphs) == captured


def test_only_a_graphed_fused_unet_asks_the_warm_up_for_a_style(
    settings: Settings, loras: dict[str, Path], buckets
) -> None:
    pipes, book = with_ink_style(settings, loras)
    fused = dataclasses.replace(pipes, fused_styles=FusedStyles.of(pipes, fuse=True))
    assert fused.fused_styles.graphed_style(book) is None
    assert with_graphs(pipes, RerunCapture(), fuse=True).fused_styles.graphed_style(book) == book.get("ink")


def encoded(pipe, *prompts: str) -> tuple[torch.Tensor, ...]:
    """Prompts and their negatives, encoded as the prompt cache encodes them."""
    return (*encode_texts(pipe, prompts), *encode_texts(pipe, ["blurry"] * len(prompts)))


def test_a_new_prompt_alone_is_encoded_by_replaying_the_text_encoders_graphs(pipes: Pipelines) -> None:
    capture = RerunCapture()
    graphed = with_graphs(pipes, capture).for_kind(Kind.IMAGINE)
    for prompt in ("a fox", "a lighthouse at dusk", "a fox"):
        ours, eager = encoded(graphed, prompt), encoded(pipes.text2img, prompt)
        assert all(torch.equal(mine, theirs) for mine, theirs in zip(ours, eager, strict=True)), prompt
    assert graphed.text_encoder.forward.graphs == graphed.text_encoder_2.forward.graphs == 1
    assert len(capture.graphs) == 2 and capture.replays > 0


def test_a_text_encoder_s_graph_keeps_only_what_encoding_reads(pipes: Pipelines) -> None:
    capture = RerunCapture()
    graphed = with_graphs(pipes, capture).for_kind(Kind.IMAGINE)
    ours, eager = encoded(graphed, "a fox"), encoded(pipes.text2img, "a fox")  # captures, then replays
    assert all(torch.equal(mine, theirs) for mine, theirs in zip(ours, eager, strict=True))
    ids = torch.zeros(1, graphed.tokenizer.model_max_length, dtype=torch.long)
    full = pipes.text2img.text_encoder(ids, output_hidden_states=True)
    assert len(tensors(full)) == len(full.hidden_states) + 2 == 5  # each layer's hidden state, and 2 more
    assert len(capture.graphs) == 2  # one per text encoder
    for graph in capture.graphs:
        assert len(tensors(graph.outputs)) == 2  # the first output and the next-to-last hidden state


def tensors(tree: object) -> list[torch.Tensor]:
    return [leaf for leaf in pytree.tree_leaves(tree) if isinstance(leaf, torch.Tensor)]


def test_new_prompts_are_encoded_by_graphs_up_to_the_batch_size(pipes: Pipelines) -> None:
    capture = RerunCapture()
    graphed = FusedStyles.of(pipes, fuse=False, capture=capture, max_prompts=2).pipeline(Kind.IMAGINE, None)
    for prompts in (["a fox", "an owl"], ["a heron", "a crane"], ["a fox"], ["a cow", "a hen", "a pig"]):
        ours, eager = encoded(graphed, *prompts), encoded(pipes.text2img, *prompts)
        assert all(torch.equal(mine, theirs) for mine, theirs in zip(ours, eager, strict=True)), prompts
    assert graphed.text_encoder.forward.graphs == graphed.text_encoder_2.forward.graphs == 2  # three runs eager


def test_every_style_s_new_prompts_replay_text_encoder_graphs_those_adapting_them_on_fused_ones(
    settings: Settings, unet_and_text_styles: StyleBook, buckets
) -> None:
    book = unet_and_text_styles  # pencil adapts the first text encoder too, ink only the UNet
    pipes = load_pipelines(settings)
    pipes.styles = StyleAdapters.load(pipes.text2img, book)
    fused = dataclasses.replace(pipes, fused_styles=FusedStyles.of(pipes, fuse=True), embeddings=TextEmbeddingCache())
    capture = RerunCapture()
    graphed = with_graphs(pipes, capture, fuse=True)

    def request(prompt: str, style: str | None) -> list:
        return [check_inputs(Kind.IMAGINE, prompt, buckets=buckets, seed=5, steps=2, style=style, styles=book)]

    for prompt, style in (("a fox", None), ("a fox", "pencil"), ("an owl", "pencil"), ("an owl", None)):
        reference = pipes if style is None else fused
        assert np.array_equal(pixels(graphed, request(prompt, style)), pixels(reference, request(prompt, style)))
    peft_encodings = []
    pipes.text2img.text_encoder.register_forward_hook(lambda *_: peft_encodings.append(1))
    graphs, replays = len(capture.graphs), capture.replays
    for prompt, style in (("a heron", "ink"), ("a crane", "pencil")):
        assert np.array_equal(pixels(graphed, request(prompt, style)), pixels(fused, request(prompt, style)))
    assert not peft_encodings  # no side ran peft's layers
    assert len(capture.graphs) == graphs  # nothing captured: each new prompt replayed its encoders' graphs
    assert capture.replays - replays == 2 * (2 + 2)  # a request: its 2 steps and 2 text encoders
    plain, pencil = graphed.for_kind(Kind.IMAGINE), graphed.for_kind(Kind.IMAGINE, book.get("pencil"))
    assert plain.text_encoder.forward.graphs == pencil.text_encoder.forward.graphs == 1
    assert pencil.text_encoder is not plain.text_encoder and pencil.text_encoder_2 is plain.text_encoder_2
    cached = {  # the style's LoRA changes what its prompt encodes to: this test would see it fused out
        style: graphed.embeddings.pipeline_inputs(plain, ["a fox"], [""], with_negative=False, variant=style)
        for style in (None, "pencil")
    }
    assert not torch.equal(cached[None]["prompt_embeds"], cached["pencil"]["prompt_embeds"])
