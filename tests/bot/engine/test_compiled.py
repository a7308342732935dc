"""The compiled twins on the tiny model, compiled for real by inductor on the CPU, with a style's LoRA adapter
loaded as a server with styles has it."""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from peft.tuners.tuners_utils import BaseTunerLayer
from PIL import Image

from bot.engine.adapters import StyleAdapters
from bot.engine.compiled import (
    COMPILE_SWITCH_INTERVAL,
    CompiledTwins,
    compiled_graph_count,
    quick_gil_handoffs,
)
from bot.engine.fused_styles import FusedStyles
from bot.engine.generation import generate, render, warm_up
from bot.engine.pipelines import Pipelines, load_pipelines
from bot.engine.requests import Kind, check_inputs
from bot.settings import Settings
from bot.styles import Style, StyleBook
from tests.support.graphs import RerunCapture

MAX_BATCH = 2
COMPILED_ASPECTS = ("1:1", "16:9")  # each compiled graph costs tens of seconds on a CPU
STYLES = {
    "ink": Style(name="ink", description="Ink"),  # its LoRA is set by the `pipes` fixture
    "pencil": Style(name="pencil", description="Pencil"),  # so is its, which adapts a text encoder too
    "rain": Style(name="rain", description="Rain", template="{prompt}, in the rain"),
}
pytestmark = pytest.mark.timeout(900)


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


@pytest.fixture(scope="module")
def pipes(settings: Settings, loras: dict[str, Path], unet_and_text_styles: StyleBook) -> Pipelines:
    """Pipelines as a server with styles runs them: LoRA styles' adapters loaded (and off), a template style."""
    pipes = load_pipelines(settings)
    with_loras = {"ink": loras["ink"], "pencil": unet_and_text_styles.get("pencil").lora}
    book = StyleBook(
        [*(STYLES[name].model_copy(update={"lora": str(lora)}) for name, lora in with_loras.items()), STYLES["rain"]]
    )
    pipes.styles = StyleAdapters.load(pipes.text2img, book)
    pipes.fused_styles = FusedStyles.of(pipes, fuse=True)
    return pipes


@pytest.fixture(scope="module")
def twins(pipes: Pipelines, buckets) -> CompiledTwins:
    twins = CompiledTwins(pipes, {aspect: buckets[aspect] for aspect in COMPILED_ASPECTS}, max_batch_images=MAX_BATCH)
    twins.start(render)
    assert twins.wait(timeout=900), "compilation failed (see the log)"
    return twins


@pytest.fixture
def served_by(pipes: Pipelines, twins: CompiledTwins, monkeypatch: pytest.MonkeyPatch) -> Iterator[CompiledTwins]:
    monkeypatch.setattr(pipes, "compiled", twins)
    yield twins


def test_warm_up_compiles_per_batch_size_not_per_aspect(twins: CompiledTwins) -> None:
    # The UNet's repeated block and the VAE decoder, each once at batch 1 (torch specialises sizes of 1) and
    # once for larger batches; the second aspect (16:9 after the square 1:1) compiles nothing of its own, and
    # neither does the LoRA style (its batches run the same graphs on the fused weights).
    assert twins.graphs_compiled == 4


def test_compiled_images_match_eager(pipes: Pipelines, buckets, served_by: CompiledTwins) -> None:
    request = check_inputs(Kind.IMAGINE, "a fox", buckets=buckets, aspect="16:9", seed=11, count=2)
    served = served_by.batches_served
    compiled = generate(pipes, [request])[0]
    assert served_by.batches_served == served + 1
    eager = render(pipes, [request])
    for ours, reference in zip(compiled, eager, strict=True):
        assert np.abs(pixels(ours) - pixels(reference)).max() <= 2


def test_serving_every_covered_shape_never_compiles(pipes: Pipelines, buckets, served_by: CompiledTwins) -> None:
    size = buckets["16:9"]
    source = Image.new("RGB", size, (200, 120, 40))
    mask = Image.new("L", size, 255)
    batches = [
        [check_inputs(Kind.IMAGINE, "a fox", buckets=buckets, aspect=aspect, count=images, steps=4)]
        for aspect in COMPILED_ASPECTS
        for images in range(1, MAX_BATCH + 1)
    ]
    batches.append([check_inputs(Kind.REMIX, "a fox", buckets=buckets, init_image=source, steps=4)])
    batches.append([check_inputs(Kind.INPAINT, "a fox", buckets=buckets, init_image=source, mask=mask, steps=4)])
    graphs, served = compiled_graph_count(), served_by.batches_served
    for batch in batches:
        generate(pipes, batch)
    assert compiled_graph_count() == graphs
    assert served_by.batches_served == served + len(batches)


def test_batches_larger_than_warmed_up_run_eager(pipes: Pipelines, buckets, served_by: CompiledTwins) -> None:
    served = served_by.batches_served
    [images] = generate(pipes, [check_inputs(Kind.IMAGINE, "a fox", buckets=buckets, count=MAX_BATCH + 1)])
    assert len(images) == MAX_BATCH + 1
    assert served_by.batches_served == served


