"""A drift signal from unlabelled frames: recent confidence/entropy versus a reference window.

Labels arrive late (or never) at the edge, so the one thing it can watch for free is how sure the model
is. After a model swap (``reset()``), the first ``reference`` frames define what "normal" looks like for
this model on this camera; afterwards a rolling window of the last ``window`` frames is compared with it.

The score is a standardised effect size, ``(mean_recent - mean_ref) / std_ref``, taken on confidence
(max probability, a drop is bad) and on normalised entropy (a rise is bad); the larger of the two "bad"
directions is the score. An effect size rather than a z-test on the mean: consecutive frames are
strongly autocorrelated, so a standard error of ``std/sqrt(n)`` would call every small wobble
"significant". Hysteresis (on at ``threshold``, off at ``threshold * release``) keeps the sampler boost
from flapping. While drift is active the sampler may multiply selection probabilities by ``boost``
(more uploads exactly when the model is being surprised; the boost is inside the reported ``p_select``,
so importance weights stay correct).
"""
from __future__ import annotations

import math
import threading
from collections import deque
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class DriftConfig:
    """Window sizes (frames) and the detection threshold (in reference standard deviations)."""

    enabled: bool = True
    reference: int = 300
    window: int = 300
    threshold: float = 1.0
    release: float = 0.5
    boost: float = 2.0  # sampler probability multiplier while drift is active (1.0 = no boost)
    min_std: float = 0.02  # floor on the reference std so a near-constant reference cannot explode the score


class _Moments:
    """Running sum and sum of squares of the reference window (enough for its mean and std)."""

    __slots__ = ("n", "s", "ss")

    def __init__(self) -> None:
        self.n = 0
        self.s = 0.0
        self.ss = 0.0

    def add(self, x: float) -> None:
        self.n += 1
        self.s += x
        self.ss += x * x

    @property
    def mean(self) -> float:
        return self.s / self.n if self.n else float("nan")

    @property
    def std(self) -> float:
        if self.n < 2:
            return float("nan")
        var = (self.ss - self.s * self.s / self.n) / (self.n - 1)
        return math.sqrt(max(var, 0.0))


class DriftMonitor:
    """Feed it per-frame (confidence, entropy); read ``score``, ``active`` and ``boost``."""

    def __init__(self, config: DriftConfig | None = None) -> None:
        self.config = config or DriftConfig()
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        """Start a new reference (call after every model swap: a new model has its own normal)."""
        with getattr(self, "_lock", threading.Lock()):
            self._ref_c = _Moments()
            self._ref_h = _Moments()
            self._rec: deque[tuple[float, float]] = deque()
            self._rec_sc = 0.0  # sums of confidence / entropy over the recent window
            self._rec_sh = 0.0
            self._active = False
            self._score = 0.0
            self._ref: tuple[float, float, float, float] | None = None  # (mean_c, std_c, mean_h, std_h) once full
            self.frames = 0

    def update(self, confidence: np.ndarray | float, entropy: np.ndarray | float) -> bool:
        """Add one frame or a batch (arrays of equal length); returns whether drift is active."""
        if not self.config.enabled:
            return False
        if isinstance(confidence, float) and isinstance(entropy, float):
            with self._lock:  # per-frame fast path: no list, no numpy
                self._add(confidence, entropy)
                self._recompute()
                return self._active
        c = np.atleast_1d(np.asarray(confidence, dtype=np.float64))
        h = np.atleast_1d(np.asarray(entropy, dtype=np.float64))
        with self._lock:
            for ci, hi in zip(c.tolist(), h.tolist()):
                self._add(ci, hi)
            self._recompute()
            return self._active

    def _add(self, ci: float, hi: float) -> None:
        self.frames += 1
        if self._ref_c.n < self.config.reference:
            self._ref_c.add(ci)
            self._ref_h.add(hi)
            return
        # The recent window needs only running sums (its mean): plain floats, no method calls per frame.
        rec = self._rec
        rec.append((ci, hi))
        self._rec_sc += ci
        self._rec_sh += hi
        if len(rec) > self.config.window:
            oc, oh = rec.popleft()
            self._rec_sc -= oc
            self._rec_sh -= oh

    def _recompute(self) -> None:
        cfg = self.config
        # Judge only on a full recent window: a half-filled one is noisy and would trip right after a swap.
        n = len(self._rec)
        if n < cfg.window or self._ref_c.n < cfg.reference:
            self._score = 0.0
            self._active = False
            return
        if self._ref is None:  # the reference is frozen once full: its moments are computed once
            self._ref = (self._ref_c.mean, max(self._ref_c.std, cfg.min_std),
                         self._ref_h.mean, max(self._ref_h.std, cfg.min_std))
        mc, sc, mh, sh = self._ref
        d_conf = (mc - self._rec_sc / n) / sc  # confidence falling -> positive
        d_ent = (self._rec_sh / n - mh) / sh  # entropy rising -> positive
        score = d_conf if d_conf > d_ent else d_ent
        self._score = score
        self._active = score >= (cfg.threshold * cfg.release if self._active else cfg.threshold)

    @property
    def score(self) -> float:
        return self._score

    @property
    def active(self) -> bool:
        return self._active

    @property
    def boost(self) -> float:
        """Multiplier for the sampler: ``config.boost`` while drift is active, else 1."""
        return self.config.boost if self._active else 1.0

    def stats(self) -> dict[str, float | int | bool]:
        """Figures for the stats topic."""
        with self._lock:
            n = len(self._rec)
            ref_c = self._ref_c.mean
            rec_c = self._rec_sc / n if n else float("nan")
            rec_h = self._rec_sh / n if n else float("nan")
            rel = (rec_c - ref_c) / ref_c if n and ref_c and not math.isnan(ref_c) else 0.0
            return {
                "frames": self.frames,
                "ref_n": self._ref_c.n,
                "recent_n": len(self._rec),
                "ref_confidence": _r(ref_c),
                "recent_confidence": _r(rec_c),
                "ref_entropy": _r(self._ref_h.mean),
                "recent_entropy": _r(rec_h),
                "confidence_rel_change": _r(rel),
                "score": _r(self._score),
                "active": self._active,
                "boost": self.boost,
            }


def _r(x: float) -> float | None:
    return None if x is None or math.isnan(x) else round(float(x), 5)
