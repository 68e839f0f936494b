"""kill -9 during an update, restart: no labelled sample lost, none trained twice (beyond the buffer)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from trainer.bootstrap import bootstrap
from trainer.checkpoint import load_checkpoint
from trainer.store import SampleStore

sys.path.insert(0, str(Path(__file__).parent))
from _helpers import fill_store, image_folder  # noqa: E402

pytestmark = pytest.mark.timeout(180)
ROOT = Path(__file__).resolve().parents[2]

_CHILD = r"""
import sys, time
from protocol.config import load_config
from trainer.config import TrainerConfig
from trainer.service import TrainerService
cfg = load_config(TrainerConfig, overrides={"state_dir": sys.argv[1], "mqtt.url": None, "labeler.api_port": None,
    "update.batch": 16, "update.steps": 15, "strategy.replay_batch_size": 16, "strategy.new_batch_size": 16, "eval.heldout": 0.2, "eval.every": 3})
svc = TrainerService(cfg, exporter="torchscript")
orig = svc.strategy.update
def update(batch, steps):
    print("start", svc.counters["updates"] + 1, flush=True)
    return orig(batch, steps)
svc.strategy.update = update
while svc.step():
    print("done", svc.counters["updates"], flush=True)
while svc.buffered and svc.step(force=True):
    print("done", svc.counters["updates"], flush=True)
svc.stop()
print("finished", flush=True)
"""


def _run(state: Path, kill_at_update: int | None) -> list[str]:
    proc = subprocess.Popen([sys.executable, "-c", _CHILD, str(state)], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    lines = []
    for line in proc.stdout:
        lines.append(line.strip())
        if kill_at_update is not None and line.strip() == f"start {kill_at_update}":
            time.sleep(0.05)  # well inside the K optimiser steps
            os.kill(proc.pid, signal.SIGKILL)
            break
    proc.wait(120)
    return lines


def test_sigkill_during_update_then_resume(tmp_path: Path) -> None:
    state = tmp_path / "state"
    bootstrap(state, image_folder(tmp_path / "imgs", ["red", "green", "blue"], 6), arch="small_cnn", input_size=16,
              epochs=1, batch_size=6, exporter="torchscript", progress=False, replay_size=100, torch_threads=1)
    with SampleStore(state / "samples") as st:
        fill_store(st, ["red", "green", "blue", "yellow"], 72)

    first = _run(state, kill_at_update=3)
    assert first[-1] == "start 3" and "done 2" in first
    ckpt = load_checkpoint(state)
    assert ckpt.counters["updates"] == 2  # the killed update left no trace in the learner state

    second = _run(state, kill_at_update=None)
    assert second[-1] == "finished" and second[0] == "start 3"  # resumed with the update that was killed

    ckpt = load_checkpoint(state)
    with SampleStore(state / "samples") as st:
        train = [s.label_seq for s in st.labelled_after(0, limit=1000)]
    history = ckpt.extra["history"]
    assert [h[0] for h in history] == list(range(1, len(history) + 1)) == list(range(1, ckpt.counters["updates"] + 1))
    covered: list[int] = []
    for (_, lo, hi, n), nxt in zip(history, history[1:] + [None]):
        seqs = [q for q in train if lo <= q <= hi]
        assert len(seqs) == n
        covered += seqs
        if nxt is not None:
            assert nxt[1] > hi  # ranges never overlap: nothing trained twice
    assert covered == train  # ... and nothing labelled was lost
    assert ckpt.counters["samples_seen"] == len(train) and ckpt.counters["label_seq"] == max(train)
    assert "yellow" in ckpt.labels
