"""What switching style costs between two batches, on the tiny model on the CPU (or on a GPU with --device).

    .venv/bin/python -m bench.styles [--switches 200]

Rows: the adapter switch alone (`StyleAdapters.activate` between two LoRAs, and back to none), and one-step
batches of one image that alternate styles against batches that keep one style, so the switch shows as the
difference between the two.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from bot.engine.adapters import StyleAdapters
from bot.engine.generation import generate
from bot.engine.pipelines import load_pipelines
from bot.engine.requests import Kind, bucket_sizes, check_inputs
from bot.settings import Settings
from bot.styles import Style, StyleBook
from tests.support.tiny_model import build_tiny_lora, build_tiny_model


def milliseconds(run, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--switches", type=int, default=200)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        model = build_tiny_model(Path(folder) / "model")
        loras = [build_tiny_lora(model.lcm_unet, Path(folder) / f"lora{n}.safetensors", seed=n) for n in (1, 2)]
        settings = Settings(
            model_base=str(model.base), model_unet=str(model.lcm_unet), base_resolution=256, device=args.device,
            _env_file=None,
        )  # fmt: skip
        pipes = load_pipelines(settings)
        book = StyleBook([Style(name=f"s{n}", description="bench", lora=str(lora)) for n, lora in enumerate(loras)])
        pipes.styles = StyleAdapters.load(pipes.text2img, book)
        first, second = list(pipes.styles.book)
        cycle = iter([first, second, None] * args.switches)
        switch = milliseconds(lambda: pipes.styles.activate(next(cycle)), args.switches)
        styles = StyleBook(list(book))
        buckets = bucket_sizes(256)

        def batch(style: str) -> None:
            request = check_inputs(Kind.IMAGINE, "a fox", buckets=buckets, steps=1, style=style, styles=styles)
            generate(pipes, [request])

        batch("s0")
        same = milliseconds(lambda: batch("s0"), 30)
        names = iter(["s0", "s1"] * 30)
        alternating = milliseconds(lambda: batch(next(names)), 30)
    print(f"tiny model on {args.device}; medians")
    print(f"| {'measure':<40} | {'ms':>8} |")
    print(f"|{'-' * 42}|{'-' * 10}|")
    print(f"| {'adapter switch alone':<40} | {switch:>8.3f} |")
    print(f"| {'one-image batch, same style':<40} | {same:>8.2f} |")
    print(f"| {'one-image batch, style alternating':<40} | {alternating:>8.2f} |")


if __name__ == "__main__":
    main()
