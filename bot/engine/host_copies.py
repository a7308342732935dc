"""Copies from the host to the GPU that never make the host wait for the GPU.

A plain `tensor.to("cuda")` of a CPU tensor copies from pageable memory, which CUDA can only do once the GPU has
finished everything queued before it. The host stops there, and when it goes on the GPU idles until the host has
queued its next work: through a denoising step's Python, or, before the first step, through everything the
pipeline does up to the first UNet call. A request makes several such small copies (token ids, starting noise,
added time ids, the guidance embedding, each step's noise); through pinned memory they queue like kernels.
"""

from __future__ import annotations

import torch
from diffusers.utils.torch_utils import randn_tensor

Generators = torch.Generator | list[torch.Generator] | None


def to_device_without_waiting(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """`tensor` on `device`. From the CPU to a GPU it goes through pinned memory, so that the host does not wait
    for the GPU's queued work; torch's host allocator keeps the pinned block until the copy is done."""
    if tensor.device.type == "cpu" and device.type == "cuda":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


def draw_noise(shape: tuple[int, ...], generator: Generators, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """The noise diffusers' `randn_tensor` draws for `device`: from each image's generator, on the generators'
    device (the bot's are on the CPU, so that a seed paints the same picture on any card), then moved to
    `device`, here without waiting."""
    first = generator[0] if isinstance(generator, list) else generator
    drawn_on = torch.device("cpu") if first is not None and first.device.type == "cpu" else device
    drawn = randn_tensor(shape, generator=generator, device=drawn_on, dtype=dtype)
    return to_device_without_waiting(drawn, device)
