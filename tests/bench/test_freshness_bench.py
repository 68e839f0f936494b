"""bench/freshness.py: the timeline reconstruction on synthetic data, and a tiny real run for well-formedness.

Why no timing assertions: the machine is shared and the numbers depend on its load. What must hold is that
the stages partition each sample's total exactly (so "the dominant stage" means something), that rollbacks
and unpromoted updates are attributed correctly, that undelivered samples are counted as pending rather
than silently dropped, and that a real run starts and stops every process and emits strict JSON with the
figures the harness and BENCHMARKS.md read.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from bench import freshness
from deploy.broker import find_mosquitto

needs_mosquitto = pytest.mark.skipif(find_mosquitto() is None, reason="mosquitto not installed")


def _strict(text: str) -> Any:
    def bad(c: str) -> None:
        raise ValueError(f"non-standard JSON constant {c}")

    return json.loads(text, parse_constant=bad)


def _raw() -> dict[str, Any]:
    """Two cameras; update 1 (a, b) is kept by the gate, update 2 (c) promoted v0002, update 3 (d) v0003.

    v0002 reaches cam-1 at 40 and cam-2 at 45 (rollout r2, created 30); v0003 reaches cam-1 at 60, is rolled
    back there at 62 (cam-1 runs v0002 again) and never reaches cam-2: d stays pending.
    """
    samples = [
        {"id": "a", "device": "cam-1", "ts": 1.0, "received": 1.5, "labelled_at": 1.7, "heldout": False, "frame_index": 100},
        {"id": "b", "device": "cam-2", "ts": 2.0, "received": 2.2, "labelled_at": 2.4, "heldout": False, "frame_index": 120},
        {"id": "c", "device": "cam-1", "ts": 12.0, "received": 12.5, "labelled_at": 12.6, "heldout": False, "frame_index": 200},
        {"id": "d", "device": "cam-2", "ts": 40.0, "received": 40.1, "labelled_at": 40.2, "heldout": False, "frame_index": 600},
        {"id": "h", "device": "cam-2", "ts": 3.0, "received": 3.1, "labelled_at": 3.2, "heldout": True, "frame_index": 130},
        {"id": "old", "device": "cam-1", "ts": 0.5, "received": 0.6, "labelled_at": 0.7, "heldout": False, "frame_index": 10},
        {"id": "late", "device": "cam-1", "ts": 90.0, "received": 90.1, "labelled_at": 90.2, "heldout": False, "frame_index": 900},
    ]
    updates = [
        {"update": 1, "start": 10.0, "trained": 11.0, "evaluated": 12.0, "checkpointed": 12.2, "promote": False,
         "version": None, "samples": ["old", "a", "b"]},
        {"update": 2, "start": 20.0, "trained": 21.0, "evaluated": 22.0, "exported": 25.0, "registered": 25.5,
         "announced": 26.0, "checkpointed": 26.2, "promote": True, "version": "v0002", "samples": ["c"]},
        {"update": 3, "start": 45.0, "trained": 46.0, "evaluated": 47.0, "exported": 50.0, "registered": 50.1,
         "announced": 51.0, "checkpointed": 51.1, "promote": True, "version": "v0003", "samples": ["d"]},
    ]
    st = [
        {"wall": 33.0, "device": "cam-1", "state": "downloading", "version": "v0002", "rollout": "r2", "active": "v0001"},
        {"wall": 38.0, "device": "cam-1", "state": "verified", "version": "v0002", "rollout": "r2", "active": "v0001"},
        {"wall": 40.0, "device": "cam-1", "state": "active", "version": "v0002", "rollout": "r2", "active": "v0002"},
        {"wall": 43.0, "device": "cam-2", "state": "verified", "version": "v0002", "rollout": "r2", "active": "v0001"},
        {"wall": 45.0, "device": "cam-2", "state": "active", "version": "v0002", "rollout": "r2", "active": "v0002"},
        {"wall": 60.0, "device": "cam-1", "state": "active", "version": "v0003", "rollout": "r3", "active": "v0003"},
        {"wall": 62.0, "device": "cam-1", "state": "rolled_back", "version": "v0003", "rollout": "r3", "active": "v0002"},
    ]
    rollouts = [{"id": "r2", "version": "v0002", "created": 30.0, "finished": 50.0, "state": "completed"},
                {"id": "r3", "version": "v0003", "created": 55.0, "finished": 63.0, "state": "rolled_back"}]
    return {"cameras": ["cam-1", "cam-2"], "baseline": "v0001", "drift_index": 75, "cutoff_wall": 80.0, "t0": 0.0,
            "samples": samples, "updates": updates, "statuses": st, "rollouts": rollouts}


def test_stages_partition_the_total_and_attribute_gate_and_rollout() -> None:
    f = freshness.analyze(_raw())
    rows = {r["id"]: r for r in f["per_sample"]}
    assert set(rows) == {"a", "b", "c"}  # h held out, old before the drift, late after the cut-off, d pending
    assert f["samples_eligible"] == 4 and f["samples_pending"] == 1 and f["samples_measured"] == 3
    for r in rows.values():
        assert sum(r["stages"].values()) == pytest.approx(r["total"], abs=1e-3)
        assert r["delivered"] == 45.0 and r["version"] == "v0002" and r["last_camera"] == "cam-2"
        assert all(v >= 0 for v in r["stages"].values())
    a = rows["a"]["stages"]
    assert a["upload"] == pytest.approx(0.5) and a["label"] == pytest.approx(0.2)
    assert a["buffer_wait"] == pytest.approx(10.0 - 1.7) and a["update"] == pytest.approx(1.0)
    assert a["gate_retry"] == pytest.approx(21.0 - 11.0)  # update 1 kept; update 2 carried it
    assert a["evaluation"] == pytest.approx(1.0) and a["export"] == pytest.approx(4.0)
    assert a["rollout_wait"] == pytest.approx(4.0) and a["rollout"] == pytest.approx(13.0)
    assert a["swap"] == pytest.approx(2.0)
    assert rows["c"]["stages"]["gate_retry"] == 0.0
    # totals 33, 43, 44 and d never delivered: p50 over all four is 43, p95 falls on d (None)
    assert f["total_p50_s"] == pytest.approx(43.0) and f["total_p95_s"] is None
    assert f["delivered_p50_s"] == pytest.approx(43.0) and f["delivered_p95_s"] == pytest.approx(44.0)
    assert f["delivered_max_s"] == pytest.approx(44.0) and f["delivered_fraction"] == pytest.approx(0.75)
    assert f["dominant_stage"] == "rollout"
    assert sum(s["share"] for s in f["stages"].values()) == pytest.approx(1.0, abs=1e-3)
    assert f["versions_promoted"] == 2 and f["versions_rolled_out"] == 1 and f["versions_delivering"] == ["v0002"]


def test_a_version_a_rehearsal_round_promoted_delivers_the_updates_before_it() -> None:
    """The trainer's timeline has a line per rehearsal round (update = the last update before it): a camera running
    the version it promoted runs every update so far. Before those lines, that version read as "no update at all"
    and every sample looked undelivered until an update's own version reached the whole fleet."""
    raw = _raw()
    raw["updates"].insert(2, {"update": 2, "rehearsal": 1, "start": 27.0, "trained": 28.0, "evaluated": 29.0,
                              "exported": 29.5, "registered": 29.6, "announced": 30.0, "promote": True,
                              "version": "v0002r", "samples": []})
    raw["statuses"] += [
        {"wall": 70.0, "device": "cam-2", "state": "active", "version": "v0002r", "rollout": "r4", "active": "v0002r"},
        {"wall": 72.0, "device": "cam-1", "state": "active", "version": "v0002r", "rollout": "r4", "active": "v0002r"}]
    f = freshness.analyze(raw)
    known = {"v0001": 0, "v0002": 2, "v0003": 3}
    before = freshness.fleet_steps(raw["statuses"], raw["cameras"], known, "v0001")
    assert [st["level"] for st in before] == [2, -1]  # the old reading: the fleet on v0002r looked like no update
    steps = freshness.fleet_steps(raw["statuses"], raw["cameras"], {**known, "v0002r": 2}, "v0001")
    assert [st["level"] for st in steps] == [2]  # it holds update 2: the fleet never went back
    assert f["samples_measured"] == 3 and f["samples_pending"] == 1  # a, b, c delivered at 45 as before; d pending


