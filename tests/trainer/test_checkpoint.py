"""Checkpoint round trip, fallback on damage, and atomicity when the writer is SIGKILLed at random moments."""
from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from trainer.checkpoint import CheckpointError, checkpoint_dir, load_checkpoint, save_checkpoint
from trainer.nets import build_model


class Replay:
    """Stand-in replay memory: numpy images, tensor logits, plain metadata."""

    def __init__(self) -> None:
        self.images = np.zeros((0, 28, 28), np.uint8)
        self.logits = torch.zeros(0, 3)
        self.meta: dict = {}

    def state_dict(self) -> dict:
        return {"images": self.images, "logits": self.logits, "meta": self.meta}

    def load_state_dict(self, state: dict) -> None:
        self.images, self.logits, self.meta = state["images"], state["logits"], state["meta"]


def test_empty_state_dir_has_no_checkpoint(tmp_path: Path) -> None:
    assert load_checkpoint(tmp_path) is None


def test_round_trip_restores_everything(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = build_model("small_cnn", 3)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model(torch.randn(4, 3, 64, 64)).sum().backward()
    opt.step()
    replay = Replay()
    replay.images = np.random.default_rng(0).integers(0, 255, (5, 28, 28), dtype=np.uint8)
    replay.logits = torch.randn(5, 3)
    replay.meta = {"seen": 17, "weights": [1.0, 2.5], "ids": ["a", "b"]}
    counters = {"samples_seen": 1234, "last_rowid": 99, "updates": 7}
    save_checkpoint(tmp_path, model=model, optimizer=opt, replay=replay, counters=counters,
                    labels=["ok", "scratch", "dent"], arch="small_cnn")

    ck = load_checkpoint(tmp_path)
    assert ck is not None and ck.generation == 1 and ck.arch == "small_cnn"
    assert ck.labels == ["ok", "scratch", "dent"] and ck.counters == counters
    model2 = ck.build_model()
    opt2 = torch.optim.Adam(model2.parameters(), lr=1e-3)
    replay2 = Replay()
    ck.restore(optimizer=opt2, replay=replay2)
    for k, v in model.state_dict().items():
        assert torch.equal(v, model2.state_dict()[k]), k
    s1, s2 = opt.state_dict()["state"], opt2.state_dict()["state"]
    assert s1.keys() == s2.keys() and all(torch.equal(s1[i]["exp_avg"], s2[i]["exp_avg"]) for i in s1)
    np.testing.assert_array_equal(replay2.images, replay.images)
    assert torch.equal(replay2.logits, replay.logits) and replay2.meta == replay.meta


def test_keeps_two_generations_and_falls_back_when_newest_is_damaged(tmp_path: Path) -> None:
    model = torch.nn.Linear(2, 2)
    for step in range(1, 5):
        save_checkpoint(tmp_path, model=model, arch="lin", labels=["a"], counters={"step": step})
    files = sorted(p.name for p in checkpoint_dir(tmp_path).iterdir())
    assert files == ["ckpt-00000003.pt", "ckpt-00000004.pt"]
    assert load_checkpoint(tmp_path).counters["step"] == 4

    newest = checkpoint_dir(tmp_path) / "ckpt-00000004.pt"
    data = bytearray(newest.read_bytes())
    data[-10] ^= 0xFF  # a bit rot the rename could not prevent
    newest.write_bytes(bytes(data))
    ck = load_checkpoint(tmp_path)
    assert ck.counters["step"] == 3 and ck.generation == 3

    (checkpoint_dir(tmp_path) / "ckpt-00000003.pt").write_bytes(b"junk")
    with pytest.raises(CheckpointError, match="no intact checkpoint"):
        load_checkpoint(tmp_path)


def test_leftover_tmp_files_are_ignored_then_cleaned(tmp_path: Path) -> None:
    model = torch.nn.Linear(2, 2)
    save_checkpoint(tmp_path, model=model, arch="lin", labels=["a"], counters={"step": 1})
    stray = checkpoint_dir(tmp_path) / "ckpt-00000002.pt.tmp-12345"
    stray.write_bytes(b"half a checkpoint")
    assert load_checkpoint(tmp_path).counters["step"] == 1
    save_checkpoint(tmp_path, model=model, arch="lin", labels=["a"], counters={"step": 2})
    assert not stray.exists()


def test_unpicklable_content_is_refused(tmp_path: Path) -> None:
    """Loading never unpickles arbitrary classes; a replay state with one fails loudly, not silently."""
    from fractions import Fraction

    class BadReplay:
        def state_dict(self) -> dict:
            return {"obj": Fraction(1, 3)}

    save_checkpoint(tmp_path, model=torch.nn.Linear(1, 1), arch="lin", labels=["a"], counters={}, replay=BadReplay())
    with pytest.raises(CheckpointError):
        load_checkpoint(tmp_path)


# A writer that resumes from the last checkpoint and saves forever. Every piece of state is a function of
# the step, so a torn mix of two saves is detectable: weights == step, Adam's step == step, labels and
# replay sized by step, counters == step. With a pause point it stops *inside* save_checkpoint on its second
# save (just before / just after the rename) and waits there to be killed: random timing alone rarely hits
# those windows on a busy machine, and they are the ones that matter.
_WRITER = textwrap.dedent(
    """
    import os, sys, time, numpy as np, torch
    from trainer.checkpoint import load_checkpoint, save_checkpoint

    state_dir, pause = sys.argv[1], sys.argv[2]
    saves = 0
    real_replace = os.replace

    def replace(src, dst):
        if pause == "before_replace" and saves == 1:
            print("paused", flush=True); time.sleep(600)
        real_replace(src, dst)
        if pause == "after_replace" and saves == 1:
            print("paused", flush=True); time.sleep(600)

    os.replace = replace

    class Replay:
        def __init__(self): self.state = {}
        def state_dict(self): return self.state
        def load_state_dict(self, s): self.state = s

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(256, 1024), torch.nn.Linear(1024, 8))  # ~1 MB + 2 MB Adam
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    replay = Replay()
    ck = load_checkpoint(state_dir)
    step = 0
    if ck is not None:
        ck.restore(model, opt, replay)
        step = ck.counters["step"]
    print("ready", step, flush=True)
    while True:
        step += 1
        opt.zero_grad()
        model(torch.ones(1, 256)).sum().backward()
        opt.step()
        with torch.no_grad():
            for p in model.parameters():
                p.fill_(float(step))
        replay.state = {"images": np.full((step % 7 + 1, 4), step % 256, np.uint8), "step": step}
        save_checkpoint(state_dir, model=model, optimizer=opt, replay=replay, arch="test",
                        labels=[f"c{i}" for i in range(2 + step % 5)],
                        counters={"step": step, "samples_seen": 10 * step, "last_rowid": 3 * step})
        saves += 1
        print("saved", step, flush=True)
    """
)


def _check_consistent(ck) -> int:  # type: ignore[no-untyped-def]
    step = ck.counters["step"]
    assert ck.counters == {"step": step, "samples_seen": 10 * step, "last_rowid": 3 * step}
    assert ck.labels == [f"c{i}" for i in range(2 + step % 5)]
    assert all(torch.all(v == float(step)) for v in ck.model_state.values())
    adam_steps = {int(s["step"]) for s in ck.optimizer_state["state"].values()}
    assert adam_steps == {step}
    assert ck.replay_state["step"] == step
    np.testing.assert_array_equal(ck.replay_state["images"], np.full((step % 7 + 1, 4), step % 256, np.uint8))
    return step


def test_sigkill_at_any_moment_never_tears_a_checkpoint(tmp_path: Path) -> None:
    """kill -9 just before the rename, just after it (before the dir fsync and cleanup), and at a random
    moment: every time the checkpoint loads, is internally consistent, and keeps every acknowledged save."""
    script = tmp_path / "writer.py"
    script.write_text(_WRITER)
    rnd = random.Random(1234)
    last = 0
    for pause in ("before_replace", "after_replace", "random"):
        proc = subprocess.Popen([sys.executable, str(script), str(tmp_path), pause], stdout=subprocess.PIPE, text=True)
        acked = last
        try:
            assert proc.stdout.readline().split() == ["ready", str(last)]
            if pause == "random":
                while acked <= last + 1:
                    line = proc.stdout.readline()
                    assert line, "writer died"
                    acked = int(line.split()[1])
                time.sleep(rnd.uniform(0.0, 0.2))
            else:
                for line in proc.stdout:
                    if line.startswith("paused"):
                        break
                    acked = int(line.split()[1])
                else:
                    pytest.fail("writer died before its pause point")
        finally:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            proc.stdout.close()
        tmp_files = list(checkpoint_dir(tmp_path).glob("*.tmp-*"))
        step = _check_consistent(load_checkpoint(tmp_path))
        if pause == "before_replace":
            assert step == acked == last + 1 and tmp_files  # the in-flight save never landed; its tmp is ignored
        elif pause == "after_replace":
            assert step == acked + 1 == last + 2  # renamed = committed, even if never acknowledged
        else:
            assert step >= acked  # an acknowledged save is never lost
        last = step
