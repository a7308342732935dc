"""Remember recent prompt embeddings so rerolls and variations skip the two text encoders.

Rerolls, variations and "run again" repeat a prompt seconds apart, and a batch of a user's `count` images
repeats it within one call. Encoding is deterministic, so a cached embedding gives exactly the images a fresh one
would. Prompts missing from the cache are encoded together in one call, as the pipeline would have done.

`encode_texts` computes what diffusers' `encode_prompt` does for SDXL without a LoRA scale or clip skip (a test
holds them equal), without two costs that `encode_prompt` adds on every new prompt, on the GPU thread before the
GPU's first kernel: it searches every module of both encoders for offloading hooks (2.0 ms at SSD-1B's size on a
2-core CPU, bench/README.md), which our pipelines never have, and it tokenizes each prompt twice, the second time
only to log that a long prompt was cut, which `check_inputs` already tells the user.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from diffusers import StableDiffusionXLPipeline
from transformers.utils import ModelOutput

from bot.engine.host_copies import to_device_without_waiting

CacheKey = tuple[str, str | None, str | None]  # prompt, negative (when used), style variant
DEFAULT_CAPACITY = 64  # about 20 MB of half-precision embeddings at SDXL's sizes


@dataclass(frozen=True)
class Embedding:
    """One prompt's encoder outputs (and its negative's, when guidance runs a negative branch)."""

    prompt: torch.Tensor
    pooled: torch.Tensor
    negative: torch.Tensor | None = None
    negative_pooled: torch.Tensor | None = None


class TextEmbeddingCache:
    """Least-recently-used prompt embeddings, safe to share between threads (the compiler's warm-up runs beside
    the GPU worker)."""

    def __init__(self, capacity: int = DEFAULT_CAPACITY) -> None:
        self.capacity = capacity
        self._entries: OrderedDict[CacheKey, Embedding] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def pipeline_inputs(
        self,
        pipe: StableDiffusionXLPipeline,
        prompts: Sequence[str],
        negatives: Sequence[str],
        *,
        with_negative: bool,
        variant: str | None = None,
    ) -> dict[str, torch.Tensor]:
        """`prompt_embeds` and friends for one pipeline call, one row per image. `variant` names the style
        whose adapter is active: a LoRA may change the text encoders too."""
        keys = [
            (prompt, negative if with_negative else None, variant)
            for prompt, negative in zip(prompts, negatives, strict=True)
        ]
        found = self._lookup(keys)
        missing = list(dict.fromkeys(key for key in keys if key not in found))
        if missing:
            fresh = _encode(pipe, missing, with_negative=with_negative)
            found.update(fresh)
            self._store(fresh)
        rows = [found[key] for key in keys]
        inputs = {
            "prompt_embeds": torch.cat([row.prompt for row in rows]),
            "pooled_prompt_embeds": torch.cat([row.pooled for row in rows]),
        }
        if with_negative:
            inputs["negative_prompt_embeds"] = torch.cat([row.negative for row in rows])
            inputs["negative_pooled_prompt_embeds"] = torch.cat([row.negative_pooled for row in rows])
        return inputs

    def _lookup(self, keys: Sequence[CacheKey]) -> dict[CacheKey, Embedding]:
        found = {}
        with self._lock:
            for key in dict.fromkeys(keys):
                if key in self._entries:
                    self._entries.move_to_end(key)
                    found[key] = self._entries[key]
                    self.hits += 1
                else:
                    self.misses += 1
        return found

    def _store(self, fresh: dict[CacheKey, Embedding]) -> None:
        with self._lock:
            self._entries.update(fresh)
            while len(self._entries) > self.capacity:
                self._entries.popitem(last=False)


@torch.no_grad()  # with autograd on, each cached row would keep both encoders' activations alive (GiB per cache)
def encode_texts(pipe: StableDiffusionXLPipeline, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """SDXL's conditioning for each text: both encoders' next-to-last hidden states side by side, in the second
    encoder's dtype on the pipeline's device, and the second encoder's pooled projection. The token ids go to
    the GPU without waiting (bot.engine.host_copies): a plain copy would wait for the first encoder to finish
    before the host could queue the second."""
    device = pipe._execution_device
    hidden_states = []
    for tokenizer, encoder in ((pipe.tokenizer, pipe.text_encoder), (pipe.tokenizer_2, pipe.text_encoder_2)):
        ids = tokenizer(
            list(texts),
            padding="max_length",
            max_length=tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids
        output = encoder(to_device_without_waiting(ids, device), output_hidden_states=True)
        hidden_states.append(output.hidden_states[-2])
    pooled = output[0]  # the second encoder's projection
    return torch.cat(hidden_states, dim=-1).to(dtype=pipe.text_encoder_2.dtype, device=device), pooled


def conditioning_only(output: ModelOutput) -> ModelOutput:
    """A text encoder's `output` with only what `encode_texts` reads of it: its first value and its next-to-last
    hidden state, the other hidden states dropped (None in their places). A CUDA graph of the encoder that returns
    this keeps 2 tensors instead of 15 or 35, which every replay copies out, and the memory of the others goes
    back to the graphs' pool: for SSD-1B's encoders, graphs of 1 to 8 prompts hold 15 MiB instead of 287."""
    hidden_states = output.hidden_states
    penultimate = len(hidden_states) - 2
    first = next(iter(output.keys()))
    kept = tuple(state if index == penultimate else None for index, state in enumerate(hidden_states))
    return type(output)(**{first: output[first]}, hidden_states=kept)


def _encode(pipe: StableDiffusionXLPipeline, keys: list[CacheKey], *, with_negative: bool) -> dict[CacheKey, Embedding]:
    prompt, pooled = encode_texts(pipe, [key[0] for key in keys])
    if with_negative:
        negative, negative_pooled = encode_texts(pipe, [key[1] or "" for key in keys])
    return {
        key: Embedding(
            prompt=prompt[index : index + 1],
            pooled=pooled[index : index + 1],
            negative=negative[index : index + 1] if with_negative else None,
            negative_pooled=negative_pooled[index : index + 1] if with_negative else None,
        )
        for index, key in enumerate(keys)
    }
