from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from PIL import Image

from bot.engine.text_masks import TextMasker
from bot.errors import InvalidRequest
from bot.settings import Settings


def test_the_mask_model_loads_on_first_use_and_masks_at_the_image_size(settings: Settings) -> None:
    masker = TextMasker(settings.mask_model, torch.device("cpu"))
    assert masker._model is None  # nothing loaded until a mask is asked for
    image = Image.linear_gradient("L").resize((352, 192)).convert("RGB")
    mask = masker.mask(image, "the sky")
    model = masker._model
    assert mask.mode == "L" and mask.size == image.size
    assert set(np.unique(np.asarray(mask))) <= {0, 255}
    again = masker.mask(image, "the sky")
    assert masker._model is model and np.array_equal(np.asarray(again), np.asarray(mask))
    assert not np.array_equal(np.asarray(masker.mask(image, "a cat")), np.asarray(mask))


@pytest.mark.parametrize("source", ["/nowhere/clipseg", "nobody/no-such-clipseg"])
def test_a_mask_model_that_cannot_load_is_one_line_and_a_way_out(source: str, caplog) -> None:
    masker = TextMasker(source, torch.device("cpu"))
    with (
        caplog.at_level(logging.ERROR, logger="bot.engine.text_masks"),
        pytest.raises(InvalidRequest, match="Attach a `mask` instead"),
    ):
        masker.mask(Image.new("RGB", (64, 64)), "the sky")
    [line] = [record.getMessage() for record in caplog.records]
    assert line.startswith(f"MASK_MODEL={source} cannot be loaded: ") and "\n" not in line
    assert masker._model is None  # the next request tries again
