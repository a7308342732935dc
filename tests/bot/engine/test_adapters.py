"""Styles' LoRA adapters on the tiny model: loaded once, switched per batch, never mixed within one."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import numpy as np
import pytest

from bot.engine.adapters import StyleAdapters
from bot.engine.executor import Executor
from bot.engine.generation import generate
from bot.engine.pipelines import Pipelines, load_pipelines
from bot.engine.requests import Kind, check_inputs
from bot.settings import Settings
from bot.styles import Style, StyleBook
from tests.support.tiny_model import TinyModel, build_tiny_lora


@pytest.fixture(scope="module")
def styled(settings: Settings, loras: dict[str, Path]) -> Pipelines:
    """Pipelines with both adapters loaded, plus a style that is only a template."""
    pipes = load_pipelines(settings)
    book = StyleBook(
        [
            Style(name="ink", description="Ink", lora=str(loras["ink"])),
            Style(name="neon", description="Neon", lora=str(loras["neon"]), weight=0.7),
            Style(name="words", description="Words only", template="{prompt}, in the rain"),
        ]
    )
    pipes.styles = StyleAdapters.load(pipes.text2img, book)
    return pipes


def pixels(images) -> np.ndarray:
    return np.stack([np.asarray(image, dtype=np.int16) for image in images])


def fox(buckets, style: str | None = None, **options):
    book = StyleBook([Style(name=name, description=name) for name in ("ink", "neon", "words")])
    return check_inputs(Kind.IMAGINE, "a fox", buckets=buckets, seed=9, steps=2, style=style, styles=book, **options)


def test_a_style_changes_the_picture_and_no_style_is_exactly_unstyled(styled: Pipelines, pipes: Pipelines, buckets):
    plain = pixels(generate(pipes, [fox(buckets)])[0])  # a pipeline that never loaded an adapter
    inked = pixels(generate(styled, [fox(buckets, "ink")])[0])
    neon = pixels(generate(styled, [fox(buckets, "neon")])[0])
    unstyled_after = pixels(generate(styled, [fox(buckets)])[0])
    assert np.abs(inked - plain).mean() > 1 and np.abs(neon - inked).mean() > 1
    assert np.array_equal(unstyled_after, plain)


def test_switching_back_and_forth_reproduces_each_style(styled: Pipelines, buckets) -> None:
    first = pixels(generate(styled, [fox(buckets, "ink")])[0])
    generate(styled, [fox(buckets, "neon")])
    generate(styled, [fox(buckets)])
    assert np.array_equal(pixels(generate(styled, [fox(buckets, "ink")])[0]), first)


def test_a_switch_computes_what_diffusers_set_adapters_computes(styled: Pipelines, settings, loras, buckets) -> None:
    reference = load_pipelines(settings)  # the adapters selected through diffusers' own pipeline methods
    reference.text2img.load_lora_weights(str(loras["neon"]), adapter_name="neon")
    reference.text2img.set_adapters(["neon"], adapter_weights=[0.7])
    expected = pixels(generate(reference, [fox(buckets)])[0])
    for style in ("ink", None, "neon"):  # reach neon through the other states
        generated = generate(styled, [fox(buckets, style)])
    assert np.array_equal(pixels(generated[0]), expected)


def test_a_template_style_rewrites_the_prompt_only(styled: Pipelines, buckets) -> None:
    worded = pixels(generate(styled, [fox(buckets, "words")])[0])
    rewritten = check_inputs(Kind.IMAGINE, "a fox, in the rain", buckets=buckets, seed=9, steps=2)
    assert np.array_equal(worded, pixels(generate(styled, [rewritten])[0]))


async def test_two_styles_queued_together_never_share_a_batch(styled: Pipelines, buckets) -> None:
    batches: list[list[str | None]] = []

    def recording(requests, should_stop):
        batches.append([request.style for request in requests])
        return generate(styled, requests, should_stop)

    executor = Executor(
        recording, model_name="tiny", max_batch_images=8, queue_max=20, user_max_pending=20, batch_timeout=60
    )
    executor.start()
    styles = ["ink", "neon", None, "ink", "neon", None]
    jobs = [executor.submit(fox(buckets, style), user_id=n) for n, style in enumerate(styles)]
    await asyncio.gather(*(job.result() for job in jobs))
    await executor.close()
    assert all(len(set(batch)) == 1 for batch in batches)
    assert sorted(style or "" for batch in batches for style in batch) == sorted(style or "" for style in styles)


def test_an_adapter_that_cannot_load_disables_only_its_style(settings: Settings, loras, caplog) -> None:
    pipes = load_pipelines(settings)
    book = StyleBook(
        [
            Style(name="ink", description="Ink", lora=str(loras["ink"])),
            Style(name="lost", description="Lost", lora="/nowhere/lost.safetensors"),
        ]
    )
    with caplog.at_level(logging.ERROR, logger="bot.engine.adapters"):
        adapters = StyleAdapters.load(pipes.text2img, book)
    assert [style.name for style in adapters.book] == ["ink"]
    [line] = [record.getMessage() for record in caplog.records if record.name == "bot.engine.adapters"]
    assert "style lost is disabled" in line and "no such file" in line


def test_a_lora_saved_with_dropout_still_gives_one_picture_per_seed(
    settings: Settings, tiny_model: TinyModel, tmp_path: Path, buckets
) -> None:
    # Its file carries its training configuration, so diffusers rebuilds its dropout layers.
    lora = build_tiny_lora(tiny_model.lcm_unet, tmp_path / "wet.safetensors", seed=3, dropout=0.5)
    book = StyleBook([Style(name="wet", description="Wet", lora=str(lora))])
    pipes = load_pipelines(settings)
    pipes.styles = StyleAdapters.load(pipes.text2img, book)
    request = check_inputs(Kind.IMAGINE, "a fox", buckets=buckets, seed=9, steps=2, style="wet", styles=book)
    first, again = (pixels(generate(pipes, [request])[0]) for _ in range(2))
    assert np.array_equal(first, again)
