from __future__ import annotations

import numpy as np
import pytest
import torch

from bot.engine import text_embeddings
from bot.engine.generation import generate
from bot.engine.pipelines import Pipelines, load_pipelines
from bot.engine.requests import Kind, check_inputs
from bot.engine.text_embeddings import TextEmbeddingCache, encode_texts
from bot.settings import Settings


@pytest.fixture
def fresh_cache(pipes: Pipelines, monkeypatch: pytest.MonkeyPatch) -> TextEmbeddingCache:
    cache = TextEmbeddingCache(capacity=2)
    monkeypatch.setattr(pipes, "embeddings", cache)
    return cache


@pytest.fixture
def encoder_calls(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """Records the texts of every call that runs the encoders."""
    calls: list[list[str]] = []

    def recording(pipe, texts):
        calls.append(list(texts))
        return encode_texts(pipe, texts)

    monkeypatch.setattr(text_embeddings, "encode_texts", recording)
    return calls


def latents_from(pipe, inputs: dict, size: tuple[int, int], guidance: float) -> torch.Tensor:
    return pipe(
        **inputs,
        num_inference_steps=2,
        guidance_scale=guidance,
        width=size[0],
        height=size[1],
        generator=torch.Generator("cpu").manual_seed(7),
        output_type="latent",
    ).images


def test_a_reroll_skips_the_encoders_and_gives_the_same_pixels(pipes, buckets, fresh_cache, encoder_calls) -> None:
    request = check_inputs(Kind.IMAGINE, "a lighthouse", buckets=buckets, seed=3, steps=2)
    [[first]] = generate(pipes, [request])
    [[again]] = generate(pipes, [request])
    assert encoder_calls == [["a lighthouse"]]
    assert (fresh_cache.hits, fresh_cache.misses) == (1, 1)
    assert np.array_equal(np.asarray(first), np.asarray(again))


def test_a_batch_encodes_each_distinct_prompt_once(pipes, buckets, fresh_cache, encoder_calls) -> None:
    fox = check_inputs(Kind.IMAGINE, "a fox", buckets=buckets, count=3, steps=1)
    owl = check_inputs(Kind.IMAGINE, "an owl", buckets=buckets, steps=1)
    results = generate(pipes, [fox, owl])
    assert [len(images) for images in results] == [3, 1]
    assert encoder_calls == [["a fox", "an owl"]]


def test_least_recently_used_prompt_is_evicted(pipes, buckets, fresh_cache, encoder_calls) -> None:
    for prompt in ["one", "two", "one", "three", "one", "two"]:
        generate(pipes, [check_inputs(Kind.IMAGINE, prompt, buckets=buckets, steps=1)])
    # capacity 2: "two" was the least recently used when "three" arrived
    assert encoder_calls == [["one"], ["two"], ["three"], ["two"]]


def test_embeddings_equal_the_pipelines_own_encoding(pipes: Pipelines, buckets) -> None:
    size = buckets["1:1"]
    inputs = TextEmbeddingCache().pipeline_inputs(pipes.text2img, ["a fox", "an owl"], ["", ""], with_negative=False)
    ours = latents_from(pipes.text2img, inputs, size, guidance=1.0)
    theirs = latents_from(pipes.text2img, {"prompt": ["a fox", "an owl"]}, size, guidance=1.0)
    torch.testing.assert_close(ours, theirs)


@pytest.mark.parametrize("negatives", [None, ["blurry", ""]])
def test_texts_encode_as_diffusers_encodes_them(pipes: Pipelines, negatives: list[str] | None) -> None:
    pipe, prompts = pipes.text2img, ["a fox", "a lighthouse at dusk, " * 20]  # the second is cut at 77 tokens
    with torch.no_grad():
        theirs = pipe.encode_prompt(
            prompt=prompts,
            device=pipes.device,
            num_images_per_prompt=1,
            do_classifier_free_guidance=negatives is not None,
            negative_prompt=negatives,
        )
    prompt, pooled = encode_texts(pipe, prompts)
    assert torch.equal(prompt, theirs[0]) and torch.equal(pooled, theirs[2])
    if negatives is not None:
        negative, negative_pooled = encode_texts(pipe, negatives)
        assert torch.equal(negative, theirs[1]) and torch.equal(negative_pooled, theirs[3])


def test_encoding_never_searches_the_encoders_modules(pipes: Pipelines, monkeypatch: pytest.MonkeyPatch) -> None:
    """diffusers' `encode_prompt` searches both encoders for offloading hooks on each call; ours never offload."""

    def searched(module: torch.nn.Module) -> None:
        raise AssertionError(f"searched the modules of a {type(module).__name__}")

    monkeypatch.setattr(torch.nn.Module, "modules", searched)
    prompt, pooled = encode_texts(pipes.text2img, ["a fox"])
    assert prompt.shape[0] == pooled.shape[0] == 1


def test_negative_embeddings_follow_the_negative_prompt(settings: Settings, tiny_model, buckets) -> None:
    """A UNet without guidance embedding runs a negative branch: the cache keys and encodes negatives too."""
    plain = load_pipelines(settings.model_copy(update={"model_unet": str(tiny_model.base / "unet")}))
    assert plain.rules.negative_has_effect(1.5)
    size = buckets["1:1"]
    cache = TextEmbeddingCache()
    with_blur = cache.pipeline_inputs(plain.text2img, ["a fox"], ["blurry"], with_negative=True)
    with_noise = cache.pipeline_inputs(plain.text2img, ["a fox"], ["noisy"], with_negative=True)
    assert cache.misses == 2
    assert not torch.equal(with_blur["negative_prompt_embeds"], with_noise["negative_prompt_embeds"])
    ours = latents_from(plain.text2img, with_blur, size, guidance=1.5)
    theirs = latents_from(plain.text2img, {"prompt": ["a fox"], "negative_prompt": ["blurry"]}, size, guidance=1.5)
    torch.testing.assert_close(ours, theirs)


def test_cached_embeddings_hold_no_autograd_graph(pipes: Pipelines, buckets, fresh_cache: TextEmbeddingCache) -> None:
    # A graph behind a cached row would keep every activation of both text encoders alive with it: gigabytes
    # of GPU memory over a full cache at SDXL's sizes.
    generate(pipes, [check_inputs(Kind.IMAGINE, "a fox", buckets=buckets, steps=1)])
    [embedding] = fresh_cache._entries.values()
    for tensor in (embedding.prompt, embedding.pooled):
        assert tensor.grad_fn is None and not tensor.requires_grad