def test_rollback_lowers_the_fleet_level() -> None:
    raw = _raw()
    steps = freshness.fleet_steps(raw["statuses"], raw["cameras"], {"v0001": 0, "v0002": 2, "v0003": 3}, "v0001")
    assert [(s["wall"], s["level"]) for s in steps] == [(45.0, 2)]  # v0003 never on both; the rollback keeps 2
    # If cam-2 had been on v0003 before cam-1 rolled back, the level would have reached 3 and then dropped.
    extra = raw["statuses"] + [{"wall": 61.0, "device": "cam-2", "state": "active", "version": "v0003",
                                "rollout": "r3", "active": "v0003"}]
    steps = freshness.fleet_steps(extra, raw["cameras"], {"v0001": 0, "v0002": 2, "v0003": 3}, "v0001")
    assert [(s["wall"], s["level"]) for s in steps] == [(45.0, 2), (61.0, 3), (62.0, 2)]


def test_empty_run_is_well_formed() -> None:
    raw = {**_raw(), "samples": [], "updates": [], "statuses": [], "rollouts": []}
    f = freshness.analyze(raw)
    assert f["samples_measured"] == 0 and f["total_p50_s"] is None and f["dominant_stage"] is None
    assert set(f["stages"]) == set(freshness.STAGES)
    json.dumps(f, allow_nan=False)


