"""VAE encode and decode, kept out of the pipelines so that their dtype and memory are ours to choose.

The SDXL VAE overflows in float16 (NaN, black images); diffusers answers by upcasting the whole VAE to float32
for every decode, which is slow and was most of the peak memory at batch 8. We keep the VAE in a dtype that
cannot overflow instead: bfloat16 (float32's range) where the GPU supports it, float16 only for a VAE that was
fine-tuned for it (`MODEL_VAE`, e.g. sdxl-vae-fp16-fix), float32 otherwise. Any image that still comes out
non-finite is decoded again in float32 before we give up on it.

`MODEL_TINY_VAE` names a tiny autoencoder (TAESD for SDXL, `madebyollin/taesdxl`) that decodes instead of the
full VAE: a fraction of its work, for slightly softer images. The full VAE still encodes (remix, inpaint).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import numpy as np
import torch
from diffusers import AutoencoderKL, AutoencoderTiny
from PIL import Image

from bot.engine.images import Picture

DECODE_CHUNK = 4  # images per VAE decode call: bounds activation memory at large batches


class NonFiniteOutput(RuntimeError):
    """The model produced NaN or infinite values for some images, even after a float32 retry."""

    def __init__(self, indices: list[int]) -> None:
        super().__init__(f"non-finite output for images {indices}")
        self.indices = indices


class LatentCodec:
    """Turns pixels into scaled latents and back, on the VAE's own dtype and device."""

    def __init__(self, vae: AutoencoderKL, latent_dtype: torch.dtype, decoder: AutoencoderTiny | None = None) -> None:
        self.vae = vae
        self.decoder: AutoencoderKL | AutoencoderTiny = decoder or vae  # what turns latents into pixels
        if decoder is not None:
            # Channels last pays for the tiny autoencoder, all convolutions: 5.8 against 3.9 ms per image at batch
            # 8 on an H100 (bench.knobs). Not for the VAE, whose group norms made it 25 % slower in that layout.
            decoder.to(memory_format=torch.channels_last)
        self.latent_dtype = latent_dtype
        self.float32_retries = 0  # images decoded a second time in float32; each costs a full fp32 decode

    @torch.no_grad()  # not inference_mode: its tensors would fail the compiled UNet's guards
    def encode(self, images: Sequence[Image.Image | Picture]) -> torch.Tensor:
        """Scaled latents of RGB images (all the same size); the distribution's mean, so no seed is needed."""
        pixels = torch.from_numpy(np.stack([np.asarray(image, dtype=np.uint8) for image in images]))
        # Channels first in memory, not a permuted view, all the way to the latents: the UNet would otherwise run
        # remix and inpainting channels last, a layout that made it slower on an H100 (bench.knobs), in which
        # its CUDA graphs round differently from text-to-image's (bot.engine.cuda_graphs).
        pixels = pixels.to(self.vae.device).permute(0, 3, 1, 2).contiguous().to(self.vae.dtype) / 127.5 - 1.0
        latents = self.vae.encode(pixels).latent_dist.mode()
        return (latents * self.vae.config.scaling_factor).to(self.latent_dtype).contiguous()

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> list[Picture]:
        """RGB pictures from scaled latents. Raises `NonFiniteOutput` naming the images that stay broken."""
        chunks = [self._decode_pixels(chunk) for chunk in latents.split(DECODE_CHUNK)]
        pixels = torch.cat(chunks).float()
        broken = _non_finite(pixels)
        if broken and self.decoder.dtype != torch.float32:
            self.float32_retries += len(broken)
            pixels[broken] = self._decode_float32(latents[broken])
            broken = _non_finite(pixels)
        if broken:
            raise NonFiniteOutput(broken)
        as_bytes = ((pixels / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8)
        # Channels last on the device, so that each picture's rows are as the PNG encoder reads them.
        return list(as_bytes.permute(0, 2, 3, 1).contiguous().cpu().numpy())

    def _decode_pixels(self, latents: torch.Tensor) -> torch.Tensor:
        # One memory layout whatever produced the latents: the compiled decoder's guards check strides.
        latents = latents.to(self.decoder.dtype).contiguous()
        return self.decoder.decode(latents / self.decoder.config.scaling_factor).sample

    def _decode_float32(self, latents: torch.Tensor) -> torch.Tensor:
        # A temporary float32 copy rather than converting the VAE in place: its parameters are shared with the
        # compiled twin (bot.engine.compiled), which may be compiling in another thread right now.
        decoder = copy.deepcopy(self.decoder).to(torch.float32)
        return decoder.decode(latents.float() / decoder.config.scaling_factor).sample


def _non_finite(pixels: torch.Tensor) -> list[int]:
    """The images that hold NaN or infinity: one check and one GPU sync for the batch, not one per image."""
    finite = torch.isfinite(pixels).flatten(1).all(dim=1).tolist()
    return [index for index, ok in enumerate(finite) if not ok]
