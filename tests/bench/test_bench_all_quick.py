"""`edgeloop bench all --quick` runs every benchmark end to end, so that none of them rots.

Only the shape of the results is asserted (status, figures, goal, met), never a timing: timings belong in
BENCHMARKS.md, measured on a quiet machine, not in tests that share a CI box.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
EXPECTED = ["codec", "simulator", "edge_path", "venv_size", "mqtt_clients", "learning", "label_budget",
            "transport", "rollout", "freshness", "console", "fuzz", "chaos", "adaptation"]
#: Correctness goals (not timings): these must be met even on a busy CI box.
MUST_MEET = ["fuzz", "chaos"]


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_bench_all_quick_produces_well_formed_results(tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    md = tmp_path / "BENCHMARKS.md"
    proc = subprocess.run([sys.executable, "-m", "bench.run_all", "all", "--quick", "--out", str(out), "--md", str(md)],
                          cwd=ROOT, capture_output=True, text=True, timeout=880)
    assert out.exists(), proc.stderr[-3000:]
    results = json.loads(out.read_text())
    assert {"machine", "benchmarks"} <= set(results)
    by_name = {b["name"]: b for b in results["benchmarks"]}
    assert set(EXPECTED) <= set(by_name), sorted(by_name)
    for name in EXPECTED:
        entry = by_name[name]
        assert entry["status"] in ("ok", "skipped (quick)"), (name, entry.get("status"), entry.get("error", "")[-2000:])
        if entry["status"] == "ok":
            assert isinstance(entry["figures"], dict) and entry["figures"], name
            assert isinstance(entry["goal"], str) and entry["goal"], name
            assert isinstance(entry["met"], bool), name
    for name in MUST_MEET:
        assert by_name[name]["met"] is True, (name, by_name[name]["figures"])
    text = md.read_text()
    assert all(name in text for name in EXPECTED)
    assert proc.returncode == 0, proc.stderr[-3000:]
