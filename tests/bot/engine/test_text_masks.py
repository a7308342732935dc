from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from bot.engine.text_masks import TextMasker
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
