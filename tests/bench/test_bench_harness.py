"""The benchmark harness (bench/run_all.py, machine.py, report.py, venv_size helpers).

Why: the harness is what turns benchmark modules into results.json and BENCHMARKS.md; a crash or a
missing module in one benchmark must be recorded and must not lose the others' numbers. Fake modules
stand in for real benchmarks so these tests are fast and independent of the machine's load; one test
runs the real codec benchmark end to end through ``python -m bench.run_all``. No timing assertions.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bench import machine, report, run_all, venv_size
from bench.run_all import Bench, NotAvailable

ROOT = Path(__file__).resolve().parents[2]


def _strict_load(path: Path) -> Any:
    """json.loads that rejects NaN/Infinity, which are not JSON."""
    def bad(c: str) -> None:
        raise ValueError(f"non-standard JSON constant {c}")

    return json.loads(path.read_text(), parse_constant=bad)


@pytest.fixture
def fake_registry(monkeypatch: pytest.MonkeyPatch) -> list[Bench]:
    """Good, raising, missing, missing-dependency and not-available benchmarks, plus one with main(argv)."""
    calls: list[list[str]] = []

    good = types.ModuleType("fake_bench_good_h1")

    def good_run(quick: bool = False) -> dict[str, Any]:
        return {
            "name": "good",
            "figures": {
                "latency_us": np.float64(12.3456), "throughput_fps": 30, "size_mb": 373.7,
                "ratio_nan": math.nan, "shape": (1, 2), "by_arch": {"a": {"acc_pct": 97.1, "fps": 4}, "b": {"acc_pct": 90.0}},
                "nested": {"inner_s": 1.5},
            },
            "goal": "latency < 50 µs", "met": np.bool_(True), "notes": "fake | with a pipe",
        }

    good.run = good_run  # type: ignore[attr-defined]
    good.main = lambda argv: calls.append(list(argv)) or 0  # type: ignore[attr-defined]
    bad = types.ModuleType("fake_bench_bad_h1")

    def bad_run(quick: bool = False) -> dict[str, Any]:
        raise ValueError("boom in benchmark")

    bad.run = bad_run  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "fake_bench_good_h1", good)
    monkeypatch.setitem(sys.modules, "fake_bench_bad_h1", bad)

    def unavailable(quick: bool) -> dict[str, Any]:
        raise NotAvailable("no run_budget here")

    reg = [
        Bench("good", "fake_bench_good_h1"),
        Bench("bad", "fake_bench_bad_h1"),
        Bench("ghost", "fake_bench_not_written_h1"),
        Bench("needs_dep", "json.fake_submodule_h1"),  # a parent that exists: still 'missing' (its own module)
        Bench("later", "fake_bench_good_h1", runner=unavailable),
    ]
    good.calls = calls  # type: ignore[attr-defined]
    return reg


def test_all_with_fake_registry_writes_wellformed_results(tmp_path: Path, fake_registry: list[Bench]) -> None:
    out = tmp_path / "results.json"
    rc = run_all.main(["all", "--quick", "--out", str(out)], registry=fake_registry)
    assert rc == 1  # an errored benchmark makes the run fail, after everything else ran
    doc = _strict_load(out)
    assert set(doc) >= {"machine", "generated", "quick", "benchmarks"}
    assert doc["quick"] is True
    assert set(machine.KEYS) <= set(doc["machine"])
    by = {e["name"]: e for e in doc["benchmarks"]}
    assert [e["name"] for e in doc["benchmarks"]] == ["good", "bad", "ghost", "needs_dep", "later"]
    good = by["good"]
    assert good["status"] == "ok" and good["met"] is True
    assert good["figures"]["latency_us"] == pytest.approx(12.3456)
    assert good["figures"]["ratio_nan"] is None  # NaN -> null
    assert good["figures"]["shape"] == [1, 2]
    assert isinstance(good["seconds"], float) and good["quick"] is True and good["ran_at"]
    assert by["bad"]["status"] == "error" and "ValueError: boom in benchmark" in by["bad"]["error"]
    assert by["ghost"]["status"] == "missing"
    assert by["needs_dep"]["status"] == "missing"
    assert by["later"]["status"] == "not available" and "run_budget" in by["later"]["notes"]
    for name in by:  # one file per benchmark beside results.json
        assert _strict_load(tmp_path / "results" / f"{name}.json")["name"] == name
    md = (tmp_path / "BENCHMARKS.md").read_text()
    assert "## Summary" in md and "## Machine" in md and "edgeloop bench all" in md
    for name in by:
        assert f"## {name}" in md
    assert "| latency_us | 12.35 µs |" in md
    assert "| throughput_fps | 30 fps |" in md
    assert "| nested.inner_s | 1.5 s |" in md
    assert "**by_arch**" in md and "|  | acc_pct (%) | fps |" in md
    assert "| b | 90 | — |" in md  # a column a row lacks
    assert "ValueError: boom in benchmark" in md
    assert "Notes: fake | with a pipe" in md
    assert "✔" in md and "boom" in md


def test_missing_dependency_is_an_error_not_missing(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A bench module that exists but whose import fails on a dependency must not look 'not written yet'."""
    pkg = tmp_path / "fakedep_pkg_h1"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "mod.py").write_text("import no_such_dependency_h1\n\ndef run(quick=False):\n    return {}\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    entry = run_all.run_one(Bench("dep", "fakedep_pkg_h1.mod"), quick=True)
    assert entry["status"] == "error"
    assert "no_such_dependency_h1" in entry["notes"]


def test_subset_runs_merge_into_existing_results(tmp_path: Path, fake_registry: list[Bench]) -> None:
    out = tmp_path / "r.json"
    md = tmp_path / "B.md"
    assert run_all.main(["good", "--out", str(out), "--md", str(md)], registry=fake_registry) == 0
    assert run_all.main(["ghost", "--out", str(out), "--md", str(md)], registry=fake_registry) == 0
    doc = _strict_load(out)
    assert [e["name"] for e in doc["benchmarks"]] == ["good", "ghost"]
    assert doc["benchmarks"][0]["quick"] is False
    assert "## good" in md.read_text() and "## ghost" in md.read_text()


def test_passthrough_to_own_main(tmp_path: Path, fake_registry: list[Bench]) -> None:
    calls = sys.modules["fake_bench_good_h1"].calls  # type: ignore[attr-defined]
    assert run_all.main(["good", "--strategy", "iw-er", "--seeds", "0"], registry=fake_registry) == 0
    assert calls == [["--strategy", "iw-er", "--seeds", "0"]]
    assert run_all.main(["good", "--", "--quick"], registry=fake_registry) == 0
    assert calls[-1] == ["--quick"]
    # harness options only -> the harness runs it (writes results), not main()
    out = tmp_path / "r.json"
    assert run_all.main(["good", "--quick", "--out", str(out)], registry=fake_registry) == 0
    assert len(calls) == 2 and out.exists()
    # no main(argv): unknown options are an error, not a silent run
    assert run_all.main(["bad", "--devices", "3"], registry=fake_registry) == 2


def test_unknown_benchmark_name(fake_registry: list[Bench], capsys: pytest.CaptureFixture[str]) -> None:
    assert run_all.main(["nope"], registry=fake_registry) == 2
    assert "unknown benchmark" in capsys.readouterr().err


def test_registry_order_and_label_budget_shaping(monkeypatch: pytest.MonkeyPatch) -> None:
    names = [b.name for b in run_all.REGISTRY]
    assert names == ["codec", "simulator", "edge_path", "venv_size", "mqtt_clients", "learning",
                     "label_budget", "transport", "rollout", "freshness", "console", "fuzz", "chaos", "adaptation", "soak",
                     "equal_compute"]
    # never in `bench all`: 30 minutes; a 6 GB peer virtualenv
    assert [b.name for b in run_all.REGISTRY if b.explicit] == ["soak", "equal_compute"]
    from bench import label_budget, learning

    submitted: list[dict[str, Any]] = []

    def fake_jobs(jobs: list[Any], workers: int | None = None) -> list[dict[str, Any]]:
        submitted.extend(j.kwargs for j in jobs)
        acc = {("edge", True): 97.0, ("uniform", False): 95.5, ("all", True): 97.5}
        return [{**j.kwargs, "final_acc": acc[(j.kwargs["selection"], j.kwargs["weighted"])] + j.kwargs["seed"] / 10}
                for j in jobs]

    monkeypatch.setattr(label_budget, "run_jobs", fake_jobs)
    quick = label_budget.run(quick=True)
    assert quick["status"] == "skipped (quick)" and quick["met"] is None and not submitted
    # Without a learning run in this process: its own 100 % runs, 20 % edge-iw and uniform, three seeds.
    monkeypatch.setattr(learning, "_LAST_ROWS", [])
    res = label_budget.run()
    assert sorted((k["seed"], k["selection"]) for k in submitted) == sorted(
        (s, sel) for s in (0, 1, 2) for sel in ("all", "edge", "uniform"))
    assert {k["fraction"] for k in submitted if k["selection"] != "all"} == {0.2}
    f = res["figures"]
    assert f["acc_20pct_edge_iw_pct"] == 97.1 and f["acc_100pct_pct"] == 97.6 and f["acc_20pct_uniform_unweighted_pct"] == 95.6
    assert f["gap_20pct_edge_iw_vs_full_pct"] == 0.5 and f["margin_20pct_edge_iw_vs_uniform_pct"] == 1.5
    assert res["met"] is True and f["full_reference"] == "own 100% runs"
    assert report.headline({"name": "label_budget", **res}) == ("acc_20pct_edge_iw_pct", 97.1)
    # After a full learning run: its iw-er rows are the 100 % reference, nothing re-run for them.
    submitted.clear()
    monkeypatch.setattr(learning, "_LAST_ROWS", [
        {"strategy": "iw-er", "steps": 3, "seed": s, "final_acc": 90.0, "forgetting": 1.0, "seconds": 1.0} for s in (0, 1, 2)])
    res = label_budget.run()
    assert all(k["selection"] != "all" for k in submitted) and len(submitted) == 6
    assert res["figures"]["acc_100pct_pct"] == 90.0 and res["figures"]["full_reference"].startswith("learning")


def test_machine_facts_have_the_keys() -> None:
    f = machine.facts()
    assert set(machine.KEYS) <= set(f)
    assert f["python"] == ".".join(map(str, sys.version_info[:3]))
    assert isinstance(f["cpu_count"], int) and f["cpu_count"] >= 1
    assert f["numpy"] == np.__version__
    json.dumps(f)  # plain JSON


def test_report_formatting() -> None:
    fv = report.fmt_value
    assert [fv(93.78), fv(193.25), fv(21.2), fv(0.084), fv(4610.0), fv(123456), fv(None), fv(True)] == \
        ["93.78", "193.2", "21.2", "0.084", "4,610", "123,456", "—", "yes"]
    assert fv([1, 2.5]) == "1, 2.5" and fv(list(range(20))).startswith("[20 items")
    units = {k: report.unit_for(k) for k in ("a_fps", "b_us", "c_s", "d_mb", "e_pct", "f_per_s", "bytes", "x")}
    assert units == {"a_fps": "fps", "b_us": "µs", "c_s": "s", "d_mb": "MB", "e_pct": "%", "f_per_s": "/s",
                     "bytes": "", "x": ""}
    assert report.fmt_with_unit("acc_pct", 96.123) == "96.12%"
    assert report.table(["k", "v"], [["a|b", "1"]])[-1] == "| a\\|b | 1 |"  # pipes escaped in cells
    assert report.met_mark(True) == "✔" and report.met_mark(False) == "✘" and report.met_mark(None) == "–"
    entry = {"name": "learning", "figures": {"summary": {"iw-er": {"final_acc": 96.5}}, "rows": [{"a": 1}] * 30}}
    assert report.headline(entry) == ("summary.iw-er.final_acc", 96.5)
    assert report.headline({"name": "x", "figures": {"label": "s", "n_fps": 3}}) == ("n_fps", 3)
    md = report.render({"machine": {"python": "3.11"}, "generated": "now", "quick": False, "benchmarks": [
        {"name": "learning", "status": "ok", "goal": "acc", "met": False, "seconds": 12.0, **entry},
        {"name": "transport", "status": "missing"},
    ]})
    assert "| [learning](#learning) | ok | summary.iw-er.final_acc = 96.5 | acc | ✘ | 12 s |" in md
    assert "| rows | [30 items, see results.json] |" in md
    assert "| [transport](#transport) | missing | — | — | – | — |" in md


def test_dir_size_counts_hard_links_once(tmp_path: Path) -> None:
    (tmp_path / "a").write_bytes(b"x" * 100_000)
    os.link(tmp_path / "a", tmp_path / "b")
    one = venv_size.dir_size(tmp_path)
    assert 100_000 <= one < 200_000


def test_cli_codec_quick_for_real(tmp_path: Path) -> None:
    """The real path: python -m bench.run_all codec --quick --out TMP (codec takes a few seconds)."""
    out = tmp_path / "results.json"
    proc = subprocess.run(
        [sys.executable, "-m", "bench.run_all", "codec", "--quick", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "codec" in proc.stderr  # progress lines go to stderr
    doc = _strict_load(out)
    (entry,) = doc["benchmarks"]
    assert entry["name"] == "codec" and entry["status"] == "ok" and entry["quick"] is True
    assert entry["figures"]["round_trip_us"] > 0 and isinstance(entry["met"], bool)
    assert (tmp_path / "results" / "codec.json").exists()
    md = (tmp_path / "BENCHMARKS.md").read_text()  # beside --out, not the repo's BENCHMARKS.md
    assert "## codec" in md and "round_trip_us" in md


SIGTERM_SCRIPT = r"""
import subprocess, sys, time, types
sys.path.insert(0, sys.argv[1])
from bench import run_all

def run(quick=False):
    child = subprocess.Popen(["sleep", "300"])
    try:  # the pid is printed inside the try: the test's SIGTERM may land right after it
        print(child.pid, flush=True)
        time.sleep(300)
    finally:
        child.kill()
        child.wait()

mod = types.ModuleType("fake_bench_sigterm")
mod.run = run
sys.modules["fake_bench_sigterm"] = mod
run_all.main(["slow", "--out", sys.argv[2], "--no-md"], [run_all.Bench("slow", "fake_bench_sigterm")])
"""


def test_sigterm_stops_what_a_benchmark_started(tmp_path: Path) -> None:
    """`kill <edgeloop bench>` unwinds the benchmark like Ctrl-C, so the processes it started stop with it."""
    import signal
    import time

    proc = subprocess.Popen([sys.executable, "-c", SIGTERM_SCRIPT, str(ROOT), str(tmp_path / "r.json")],
                            stdout=subprocess.PIPE, text=True)
    child = int(proc.stdout.readline())  # type: ignore[union-attr]
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) != 0
    def alive() -> bool:
        try:
            return Path(f"/proc/{child}/stat").read_text().split()[2] != "Z"
        except FileNotFoundError:  # gone (reaped) between two looks
            return False

    deadline = time.monotonic() + 10
    while alive():
        assert time.monotonic() < deadline, "the benchmark's child outlived it"
        time.sleep(0.05)
