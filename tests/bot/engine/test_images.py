from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from bot.engine.images import (
    MAX_INPUT_BYTES,
    decode_image,
    decode_mask,
    fit_to_bucket,
    prepare_mask,
)
from bot.errors import InvalidImage


def encoded(image: Image.Image, fmt: str = "PNG", **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims `width`x`height` and holds one tiny compressed block: a decompression bomb's shape."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\0" * 1024))
        + chunk(b"IEND", b"")
    )


def test_plain_rgb_png_and_jpeg_and_webp_decode() -> None:
    image = Image.new("RGB", (100, 80), (200, 10, 10))
    for fmt in ("PNG", "JPEG", "WEBP"):
        decoded = decode_image(encoded(image, fmt))
        assert decoded.image.mode == "RGB" and decoded.image.size == (100, 80)
        assert decoded.alpha_mask is None


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"hello, I am a text file renamed to .png\n" * 10, "not a PNG, JPEG, WebP or GIF"),
        (encoded(Image.new("RGB", (300, 300), "blue"))[:200], "damaged or cut short"),
        (encoded(Image.new("RGB", (1, 1))), "at least 64 px"),
        (png_header_only(5000, 4000), "limit is 17 MP"),
        (png_header_only(60000, 60000), "limit is 17 MP"),
        (encoded(Image.new("RGB", (64, 64)), "BMP"), "not a PNG, JPEG, WebP or GIF"),
    ],
    ids=["text-renamed", "truncated", "1x1", "20-megapixels", "bomb", "bmp"],
)
def test_bad_files_give_a_user_facing_error(data: bytes, message: str) -> None:
    with pytest.raises(InvalidImage, match=message):
        decode_image(data)


def test_oversized_upload_is_refused_before_decoding() -> None:
    with pytest.raises(InvalidImage, match="MiB"):
        decode_image(b"\0" * (MAX_INPUT_BYTES + 1))


def test_truncated_jpeg_is_refused() -> None:
    data = encoded(Image.effect_noise((256, 256), 50).convert("RGB"), "JPEG")
    with pytest.raises(InvalidImage, match="damaged"):
        decode_image(data[: len(data) // 2])


def test_cmyk_jpeg_is_converted() -> None:
    cmyk = Image.new("CMYK", (80, 80), (0, 255, 255, 0))  # pure red in CMYK
    decoded = decode_image(encoded(cmyk, "JPEG", quality=95)).image
    red, green, blue = decoded.getpixel((40, 40))
    assert decoded.mode == "RGB" and red > 200 and green < 60 and blue < 60


def test_16_bit_greyscale_is_scaled_not_clipped() -> None:
    values = np.full((80, 80), 32768, dtype=np.uint16)  # mid-grey in 16 bits
    decoded = decode_image(encoded(Image.fromarray(values))).image
    assert decoded.mode == "RGB"
    assert 120 <= decoded.getpixel((0, 0))[0] <= 135


def test_palette_image_with_transparency_gives_its_own_mask() -> None:
    rgba = Image.new("RGBA", (100, 100), (0, 128, 0, 255))
    rgba.paste((0, 0, 0, 0), (0, 0, 50, 100))  # left half transparent
    decoded = decode_image(encoded(rgba.convert("P", palette=Image.Palette.ADAPTIVE).convert("RGBA"), "PNG"))
    assert decoded.alpha_mask is not None
    assert decoded.alpha_mask.getpixel((10, 50)) == 255  # transparent: repaint
    assert decoded.alpha_mask.getpixel((90, 50)) == 0


def test_opaque_alpha_channel_gives_no_mask() -> None:
    assert decode_image(encoded(Image.new("RGBA", (100, 100), (1, 2, 3, 255)))).alpha_mask is None


def test_animated_gif_uses_its_first_frame() -> None:
    frames = [Image.new("RGB", (70, 70), color) for color in ("red", "blue", "green")]
    data = encoded(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    red, _, blue = decode_image(data).image.getpixel((5, 5))
    assert red > 200 and blue < 50


def test_exif_orientation_is_applied() -> None:
    image = Image.new("RGB", (120, 80), "white")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise for display
    decoded = decode_image(encoded(image, "JPEG", exif=exif.tobytes())).image
    assert decoded.size == (80, 120)


def test_fit_to_bucket_covers_and_crops(buckets: dict[str, tuple[int, int]]) -> None:
    fitted = fit_to_bucket(Image.new("RGB", (1920, 1080)), buckets)
    assert fitted.size == buckets["16:9"]
    assert fit_to_bucket(Image.new("RGB", (500, 510)), buckets).size == buckets["1:1"]


def test_mask_is_binarized_and_fitted_like_its_image(buckets: dict[str, tuple[int, int]]) -> None:
    mask = Image.new("L", (400, 400), 0)
    mask.paste(200, (0, 0, 200, 400))  # left half light grey -> white
    mask.paste(100, (200, 0, 400, 400))  # right half dark grey -> black
    fitted = decode_mask(encoded(mask), (800, 800), buckets)
    assert fitted.size == buckets["1:1"]
    assert set(np.unique(np.asarray(fitted))) == {0, 255}
    assert fitted.getpixel((10, 10)) == 255 and fitted.getpixel((buckets["1:1"][0] - 10, 10)) == 0


def test_mask_of_another_shape_is_refused(buckets: dict[str, tuple[int, int]]) -> None:
    with pytest.raises(InvalidImage, match="same shape"):
        decode_mask(encoded(Image.new("L", (300, 100), 255)), (400, 400), buckets)


def test_empty_mask_is_refused(buckets: dict[str, tuple[int, int]]) -> None:
    with pytest.raises(InvalidImage, match="no white pixels"):
        prepare_mask(Image.new("L", (100, 100), 0), (100, 100), buckets)
