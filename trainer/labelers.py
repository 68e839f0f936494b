"""Labellers: where the labels for stored samples come from.

All three write through :meth:`SampleStore.set_label`, so the rest of the trainer never knows which one
was used, and every label gets its ``label_seq`` and its train/held-out assignment the same way.

- ``oracle``: the ground truth that simulated sources put into each sample, after a configurable delay
  (a person is not instant) and with a configurable, seeded label-noise rate (people make mistakes).
  The noise decision is a hash of (seed, sample id), so a restart labels the same sample the same way.
- ``queue``: nothing automatic; samples wait for a person (HTTP API in :mod:`trainer.label_api`,
  ``edgeloop label`` in the terminal).
- ``import``: labels from a CSV file ``sample_id,label`` (re-read when it changes; rows for samples that
  have not arrived yet are kept and applied when they do). A row whose label is not a known class
  (:mod:`trainer.classes`) is rejected, counted and logged: add a new class explicitly first.

The oracle alone may introduce a class by labelling with it: it is the simulation's ground truth.
"""
from __future__ import annotations

import csv
import hashlib
import logging
import os
import time
from pathlib import Path
from typing import Protocol

from .classes import known_classes
from .store import SampleStore

log = logging.getLogger(__name__)

__all__ = ["Labeller", "OracleLabeller", "QueueLabeller", "ImportLabeller", "read_label_csv", "make_labeller"]


class Labeller(Protocol):
    """Something the service polls: label what can be labelled now, return how many were labelled."""

    name: str

    def poll(self, store: SampleStore) -> int: ...


def _unit(seed: int, sample_id: str, salt: str) -> float:
    """A uniform number in [0, 1) fixed by (seed, sample id): deterministic across restarts and orders."""
    h = hashlib.sha256(f"{seed}:{salt}:{sample_id}".encode()).digest()
    return int.from_bytes(h[:8], "big") / 2**64


class OracleLabeller:
    """Labels simulated samples with their carried truth, after ``delay_s``, flipped with prob. ``noise``."""

    name = "oracle"

    def __init__(self, delay_s: float = 0.0, noise: float = 0.0, seed: int = 0, heldout: float = 0.2,
                 batch: int = 500) -> None:
        if not 0.0 <= noise <= 1.0:
            raise ValueError("noise must be in [0, 1]")
        self.delay_s = float(delay_s)
        self.noise = float(noise)
        self.seed = int(seed)
        self.heldout = float(heldout)
        self.batch = int(batch)
        self._cursor = 0  # rowid scanned so far in this process (the store remembers what is labelled)
        self.classes: list[str] = []  # truths seen, in first-seen order (noise draws from these)
        self.labelled = 0
        self.flipped = 0
        self.without_truth = 0

    def poll(self, store: SampleStore) -> int:
        done = 0
        now = time.time()
        while True:
            rows = store.unlabelled(self.batch, after_rowid=self._cursor)
            if not rows:
                return done
            batch: list[tuple[str, str]] = []
            young = False
            for s in rows:
                if s.received > now - self.delay_s:
                    young = True  # rows come in arrival order: the rest are younger still
                    break
                self._cursor = s.rowid
                if s.truth is None:
                    self.without_truth += 1
                    continue
                if s.truth not in self.classes:
                    self.classes.append(s.truth)
                label = s.truth
                others = [c for c in self.classes if c != s.truth]
                if self.noise > 0 and others and _unit(self.seed, s.sample_id, "flip") < self.noise:
                    label = others[int(_unit(self.seed, s.sample_id, "pick") * len(others))]
                    self.flipped += 1
                batch.append((s.sample_id, label))
            n = store.set_labels(batch, "oracle", self.heldout)  # one transaction per page
            done += n
            self.labelled += n
            if young or len(rows) < self.batch:
                return done


class QueueLabeller:
    """Samples wait for a person; labels arrive through the HTTP API or ``edgeloop label``."""

    name = "queue"

    def poll(self, store: SampleStore) -> int:
        return 0


def read_label_csv(path: str | os.PathLike[str]) -> list[tuple[str, str]]:
    """Rows ``sample_id,label`` (an optional header row ``sample_id,label`` is skipped; blank lines ignored)."""
    out: list[tuple[str, str]] = []
    with open(path, newline="", encoding="utf-8") as fh:
        for i, row in enumerate(csv.reader(fh)):
            if not row or all(not c.strip() for c in row):
                continue
            if len(row) < 2:
                raise ValueError(f"{path}:{i + 1}: expected sample_id,label, got {row!r}")
            sid, label = row[0].strip(), row[1].strip()
            if i == 0 and sid.lower() in ("sample_id", "id") and label.lower() == "label":
                continue
            if not sid or not label:
                raise ValueError(f"{path}:{i + 1}: empty sample id or label")
            out.append((sid, label))
    return out


class ImportLabeller:
    """Applies labels from a CSV file; rows for unknown (not yet arrived) samples wait for them."""

    name = "import"

    def __init__(self, path: str | os.PathLike[str], heldout: float = 0.2) -> None:
        self.path = Path(path)
        self.heldout = float(heldout)
        self._stamp: tuple[float, int] | None = None
        self._pending: dict[str, str] = {}
        self._last_count = -1
        self.labelled = 0
        self.skipped_labelled = 0
        self.rejected_unknown = 0

    def _reload(self) -> bool:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return False
        stamp = (st.st_mtime, st.st_size)
        if stamp == self._stamp:
            return False
        self._stamp = stamp
        rows = read_label_csv(self.path)
        self._pending.update(rows)
        log.info("read %d labels from %s (%d waiting)", len(rows), self.path, len(self._pending))
        return True

    def poll(self, store: SampleStore) -> int:
        changed = self._reload()
        count = store.count()
        if not self._pending or (not changed and count == self._last_count):
            return 0
        self._last_count = count
        done = 0
        known = known_classes(store, Path(store.root).parent)
        for sid, label in list(self._pending.items()):
            s = store.get(sid)
            if s is None:
                continue  # not arrived yet
            del self._pending[sid]
            if s.label is not None:
                self.skipped_labelled += 1
                continue
            if label not in known:
                self.rejected_unknown += 1
                log.warning("%s: label %r of %s is not a known class %s: rejected (unknown_label); add the class "
                            "with `edgeloop trainer classes add` and import the row again", self.path, label, sid, known)
                continue
            if store.set_label(sid, label, "import", self.heldout):
                done += 1
        self.labelled += done
        return done

    @property
    def waiting(self) -> int:
        return len(self._pending)


def make_labeller(kind: str, *, delay_s: float = 0.0, noise: float = 0.0, seed: int = 0, csv_path: str | None = None,
                  heldout: float = 0.2) -> Labeller:
    """Build a labeller from the config's ``labeler`` section."""
    if kind == "oracle":
        return OracleLabeller(delay_s, noise, seed, heldout)
    if kind == "queue":
        return QueueLabeller()
    if kind == "import":
        if not csv_path:
            raise ValueError("labeler kind 'import' needs a CSV file (labeler.csv / --import-csv)")
        return ImportLabeller(csv_path, heldout)
    raise ValueError(f"unknown labeller {kind!r}; known: oracle, queue, import")