def test_beside_cuda_graphs_batches_of_one_replay_the_compiled_unets_and_the_twins_serve_larger_batches(
    pipes: Pipelines, buckets, monkeypatch: pytest.MonkeyPatch
) -> None:
    capture = RerunCapture()
    with_graphs = FusedStyles.of(pipes, fuse=True, capture=capture, max_prompts=MAX_BATCH)
    monkeypatch.setattr(pipes, "fused_styles", with_graphs)
    square = {"1:1": buckets["1:1"]}
    warm_up(pipes, square)  # as the serving thread does: the square bucket's graphs, unstyled and in a fused style
    book = StyleBook(list(STYLES.values()))
    alone = [check_inputs(Kind.IMAGINE, "a fox", buckets=buckets, seed=1, steps=2, style=style, styles=book)
             for style in (None, "ink")]  # fmt: skip
    eager = [generate(pipes, [request])[0][0] for request in alone]  # replaying the eager UNets' graphs

    twins = CompiledTwins(pipes, square, max_batch_images=MAX_BATCH)
    assert [len(batch) for batch in twins.warm_up_batches()] == [1, MAX_BATCH]
    twins.start(render)
    assert twins.wait(timeout=900), "compilation failed (see the log)"
    assert twins.graphs_recaptured == 2  # the unstyled UNet's graph and the fused one's
    monkeypatch.setattr(pipes, "compiled", twins)
    calls = {"plain_unet": 0, "fused_unet": 0}
    for name in calls:
        getattr(twins.pipes.fused_styles, name).register_forward_pre_hook(
            lambda *_, name=name: calls.__setitem__(name, calls[name] + 1)
        )
    graphs, replays = compiled_graph_count(), capture.replays
    compiled = [generate(pipes, [request])[0][0] for request in alone]
    # Batches of one replay graphs (the stand-in runs what was captured again), now of the compiled UNets
    assert calls == {"plain_unet": 2, "fused_unet": 2} and capture.replays > replays
    assert twins.batches_served == 0 and compiled_graph_count() == graphs
    for ours, reference in zip(compiled, eager, strict=True):
        assert np.abs(pixels(ours) - pixels(reference)).max() <= 2
    generate(pipes, [check_inputs(Kind.IMAGINE, "a fox", buckets=buckets, seed=1, count=2)])
    assert twins.batches_served == 1
    # The twins encode unstyled prompts on the eager side's graphed text encoders, two new prompts in one graph
    encoder = with_graphs.plain_encoders["text_encoder_2"]
    graphs = encoder.forward.graphs
    generate(pipes, [check_inputs(Kind.IMAGINE, prompt, buckets=buckets, seed=1) for prompt in ("a heron", "a crane")])
    assert twins.batches_served == 2 and encoder.forward.graphs == graphs + 1


def test_a_batch_that_would_recompile_falls_back_to_eager(pipes: Pipelines, buckets, served_by: CompiledTwins) -> None:
    request = check_inputs(Kind.IMAGINE, "a fox", buckets=buckets, aspect="1:1", seed=4)
    served, graphs = served_by.batches_served, compiled_graph_count()
    served_by.pipes.text2img.unet.train()  # a guard the compiled blocks check: they would have to recompile
    try:
        [[image]] = generate(pipes, [request])
        [[again]] = generate(pipes, [request])
    finally:
        served_by.pipes.text2img.unet.eval()
    assert served_by.batches_served == served and compiled_graph_count() == graphs
    assert np.array_equal(pixels(image), pixels(render(pipes, [request])[0]))
    # the shape stays eager from then on, without trying the twins again
    assert np.array_equal(pixels(again), pixels(image))
    served_by._excluded.clear()


def test_the_twins_unets_have_no_adapter_layers_and_styles_share_the_fused_weights(pipes: Pipelines, buckets) -> None:
    twins = CompiledTwins(pipes, {"1:1": buckets["1:1"]}, max_batch_images=1)
    plain = twins.pipes.text2img.unet
    styled = twins.pipes.for_kind(Kind.IMAGINE, pipes.styles.style("ink")).unet
    eager_fused = pipes.fused_styles.fused.model
    assert styled is not plain and styled is not eager_fused
    assert not any(isinstance(module, BaseTunerLayer) for model in (plain, styled) for module in model.modules())
    pairs = zip(eager_fused.named_parameters(), styled.named_parameters(), strict=True)
    assert all(ours is theirs for (_, ours), (_, theirs) in pairs)


