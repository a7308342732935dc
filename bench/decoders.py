"""What decoding costs with the full SDXL VAE against a tiny autoencoder (TAESD's architecture, `MODEL_TINY_VAE`).

    python -m bench.decoders [--device cuda] [--resolution 1024] [--batches 1 8]

Random weights in the real shapes (the VAE from `--configs`, AutoencoderTiny's default configuration, which is
TAESD's), each in the dtype the engine gives it on that device: one decode per batch size after a warm-up,
median of `--repeats`, per image.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from diffusers import AutoencoderKL, AutoencoderTiny

from bench.gpu import DEFAULT_CONFIGS
from bot.engine.pipelines import resolve_dtype, vae_dtype
from bot.engine.vae import LatentCodec


def per_image_ms(codec: LatentCodec, latents: torch.Tensor, repeats: int) -> float:
    codec.decode(latents)  # warm-up: kernels, allocator
    times = []
    for _ in range(repeats):
        if latents.is_cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        codec.decode(latents)
        if latents.is_cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times) / len(latents) * 1000


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--configs", type=Path, default=DEFAULT_CONFIGS)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--resolution", type=int, default=512)
    parser.add_argument("--batches", type=int, nargs="+", default=[1])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    unet_dtype = resolve_dtype("auto", device)
    with device:
        vae = AutoencoderKL.from_config(AutoencoderKL.load_config(args.configs / "vae"))
        tiny = AutoencoderTiny()
    vae = vae.to(vae_dtype(device, unet_dtype, fp16_safe_vae=False)).eval()
    tiny = tiny.to(unet_dtype).eval()
    codecs = {"full VAE": LatentCodec(vae, unet_dtype), "tiny autoencoder": LatentCodec(vae, unet_dtype, tiny)}
    side = args.resolution // 8
    print(f"decode on {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'CPU'}), "
          f"{args.resolution}x{args.resolution}, median of {args.repeats}, ms per image")  # fmt: skip
    print(f"| {'decoder':<18} | {'dtype':<15} | {'batch':>5} | {'ms/image':>9} | {'vs full':>7} |")
    print(f"|{'-' * 20}|{'-' * 17}|{'-' * 7}|{'-' * 11}|{'-' * 9}|")
    for batch in args.batches:
        latents = torch.randn(batch, 4, side, side, device=device, dtype=unet_dtype)
        full_ms = None
        for name, codec in codecs.items():
            ms = per_image_ms(codec, latents, args.repeats)
            full_ms = full_ms or ms
            dtype = str(codec.decoder.dtype).removeprefix("torch.")
            print(f"| {name:<18} | {dtype:<15} | {batch:>5} | {ms:>9.1f} | {full_ms / ms:>6.1f}x |", flush=True)


if __name__ == "__main__":
    main()
