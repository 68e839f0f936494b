"""Encoded image -> model input tensor, following the model metadata exactly as the edge does.

One function used by bootstrap (folders of images) and by the service (uploaded samples), so a model is
trained on inputs prepared the same way the edge prepares them at inference time: crop the ROI (in
source-frame pixels) unless the upload is already the crop, resize to the input size, convert to the
colour order, scale to [0, 1]. The trainer keeps mean 0 / std 1 in its metadata: its replay memory
stores inputs as uint8 (lossless only for [0, 1] inputs), and the networks have their own batch norm.

Uploaded images are untrusted: a 118-byte PNG can declare 13,000 x 13,000 pixels (2.4 GiB and 8 s to
decode). :func:`image_size` reads the dimensions from the PNG/JPEG header without decoding anything, so
ingestion rejects such an image (``image_too_large``) before it is stored; :func:`decode` refuses more than
``max_pixels`` pixels before Pillow allocates them, and takes only PNG and JPEG. The pixel bound is also the
time bound: decoding is linear in pixels (about 20 ms per megapixel here).
"""
from __future__ import annotations

from dataclasses import dataclass

import io
import struct

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

__all__ = ["InputFormat", "ImageRejected", "decode", "image_size", "max_image_size", "to_input", "preprocess_bytes",
           "GRAY_WEIGHTS", "UPLOAD_FORMATS"]

#: ITU-R BT.601 luma, what OpenCV's BGR2GRAY uses on the edge.
GRAY_WEIGHTS = (0.299, 0.587, 0.114)


@dataclass(frozen=True)
class InputFormat:
    """What the network eats: size, channels and colour order, and the ROI the edge crops (if any)."""

    width: int
    height: int
    channels: int = 3
    color_order: str = "RGB"
    roi: tuple[int, int, int, int] | None = None

    def as_dict(self) -> dict:
        return {"width": self.width, "height": self.height, "channels": self.channels,
                "color_order": self.color_order, "roi": list(self.roi) if self.roi else None}

    @classmethod
    def from_dict(cls, d: dict) -> "InputFormat":
        roi = d.get("roi")
        return cls(int(d["width"]), int(d["height"]), int(d.get("channels", 3)), str(d.get("color_order", "RGB")),
                   tuple(int(v) for v in roi) if roi else None)


#: What an upload may be (content type -> Pillow format); nothing else is ever handed to a decoder.
UPLOAD_FORMATS = {"image/png": "PNG", "image/jpeg": "JPEG"}
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
#: JPEG start-of-frame markers (baseline, progressive, lossless, arithmetic): they carry the size.
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


class ImageRejected(ValueError):
    """An image that is not decoded: ``reason`` is ``image_too_large`` or ``bad_image``."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


def image_size(data: bytes, content_type: str | None = None) -> tuple[int, int]:
    """(width, height) from a PNG or JPEG header, without decoding; :class:`ImageRejected` ``bad_image`` when
    the bytes are neither (or not the ``content_type`` they claim to be)."""
    view = memoryview(data)
    if data[:8] == _PNG_SIGNATURE:
        kind = "image/png"
        if len(data) < 24 or data[12:16] != b"IHDR":
            raise ImageRejected("bad_image", "PNG without an IHDR header")
        w, h = int.from_bytes(view[16:20], "big"), int.from_bytes(view[20:24], "big")
    elif data[:2] == b"\xff\xd8":
        kind = "image/jpeg"
        w, h = _jpeg_size(data)
    else:
        raise ImageRejected("bad_image", "neither PNG nor JPEG")
    if content_type is not None and content_type != kind:
        raise ImageRejected("bad_image", f"a {kind} image sent as {content_type}")
    if w < 1 or h < 1:
        raise ImageRejected("bad_image", f"header declares {w}x{h} pixels")
    return w, h


def _jpeg_size(data: bytes) -> tuple[int, int]:
    """Walk the JPEG markers up to the first start-of-frame (each segment is length-prefixed)."""
    i, n = 2, len(data)
    while i + 4 <= n:
        if data[i] != 0xFF:
            raise ImageRejected("bad_image", f"JPEG marker expected at byte {i}")
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0x01, *range(0xD0, 0xD8)):  # markers without a length
            i += 2
            continue
        length = int.from_bytes(data[i + 2:i + 4], "big")
        if marker in _JPEG_SOF:
            if length < 7 or i + 9 > n:
                raise ImageRejected("bad_image", "JPEG start-of-frame is truncated")
            return int.from_bytes(data[i + 7:i + 9], "big"), int.from_bytes(data[i + 5:i + 7], "big")
        if marker in (0xD9, 0xDA) or length < 2:  # end of image / start of scan before any frame header
            break
        i += 2 + length
    raise ImageRejected("bad_image", "JPEG without a start-of-frame header")


def max_image_size(fmt: InputFormat, max_side: int) -> tuple[int, int]:
    """The largest (width, height) an upload for this model may have: ``max_side`` per axis, or the far edge
    of the model's ROI when that is larger (a full frame always contains the ROI)."""
    roi = fmt.roi
    w = max(max_side, fmt.width, roi[0] + roi[2] if roi else 0)
    h = max(max_side, fmt.height, roi[1] + roi[3] if roi else 0)
    return w, h


