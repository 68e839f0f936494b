"""`edgeloop bench soak`'s pure parts: the growth window and figure, the sample accounting, the retention check,
the readers of a real outbox and a real trainer store, and how the harness keeps the soak out of `bench all`.

The real run takes minutes even in --quick (bootstrap + 3 minutes + draining), so it is one slow test, skipped
unless EDGELOOP_SOAK_TEST=1 (CI never runs it; `edgeloop bench soak --quick` is the smoke run).
"""
from __future__ import annotations

import json
import os
import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bench import run_all, soak
from bench.run_all import Bench
from bench.soak import OutboxEnd, account, growth_window_min, rss_growth, verdict, within_retention
from edge.outbox import Outbox

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "trainer"))
from _helpers import incoming  # noqa: E402

from trainer.store import SampleStore  # noqa: E402


# --------------------------------------------------------------------------- growth
def test_the_growth_window_is_the_last_20_minutes_or_says_what_it_is() -> None:
    assert growth_window_min(30) == (20.0, None)
    assert growth_window_min(25) == (20.0, None)
    window, note = growth_window_min(20)
    assert window == 15.0 and "last 15 minutes" in note
    window, note = growth_window_min(3)  # minutes - 5 would be negative: half the run
    assert window == 1.5 and note


def _series(minutes: float, interval: float, f: Any) -> list[tuple[float, int]]:
    return [(k * interval, int(f(k * interval))) for k in range(int(minutes * 60 / interval) + 1)]


def test_growth_is_last_minute_median_over_the_window_start() -> None:
    # warm-up from 100 MB to 200 MB over the first 10 minutes, then flat: no growth in the last 20
    flat = _series(30, 10, lambda t: 100_000 + min(t, 600) / 600 * 100_000)
    g = rss_growth(flat, 1800, 1200)
    assert g["start_kb"] == 200_000 and g["start_at_s"] == 600 and g["growth"] == 0.0
    assert g["peak_kb"] == 200_000 and g["samples"] == 181
    # a steady leak of 10 % over the window
    leak = _series(30, 10, lambda t: 100_000 + max(0.0, t - 600) / 1200 * 10_000)
    assert rss_growth(leak, 1800, 1200)["growth"] == pytest.approx(0.0975, abs=0.003)  # median of the last minute
    # one spike in the last minute does not move the median
    spiky = [(t, kb * (3 if t == 1790 else 1)) for t, kb in flat]
    assert rss_growth(spiky, 1800, 1200)["growth"] == 0.0
    assert rss_growth([], 1800, 1200)["growth"] is None


def test_verdict_needs_every_process_under_5_percent_nothing_lost_and_retention() -> None:
    ok = {"trainer": {"growth": 0.049}, "cam-01": {"growth": -0.1}}
    assert verdict(ok, 0, None) is True and verdict(ok, 0, True) is True
    assert verdict(ok, 1, True) is False
    assert verdict(ok, 0, False) is False
    assert verdict({**ok, "broker": {"growth": 0.05}}, 0, True) is False
    assert verdict({**ok, "broker": {"growth": None}}, 0, True) is None


# --------------------------------------------------------------------------- accounting
def test_every_committed_sample_stored_is_nothing_lost() -> None:
    obs = {"cam-01": OutboxEnd(put=3), "cam-02": OutboxEnd(put=2, remaining={"cam-02.1.1"})}
    stored = {"cam-01": {"cam-01.1.0", "cam-01.1.1", "cam-01.1.2"}, "cam-02": {"cam-02.1.0"}}
    acc = account(obs, stored)
    assert acc["total"] == {"committed": 5, "stored": 4, "in_outbox": 1, "lost": 0, "dropped_by_outbox_bound": 0,
                            "unexpected": 0, "by_id": True, "stored_from_unknown_devices": 0}


