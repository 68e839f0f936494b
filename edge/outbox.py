"""Durable SQLite outbox: a selected sample is never lost between selection and the broker's PUBACK.

Life of a row: ``put`` (committed before it returns) -> ``peek_batch`` -> ``mark_inflight(id, mid)`` when
handed to paho -> ``ack(id)`` / ``ack_mid(mid)`` from paho's ``on_publish`` (QoS 1 PUBACK) deletes it.
On every (re)connect ``reset_inflight()`` makes unacknowledged rows pending again, so they are resent;
redelivery is harmless because the sample id makes the trainer's ingestion idempotent. Opening the
outbox also resets in-flight marks (a fresh process has nothing in flight).

Durability choice: WAL with ``synchronous=FULL`` (default). In WAL mode ``NORMAL`` already survives
``kill -9`` (a committed transaction sits in the WAL file, and the OS keeps the file's pages whatever
happens to the process), but on *power loss* the transactions since the last checkpoint can vanish,
i.e. samples that ``put`` said were stored. ``FULL`` fsyncs the WAL at each commit, so a ``put`` that
returned True survives power loss too. The cost (one fsync per put, ~0.1-5 ms) is irrelevant at the
budgeted upload rate (tens per minute). Acks use the same connection; losing an ack on power loss
only causes a harmless redelivery. ``synchronous="NORMAL"`` is available for throwaway/test setups.

Bounded in payload bytes (``max_bytes``) with a policy when full:
``drop_oldest`` (default: the newest data is the most relevant to the current model),
``drop_lowest_priority`` (priority = uncertainty; the new item is itself refused if it is the lowest),
``reject_new``. Drops and rejections are counted, persistently, in a ``meta`` table.

Thread-safety: one connection (``check_same_thread=False``) guarded by one lock: the frame loop puts
while paho's network thread acks; SQLite would serialise writers anyway, and one lock is simple.

A write that fails (a full disk: SQLite's "database or disk is full"; an I/O error) raises
``OutboxWriteError`` carrying SQLite's own message, and leaves the outbox as it was: the failed transaction
is rolled back (SQLite may already have rolled it back itself; then nothing is left to undo), every row
committed before is intact, and the next write succeeds once there is space again. The node pauses
spooling meanwhile and keeps classifying (``edge/node.py``).
"""
from __future__ import annotations

import os
import sqlite3
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Literal

Policy = Literal["drop_oldest", "drop_lowest_priority", "reject_new"]
POLICIES: tuple[str, ...] = ("drop_oldest", "drop_lowest_priority", "reject_new")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    sample_id TEXT NOT NULL UNIQUE,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    size INTEGER NOT NULL,
    priority REAL NOT NULL DEFAULT 0,
    created REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    inflight_mid INTEGER
);
CREATE INDEX IF NOT EXISTS outbox_priority ON outbox (priority, id);
CREATE INDEX IF NOT EXISTS outbox_pending ON outbox (id) WHERE inflight_mid IS NULL;
CREATE INDEX IF NOT EXISTS outbox_mid ON outbox (inflight_mid) WHERE inflight_mid IS NOT NULL;
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""

_COUNTERS = ("put", "acked", "dropped_oldest", "dropped_lowest_priority", "rejected", "duplicate_put")


class OutboxError(RuntimeError):
    """The outbox could not be opened or is corrupt."""


class OutboxWriteError(OutboxError):
    """A write failed (disk full, I/O error); the message is SQLite's. Nothing committed before is lost."""


@dataclass(frozen=True)
class OutboxItem:
    id: int
    sample_id: str
    topic: str
    payload: bytes
    priority: float
    created: float
    attempts: int


