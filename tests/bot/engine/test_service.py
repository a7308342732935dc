from __future__ import annotations

import gc
import logging
import threading

import pytest
import torch

from bot.engine import generation
from bot.engine.adapters import StyleAdapters
from bot.engine.pipelines import load_pipelines
from bot.engine.requests import Kind, check_inputs
from bot.engine.service import (
    child_batch_that_fits,
    choose_batch_images,
    compile_child_batch,
    compile_enabled,
    fused_styles_for,
    graph_capture_for,
    load_engine,
    open_engine,
    room_beside_batches,
    what_to_fuse,
)
from bot.settings import Settings
from bot.styles import StyleBook
from tests.support.graphs import RerunCapture


def test_batch_size_is_the_setting_or_a_cpu_default(settings: Settings) -> None:
    assert choose_batch_images(settings.model_copy(update={"max_batch_images": 6}), torch.device("cpu")) == 6
    assert choose_batch_images(settings.model_copy(update={"max_batch_images": None}), torch.device("cpu")) == 4


@pytest.mark.parametrize(
    ("setting", "device", "expected"),
    [("auto", "cuda", True), ("auto", "cpu", False), ("on", "cpu", True), ("off", "cuda", False)],
)
def test_compiling_is_automatic_on_gpus_only(settings: Settings, setting: str, device: str, expected: bool) -> None:
    assert compile_enabled(settings.model_copy(update={"compile": setting}), torch.device(device)) is expected


@pytest.mark.parametrize(
    ("setting", "device", "expected"),
    [("auto", "cpu", None), ("on", "cpu", 2), ("off", "cuda", None), ("on", "cuda", 2)],
)
def test_a_compile_child_is_asked_for_or_automatic_on_gpus_only(
    settings: Settings, setting: str, device: str, expected: int | None
) -> None:
    child = compile_child_batch(settings.model_copy(update={"compile_child": setting}), torch.device(device), 4)
    assert child == expected


@pytest.mark.parametrize(
    ("card_gib", "batch_images", "expected"),
    [(80, 8, 8), (48, 8, 2), (40, 8, 2), (32, 8, None), (24, 7, None), (80, 1, 1)],
)
def test_the_compile_child_batches_at_the_bot_s_size_where_it_fits_else_at_2(
    settings: Settings, card_gib: int, batch_images: int, expected: int | None
) -> None:
    # After loading: about 4.1 GiB of weights, and half a GiB of the card gone to the CUDA context.
    at_1024 = settings.model_copy(update={"base_resolution": 1024})
    fits = child_batch_that_fits(at_1024, batch_images, free_gib=card_gib - 4.6, weights_gib=4.1)
    assert fits == expected


@pytest.mark.parametrize(("free_gib", "batch_images", "expected"), [(75.0, 8, True), (16.5, 6, False), (17.5, 6, True)])
def test_styles_are_fused_only_where_the_batches_keep_their_room(
    settings: Settings, free_gib: float, batch_images: int, expected: bool
) -> None:
    # Batches of 6 images at 1024x1024 are given 16 GiB; a LoRA on SSD-1B's attention projections fuses into
    # 0.81 GiB of weights.
    at_1024 = settings.model_copy(update={"base_resolution": 1024})
    assert room_beside_batches(at_1024, batch_images, free_gib=free_gib, needed_gib=0.81) is expected


@pytest.mark.parametrize(
    ("free_gib", "expected"), [(17.3, (True, True)), (17.0, (True, False)), (16.5, (False, False))]
)
def test_the_text_encoders_fuse_only_where_the_fused_unet_leaves_room_for_them_too(
    settings: Settings, free_gib: float, expected: tuple[bool, bool]
) -> None:
    # As above, batches of 6 images at 1024x1024: 16 GiB; SSD-1B's UNet 0.81 GiB, its text encoders 0.45 GiB
    at_1024 = settings.model_copy(update={"base_resolution": 1024})
    fits = what_to_fuse(at_1024, 6, free_gib=free_gib, unet_gib=0.81, text_gib=0.45)
    assert fits == expected


