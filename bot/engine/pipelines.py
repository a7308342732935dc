"""Load the LCM SSD-1B pipelines once: text-to-image, image-to-image and inpainting over one set of weights.

The production recipe (model card of latent-consistency/lcm-ssd-1b): the distilled UNet from `MODEL_UNET`
inside the `MODEL_BASE` SDXL pipeline, with `LCMScheduler`. Each setting is a hub id or a local folder and both
go through the same `from_pretrained` calls, so the tests' tiny local model exercises the production code.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import torch
from diffusers import (
    AutoencoderKL,
    AutoencoderTiny,
    DiffusionPipeline,
    StableDiffusionXLImg2ImgPipeline,
    StableDiffusionXLInpaintPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTokenizer

from bot.engine.adapters import StyleAdapters
from bot.engine.host_copies import Generators, draw_noise, to_device_without_waiting
from bot.engine.requests import Kind
from bot.engine.scheduler import ServedLCMScheduler
from bot.engine.text_embeddings import TextEmbeddingCache
from bot.engine.vae import LatentCodec
from bot.settings import Settings

if TYPE_CHECKING:
    from bot.engine.compiled import CompiledTwins
    from bot.engine.fused_styles import FusedStyles
    from bot.styles import Style

log = logging.getLogger(__name__)

TEXT_ENCODERS = ("text_encoder", "text_encoder_2")  # the SDXL pipelines' attribute names
SharingPipeline = TypeVar(
    "SharingPipeline", StableDiffusionXLPipeline, StableDiffusionXLImg2ImgPipeline, StableDiffusionXLInpaintPipeline
)


class ModelUnavailable(Exception):
    """Weights cannot be loaded; the message says what to download or fix."""


class _RunsOnTheUNetsDevice:
    """Our pipelines' models are never offloaded, so they run where the UNet's weights are. diffusers' own
    `_execution_device` looks for offloading hooks in every module of every model, on each call: 6.3 to 7.1 ms
    on SSD-1B's 1,841 modules on a 2-core CPU, on the GPU thread, before a batch's first kernel. (So does the
    UNet's `device`, through its 1,054 modules: hence its first weight's.)"""

    @property
    def _execution_device(self) -> torch.device:
        return next(self.unet.parameters()).device


class _QueuesItsConditioningWithoutWaiting:
    """diffusers builds the added time ids and the guidance embedding on the CPU and copies them to the GPU from
    pageable memory, once a call, just before the first UNet step: each copy makes the host wait until the GPU
    has encoded a new prompt, and the GPU then idles through the host's Python up to that step. They go through
    pinned memory instead (bot.engine.host_copies); the values are the same."""

    def _get_add_time_ids(self, *args: object, **kwargs: object) -> torch.Tensor | tuple[torch.Tensor, ...]:
        time_ids = super()._get_add_time_ids(*args, **kwargs)  # image to image and inpainting: (positive, negative)
        device = self._execution_device
        if isinstance(time_ids, tuple):
            return tuple(to_device_without_waiting(ids, device) for ids in time_ids)
        return to_device_without_waiting(time_ids, device)

    def get_guidance_scale_embedding(
        self, w: torch.Tensor, embedding_dim: int = 512, dtype: torch.dtype = torch.float32
    ) -> torch.Tensor:
        embedding = super().get_guidance_scale_embedding(w, embedding_dim, dtype)
        return to_device_without_waiting(embedding, self._execution_device)


class ServedXLPipeline(_RunsOnTheUNetsDevice, _QueuesItsConditioningWithoutWaiting, StableDiffusionXLPipeline):
    """Text to image, as diffusers runs it, on the UNet's device, its starting noise and conditioning queued
    without waiting for the GPU."""

    def prepare_latents(
        self,
        batch_size: int,
        num_channels_latents: int,
        height: int,
        width: int,
        dtype: torch.dtype,
        device: torch.device,
        generator: Generators,
        latents: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """diffusers' starting noise, the images' seeded noise drawn as its `randn_tensor` draws it, but not copied
        from pageable memory (see `_QueuesItsConditioningWithoutWaiting`)."""
        if latents is None:
            shape = (batch_size, num_channels_latents, height // self.vae_scale_factor, width // self.vae_scale_factor)
            latents = draw_noise(shape, generator, torch.device(device), dtype)
        return super().prepare_latents(
            batch_size, num_channels_latents, height, width, dtype, device, generator, latents
        )


class ServedXLImg2ImgPipeline(
    _RunsOnTheUNetsDevice, _QueuesItsConditioningWithoutWaiting, StableDiffusionXLImg2ImgPipeline
):
    """Image to image, as diffusers runs it, on the UNet's device, its noise and conditioning queued without
    waiting for the GPU."""

    def prepare_latents(
        self,
        image: torch.Tensor,
        timestep: torch.Tensor,
        batch_size: int,
        num_images_per_prompt: int,
        dtype: torch.dtype,
        device: torch.device,
        generator: Generators = None,
        add_noise: bool = True,
    ) -> torch.Tensor:
        """diffusers' starting latents: the image's, noised with noise drawn as its `randn_tensor` draws it, but not
        copied from pageable memory, which would wait for the GPU to encode the image."""
        latents = super().prepare_latents(
            image, timestep, batch_size, num_images_per_prompt, dtype, device, generator, add_noise=False
        )
        if not add_noise:
            return latents
        noise = draw_noise(latents.shape, generator, torch.device(device), dtype)
        return self.scheduler.add_noise(latents, noise, timestep)


class ServedXLInpaintPipeline(
    _RunsOnTheUNetsDevice, _QueuesItsConditioningWithoutWaiting, StableDiffusionXLInpaintPipeline
):
    """Inpainting, as diffusers runs it, on the UNet's device, its conditioning queued without waiting."""


