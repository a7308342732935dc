from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import torch
from diffusers import (
    LCMScheduler,
    StableDiffusionXLImg2ImgPipeline,
    StableDiffusionXLInpaintPipeline,
    StableDiffusionXLPipeline,
)
from PIL import Image
from torch.utils._python_dispatch import TorchDispatchMode

from bot.engine.pipelines import Pipelines, pipeline_over
from bot.engine.scheduler import ServedLCMScheduler

SIZE = 64
STOCK_PIPELINES = {
    "text2img": StableDiffusionXLPipeline,
    "img2img": StableDiffusionXLImg2ImgPipeline,
    "inpaint": StableDiffusionXLInpaintPipeline,
}
TASKS = list(STOCK_PIPELINES)


def task_inputs(task: str) -> dict[str, object]:
    """Starting latents (diffusers takes 4-channel input as latents) and a mask where the task wants them."""
    inputs: dict[str, object] = {}
    if task != "text2img":
        inputs["image"] = torch.randn(2, 4, SIZE // 8, SIZE // 8, generator=torch.Generator().manual_seed(7))
        inputs["strength"] = 0.6
    if task == "inpaint":
        mask = Image.new("L", (SIZE, SIZE), 0)
        mask.paste(255, (0, 0, SIZE // 2, SIZE))
        inputs["mask_image"] = [mask, mask]
    return inputs


def latents(pipe: object, task: str) -> torch.Tensor:
    """Two images of four steps, each from its own CPU generator, as the bot batches them."""
    return pipe(
        prompt=["a fox", "an owl"],
        num_inference_steps=4,
        guidance_scale=1.0,
        width=SIZE,
        height=SIZE,
        generator=[torch.Generator().manual_seed(seed) for seed in (1, 2)],
        output_type="latent",
        **task_inputs(task),
    ).images


@pytest.mark.parametrize("task", TASKS)
def test_each_task_denoises_as_diffusers_pipeline_and_lcm_scheduler_do(pipes: Pipelines, task: str) -> None:
    """Our scheduler, and the served pipelines' starting noise and conditioning (bot.engine.pipelines)."""
    served = getattr(pipes, task)
    assert isinstance(served.scheduler, ServedLCMScheduler)
    stock_scheduler = LCMScheduler.from_config(served.scheduler.config)
    reference = pipeline_over(STOCK_PIPELINES[task], served, scheduler=stock_scheduler)
    assert torch.equal(latents(served, task), latents(reference, task))


class DeviceReads(TorchDispatchMode):
    """Counts the operations that make the host wait for a GPU: reading a value back, or finding indices."""

    WAITING = frozenset({torch.ops.aten._local_scalar_dense.default, torch.ops.aten.nonzero.default})

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in self.WAITING:
            self.seen.append(str(func))
        return func(*args, **(kwargs or {}))


@contextmanager
def reads_in_steps(scheduler: LCMScheduler, monkeypatch: pytest.MonkeyPatch) -> Iterator[DeviceReads]:
    reads = DeviceReads()
    step = scheduler.step

    def watched_step(*args: object, **kwargs: object) -> object:
        with reads:
            return step(*args, **kwargs)

    monkeypatch.setattr(scheduler, "step", watched_step)
    yield reads


@pytest.mark.parametrize("task", TASKS)
def test_no_step_reads_a_value_back_from_the_device(
    pipes: Pipelines, task: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a GPU each such read waits for the UNet's work to finish (diffusers' step makes several per step)."""
    pipe = getattr(pipes, task)
    with reads_in_steps(pipe.scheduler, monkeypatch) as reads:
        latents(pipe, task)
    assert reads.seen == []


def stepped(scheduler: LCMScheduler, strength: float = 1.0) -> list[torch.Tensor]:
    """Every output of four steps over fixed model outputs, from one CPU generator per image."""
    scheduler.set_timesteps(4, strength=strength)
    generators = [torch.Generator().manual_seed(seed) for seed in (3, 4)]
    sample = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(5))
    outputs = []
    for number, timestep in enumerate(scheduler.timesteps):
        model_output = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(number))
        sample, denoised = scheduler.step(model_output, timestep, sample, generators, return_dict=False)
        outputs += [sample, denoised]
    return outputs


@pytest.mark.parametrize(
    "config",
    [{}, {"prediction_type": "v_prediction"}, {"prediction_type": "sample"}, {"clip_sample": True}],
    ids=["epsilon", "v_prediction", "sample", "clip_sample"],
)
def test_every_configuration_steps_as_diffusers_does(config: dict[str, object]) -> None:
    served, reference = ServedLCMScheduler(**config), LCMScheduler(**config)
    for ours, theirs in zip(stepped(served), stepped(reference), strict=True):
        assert torch.equal(ours, theirs)


def test_a_strength_below_one_steps_as_diffusers_does() -> None:
    served, reference = ServedLCMScheduler(), LCMScheduler()
    for ours, theirs in zip(stepped(served, strength=0.5), stepped(reference, strength=0.5), strict=True):
        assert torch.equal(ours, theirs)


def test_noising_a_remix_leaves_the_alphas_table_on_the_cpu() -> None:
    """diffusers moves the table to the samples' device for good, which changes how later steps round."""
    served = ServedLCMScheduler()
    table = served.alphas_cumprod
    on_meta = torch.empty(1, 4, 8, 8, device="meta")  # a device other than the CPU, without a GPU
    served.add_noise(on_meta, on_meta, torch.tensor([500], device="meta"))
    assert served.alphas_cumprod is table and table.device.type == "cpu"

    reference = LCMScheduler()
    samples, noise = torch.randn(2, 1, 4, 8, 8, generator=torch.Generator().manual_seed(9))
    timesteps = torch.tensor([999])
    assert torch.equal(served.add_noise(samples, noise, timesteps), reference.add_noise(samples, noise, timesteps))
