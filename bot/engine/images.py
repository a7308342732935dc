"""Untrusted image bytes in, bucket-sized RGB images and binary masks out; files that fit Discord's upload limit.

Attachments come from anyone on a server, so decoding is defensive: the header is checked (format, pixel
count) before any pixel is decoded, so a decompression bomb is refused without being inflated, and every
Pillow failure becomes an `InvalidImage` with a message a user can act on.
"""

from __future__ import annotations

import io
import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from bot.engine.requests import nearest_aspect
from bot.errors import InvalidImage

# A generated picture: RGB, (height, width, 3), uint8. An array rather than a PIL image: the PNG encoder reads it
# as it is, where a PIL image costs a copy into Pillow's four bytes a pixel on the GPU thread and another copy
# back (`bench.knobs --png-only`, its hand-off rows).
Picture = np.ndarray

ACCEPTED_FORMATS = frozenset({"PNG", "JPEG", "WEBP", "GIF"})
MAX_INPUT_BYTES = 25 * 1024 * 1024
MAX_INPUT_PIXELS = 4096 * 4096
MIN_INPUT_SIDE = 64
MASK_THRESHOLD = 128
MASK_ASPECT_TOLERANCE = 0.02
JPEG_FALLBACK_QUALITIES = (90, 75, 60, 40)
THUMBNAIL_SIDE = 256


@dataclass
class DecodedImage:
    """An RGB image, plus the mask its transparent pixels describe (white = repaint), if it has any."""

    image: Image.Image
    alpha_mask: Image.Image | None


def decode_image(data: bytes, *, what: str = "image") -> DecodedImage:
    """Decode an attachment into RGB, honouring EXIF orientation and taking the first frame of animations."""
    if len(data) > MAX_INPUT_BYTES:
        raise InvalidImage(f"The {what} is {len(data) / 2**20:.1f} MiB; the limit is {MAX_INPUT_BYTES // 2**20} MiB.")
    try:
        with warnings.catch_warnings():
            # Pillow only warns between its two bomb thresholds; treat both alike.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            return _decode(data, what)
    except InvalidImage:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise InvalidImage(
            f"The {what} has far too many pixels; the limit is {MAX_INPUT_PIXELS / 1e6:.0f} MP."
        ) from None
    except UnidentifiedImageError:
        raise InvalidImage(f"The {what} is not a PNG, JPEG, WebP or GIF file.") from None
    except (OSError, ValueError, SyntaxError, EOFError):
        raise InvalidImage(f"The {what} file is damaged or cut short; please upload it again.") from None


def _decode(data: bytes, what: str) -> DecodedImage:
    with Image.open(io.BytesIO(data), formats=sorted(ACCEPTED_FORMATS)) as opened:
        width, height = opened.size
        if width * height > MAX_INPUT_PIXELS:
            raise InvalidImage(
                f"The {what} is {width}x{height} ({width * height / 1e6:.0f} MP); "
                f"the limit is {MAX_INPUT_PIXELS / 1e6:.0f} MP."
            )
        if min(width, height) < MIN_INPUT_SIDE:
            raise InvalidImage(f"The {what} is {width}x{height}; each side must be at least {MIN_INPUT_SIDE} px.")
        opened.seek(0)
        opened.load()
        image = ImageOps.exif_transpose(opened)
    return _to_rgb(image)


def _to_rgb(image: Image.Image) -> DecodedImage:
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16-bit greyscale: Pillow's convert("L") clips instead of scaling, so scale by hand.
        image = image.point(lambda value: value / 257).convert("L")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("LA", "La", "PA", "RGBa"):
        image = image.convert("RGBA")
    alpha_mask = None
    if image.mode == "RGBA":
        alpha = image.getchannel("A")
        if alpha.getextrema()[0] < MASK_THRESHOLD:
            alpha_mask = alpha.point(lambda value: 255 if value < MASK_THRESHOLD else 0)
    return DecodedImage(image=image.convert("RGB"), alpha_mask=alpha_mask)


def fit_to_bucket(image: Image.Image, buckets: Mapping[str, tuple[int, int]], *, mask: bool = False) -> Image.Image:
    """Scale to cover the nearest bucket, then centre-crop to it: no stretching, no borders."""
    aspect = nearest_aspect(*image.size, dict(buckets))
    size = buckets[aspect]
    method = Image.Resampling.NEAREST if mask else Image.Resampling.LANCZOS
    return ImageOps.fit(image, size, method=method)


def decode_mask(data: bytes, image_size: tuple[int, int], buckets: Mapping[str, tuple[int, int]]) -> Image.Image:
    """Decode a mask for an image of `image_size` (original pixels): same shape required, any scale accepted."""
    decoded = decode_image(data, what="mask")
    mask = decoded.image.convert("L")
    return prepare_mask(mask, image_size, buckets)


def prepare_mask(mask: Image.Image, image_size: tuple[int, int], buckets: Mapping[str, tuple[int, int]]) -> Image.Image:
    """Binarize a mask that belongs to an image of `image_size` and fit it exactly as that image is fitted."""
    mask_ratio = mask.width / mask.height
    image_ratio = image_size[0] / image_size[1]
    if abs(math.log(mask_ratio / image_ratio)) > MASK_ASPECT_TOLERANCE:
        raise InvalidImage(
            f"The mask is {mask.width}x{mask.height} but the image is {image_size[0]}x{image_size[1]}: "
            "they must have the same shape."
        )
    mask = mask.resize(image_size, Image.Resampling.BILINEAR).point(lambda value: 255 if value >= MASK_THRESHOLD else 0)
    fitted = fit_to_bucket(mask, buckets, mask=True)
    _, high = fitted.getextrema()
    if high == 0:
        raise InvalidImage("The mask has no white pixels, so there is nothing to repaint.")
    return fitted


def fit_upload_limit(png: bytes, limit: int) -> tuple[str, bytes]:
    """The image as (extension, bytes) within `limit`: the PNG when it fits, else the best JPEG that does."""
    if len(png) <= limit:
        return "png", png
    with Image.open(io.BytesIO(png)) as image:
        rgb = image.convert("RGB")
    for quality in JPEG_FALLBACK_QUALITIES:
        buffer = io.BytesIO()
        rgb.save(buffer, format="JPEG", quality=quality, optimize=True)
        if buffer.tell() <= limit:
            return "jpg", buffer.getvalue()
    raise InvalidImage("The image is too large for this server's upload limit even as a JPEG.")


def thumbnail_jpeg(data: bytes, side: int = THUMBNAIL_SIDE) -> bytes:
    """A small JPEG of an image we generated, kept for galleries after Discord's attachment URLs expire."""
    with Image.open(io.BytesIO(data)) as image:
        small = image.convert("RGB")
    small.thumbnail((side, side), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    small.save(buffer, format="JPEG", quality=82)
    return buffer.getvalue()
