from __future__ import annotations

import copy

import numpy as np
import torch
from diffusers import AutoencoderKL
from PIL import Image

from bot.engine.pipelines import Pipelines
from bot.engine.vae import LatentCodec
from tests.support.tiny_model import TinyModel


def test_only_the_images_that_overflow_are_decoded_again_in_float32(tiny_model: TinyModel) -> None:
    latents = torch.zeros(3, 4, 8, 8)
    latents[1] = 1e4  # beyond float16's range once decoded
    half = LatentCodec(
        AutoencoderKL.from_pretrained(tiny_model.base, subfolder="vae", dtype=torch.float16), latent_dtype=torch.float32
    )
    images = half.decode(latents)
    assert half.float32_retries == 1 and len(images) == 3
    upcast = LatentCodec(copy.deepcopy(half.vae).to(torch.float32), latent_dtype=torch.float32)
    assert np.array_equal(np.asarray(images[1]), np.asarray(upcast.decode(latents)[1]))
    assert half.vae.dtype == torch.float16  # the retry used a copy: the VAE is shared with the compiled twins


def test_the_tiny_decoder_works_channels_last_for_the_same_pixels(tiny_decoder_pipes: Pipelines) -> None:
    codec = tiny_decoder_pipes.codec
    convolutions = [module for module in codec.decoder.modules() if isinstance(module, torch.nn.Conv2d)]
    assert all(conv.weight.is_contiguous(memory_format=torch.channels_last) for conv in convolutions)
    as_made = copy.deepcopy(codec.decoder).to(memory_format=torch.contiguous_format)
    latents = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = as_made.decode(latents / as_made.config.scaling_factor).sample
        assert torch.allclose(codec._decode_pixels(latents), expected, atol=1e-5)


def test_encoded_latents_are_channels_first_in_memory(pipes: Pipelines) -> None:
    """So that remix and inpainting run the UNet in the layout that text-to-image runs it in."""
    pixels = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    latents = pipes.codec.encode([Image.fromarray(pixels)] * 2)
    assert latents.shape == (2, 4, 8, 8) and latents.is_contiguous()
