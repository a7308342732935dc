"""What switching style costs between two batches.

    .venv/bin/python -m bench.styles [--switches 100] [--configs DIR]

Table 1, one switch (cycling to a LoRA style, to another, back to none), median ms: through diffusers' pipeline
methods (`enable_lora` + `set_adapters`, `disable_lora`) against `StyleAdapters.activate`. On the tiny model, and
on the full-size SSD-1B module tree built on the meta device: a switch touches no weights, only the adapter
layers, so the full-size tree gives the full-size cost on any machine.

Table 2, on the tiny model: one-step batches of one image that keep one style against batches that alternate
two, so the switch shows as the difference.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from itertools import cycle
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
from diffusers import StableDiffusionXLPipeline
from peft import LoraConfig

from bench.gpu import DEFAULT_CONFIGS, full_size_pipeline
from bot.engine.adapters import StyleAdapters
from bot.engine.generation import generate
from bot.engine.pipelines import load_pipelines
from bot.engine.requests import Kind, bucket_sizes, check_inputs
from bot.settings import Settings
from bot.styles import Style, StyleBook
from tests.support.tiny_model import build_tiny_lora, build_tiny_model

LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]  # the attention projections, as most style LoRAs train


def milliseconds(run: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def diffusers_switch(pipe: StableDiffusionXLPipeline, style: Style | None) -> None:
    """The switch as diffusers' documentation writes it."""
    if style is None:
        pipe.disable_lora()
    else:
        pipe.enable_lora()
        pipe.set_adapters([style.name], adapter_weights=[style.weight])


def switch_costs(pipe: StableDiffusionXLPipeline, adapters: StyleAdapters, switches: int) -> tuple[float, float]:
    """Median ms of one switch, diffusers' way and ours, cycling through both styles and none."""
    order = [*adapters.book, None]
    theirs = cycle(order)
    diffusers_ms = milliseconds(lambda: diffusers_switch(pipe, next(theirs)), switches)
    pipe.disable_lora()
    ours = cycle(order)
    ours_ms = milliseconds(lambda: adapters.activate(next(ours)), switches)
    adapters.activate(None)
    return diffusers_ms, ours_ms


def full_size_adapters(configs: Path, workdir: Path) -> tuple[StableDiffusionXLPipeline, StyleAdapters]:
    """SSD-1B's module tree without weights, with two rank-8 adapters on its attention projections."""
    pipe = full_size_pipeline(configs, torch.device("meta"), workdir)
    book = StyleBook([Style(name=f"s{n}", description="bench", lora="in memory", weight=0.8) for n in (0, 1)])
    for style in book:
        pipe.unet.add_adapter(LoraConfig(r=8, lora_alpha=8, target_modules=LORA_TARGETS), adapter_name=style.name)
    pipe.disable_lora()
    return pipe, StyleAdapters(pipe, book)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--switches", type=int, default=100)
    parser.add_argument("--configs", type=Path, default=DEFAULT_CONFIGS)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        model = build_tiny_model(Path(folder) / "model")
        loras = [build_tiny_lora(model.lcm_unet, Path(folder) / f"lora{n}.safetensors", seed=n) for n in (1, 2)]
        settings = Settings(
            model_base=str(model.base), model_unet=str(model.lcm_unet), base_resolution=256, device="cpu",
            _env_file=None,
        )  # fmt: skip
        pipes = load_pipelines(settings)
        book = StyleBook([Style(name=f"s{n}", description="bench", lora=str(lora)) for n, lora in enumerate(loras)])
        pipes.styles = StyleAdapters.load(pipes.text2img, book)
        switches = {"tiny model": switch_costs(pipes.text2img, pipes.styles, args.switches)}
        full_pipe, full_adapters = full_size_adapters(args.configs, Path(folder) / "full")
        layers = len(full_adapters._layers)
        switches[f"full-size SSD-1B ({layers} adapter layers)"] = switch_costs(full_pipe, full_adapters, args.switches)

        buckets = bucket_sizes(256)

        def batch(style: str) -> None:
            request = check_inputs(Kind.IMAGINE, "a fox", buckets=buckets, steps=1, style=style, styles=book)
            generate(pipes, [request])

        batch("s0")
        same = milliseconds(lambda: batch("s0"), 30)
        names = cycle(["s0", "s1"])
        alternating = milliseconds(lambda: batch(next(names)), 30)
    print(f"one style switch on this CPU, median of {args.switches}, ms")
    print(f"| {'model':<44} | {'diffusers':>9} | {'ours':>7} |")
    print(f"|{'-' * 46}|{'-' * 11}|{'-' * 9}|")
    for name, (diffusers_ms, ours_ms) in switches.items():
        print(f"| {name:<44} | {diffusers_ms:>9.2f} | {ours_ms:>7.2f} |")
    print("\none-step batch of one image, tiny model on the CPU, median of 30, ms")
    print(f"| {'batch':<44} | {'ms':>8} |")
    print(f"|{'-' * 46}|{'-' * 10}|")
    print(f"| {'same style as the batch before':<44} | {same:>8.2f} |")
    print(f"| {'style alternating':<44} | {alternating:>8.2f} |")


if __name__ == "__main__":
    main()
