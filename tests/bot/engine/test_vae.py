from __future__ import annotations

import copy

import numpy as np
import torch
from diffusers import AutoencoderKL

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
