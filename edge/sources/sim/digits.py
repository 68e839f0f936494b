"""``sim:digits`` — MNIST digits printed on labels, seen by a fixed camera.

Each frame shows a label card in a fixed ROI on a noisy housing; the card carries
one MNIST digit, inverted (dark ink on light card) and coloured, with scale,
rotation and position jitter. The truth is the digit, "0".."9". ``classes=0-4``
restricts the digits shown at the start (``newclass:5-9@N`` adds the rest), which
gives the class-incremental Split-MNIST setting on a camera-shaped stream.

Options: ``data`` (directory holding t10k-images-idx3-ubyte[.gz] and
t10k-labels-idx1-ubyte[.gz]; default the repo's data/mnist), ``classes``, and
``split`` = all | stream | test — the Split-MNIST protocol of data/mnist/README.md
(per digit, ``default_rng(0).permutation``, first 80 % stream, rest test), so a
camera can show only stream images while evaluation uses the held-out test ones.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from ..idx import read_idx
from .assets import cached
from .drift import expand_classes
from .effects import NoiseTile

__all__ = ["DigitsRenderer", "default_mnist_dir", "load_mnist", "split_indices"]

_DIGITS = [str(d) for d in range(10)]


def default_mnist_dir() -> Path:
    """The repo's data/mnist (two levels above the edge package)."""
    return Path(__file__).resolve().parents[3] / "data" / "mnist"


def _find(directory: Path, stem: str) -> Path:
    for name in (stem + ".gz", stem):
        if (directory / name).is_file():
            return directory / name
    raise ValueError(f"option 'data': no {stem}[.gz] in {directory}")


