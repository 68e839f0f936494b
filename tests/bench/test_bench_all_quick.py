"""Every benchmark of `edgeloop bench all` runs end to end in its quick mode, so that none of them rots: here
(through the harness, as `bench NAME ... --quick`), or in a test of its own (OWN_TEST).

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
#: Benchmarks whose quick run end to end is a test of its own (tests/bench/test_<name>_bench.py): running them
#: here again would only add minutes of CI.
OWN_TEST = {"transport": "test_transport_bench.py", "freshness": "test_freshness_bench.py",
            "console": "test_console_bench.py"}
RUN_HERE = [n for n in EXPECTED if n not in OWN_TEST]
#: Correctness goals (not timings): these must be met even on a busy CI box.
MUST_MEET = ["fuzz", "chaos"]


def test_all_is_the_expected_list_and_each_is_run_by_a_test() -> None:
    from bench.run_all import REGISTRY

    assert [b.name for b in REGISTRY if not b.explicit] == EXPECTED
    for name, test in OWN_TEST.items():
        assert "run(quick=True)" in (ROOT / "tests" / "bench" / test).read_text() \
            or "--quick" in (ROOT / "tests" / "bench" / test).read_text(), (name, test)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_bench_quick_produces_well_formed_results(tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    md = tmp_path / "BENCHMARKS.md"
    proc = subprocess.run([sys.executable, "-m", "bench.run_all", *RUN_HERE, "--quick", "--out", str(out),
                           "--md", str(md)], cwd=ROOT, capture_output=True, text=True, timeout=880)
    assert out.exists(), proc.stderr[-3000:]
    results = json.loads(out.read_text())
    assert {"machine", "benchmarks"} <= set(results)
    by_name = {b["name"]: b for b in results["benchmarks"]}
    assert set(RUN_HERE) <= set(by_name), sorted(by_name)
    for name in RUN_HERE:
        entry = by_name[name]
        assert entry["status"] in ("ok", "skipped (quick)"), (name, entry.get("status"), entry.get("error", "")[-2000:])
        if entry["status"] == "ok":
            assert isinstance(entry["figures"], dict) and entry["figures"], name
            assert isinstance(entry["goal"], str) and entry["goal"], name
            assert isinstance(entry["met"], bool), name
    for name in MUST_MEET:
        assert by_name[name]["met"] is True, (name, by_name[name]["figures"])
    text = md.read_text()
    assert all(name in text for name in RUN_HERE)
    assert proc.returncode == 0, proc.stderr[-3000:]
