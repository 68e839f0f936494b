"""The chaos benchmark's parts that judge a run, in seconds: its fault plan, and the outside readings it trusts
(a camera's model on disk, its outbox, the trainer's store). The whole benchmark runs in `bench all --quick`."""
from __future__ import annotations

import hashlib
import json
import sqlite3
from pathlib import Path

import pytest

from bench import chaos_checks as cc
from bench.chaos import Plan
from edge.outbox import Outbox


@pytest.mark.parametrize("quick", [True, False])
def test_the_plan_has_every_fault_inside_the_stream(quick: bool) -> None:
    for seed in range(20):
        p = Plan.make(quick, seed)
        kinds = [k for _, k in p.events]
        want = {"broker": 2, "trainer": 2, "camera": 1} if quick else {"broker": 3, "trainer": 3, "camera": 2}
        assert {k: kinds.count(k) for k in want} == want
        assert kinds.count("controller") == 1 and kinds.count("controller_mid") == 1
        assert all(0 < at < p.stream_s for at, _ in p.events)
        # the partition (and the full disk inside it) heals at least 10 s before the stream ends
        assert 0 < p.partition_at and p.partition_at + p.partition_s <= p.stream_s - 10
    assert Plan.make(quick, 3) == Plan.make(quick, 3) and Plan.make(quick, 3) != Plan.make(quick, 4)


def _camera_with_model(tmp_path: Path, data: bytes, named: bytes) -> tuple[Path, Path]:
    """A camera state dir whose active.json names ``named``'s hash while models/ holds ``data`` under that name."""
    state = tmp_path / "cam"
    (state / "models").mkdir(parents=True)
    sha = hashlib.sha256(named).hexdigest()
    (state / "models" / f"{sha}.onnx").write_bytes(data)
    (state / "active.json").write_text(json.dumps({"active": {"version": "v0002", "sha256": sha}}))
    provisioned = tmp_path / "v0001.onnx"
    provisioned.write_bytes(b"provisioned")
    return state, provisioned


def test_a_camera_on_its_verified_model(tmp_path: Path) -> None:
    state, provisioned = _camera_with_model(tmp_path, b"model v2", b"model v2")
    m = cc.camera_model(state, provisioned)
    assert m == {"version": "v0002", "sha256": hashlib.sha256(b"model v2").hexdigest(), "pointer_ok": True}


def test_a_half_written_model_is_seen_as_broken(tmp_path: Path) -> None:
    state, provisioned = _camera_with_model(tmp_path, b"model v", b"model v2")  # cut short
    m = cc.camera_model(state, provisioned)
    assert not m["pointer_ok"] and m["version"] is None  # it would boot the provisioned model, not v0002
    assert m["sha256"] == hashlib.sha256(b"provisioned").hexdigest()


def test_outbox_readings(tmp_path: Path) -> None:
    with Outbox(tmp_path / "outbox.sqlite", synchronous="NORMAL") as ob:
        for i in range(3):
            ob.put(f"cam.1.{i}", "t", b"x")
        ob.ack(ob.peek_batch(1)[0].id)
        assert cc.outbox_counts(tmp_path) == {"put": 3, "acked": 1, "dropped": 0, "left": 2}
        assert cc.outbox_ids(tmp_path) == ["cam.1.1", "cam.1.2"]


def test_stored_copies_and_trained_twice(tmp_path: Path) -> None:
    (tmp_path / "samples").mkdir()
    with sqlite3.connect(tmp_path / "samples" / "samples.db") as db:
        db.execute("CREATE TABLE samples (sample_id TEXT, device TEXT)")
        db.executemany("INSERT INTO samples VALUES (?, ?)", [("a", "cam-1"), ("b", "cam-1"), ("c", "cam-2")])
    (tmp_path / "timeline.jsonl").write_text('{"samples": ["a", "b"]}\n{"samples": ["c", "a"]}\n{"samp')
    assert cc.stored_copies(tmp_path, ["a", "c", "z"]) == {"a": 1, "c": 1, "z": 0}
    assert cc.trainer_view(tmp_path) == ({"cam-1": 2, "cam-2": 1}, 1)