def decode(data: bytes, max_pixels: int | None = None, formats: tuple[str, ...] | None = None) -> torch.Tensor:
    """PNG/JPEG bytes -> uint8 tensor (C, H, W), C in {1, 3} (alpha dropped), RGB order.

    ``max_pixels``: the image must be a PNG or JPEG of at most this many pixels (:class:`ImageRejected`
    ``bad_image`` / ``image_too_large``; a corrupt file is ``bad_image`` too), checked on its header before decoding (Pillow's own bomb check only
    warns below 179 Mpx). ``formats``:
    the Pillow formats allowed (uploads: PNG and JPEG only). Pillow (torchvision's own dependency) rather
    than ``torchvision.io``, whose codecs are deprecated.
    """
    if max_pixels is not None:  # from the header, before Pillow (which warns or raises on bombs its own way)
        w, h = image_size(data)
        if w * h > max_pixels:
            raise ImageRejected("image_too_large", f"{w}x{h} pixels > {max_pixels}")
    try:
        arr = _pixels(data, max_pixels, formats)
    except ImageRejected:
        raise
    except (OSError, ValueError, SyntaxError, EOFError, struct.error, Image.DecompressionBombError) as e:
        # what Pillow raises on a corrupt or truncated file (bench/fuzz.py found each of these)
        raise ImageRejected("bad_image", f"{type(e).__name__}: {e}") from None
    t = torch.from_numpy(arr.copy())
    return t.unsqueeze(0) if t.ndim == 2 else t.permute(2, 0, 1).contiguous()


def _pixels(data: bytes, max_pixels: int | None, formats: tuple[str, ...] | None) -> np.ndarray:
    with Image.open(io.BytesIO(data), formats=formats) as im:
        if max_pixels is not None and im.size[0] * im.size[1] > max_pixels:  # a header our parser read otherwise
            raise ImageRejected("image_too_large", f"{im.size[0]}x{im.size[1]} pixels > {max_pixels}")
        im.load()
        if im.mode not in ("L", "RGB"):
            im = im.convert("L" if im.mode in ("1", "I", "I;16", "F", "LA") else "RGB")
        return np.asarray(im)


def to_input(img: torch.Tensor, fmt: InputFormat, frame_size: tuple[int, int] | None = None,
             roi: tuple[int, int, int, int] | None = None) -> torch.Tensor:
    """uint8 (C, H, W) RGB/grey -> float32 (channels, height, width) in [0, 1].

    ``roi`` (default: the format's ROI) is applied only when the image is the full frame (its size equals
    ``frame_size``, or no frame size is known and the ROI fits): an edge that uploads ROI crops sends an
    image that is already the crop.
    """
    roi = roi if roi is not None else fmt.roi
    _, h, w = img.shape
    if roi is not None:
        x0, y0, rw, rh = roi
        full = (w, h) == tuple(frame_size) if frame_size else (x0 + rw <= w and y0 + rh <= h and (rw, rh) != (w, h))
        if full:
            img = img[:, y0:y0 + rh, x0:x0 + rw]
    x = img.float()
    if fmt.channels == 1 and x.shape[0] == 3:
        wts = torch.tensor(GRAY_WEIGHTS).view(3, 1, 1)
        x = (x * wts).sum(0, keepdim=True)
    elif fmt.channels == 3 and x.shape[0] == 1:
        x = x.expand(3, -1, -1)
    if fmt.channels == 3 and fmt.color_order == "BGR":
        x = x.flip(0)
    if x.shape[1:] != (fmt.height, fmt.width):
        x = F.interpolate(x.unsqueeze(0), size=(fmt.height, fmt.width), mode="bilinear", align_corners=False,
                          antialias=True).squeeze(0)
    return (x / 255.0).clamp_(0.0, 1.0).contiguous()


def preprocess_bytes(data: bytes, fmt: InputFormat, frame_size: tuple[int, int] | None = None,
                     roi: tuple[int, int, int, int] | None = None, max_pixels: int | None = None,
                     formats: tuple[str, ...] | None = None) -> torch.Tensor:
    """:func:`decode` (bounded by ``max_pixels``, restricted to ``formats``) then :func:`to_input`."""
    return to_input(decode(data, max_pixels, formats), fmt, frame_size, roi)
