"""The label-budget experiment's parts: the edge's own selection rule, and the compute policy that keeps
every run at K optimiser steps per arriving minibatch of 10."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from bench import label_budget as lbud
from edge.sampler import Sampler, SamplerConfig
from trainer import learning_bench as lb
from trainer.datasets import SplitMNIST, make_split_mnist


def test_the_benchmark_selects_with_the_edges_curve() -> None:
    """At the fraction the edge's default curve itself gives, the benchmark's p_select is the edge's
    p_base, computed by the sampler a device runs (the scale, standing in for the budget, is then 1)."""
    u = np.random.default_rng(1).uniform(0, 1, 1000)
    edge = Sampler(SamplerConfig())
    p_edge = np.array([edge.p_base(float(x)) for x in u])
    assert np.allclose(lbud.edge_p_select(u, float(p_edge.mean())), p_edge, rtol=1e-9, atol=0)
    probs = np.random.default_rng(0).dirichlet(np.full(10, 0.3), size=5)
    top2 = np.sort(probs, axis=1)[:, -2:]
    assert np.allclose(lbud.uncertainty_score(probs), 1.0 - (top2[:, 1] - top2[:, 0]))  # the edge's margin
    assert np.allclose(lbud.uncertainty_score(probs, "raw_least_confidence"), 1.0 - probs.max(1))


def test_edge_p_select_hits_the_fraction_and_favours_uncertain_samples() -> None:
    u = np.random.default_rng(1).uniform(0, 1, 1000)
    for fraction in (0.1, 0.2, 0.5):
        p = lbud.edge_p_select(u, fraction)
        assert p.mean() == pytest.approx(fraction, abs=0.01)
        assert p.min() >= lbud.BUDGET_P_MIN and p.max() <= 1.0
        order = np.argsort(u)
        assert np.all(np.diff(p[order]) >= -1e-12)  # never less likely for being more uncertain
    assert np.all(lbud.edge_p_select(u, 1.0) == 1.0)


K2 = lbud.BudgetSettings(steps=2)


def test_settings_name_a_bad_compute_policy() -> None:
    with pytest.raises(ValueError, match="compute must be one of"):
        lbud.BudgetSettings(compute="labels")


@pytest.fixture(scope="module")
def small_stream() -> SplitMNIST:
    """The real Split-MNIST stream cut to 60 samples per experience (the bench's code path, seconds not minutes)."""
    full = make_split_mnist(order_seed=0)
    return SplitMNIST([(x[:60], y[:60]) for x, y in full.experiences], full.classes, full.test_x[:200], full.test_y[:200])


def test_time_policy_spends_the_same_steps_whatever_the_fraction(small_stream: SplitMNIST) -> None:
    torch.set_num_threads(1)
    full = lbud.run_budget_one(small_stream, 0, 1.0, "all", True, settings=K2)
    part = lbud.run_budget_one(small_stream, 0, 0.2, "edge", True, settings=K2)
    label = lbud.run_budget_one(small_stream, 0, 0.2, "uniform", False,
                                 settings=lbud.BudgetSettings(steps=2, compute="label"))
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
    budget = lbud.run_budget_one(small_stream, 1, 1.0, "all", True, settings=K2)
    learning = lb.run_strategy("iw-er", small_stream, 1, steps=2)
    assert budget["final_acc"] == learning["final_acc"] and budget["forgetting"] == learning["forgetting"]
