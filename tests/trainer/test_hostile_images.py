"""Hostile images: sizes come from the header before anything decodes, decoding is bounded, only PNG/JPEG."""
from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from trainer.images import ImageRejected, InputFormat, decode, image_size, max_image_size


def png_bomb(side: int = 13_000) -> bytes:
    """A valid 1-bit PNG of side x side pixels (all black): a few kB that decode to side² bytes."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    row = b"\x00" + b"\x00" * ((side + 7) // 8)  # filter byte + packed bits
    raw = zlib.compressobj(9)
    idat = b"".join(raw.compress(row) for _ in range(side)) + raw.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def encoded(fmt: str, w: int, h: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.zeros((h, w, 3), np.uint8)).save(buf, format=fmt)
    return buf.getvalue()


def test_png_bomb_is_measured_from_its_header_and_refused_before_decoding() -> None:
    bomb = png_bomb()
    assert len(bomb) < 64 * 1024
    assert image_size(bomb, "image/png") == (13_000, 13_000)
    with pytest.raises(ImageRejected) as e:
        decode(bomb, max_pixels=4096 * 4096, formats=("PNG",))
    assert e.value.reason == "image_too_large"


@pytest.mark.parametrize("fmt,ctype", [("PNG", "image/png"), ("JPEG", "image/jpeg")])
def test_header_sizes_of_real_images(fmt: str, ctype: str) -> None:
    data = encoded(fmt, 37, 21)
    assert image_size(data, ctype) == (37, 21)
    assert tuple(decode(data, max_pixels=37 * 21).shape) == (3, 21, 37)


def test_progressive_jpeg_size() -> None:
    buf = io.BytesIO()
    Image.fromarray(np.zeros((19, 45, 3), np.uint8)).save(buf, format="JPEG", progressive=True)
    assert image_size(buf.getvalue()) == (45, 19)


@pytest.mark.parametrize("data,ctype,why", [
    (b"GIF89a" + b"\x00" * 40, None, "neither PNG nor JPEG"),
    (b"\x89PNG", None, "neither PNG nor JPEG"),                         # truncated signature
    (b"\x89PNG\r\n\x1a\n" + b"\x00" * 20, None, "IHDR"),               # no IHDR
    (b"\xff\xd8\xff\xd9", None, "start-of-frame"),                       # JPEG that ends at once
    (b"\xff\xd8\x00\x00\x00\x00", None, "marker expected"),                # not a marker
    (encoded("PNG", 4, 4), "image/jpeg", "sent as image/jpeg"),          # content type lies
])
def test_bad_images_are_refused_with_a_reason(data: bytes, ctype: str | None, why: str) -> None:
    with pytest.raises(ImageRejected, match=why) as e:
        image_size(data, ctype)
    assert e.value.reason == "bad_image"


def test_only_the_allowed_formats_are_decoded() -> None:
    buf = io.BytesIO()
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(buf, format="BMP")
    with pytest.raises(Exception):
        decode(buf.getvalue(), formats=("PNG", "JPEG"))


def test_limit_follows_the_model_input_and_roi() -> None:
    assert max_image_size(InputFormat(64, 64), 4096) == (4096, 4096)
    assert max_image_size(InputFormat(64, 64, roi=(5000, 10, 64, 64)), 4096) == (5064, 4096)


@pytest.mark.parametrize("broken", ["truncated", "idat"])
def test_a_corrupt_image_is_bad_image_not_a_pillow_error(broken: str) -> None:
    """Pillow raises OSError, SyntaxError or ValueError on broken files; decode turns each into a reason."""
    data = bytearray(encoded("PNG", 16, 16))
    if broken == "truncated":
        data = data[:45]
    else:
        data[41:49] = b"\xff" * 8  # the compressed pixels after a valid header
    with pytest.raises(ImageRejected) as e:
        decode(bytes(data), max_pixels=4096, formats=("PNG", "JPEG"))
    assert e.value.reason == "bad_image"