@dataclass(frozen=True)
class PromptRules:
    """What checking a request needs from the model, without its weights: its tokenizer and whether its UNet
    takes guidance as an input. The scale-out bot (`QUEUE_BACKEND=redis`) checks requests with this alone and
    never loads a pipeline."""

    tokenizer: CLIPTokenizer
    guidance_embedded: bool

    @classmethod
    def load(cls, settings: Settings) -> PromptRules:
        """From the model folders or hub ids, reading only the tokenizer and the UNet's config."""
        try:
            tokenizer = CLIPTokenizer.from_pretrained(settings.model_base, subfolder="tokenizer")
            unet_config = UNet2DConditionModel.load_config(settings.model_unet)
        except (OSError, ValueError) as exc:
            raise ModelUnavailable(
                f"MODEL_BASE / MODEL_UNET: cannot read the tokenizer or UNet config ({exc})"
            ) from exc
        return cls(tokenizer=tokenizer, guidance_embedded=unet_config.get("time_cond_proj_dim") is not None)

    def count_tokens(self, prompt: str) -> int:
        """Tokens CLIP would see, start and end tokens included (compare with its 77-token window)."""
        return len(self.tokenizer(prompt, truncation=False, verbose=False).input_ids)

    def negative_has_effect(self, guidance: float) -> bool:
        """A guidance-distilled UNet takes guidance as an input and never runs the negative branch."""
        return guidance > 1 and not self.guidance_embedded


@dataclass
class Pipelines:
    """The three task pipelines (sharing components), the VAE codec that does all pixel work, and, once
    `bot.engine.service` builds them, the compiled twins that take over the shapes they cover, and the UNets
    without peft's adapter layers that run what the twins leave, where styles brought adapter layers."""

    text2img: StableDiffusionXLPipeline
    img2img: StableDiffusionXLImg2ImgPipeline
    inpaint: StableDiffusionXLInpaintPipeline
    codec: LatentCodec
    device: torch.device
    dtype: torch.dtype
    model_name: str
    embeddings: TextEmbeddingCache
    compiled: CompiledTwins | None = None
    styles: StyleAdapters = field(default_factory=StyleAdapters)
    fused_styles: FusedStyles | None = None

    def for_kind(self, kind: Kind, style: Style | None = None) -> DiffusionPipeline:
        """The task's pipeline for a batch in `style`: over a UNet without adapter layers where one can run it
        (bot.engine.fused_styles), else over the eager UNet."""
        if self.fused_styles is not None and (fused := self.fused_styles.pipeline(kind, style)) is not None:
            return fused
        return {Kind.IMAGINE: self.text2img, Kind.REMIX: self.img2img, Kind.INPAINT: self.inpaint}[kind]

    @property
    def rules(self) -> PromptRules:
        return PromptRules(
            tokenizer=self.text2img.tokenizer,
            guidance_embedded=self.text2img.unet.config.time_cond_proj_dim is not None,
        )


def resolve_device(setting: str) -> torch.device:
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if setting == "cuda" and not torch.cuda.is_available():
        raise ModelUnavailable("DEVICE=cuda but PyTorch sees no CUDA GPU (check the driver and the torch build).")
    return torch.device(setting)


def resolve_dtype(setting: str, device: torch.device) -> torch.dtype:
    """float16 on CUDA (the model card's choice), float32 on CPU where half precision is slow or unsupported."""
    if setting == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    return getattr(torch, setting)


def vae_dtype(device: torch.device, dtype: torch.dtype, fp16_safe_vae: bool) -> torch.dtype:
    """See `bot.engine.vae`: a dtype in which the SDXL VAE cannot overflow."""
    if dtype == torch.float32 or device.type != "cuda":
        return torch.float32
    if fp16_safe_vae and dtype == torch.float16:
        return torch.float16
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32


