"""The rollout store: typed rows, the allowed state moves, commands across processes, and state dirs written
by earlier releases (real SQLite files, no broker)."""
from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import msgspec
import pytest

from deploy.rollout_gate import Policy
from deploy.rollout_store import (SCHEMA_VERSION, TERMINAL, FleetTarget, RolloutStore, SchemaError, State,
                                  TRANSITIONS)


@pytest.fixture
def store(tmp_path: Path):
    s = RolloutStore(tmp_path / "rollout.sqlite")
    yield s
    s.close()


def test_a_rollout_walks_its_waves_as_typed_rows(store: RolloutStore) -> None:
    r = store.create_rollout("f", "parts", "v2", "v1", Policy(waves=[0.1, 1.0], soak=5))
    assert store.get_active() == [r] and store.latest() == r and store.latest("other") is None
    store.mark_wave_published(r.id, 1234)
    got = store.rollout(r.id)
    assert got is not None and got.wave_published and got.below == 1234 and got.wave_started is not None
    assert got.soak_started is None  # the wave's soak counts from wave_started
    assert store.set_state(r.id, State.PAUSED) and store.set_state(r.id, State.RUNNING)
    assert store.rollout(r.id).soak_started >= got.wave_started  # a resume starts the soak again
    store.next_wave(r.id)
    got = store.rollout(r.id)
    assert (got.wave, got.wave_published, got.soak_started, got.below) == (1, False, None, 1234)
    assert got.policy == Policy(waves=[0.1, 1.0], soak=5)
    assert store.set_state(r.id, State.COMPLETED)
    done = store.rollout(r.id)
    assert done.state == "completed" and done.finished is not None and not done.active
    assert store.get_active() == [] and store.rollouts() == [done]


def test_only_allowed_moves_happen(store: RolloutStore) -> None:
    r = store.create_rollout("f", "parts", "v2", "v1", Policy())
    assert store.set_state(r.id, State.PAUSED)
    assert not store.set_state(r.id, State.COMPLETED)  # a paused rollout does not complete
    assert store.set_state(r.id, State.RUNNING)
    assert store.set_state(r.id, State.ROLLING_BACK, "breach")
    assert store.rollout(r.id).wave_started is not None  # the rollback's wait starts now
    assert store.set_state(r.id, State.SUPERSEDED, "superseded by v3")
    # A controller holding an older view cannot bring a superseded rollout back.
    for state in State:
        assert not store.set_state(r.id, state)
    assert store.rollout(r.id).reason == "superseded by v3"
    assert all(TRANSITIONS[s] == () for s in TERMINAL)


def test_commands_are_checked_and_a_newer_one_survives_the_take(store: RolloutStore) -> None:
    r = store.create_rollout("f", "parts", "v2", None, Policy())
    with pytest.raises(ValueError, match="unknown rollout command 'restart'"):
        store.queue_command(r.id, "restart")
    store.queue_command(r.id, "pause")
    store.queue_command(r.id, "abort")  # queued by another shell before the controller took "pause"
    store.clear_command(r.id, "pause")
    assert store.rollout(r.id).command == "abort"
    store.clear_command(r.id, "abort")
    assert store.rollout(r.id).command is None


def test_events_carry_their_rollouts_version(store: RolloutStore) -> None:
    r = store.create_rollout("f", "parts", "v2", None, Policy())
    store.add_event(r.id, "started", "parts/v2")
    store.add_event(None, "chunks_cleared", "parts/v0")
    evs = store.events_since(0.0)
    assert [(e.kind, e.version) for e in evs] == [("started", "v2"), ("chunks_cleared", None)]
    assert [e.kind for e in store.events(r.id)] == ["started"]
    assert store.events_since(evs[-1].ts) == []


def test_models_and_fleet_targets(store: RolloutStore) -> None:
    store.save_model("parts", "v1", "ab" * 32, "/m/v1.onnx", 1000, 256)
    store.save_model("parts", "v1", "cd" * 32, "/m/v1b.onnx", 1000, 256)  # re-registered: one row
    store.set_published("parts", "v1", True)
    m = store.model("parts", "v1")
    assert m is not None and m.path == "/m/v1b.onnx" and m.published and m.chunks == 4
    assert store.model_id_of("v1") == "parts" and store.model_id_of("v9") is None
    assert [p.version for p in store.published_models()] == ["v1"]
    t = FleetTarget(fleet="f", rollout_id="r1", model_id="parts", version="v1", wave=0, below=10000, seq=7,
                    expires=1e10, policy=Policy(shadow=5))
    store.set_target(t)
    assert store.target("f") == t and store.targets() == [t] and store.target("g") is None


def test_seq_is_monotonic_and_the_heartbeat_tells_if_a_controller_runs(store: RolloutStore) -> None:
    a, b = store.next_seq(), store.next_seq()
    assert b > a
    assert store.heartbeat() is None and not store.controller_alive()
    store.beat()
    assert store.controller_alive()
    store.beat(1.0)
    assert not store.controller_alive()


# -- state dirs of earlier releases -------------------------------------------------------------------------
OLD_POLICY = {"waves": [0.05, 0.25, 1.0], "soak": 60.0, "max_failed": 0.1, "min_agreement": 0.9, "shadow": 200,
              "shadow_seconds": 60.0, "max_confidence_drop": 0.3, "max_latency_ratio": 2.5,
              "latency_slack_ms": 7.0, "health_seconds": 30.0, "wave_timeout": 600.0, "expiry": 604800.0}


