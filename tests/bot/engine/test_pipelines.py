from __future__ import annotations

import pytest
import torch
from diffusers import AutoencoderTiny

from bot.engine import host_copies, scheduler
from bot.engine.pipelines import ModelUnavailable, Pipelines, load_pipelines, resolve_dtype, vae_dtype
from bot.engine.scheduler import ServedLCMScheduler
from bot.settings import Settings


def test_production_loader_reads_the_tiny_model(pipes: Pipelines) -> None:
    assert isinstance(pipes.text2img.scheduler, ServedLCMScheduler)
    assert pipes.text2img.unet.config.time_cond_proj_dim is not None  # the LCM UNet, not the base folder's
    assert pipes.device.type == "cpu" and pipes.dtype == torch.float32


def test_three_tasks_share_one_set_of_weights(pipes: Pipelines) -> None:
    for pipe in (pipes.img2img, pipes.inpaint):
        assert pipe.unet is pipes.text2img.unet
        assert pipe.vae is pipes.text2img.vae
        assert pipe.text_encoder_2 is pipes.text2img.text_encoder_2
    assert pipes.codec.vae is pipes.text2img.vae


def test_every_pipeline_runs_on_the_unet_s_device_without_searching_the_models(
    pipes: Pipelines, monkeypatch: pytest.MonkeyPatch
) -> None:
    """diffusers searches every module of every model for offloading hooks on each call; ours never offload."""

    def searched(module: torch.nn.Module) -> None:
        raise AssertionError(f"searched the modules of a {type(module).__name__}")

    monkeypatch.setattr(torch.nn.Module, "modules", searched)
    for pipe in (pipes.text2img, pipes.img2img, pipes.inpaint):
        assert pipe._execution_device == pipes.device


def test_no_weight_wants_gradients(tiny_decoder_pipes: Pipelines) -> None:
    """As after peft's adapters are loaded, so that the compiled graphs are the same with or without styles."""
    text2img = tiny_decoder_pipes.text2img
    models = [text2img.unet, text2img.vae, text2img.text_encoder, text2img.text_encoder_2]
    for model in [*models, tiny_decoder_pipes.codec.decoder]:
        assert not any(weight.requires_grad for weight in model.parameters()), type(model).__name__


def test_every_model_keeps_the_dtype_it_was_loaded_in(settings: Settings) -> None:
    # diffusers' `from_pipe` would cast the shared models of all three pipelines to float32
    pipes = load_pipelines(settings.model_copy(update={"dtype": "bfloat16"}))
    for pipe in (pipes.text2img, pipes.img2img, pipes.inpaint):
        assert pipe.unet.dtype == pipe.text_encoder.dtype == pipe.text_encoder_2.dtype == torch.bfloat16
        assert pipe.vae.dtype == torch.float32  # bot.engine.vae's choice on a CPU
    assert pipes.dtype == torch.bfloat16 and pipes.codec.vae.dtype == torch.float32


def test_a_tiny_autoencoder_decodes_and_the_full_vae_still_encodes(tiny_decoder_pipes: Pipelines) -> None:
    codec = tiny_decoder_pipes.codec
    assert isinstance(codec.decoder, AutoencoderTiny) and codec.decoder.device == tiny_decoder_pipes.device
    assert codec.vae is tiny_decoder_pipes.text2img.vae is tiny_decoder_pipes.img2img.vae


def test_a_missing_tiny_autoencoder_says_which_setting(settings: Settings, tmp_path) -> None:
    broken = settings.model_copy(update={"model_tiny_vae": str(tmp_path / "no-taesd")})
    with pytest.raises(ModelUnavailable, match=r"MODEL_TINY_VAE=.*no-taesd"):
        load_pipelines(broken)


def test_vae_never_upcasts_per_call(pipes: Pipelines) -> None:
    assert pipes.text2img.vae.config.force_upcast is False


def test_guidance_distilled_unet_ignores_negatives(pipes: Pipelines) -> None:
    assert not pipes.rules.negative_has_effect(1.0)
    assert not pipes.rules.negative_has_effect(2.0)


def test_count_tokens_includes_start_and_end(pipes: Pipelines) -> None:
    assert pipes.rules.count_tokens("ab") == 4  # the tiny vocabulary has no merges: one token per character
    assert pipes.rules.count_tokens("x" * 100) == 102


