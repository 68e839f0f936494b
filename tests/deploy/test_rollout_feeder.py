"""deploy/rollout_feeder.py over a real mosquitto: promoted versions become rollouts one at a time, the newest
next, with the last version the whole fleet ran as the rollback target; bad promotions are refused clearly."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from conftest import wait_for  # tests/deploy/conftest.py
from deploy.controller import Controller, Policy
from deploy.rollout_feeder import RolloutFeeder

pytestmark = pytest.mark.timeout(150)

FAST = Policy(waves=[0.5, 1.0], soak=0.5, health_seconds=0.5, wave_timeout=30.0)
METRICS = {"accuracy": 0.9, "macro_f1": 0.88, "n": 40}


@pytest.fixture(scope="module")
def good3(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from model_factory import make_onnx_model

    return make_onnx_model(tmp_path_factory.mktemp("good3") / "good3.onnx", version="v0006", seed=2, train_steps=40)


class Notes:
    """A notify callback that keeps what it was told."""

    def __init__(self) -> None:
        self.items: list[dict[str, Any]] = []

    def __call__(self, kind: str, text: str, wall: float | None = None, **data: Any) -> None:
        self.items.append({"kind": kind, "text": text, **data})

    def kinds(self, version: str) -> list[str]:
        return [n["kind"] for n in self.items if n.get("version") == version]


def _finished(feeder: RolloutFeeder, n: int) -> bool:
    feeder.poll()
    recs = feeder.records()
    return len(recs) >= n and recs[n - 1]["finished_wall"] is not None


def test_one_rollout_at_a_time_and_the_newest_promotion_next(rollout_env, models, good3) -> None:
    ctl, lf = rollout_env(4)
    notes = Notes()
    feeder = RolloutFeeder(ctl, ("v0001", models["good1"]), FAST, notify=notes)
    feeder.on_promoted("v0002", models["good2"], METRICS)
    feeder.poll()
    assert [r["version"] for r in feeder.records()] == ["v0002"]
    # Two more promotions while v0002 is rolling out: v0003 is overtaken by v0006 before it could start.
    feeder.on_promoted("v0003", models["nan"], METRICS)
    feeder.on_promoted("v0006", good3, METRICS)
    feeder.poll()
    assert [r["version"] for r in feeder.records()] == ["v0002"] and "v0002" in feeder.describe()
    wait_for(lambda: _finished(feeder, 1), 60, "v0002 rollout finished")
    wait_for(lambda: _finished(feeder, 2), 60, "v0006 rollout finished")
    feeder.close()
    recs = feeder.records()
    assert [(r["version"], r["previous"], r["outcome"]) for r in recs] == [
        ("v0002", "v0001", "completed"), ("v0006", "v0002", "completed")]
    assert all(r["waves"] == 2 and r["seconds"] > 0 for r in recs)
    assert set(lf.versions().values()) == {"v0006"}
    assert [p["version"] for p in feeder.promotions] == ["v0002", "v0003", "v0006"]
    assert notes.kinds("v0003") == ["promoted"]  # never rolled out
    for v in ("v0002", "v0006"):
        assert notes.kinds(v)[:2] == ["promoted", "rollout"] and notes.kinds(v)[-1] == "completed"
        assert notes.kinds(v).count("wave") == 2
    assert feeder.describe().startswith("idle; fleet baseline v0006")


def test_a_delivered_weights_only_rollout_is_taken_over_by_the_newest_promotion(rollout_env, models, good3) -> None:
    """On the weights-only waves, v0002 (good1's graph, other weights) goes to all four devices at once; a soak of
    600 s would hold the fleet, but once every device runs it the newer v0006 takes over. Nobody is left behind,
    and the rollback target stays the last version whose rollout completed (v0001), not the superseded one."""
    ctl, lf = rollout_env(4)
    notes = Notes()
    policy = Policy(waves=[0.5, 1.0], weights_only_waves=[1.0], soak=600.0, health_seconds=0.5, wave_timeout=900.0)
    feeder = RolloutFeeder(ctl, ("v0001", models["good1"]), policy, notify=notes)
    feeder.on_promoted("v0002", models["good2"], METRICS)
    feeder.poll()
    first = feeder.records()[0]["id"]
    assert ctl.weights_only(first) and not ctl.delivered("no-such-rollout")
    feeder.on_promoted("v0006", good3, METRICS)

    def v0006_everywhere() -> bool:
        feeder.poll()
        return set(lf.versions().values()) == {"v0006"}

    wait_for(v0006_everywhere, 60, "v0006 on every device")
    recs = feeder.records()
    assert [(r["version"], r["previous"], r["outcome"], r["waves"]) for r in recs] == [
        ("v0002", "v0001", "superseded", 1), ("v0006", "v0001", "running", 1)]
    assert ctl.store.fleet_baseline(ctl.default_fleet) == "v0001"
    assert "v0002 superseded by v0006" in [n["text"] for n in notes.items if n.get("version") == "v0002"]
    feeder.close()


def test_a_rollout_with_the_canary_is_never_taken_over(rollout_env, models, good3) -> None:
    """The same, but v0002 is not a weights-only change (its waves are the full ones): v0006 waits for it."""
    ctl, lf = rollout_env(4)
    policy = Policy(waves=[0.5, 1.0], soak=600.0, health_seconds=0.5, wave_timeout=900.0)
    feeder = RolloutFeeder(ctl, ("v0001", models["good1"]), policy)
    feeder.on_promoted("v0002", models["good2"], METRICS)
    feeder.poll()
    rid = feeder.records()[0]["id"]
    with ctl._lock:  # the canary's soak over already: the last wave goes out on the canary's report
        if not ctl.store.rollout(rid).wave_published:
            ctl.tick()
        assert ctl.store.rollout(rid).wave_published
        ctl.store._update(rid, "wave_started=?", (0.0,))
    wait_for(lambda: set(lf.versions().values()) == {"v0002"}, 60, "v0002 on every device")
    wait_for(lambda: ctl.delivered(rid), 30, "the last wave delivered")
    feeder.on_promoted("v0006", good3, METRICS)
    for _ in range(10):
        feeder.poll()
    assert [r["version"] for r in feeder.records()] == ["v0002"] and not ctl.weights_only(rid)
    assert ctl.store.rollout(rid).state == "running"
    feeder.close()


def test_a_rolled_back_version_is_not_the_next_rollback_target(rollout_env, models) -> None:
    ctl, lf = rollout_env(4)
    notes = Notes()
    feeder = RolloutFeeder(ctl, ("v0001", models["good1"]), FAST, notify=notes)
    feeder.on_promoted("v0003", models["nan"], METRICS)
    wait_for(lambda: _finished(feeder, 1), 60, "v0003 rollout finished")
    feeder.on_promoted("v0002", models["good2"], METRICS)
    wait_for(lambda: _finished(feeder, 2), 60, "v0002 rollout finished")
    recs = feeder.records()
    assert [(r["version"], r["previous"], r["outcome"]) for r in recs] == [
        ("v0003", "v0001", "rolled_back"), ("v0002", "v0001", "completed")]
    assert "rollback" in notes.kinds("v0003")
    assert set(lf.versions().values()) == {"v0002"}


def test_bad_promotions_are_refused_and_later_ones_still_ship(rollout_env, models, tmp_path) -> None:
    ctl, lf = rollout_env(2)
    notes = Notes()
    feeder = RolloutFeeder(ctl, ("v0001", models["good1"]), FAST, notify=notes)
    with pytest.raises(ValueError, match="not a plain name"):
        feeder.on_promoted("../v0009", models["good2"], METRICS)
    with pytest.raises(ValueError, match="no model_dir"):
        feeder.on_promoted("v0009", models["good2"].read_bytes(), METRICS)
    not_onnx = tmp_path / "v0008.onnx"
    not_onnx.write_bytes(b"this is not a model")
    feeder.on_promoted("v0008", not_onnx, METRICS)
    feeder.poll()
    assert feeder.rejected == 3 and feeder.records() == []
    assert notes.kinds("v0008") == ["promoted", "failed"] and "rollout not started" in notes.items[-1]["text"]
    feeder.on_promoted("v0002", models["good2"], METRICS)
    wait_for(lambda: _finished(feeder, 1), 60, "v0002 rollout finished")
    assert feeder.records()[0]["outcome"] == "completed"


def test_model_bytes_are_kept_in_model_dir(models, keys, tmp_path) -> None:
    ctl = Controller("mqtt://127.0.0.1:1", keys["priv"], tmp_path / "ctl")  # never started: nothing to publish
    try:
        feeder = RolloutFeeder(ctl, ("v0001", models["good1"]), model_dir=tmp_path / "models")
        data = models["good2"].read_bytes()
        feeder.on_promoted("v0002", data, METRICS)
        kept = tmp_path / "models" / "v0002.onnx"
        assert kept.read_bytes() == data and feeder.pending == ("v0002", kept.resolve())
        assert feeder.promotions[-1]["path"] == str(kept.resolve())
        assert not list((tmp_path / "models").glob(".*.tmp"))
    finally:
        ctl.store.close()


def test_after_close_promotions_are_recorded_but_not_rolled_out(models, keys, tmp_path) -> None:
    ctl = Controller("mqtt://127.0.0.1:1", keys["priv"], tmp_path / "ctl")
    try:
        feeder = RolloutFeeder(ctl, ("v0001", models["good1"]))
        feeder.close()
        feeder.on_promoted("v0002", models["good2"], METRICS)
        feeder.poll()
        assert feeder.records() == [] and [p["version"] for p in feeder.promotions] == ["v0002"]
        assert feeder.describe() == "idle; fleet baseline v0001, next v0002"
    finally:
        ctl.store.close()