def load_mnist(directory: str | Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(images N x 28 x 28 uint8, labels N uint8) from the t10k IDX files in ``directory``."""
    d = Path(directory) if directory else default_mnist_dir()
    if not d.is_dir():
        raise ValueError(f"option 'data': {d} is not a directory")
    images = read_idx(_find(d, "t10k-images-idx3-ubyte"))
    labels = read_idx(_find(d, "t10k-labels-idx1-ubyte"))
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise ValueError(f"option 'data': {d} holds images {images.shape} and labels {labels.shape}, which do not pair")
    return images, labels


def split_indices(labels: np.ndarray, split: str) -> np.ndarray:
    """Indices of the Split-MNIST 'stream' (80 %) or 'test' (20 %) part, or all."""
    if split == "all":
        return np.arange(len(labels))
    rng = np.random.default_rng(0)
    chosen = []
    for digit in range(10):
        idx = np.flatnonzero(labels == digit)
        perm = idx[rng.permutation(len(idx))]
        cut = int(math.floor(0.8 * len(idx)))
        chosen.append(perm[:cut] if split == "stream" else perm[cut:])
    return np.sort(np.concatenate(chosen))


class DigitsRenderer:
    """Draws label cards with MNIST digits in a fixed ROI."""

    NAME = "digits"
    ALL_CLASSES = _DIGITS
    DEFAULT_PRIORS: dict[str, float] = {}
    OPTIONS = {"data": "IDX directory", "classes": "initial digits, e.g. 0-4", "split": "all|stream|test"}

    @classmethod
    def check_options(cls, options: dict[str, Any]) -> dict[str, Any]:
        """Validate and normalise renderer options; errors name the key."""
        out: dict[str, Any] = {"data": options.get("data"), "split": str(options.get("split", "all"))}
        if out["split"] not in ("all", "stream", "test"):
            raise ValueError(f"option 'split': expected all, stream or test, got {out['split']!r}")
        classes = options.get("classes")
        if classes is None:
            out["classes"] = list(_DIGITS)
        else:
            text = "/".join(str(c) for c in classes) if isinstance(classes, (list, tuple)) else str(classes)
            try:
                names = expand_classes(text, "classes")
            except ValueError as exc:
                raise ValueError(f"option 'classes': {exc}") from None
            for n in names:
                if n not in _DIGITS:
                    raise ValueError(f"option 'classes': {n!r} is not a digit 0-9")
            out["classes"] = [d for d in _DIGITS if d in names]
        return out

    @classmethod
    def initial_classes(cls, options: dict[str, Any]) -> list[str]:
        return list(options["classes"])

    def __init__(self, width: int, height: int, seed: int, options: dict[str, Any] | None = None) -> None:
        options = self.check_options(options or {})
        data_dir = str(Path(options["data"]).resolve()) if options["data"] else str(default_mnist_dir())
        images, labels = cached(("mnist", data_dir), lambda: load_mnist(data_dir))
        keep = cached(("mnist-split", data_dir, options["split"]), lambda: split_indices(labels, options["split"]))
        self.images = images
        self.by_class = {str(d): keep[labels[keep] == d] for d in range(10)}
        self.width = width
        self.height = height
        side = max(32, int(round(min(width, height) * 128 / 240)))
        self.roi = ((width - side) // 2, (height - side) // 2, side, side)
        self.scale = side / 128.0
        self.background, self.noise = cached(
            ("digits", width, height, seed),
            lambda: (
                self._build_background(np.random.default_rng([seed, 0xD161])),
                NoiseTile(width, height, seed, sigma=4.0),
            ),
        )

    def _build_background(self, rng: np.random.Generator) -> np.ndarray:
        """Painted housing with a recessed window where labels pass by."""
        w, h = self.width, self.height
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        grain = cv2.GaussianBlur(rng.normal(0, 1, (h, w)).astype(np.float32), (0, 0), 2.0)
        blotch = cv2.GaussianBlur(rng.normal(0, 1, (h, w)).astype(np.float32), (0, 0), 12.0)
        base = 95 + 6 * grain + 40 * blotch - 25 * (yy / h)
        img = np.dstack([base * 1.08, base * 0.98, base * 0.9])
        x0, y0, side, _ = self.roi
        pad = int(14 * self.scale)
        cv2.rectangle(img, (x0 - pad, y0 - pad), (x0 + side + pad, y0 + side + pad), (45, 45, 48), -1)
        cv2.rectangle(img, (x0 - pad, y0 - pad), (x0 + side + pad, y0 + side + pad), (150, 150, 155), 2, cv2.LINE_AA)
        for sx, sy in ((-1, -1), (1, -1), (-1, 1), (1, 1)):
            cx = int(x0 + side / 2 + sx * (side / 2 + pad * 2.2))
            cy = int(y0 + side / 2 + sy * (side / 2 + pad * 0.6))
            if 0 <= cx < w and 0 <= cy < h:
                cv2.circle(img, (cx, cy), int(5 * self.scale), (170, 170, 175), -1, cv2.LINE_AA)
                cv2.circle(img, (cx, cy), int(5 * self.scale), (60, 60, 60), 1, cv2.LINE_AA)
        return np.clip(img, 0, 255).astype(np.uint8)

    def render(self, cls: str, rng: np.random.Generator, index: int) -> tuple[np.ndarray, dict[str, Any]]:
        """Frame ``index`` showing digit ``cls``; returns (BGR image, info extras)."""
        pool = self.by_class.get(cls)
        if pool is None or len(pool) == 0:
            raise ValueError(f"digits: no images of class {cls!r} in this split")
        img_idx = int(pool[int(rng.integers(len(pool)))])
        img = self.background.copy()
        x0, y0, side, _ = self.roi
        roi = img[y0 : y0 + side, x0 : x0 + side]

        # Card: light paper with a tint, offset a little, with a soft shadow edge.
        off = rng.integers(-4, 5, 2) * self.scale
        inset = int(6 * self.scale)
        p0 = (int(inset + off[0]), int(inset + off[1]))
        p1 = (int(side - inset + off[0]), int(side - inset + off[1]))
        cv2.rectangle(roi, (p0[0] + 2, p0[1] + 3), (p1[0] + 2, p1[1] + 3), (25, 25, 25), -1)
        paper = np.array([rng.uniform(200, 245)] * 3) + rng.normal(0, 8, 3)
        paper = np.clip(paper, 150, 255)
        cv2.rectangle(roi, p0, p1, tuple(float(v) for v in paper), -1)

        # Digit: scale the 28x28 glyph to 84-112 px (at 320x240), rotate, jitter.
        size = rng.uniform(84, 112) * self.scale
        angle = rng.uniform(-12, 12)
        m = cv2.getRotationMatrix2D((14, 14), angle, size / 28)
        jit = rng.uniform(-1, 1, 2) * max(0.0, (side - size) / 2 + 4 * self.scale)
        m[:, 2] += (side / 2 - 14 + jit[0] + off[0], side / 2 - 14 + jit[1] + off[1])
        glyph = cv2.warpAffine(self.images[img_idx], m, (side, side), flags=cv2.INTER_LINEAR)
        inks = [(30, 30, 30), (120, 40, 20), (30, 30, 150), (40, 90, 30), (90, 40, 100)]
        ink = np.array(inks[int(rng.integers(len(inks)))], np.float32) + rng.normal(0, 10, 3)
        a = glyph.astype(np.float32) * (rng.uniform(0.75, 1.0) / 255.0)
        region = roi.astype(np.float32)
        roi[:] = np.clip(region + (ink - region) * a[:, :, None], 0, 255).astype(np.uint8)
        self.noise.add(img, self.noise.sigma, rng)
        return img, {"mnist_index": img_idx}
