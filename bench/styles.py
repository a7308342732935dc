"""What switching style costs between two batches, four ways.

    .venv/bin/python -m bench.styles [--switches 100] [--configs DIR]
    python -m bench.styles --device cuda [--configs DIR]    # Tables 3 and 4 alone, at full size on the GPU

Table 1, one switch, median ms on this machine's CPU (a switch is Python work between batches):
- ours: `StyleAdapters.activate`, cycling through two LoRA styles and none;
- diffusers: the same cycle through diffusers' pipeline methods (`enable_lora` + `set_adapters`, `disable_lora`);
- fuse + unfuse: `fuse_lora` into the weights, then `unfuse_lora` back, as a switch that leaves no adapter layer
  to compute; the table also counts the weights that a round trip did not restore exactly;
- hotswap: `load_lora_weights(..., hotswap=True)` from a state dict held in memory, the way to change a compiled
  model's adapter without recompiling.
On the tiny model, and for the first two also on the full-size SSD-1B module tree built on the meta device: a
switch touches no weights there, only the adapter layers, so the full-size tree gives the full-size cost on any
machine (fusing and hotswapping need real weights).

Table 2, on the tiny model: one-step batches of one image that keep one style against batches that alternate
two, so the switch shows as the difference; with the style computed by peft's adapter layers, and fused into
the weights of the fused-style UNet (bot.engine.fused_styles), whose switch adds the style to a copy of them.

Table 3: what a style costs a UNet forward at batch 1, computed by peft's layers or fused. On SSD-1B's module
tree with narrow layers (a tenth of the channels) on one CPU thread, where, as on a GPU at batch 1, the time goes
to running operations one by one rather than to their arithmetic, so their count decides it. With
`--device cuda`, on the GPU at full size (float16, 1024x1024), at batches of 1 and 8. Each run also times a
switch of the fused UNet from one style to another.

Table 4: the same for each of SSD-1B's two text encoders encoding one prompt, with a LoRA on their attention
projections, as styles whose LoRA adapts the text encoders have (narrow on the CPU; with `--device cuda`, full
size, 1 and 8 prompts). A fused text encoder is also what CUDA graphs can replay, which peft's cannot.
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
from diffusers import StableDiffusionXLPipeline, UNet2DConditionModel
from peft import LoraConfig, inject_adapter_in_model
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from bench.gpu import DEFAULT_CONFIGS, full_size_pipeline
from bot.engine.adapters import StyleAdapters, tuner_layers
from bot.engine.fused_styles import FusedModel, FusedStyles, adapter_free_twin
from bot.engine.generation import generate
from bot.engine.pipelines import load_pipelines
from bot.engine.requests import Kind, bucket_sizes, check_inputs
from bot.engine.service import freeze_loaded_objects
from bot.settings import Settings
from bot.styles import Style, StyleBook
from tests.support.tiny_model import build_tiny_lora, build_tiny_model

LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]  # the attention projections, as most style LoRAs train
TEXT_LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj"]  # the text encoders' attention projections
TEXT_ENCODER_CLASSES = {"text_encoder": CLIPTextModel, "text_encoder_2": CLIPTextModelWithProjection}
TINY_RANK = 4
NARROWING = 10  # SSD-1B's channels divided by this for Table 3: 32, 64, 128
FORWARD_ROUNDS = 5
TIMING = f"best of {FORWARD_ROUNDS} rounds of 10, ms; a switch: median of 10"


def milliseconds(
    run: Callable[[], object], repeats: int, summary: Callable[[list[float]], float] = statistics.median
) -> float:
    """`summary` (the median, or the best: what is left after a shared machine's interruptions) of `repeats`."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return summary(times) * 1000


def diffusers_switch(pipe: StableDiffusionXLPipeline, style: Style | None) -> None:
    """The switch as diffusers' documentation writes it."""
    if style is None:
        pipe.disable_lora()
    else:
        pipe.enable_lora()
        pipe.set_adapters([style.name], adapter_weights=[style.weight])


def switch_costs(pipe: StableDiffusionXLPipeline, adapters: StyleAdapters, switches: int) -> dict[str, float]:
    """Median ms of one switch, ours and diffusers' way, cycling through both styles and none. The two ways take
    turns in short rounds, so that this machine's drift (shared cores) hits both alike."""
    freeze_loaded_objects()  # as the engine does after loading: no collection walks the models mid-switch
    ways: dict[str, Callable[[Style | None], None]] = {
        "ours": lambda style: adapters.activate(style, pipe),
        "diffusers": lambda style: diffusers_switch(pipe, style),
    }
    samples: dict[str, list[float]] = {way: [] for way in ways}
    cycle_of_switches = [*adapters.book, None]  # ends with none: each round leaves the layers as it found them
    for _ in range(max(1, switches // (len(cycle_of_switches) * 3))):
        for way, switch in ways.items():
            for style in cycle_of_switches * 3:
                start = time.perf_counter()
                switch(style)
                samples[way].append(time.perf_counter() - start)
    return {way: statistics.median(times) * 1000 for way, times in samples.items()}


def fuse_cost(pipe: StableDiffusionXLPipeline, style: Style, switches: int) -> tuple[float, int, int]:
    """Median ms of a fuse and unfuse, and how many of the weights it touched differ after all the round trips."""
    base = {
        name: weight.detach().clone()
        for name, weight in pipe.unet.named_parameters()
        if name.endswith("base_layer.weight")  # what a fuse adds to
    }

    def round_trip() -> None:
        pipe.fuse_lora(adapter_names=[style.name], lora_scale=style.weight)
        pipe.unfuse_lora()

    ms = milliseconds(round_trip, switches)
    weights = dict(pipe.unet.named_parameters())
    changed = sum(not torch.equal(weights[name], original) for name, original in base.items())
    return ms, changed, len(base)


def hotswap_cost(settings: Settings, loras: list[Path], switches: int) -> float:
    """Median ms of hotswapping one adapter slot between two LoRAs kept in memory (a fresh pipeline: hotswap
    must be enabled before the first adapter is loaded)."""
    pipe = load_pipelines(settings).text2img
    pipe.enable_lora_hotswap(target_rank=TINY_RANK)
    state_dicts = [pipe.lora_state_dict(str(lora))[0] for lora in loras]  # read once, kept in memory
    pipe.load_lora_weights(dict(state_dicts[0]), adapter_name="style")
    alternating = cycle(state_dicts[1:] + state_dicts[:1])
    return milliseconds(
        lambda: pipe.load_lora_weights(dict(next(alternating)), adapter_name="style", hotswap=True), switches
    )


def full_size_adapters(configs: Path, workdir: Path) -> tuple[StableDiffusionXLPipeline, StyleAdapters]:
    """SSD-1B's module tree without weights, with two rank-8 adapters on its attention projections."""
    pipe = full_size_pipeline(configs, torch.device("meta"), workdir)
    book = StyleBook([Style(name=f"s{n}", description="bench", lora="in memory", weight=0.8) for n in (0, 1)])
    for style in book:
        pipe.unet.add_adapter(LoraConfig(r=8, lora_alpha=8, target_modules=LORA_TARGETS), adapter_name=style.name)
    pipe.disable_lora()
    return pipe, StyleAdapters(pipe, book)


def adapted_unet(config: dict, device: torch.device, dtype: torch.dtype) -> UNet2DConditionModel:
    """A random UNet of `config` with two random rank-8 style adapters, s0 and s1, on its attention projections
    (peft's default starts LoRA B at zero, which would make fused and peft's forward trivially alike)."""
    torch.manual_seed(0)
    with torch.device(device):
        return with_style_adapters(UNet2DConditionModel.from_config(config).to(dtype), LORA_TARGETS)


def adapted_text_encoder(
    name: str, config: CLIPTextConfig, device: torch.device, dtype: torch.dtype
) -> torch.nn.Module:
    """A random text encoder (`name` as in the pipelines) of `config`, with adapters as `adapted_unet`'s."""
    torch.manual_seed(0)
    with torch.device(device):
        return with_style_adapters(TEXT_ENCODER_CLASSES[name](config).to(dtype), TEXT_LORA_TARGETS)


def with_style_adapters(model: torch.nn.Module, targets: list[str]) -> torch.nn.Module:
    """peft's own injection, as diffusers loads a LoRA into a text encoder (transformers' `add_adapter` asks for
    a newer peft than diffusers does)."""
    for name in ("s0", "s1"):
        config = LoraConfig(r=8, lora_alpha=8, target_modules=targets, init_lora_weights=False)
        inject_adapter_in_model(config, model, adapter_name=name)
    return model.eval()


def compute_with(model: torch.nn.Module, adapter: str | None) -> None:
    """Switch `model`'s adapter layers to `adapter`, or off, as `StyleAdapters` switches them."""
    for _, layer in tuner_layers(model):
        layer.enable_adapters(adapter is not None)
        if adapter is not None:
            layer.set_adapter([adapter])


def narrow_config(configs: Path) -> dict:
    """SSD-1B's UNet with every block and layer in place but a tenth of the channels: the same operations, each
    with little to compute."""
    config = dict(UNet2DConditionModel.load_config(configs / "unet"))
    text_width = 64
    config.update(
        block_out_channels=[width // NARROWING for width in config["block_out_channels"]],
        attention_head_dim=[2, 4, 8],
        cross_attention_dim=text_width,
        addition_time_embed_dim=16,
        projection_class_embeddings_input_dim=6 * 16 + text_width,  # six size/crop numbers and the pooled text
        norm_num_groups=8,
    )
    return config


def narrow_text_config(configs: Path, name: str) -> CLIPTextConfig:
    """One of SSD-1B's text encoders with every layer and head in place but narrow ones: 8 values a head."""
    config = CLIPTextConfig.from_pretrained(configs / name)
    width = 8 * config.num_attention_heads
    config.update({"hidden_size": width, "intermediate_size": 4 * width, "projection_dim": width})
    return config


def text_inputs(encoder: torch.nn.Module, prompts: int) -> dict:
    """Token ids of `prompts` full-length prompts, all hidden states asked for, as the pipelines encode them."""
    ids = torch.randint(encoder.config.vocab_size, (prompts, encoder.config.max_position_embeddings))
    return {"input_ids": ids.to(encoder.device), "output_hidden_states": True}


def forward_inputs(unet: UNet2DConditionModel, images: int, latent_side: int) -> dict:
    config = unet.config
    pooled = config.projection_class_embeddings_input_dim - 6 * config.addition_time_embed_dim

    def random(*shape: int) -> torch.Tensor:
        return torch.randn(images, *shape, device=unet.device, dtype=unet.dtype)

    return {
        "sample": random(4, latent_side, latent_side),
        "timestep": torch.tensor(999, device=unet.device),
        "encoder_hidden_states": random(77, config.cross_attention_dim),
        "timestep_cond": random(config.time_cond_proj_dim),
        "added_cond_kwargs": {"text_embeds": random(pooled), "time_ids": random(6)},
    }


def forward_costs(
    model: torch.nn.Module, inputs: dict, output: Callable[[object], torch.Tensor]
) -> tuple[dict[str, float], float, float]:
    """Best ms of one forward: no style, through peft's layers (off) and on the adapter-free twin; style s0
    through peft's layers and fused; then a switch of the fused model between s0 and s1. The forwards take turns.
    Also the switch's median ms, and the largest difference between the last two forwards' `output`. On a CPU, on
    one thread."""
    on_gpu = model.device.type == "cuda"
    finish = torch.cuda.synchronize if on_gpu else lambda: None
    fused = FusedModel(model)
    fused.fuse("s0", 1.0)
    ways = {
        "no style, peft's layers": (model, False),
        "no style, adapter-free": (adapter_free_twin(model), False),
        "style, peft's layers": (model, True),
        "style, fused": (fused.model, False),
    }
    threads = torch.get_num_threads()
    if not on_gpu:
        torch.set_num_threads(1)
    samples: dict[str, list[float]] = {way: [] for way in ways}
    try:
        with torch.no_grad():
            for _ in range(FORWARD_ROUNDS):
                for way, (runs, adapted) in ways.items():
                    compute_with(model, "s0" if adapted else None)
                    samples[way].append(milliseconds(lambda runs=runs: (runs(**inputs), finish()), 10, min))
            compute_with(model, "s0")
            difference = (output(model(**inputs)) - output(fused.model(**inputs))).abs().max().item()
            styles = cycle(["s1", "s0"])
            switch = milliseconds(lambda: (fused.fuse(next(styles), 1.0), finish()), 10)
    finally:
        torch.set_num_threads(threads)
    return {way: min(times) for way, times in samples.items()}, switch, difference


def print_forward_table(title: str, forwards: dict[str, float], switch: float, difference: float) -> None:
    first = next(iter(forwards.values()))
    print(f"\n{title}")
    print(f"| {'forward':<24} | {'ms':>8} | {'vs first':>8} |")
    print(f"|{'-' * 26}|{'-' * 10}|{'-' * 10}|")
    for way, ms in forwards.items():
        print(f"| {way:<24} | {ms:>8.2f} | {ms / first:>7.2f}x |")
    print(f"a switch of the fused model to another style: {switch:.2f} ms")
    print(f"fused against peft's layers: largest difference {difference:.2e}")


def unet_sample(output: object) -> torch.Tensor:
    return output.sample


def penultimate_hidden_state(output: object) -> torch.Tensor:
    """What SDXL's pipelines take from a text encoder."""
    return output.hidden_states[-2]


def gpu_forwards(configs: Path) -> None:
    """Tables 3 and 4 on the GPU, at full size: SSD-1B's UNet in float16 at 1024x1024, batches of 1 and 8; its
    text encoders, 1 and 8 prompts."""
    cuda = torch.device("cuda")
    unet = adapted_unet(dict(UNet2DConditionModel.load_config(configs / "unet")), cuda, torch.half)
    print(torch.cuda.get_device_name())
    for images in (1, 8):
        forwards, switch, difference = forward_costs(unet, forward_inputs(unet, images, 128), unet_sample)
        title = f"one UNet forward, SSD-1B at 1024x1024, {images} image(s), float16,"
        print_forward_table(f"{title} {TIMING}", forwards, switch, difference)
    del unet
    for name in TEXT_ENCODER_CLASSES:
        encoder = adapted_text_encoder(name, CLIPTextConfig.from_pretrained(configs / name), cuda, torch.half)
        for prompts in (1, 8):
            inputs = text_inputs(encoder, prompts)
            forwards, switch, difference = forward_costs(encoder, inputs, penultimate_hidden_state)
            title = f"one forward of SSD-1B's {name}, {prompts} prompt(s), float16,"
            print_forward_table(f"{title} {TIMING}", forwards, switch, difference)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--switches", type=int, default=100)
    parser.add_argument("--configs", type=Path, default=DEFAULT_CONFIGS)
    parser.add_argument(
        "--device", choices=["cpu", "cuda"], default="cpu", help="cuda: Tables 3 and 4 alone, full size"
    )
    args = parser.parse_args()
    if args.device == "cuda":
        gpu_forwards(args.configs)
        return
    with tempfile.TemporaryDirectory() as folder:
        model = build_tiny_model(Path(folder) / "model")
        loras = [
            build_tiny_lora(model.lcm_unet, Path(folder) / f"lora{n}.safetensors", seed=n, rank=TINY_RANK)
            for n in (1, 2)
        ]
        settings = Settings(
            model_base=str(model.base), model_unet=str(model.lcm_unet), base_resolution=256, device="cpu",
            _env_file=None,
        )  # fmt: skip
        pipes = load_pipelines(settings)
        book = StyleBook(
            [Style(name=f"s{n}", description="bench", lora=str(lora), weight=0.8) for n, lora in enumerate(loras)]
        )
        pipes.styles = StyleAdapters.load(pipes.text2img, book)
        tiny = switch_costs(pipes.text2img, pipes.styles, args.switches)
        full_pipe, full_adapters = full_size_adapters(args.configs, Path(folder) / "full")
        full = switch_costs(full_pipe, full_adapters, args.switches)
        del full_pipe

        buckets = bucket_sizes(256)

        def batch(style: str) -> None:
            request = check_inputs(Kind.IMAGINE, "a fox", buckets=buckets, steps=1, style=style, styles=book)
            generate(pipes, [request])

        batches = {}
        for path in ("peft's layers", "fused"):
            if path == "fused":
                pipes.fused_styles = FusedStyles.of(pipes, fuse=True)
            batch("s0")
            batches[path, "same style as the batch before"] = milliseconds(lambda: batch("s0"), 30)
            alternate = cycle(["s0", "s1"])
            batches[path, "style alternating"] = milliseconds(lambda names=alternate: batch(next(names)), 30)
        pipes.fused_styles = None

        # Last: a fuse and unfuse leaves these weights changed
        tiny["fuse + unfuse"], changed, fused = fuse_cost(pipes.text2img, pipes.styles.style("s0"), args.switches)
        tiny["hotswap"] = hotswap_cost(settings, loras, args.switches)

    full_name = f"full size ({len(full_adapters.layers)} layers)"
    print(f"one style switch on this CPU, median of about {args.switches} switches, ms")
    print(f"| {'way':<14} | {'tiny model':>10} | {full_name:>24} |")
    print(f"|{'-' * 16}|{'-' * 12}|{'-' * 26}|")
    for way, ms in tiny.items():
        full_ms = f"{full[way]:.2f}" if way in full else "–"
        print(f"| {way:<14} | {ms:>10.2f} | {full_ms:>24} |")
    print(f"after {args.switches} fuse + unfuse round trips, {changed} of the {fused} weights fused into differ")
    print("\none-step batch of one image, tiny model on the CPU, median of 30, ms")
    print(f"| {'batch':<34} | {'style':<14} | {'ms':>8} |")
    print(f"|{'-' * 36}|{'-' * 16}|{'-' * 10}|")
    for (path, batch_name), ms in batches.items():
        print(f"| {batch_name:<34} | {path:<14} | {ms:>8.2f} |")

    unet = adapted_unet(narrow_config(args.configs), torch.device("cpu"), torch.float32)
    forwards, switch, difference = forward_costs(unet, forward_inputs(unet, 1, 16), unet_sample)
    title = f"one UNet forward at batch 1, SSD-1B's module tree at 1/{NARROWING} of its channels, one CPU thread,"
    print_forward_table(f"{title}\n{TIMING}", forwards, switch, difference)
    for name in TEXT_ENCODER_CLASSES:
        encoder = adapted_text_encoder(name, narrow_text_config(args.configs, name), torch.device("cpu"), torch.float32)
        forwards, switch, difference = forward_costs(encoder, text_inputs(encoder, 1), penultimate_hidden_state)
        title = f"one prompt through SSD-1B's {name}, 8 values a head, one CPU thread,"
        print_forward_table(f"{title}\n{TIMING}", forwards, switch, difference)


if __name__ == "__main__":
    main()
