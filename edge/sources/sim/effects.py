"""Pixel-level drifts (lighting, colour cast, contrast, defocus, sensor noise,
camera rotation) applied to a rendered frame.

Each effect is one or two cheap OpenCV calls on the whole frame so that a
drifting stream still renders at >= 1,000 frames/s: gain, cast and contrast
fold into a single ``cv2.transform`` matrix; defocus is two box filters (close
to a Gaussian, several times cheaper); noise adds and subtracts slices of a
precomputed noise tile chosen by the per-frame RNG.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from .assets import cached
from .drift import Drift

__all__ = ["NoiseTile", "Effects"]


class NoiseTile:
    """Precomputed zero-mean Gaussian noise, split into positive and negative
    uint8 halves so that adding noise is two saturating uint8 ops on contiguous
    row slices (no float conversion per frame)."""

    def __init__(self, width: int, height: int, seed: int, sigma: float = 8.0, rows: int = 256) -> None:
        rng = np.random.default_rng([seed, 0x4E015E, int(sigma * 100)])
        self.sigma = sigma
        noise = rng.standard_normal((height + rows, width, 3), dtype=np.float32) * sigma
        self.pos = np.clip(noise, 0, 255).astype(np.uint8)
        self.neg = np.clip(-noise, 0, 255).astype(np.uint8)
        self.height = height
        self.rows = rows

    def add(self, img: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
        """Add noise of standard deviation ``sigma`` (grey levels) to ``img`` in place."""
        if sigma <= 0.05:
            return img
        a, b = rng.integers(0, self.rows, size=2)
        pos = self.pos[a : a + self.height]
        neg = self.neg[b : b + self.height]
        if abs(sigma - self.sigma) > 0.05:
            scale = sigma / self.sigma
            pos = cv2.convertScaleAbs(pos, alpha=scale)
            neg = cv2.convertScaleAbs(neg, alpha=scale)
        cv2.add(img, pos, dst=img)
        cv2.subtract(img, neg, dst=img)
        return img


class Effects:
    """Applies the photometric drifts of a scenario to frames."""

    def __init__(self, drifts: list[Drift], width: int, height: int, seed: int) -> None:
        self.drifts = [d for d in drifts if d.kind in ("brightness", "contrast", "cast", "blur", "noise", "rotate")]
        self.width = width
        self.height = height
        self._noise: NoiseTile | None = None
        self._seed = seed

    def active(self, i: int) -> list[tuple[Drift, float]]:
        """Photometric drifts with non-zero strength at frame ``i``."""
        out = []
        for d in self.drifts:
            s = d.strength(i)
            if s > 0:
                out.append((d, s))
        return out

    def apply(self, img: np.ndarray, active: list[tuple[Drift, float]], rng: np.random.Generator) -> np.ndarray:
        """Return ``img`` with the active drifts applied (order: camera pose, optics,
        illumination/colour, then sensor noise, as a real camera would)."""
        if not active:
            return img
        angle = 0.0
        blur2 = 0.0
        noise2 = 0.0
        gains = np.ones(3, dtype=np.float64)
        contrast = 1.0
        for d, s in active:
            if d.kind == "rotate":
                angle += d.value * s
            elif d.kind == "blur":
                blur2 += (d.value * s) ** 2
            elif d.kind == "noise":
                noise2 += (d.value * s) ** 2
            elif d.kind == "brightness":
                gains *= 1.0 + d.value * s
            elif d.kind == "cast":
                gains *= 1.0 + (np.asarray(d.value) - 1.0) * s
            elif d.kind == "contrast":
                contrast *= 1.0 + (d.value - 1.0) * s
        h, w = img.shape[:2]
        if abs(angle) > 1e-3:
            m = cv2.getRotationMatrix2D((w / 2.0, h / 2.0), angle, 1.0)
            img = cv2.warpAffine(img, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
        if blur2 > 0.04:
            sigma = math.sqrt(blur2)
            if sigma < 0.9:
                img = cv2.GaussianBlur(img, (3, 3), sigma)
            else:
                # Two box passes of odd width k ~ a Gaussian of variance (k^2 - 1) / 6,
                # several times cheaper; sigma therefore moves in steps of ~0.8 px.
                k = max(3, int(round(math.sqrt(6.0 * blur2 + 1.0))) | 1)
                img = cv2.blur(cv2.blur(img, (k, k)), (k, k))
        if contrast != 1.0 or np.any(gains != 1.0):
            # out_c = 128 + (x_c * g_c - 128) * contrast, saturated to uint8.
            m = np.zeros((3, 4), dtype=np.float32)
            for c in range(3):
                m[c, c] = gains[c] * contrast
                m[c, 3] = 128.0 * (1.0 - contrast)
            img = cv2.transform(img, m)
        if noise2 > 0:
            if self._noise is None:
                self._noise = cached(("noise", w, h, self._seed), lambda: NoiseTile(w, h, self._seed))
            img = self._noise.add(np.ascontiguousarray(img), math.sqrt(noise2), rng)
        return img
