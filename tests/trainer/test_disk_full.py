"""A really full file system (a small tmpfs made by the test; root only) under the trainer: ingestion stops
acknowledging and says ``degraded`` on trainer/state, a checkpoint that cannot be written is kept in memory
and retried, and everything resumes by itself when space returns -- nothing lost, nothing trained twice."""
from __future__ import annotations

import shutil
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from protocol.messages import Sample, encode_message
from protocol.reports import decode_report
from protocol.mqtt import make_client, start
from protocol.topics import Topics
from trainer.service import TrainerService

sys.path.insert(0, str(Path(__file__).parent))
from full_disk import fill_disk, tmpfs  # noqa: E402
from _helpers import bootstrap_state, png, service_config  # noqa: E402

pytestmark = pytest.mark.timeout(240)
BASE = ["red", "green", "blue"]


@pytest.fixture()
def small_fs(tmp_path: Path):
    """An 8 MiB tmpfs mounted for this test."""
    with tmpfs(tmp_path / "fs", "8m") as fs:
        yield fs


def fill(fs: Path) -> Path:
    """Fill the file system; returns the filler (delete it to give the space back)."""
    return fill_disk(fs / "filler")


def _wait(cond, timeout: float = 60.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_full_disk_degrades_then_resumes_by_itself(small_fs: Path, tmp_path: Path, mosquitto_broker) -> None:
    state = small_fs / "state"
    shutil.copytree(bootstrap_state(tmp_path / "boot", BASE), state)
    prefix = f"test/{uuid.uuid4().hex[:10]}"
    topics = Topics(prefix)
    cfg = service_config(state, **{"mqtt.url": mosquitto_broker.url, "mqtt.topic_prefix": prefix,
                                   "mqtt.client_id": f"trainer-{prefix[-10:]}", "update.batch": 100,
                                   "update.wait_s": 0.5, "eval.heldout": 0.25, "metrics.ingest_stall_s": 1})
    states: list[Any] = []
    watch = make_client(f"watch-{prefix[-10:]}", mosquitto_broker.url)
    watch.on_message = lambda c, u, m: states.append(decode_report(m.payload))  # type: ignore[arg-type]
    start(watch)
    watch.subscribe(topics.trainer_state(), qos=1)
    pub = make_client(f"pub-{prefix[-10:]}", mosquitto_broker.url)
    start(pub)
    rng = np.random.default_rng(0)

    def publish(i: int) -> None:
        label = BASE[i % 3]
        s = Sample(sample_id=f"cam1.1.{i}", model_version="v0001", topk=[(label, 0.5), ("red", 0.4)], uncertainty=0.2,
                   uncertainty_kind="margin", p_select=0.5, reason="uncertain", frame_index=i, width=16, height=16,
                   truth=label)
        pub.publish(topics.samples("cam1"), encode_message(s, png(label, rng), device="cam1", seq=i,
                                                           content_type="image/png"), qos=1)

    svc = TrainerService(cfg, exporter="torchscript").start()
    try:
        _wait(lambda: states and states[-1].state == "online", what="online")
        filler = fill(small_fs)
        for i in range(12):
            publish(i)
        _wait(lambda: states[-1].state == "degraded", what="degraded")
        assert "disk full" in (states[-1].reason or "")
        assert svc.ingestor.stats.acked == 0 and svc.store.count() == 0  # the broker keeps the samples
        assert "ingest" in svc.degraded
        _wait(lambda: not svc.health()[0], what="/healthz failing")  # a sample waits unacknowledged > 1 s
        assert "disk full" in svc.health()[1]["reason"]
        filler.unlink()  # space returns
        _wait(lambda: svc.store.count() == 12, what="the 12 samples stored")
        _wait(lambda: states[-1].state == "online" and not svc.degraded, what="online again")
        n_train = lambda: svc.store.count("heldout = 0")  # noqa: E731
        _wait(lambda: svc.store.count("label IS NOT NULL") == 12 and svc.counters["samples_seen"] == n_train(),
              what="every training sample trained")
    finally:
        svc.stop()
        pub.disconnect()
        pub.loop_stop()
        watch.disconnect()
        watch.loop_stop()

    # A checkpoint on a full disk: the update stays done in memory, is saved when space returns, trained once.
    svc = TrainerService(service_config(state, **{"update.batch": 100}), exporter="torchscript")
    try:
        from _helpers import fill_store

        fill_store(svc.store, BASE, 24, start=100)
        assert not svc.step()  # labelled, buffered, not due (B = 100)
        seen = svc.counters["samples_seen"]
        filler = fill(small_fs)
        assert svc.step(force=True)
        assert "disk full" in svc.degraded.get("checkpoint", ""), svc.degraded
        assert not svc.step()  # still full: retried, nothing trained again
        filler.unlink()
        svc.step()
        assert "checkpoint" not in svc.degraded
        assert svc.counters["samples_seen"] == seen + 18 == svc.store.count("heldout = 0")
    finally:
        svc.stop()
    svc = TrainerService(service_config(state), exporter="torchscript")  # what is on disk agrees
    try:
        assert svc.counters["samples_seen"] == svc.store.count("heldout = 0")
    finally:
        svc.stop()