def test_a_missing_id_is_lost_and_named_even_when_the_counts_match() -> None:
    # cam-01.1.1 never arrived, and an id its outbox never committed did: counts agree, ids do not
    acc = account({"cam-01": OutboxEnd(put=3)}, {"cam-01": {"cam-01.1.0", "cam-01.1.2", "cam-01.1.7"}})
    row = acc["per_camera"]["cam-01"]
    assert row["lost"] == 1 and row["lost_ids"] == ["cam-01.1.1"] and row["unexpected"] == 1
    assert acc["total"]["lost"] == 1


def test_samples_the_outbox_bound_dropped_are_lost_and_shown_apart() -> None:
    acc = account({"cam-01": OutboxEnd(put=4, dropped_oldest=2)}, {"cam-01": {"cam-01.1.2", "cam-01.1.3"}})
    assert acc["total"]["lost"] == 2 and acc["total"]["dropped_by_outbox_bound"] == 2


def test_a_restart_or_a_refusal_falls_back_to_counts() -> None:
    acc = account({"cam-01": OutboxEnd(put=3, boot=2), "cam-02": OutboxEnd(put=3, rejected=1)},
                  {"cam-01": {"a", "b"}, "cam-02": {"x", "y", "z"}, "cam-09": {"q"}})
    assert acc["per_camera"]["cam-01"]["lost"] == 1 and acc["per_camera"]["cam-02"]["lost"] == 0
    assert acc["total"]["by_id"] is False and acc["total"]["stored_from_unknown_devices"] == 1


def test_retention_is_judged_only_against_configured_limits() -> None:
    assert within_retention(None, 10**9, 10**12, 10**9) is None
    r = {"max_samples": 100, "max_bytes": 10_000, "max_age_days": 1.0, "every_s": 60.0}
    assert within_retention(r, 100, 10_000, 86_400.0 + 30) is True
    assert within_retention(r, 101, 10, None) is False
    assert within_retention(r, 1, 10_001, None) is False
    assert within_retention(r, 1, 10, 86_400.0 + 61) is False
    assert within_retention({**r, "max_samples": None}, 10**6, 10, None) is True


# --------------------------------------------------------------------------- readers on the real files
def test_read_outbox_sees_the_real_outbox_counters_and_what_is_left(tmp_path: Path) -> None:
    with Outbox(tmp_path / "outbox.sqlite", synchronous="NORMAL") as ob:
        for i in range(3):
            assert ob.put(f"cam-01.1.{i}", "t", b"x")
        item = ob.peek_batch(1)[0]
        assert ob.ack(item.id)
    (tmp_path / "boot").write_text("1")
    end = soak.read_outbox(tmp_path)
    assert end.put == 3 and end.remaining == {"cam-01.1.1", "cam-01.1.2"} and end.boot == 1
    assert account({"cam-01": end}, {"cam-01": {"cam-01.1.0"}})["total"]["lost"] == 0


def test_store_readers_see_the_real_trainer_store(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    with SampleStore(tmp_path / "samples") as st:
        st.add_batch([incoming(f"cam-0{d}.1.{i}", "red", rng, device=f"cam-0{d}", seq=i)
                      for d in (1, 2) for i in range(3)])
        st.set_label("cam-01.1.0", "red", "test")
    ids = soak.store_ids(tmp_path / "samples")
    assert ids == {f"cam-0{d}": {f"cam-0{d}.1.{i}" for i in range(3)} for d in (1, 2)}
    size = soak.store_size(tmp_path / "samples")
    assert size["rows"] == 6 and size["live_bytes"] > 0 and size["disk_bytes"] >= size["live_bytes"]
    assert 0 <= size["oldest_unlabelled_age_s"] < 60
    assert soak.store_ids(tmp_path / "none") == {}


def test_rss_of_this_process_and_none_for_a_gone_one() -> None:
    assert soak.rss_kb(os.getpid()) > 1000
    assert soak.rss_kb(2**22 + 12345) is None


# --------------------------------------------------------------------------- the harness
@pytest.fixture
def explicit_registry(monkeypatch: pytest.MonkeyPatch) -> tuple[list[Bench], list[Any]]:
    calls: list[Any] = []
    quick = types.ModuleType("fake_bench_quick_s1")
    quick.run = lambda q=False: {"figures": {"x_s": 1.0}, "goal": "x", "met": True}  # type: ignore[attr-defined]
    long = types.ModuleType("fake_bench_long_s1")
    long.GOAL = "stays flat for half an hour"  # type: ignore[attr-defined]

    def long_run(q: bool = False) -> dict[str, Any]:
        calls.append(("run", q))
        return {"figures": {"growth_pct": 1.0}, "goal": long.GOAL, "met": True}

    long.run = long_run  # type: ignore[attr-defined]
    long.main = lambda argv: calls.append(("main", list(argv))) or 0  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "fake_bench_quick_s1", quick)
    monkeypatch.setitem(sys.modules, "fake_bench_long_s1", long)
    return [Bench("quick", "fake_bench_quick_s1"), Bench("long", "fake_bench_long_s1", explicit=True)], calls