class Outbox:
    """See module docstring. ``Outbox(path, max_bytes=..., policy=...)``; use as a context manager or ``close()``."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        max_bytes: int = 256 * 1024 * 1024,
        policy: Policy = "drop_oldest",
        synchronous: Literal["FULL", "NORMAL"] = "FULL",
    ) -> None:
        if policy not in POLICIES:
            raise ValueError(f"unknown outbox policy {policy!r}; known: {', '.join(POLICIES)}")
        if synchronous not in ("FULL", "NORMAL"):
            raise ValueError("synchronous must be FULL or NORMAL")
        self.path = Path(path)
        self.max_bytes = int(max_bytes)
        self.policy: Policy = policy
        self._lock = threading.Lock()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False, timeout=30.0)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(f"PRAGMA synchronous={synchronous}")
            self._db.execute("PRAGMA journal_size_limit=8388608")  # keep the WAL from growing without bound
            self._db.executescript(_SCHEMA)
            for key in _COUNTERS:
                self._db.execute("INSERT OR IGNORE INTO meta (key, value) VALUES (?, 0)", (key,))
            self._db.execute("UPDATE outbox SET inflight_mid = NULL WHERE inflight_mid IS NOT NULL")
            self._bytes = int(self._db.execute("SELECT COALESCE(SUM(size), 0) FROM outbox").fetchone()[0])
        except sqlite3.DatabaseError as exc:
            raise OutboxError(f"cannot open outbox {self.path}: {exc}") from exc

    # -- helpers -------------------------------------------------------------------------------------------
    def _bump(self, key: str, n: int = 1) -> None:
        self._db.execute("UPDATE meta SET value = value + ? WHERE key = ?", (n, key))

    @contextmanager
    def _tx(self) -> Iterator[None]:
        """One write transaction under the lock; on error roll back and re-read the byte count.

        On SQLITE_FULL and some I/O errors SQLite rolls the transaction back by itself, and a second
        ``ROLLBACK`` would fail with "cannot rollback - no transaction is active", hiding the real error:
        roll back only what is still open, and raise the original (as ``OutboxWriteError`` for SQLite's).
        """
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                yield
                self._db.execute("COMMIT")
            except BaseException as exc:
                if self._db.in_transaction:
                    try:
                        self._db.execute("ROLLBACK")
                    except sqlite3.Error:
                        pass  # the error that matters is exc
                try:
                    self._bytes = int(self._db.execute("SELECT COALESCE(SUM(size), 0) FROM outbox").fetchone()[0])
                except sqlite3.Error:
                    pass
                if isinstance(exc, sqlite3.Error):
                    raise OutboxWriteError(f"cannot write to the outbox {self.path}: {exc}") from exc
                raise

    def _delete(self, row_id: int, size: int) -> None:
        self._db.execute("DELETE FROM outbox WHERE id = ?", (row_id,))
        self._bytes -= size

    # -- producer side -------------------------------------------------------------------------------------
    def put(self, sample_id: str, topic: str, payload: bytes, priority: float = 0.0) -> bool:
        """Store a sample durably; True when it is in the outbox when this returns (committed).

        A sample id already present returns True without a second copy (idempotent retries).
        False means the bound refused it (``reject_new``, a payload larger than the whole bound, or
        ``drop_lowest_priority`` with this item the least important).
        """
        payload = bytes(payload)
        size = len(payload)
        with self._tx():
            ok = self._put_locked(sample_id, topic, payload, float(priority), size)
        return ok

    def _put_locked(self, sample_id: str, topic: str, payload: bytes, priority: float, size: int) -> bool:
        if self._db.execute("SELECT 1 FROM outbox WHERE sample_id = ?", (sample_id,)).fetchone():
            self._bump("duplicate_put")
            return True
        if size > self.max_bytes:
            self._bump("rejected")
            return False
        while self._bytes + size > self.max_bytes:
            if self.policy == "reject_new":
                self._bump("rejected")
                return False
            if self.policy == "drop_oldest":
                row = self._db.execute("SELECT id, size FROM outbox ORDER BY id LIMIT 1").fetchone()
                self._delete(row[0], row[1])
                self._bump("dropped_oldest")
            else:
                row = self._db.execute("SELECT id, size, priority FROM outbox ORDER BY priority, id LIMIT 1").fetchone()
                if row[2] >= priority:
                    # The newcomer is the least important thing around: drop it, not an older better one.
                    self._bump("dropped_lowest_priority")
                    return False
                self._delete(row[0], row[1])
                self._bump("dropped_lowest_priority")
        self._db.execute(
            "INSERT INTO outbox (sample_id, topic, payload, size, priority, created) VALUES (?, ?, ?, ?, ?, ?)",
            (sample_id, topic, sqlite3.Binary(payload), size, priority, time.time()),
        )
        self._bytes += size
        self._bump("put")
        return True

    # -- consumer side (the MQTT link) ---------------------------------------------------------------------
    def peek_batch(self, n: int = 16) -> list[OutboxItem]:
        """The ``n`` oldest rows that are not in flight (not removed; ``mark_inflight`` them once handed to paho)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT id, sample_id, topic, payload, priority, created, attempts FROM outbox "
                "WHERE inflight_mid IS NULL ORDER BY id LIMIT ?",
                (int(n),),
            ).fetchall()
        return [OutboxItem(r[0], r[1], r[2], bytes(r[3]), r[4], r[5], r[6]) for r in rows]

    def mark_inflight(self, item_id: int, mid: int) -> None:
        """Record that row ``item_id`` was published with MQTT message id ``mid`` (awaiting PUBACK)."""
        with self._tx():
            self._db.execute(
                "UPDATE outbox SET inflight_mid = ?, attempts = attempts + 1 WHERE id = ?", (int(mid), int(item_id))
            )

    def ack(self, item_id: int) -> bool:
        """Delete a row after the broker acknowledged it (QoS 1 PUBACK). False if it was already gone."""
        with self._tx():
            row = self._db.execute("SELECT size FROM outbox WHERE id = ?", (int(item_id),)).fetchone()
            if row:
                self._delete(int(item_id), row[0])
                self._bump("acked")
        return row is not None

    def ack_mid(self, mid: int) -> bool:
        """``ack`` by MQTT message id, for paho's ``on_publish(client, userdata, mid, ...)``."""
        with self._tx():
            rows = self._db.execute("SELECT id, size FROM outbox WHERE inflight_mid = ?", (int(mid),)).fetchall()
            for row_id, size in rows:
                self._delete(row_id, size)
            if rows:
                self._bump("acked", len(rows))
        return bool(rows)

    def reset_inflight(self) -> int:
        """Make every in-flight row pending again (call on (re)connect); returns how many."""
        with self._tx():
            cur = self._db.execute("UPDATE outbox SET inflight_mid = NULL WHERE inflight_mid IS NOT NULL")
        return cur.rowcount

    # -- figures -------------------------------------------------------------------------------------------
    @property
    def depth(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0])

    @property
    def bytes(self) -> int:
        """Payload bytes stored (the bounded quantity; SQLite's own overhead is not counted)."""
        return self._bytes

    def stats(self) -> dict[str, int | str]:
        """depth, pending, inflight, bytes, max_bytes, policy and the persistent counters."""
        with self._lock:
            depth, inflight = self._db.execute(
                "SELECT COUNT(*), COUNT(inflight_mid) FROM outbox"
            ).fetchone()
            counters = dict(self._db.execute("SELECT key, value FROM meta").fetchall())
        out: dict[str, int | str] = {
            "depth": int(depth),
            "pending": int(depth) - int(inflight),
            "inflight": int(inflight),
            "bytes": self._bytes,
            "max_bytes": self.max_bytes,
            "policy": self.policy,
        }
        out.update({k: int(counters.get(k, 0)) for k in _COUNTERS})
        out["dropped"] = int(counters.get("dropped_oldest", 0)) + int(counters.get("dropped_lowest_priority", 0))
        return out

    def integrity_check(self) -> str:
        """SQLite's ``PRAGMA integrity_check`` result ("ok" when healthy)."""
        with self._lock:
            return str(self._db.execute("PRAGMA integrity_check").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            try:
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.DatabaseError:
                pass
            self._db.close()

    def __enter__(self) -> "Outbox":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