def _legacy_state_dir(path: Path) -> None:
    """A rollout.sqlite as the controller before schema versions left it: mid-rollout, wave 2 published."""
    from deploy.rollout_store import _SCHEMA  # the tables themselves did not change

    db = sqlite3.connect(path)
    db.executescript(_SCHEMA)
    db.execute("INSERT INTO rollouts(id, fleet, model_id, version, prev_version, state, wave, below, "
               "wave_published, wave_started, soak_started, policy, created, updated) "
               "VALUES('r-old', 'default', 'parts', 'v2', 'v1', 'running', 1, 2600, 1, 100.0, NULL, ?, 90.0, 100.0)",
               (json.dumps(OLD_POLICY),))
    db.execute("INSERT INTO fleets VALUES('default', 'r-old', 'parts', 'v2', 1, 2600, 5, 1e10, ?)",
               (json.dumps(OLD_POLICY),))
    db.execute("INSERT INTO meta VALUES('seq', '5')")
    db.commit()
    db.close()


def test_an_earlier_releases_state_dir_continues_where_it_stopped(tmp_path: Path) -> None:
    path = tmp_path / "rollout.sqlite"
    _legacy_state_dir(path)
    store = RolloutStore(path)
    try:
        [r] = store.get_active()
        assert (r.id, r.state, r.wave, r.below, r.wave_published, r.prev_version) == \
            ("r-old", State.RUNNING, 1, 2600, True, "v1")
        assert (r.policy.shadow_max_confidence_drop, r.policy.shadow_max_latency_ratio,
                r.policy.shadow_latency_slack_ms, r.policy.shadow) == (0.3, 2.5, 7.0, 200)
        assert store.target("default").policy == r.policy
        assert store.next_seq() > 5
    finally:
        store.close()
    assert sqlite3.connect(path).execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    RolloutStore(path).close()  # a second open finds the current schema


def test_a_newer_releases_state_dir_is_refused_by_name(tmp_path: Path) -> None:
    path = tmp_path / "rollout.sqlite"
    RolloutStore(path).close()
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    db.close()
    with pytest.raises(SchemaError, match=f"rollout schema {SCHEMA_VERSION + 1}"):
        RolloutStore(path)


def test_a_schema_1_state_dir_gains_the_approval_step(tmp_path: Path) -> None:
    """Schema 2 adds a command's detail to rollouts (and the promotions and requests tables)."""
    from deploy.rollout_store import _SCHEMA

    path = tmp_path / "rollout.sqlite"
    old = _SCHEMA.replace(", command_detail TEXT", "").split("CREATE TABLE IF NOT EXISTS promotions")[0]
    db = sqlite3.connect(path)
    db.executescript(old)
    db.execute("INSERT INTO rollouts(id, fleet, model_id, version, prev_version, state, policy, created, updated) "
               "VALUES('r-1', 'default', 'parts', 'v2', 'v1', 'running', ?, 90.0, 100.0)",
               (msgspec.json.encode(Policy()).decode(),))  # schema 1: policies already use the shadow_* names
    db.execute("PRAGMA user_version=1")
    db.commit()
    db.close()
    store = RolloutStore(path)
    try:
        assert store.rollout("r-1").command_detail is None
        store.queue_command("r-1", "pause", "by alice")
        assert store.rollout("r-1").command_detail == "by alice"
        assert store.record_promotion("parts", "v3", 3, "v2", "a" * 64, 10, 1.0, "{}")
    finally:
        store.close()


def test_approval_by_version_names_who_and_what_waits(store: RolloutStore) -> None:
    store.set_baseline("default", "v1")
    assert store.fleet_baseline("default") == "v1"
    w = store.create_rollout("default", "parts", "v3", "v1", Policy(), State.AWAITING_APPROVAL)
    assert store.get_waiting() == [store.rollout(w.id)] and store.get_active() == []
    with pytest.raises(KeyError, match=r"no rollout of v2 awaits approval \(waiting: v3 \(fleet default\)\)"):
        store.approve("v2", "alice")
    assert store.approve("v3", "alice").id == w.id
    r = store.rollout(w.id)
    assert (r.command, r.command_detail) == ("approve", "by alice")
    store.reject("v3", "bob", "wrong line")  # the newer command replaces the one not yet taken
    assert store.rollout(w.id).command_detail == "by bob: wrong line"
    assert store.set_state(w.id, State.REJECTED, "by bob: wrong line") and store.rollout(w.id).finished
    assert not store.set_state(w.id, State.RUNNING)  # rejected is final
    with pytest.raises(ValueError):
        store.create_rollout("default", "parts", "v4", "v1", Policy(), State.PAUSED)
    done = store.create_rollout("default", "parts", "v4", "v1", Policy())
    store.set_state(done.id, State.COMPLETED)
    assert store.fleet_baseline("default") == "v4"  # the last version the whole fleet reached


def test_promotions_are_recorded_once_and_counted(store: RolloutStore) -> None:
    assert store.record_promotion("parts", "v2", 2, "v1", "a" * 64, 100, 5.0, '{"version": "v2"}')
    assert not store.record_promotion("parts", "v2", 2, "v1", "a" * 64, 100, 5.0, "{}")  # retained: repeats
    store.record_promotion("parts", "v3", 3, "v2", "b" * 64, 100, 6.0, "{}")
    store.set_promotion("parts", "v2", "skipped", detail="v3 is newer")
    store.set_promotion("parts", "v3", "ready", path="/x/v3.onnx")
    with pytest.raises(ValueError):
        store.set_promotion("parts", "v3", "lost")
    assert [p.version for p in store.promotions()] == ["v2", "v3"]
    assert store.promotion("parts", "v3").path == "/x/v3.onnx" and store.promotion("parts", "v2").detail == "v3 is newer"
    assert store.count_promotions() == {"skipped": 1, "ready": 1}
