"""The learner under faults: poison weights, failing updates (quarantine), a checkpoint that cannot be written,
a second trainer on the same state, the default labeller."""
from __future__ import annotations

import errno
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from trainer import quarantine
from trainer.cli import main as trainer_cli
from trainer.registry import Registry
from trainer.service import TrainerService
from trainer.statelock import StateLock, StateLocked, held
from trainer.store import SampleStore

sys.path.insert(0, str(Path(__file__).parent))
from _helpers import bootstrap_state, fill_store, incoming, service_config  # noqa: E402

pytestmark = pytest.mark.timeout(240)
BASE = ["red", "green", "blue"]
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def bootstrapped(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return bootstrap_state(tmp_path_factory.mktemp("boot"), BASE)


@pytest.fixture()
def state(bootstrapped: Path, tmp_path: Path) -> Path:
    shutil.copytree(bootstrapped, tmp_path / "state")
    return tmp_path / "state"


def _drain(svc: TrainerService) -> None:
    while svc.step():
        pass
    while svc.buffered and svc.step(force=True):
        pass


def _finite(svc: TrainerService) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in svc.model.parameters())


def test_poison_p_select_already_in_the_store_is_trained_with_a_capped_weight(state: Path) -> None:
    """Samples stored before the schema's floor (p_select 1e-50, 0) used to wedge training for good."""
    rng = np.random.default_rng(0)
    with SampleStore(state / "samples") as st:
        st.add_batch([incoming(f"p{i}", BASE[i % 3], rng, seq=i, p_select=[1e-50, 0.0, 0.3][i % 3]) for i in range(40)])
    svc = TrainerService(service_config(state), exporter="torchscript")
    try:
        _drain(svc)
        assert svc.counters["updates"] >= 2 and svc.counters.get("quarantined", 0) == 0
        assert svc.counters["samples_seen"] == svc.store.count("heldout = 0") and _finite(svc)
    finally:
        svc.stop()


def test_a_failing_update_is_quarantined_not_retried_and_survives_a_restart(state: Path, capsys) -> None:
    with SampleStore(state / "samples") as st:
        fill_store(st, BASE, 48)
    cfg = service_config(state)
    svc = TrainerService(cfg, exporter="torchscript")
    real = svc.strategy.update
    calls = {"n": 0}

    def boom(batch, steps):
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("boom: a batch the strategy cannot take")
        return real(batch, steps)

    svc.strategy.update = boom  # type: ignore[method-assign]
    try:
        _drain(svc)
        (entry,) = quarantine.entries(svc.store)
        assert entry.status == "quarantined" and "boom" in entry.reason and len(entry.samples) == 16
        n_train = svc.store.count("heldout = 0")
        assert svc.counters["samples_seen"] == n_train - 16 and svc.counters["quarantined"] == 1
        assert svc.counters["label_seq"] > entry.last_seq  # the learner went past it
        assert [e["id"] for e in svc.status()["quarantine"]] == [entry.id]
    finally:
        svc.stop()

    # A restart does not retry it; trainer status shows it
    svc = TrainerService(cfg, exporter="torchscript")
    try:
        _drain(svc)
        assert quarantine.get(svc.store, entry.id).status == "quarantined"
        assert svc.counters["samples_seen"] == n_train - 16
        assert trainer_cli(["status", "--state-dir", str(state)]) == 0
        assert f"QUARANTINE batch {entry.id}" in capsys.readouterr().out
        # a person retries it: the running trainer trains it once
        assert trainer_cli(["quarantine", "retry", str(entry.id), "--state-dir", str(state)]) == 0
        updates = svc.counters["updates"]
        assert svc.step()
        assert svc.counters["updates"] == updates + 1 and svc.counters["samples_seen"] == n_train
        assert quarantine.get(svc.store, entry.id).status == "retried" and entry.id in svc.retried
        assert not svc.step()  # nothing left to do: not trained twice
        assert trainer_cli(["quarantine", "retry", str(entry.id), "--state-dir", str(state)]) == 2
        assert "is retried" in capsys.readouterr().err
    finally:
        svc.stop()
    svc = TrainerService(cfg, exporter="torchscript")  # the retry is in the checkpoint
    try:
        assert svc.retried == [entry.id] and svc.counters["samples_seen"] == n_train
    finally:
        svc.stop()


def test_an_update_that_leaves_nan_weights_is_rolled_back_and_quarantined(state: Path) -> None:
    with SampleStore(state / "samples") as st:
        fill_store(st, BASE, 24)
    svc = TrainerService(service_config(state), exporter="torchscript")
    real = svc.strategy.update

    def poison(batch, steps):
        out = real(batch, steps)
        with torch.no_grad():
            next(svc.model.parameters()).fill_(float("nan"))
        return out

    svc.strategy.update = poison  # type: ignore[method-assign]
    try:
        svc.step(force=True)
        (entry,) = quarantine.entries(svc.store)
        assert "non-finite" in entry.reason and _finite(svc)  # restored from the checkpoint
        # a retry that fails again goes back, with one more attempt
        quarantine.request(svc.store, entry.id, "retry")
        svc.strategy.update = poison  # type: ignore[method-assign]
        assert svc.step()
        again = quarantine.get(svc.store, entry.id)
        assert again.status == "quarantined" and again.attempts == 2 and _finite(svc)
        assert quarantine.request(svc.store, entry.id, "drop").status == "dropped"
    finally:
        svc.stop()