def load_pipelines(settings: Settings) -> Pipelines:
    device = resolve_device(settings.device)
    dtype = resolve_dtype(settings.dtype, device)
    log.info("loading %s with UNet %s on %s (%s)", settings.model_base, settings.model_unet, device, dtype)
    unet = _load(UNet2DConditionModel, settings.model_unet, dtype, "MODEL_UNET")
    codec_dtype = vae_dtype(device, dtype, fp16_safe_vae=settings.model_vae is not None)
    if settings.model_vae:
        vae = _load(AutoencoderKL, settings.model_vae, codec_dtype, "MODEL_VAE")
    else:
        vae = _load(AutoencoderKL, settings.model_base, codec_dtype, "MODEL_BASE", subfolder="vae")
    # We decode and encode ourselves (LatentCodec), so the pipelines' per-call VAE upcasting must stay off.
    vae.register_to_config(force_upcast=False)
    text2img = _load(
        StableDiffusionXLPipeline, settings.model_base, dtype, "MODEL_BASE", unet=unet, vae=vae, add_watermarker=False
    )
    decoder = None
    if settings.model_tiny_vae:  # TAESD is made to run in float16, so it takes the UNet's dtype
        decoder = _load(AutoencoderTiny, settings.model_tiny_vae, dtype, "MODEL_TINY_VAE")
    return assemble_pipelines(text2img, device, model_name=settings.model_unet, decoder=decoder)


def assemble_pipelines(
    text2img: StableDiffusionXLPipeline,
    device: torch.device,
    *,
    model_name: str,
    embeddings: TextEmbeddingCache | None = None,
    decoder: AutoencoderTiny | None = None,
) -> Pipelines:
    """Finish a loaded text-to-image pipeline: LCM scheduler (bot.engine.scheduler), device, and the two pipelines
    sharing its weights. `decoder` decodes instead of the pipeline's VAE (`MODEL_TINY_VAE`)."""
    text2img = pipeline_over(ServedXLPipeline, text2img)
    text2img.scheduler = ServedLCMScheduler.from_config(text2img.scheduler.config)
    text2img.to(device)
    if decoder is not None:
        decoder.to(device)
    # Weights for inference only. Loading a style's LoRA makes peft freeze the weights it adapts, and whether a
    # weight wants gradients is part of the compiled graphs' cache keys: a compile child without styles missed
    # the UNet's graphs of a bot with a LoRA style (bot.engine.cache_filler), until every weight was frozen here.
    for model in (text2img.unet, text2img.vae, text2img.text_encoder, text2img.text_encoder_2, decoder):
        if model is not None:
            model.requires_grad_(False)
    img2img, inpaint = task_pipelines(text2img)
    return Pipelines(
        text2img=text2img,
        img2img=img2img,
        inpaint=inpaint,
        codec=LatentCodec(text2img.vae, latent_dtype=text2img.unet.dtype, decoder=decoder),
        device=device,
        dtype=text2img.unet.dtype,
        model_name=model_name,
        embeddings=embeddings or TextEmbeddingCache(),
    )


def task_pipelines(
    text2img: StableDiffusionXLPipeline,
) -> tuple[StableDiffusionXLImg2ImgPipeline, StableDiffusionXLInpaintPipeline]:
    """Image-to-image and inpainting over the very components of `text2img`; none of the three shows a progress
    bar (the bot serves; nobody watches a terminal)."""
    img2img = pipeline_over(ServedXLImg2ImgPipeline, text2img)
    inpaint = pipeline_over(ServedXLInpaintPipeline, text2img)
    for pipe in (text2img, img2img, inpaint):
        pipe.set_progress_bar_config(disable=True)
    return img2img, inpaint


def pipeline_over(cls: type[SharingPipeline], pipe: StableDiffusionXLPipeline, **replaced: object) -> SharingPipeline:
    """A `cls` pipeline over the very components of `pipe` (minus `replaced`), with its prompt config.

    Not diffusers' `from_pipe`: since diffusers 0.42 it casts every component to float32 unless it is given a
    dtype, and then casts all of them to that one dtype. That silently doubled the UNet's time and memory on the
    GPU, and our VAE keeps a dtype of its own (bot.engine.vae)."""
    return cls(
        **{**pipe.components, **replaced},
        force_zeros_for_empty_prompt=pipe.config.force_zeros_for_empty_prompt,
        add_watermarker=False,  # the pipelines return latents; we decode ourselves
    )


def _load(cls: type, source: str, dtype: torch.dtype, setting: str, **kwargs: object) -> object:
    """`cls.from_pretrained`, preferring the fp16 weight files when they exist (half the download)."""
    attempts = [{"variant": "fp16"}, {}] if dtype == torch.float16 else [{}]
    error: Exception | None = None
    for variant in attempts:
        try:
            return cls.from_pretrained(source, dtype=dtype, **variant, **kwargs)
        except (OSError, ValueError) as exc:
            error = exc
    raise ModelUnavailable(_missing_weights_message(source, setting, error)) from error


def _missing_weights_message(source: str, setting: str, exc: Exception | None) -> str:
    if Path(source).expanduser().exists() or source.startswith((".", "/", "~")):
        return f"{setting}={source}: that folder holds no loadable model ({type(exc).__name__}: {exc})."
    return (
        f"{setting}={source}: the weights are not in the local Hugging Face cache and the Hub could not be reached. "
        f"On a machine with internet run `hf download {source}` (or start once online), "
        f"or point {setting} at a local folder that holds the model."
    )
