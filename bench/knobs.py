"""Cheap switches side by side, before any of them goes into the engine: cuDNN's attention kernels, memory layout
(channels last), cuDNN's algorithm search, fused attention projections, CUDA graphs, and PNG encoders on 1 to 8
threads.

    python -m bench.knobs --device cuda [--configs DIR]    # full size, 1024x1024, random weights
    python -m bench.knobs --tiny                           # smoke run on the CPU
    python -m bench.knobs --png-only                       # the PNG rows alone, at 1024x1024

Each row adds one switch to the row before, on the same modules in one process: one UNet forward at batch 1 and at
batch 8 (float16; on a GPU also at 2, 4 and 16), the VAE decode at batch 1 and at the decode chunk (its serving dtype),
the tiny autoencoder at batch 8, and both text encoders on 1 and 8 prompts (what a batch of new prompts costs; no
switch of their own). On a GPU, the second row replays the first row's calls from CUDA graphs (and adds nothing to
the rows after it). A row's `max diff` is its largest difference from the first row's output: a switch must not
change the pictures beyond rounding. Then PNG encoding per image on 1 to 8 threads, as Pillow did it first, as
libpng with its own zlib did it before, and as `encode_png` does it now, of a noise image (what random weights make;
the worst case), a photo-like one and a smooth one; and a lone picture's wait for its PNG, in strips on 1 to 8
threads, as the executor encodes a lone request's (and in 16 strips on 16 threads where the CPU has 16). Last, the
hand-off of a decoded batch to the PNG encoder, through PIL images and as arrays.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import io
import os
import tempfile
import time
import zlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import imagecodecs
import numpy as np
import torch
from diffusers import AutoencoderKL, AutoencoderTiny, UNet2DConditionModel
from PIL import Image, PngImagePlugin
from torch.nn.attention import SDPBackend, sdpa_kernel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from bench.gpu import DEFAULT_CONFIGS, Bench
from bot.engine.cuda_graphs import CudaGraph
from bot.engine.pipelines import resolve_dtype, vae_dtype
from bot.engine.png import PNG_FILTER, PNG_LEVEL, encode_png, encode_png_in_strips, parameter_chunks, strips_for
from bot.engine.vae import DECODE_CHUNK
from tests.support.tiny_model import build_tiny_model

PNG_PARAMETERS = {"prompt": "a lighthouse at dusk", "seed": 1, "steps": 4}
# On a machine with this many CPUs, a lone picture is also encoded in as many bands: twice the executor's most
# (8 PNG threads, and bands of at least 128 rows at 1024x1024), to see whether more would pay.
LONE_BANDS_TRIED = 16
LIBPNG_HEADER_BYTES = 33  # the signature and the IHDR chunk, which come first
Switch = Callable[[torch.nn.Module], None]
# torch's own order with cuDNN first; a backend that cannot take the inputs is passed over, as torch does.
CUDNN_FIRST = [SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]


def cudnn_attention(module: torch.nn.Module) -> None:
    """Attention on cuDNN's kernels where they take the inputs. torch tries FlashAttention first; on Hopper cards
    cuDNN's kernels were 1.7 to 2.3x faster for training shapes (huggingface/transformers#48163), and on another
    card the winner flipped with the head size (sgl-project/sglang#38689): SSD-1B's heads are 64 wide."""
    forward = module.forward

    def cudnn_first(*args: object, **kwargs: object) -> object:
        with sdpa_kernel(CUDNN_FIRST, set_priority=True):
            return forward(*args, **kwargs)

    module.forward = cudnn_first


def channels_last(module: torch.nn.Module) -> None:
    module.to(memory_format=torch.channels_last)


def cudnn_search(module: torch.nn.Module) -> None:
    torch.backends.cudnn.benchmark = True


def fused_projections(module: torch.nn.Module) -> None:
    module.fuse_qkv_projections()


def cuda_graphed(run: Callable[[], torch.Tensor]) -> Callable[[], torch.Tensor]:
    """`run`, on its fixed inputs, captured once as a CUDA graph as the engine captures them
    (bot.engine.cuda_graphs). A replay launches all its kernels at once, where eager Python launches them one by
    one: what a forward at batch 1 mostly waits on."""
    graph = CudaGraph(run)

    def replay() -> torch.Tensor:
        graph.replay()
        return graph.outputs

    return replay


def graphed_rows(name: str, inputs: dict[int, Callable], row: Callable[[str, dict[int, Callable]], None]) -> None:
    """`row` for `inputs` replayed from CUDA graphs, and the memory each capture reserved (its warm-up included).
    A call that cannot be captured is said, and the other rows still run."""
    graphs, reserved = {}, []
    try:
        for batch, run in inputs.items():
            torch.cuda.synchronize()
            before = torch.cuda.memory_reserved()
            with torch.no_grad():
                graphs[batch] = cuda_graphed(run)
            reserved.append(f"b{batch} {(torch.cuda.memory_reserved() - before) / 2**30:.2f} GiB")
    except Exception as exc:
        print(f"| {name:<16} | CUDA graph capture failed: {exc!r}", flush=True)
        return
    row("as loaded, CUDA graph", graphs)
    print(f"| {name:<16} | {'reserved by captures':<22} | " + " | ".join(reserved), flush=True)


def compare(
    bench: Bench, name: str, module: torch.nn.Module, switches: dict[str, Switch], inputs: dict[int, Callable]
) -> None:
    """Apply `switches` one after another to `module`, timing `inputs[batch]()` after each. On a GPU, the calls
    as loaded are also timed replayed from CUDA graphs."""
    torch.backends.cudnn.benchmark = False
    reference: dict[int, torch.Tensor] = {}

    def row(label: str, runs: dict[int, Callable[[], torch.Tensor]]) -> None:
        cells = []
        for batch, run in runs.items():
            with torch.no_grad():
                output = run()  # warm-up (and cuDNN's search, when on)
                seconds = bench.seconds(run, repeats=3)
            reference.setdefault(batch, output.clone())
            diff = (output.float() - reference[batch].float()).abs().max().item()
            cells.append(f"b{batch} {seconds * 1000:8.1f} ms ({seconds * 1000 / batch:6.1f}/img, max diff {diff:.3g})")
        print(f"| {name:<16} | {label:<22} | " + " | ".join(cells), flush=True)

    row("as loaded", inputs)
    if bench.device.type == "cuda":
        graphed_rows(name, inputs, row)
    for label, switch in switches.items():
        switch(module)
        row(label, inputs)
    torch.backends.cudnn.benchmark = False


def unet_inputs(unet: UNet2DConditionModel, side: int, batch: int) -> Callable[[], torch.Tensor]:
    config, device, dtype = unet.config, unet.device, unet.dtype
    generator = torch.Generator(device).manual_seed(batch)

    def noise(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator, device=device, dtype=dtype)

    sample = noise(batch, config.in_channels, side, side)
    text = noise(batch, 77, config.cross_attention_dim)
    added = {
        "text_embeds": noise(batch, config.projection_class_embeddings_input_dim - 6 * config.addition_time_embed_dim),
        "time_ids": None,
    }
    added["time_ids"] = torch.tensor(
        [[side * 8, side * 8, 0, 0, side * 8, side * 8]] * batch, device=device, dtype=dtype
    )
    condition = noise(batch, config.time_cond_proj_dim) if config.time_cond_proj_dim else None
    timestep = torch.tensor(999, device=device)
    return lambda: unet(sample, timestep, text, timestep_cond=condition, added_cond_kwargs=added).sample


def unet_batches(batches: tuple[int, ...], device: torch.device) -> tuple[int, ...]:
    """On a GPU, also 2 and 4 images: whether CUDA graphs pay at the sizes between 1 and 8 that a server with a
    few users forms most (bot.engine.cuda_graphs graphs batches of one only), and what each capture reserves.
    And 16: whether an image computes faster in batches of 16 than of 8, the most the bot forms on its own
    (`MAX_AUTO_BATCH_IMAGES`); at 8 the UNet used under half the card's half-precision rate on an H200."""
    if device.type != "cuda":
        return batches
    return tuple(sorted({*batches, 2, 4, 16}))


def text_encoder_inputs(encoders: list[torch.nn.Module], batch: int) -> Callable[[], torch.Tensor]:
    """Both text encoders on `batch` prompts of 77 tokens, called as SDXL's `encode_prompt` calls them."""
    device = next(encoders[0].parameters()).device
    ids = torch.randint(0, encoders[0].config.vocab_size, (batch, 77), device=device)
    return lambda: torch.cat([encoder(ids, output_hidden_states=True).hidden_states[-2] for encoder in encoders], -1)


def decoder_inputs(decoder: AutoencoderKL | AutoencoderTiny, side: int, batch: int) -> Callable[[], torch.Tensor]:
    latents = torch.randn(batch, 4, side, side, device=decoder.device, dtype=decoder.dtype)
    return lambda: decoder.decode(latents).sample


def pillow_png(picture: Image.Image, parameters: dict[str, object]) -> bytes:
    """How PNGs were encoded before `encode_png` used libpng: Pillow, zlib level 3 with run-length matching,
    and Pillow's choice of row filter (it tries all five on every row)."""
    info = PngImagePlugin.PngInfo()
    for key, value in parameters.items():
        info.add_itxt(key, str(value))
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG", pnginfo=info, compress_level=3, compress_type=zlib.Z_RLE)
    return buffer.getvalue()


def libpng_png(picture: Image.Image, parameters: dict[str, object]) -> bytes:
    """How PNGs were encoded before zlib-ng deflated them: the same filter and run-length matching, all in libpng
    with the zlib it is built with (1.2.13 in imagecodecs' wheels)."""
    png = imagecodecs.png_encode(np.asarray(picture), level=PNG_LEVEL, strategy=zlib.Z_RLE, filter=PNG_FILTER)
    return png[:LIBPNG_HEADER_BYTES] + parameter_chunks(parameters) + png[LIBPNG_HEADER_BYTES:]


def png_rows(side: int, image_count: int) -> None:
    """Per image, on 1 to 8 threads, the ways Pillow and libpng encoded and the way `encode_png` encodes now."""
    rng = np.random.default_rng(0)
    ramp = np.linspace(0, 255, side)
    x, y = np.meshgrid(ramp, ramp)
    gradient = np.stack([x, y, (x + y) / 2], axis=-1)
    grain = np.clip(gradient + rng.normal(0, 6, gradient.shape), 0, 255)
    pictures = {
        "noise": rng.integers(0, 256, (side, side, 3), dtype=np.uint8),
        "photo-like": grain.astype(np.uint8),  # smooth shading with sensor-like grain
        "smooth": gradient.astype(np.uint8),
    }
    for name, pixels in pictures.items():
        picture = Image.fromarray(pixels)
        encoders = {"Pillow (first)": pillow_png, "libpng, zlib (before)": libpng_png, "zlib-ng (served)": encode_png}
        for encoder_name, encoder in encoders.items():
            encode = functools.partial(encoder, parameters=PNG_PARAMETERS)
            size = len(encode(picture))
            cells = []
            for workers in (1, 2, 4, 8):
                # Copies: Pillow keeps per-image save options that concurrent saves of one image overwrite.
                seconds = encode_seconds(encode, [picture.copy() for _ in range(image_count)], workers)
                cells.append(f"{workers} threads {seconds * 1000 / image_count:6.1f} ms/img")
            label = f"PNG {name}, {encoder_name}"
            print(f"| {label:<32} | {size / 2**20:5.2f} MiB | " + " | ".join(cells), flush=True)
        lone = {workers: asyncio.run(lone_picture_encode(pixels, workers)) for workers in (1, 2, 4, 8)}
        cells = [f"{workers} threads {seconds * 1000:6.1f} ms/img" for workers, (seconds, _size) in lone.items()]
        if (os.cpu_count() or 1) >= LONE_BANDS_TRIED:  # more bands than the executor cuts: do they still pay?
            seconds, _size = asyncio.run(lone_picture_encode(pixels, LONE_BANDS_TRIED, strips=LONE_BANDS_TRIED))
            cells.append(f"{LONE_BANDS_TRIED} threads and strips {seconds * 1000:6.1f} ms/img")
        label = f"PNG {name}, lone, in strips"
        print(f"| {label:<32} | {lone[8][1] / 2**20:5.2f} MiB | " + " | ".join(cells), flush=True)


def handoff_rows(side: int, image_count: int, rounds: int = 5) -> None:
    """From a decoded batch's pixels (one array, as `LatentCodec.decode` has them off the GPU) to PNGs, per image:
    the GPU thread's share (it waits meanwhile, and so does the GPU) and the PNG thread's, one thread each. Through
    a PIL image, as before, there is a copy into Pillow's 4-byte pixels and another back. The ways take turns,
    and each keeps its best round (the first also pays for fresh memory pages)."""
    batch = np.random.default_rng(1).integers(0, 256, (image_count, side, side, 3), dtype=np.uint8)
    ways = {
        "PIL image (before)": (lambda: [Image.fromarray(pixels) for pixels in batch], np.asarray),
        "array (served)": (lambda: list(batch), lambda picture: picture),
    }
    best = {name: [float("inf"), float("inf")] for name in ways}  # GPU thread, PNG thread
    for _ in range(rounds):
        for name, (hand_over, read_back) in ways.items():
            start = time.perf_counter()
            pictures = hand_over()
            handed = time.perf_counter()
            for picture in pictures:
                encode_png(read_back(picture), PNG_PARAMETERS)
            best[name] = [min(best[name][0], handed - start), min(best[name][1], time.perf_counter() - handed)]
    for name, (gpu_thread, png_thread) in best.items():
        cells = [f"GPU thread {gpu_thread * 1000 / image_count:6.2f} ms/img",
                 f"PNG thread {png_thread * 1000 / image_count:6.1f} ms/img"]  # fmt: skip
        label = f"hand-off, {name}"
        print(f"| {label:<32} | {' ' * 9} | " + " | ".join(cells), flush=True)


async def lone_picture_encode(
    pixels: np.ndarray, workers: int, rounds: int = 5, strips: int | None = None
) -> tuple[float, int]:
    """Best wall time of one picture's PNG, in as many strips as the executor gives a lone request on `workers`
    PNG threads (or `strips`), and that file's size."""
    strips = strips or strips_for(len(pixels), workers)
    with ThreadPoolExecutor(workers) as pool:
        await encode_png_in_strips(pool, pixels, PNG_PARAMETERS, strips)  # starts the threads
        best = float("inf")
        for _ in range(rounds):
            start = time.perf_counter()
            png = await encode_png_in_strips(pool, pixels, PNG_PARAMETERS, strips)
            best = min(best, time.perf_counter() - start)
    return best, len(png)


def encode_seconds(encode: Callable[[Image.Image], bytes], pictures: list[Image.Image], workers: int) -> float:
    """Wall time to encode `pictures` on a pool of `workers` threads (started beforehand)."""
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(encode, pictures[:workers]))
        start = time.perf_counter()
        list(pool.map(encode, pictures))
        return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--configs", type=Path, default=DEFAULT_CONFIGS)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--tiny", action="store_true", help="small configs and 256 px, for a smoke run")
    parser.add_argument("--png-only", action="store_true", help="only the PNG rows (no GPU needed)")
    args = parser.parse_args()
    if args.png_only:
        png_rows(1024, image_count=8)
        handoff_rows(1024, image_count=8)
        return
    device = torch.device(args.device)
    resolution = 256 if args.tiny else 1024
    side = resolution // 8
    bench = Bench(device, budget=600)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"switches on {device} ({name}), {resolution}x{resolution}, torch {torch.__version__}", flush=True)

    torch.manual_seed(0)
    dtype = resolve_dtype("auto", device)
    if args.tiny:
        model = build_tiny_model(Path(tempfile.gettempdir()) / "lcm-bench-knobs")
        unet_dir, vae_dir, base_dir = model.lcm_unet, model.base / "vae", model.base
    else:
        unet_dir, vae_dir, base_dir = args.configs / "unet", args.configs / "vae", args.configs
    with device:
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(unet_dir)).to(dtype).eval()
        vae = AutoencoderKL.from_config(AutoencoderKL.load_config(vae_dir))
        tiny = AutoencoderTiny().to(dtype).eval()
        encoders = [
            kind(CLIPTextConfig.from_pretrained(base_dir / folder)).to(dtype).eval()
            for kind, folder in ((CLIPTextModel, "text_encoder"), (CLIPTextModelWithProjection, "text_encoder_2"))
        ]
    vae = vae.to(vae_dtype(device, dtype, fp16_safe_vae=False)).eval()
    batches = (1, 2) if args.tiny else (1, 8)
    compare(
        bench,
        "UNet forward",
        unet,
        {
            "+ cuDNN attention": cudnn_attention,
            "+ channels last": channels_last,
            "+ cuDNN search": cudnn_search,
            "+ fused QKV": fused_projections,
        },
        {batch: unet_inputs(unet, side, batch) for batch in unet_batches(batches, device)},
    )
    compare(
        bench,
        "VAE decode",
        vae,
        {"+ channels last": channels_last, "+ cuDNN search": cudnn_search},
        {batch: decoder_inputs(vae, side, batch) for batch in (1, DECODE_CHUNK)},
    )
    compare(
        bench,
        "tiny decode",
        tiny,
        {"+ channels last": channels_last, "+ cuDNN search": cudnn_search},
        {batches[-1]: decoder_inputs(tiny, side, batches[-1])},
    )
    compare(bench, "text encoders", encoders[0], {}, {batch: text_encoder_inputs(encoders, batch) for batch in batches})
    png_rows(resolution, image_count=8)
    handoff_rows(resolution, image_count=8)


if __name__ == "__main__":
    main()
