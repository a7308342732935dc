"""Masks described in words (`/inpaint mask_prompt:"the sky"`): CLIPSeg scores every pixel against the phrase,
and the mask is where the score passes a threshold.

The model is loaded on first use (most servers never describe a mask) and runs on the GPU worker thread, like
the pipeline, never on the event loop. Masks are plain 8-bit images (255 = repaint) at the image's size, so
inverting and growing them needs no model.
"""

from __future__ import annotations

import io
import logging
import threading

import numpy as np
import torch
from PIL import Image, ImageFilter

from bot.errors import InvalidRequest

log = logging.getLogger(__name__)

MODEL_UNAVAILABLE = "Masks described in words are not available on this bot right now. Attach a `mask` instead."
THRESHOLD = 0.4  # CLIPSeg's scores are soft; 0.4 keeps edges a little generous, which inpainting likes
MIN_COVERAGE = 0.005  # below this the mask is empty in practice
MAX_COVERAGE = 0.995  # above, it is the whole image: that is a remix, not an inpaint
GROW_FRACTION = 0.03  # one Grow press widens the mask by 3 % of the image's shorter side
OVERLAY = (255, 40, 90)


class TextMasker:
    def __init__(self, source: str, device: torch.device) -> None:
        self.source = source
        self.device = device
        self._model = None
        self._processor = None
        self._lock = threading.Lock()

    def mask(self, image: Image.Image, phrase: str) -> Image.Image:
        """The mask of what `phrase` names in `image` (call on the GPU thread)."""
        model, processor = self._loaded()
        inputs = processor(text=[phrase], images=[image], padding="max_length", return_tensors="pt").to(self.device)
        with torch.no_grad():
            logits = model(**inputs).logits  # (height, width) or (1, height, width), at the model's resolution
        scores = torch.sigmoid(logits.float()).reshape(logits.shape[-2:]).cpu().numpy()
        resized = Image.fromarray((scores * 255).astype(np.uint8)).resize(image.size, Image.Resampling.BILINEAR)
        return resized.point(lambda value: 255 if value >= THRESHOLD * 255 else 0)

    def _loaded(self):
        """The model, loaded on first use. A model that cannot be loaded (not downloaded, a wrong `MASK_MODEL`)
        is one log line for the owner and a way out for the user; the next request tries again, so a download
        made meanwhile is picked up without a restart."""
        with self._lock:
            if self._model is None:
                from transformers import CLIPSegForImageSegmentation, CLIPSegProcessor

                try:
                    processor = CLIPSegProcessor.from_pretrained(self.source)
                    model = CLIPSegForImageSegmentation.from_pretrained(self.source)
                except (OSError, ValueError) as exc:  # what from_pretrained raises for a missing or wrong model
                    log.error("MASK_MODEL=%s cannot be loaded: %s", self.source, str(exc).splitlines()[0])
                    raise InvalidRequest(MODEL_UNAVAILABLE) from None
                self._processor, self._model = processor, model.to(self.device).eval()
            return self._model, self._processor


def check_coverage(mask: Image.Image) -> None:
    """Refuse a mask that selects nothing or everything, saying what to do instead."""
    coverage = np.asarray(mask, dtype=np.uint8).astype(bool).mean()
    if coverage < MIN_COVERAGE:
        raise InvalidRequest("The mask selects nothing. Describe something visible in the picture, or press Grow.")
    if coverage > MAX_COVERAGE:
        raise InvalidRequest("The mask selects the whole picture. Press Invert, or use `/remix` to redraw it all.")


def invert(mask: Image.Image) -> Image.Image:
    return mask.point(lambda value: 255 - value)


def grow(mask: Image.Image) -> Image.Image:
    radius = max(1, round(min(mask.size) * GROW_FRACTION))
    return mask.filter(ImageFilter.MaxFilter(2 * radius + 1))


def overlay_png(image: Image.Image, mask: Image.Image) -> bytes:
    """The picture with the masked part tinted, for the user to check before confirming."""
    tint = Image.new("RGB", image.size, OVERLAY)
    shown = Image.composite(Image.blend(image, tint, 0.55), image, mask)
    buffer = io.BytesIO()
    shown.save(buffer, format="PNG", compress_level=3)
    return buffer.getvalue()