def test_missing_local_folder_says_which_setting(settings: Settings, tmp_path) -> None:
    broken = settings.model_copy(update={"model_unet": str(tmp_path / "nowhere")})
    with pytest.raises(ModelUnavailable, match=r"MODEL_UNET=.*nowhere"):
        load_pipelines(broken)


def test_missing_hub_weights_offline_say_what_to_download(settings: Settings) -> None:
    offline = settings.model_copy(update={"model_base": "segmind/SSD-1B-not-cached"})
    with pytest.raises(ModelUnavailable, match="hf download segmind/SSD-1B-not-cached"):
        load_pipelines(offline)


def test_dtypes_follow_the_device() -> None:
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert resolve_dtype("auto", cpu) == torch.float32
    assert resolve_dtype("auto", cuda) == torch.float16
    assert resolve_dtype("bfloat16", cuda) == torch.bfloat16
    assert vae_dtype(cpu, torch.float32, fp16_safe_vae=False) == torch.float32
    assert vae_dtype(cuda, torch.float16, fp16_safe_vae=True) == torch.float16


def test_conditioning_reaches_the_device_before_diffusers_copies_it(
    pipes: Pipelines, monkeypatch: pytest.MonkeyPatch
) -> None:
    """diffusers copies the added time ids and guidance embedding from pageable memory, which waits for the GPU;
    ours come out on the UNet's device already (through pinned memory on a GPU). The meta device stands in for a
    GPU."""
    meta = torch.device("meta")
    for pipe in (pipes.text2img, pipes.img2img, pipes.inpaint):
        monkeypatch.setattr(type(pipe), "_execution_device", property(lambda self: meta))
    projection = pipes.text2img.text_encoder_2.config.projection_dim
    size, corner = (64, 64), (0, 0)
    time_ids = [
        pipes.text2img._get_add_time_ids(
            size, corner, size, dtype=torch.float32, text_encoder_projection_dim=projection
        )
    ]
    for pipe in (pipes.img2img, pipes.inpaint):  # (positive, negative) with aesthetic scores
        time_ids += pipe._get_add_time_ids(
            size,
            corner,
            size,
            6.0,
            2.5,
            size,
            corner,
            size,
            dtype=torch.float32,
            text_encoder_projection_dim=projection,
        )
    guidance = [
        pipe.get_guidance_scale_embedding(torch.tensor([7.0]), embedding_dim=8)
        for pipe in (pipes.text2img, pipes.img2img, pipes.inpaint)
    ]
    assert len(time_ids) == 5
    assert all(tensor.device == meta for tensor in (*time_ids, *guidance))


@pytest.fixture
def queued(monkeypatch: pytest.MonkeyPatch) -> list[tuple[torch.device, tuple[int, ...]]]:
    """Where and of what shape each tensor was that went to a device through pinned memory, without waiting."""
    seen: list[tuple[torch.device, tuple[int, ...]]] = []
    queue = host_copies.to_device_without_waiting

    def watched(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
        seen.append((tensor.device, tuple(tensor.shape)))
        return queue(tensor, device)

    for module in (host_copies, scheduler):
        monkeypatch.setattr(module, "to_device_without_waiting", watched)
    return seen


def test_starting_noise_is_drawn_on_the_host_and_queued_without_waiting(
    pipes: Pipelines, queued: list[tuple[torch.device, tuple[int, ...]]]
) -> None:
    """diffusers' `randn_tensor` copies CPU generators' noise from pageable memory, and image to image's noising
    copies the alphas table so too. The meta device stands in for a GPU."""
    cpu, meta = torch.device("cpu"), torch.device("meta")
    generators = [torch.Generator().manual_seed(seed) for seed in (1, 2)]
    noise = pipes.text2img.prepare_latents(2, 4, 64, 64, torch.float32, meta, generators)
    assert noise.device == meta and queued == [(cpu, (2, 4, 8, 8))]

    queued.clear()
    image_latents, timestep = torch.zeros(2, 4, 8, 8), torch.tensor([499, 499])
    noised = pipes.img2img.prepare_latents(image_latents, timestep, 2, 1, torch.float32, meta, generators)
    table = tuple(pipes.img2img.scheduler.alphas_cumprod.shape)
    assert noised.device == meta and queued == [(cpu, (2, 4, 8, 8)), (cpu, table)]
    assert pipes.img2img.scheduler.alphas_cumprod.device == cpu  # left where it was (bot.engine.scheduler)
