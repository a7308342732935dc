"""Generated pictures as PNG files that carry their parameters, encoded on one thread or, in strips, on many.

A lone request waits for its PNG after the GPU is done: one core took 22 to 33 ms for a 1024x1024 picture
(`bench.knobs --png-only`), where the whole request should take about 0.1 s. A batch of pictures keeps every
thread of the PNG pool busy, one picture each, but a lone picture keeps one. So when the pool has threads to
spare, `encode_png_in_strips` cuts the picture into bands of rows that the threads encode at once, as pigz does
for gzip files (one thread's file is the same, in one band):

- libpng filters each band's rows (Paeth) against the row above the band, so every row is filtered as it would
  be in the whole picture;
- zlib deflates each band on its own and flushes it to a byte boundary, so the bands' deflate data, one after
  another, are one valid zlib stream; its checksum is combined from the bands' checksums;
- each band becomes one IDAT chunk of the file, and a last small one holds the checksum.

The file decodes to the same pixels with any PNG reader. Each band starts without the previous band's bytes to
match against, which costs a few bytes with zlib's run-length matching (its matches reach back one pixel).

zlib-ng deflates and checksums, not Python's zlib: its run-length matching writes the same bytes in half to two
thirds of the time, and its checksums take a twentieth (bench/README.md).
"""

from __future__ import annotations

import asyncio
import io
import itertools
import struct
from collections.abc import Mapping, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass

import imagecodecs
import numpy as np
from PIL import Image, PngImagePlugin
from zlib_ng import zlib_ng

from bot.engine.images import Picture

# How PNGs are compressed (bench.knobs' PNG rows compare them with Pillow): one row filter for the whole picture
# instead of trying every filter on every row, and zlib's run-length matching, with which zlib's level makes no
# difference above 0 (0 stores without compressing). Of the single filters, Paeth's files came closest to
# Pillow's: the same size for a photograph, 2 % larger for the photo-like test picture.
PNG_FILTER = imagecodecs.PNG.FILTER.PAETH
PNG_STRATEGY = zlib_ng.Z_RLE
PNG_LEVEL = 1
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# A zlib stream's first two bytes: deflate with a 32 KiB window (0x78), fastest level, header checksum (0x01).
ZLIB_HEADER = b"\x78\x01"
# Fewer rows than this per band, and the thread hand-offs cost more than the band's encoding saves.
MIN_STRIP_ROWS = 128
_ADLER_MODULUS = 65521
_COLOUR_TYPES = {1: 0, 3: 2}  # PNG's colour type by channels: greyscale (inpainting masks), RGB


def encode_png(image: Picture | Image.Image, parameters: Mapping[str, object]) -> bytes:
    """PNG with each parameter as a text chunk, plus one `parameters` line in the form other tools read: the
    file of `encode_png_in_strips` in one band, on this thread.

    Not Pillow's encoder: Pillow tries all five row filters on every row and has no setting to stop it, which
    made PNGs a third of a lone request's time. The text chunks are Pillow's, put between the header and the
    pixels, where readers that stop at the pixels still find them."""
    pixels = np.asarray(image)
    return join_strips(pixels, parameters, [encode_strip(pixels, 0, pixels.shape[0])])


def parameter_chunks(parameters: Mapping[str, object]) -> bytes:
    """The parameters as iTXt chunks, written by Pillow's own chunk writer: UTF-8 prompts survive, and both the
    single-thread file and the banded one carry the same bytes."""
    info = PngImagePlugin.PngInfo()
    for key, value in parameters.items():
        info.add_itxt(key, str(value))
    info.add_itxt("parameters", ", ".join(f"{key}: {value}" for key, value in parameters.items()))
    buffer = io.BytesIO()
    for chunk_type, data, *_ in info.chunks:
        PngImagePlugin.putchunk(buffer, chunk_type, data)
    return buffer.getvalue()


