"""The label-budget experiment's parts: the edge's selection rule restated for the trainer, and the
compute policy that keeps every run at K optimiser steps per arriving minibatch of 10."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from edge import uncertainty as edge_uncertainty
from trainer import learning_bench as lb
from trainer.datasets import SplitMNIST, make_split_mnist


@pytest.mark.parametrize("kind", ["least_confidence", "margin", "entropy"])
def test_uncertainty_score_is_the_edges(kind: str) -> None:
    """The trainer may not import edge, so the scores are restated; they must stay the same formulas."""
    p = np.random.default_rng(0).dirichlet(np.full(10, 0.3), size=200)
    assert np.allclose(lb.uncertainty_score(p, kind), edge_uncertainty.score(p, kind), atol=1e-12)


def test_edge_p_select_hits_the_fraction_and_favours_uncertain_samples() -> None:
    u = np.random.default_rng(1).uniform(0, 1, 1000)
    for fraction in (0.1, 0.2, 0.5):
        p = lb.edge_p_select(u, fraction)
        assert p.mean() == pytest.approx(fraction, abs=0.01)
        assert p.min() >= lb.BUDGET_P_MIN and p.max() <= 1.0
        order = np.argsort(u)
        assert np.all(np.diff(p[order]) >= -1e-12)  # never less likely for being more uncertain
    assert np.all(lb.edge_p_select(u, 1.0) == 1.0)


@pytest.fixture(scope="module")
def small_stream() -> SplitMNIST:
    """The real Split-MNIST stream cut to 60 samples per experience (the bench's code path, seconds not minutes)."""
    full = make_split_mnist(order_seed=0)
    return SplitMNIST([(x[:60], y[:60]) for x, y in full.experiences], full.classes, full.test_x[:200], full.test_y[:200])


def test_time_policy_spends_the_same_steps_whatever_the_fraction(small_stream: SplitMNIST) -> None:
    torch.set_num_threads(1)
    full = lb.run_budget_one(small_stream, 0, 1.0, "all", True, steps=2)
    part = lb.run_budget_one(small_stream, 0, 0.2, "edge", True, steps=2)
    label = lb.run_budget_one(small_stream, 0, 0.2, "uniform", False, steps=2, compute="label")
    minibatches = small_stream.stream_size // lb.MINIBATCH
    assert full["optimizer_steps"] == 2 * minibatches and full["replay_only_steps"] == 0
    assert full["labelled"] == small_stream.stream_size
    # 20 %: fewer labelled updates, the rest of the ticks rehearse; the first ticks of the stream have an
    # empty memory (nothing to rehearse), so a few steps fewer than at 100 %.
    assert 0.1 < part["labelled_fraction"] < 0.35 and part["updates"] < full["updates"]
    assert part["replay_only_steps"] > 0
    assert 2 * minibatches - 10 <= part["optimizer_steps"] <= 2 * minibatches
    # The "label" policy: compute proportional to labels, no rehearsal.
    assert label["replay_only_steps"] == 0 and label["optimizer_steps"] == 2 * label["updates"]


def test_full_budget_run_is_the_learning_benchmarks_iw_er_run(small_stream: SplitMNIST) -> None:
    """bench all takes the label budget's 100 % reference from the learning benchmark's iw-er runs."""
    torch.set_num_threads(1)
    budget = lb.run_budget_one(small_stream, 1, 1.0, "all", True, steps=2)
    learning = lb.run_strategy("iw-er", small_stream, 1, steps=2)
    assert budget["final_acc"] == learning["final_acc"] and budget["forgetting"] == learning["forgetting"]
