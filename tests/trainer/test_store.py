"""SampleStore: dedup, durability across a SIGKILL, labels with label_seq and a stratified held-out split."""
from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

from trainer.store import SampleRecord, SampleStore

sys.path.insert(0, str(Path(__file__).parent))
from _helpers import fill_store, incoming  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


def test_add_dedup_and_images_round_trip(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    with SampleStore(tmp_path) as st:
        a, b = incoming("a", "red", rng, seq=0), incoming("b", "green", rng, seq=1)
        r = st.add_batch([a, b, a], Counter({"bad_magic": 2}))
        assert (r.stored, r.duplicates, r.new) == (2, 1, [True, True, False])
        assert st.add_batch([b]).duplicates == 1
        assert st.image("a") == (a.image, "image/png") and st.image("b")[0] == b.image
        assert st.rejections() == {"bad_magic": 2}
        assert st.count() == 2
    with SampleStore(tmp_path) as st:  # reopened: everything still there, appends go on
        assert st.get("a").truth == "red" and st.image("b")[0] == b.image
        st.add_batch([incoming("c", "blue", rng, seq=2)])
        assert st.image("c")[0] and st.image("a")[0] == a.image


def test_the_stored_row_holds_the_incoming_record(tmp_path: Path) -> None:
    """Every field of the record comes back as it went in (topk and roi through their JSON columns)."""
    rng = np.random.default_rng(0)
    a = dataclasses.replace(incoming("a", "red", rng, seq=7), roi=(1, 2, 3, 4), topk=[("red", 0.75), ("blue", 0.25)])
    with SampleStore(tmp_path) as st:
        st.add_batch([a])
        row = st.get("a")
    for f in dataclasses.fields(SampleRecord):
        assert getattr(row, f.name) == getattr(a, f.name), f.name
    assert row.rowid == 1 and row.length == len(a.image) and row.label is None and row.heldout is None


def test_device_seq_gaps_and_duplicates(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    with SampleStore(tmp_path) as st:
        st.add_batch([incoming(f"x{s}", "red", rng, seq=s) for s in (0, 1, 4, 5)])
        st.add_batch([incoming("x3", "red", rng, seq=3), incoming("x5", "red", rng, seq=5)])
        d = st.devices()["cam1"]
        assert d == {"last_seq": 5, "received": 5, "gaps": 1, "missing": 1, "out_of_order": 1, "duplicates": 1}


def test_labels_get_increasing_seq_and_a_stratified_heldout(tmp_path: Path) -> None:
    with SampleStore(tmp_path) as st:
        ids = fill_store(st, ["red", "green"], 40)
        for sid in ids:
            assert st.set_label(sid, st.get(sid).truth, "test", heldout_fraction=0.25)
        assert not st.set_label(ids[0], "blue", "test")  # already labelled
        assert not st.set_label("nope", "blue", "test")  # unknown
        rows = st.labelled_after(0, heldout=None)
        assert [r.label_seq for r in rows] == list(range(1, 41))
        held = Counter(r.label for r in st.heldout())
        assert held == {"red": 5, "green": 5}  # exactly a quarter of each class
        assert len(st.labelled_after(0)) == 30 and st.max_label_seq() == 40


_WRITER = r"""
import sys, numpy as np
sys.path.insert(0, sys.argv[2])
from _helpers import incoming
from trainer.store import SampleStore
st = SampleStore(sys.argv[1])
rng = np.random.default_rng(0)
i = 0
while True:
    st.add_batch([incoming(f"k{i + j:06d}", "red", rng, seq=i + j) for j in range(20)])
    i += 20
    print(i, flush=True)
"""


def test_committed_batches_survive_sigkill(tmp_path: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(tmp_path), str(Path(__file__).parent)],
                            cwd=ROOT, stdout=subprocess.PIPE, text=True)
    committed = 0
    deadline = time.monotonic() + 60
    while committed < 200 and time.monotonic() < deadline:
        committed = int(proc.stdout.readline())
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert committed >= 200
    with SampleStore(tmp_path) as st:
        n = st.count()
        assert n >= committed  # everything reported committed is there (maybe one more batch)
        for s in st.query(limit=n):
            data, _ = st.image(s)
            assert data[:4] == b"\x89PNG"
