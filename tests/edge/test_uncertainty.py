"""Uncertainty scores on hand-made probability arrays: ranges, extremes, batch shape, K-independence."""
from __future__ import annotations

import math

import numpy as np
import pytest

from edge import uncertainty as U


def test_extremes_one_hot_and_uniform() -> None:
    one_hot = np.array([[0.0, 1.0, 0.0, 0.0]])
    uniform = np.full((1, 4), 0.25)
    for kind in U.KINDS:
        assert U.score(one_hot, kind)[0] == pytest.approx(0.0, abs=1e-9), kind
        assert U.score(uniform, kind)[0] == pytest.approx(1.0, abs=1e-9), kind


def test_hand_values() -> None:
    p = np.array([[0.7, 0.2, 0.1], [0.4, 0.4, 0.2]])
    # least confidence rescaled by K/(K-1) = 1.5
    assert U.least_confidence(p) == pytest.approx([0.3 * 1.5, 0.6 * 1.5])
    assert U.margin(p) == pytest.approx([1 - 0.5, 1.0])
    h0 = -(0.7 * math.log(0.7) + 0.2 * math.log(0.2) + 0.1 * math.log(0.1)) / math.log(3)
    h1 = -(2 * 0.4 * math.log(0.4) + 0.2 * math.log(0.2)) / math.log(3)
    assert U.entropy(p) == pytest.approx([h0, h1])


def test_vectorised_and_single_row() -> None:
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(1000, 7)) * 3
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    for kind in U.KINDS:
        s = U.score(p, kind)
        assert s.shape == (1000,)
        assert np.all((s >= 0) & (s <= 1))
        assert U.score(p[3], kind).shape == (1,)
        assert U.score(p[3], kind)[0] == pytest.approx(s[3])


def test_entropy_normalised_independent_of_k() -> None:
    for k in (2, 10, 100):
        assert U.entropy(np.full(k, 1.0 / k))[0] == pytest.approx(1.0)


def test_monotone_in_confidence() -> None:
    rows = np.array([[0.9, 0.05, 0.05], [0.6, 0.3, 0.1], [0.4, 0.35, 0.25]])
    for kind in U.KINDS:
        s = U.score(rows, kind)
        assert s[0] < s[1] < s[2], kind


def test_unknown_kind_and_bad_shape() -> None:
    with pytest.raises(ValueError, match="unknown uncertainty kind"):
        U.score(np.full((1, 2), 0.5), "nope")
    with pytest.raises(ValueError):
        U.entropy(np.zeros((2, 2, 2)))


def test_score_one_matches_vectorised() -> None:
    rng = np.random.default_rng(3)
    p = rng.dirichlet(np.ones(6), size=50)
    for kind in U.KINDS:
        vec = U.score(p, kind)
        assert [U.score_one(row, kind) for row in p] == pytest.approx(vec.tolist(), abs=1e-9)
        assert U.score_one(p[:1], kind) == pytest.approx(vec[0])


def test_score_prediction_matches_score_one() -> None:
    """The frame loop scores from what a Prediction carries; it must equal scoring the full vector."""
    from types import SimpleNamespace

    rng = np.random.default_rng(3)
    for k in (2, 3, 10):
        for _ in range(50):
            p = rng.dirichlet(np.full(k, 0.3))
            order = np.argsort(-p)
            for topk in (1, min(3, k)):
                pred = SimpleNamespace(probs=p, confidence=float(p.max()), entropy=float(U.entropy(p)[0]),
                                       topk=[(str(i), float(p[i])) for i in order[:topk]])
                for kind in U.KINDS:
                    assert U.score_prediction(pred, kind) == pytest.approx(U.score_one(p, kind), abs=1e-9), (k, topk, kind)