def test_a_checkpoint_that_cannot_be_written_never_trains_or_promotes_a_batch_twice(state: Path) -> None:
    with SampleStore(state / "samples") as st:
        fill_store(st, BASE, 64)
    svc = TrainerService(service_config(state, **{"eval.min_heldout": 1}), exporter="torchscript")
    real, failures = svc.checkpoint, {"left": 3}

    def full_disk():
        if failures["left"]:
            failures["left"] -= 1
            raise OSError(errno.ENOSPC, "No space left on device")
        return real()

    svc.checkpoint = full_disk  # type: ignore[method-assign]
    trained: list[int] = []
    orig = svc.strategy.update
    svc.strategy.update = lambda batch, steps: (trained.append(len(batch)), orig(batch, steps))[1]  # type: ignore
    decisions = state / "decisions.jsonl"
    before = len(decisions.read_text().splitlines()) if decisions.exists() else 0
    with Registry(state) as reg:
        versions_before = len(reg.list())
    try:
        assert svc.step()  # trains the first batch; its checkpoint fails
        assert trained == [16] and svc.counters["updates"] == 1
        assert "disk full" in svc.degraded["checkpoint"] and svc.status()["state"] == "degraded"
        assert not svc.step() and not svc.step()  # the save is retried; nothing is trained meanwhile
        assert trained == [16]
        assert (len(decisions.read_text().splitlines()) if decisions.exists() else 0) == before  # nothing judged
        assert svc.step()  # saved at last, then judged, then the next batch
        assert "checkpoint" not in svc.degraded
        _drain(svc)
        assert sum(trained) == svc.store.count("heldout = 0") == svc.counters["samples_seen"]  # each sample once
        spans = sorted((h[1], h[2]) for h in svc.history if h[0] > 0)
        assert all(a[1] < b[0] for a, b in zip(spans, spans[1:]))  # label_seq ranges never overlap
        with Registry(state) as reg:
            assert len(reg.list()) - versions_before <= svc.counters["updates"]
    finally:
        svc.stop()


def test_one_trainer_per_state_directory(state: Path, tmp_path: Path) -> None:
    cfg = service_config(state)
    first = TrainerService(cfg, exporter="torchscript")
    try:
        assert held(state)
        with pytest.raises(StateLocked, match="in use by another trainer"):
            TrainerService(cfg, exporter="torchscript")
    finally:
        first.stop()
    assert not held(state)
    TrainerService(cfg, exporter="torchscript").stop()
    # the lock dies with its process, kill -9 included
    other = tmp_path / "other"
    child = subprocess.Popen([sys.executable, "-c", "import sys, time; from trainer.statelock import StateLock; "
                              f"lock = StateLock({str(other)!r}).acquire(); print('locked', flush=True); time.sleep(60)"],
                             cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "locked"  # type: ignore[union-attr]
        with pytest.raises(StateLocked, match=f"pid.: {child.pid}"):
            StateLock(other).acquire()
    finally:
        child.kill()
        child.wait()
    StateLock(other).acquire().release()


def test_trainer_run_labels_by_people_by_default(state: Path, capsys) -> None:
    """Without a choice the labeller is queue (real frames have no ground truth), which needs the label API."""
    assert trainer_cli(["run", "--state-dir", str(state), "--print-config"]) == 0
    assert "kind: queue" in capsys.readouterr().out
    assert trainer_cli(["run", "--state-dir", str(state), "--broker", "none", "--no-api", "--no-metrics"]) == 2
    err = capsys.readouterr().err
    assert "queue (the default) needs the label API" in err and "oracle" in err


def test_samples_waiting_for_a_label_and_skipped_for_lack_of_truth_are_counted(state: Path, capsys) -> None:
    rng = np.random.default_rng(7)
    with SampleStore(state / "samples") as st:
        st.add_batch([incoming(f"t{i}", "red", rng, seq=i) for i in range(6)]
                     + [incoming(f"n{i}", None, rng, seq=10 + i) for i in range(4)])
    svc = TrainerService(service_config(state, **{"labeler.delay_s": 3600}), exporter="torchscript")
    try:
        svc.step()
        svc._count_labels()
        assert (svc.labels_waiting, svc.labels_skipped) == (6, 4)
        assert svc.status()["labels"] == {"waiting": 6, "skipped_no_truth": 4}
        svc._write_health()
        assert trainer_cli(["status", "--state-dir", str(state)]) == 0
        out = capsys.readouterr().out
        assert "labels     6 waiting for a label, 4 without ground truth (skipped by the oracle" in out
        assert json.loads((state / "health.json").read_text())["labels"]["skipped_no_truth"] == 4
    finally:
        svc.stop()
