"""Near-duplicate detection against the last N *uploaded* frames, so a static scene does not burn the budget.

Two fingerprints are offered, both computed from a tiny greyscale thumbnail so the cost per frame is a
few microseconds when the caller passes the already-resized model input (``EdgeModel.prepare().small``):

* ``"thumb"`` (default): a 16x16 grey thumbnail, duplicate when the mean absolute difference to a
  remembered upload is <= ``mad_threshold`` grey levels. Robust to sensor noise on flat scenes, where the
  per-pixel sign flips that noise causes make gradient hashes unstable.
* ``"dhash"``: a 64-bit difference hash (9x8 thumbnail, sign of horizontal gradients), duplicate when the
  Hamming distance is <= ``hamming_threshold`` bits. Robust to global brightness changes (auto exposure).

Memory is bounded: the last ``history`` uploads, each forgotten after ``ttl_s`` seconds, so a scene that
stays still for a long time is re-sampled at most once per ``ttl_s`` (fresh evidence that it is unchanged).

Where dedup sits relative to the random draw (and what that does to importance weights) is decided and
documented in ``edge.sampler``: it is applied *before* the draw, as a factor on ``p_select``.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Literal

import cv2
import numpy as np

Method = Literal["thumb", "dhash"]


@dataclass(frozen=True)
class DedupConfig:
    """How near two frames must be to count as the same scene."""

    enabled: bool = True
    method: Method = "thumb"
    history: int = 32  # how many recent uploads to compare against
    ttl_s: float = 300.0  # an upload older than this no longer suppresses anything
    mad_threshold: float = 4.0  # "thumb": mean |diff| in grey levels (0..255)
    hamming_threshold: int = 6  # "dhash": differing bits out of 64
    thumb_size: int = 16


def _grey(image: np.ndarray) -> np.ndarray:
    img = np.asarray(image)
    if img.ndim == 3 and img.shape[2] == 3:
        return cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
    if img.ndim == 3 and img.shape[2] == 1:
        return img[:, :, 0]
    if img.ndim == 2:
        return img
    raise ValueError(f"expected an HxW or HxWx3 image, got shape {img.shape}")


def thumbnail(image: np.ndarray, size: int = 16) -> np.ndarray:
    """A small uint8 grey thumbnail of about ``size`` px a side (INTER_AREA: a box filter that averages noise).

    When an integer reduction factor k gives at most ``size`` px and divides both sides exactly, the
    thumbnail is ``(h/k, w/k)`` (OpenCV's fast integer INTER_AREA path, ~1 us for a 28x28 or 64x64 model
    input); otherwise exactly ``size x size``. Fingerprints of different shapes never compare equal, and
    the deduplicator starts afresh when the shape changes (a model swap with another input size).
    """
    g = _grey(image)
    if g.dtype != np.uint8:
        g = np.clip(g, 0, 255).astype(np.uint8)
    h, w = g.shape
    k = max(1, -(-max(h, w) // size))
    if h % k == 0 and w % k == 0:
        if k == 1:
            return np.ascontiguousarray(g)
        return cv2.resize(g, (w // k, h // k), interpolation=cv2.INTER_AREA)
    return cv2.resize(g, (size, size), interpolation=cv2.INTER_AREA)


def dhash(image: np.ndarray) -> int:
    """64-bit difference hash: 9x8 grey thumbnail, bit = (left pixel > right pixel)."""
    g = _grey(image)
    small = cv2.resize(g, (9, 8), interpolation=cv2.INTER_AREA).astype(np.int16)
    bits = (small[:, :-1] > small[:, 1:]).ravel()
    return int(np.packbits(bits).view(">u8")[0])


def hamming(a: int, b: int) -> int:
    """Number of differing bits between two 64-bit hashes."""
    return (a ^ b).bit_count()


class Deduplicator:
    """Remembers fingerprints of recent uploads and answers "is this frame a near-duplicate of one?".

    ``is_duplicate`` does not remember the frame; ``remember`` is called only for frames actually
    selected, so that suppression is measured against what the trainer has already received.
    Thread-safe (a lock), although the frame loop is its only normal caller.
    """

    def __init__(self, config: DedupConfig | None = None) -> None:
        self.config = config or DedupConfig()
        self._lock = threading.Lock()
        self.checked = 0
        self.duplicates = 0
        self._n = max(1, self.config.history)
        # Ring buffers (fingerprints as rows, upload times): comparing a frame is one vectorised op over
        # at most ``history`` rows, with no per-frame stacking of Python lists.
        self._thumbs: np.ndarray | None = None
        self._hashes = np.zeros(self._n, dtype=np.uint64)
        self._times = np.full(self._n, -np.inf)
        self._next = 0

    def fingerprint(self, image: np.ndarray) -> object:
        """The fingerprint the configured method compares (a flat uint8 thumbnail or a 64-bit int)."""
        if self.config.method == "dhash":
            return dhash(image)
        return thumbnail(image, self.config.thumb_size).ravel()

    def is_duplicate(self, fp: object, now: float) -> bool:
        """True when ``fp`` is within the threshold of any remembered upload younger than ``ttl_s``."""
        if not self.config.enabled:
            return False
        with self._lock:
            self.checked += 1
            live = self._times >= now - self.config.ttl_s
            if not live.any():
                return False
            if self.config.method == "dhash":
                x = np.bitwise_xor(self._hashes[live], np.uint64(int(fp)))  # type: ignore[call-overload]
                bits = np.unpackbits(x.view(np.uint8)).reshape(-1, 64).sum(axis=1)
                dup = bool(bits.min() <= self.config.hamming_threshold)
            else:
                t = np.asarray(fp)
                if self._thumbs is None or self._thumbs.shape[1] != t.size:
                    return False  # nothing comparable remembered (new model input size)
                diff = np.abs(self._thumbs[live].astype(np.int16) - t.astype(np.int16))
                dup = bool(diff.mean(axis=1).min() <= self.config.mad_threshold)
            if dup:
                self.duplicates += 1
            return dup

    def remember(self, fp: object, now: float) -> None:
        """Record an uploaded frame's fingerprint (overwrites the oldest when ``history`` are held)."""
        if not self.config.enabled:
            return
        with self._lock:
            i = self._next
            if self.config.method == "dhash":
                self._hashes[i] = np.uint64(int(fp))  # type: ignore[call-overload]
            else:
                t = np.asarray(fp, dtype=np.uint8).ravel()
                if self._thumbs is None or self._thumbs.shape[1] != t.size:
                    self._thumbs = np.zeros((self._n, t.size), dtype=np.uint8)
                    self._times[:] = -np.inf
                self._thumbs[i] = t
            self._times[i] = now
            self._next = (i + 1) % self._n

    def clear(self) -> None:
        """Forget every upload (e.g. after a model swap, when the same scene is worth asking about again)."""
        with self._lock:
            self._times[:] = -np.inf

    def stats(self) -> dict[str, int]:
        return {"checked": self.checked, "duplicates": self.duplicates, "remembered": int(np.isfinite(self._times).sum())}