def strips_for(height: int, threads: int) -> int:
    """How many bands `threads` threads should encode one picture of `height` rows in."""
    return max(1, min(threads, height // MIN_STRIP_ROWS))


async def encode_png_in_strips(
    pool: Executor, picture: Picture, parameters: Mapping[str, object], strips: int
) -> bytes:
    """A PNG of the same pixels and parameters as `encode_png`'s, its rows encoded in `strips` bands on `pool`
    at once (one band: `encode_png`'s file)."""
    loop = asyncio.get_running_loop()
    if strips == 1:
        return await loop.run_in_executor(pool, encode_png, picture, parameters)
    bounds = np.linspace(0, picture.shape[0], strips + 1).round().astype(int).tolist()
    bands = await asyncio.gather(
        *(loop.run_in_executor(pool, encode_strip, picture, start, stop) for start, stop in itertools.pairwise(bounds))
    )
    return join_strips(picture, parameters, bands)


@dataclass(frozen=True)
class Strip:
    """One band of rows, deflated: an IDAT chunk, and what the zlib stream's checksum needs from it."""

    chunk: bytes
    adler: int  # Adler-32 of the band's filtered rows
    length: int  # bytes of the band's filtered rows


def encode_strip(picture: Picture, start: int, stop: int) -> Strip:
    """Rows `start` to `stop` of `picture`, filtered as in the whole picture, deflated and flushed to a byte
    boundary (the last band ends the deflate stream)."""
    rows = filtered_rows(picture, start, stop)
    deflate = zlib_ng.compressobj(PNG_LEVEL, zlib_ng.DEFLATED, -zlib_ng.MAX_WBITS, strategy=PNG_STRATEGY)
    last = stop == picture.shape[0]
    data = deflate.compress(rows) + deflate.flush(zlib_ng.Z_FINISH if last else zlib_ng.Z_SYNC_FLUSH)
    if start == 0:
        data = ZLIB_HEADER + data
    return Strip(_chunk(b"IDAT", data), zlib_ng.adler32(rows), len(rows))


def filtered_rows(picture: Picture, start: int, stop: int) -> bytes:
    """Rows `start` to `stop` as PNG stores them before deflating: each row's filter byte, then its bytes
    predicted from the row above. libpng filters; it is given the row above the band too (and that row's
    bytes are dropped), so that the band's first row is predicted from it, not from a row of zeros."""
    above = max(0, start - 1)
    png = imagecodecs.png_encode(picture[above:stop], level=0, filter=PNG_FILTER)
    rows = zlib_ng.decompress(b"".join(_chunks(png, b"IDAT")))  # level 0 stores: this only copies
    row_bytes = len(rows) // (stop - above)
    return rows[(start - above) * row_bytes :]


def join_strips(picture: Picture, parameters: Mapping[str, object], strips: Sequence[Strip]) -> bytes:
    height, width, *channels = picture.shape
    colour_type = _COLOUR_TYPES[channels[0] if channels else 1]
    adler = 1  # the checksum of nothing
    for strip in strips:
        adler = adler32_combine(adler, strip.adler, strip.length)
    header = _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, colour_type, 0, 0, 0))
    return b"".join(
        (
            PNG_SIGNATURE,
            header,
            parameter_chunks(parameters),
            *(strip.chunk for strip in strips),
            _chunk(b"IDAT", struct.pack(">I", adler)),
            _chunk(b"IEND", b""),
        )
    )


def adler32_combine(first: int, second: int, second_length: int) -> int:
    """The Adler-32 of two byte strings one after the other, from theirs (zlib's `adler32_combine`, which
    neither Python's zlib module nor zlib-ng's offers)."""
    remainder = second_length % _ADLER_MODULUS
    low = (first & 0xFFFF) + (second & 0xFFFF) - 1
    high = remainder * (first & 0xFFFF) + (first >> 16) + (second >> 16) - remainder
    return (high % _ADLER_MODULUS) << 16 | low % _ADLER_MODULUS


def _chunk(chunk_type: bytes, data: bytes) -> bytes:
    crc = zlib_ng.crc32(data, zlib_ng.crc32(chunk_type))
    return b"".join((struct.pack(">I", len(data)), chunk_type, data, struct.pack(">I", crc)))


def _chunks(png: bytes, wanted: bytes) -> list[bytes]:
    """The data of every `wanted` chunk of `png`, in order."""
    found, position = [], len(PNG_SIGNATURE)
    while position < len(png):
        (length,) = struct.unpack_from(">I", png, position)
        if png[position + 4 : position + 8] == wanted:
            found.append(png[position + 8 : position + 8 + length])
        position += 12 + length
    return found
