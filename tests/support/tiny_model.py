"""Build a tiny random-weight LCM SDXL model offline, saved in the layouts the production loader reads.

Two folders, mirroring the production pair: `base/` is a whole SDXL pipeline (the role of segmind/SSD-1B)
and `lcm-unet/` a UNet with a guidance embedding (`time_cond_proj_dim`, the role of
latent-consistency/lcm-ssd-1b). Shapes follow diffusers' own SDXL test components, except that the VAE has
four blocks, so latents are 1/8 of the image as in the real model.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import (
    AutoencoderKL,
    AutoencoderTiny,
    EulerDiscreteScheduler,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

TEXT_HIDDEN = 32
TIME_COND_PROJ_DIM = 32


@dataclass(frozen=True)
class TinyModel:
    base: Path
    lcm_unet: Path


def build_tiny_model(root: Path) -> TinyModel:
    """Write `root/base` and `root/lcm-unet` (idempotent: an existing build is reused)."""
    model = TinyModel(base=root / "base", lcm_unet=root / "lcm-unet")
    if (model.lcm_unet / "config.json").exists():
        return model
    torch.manual_seed(0)
    tokenizer = byte_level_tokenizer(root / "tokenizer-src")
    pipe = StableDiffusionXLPipeline(
        vae=_vae(),
        text_encoder=CLIPTextModel(_text_config()),
        text_encoder_2=CLIPTextModelWithProjection(_text_config()),
        tokenizer=tokenizer,
        tokenizer_2=tokenizer,
        unet=_unet(time_cond_proj_dim=None),
        scheduler=EulerDiscreteScheduler(
            beta_start=0.00085,
            beta_end=0.012,
            beta_schedule="scaled_linear",
            timestep_spacing="leading",
            steps_offset=1,
        ),
        add_watermarker=False,
    )
    pipe.save_pretrained(model.base)
    _unet(time_cond_proj_dim=TIME_COND_PROJ_DIM).save_pretrained(model.lcm_unet)
    return model


def byte_level_tokenizer(folder: Path) -> CLIPTokenizer:
    """A byte-level CLIP BPE with no merges: every character is a token, which is all the tests need."""
    folder.mkdir(parents=True, exist_ok=True)
    byte_chars = _bytes_to_unicode()
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for char in byte_chars:
        vocab.setdefault(char, len(vocab))
    for char in byte_chars:
        vocab.setdefault(char + "</w>", len(vocab))
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    (folder / "tokenizer_config.json").write_text(
        json.dumps({"model_max_length": 77, "tokenizer_class": "CLIPTokenizer"})
    )
    return CLIPTokenizer.from_pretrained(folder, local_files_only=True)


def _bytes_to_unicode() -> list[str]:
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars = [chr(code) for code in printable]
    extra = 0
    for code in range(256):
        if code not in printable:
            chars.append(chr(256 + extra))
            extra += 1
    return chars


def _text_config() -> CLIPTextConfig:
    return CLIPTextConfig(
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
        hidden_size=TEXT_HIDDEN,
        intermediate_size=37,
        layer_norm_eps=1e-05,
        num_attention_heads=4,
        num_hidden_layers=2,
        vocab_size=1000,
        hidden_act="gelu",
        projection_dim=TEXT_HIDDEN,
        max_position_embeddings=77,
    )


def _unet(time_cond_proj_dim: int | None) -> UNet2DConditionModel:
    return UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=2,
        sample_size=32,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        transformer_layers_per_block=(1, 2),
        projection_class_embeddings_input_dim=6 * 8 + TEXT_HIDDEN,
        cross_attention_dim=2 * TEXT_HIDDEN,
        norm_num_groups=16,
        time_cond_proj_dim=time_cond_proj_dim,
    )


def _vae() -> AutoencoderKL:
    return AutoencoderKL(
        block_out_channels=(16, 16, 16, 16),
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=8,
        sample_size=128,
        scaling_factor=0.13025,
        force_upcast=True,
    )


def build_tiny_decoder(folder: Path) -> Path:
    """A random-weight tiny autoencoder (TAESD's architecture, narrower), upsampling 8x like the tiny VAE."""
    if (folder / "config.json").exists():
        return folder
    torch.manual_seed(0)
    AutoencoderTiny(
        encoder_block_out_channels=(8, 8, 8, 8),
        decoder_block_out_channels=(8, 8, 8, 8),
        num_encoder_blocks=(1, 1, 1, 1),
        num_decoder_blocks=(1, 1, 1, 1),
    ).save_pretrained(folder)
    return folder


def build_tiny_lora(
    unet_folder: Path,
    out_file: Path,
    *,
    seed: int,
    rank: int = 4,
    dropout: float = 0.0,
    text_encoder_folder: Path | None = None,
) -> Path:
    """A random LoRA for the tiny UNet's attention projections, saved as diffusers saves LoRAs. peft's default
    initialisation makes a LoRA that changes nothing; `init_lora_weights=False` gives random weights that do.
    With `dropout`, the file also carries its training configuration (as diffusers' training scripts save it),
    from which diffusers rebuilds the adapter's dropout layers when it loads the file. With
    `text_encoder_folder`, it adapts that text encoder's attention projections too, as many styles' LoRAs do."""
    if out_file.exists():
        return out_file
    from peft import LoraConfig, inject_adapter_in_model
    from peft.utils import get_peft_model_state_dict

    torch.manual_seed(seed)
    unet = UNet2DConditionModel.from_pretrained(unet_folder)
    config = LoraConfig(
        r=rank,
        lora_alpha=rank,
        lora_dropout=dropout,
        init_lora_weights=False,
        target_modules=["to_q", "to_k", "to_v", "to_out.0"],
    )
    unet.add_adapter(config)
    text_encoder_layers = None
    if text_encoder_folder is not None:
        text_encoder = CLIPTextModel.from_pretrained(text_encoder_folder)
        targets = ["q_proj", "k_proj", "v_proj"]
        inject_adapter_in_model(
            LoraConfig(r=rank, lora_alpha=rank, init_lora_weights=False, target_modules=targets), text_encoder
        )
        text_encoder_layers = get_peft_model_state_dict(text_encoder)
    out_file.parent.mkdir(parents=True, exist_ok=True)
    StableDiffusionXLPipeline.save_lora_weights(
        out_file.parent,
        unet_lora_layers=get_peft_model_state_dict(unet),
        text_encoder_lora_layers=text_encoder_layers,
        weight_name=out_file.name,
        unet_lora_adapter_metadata=config.to_dict() if dropout else None,
    )
    return out_file


def build_tiny_clipseg(folder: Path) -> Path:
    """A random-weight CLIPSeg (the text-to-mask model) with its processor, saved as the Hub's folders are."""
    if (folder / "config.json").exists():
        return folder
    from transformers import CLIPSegConfig, CLIPSegForImageSegmentation, CLIPSegProcessor, ViTImageProcessor

    torch.manual_seed(0)
    tokenizer = byte_level_tokenizer(folder.parent / f"{folder.name}-tokenizer")
    config = CLIPSegConfig(
        text_config=_text_config().to_dict(),
        vision_config={"hidden_size": TEXT_HIDDEN, "intermediate_size": 37, "num_attention_heads": 4,
                       "num_hidden_layers": 3, "image_size": 64, "patch_size": 16},
        projection_dim=16,
        reduce_dim=16,
        extract_layers=[1, 2],
        decoder_num_attention_heads=2,
        decoder_intermediate_size=32,
    )  # fmt: skip
    CLIPSegForImageSegmentation(config).save_pretrained(folder)
    image_processor = ViTImageProcessor(size={"height": 64, "width": 64}, image_mean=[0.5] * 3, image_std=[0.5] * 3)
    CLIPSegProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(folder)
    return folder
