"""Float8 matrix products in the UNet against bfloat16, both compiled as the compiled twins compile the UNet.

    python -m bench.float8 [--configs DIR]    # CUDA GPU of compute capability 8.9 or above, with torchao installed
    python -m bench.float8 --tiny             # smoke run on the CPU: the bfloat16 rows only

The stream, 4.51x plain on an H200, runs batches of 8 images, and 4 UNet steps are most of a batch's time: 96 ms
a step on the issue's H200, under half the card's half-precision rate. Half of the UNet's arithmetic is in its
linear layers (13.05 + 4.11 of 33.66 TFLOP at 8 images, counted with torch's FlopCounterMode), which float8
computes at twice the rate on Hopper cards: the one lever left if cuDNN's attention kernels and batches of 16 do
not close the gap (bench.knobs). torchao swaps every linear layer's weight for a float8 one, scaled per row, and
quantizes its input per row on each call; compiled, that quantizing fuses into the operations around it (eager,
it is kernels of its own). Float8 changes the pictures, so it could only ever be an option: each row says how far
its output strays from the eager bfloat16 UNet's, as a share of that output's largest value.

For each UNet: one forward at 1 image (also replayed from a CUDA graph, as lone requests are served), 8 and 16
images. The UNets are twins sharing the bfloat16 weights (bot.engine.weight_sharing); the float8 one holds its
quantized weights of its own. torchao is not a dependency of the bot: carry its wheel (bench/README.md).
"""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from diffusers import UNet2DConditionModel

from bench.gpu import DEFAULT_CONFIGS, Bench
from bench.knobs import cuda_graphed, unet_inputs
from bot.engine.compiled import compiler_settings
from bot.engine.weight_sharing import weight_sharing_twin
from tests.support.tiny_model import build_tiny_model

BATCHES = (1, 8, 16)


def float8_twin(unet: UNet2DConditionModel) -> UNet2DConditionModel:
    """A twin of `unet` whose linear layers compute in float8 (torchao: dynamic, per-row scales)."""
    from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow, quantize_

    twin = weight_sharing_twin(unet)
    quantize_(twin, Float8DynamicActivationFloat8WeightConfig(granularity=PerRow()))
    return twin


def compiled(unet: UNet2DConditionModel) -> UNet2DConditionModel:
    """Compiled as bot.engine.compiled compiles the twins' UNet: its transformer blocks, dynamic sizes."""
    unet.compile_repeated_blocks(fullgraph=True, dynamic=True)
    return unet


def time_rows(bench: Bench, name: str, unet: torch.nn.Module, inputs: dict[int, Callable], reference: dict) -> None:
    """`unet`'s forward at each batch size (its first call compiles, off the clock), and at 1 image from a CUDA
    graph on a GPU; a row per batch size, with how far the output strays from `reference`."""
    for batch, make_run in inputs.items():
        run = make_run(unet)
        with torch.no_grad():
            output = run()
            seconds = bench.seconds(run, repeats=3)
            cells = [f"{seconds * 1000:8.1f} ms ({seconds * 1000 / batch:6.1f}/img)"]
            if batch == 1 and bench.device.type == "cuda":
                cells.append(f"graphed {bench.seconds(cuda_graphed(run), repeats=3) * 1000:8.1f} ms")
        expected = reference[batch].float()
        stray = (output.float() - expected).abs().max().item() / expected.abs().max().item()
        print(f"| {name:<20} | b{batch:<3} | " + " | ".join(cells) + f" | strays {stray:.3g} of the largest value |")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--configs", type=Path, default=DEFAULT_CONFIGS)
    parser.add_argument("--tiny", action="store_true", help="tiny UNet on the CPU, 256 px (smoke run)")
    args = parser.parse_args()
    device = torch.device("cpu" if args.tiny else "cuda")
    side = 32 if args.tiny else 128
    unet_dir = build_tiny_model(Path(tempfile.gettempdir()) / "lcm-bench-float8").lcm_unet if args.tiny else None
    config = UNet2DConditionModel.load_config(unet_dir or args.configs / "unet")
    torch.manual_seed(0)
    with device:
        unet = UNet2DConditionModel.from_config(config).to(torch.bfloat16).eval()
    name = torch.cuda.get_device_name() if device.type == "cuda" else "CPU (tiny model)"
    print(f"UNet forwards on {name}, {side * 8}x{side * 8}, bfloat16 weights, torch {torch.__version__}", flush=True)
    bench = Bench(device, budget=float("inf"))
    inputs = {batch: (lambda module, batch=batch: unet_inputs(module, side, batch)) for batch in BATCHES}
    with torch.no_grad():
        reference = {batch: make_run(unet)() for batch, make_run in inputs.items()}
    time_rows(bench, "bfloat16, eager", unet, inputs, reference)
    with compiler_settings():  # the bot's
        time_rows(bench, "bfloat16, compiled", compiled(weight_sharing_twin(unet)), inputs, reference)
        try:
            float8 = float8_twin(unet)
        except Exception as exc:  # no torchao, one that does not fit this torch, or a GPU without float8
            print(f"float8 rows skipped: {exc!r}", flush=True)
            return
        time_rows(bench, "float8, compiled", compiled(float8), inputs, reference)


if __name__ == "__main__":
    main()