def test_percentiles_nearest_rank() -> None:
    p = freshness.pcts([float(i) for i in range(1, 101)])
    assert (p["n"], p["p50"], p["p95"], p["max"], p["mean"]) == (100, 50.0, 95.0, 100.0, 50.5)


@needs_mosquitto
@pytest.mark.slow  # bootstrap + dynamo export + edge process start-up: ~1 min even on an idle 2-core box
@pytest.mark.timeout(300)
def test_tiny_run_through_main_is_well_formed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "freshness.json"
    rc = freshness.main(["--quick", "--cameras", "1", "--duration", "20", "--bootstrap-frames", "400", "--json",
                         "--out", str(out)])
    assert rc == 0
    printed = _strict(capsys.readouterr().out)
    result = _strict(out.read_text())
    assert printed == result
    assert result["name"] == "freshness" and result["goal"] == freshness.GOAL
    assert isinstance(result["met"], bool) and "errors" not in result
    f = result["figures"]
    for key in ("total_p50_s", "total_p95_s", "delivered_p50_s", "delivered_fraction", "stages", "dominant_stage", "samples_measured", "versions_rolled_out",
                "samples_pending", "load", "settings"):
        assert key in f, key
    assert set(f["stages"]) == set(freshness.STAGES)
    for st in f["stages"].values():
        assert set(st) >= {"p50", "p95"}
        assert all(v is None or (isinstance(v, (int, float)) and math.isfinite(v)) for v in st.values())
    assert isinstance(f["samples_measured"], int) and f["samples_measured"] >= 0
    assert f["cameras"] == 1 and f["load"]["cpu_count"]
    assert result["met"] == (f["total_p50_s"] is not None and f["total_p50_s"] <= freshness.GOAL_S)


def test_a_bad_trainer_config_is_refused_before_anything_starts(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--trainer-config is checked as the demo checks it (the key named), before a broker or a bootstrap starts;
    nothing is written."""
    bad = tmp_path / "t.yaml"
    bad.write_text("strategy:\n  frozen_blocks: -1\n")
    out = tmp_path / "freshness.json"
    assert freshness.main(["--trainer-config", str(bad), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "--trainer-config" in err and "frozen_blocks" in err and not out.exists()
    own = tmp_path / "own.yaml"
    own.write_text("update:\n  steps: 5\n")
    assert freshness.main(["--trainer-config", str(own), "--out", str(out)]) == 2
    assert "update.steps" in capsys.readouterr().err and not out.exists()


def test_rehearsal_lines_are_not_counted_as_updates() -> None:
    raw = _raw()
    raw["updates"].append({"update": 3, "rehearsal": 1, "start": 52.0, "trained": 53.0, "promote": False,
                           "version": None, "samples": []})
    f = freshness.analyze(raw)
    assert (f["updates"], f["updates_kept_by_gate"], f["rehearsals"]) == (3, 1, 1)
