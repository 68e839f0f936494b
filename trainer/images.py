"""Encoded image -> model input tensor, following the model metadata exactly as the edge does.

One function used by bootstrap (folders of images) and by the service (uploaded samples), so a model is
trained on inputs prepared the same way the edge prepares them at inference time: crop the ROI (in
source-frame pixels) unless the upload is already the crop, resize to the input size, convert to the
colour order, scale to [0, 1]. The trainer keeps mean 0 / std 1 in its metadata: its replay memory
stores inputs as uint8 (lossless only for [0, 1] inputs), and the networks have their own batch norm.
"""
from __future__ import annotations

from dataclasses import dataclass

import io

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

__all__ = ["InputFormat", "decode", "to_input", "preprocess_bytes", "GRAY_WEIGHTS"]

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


def decode(data: bytes) -> torch.Tensor:
    """PNG/JPEG bytes -> uint8 tensor (C, H, W), C in {1, 3} (alpha dropped), RGB order.

    Pillow (torchvision's own dependency) rather than ``torchvision.io``, whose codecs are deprecated.
    """
    with Image.open(io.BytesIO(data)) as im:
        im.load()
        if im.mode not in ("L", "RGB"):
            im = im.convert("L" if im.mode in ("1", "I", "I;16", "F", "LA") else "RGB")
        arr = np.asarray(im)
    t = torch.from_numpy(arr.copy())
    return t.unsqueeze(0) if t.ndim == 2 else t.permute(2, 0, 1).contiguous()


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
                     roi: tuple[int, int, int, int] | None = None) -> torch.Tensor:
    """:func:`decode` then :func:`to_input`."""
    return to_input(decode(data), fmt, frame_size, roi)