def test_bench_all_skips_an_explicit_benchmark_and_keeps_its_last_result(
        tmp_path: Path, explicit_registry: tuple[list[Bench], list[Any]], monkeypatch: pytest.MonkeyPatch) -> None:
    reg, calls = explicit_registry
    out = tmp_path / "results.json"
    monkeypatch.setattr(run_all, "ROOT", tmp_path)
    monkeypatch.setattr(run_all, "DEFAULT_OUT", out)  # named with no option, it writes the default files
    monkeypatch.setattr(run_all, "DEFAULT_MD", tmp_path / "BENCHMARKS.md")
    assert run_all.main(["all", "--out", str(out)], registry=reg) == 0
    assert calls == []  # never run by `all`
    by = {e["name"]: e for e in json.loads(out.read_text())["benchmarks"]}
    assert by["long"]["status"] == "not run" and "edgeloop bench long" in by["long"]["notes"]
    assert by["long"]["goal"] == "stays flat for half an hour"
    assert "## long" in (tmp_path / "BENCHMARKS.md").read_text()
    assert run_all.main(["long"], registry=reg) == 0  # named: it runs
    assert calls == [("run", False)]
    assert run_all.main(["all", "--out", str(out)], registry=reg) == 0
    by = {e["name"]: e for e in json.loads(out.read_text())["benchmarks"]}
    assert by["long"]["status"] == "ok" and by["long"]["figures"] == {"growth_pct": 1.0}  # kept by `all`
    assert calls == [("run", False)]


def test_an_explicit_benchmark_gets_its_own_options_even_the_harness_names(
        explicit_registry: tuple[list[Bench], list[Any]]) -> None:
    reg, calls = explicit_registry
    assert run_all.main(["long", "--quick", "--out", "DIR"], registry=reg) == 0
    assert calls == [("main", ["--quick", "--out", "DIR"])]


def test_soak_cli_refuses_too_few_samples(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        soak.main(["--minutes", "0.5", "--interval", "10"])
    assert "at least 6 samples" in capsys.readouterr().err


# --------------------------------------------------------------------------- the real thing (slow, opt-in)
@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.skipif(os.environ.get("EDGELOOP_SOAK_TEST") != "1",
                    reason="a quick soak takes ~5 minutes: set EDGELOOP_SOAK_TEST=1 (never in CI)")
def test_quick_soak_for_real(tmp_path: Path) -> None:
    res = soak.bench(2, 1.5, 10, quick=True, out=tmp_path / "run")
    f = res["figures"]
    assert f["samples"]["committed"] > 0 and f["samples_lost"] == 0 and f["samples"]["by_id"] is True
    assert set(res["per_process"]) == {"broker", "trainer", "deploy", "cam-01", "cam-02"}
    assert all(g["growth_pct"] is not None for g in res["per_process"].values())
    assert (tmp_path / "run" / "rss.png").stat().st_size > 0 and (tmp_path / "run" / "rss.csv").exists()
