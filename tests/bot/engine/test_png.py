from __future__ import annotations

import io
import zlib
from concurrent.futures import ThreadPoolExecutor

import imagecodecs
import numpy as np
import pytest
from PIL import Image

from bot.engine.png import MIN_STRIP_ROWS, adler32_combine, encode_png, encode_png_in_strips, strips_for


def photo_like(height: int, width: int) -> np.ndarray:
    """Smooth shading with grain: rows that Paeth predicts well, so a row filtered against the wrong row above
    changes the file, and noise that keeps every band's deflate data different."""
    rng = np.random.default_rng(height * width)
    y, x = np.mgrid[0:height, 0:width]
    shading = np.stack([x * 255 / width, y * 255 / height, (x + y) * 127 / (width + height)], axis=-1)
    return np.clip(shading + rng.normal(0, 6, shading.shape), 0, 255).astype(np.uint8)


def chunks(png: bytes) -> list[tuple[bytes, bytes]]:
    """(type, data) of each chunk, checking each one's CRC."""
    found, position = [], 8
    while position < len(png):
        length = int.from_bytes(png[position : position + 4], "big")
        chunk_type, data = png[position + 4 : position + 8], png[position + 8 : position + 8 + length]
        assert png[position + 8 + length : position + 12 + length] == zlib.crc32(chunk_type + data).to_bytes(4, "big")
        found.append((chunk_type, data))
        position += 12 + length
    return found


def test_png_carries_its_parameters() -> None:
    parameters = {"prompt": "a fox, 'quoted'; DROP TABLE", "seed": 7, "steps": 4, "model": "m"}
    png = encode_png(Image.new("RGB", (64, 64)), parameters)
    with Image.open(io.BytesIO(png)) as reopened:
        assert reopened.format == "PNG"
        assert reopened.text["prompt"] == parameters["prompt"]
        assert reopened.text["seed"] == "7"
        assert "seed: 7" in reopened.text["parameters"]


def test_png_parameters_come_before_the_pixels() -> None:
    png = encode_png(Image.new("RGB", (64, 64)), {"prompt": "a fox"})
    with Image.open(io.BytesIO(png)) as reopened:
        assert reopened.info["prompt"] == "a fox"  # what Pillow read before the first pixel chunk


@pytest.mark.parametrize("mode", ["RGB", "L"])  # generated images, and the masks saved with inpaint jobs
def test_png_keeps_every_pixel(mode: str) -> None:
    channels = {"RGB": (3,), "L": ()}[mode]
    pixels = np.random.default_rng(0).integers(0, 256, (96, 128, *channels), dtype=np.uint8)
    png = encode_png(Image.fromarray(pixels, mode), {"seed": 1})
    with Image.open(io.BytesIO(png)) as reopened:
        assert reopened.mode == mode
        assert np.array_equal(np.asarray(reopened), pixels)


@pytest.mark.parametrize(("height", "strips"), [(256, 2), (301, 3), (1024, 8), (129, 2)])
async def test_a_picture_encoded_in_strips_keeps_every_pixel_and_parameter(height: int, strips: int) -> None:
    picture = photo_like(height, 200)
    parameters = {"prompt": "a lighthouse at dusk", "seed": 3}
    with ThreadPoolExecutor(4) as pool:
        png = await encode_png_in_strips(pool, picture, parameters, strips)
    pixel_data = [data for chunk_type, data in chunks(png) if chunk_type == b"IDAT"]
    assert len(pixel_data) == strips + 1  # a chunk per strip, then the zlib checksum
    zlib.decompress(b"".join(pixel_data))  # one zlib stream, whose checksum holds (Pillow does not check it)
    assert np.array_equal(imagecodecs.png_decode(png), picture)  # libpng reads it too
    with Image.open(io.BytesIO(png)) as reopened:
        assert reopened.info["prompt"] == "a lighthouse at dusk"  # read before the first pixel chunk
        assert reopened.text == Image.open(io.BytesIO(encode_png(picture, parameters))).text
        assert reopened.mode == "RGB"
        assert np.array_equal(np.asarray(reopened), picture)


async def test_strips_make_a_file_the_size_of_one_encode_s() -> None:
    """Each band's deflate data starts afresh: it may cost bytes, never a noticeable share of the file."""
    picture = photo_like(1024, 1024)
    with ThreadPoolExecutor(8) as pool:
        in_strips = await encode_png_in_strips(pool, picture, {}, 8)
    whole = encode_png(picture, {})
    assert abs(len(in_strips) - len(whole)) < len(whole) / 500


async def test_one_strip_is_the_single_thread_file() -> None:
    picture = photo_like(64, 64)
    with ThreadPoolExecutor(2) as pool:
        assert await encode_png_in_strips(pool, picture, {"seed": 1}, 1) == encode_png(picture, {"seed": 1})


@pytest.mark.parametrize(
    ("height", "threads", "strips"),
    [(1024, 8, 8), (1024, 1, 1), (1024, 16, 8), (MIN_STRIP_ROWS * 2, 8, 2), (MIN_STRIP_ROWS - 1, 4, 1)],
)
def test_strips_give_each_thread_a_band_of_enough_rows(height: int, threads: int, strips: int) -> None:
    assert strips_for(height, threads) == strips


def test_adler32_combine_is_zlib_s_checksum_of_both() -> None:
    rng = np.random.default_rng(5)
    for length in (0, 1, 65520, 65521, 65522, 400_000):
        first, second = rng.bytes(int(rng.integers(0, 100_000))), rng.bytes(length)
        combined = adler32_combine(zlib.adler32(first), zlib.adler32(second), len(second))
        assert combined == zlib.adler32(first + second)
    assert adler32_combine(zlib.adler32(b"\xff" * 65521), zlib.adler32(b""), 0) == zlib.adler32(b"\xff" * 65521)
