"""bench/equal_compute.py: the verdict of the equal-compute goal from a learning run beside the Avalanche peer."""
from __future__ import annotations

import json

import pytest

from bench import equal_compute as ec


def _doc(ours: float, der: float, ratios: dict[str, float]) -> dict:
    """``bench learning --peer avalanche --json``'s document: seeds are strings once written as JSON."""
    row = {"final_acc_std": 0.5, "seconds": 24.0}
    return {"summary": {"iw-er": {**row, "final_acc": ours}, "avalanche-der": {**row, "final_acc": der},
                        "avalanche-naive": {**row, "final_acc": 20.0}},
            "wall_time_vs_avalanche_der": {"iw-er": ratios}}


def test_met_needs_the_accuracy_the_wall_time_and_the_k3_result() -> None:
    fast = {"0": 1.003, "1": 0.870, "2": 0.945}
    r = ec.result(_doc(96.6, 94.9, fast), k3=97.3)
    assert r["met"] is True and r["figures"]["wall_time_ratio_median"] == 0.945
    assert r["figures"]["peers"] == {"avalanche-der": 94.9, "avalanche-naive": 20.0}
    assert ec.result(_doc(94.0, 94.9, fast), k3=97.3)["met"] is False          # below DER++
    assert ec.result(_doc(96.6, 94.9, {"0": 1.1, "1": 1.05, "2": 0.9}), k3=97.3)["met"] is False  # slower
    assert ec.result(_doc(96.6, 94.9, fast), k3=95.9)["met"] is False          # K=3 fell under 96 %


def test_an_unjudged_run_or_a_missing_k3_gives_figures_and_no_verdict() -> None:
    fast = {"0": 0.9}
    assert ec.result(_doc(96.6, 94.9, fast), k3=97.3, judged=False)["met"] is None  # --quick: one seed
    r = ec.result(_doc(96.6, 94.9, fast), k3=None)
    assert r["met"] is None and "K=3 not judged" in r["notes"]


def test_a_peer_run_without_der_is_an_error_not_a_verdict() -> None:
    doc = _doc(96.6, 94.9, {"0": 0.9})
    del doc["summary"]["avalanche-der"]
    r = ec.result(doc, k3=97.3)
    assert r["status"] == "error" and r["met"] is None and "DER++" in r["error"]


def test_k3_comes_from_the_learning_benchmarks_record(tmp_path) -> None:
    f = tmp_path / "results.json"
    f.write_text(json.dumps({"benchmarks": [{"name": "learning",
                                             "figures": {"summary": {"iw-er": {"final_acc": 97.27}}}}]}))
    assert ec.k3_accuracy(f) == 97.27
    f.write_text(json.dumps({"benchmarks": [{"name": "codec", "figures": {}}]}))
    assert ec.k3_accuracy(f) is None and ec.k3_accuracy(tmp_path / "missing.json") is None


def test_without_the_peers_virtualenv_it_is_not_available_and_says_how(monkeypatch) -> None:
    from bench import avalanche_env
    from bench.run_all import REGISTRY, NotAvailable, run_one

    monkeypatch.setattr(avalanche_env, "find_python", lambda *a, **k: None)
    with pytest.raises(NotAvailable, match="avalanche_env --create"):
        ec.run()
    bench = next(b for b in REGISTRY if b.name == "equal_compute")
    assert bench.explicit  # never in `bench all` or CI: the peer needs ~6 GB
    entry = run_one(bench, False)
    assert entry["status"] == "not available" and entry["met"] is None
