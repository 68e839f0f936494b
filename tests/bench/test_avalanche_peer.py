"""The Avalanche peer of the learning benchmark (bench/avalanche_peer.py, bench/avalanche_env.py).

Why: the comparison with Avalanche is only worth printing if Avalanche trains on exactly our stream, so
the peer's split and arrival order are checked against trainer.datasets here without Avalanche (cheap,
always runs). The end-to-end run needs the separate Avalanche venv (about 6 GB, made by
``python -m bench.avalanche_env --create``): it is skipped when that venv is absent, and otherwise runs one
seed on a tiny subset (``limit``) and checks that the rows are well-formed. No accuracy or timing assertions.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from bench import avalanche_env, avalanche_peer
from bench.avalanche_peer import (
    PeerUnavailable,
    forgetting,
    read_idx,
    run_peer,
    stream_indices,
)

torch = pytest.importorskip("torch")
from trainer.datasets import default_mnist_paths, make_split_mnist
from trainer.evaluate import ForgettingTracker


@pytest.mark.parametrize("seed", [0, 2])
def test_stream_matches_trainer_split(seed: int) -> None:
    """Same experiences, same arrival order, same test set as trainer.datasets.make_split_mnist(order_seed=seed)."""
    images, labels = default_mnist_paths()
    x, y = read_idx(images), read_idx(labels).astype(np.int64)
    exps, classes, test_idx = stream_indices(y, seed)
    ours = make_split_mnist(images, labels, order_seed=seed)
    assert classes == ours.classes == [(0, 1), (2, 3), (4, 5), (6, 7), (8, 9)]
    # floor(0.8 n) per digit: 7,997 stream / 2,003 test (the README's "8,000 / 2,000" is rounded)
    assert sum(len(e) for e in exps) == 7997 and len(test_idx) == 2003
    for idx, (ox, oy) in zip(exps, ours.experiences):
        assert np.array_equal(y[idx], oy.numpy())
        assert np.array_equal(x[idx].astype(np.float32) / 255.0, ox.squeeze(1).numpy())
    assert np.array_equal(y[test_idx], ours.test_y.numpy())
    assert np.array_equal(x[test_idx].astype(np.float32) / 255.0, ours.test_x.squeeze(1).numpy())


def test_limit_keeps_a_prefix_of_every_experience_and_digit() -> None:
    _, labels = default_mnist_paths()
    y = read_idx(labels).astype(np.int64)
    full, _, _ = stream_indices(y, 1)
    small, _, test_idx = stream_indices(y, 1, limit=7)
    assert [list(s) for s in small] == [list(f[:7]) for f in full]
    assert np.bincount(y[test_idx]).tolist() == [7] * 10


def test_forgetting_matches_the_trainers_definition() -> None:
    rng = np.random.default_rng(3)
    after = [list(rng.random(10)) for _ in range(5)]
    tracker = ForgettingTracker()
    for pc in after:
        tracker.update(pc)
    assert forgetting(after) == pytest.approx(tracker.forgetting(after[-1], classes=range(8)))


def test_run_peer_without_a_venv_says_how_to_make_one(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("EDGELOOP_AVALANCHE_PYTHON", raising=False)
    monkeypatch.setattr(avalanche_env, "DEFAULT_VENV", tmp_path / "none")
    monkeypatch.setattr(avalanche_env.importlib.util, "find_spec", lambda name: None)
    assert avalanche_env.find_python(tmp_path / "none") is None
    with pytest.raises(PeerUnavailable, match="bench.avalanche_env --create"):
        run_peer(seeds=[0], limit=5)


VENV_PY = avalanche_env.find_python()


@pytest.mark.slow
@pytest.mark.skipif(VENV_PY is None, reason="no Avalanche venv (python -m bench.avalanche_env --create)")
def test_peer_rows_are_well_formed() -> None:
    buffer = 40
    rows = run_peer(seeds=[0], buffer=buffer, limit=30, python=VENV_PY, timeout=280)
    json.loads(json.dumps(rows), parse_constant=lambda c: (_ for _ in ()).throw(ValueError(c)))  # strict JSON
    assert [r["strategy"] for r in rows] == [f"avalanche-{s}" for s in avalanche_peer.STRATEGIES]
    for r in rows:
        assert r["seed"] == 0 and r["peer"] == "avalanche" and r["order"] == "protocol"
        for k in ("final_acc", "forgetting", "seconds", "cpu_seconds", "eval_seconds"):
            assert isinstance(r[k], float) and math.isfinite(r[k]), k
        assert 0.0 <= r["final_acc"] <= 100.0 and -100.0 <= r["forgetting"] <= 100.0 and r["seconds"] > 0
        assert len(r["acc_after_experience"]) == 5 and r["final_acc"] == r["acc_after_experience"][-1]
        assert len(r["per_class_final"]) == 10
        if r["strategy"] == "avalanche-naive":
            assert r["memory_samples"] == 0 and r["memory_bytes"] == 0
        else:
            assert 0 < r["memory_samples"] <= buffer
            # at least a float32 28x28 image and a label per stored sample
            assert r["memory_bytes"] >= r["memory_samples"] * (28 * 28 * 4 + 8)


def test_wall_time_ratio_pairs_each_of_our_runs_with_der_on_the_same_seed() -> None:
    """The equal-compute goal's wall-time half: ours over Avalanche DER++'s, seed by seed (runs made back to back)."""
    from bench.learning import wall_time_ratios

    rows = [
        {"strategy": "iw-er", "seed": 0, "seconds": 45.0},
        {"strategy": "iw-er", "seed": 1, "seconds": 60.0},
        {"strategy": "iw-er", "seed": 2, "seconds": 10.0},  # no DER++ row for seed 2: not paired
        {"strategy": "avalanche-der", "seed": 0, "seconds": 50.0},
        {"strategy": "avalanche-der", "seed": 1, "seconds": 50.0},
        {"strategy": "avalanche-replay", "seed": 0, "seconds": 1.0},
    ]
    assert wall_time_ratios(rows) == {"iw-er": {0: pytest.approx(0.9), 1: pytest.approx(1.2)}}


def test_one_seed_of_a_paired_run_is_not_judged_against_the_three_seed_goal() -> None:
    from trainer.learning_bench import GOAL_SEEDS, goal_line

    assert "not judged (1 seed(s)" in goal_line(False, 1)
    assert "NOT met" not in goal_line(False, GOAL_SEEDS - 1)
    assert goal_line(False, GOAL_SEEDS).endswith("NOT met")
    assert goal_line(True, GOAL_SEEDS).endswith("MET")