def test_load_engine_fuses_lora_styles_only(settings: Settings, loras, tmp_path) -> None:
    styles = tmp_path / "styles.toml"
    styles.write_text(
        f'[[style]]\nname = "ink"\ndescription = "Ink"\nlora = "{loras["ink"]}"\n'
        '[[style]]\nname = "rain"\ndescription = "Rain"\ntemplate = "{prompt}, in the rain"\n'
    )
    pipes, _ = load_engine(settings.model_copy(update={"styles_file": styles}))
    assert pipes.fused_styles is not None and pipes.fused_styles.fused.adapters == {"ink"}
    unstyled, _ = load_engine(settings.model_copy(update={"styles_file": tmp_path / "none.toml"}))
    assert unstyled.fused_styles is None


@pytest.mark.parametrize(("setting", "warned"), [("on", True), ("auto", False), ("off", False)])
def test_cuda_graphs_need_a_gpu_and_asking_for_them_on_a_cpu_is_a_warning(
    settings: Settings, setting: str, warned: bool, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="bot.engine.service"):
        assert graph_capture_for(settings.model_copy(update={"cuda_graphs": setting}), torch.device("cpu")) is None
    assert [record.getMessage() for record in caplog.records] == (
        ["CUDA_GRAPHS=on needs a CUDA GPU; on cpu, batches of one run eager"] if warned else []
    )


def test_with_graphs_no_style_is_said_to_encode_without_them_once_text_encoders_fuse(
    settings: Settings, unet_and_text_styles: StyleBook, caplog: pytest.LogCaptureFixture
) -> None:
    pipes = load_pipelines(settings)
    pipes.styles = StyleAdapters.load(pipes.text2img, unet_and_text_styles)
    with caplog.at_level(logging.INFO, logger="bot.engine.service"):
        styles = fused_styles_for(settings, pipes, batch_images=2, capture=RerunCapture())
    assert styles.fused_encoders.adapters == {"pencil"} and not styles.peft_text_adapters
    assert not [record for record in caplog.records if "without CUDA graphs" in record.getMessage()]


def test_load_engine_freezes_the_loaded_heap(settings: Settings) -> None:
    pipes, batch_images = load_engine(settings)
    assert batch_images == settings.max_batch_images
    assert pipes.device.type == "cpu" and pipes.compiled is None  # COMPILE is off unless asked for
    assert gc.get_freeze_count() > 100_000  # the libraries and the model are out of the collector's reach


async def test_the_serving_thread_warms_up_every_bucket_before_the_first_job(
    settings: Settings, buckets, monkeypatch: pytest.MonkeyPatch
) -> None:
    rendered: list[tuple[str, tuple[int, int], str]] = []  # (thread, size, prompt), in order
    render = generation.render

    def recording_render(pipes, requests, should_stop=lambda: False):
        first = requests[0]
        rendered.append((threading.current_thread().name, (first.width, first.height), first.prompt))
        return render(pipes, requests, should_stop)

    monkeypatch.setattr(generation, "render", recording_render)
    async with open_engine(settings, drain_on_close=True) as engine:
        job = engine.executor.submit(check_inputs(Kind.IMAGINE, "x", buckets=buckets, steps=1), user_id=1)
        await job.result()
    *warm_ups, (job_thread, _, job_prompt) = rendered
    assert job_prompt == "x" and job_thread.startswith("gpu")
    assert sorted(size for _, size, _ in warm_ups) == sorted(buckets.values())
    assert {thread for thread, _, _ in warm_ups} == {job_thread}


async def test_open_engine_serves_and_drains(settings: Settings, buckets) -> None:
    async with open_engine(settings, drain_on_close=True) as engine:
        job = engine.executor.submit(check_inputs(Kind.IMAGINE, "x", buckets=buckets, steps=1), user_id=1)
    assert len((await job.result()).images) == 1


def test_a_broken_styles_file_is_one_line_and_the_engine_runs_without_styles(
    settings: Settings, tmp_path, caplog
) -> None:
    broken = tmp_path / "styles.toml"
    broken.write_text('[[style]]\nname = "ink"\ndescription = "Ink"\ntemplate = "no slot"\n')
    with caplog.at_level(logging.ERROR, logger="bot.engine.service"):
        pipes, _ = load_engine(settings.model_copy(update={"styles_file": broken}))
    assert len(pipes.styles.book) == 0
    [line] = [record.getMessage() for record in caplog.records if record.name == "bot.engine.service"]
    assert line.startswith(f"STYLES_FILE={broken}: style #1: template") and line.endswith("runs without styles.")
