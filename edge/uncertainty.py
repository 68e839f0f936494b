"""Uncertainty scores on class probabilities, all in [0, 1] where 1 means "most uncertain".

Every score is vectorised over a batch (shape ``(N, K)``), and a single probability vector ``(K,)`` is
accepted and gives a scalar-shaped ``(1,)`` result, so the frame loop can score micro-batches in one call.
Keeping all three on the same [0, 1] scale lets the sampler's threshold/temperature be configured once
regardless of the kind or of the number of classes K (a new model with more classes must not silently
change the selection rate, hence entropy is normalised by ``log K``).
"""
from __future__ import annotations

import math
from typing import Literal, Protocol, Sequence

import numpy as np

Kind = Literal["least_confidence", "margin", "entropy"]
KINDS: tuple[str, ...] = ("least_confidence", "margin", "entropy")

_EPS = 1e-12


def _as_batch(probs: np.ndarray) -> np.ndarray:
    """View the input as float64 ``(N, K)``; float64 because entropy of near-one-hot rows loses digits in float32."""
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim == 1:
        p = p[None, :]
    if p.ndim != 2 or p.shape[1] < 1:
        raise ValueError(f"probabilities must have shape (N, K) or (K,), got {p.shape}")
    return p


def least_confidence(probs: np.ndarray) -> np.ndarray:
    """``(1 - max p) * K / (K - 1)``: 0 for a one-hot row, 1 for the uniform row.

    The ``K/(K-1)`` factor rescales the natural range [0, 1 - 1/K] onto [0, 1].
    """
    p = _as_batch(probs)
    k = p.shape[1]
    if k == 1:
        return np.zeros(p.shape[0])
    lc = (1.0 - p.max(axis=1)) * (k / (k - 1.0))
    return np.clip(lc, 0.0, 1.0)


def margin(probs: np.ndarray) -> np.ndarray:
    """``1 - (p_top1 - p_top2)``: 1 when the two best classes tie, 0 when one class has all the mass."""
    p = _as_batch(probs)
    if p.shape[1] == 1:
        return np.zeros(p.shape[0])
    # partition is O(K) per row, cheaper than a full sort for wide heads.
    top2 = np.partition(p, p.shape[1] - 2, axis=1)[:, -2:]
    return np.clip(1.0 - (top2[:, 1] - top2[:, 0]), 0.0, 1.0)


def entropy(probs: np.ndarray) -> np.ndarray:
    """Shannon entropy divided by ``log K`` so it lies in [0, 1] whatever the number of classes."""
    p = _as_batch(probs)
    k = p.shape[1]
    if k == 1:
        return np.zeros(p.shape[0])
    pc = np.clip(p, _EPS, 1.0)
    h = -(p * np.log(pc)).sum(axis=1)
    return np.clip(h / np.log(k), 0.0, 1.0)


_FUNCS = {"least_confidence": least_confidence, "margin": margin, "entropy": entropy}


def score(probs: np.ndarray, kind: str = "entropy") -> np.ndarray:
    """Score a batch of probability rows with the named uncertainty measure (``KINDS``)."""
    try:
        fn = _FUNCS[kind]
    except KeyError:
        raise ValueError(f"unknown uncertainty kind {kind!r}; known: {', '.join(KINDS)}") from None
    return fn(probs)


def score_prediction(pred: "PredictionLike", kind: str = "entropy") -> float:
    """The score of an ``edge.model.Prediction`` from what it already carries (the frame loop's path).

    Entropy was computed with the softmax; least-confidence and margin need only the top one or two
    probabilities. Falls back to ``score_one`` on the full vector when top-k holds fewer than two classes.
    """
    if kind == "entropy":
        return pred.entropy
    k = len(pred.probs)
    if k <= 1:
        return 0.0
    if kind == "least_confidence":
        return min(max((1.0 - pred.confidence) * k / (k - 1.0), 0.0), 1.0)
    if kind == "margin" and len(pred.topk) >= 2:
        return min(max(1.0 - (pred.topk[0][1] - pred.topk[1][1]), 0.0), 1.0)
    return score_one(pred.probs, kind)


class PredictionLike(Protocol):
    """What ``score_prediction`` reads (``edge.model.Prediction``; a Protocol avoids a circular import)."""

    probs: np.ndarray
    confidence: float
    topk: list[tuple[str, float]]
    entropy: float


def score_one(probs: Sequence[float] | np.ndarray, kind: str = "entropy") -> float:
    """The same scores for one probability row, in plain Python.

    The frame loop scores one frame at a time against a ~150 us inference; for the usual small heads a
    Python loop over a list costs ~1-2 us where the vectorised path's numpy calls cost ~6 us.
    """
    row = probs.tolist() if isinstance(probs, np.ndarray) else list(probs)
    if isinstance(row[0], list):
        row = row[0]
    k = len(row)
    if k <= 1:
        return 0.0
    if kind == "entropy":
        h = 0.0
        for v in row:
            if v > 0.0:
                h -= v * math.log(v)
        return min(max(h / math.log(k), 0.0), 1.0)
    if kind == "least_confidence":
        return min(max((1.0 - max(row)) * k / (k - 1.0), 0.0), 1.0)
    if kind == "margin":
        a = b = -1.0
        for v in row:
            if v > a:
                a, b = v, a
            elif v > b:
                b = v
        return min(max(1.0 - (a - b), 0.0), 1.0)
    raise ValueError(f"unknown uncertainty kind {kind!r}; known: {', '.join(KINDS)}")
