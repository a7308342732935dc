from __future__ import annotations

import pytest
import torch
from diffusers.utils.torch_utils import randn_tensor

from bot.engine.host_copies import draw_noise, to_device_without_waiting

SHAPE = (2, 4, 8, 8)


def generators() -> list[torch.Generator]:
    return [torch.Generator().manual_seed(seed) for seed in (3, 4)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_noise_is_what_diffusers_draws_from_the_same_generators(dtype: torch.dtype) -> None:
    cpu = torch.device("cpu")
    assert torch.equal(draw_noise(SHAPE, generators(), cpu, dtype), randn_tensor(SHAPE, generators(), cpu, dtype))
    single = (1, 4, 8, 8)
    ours = draw_noise(single, torch.Generator().manual_seed(5), cpu, dtype)
    assert torch.equal(ours, randn_tensor(single, torch.Generator().manual_seed(5), cpu, dtype))


def test_noise_without_generators_comes_from_torch_s_global_seed() -> None:
    cpu = torch.device("cpu")
    torch.manual_seed(6)
    ours = draw_noise(SHAPE, None, cpu, torch.float32)
    torch.manual_seed(6)
    assert torch.equal(ours, randn_tensor(SHAPE, None, cpu, torch.float32))


def test_noise_from_host_generators_is_drawn_on_the_host_and_lands_on_the_device() -> None:
    """The meta device stands in for a GPU: the CPU generators draw, and only the result moves."""
    noise = draw_noise(SHAPE, generators(), torch.device("meta"), torch.float16)
    assert noise.device.type == "meta" and noise.shape == SHAPE and noise.dtype == torch.float16


def test_a_tensor_already_on_its_device_is_not_copied() -> None:
    tensor = torch.arange(4)
    assert to_device_without_waiting(tensor, torch.device("cpu")) is tensor