def test_styles_are_served_compiled_and_switching_never_recompiles(pipes: Pipelines, buckets, served_by) -> None:
    book = StyleBook(list(STYLES.values()))
    requests = [  # the LoRA style was warmed up at 1:1 only: its graphs serve every aspect
        check_inputs(Kind.IMAGINE, "a fox", buckets=buckets, aspect=aspect, seed=5, style=style, styles=book, count=n)
        for aspect, style, n in [
            ("16:9", "ink", 2), ("1:1", None, 1), ("16:9", "rain", 1), ("1:1", "ink", 1), ("1:1", "pencil", 2)
        ]
    ]  # fmt: skip
    graphs, served = compiled_graph_count(), served_by.batches_served
    compiled = [generate(pipes, [request])[0] for request in requests]
    assert served_by.batches_served == served + len(requests) and compiled_graph_count() == graphs
    for request, images in zip(requests, compiled, strict=True):
        for ours, eager in zip(images, render(pipes, [request]), strict=True):
            assert np.abs(pixels(ours) - pixels(eager)).max() <= 2
    inked, plain, pencilled = compiled[3][0], compiled[1][0], compiled[4][0]
    assert np.abs(pixels(inked) - pixels(plain)).mean() > 1
    assert np.abs(pixels(pencilled) - pixels(inked)).mean() > 1
    pencil = served_by.pipes.for_kind(Kind.IMAGINE, pipes.styles.style("pencil"))
    assert pencil.text_encoder is pipes.fused_styles.fused_encoders.serving["text_encoder"]
    assert pencil.unet is served_by.pipes.for_kind(Kind.IMAGINE, pipes.styles.style("ink")).unet  # compiled, fused
    # Eager batches switch the eager adapters (last to none here); the twins must still serve the style unchanged
    render(pipes, [requests[1]])
    served = served_by.batches_served
    assert np.array_equal(pixels(generate(pipes, [requests[3]])[0][0]), pixels(inked))
    assert served_by.batches_served == served + 1 and compiled_graph_count() == graphs


def test_a_tiny_autoencoder_is_what_the_twins_compile_and_decode_with(
    tiny_decoder_pipes: Pipelines, buckets, monkeypatch: pytest.MonkeyPatch
) -> None:
    twins = CompiledTwins(tiny_decoder_pipes, {"1:1": buckets["1:1"]}, max_batch_images=1)
    eager_decoder, twin_decoder = tiny_decoder_pipes.codec.decoder, twins.pipes.codec.decoder
    assert twin_decoder is not eager_decoder and isinstance(twin_decoder, type(eager_decoder))
    shared = zip(twin_decoder.parameters(), eager_decoder.parameters(), strict=True)
    assert all(ours is theirs for ours, theirs in shared)
    twins.start(render)
    assert twins.wait(timeout=900), "compilation failed (see the log)"
    monkeypatch.setattr(tiny_decoder_pipes, "compiled", twins)
    request = check_inputs(Kind.IMAGINE, "a fox", buckets=buckets, seed=6)
    graphs = compiled_graph_count()
    [[compiled]] = generate(tiny_decoder_pipes, [request])
    assert twins.batches_served == 1 and compiled_graph_count() == graphs
    assert np.abs(pixels(compiled) - pixels(render(tiny_decoder_pipes, [request])[0])).max() <= 2


def test_requests_are_served_eager_while_compiling(pipes: Pipelines, buckets, monkeypatch) -> None:
    gate = threading.Event()
    intervals_while_compiling = []
    interval_before = sys.getswitchinterval()

    def held_render(twin_pipes: Pipelines, batch) -> object:
        intervals_while_compiling.append(sys.getswitchinterval())
        gate.wait(timeout=60)
        return render(twin_pipes, batch)

    twins = CompiledTwins(pipes, {"1:1": buckets["1:1"]}, max_batch_images=1)
    monkeypatch.setattr(pipes, "compiled", twins)
    twins.start(held_render)
    request = check_inputs(Kind.IMAGINE, "a fox", buckets=buckets, seed=2)
    try:
        [[image]] = generate(pipes, [request])
        assert not twins.ready and twins.batches_served == 0
    finally:
        gate.set()
    assert twins.wait(timeout=900)
    # The request above got the GIL back quickly:
    assert intervals_while_compiling == [pytest.approx(COMPILE_SWITCH_INTERVAL)] * len(twins.warm_up_batches())
    assert sys.getswitchinterval() == interval_before
    [[compiled]] = generate(pipes, [request])
    assert twins.batches_served == 1
    assert np.abs(pixels(compiled) - pixels(image)).max() <= 2


def test_quick_gil_handoffs_end_with_the_block_and_never_slow_down() -> None:
    before = sys.getswitchinterval()
    with pytest.raises(KeyError), quick_gil_handoffs(before / 10):
        assert sys.getswitchinterval() == pytest.approx(before / 10)
        raise KeyError("the compile failed")
    assert sys.getswitchinterval() == before
    with quick_gil_handoffs(before * 10):
        assert sys.getswitchinterval() == before  # a shorter interval set elsewhere stays


def test_compile_workers_take_jobs_once_started() -> None:
    # In a process of its own: the worker pool outlives the call. The device only needs to say "cuda".
    script = (
        "import torch\n"
        "from torch._inductor.async_compile import AsyncCompile\n"
        "from bot.engine.compiled import start_compile_workers\n"
        "assert start_compile_workers(torch.device('cuda')) > 0\n"
        "assert AsyncCompile.use_process_pool(), 'kernels would still be built on the compiling thread'\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
