"""Batches whose update failed: kept aside with the reason, never retried by themselves.

Why: a batch that makes the update raise (or produce non-finite weights) would otherwise be taken again at
the next tick, and after a restart, for ever: one poisoned message stopped training for good. The service
instead restores the learner from its last checkpoint, records the batch here, moves ``label_seq`` past it and
goes on. A person decides what happens next (``edgeloop trainer quarantine list | retry ID | drop ID``):

- ``quarantined``: set aside (the learner has moved past it);
- ``retry``: asked for by a person; the running service trains it as one update at its next tick;
- ``retried``: trained (recorded in the checkpoint that holds the result, so a crash in between neither
  loses it nor trains it twice: see :func:`reconcile`);
- ``dropped``: given up for good (the samples and their labels stay in the store).

The table lives in the sample store's database (``quarantine``), so the CLI of another process can change a
status while the service runs.
"""
from __future__ import annotations

import json
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from .store import SampleStore, StoredSample

__all__ = ["QuarantinedBatch", "STATUSES", "add", "entries", "get", "request", "mark", "reconcile"]

STATUSES = ("quarantined", "retry", "retried", "dropped")
_COLS = "id, first_seq, last_seq, samples, reason, status, attempts, created, updated"


@dataclass(frozen=True)
class QuarantinedBatch:
    id: int
    first_seq: int
    last_seq: int
    samples: list[tuple[int, str]]  # (rowid, sample id), in the batch's order
    reason: str
    status: str
    attempts: int
    created: float
    updated: float

    def as_dict(self) -> dict:
        return {"id": self.id, "label_seq": [self.first_seq, self.last_seq], "samples": [s for _, s in self.samples],
                "reason": self.reason, "status": self.status, "attempts": self.attempts, "created": self.created,
                "updated": self.updated}


def _row(r: Sequence) -> QuarantinedBatch:
    return QuarantinedBatch(int(r[0]), int(r[1]), int(r[2]), [(int(a), str(b)) for a, b in json.loads(r[3])],
                            str(r[4]), str(r[5]), int(r[6]), float(r[7]), float(r[8]))


def add(store: SampleStore, rows: Sequence[StoredSample], reason: str) -> QuarantinedBatch:
    """Record a failed batch (again: the same label_seq range counts one more attempt)."""
    first, last = int(rows[0].label_seq), int(rows[-1].label_seq)  # type: ignore[arg-type]
    now = time.time()
    samples = json.dumps([[s.rowid, s.sample_id] for s in rows])
    with store.transaction() as conn:
        conn.execute(
            f"INSERT INTO quarantine ({_COLS[4:]}) VALUES (?, ?, ?, ?, 'quarantined', 1, ?, ?) "
            "ON CONFLICT(first_seq, last_seq) DO UPDATE SET reason=excluded.reason, status='quarantined', "
            "attempts=attempts+1, updated=excluded.updated", (first, last, samples, reason[:2000], now, now))
        r = conn.execute(f"SELECT {_COLS} FROM quarantine WHERE first_seq=? AND last_seq=?", (first, last)).fetchone()
    return _row(r)


def entries(store: SampleStore, status: str | Iterable[str] | None = None) -> list[QuarantinedBatch]:
    """Quarantined batches, oldest first; ``status`` filters (one or several)."""
    if status is None:
        rows = store.connection().execute(f"SELECT {_COLS} FROM quarantine ORDER BY id").fetchall()
    else:
        wanted = [status] if isinstance(status, str) else list(status)
        rows = store.connection().execute(
            f"SELECT {_COLS} FROM quarantine WHERE status IN ({','.join('?' * len(wanted))}) ORDER BY id",
            wanted).fetchall()
    return [_row(r) for r in rows]


def get(store: SampleStore, qid: int) -> QuarantinedBatch | None:
    r = store.connection().execute(f"SELECT {_COLS} FROM quarantine WHERE id=?", (int(qid),)).fetchone()
    return _row(r) if r else None


def request(store: SampleStore, qid: int, action: str) -> QuarantinedBatch:
    """A person's decision: ``retry`` (a quarantined batch) or ``drop`` (a quarantined or retry-pending one).
    ``ValueError`` says why not, e.g. for an unknown id or a batch that was already retried."""
    allowed = {"retry": ("quarantined",), "drop": ("quarantined", "retry")}
    if action not in allowed:
        raise ValueError(f"unknown action {action!r}: retry or drop")
    entry = get(store, qid)
    if entry is None:
        raise ValueError(f"no quarantined batch {qid}")
    if entry.status not in allowed[action]:
        raise ValueError(f"batch {qid} is {entry.status}: only a batch that is {' or '.join(allowed[action])} "
                         f"can be {'retried' if action == 'retry' else 'dropped'}")
    return mark(store, qid, "retry" if action == "retry" else "dropped")


def mark(store: SampleStore, qid: int, status: str, reason: str | None = None, failed: bool = False) -> QuarantinedBatch:
    """Set a batch's status (and reason; ``failed`` counts one more attempt)."""
    if status not in STATUSES:
        raise ValueError(f"status must be one of {STATUSES}")
    with store.transaction() as conn:
        conn.execute("UPDATE quarantine SET status=?, reason=COALESCE(?, reason), attempts=attempts+?, updated=? "
                     "WHERE id=?", (status, reason, int(failed), time.time(), int(qid)))
    entry = get(store, qid)
    if entry is None:
        raise ValueError(f"no quarantined batch {qid}")
    return entry


def reconcile(store: SampleStore, retried_in_checkpoint: Iterable[int]) -> list[int]:
    """At start: batches the checkpoint says were trained but the table still calls ``retry`` (a crash
    between the checkpoint and the status update) become ``retried``, so they are not trained again."""
    done = set(int(q) for q in retried_in_checkpoint)
    fixed = [e.id for e in entries(store, "retry") if e.id in done]
    for qid in fixed:
        mark(store, qid, "retried")
    return fixed
