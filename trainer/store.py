"""Durable store of received samples: a SQLite index (WAL) plus append-only image pack files.

Why pack files and not one file per image: the ingest path must acknowledge a sample only after it is
on disk, and must keep up with the broker. One file per image costs an ``fsync`` per image; appending a
whole batch of images to the current pack file costs one ``fsync`` per batch, followed by one SQLite
commit (``synchronous=FULL``: one more fsync). A row only ever points at bytes that were fsynced before
the row was committed, so a crash at any moment leaves at worst some unreferenced bytes at the tail of
a pack file, never a row without its image.

Labels are written by labellers (oracle, HTTP queue, CSV import). Every label gets a monotonically
increasing ``label_seq``; the service consumes labelled samples in ``label_seq`` order and checkpoints
the last one it trained on, which is what makes kill -9 + restart lose nothing and train nothing twice.
Each labelled sample is assigned once, at labelling time, to training or to the held-out evaluation set
(class-stratified, see :meth:`SampleStore.set_label`).

A sample is identified by its sender and its id, ``(device, sample_id)``: a device cannot suppress another's
sample by sending its id first (ids are ``device.boot.seq`` by convention, not by force). Where only the id
is given (the label API, CSV imports), it names the sample of the device whose namespace it is in
(``cam-b.1.7`` -> ``cam-b``), else the oldest with that id.

Rows are deleted only by retention (:mod:`trainer.retention`), and then only unlabelled ones; the bytes they
leave in a pack file are given back by compacting that file (:meth:`SampleStore.compact_segment`).
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, fields
from operator import attrgetter
from pathlib import Path
from typing import Any

__all__ = ["SampleStore", "SampleRecord", "StoredSample", "IncomingSample", "BatchResult"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS samples (
    rowid INTEGER PRIMARY KEY,
    sample_id TEXT NOT NULL,
    device TEXT NOT NULL,
    seq INTEGER NOT NULL,
    msg_id TEXT NOT NULL,
    ts REAL NOT NULL,
    received REAL NOT NULL,
    model_version TEXT NOT NULL,
    topk TEXT NOT NULL,
    uncertainty REAL NOT NULL,
    uncertainty_kind TEXT NOT NULL,
    p_select REAL NOT NULL,
    reason TEXT NOT NULL,
    frame_index INTEGER NOT NULL,
    width INTEGER NOT NULL,
    height INTEGER NOT NULL,
    roi TEXT,
    truth TEXT,
    source TEXT NOT NULL,
    content_type TEXT NOT NULL,
    segment INTEGER NOT NULL,
    offset INTEGER NOT NULL,
    length INTEGER NOT NULL,
    label TEXT,
    label_source TEXT,
    labelled_at REAL,
    label_seq INTEGER UNIQUE,
    heldout INTEGER
);
CREATE INDEX IF NOT EXISTS samples_unlabelled ON samples(rowid) WHERE label IS NULL;
CREATE UNIQUE INDEX IF NOT EXISTS samples_key ON samples(device, sample_id);
CREATE INDEX IF NOT EXISTS samples_id ON samples(sample_id);
CREATE INDEX IF NOT EXISTS samples_segment ON samples(segment);
CREATE TABLE IF NOT EXISTS devices (
    device TEXT PRIMARY KEY,
    last_seq INTEGER NOT NULL,
    received INTEGER NOT NULL DEFAULT 0,
    gaps INTEGER NOT NULL DEFAULT 0,
    missing INTEGER NOT NULL DEFAULT 0,
    out_of_order INTEGER NOT NULL DEFAULT 0,
    duplicates INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS rejections (reason TEXT PRIMARY KEY, count INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS device_rejections (
    device TEXT NOT NULL, reason TEXT NOT NULL, count INTEGER NOT NULL, PRIMARY KEY (device, reason)
);
CREATE TABLE IF NOT EXISTS quarantine (
    id INTEGER PRIMARY KEY,
    first_seq INTEGER NOT NULL,
    last_seq INTEGER NOT NULL,
    samples TEXT NOT NULL,
    reason TEXT NOT NULL,
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 1,
    created REAL NOT NULL,
    updated REAL NOT NULL,
    UNIQUE (first_seq, last_seq)
);
CREATE TABLE IF NOT EXISTS class_counts (label TEXT PRIMARY KEY, n INTEGER NOT NULL, heldout INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""
#: PRAGMA user_version of this schema. 2: samples are unique per (device, sample_id), not per sample_id.
SCHEMA_VERSION = 2

@dataclass(frozen=True, slots=True, kw_only=True)
class SampleRecord:
    """A sample as its device described it: the validated sample fields and the transport header's."""

    sample_id: str
    device: str
    seq: int
    msg_id: str
    ts: float
    model_version: str
    topk: Sequence[tuple[str, float]]
    uncertainty: float
    uncertainty_kind: str
    p_select: float
    reason: str
    frame_index: int
    width: int
    height: int
    roi: tuple[int, int, int, int] | None
    truth: str | None
    source: str
    content_type: str


@dataclass(frozen=True, slots=True, kw_only=True)
class IncomingSample(SampleRecord):
    """What ingestion hands to the store: the record and the image."""

    image: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class StoredSample(SampleRecord):
    """One row of the index: the record, where its image is (see :meth:`SampleStore.image`), its label."""

    rowid: int
    received: float
    segment: int
    offset: int
    length: int
    label: str | None
    label_source: str | None
    labelled_at: float | None
    label_seq: int | None
    heldout: bool | None

    def to_json(self) -> dict[str, Any]:
        """The public view used by the label API (no storage internals)."""
        return {
            "id": self.sample_id, "device": self.device, "seq": self.seq, "received": self.received,
            "model_version": self.model_version, "prediction": [[n, p] for n, p in self.topk],
            "uncertainty": self.uncertainty, "uncertainty_kind": self.uncertainty_kind,
            "p_select": self.p_select, "reason": self.reason, "roi": list(self.roi) if self.roi else None,
            "width": self.width, "height": self.height, "content_type": self.content_type,
            "label": self.label, "label_source": self.label_source,
        }


_RECORD = tuple(f.name for f in fields(SampleRecord))  # the record's columns, in this order
_COLUMNS = ", ".join(f.name for f in fields(StoredSample))  # SELECT list, in StoredSample's field order
_INSERT = (f"INSERT INTO samples ({', '.join(_RECORD)}, received, segment, offset, length) "
           f"VALUES ({','.join('?' * (len(_RECORD) + 4))})")


_record_tuple = attrgetter(*_RECORD)
_TOPK, _ROI = _RECORD.index("topk"), _RECORD.index("roi")


def _record_values(it: SampleRecord) -> list[Any]:
    """The record's column values, JSON-encoding the two structured ones (topk, roi)."""
    vals = list(_record_tuple(it))
    vals[_TOPK] = json.dumps([[n, p] for n, p in it.topk])
    vals[_ROI] = json.dumps(list(it.roi)) if it.roi else None
    return vals


def _row(r: tuple[Any, ...]) -> StoredSample:
    d = dict(zip(StoredSample.__dataclass_fields__, r))
    d["topk"] = [(str(n), float(p)) for n, p in json.loads(d["topk"])]
    d["roi"] = tuple(json.loads(d["roi"])) if d["roi"] else None
    d["heldout"] = None if d["heldout"] is None else bool(d["heldout"])
    return StoredSample(**d)


@dataclass(slots=True)
class BatchResult:
    """Outcome of :meth:`SampleStore.add_batch`: counts, and per input item whether it was new."""

    stored: int
    duplicates: int
    new: list[bool]


def heldout_phase(label: str) -> float:
    """A stable offset in [0, 1) per class, so which k-th sample of a class is held out differs per class."""
    return int.from_bytes(hashlib.sha256(label.encode()).digest()[:8], "big") / 2**64


class SampleStore:
    """The trainer's sample database in ``root`` (``samples.db`` + ``images/*.pack``); safe across threads.

    Each thread gets its own SQLite connection (WAL lets readers run while ingestion commits); writes are
    serialised by an in-process lock so no thread ever spins on ``SQLITE_BUSY`` inside this process.
    Other processes (``edgeloop label --state-dir``) may open the same store; SQLite's busy timeout
    covers them.
    """

    def __init__(self, root: str | Path, segment_bytes: int = 64 * 1024 * 1024) -> None:
        self.root = Path(root)
        self.images_dir = self.root / "images"
        self.images_dir.mkdir(parents=True, exist_ok=True)
        self.db_path = self.root / "samples.db"
        self.segment_bytes = int(segment_bytes)
        self._local = threading.local()
        self._write_lock = threading.RLock()
        self._conns: list[sqlite3.Connection] = []
        self._conns_lock = threading.Lock()
        self._closed = False
        conn = self._conn()
        with self._write_lock:
            _migrate(conn)
            conn.executescript(_SCHEMA)
            conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        self._segment, self._segment_file = self._open_segment()

    # -- connections -----------------------------------------------------------------------------------
    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            if self._closed:
                raise RuntimeError("store is closed")
            conn = sqlite3.connect(self.db_path, timeout=30.0, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")  # the commit itself is durable: we ack after it
            self._local.conn = conn
            with self._conns_lock:
                self._conns.append(conn)
        return conn

    def connection(self) -> sqlite3.Connection:
        """This thread's connection, for reads by the modules that keep their own tables here (quarantine)."""
        return self._conn()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction (``BEGIN IMMEDIATE`` ... ``COMMIT``) under the store's write lock."""
        with self._write_lock:
            conn = self._conn()
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                _rollback(conn)
                raise

    def close(self) -> None:
        """Close every connection and the open pack file (idempotent)."""
        with self._write_lock:
            self._closed = True
            if self._segment_file is not None:
                self._segment_file.close()
                self._segment_file = None
            with self._conns_lock:
                for c in self._conns:
                    try:
                        c.close()
                    except sqlite3.Error:
                        pass
                self._conns.clear()
            self._local = threading.local()

    def __enter__(self) -> "SampleStore":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- pack files ------------------------------------------------------------------------------------
    def _segment_path(self, n: int) -> Path:
        return self.images_dir / f"seg-{n:06d}.pack"

    def segments(self) -> list[int]:
        """The pack files on disk, by number."""
        return sorted(int(p.stem.split("-")[1]) for p in self.images_dir.glob("seg-*.pack"))

    def _open_segment(self) -> tuple[int, Any]:
        existing = self.segments()
        n = existing[-1] if existing else 1
        path = self._segment_path(n)
        created = not path.exists()
        f = open(path, "ab", buffering=0)  # unbuffered: a failed write leaves nothing half-buffered
        if created:
            self._fsync_dir()
        return n, f

    def _fsync_dir(self) -> None:
        fd = os.open(self.images_dir, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def _append_images(self, images: Sequence[bytes]) -> list[tuple[int, int, int]]:
        """Append ``images`` to the current pack file and fsync once; returns (segment, offset, length) each."""
        f = self._segment_file
        if os.fstat(f.fileno()).st_size >= self.segment_bytes:
            self._roll_segment()
            f = self._segment_file
        # The file's real size, not a position kept in memory: after a failed (e.g. disk full) write the tail
        # holds some unreferenced bytes, and the next batch simply starts after them.
        offset = os.fstat(f.fileno()).st_size
        where = []
        for img in images:
            where.append((self._segment, offset, len(img)))
            offset += len(img)
        data = memoryview(b"".join(images))
        while data:
            data = data[f.write(data):]
        os.fsync(f.fileno())
        return where

    def _roll_segment(self) -> None:
        self._segment_file.close()
        self._segment += 1
        self._segment_file = open(self._segment_path(self._segment), "ab", buffering=0)
        self._fsync_dir()

    # -- retention: deleting rows, giving pack-file space back ------------------------------------------------
    def live_bytes(self) -> int:
        """Image bytes that rows point at."""
        return int(self._conn().execute("SELECT COALESCE(SUM(length), 0) FROM samples").fetchone()[0])

    def segment_usage(self) -> dict[int, tuple[int, int]]:
        """``{segment: (live bytes, file bytes)}`` for every pack file on disk."""
        live = dict(self._conn().execute("SELECT segment, SUM(length) FROM samples GROUP BY segment").fetchall())
        out = {}
        for n in self.segments():
            try:
                size = self._segment_path(n).stat().st_size
            except FileNotFoundError:
                continue
            out[n] = (int(live.get(n) or 0), size)
        return out

    def delete_unlabelled(self, rowids: Sequence[int]) -> tuple[int, int]:
        """Delete these rows if they are still unlabelled (a label that arrived meanwhile keeps its sample);
        returns (rows deleted, image bytes they held). The bytes stay in their pack file until it is compacted."""
        deleted = freed = 0
        with self.transaction() as conn:
            for i in range(0, len(rowids), 500):
                chunk = [int(r) for r in rowids[i:i + 500]]
                marks = ",".join("?" * len(chunk))
                n, b = conn.execute(f"SELECT COUNT(*), COALESCE(SUM(length), 0) FROM samples WHERE label IS NULL "
                                    f"AND rowid IN ({marks})", chunk).fetchone()
                conn.execute(f"DELETE FROM samples WHERE label IS NULL AND rowid IN ({marks})", chunk)
                deleted, freed = deleted + int(n), freed + int(b)
        return deleted, freed

    def compact_segment(self, n: int, chunk_bytes: int = 16 * 1024 * 1024) -> int:
        """Copy the live images of sealed pack file ``n`` to the current one, point their rows there, then
        delete the file; returns the bytes given back to the file system. Only the ingesting process calls it.

        Crash-safe in this order: copies are fsynced before the rows move (a row always points at fsynced
        bytes), and the file is unlinked only after the last rows moved; a file left with no rows (a crash
        before the unlink) is removed by :meth:`remove_empty_segments`. Works in chunks, so ingestion waits
        for one chunk at most.
        """
        if n == self._segment:
            raise ValueError("the current pack file is never compacted")
        path = self._segment_path(n)
        size = path.stat().st_size if path.exists() else 0
        after = -1
        while True:
            with self._write_lock:
                rows = self._conn().execute(
                    "SELECT rowid, offset, length FROM samples WHERE segment=? AND offset > ? ORDER BY offset",
                    (n, after)).fetchall()
                batch, total = [], 0
                for r in rows:
                    if batch and total + r[2] > chunk_bytes:
                        break
                    batch.append(r)
                    total += r[2]
                if not batch:
                    break
                with open(path, "rb") as f:
                    images = [os.pread(f.fileno(), length, off) for _, off, length in batch]
                where = self._append_images(images)
                with self.transaction() as conn:
                    conn.executemany("UPDATE samples SET segment=?, offset=? WHERE rowid=?",
                                     [(seg, off, r[0]) for (seg, off, _), r in zip(where, batch)])
                after = batch[-1][1]
        with self._write_lock:
            left = self._conn().execute("SELECT COUNT(*) FROM samples WHERE segment=?", (n,)).fetchone()[0]
            if left:
                return 0  # rows arrived meanwhile (cannot happen for a sealed file; kept safe)
            path.unlink(missing_ok=True)
            self._fsync_dir()
        return size

    def remove_empty_segments(self) -> int:
        """Delete sealed pack files no row points at (all their rows deleted, or a crash between a compaction's
        last update and its unlink); returns the bytes given back. Only the process that ingests calls this:
        under its write lock no batch is between writing its images and committing its rows."""
        freed = 0
        with self._write_lock:
            used = {r[0] for r in self._conn().execute("SELECT DISTINCT segment FROM samples")}
            for n in self.segments():
                if n != self._segment and n not in used:
                    path = self._segment_path(n)
                    freed += path.stat().st_size
                    path.unlink(missing_ok=True)
        return freed

    # -- ingestion -------------------------------------------------------------------------------------
    def add_batch(self, items: Sequence[IncomingSample], rejections: Counter[str] | None = None,
                  device_rejections: Counter[tuple[str, str]] | None = None) -> BatchResult:
        """Store new samples durably (images fsynced, then one commit); duplicates by ``(device, sample_id)``
        are skipped.

        Also updates per-device sequence tracking and the persistent rejection counters (overall by reason,
        and by ``(device, reason)`` for messages whose sender is known) in the same transaction, so the counters survive restarts exactly as the samples do. Returns only after the
        data is on disk: the caller may acknowledge the messages then.
        """
        now = time.time()
        with self._write_lock:
            conn = self._conn()
            ids = list({it.sample_id for it in items})
            known: set[tuple[str, str]] = set()
            for i in range(0, len(ids), 500):
                chunk = ids[i:i + 500]
                q = f"SELECT device, sample_id FROM samples WHERE sample_id IN ({','.join('?' * len(chunk))})"
                known.update(conn.execute(q, chunk))
            fresh: list[IncomingSample] = []
            new_flags: list[bool] = []
            for it in items:
                key = (it.device, it.sample_id)
                is_new = key not in known
                new_flags.append(is_new)
                if is_new:
                    known.add(key)
                    fresh.append(it)
            where = self._append_images([it.image for it in fresh]) if fresh else []
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.executemany(_INSERT, [[*_record_values(it), now, *w] for it, w in zip(fresh, where)])
                self._track_devices(conn, items, new_flags)
                if rejections:
                    conn.executemany(
                        "INSERT INTO rejections (reason, count) VALUES (?, ?) "
                        "ON CONFLICT(reason) DO UPDATE SET count = count + excluded.count",
                        list(rejections.items()),
                    )
                if device_rejections:
                    conn.executemany(
                        "INSERT INTO device_rejections (device, reason, count) VALUES (?, ?, ?) "
                        "ON CONFLICT(device, reason) DO UPDATE SET count = count + excluded.count",
                        [(d, r, n) for (d, r), n in device_rejections.items()],
                    )
                conn.execute("COMMIT")
            except BaseException:
                _rollback(conn)
                raise
        return BatchResult(stored=len(fresh), duplicates=len(items) - len(fresh), new=new_flags)

    @staticmethod
    def _track_devices(conn: sqlite3.Connection, items: Sequence[IncomingSample], new_flags: Sequence[bool]) -> None:
        """Per-device seq bookkeeping: gaps (messages we never saw), out-of-order arrivals and duplicates."""
        if not items:
            return
        devices = {it.device for it in items}
        state: dict[str, list[int]] = {}
        for d in devices:
            r = conn.execute(
                "SELECT last_seq, received, gaps, missing, out_of_order, duplicates FROM devices WHERE device=?", (d,)
            ).fetchone()
            state[d] = list(r) if r else [-1, 0, 0, 0, 0, 0]
        for it, is_new in zip(items, new_flags):
            s = state[it.device]
            if not is_new:
                s[5] += 1
                continue
            s[1] += 1
            if s[0] < 0 or it.seq == s[0] + 1:
                s[0] = it.seq
            elif it.seq > s[0] + 1:
                s[2] += 1
                s[3] += it.seq - s[0] - 1
                s[0] = it.seq
            else:  # a late message: it may fill a gap we counted
                s[4] += 1
                s[3] = max(0, s[3] - 1)
        conn.executemany(
            "INSERT INTO devices (device, last_seq, received, gaps, missing, out_of_order, duplicates) "
            "VALUES (?,?,?,?,?,?,?) ON CONFLICT(device) DO UPDATE SET last_seq=excluded.last_seq, "
            "received=excluded.received, gaps=excluded.gaps, missing=excluded.missing, "
            "out_of_order=excluded.out_of_order, duplicates=excluded.duplicates",
            [(d, *s) for d, s in state.items()],
        )

    def add_rejections(self, rejections: Counter[str]) -> None:
        """Persist rejection counts on their own (when a batch held only rejected messages)."""
        if rejections:
            self.add_batch([], rejections)

    def device_rejections(self) -> dict[str, dict[str, int]]:
        """Rejections per device and reason (``quota``, ``image_too_large``, ...), all time."""
        out: dict[str, dict[str, int]] = {}
        for d, r, n in self._conn().execute("SELECT device, reason, count FROM device_rejections ORDER BY 1, 2"):
            out.setdefault(d, {})[r] = n
        return out

    # -- reading -----------------------------------------------------------------------------------------
    def get(self, sample_id: str, device: str | None = None) -> StoredSample | None:
        """The sample ``(device, sample_id)``; without ``device``, the one the id names (module docstring)."""
        c = self._conn()
        if device is not None:
            r = c.execute(f"SELECT {_COLUMNS} FROM samples WHERE device=? AND sample_id=?", (device, sample_id)).fetchone()
            return _row(r) if r else None
        rowid = _resolve(c, sample_id)
        return None if rowid is None else self.get_rowid(rowid)

    def get_rowid(self, rowid: int) -> StoredSample | None:
        r = self._conn().execute(f"SELECT {_COLUMNS} FROM samples WHERE rowid=?", (rowid,)).fetchone()
        return _row(r) if r else None

    def image(self, sample: StoredSample | str) -> tuple[bytes, str]:
        """The encoded image bytes and content type of a sample."""
        s = self.get(sample) if isinstance(sample, str) else sample
        if s is None:
            raise KeyError(sample)
        try:
            return self._read_image(s), s.content_type
        except FileNotFoundError:
            # Compaction moved the image since the row was read: read the row again.
            moved = self.get_rowid(s.rowid)
            if moved is None:
                raise KeyError(s.sample_id) from None
            return self._read_image(moved), moved.content_type

    def _read_image(self, s: StoredSample) -> bytes:
        with open(self._segment_path(s.segment), "rb") as f:
            data = os.pread(f.fileno(), s.length, s.offset)
        if len(data) != s.length:
            raise OSError(f"pack file {s.segment} is truncated at sample {s.sample_id}")
        return data

    def unlabelled(self, limit: int = 100, after_rowid: int = 0) -> list[StoredSample]:
        """Samples waiting for a label, oldest first."""
        rows = self._conn().execute(
            f"SELECT {_COLUMNS} FROM samples WHERE label IS NULL AND rowid > ? ORDER BY rowid LIMIT ?",
            (after_rowid, limit),
        ).fetchall()
        return [_row(r) for r in rows]

    def query(self, where: str = "1", limit: int = 100, after_rowid: int = 0,
              params: Sequence[Any] = (), newest_first: bool = False) -> list[StoredSample]:
        """Samples matching a fixed SQL condition (callers pass constants, never user input), by rowid.

        User-supplied values go into ``params`` (``?`` placeholders in ``where``), never into ``where``.
        ``newest_first`` gives the latest ``limit`` rows (``after_rowid`` still bounds them from below).
        """
        order = "DESC" if newest_first else ""
        rows = self._conn().execute(
            f"SELECT {_COLUMNS} FROM samples WHERE ({where}) AND rowid > ? ORDER BY rowid {order} LIMIT ?",
            (*params, after_rowid, limit),
        ).fetchall()
        return [_row(r) for r in rows]

    def unlabelled_summary(self) -> dict[str, dict[str, int]]:
        """Samples waiting for a label, counted by device, selection reason and predicted class (queue filters)."""
        c = self._conn()
        out: dict[str, dict[str, int]] = {}
        for key, expr in (("device", "device"), ("reason", "reason"), ("predicted", "json_extract(topk, '$[0][0]')")):
            rows = c.execute(f"SELECT {expr}, COUNT(*) FROM samples WHERE label IS NULL GROUP BY 1 ORDER BY 1")
            out[key] = {str(k): int(n) for k, n in rows}
        return out

    def labelled_after(self, label_seq: int, limit: int = 1000, heldout: bool | None = False) -> list[StoredSample]:
        """Labelled samples with ``label_seq`` greater than the given one, in labelling order.

        ``heldout=False`` gives training samples only, ``True`` held-out only, ``None`` both.
        """
        cond = "" if heldout is None else f" AND heldout={int(heldout)}"
        rows = self._conn().execute(
            f"SELECT {_COLUMNS} FROM samples WHERE label_seq > ?{cond} ORDER BY label_seq LIMIT ?",
            (label_seq, limit),
        ).fetchall()
        return [_row(r) for r in rows]

    def heldout(self, newest: int | None = None) -> list[StoredSample]:
        """Held-out labelled samples (the evaluation slice) in labelling order: every one, or the ``newest`` N."""
        if newest is None:
            rows = self._conn().execute(f"SELECT {_COLUMNS} FROM samples WHERE heldout=1 ORDER BY label_seq").fetchall()
        else:
            rows = self._conn().execute(
                f"SELECT {_COLUMNS} FROM (SELECT {_COLUMNS} FROM samples WHERE heldout=1 ORDER BY label_seq DESC "
                "LIMIT ?) ORDER BY label_seq", (int(newest),)).fetchall()
        return [_row(r) for r in rows]

    def max_label_seq(self) -> int:
        r = self._conn().execute("SELECT COALESCE(MAX(label_seq), 0) FROM samples").fetchone()
        return int(r[0])

    def count(self, where: str = "1", params: Sequence[Any] = ()) -> int:
        return int(self._conn().execute(f"SELECT COUNT(*) FROM samples WHERE {where}", tuple(params)).fetchone()[0])

    def rejections(self) -> dict[str, int]:
        return dict(self._conn().execute("SELECT reason, count FROM rejections ORDER BY reason").fetchall())

    def devices(self) -> dict[str, dict[str, int]]:
        rows = self._conn().execute(
            "SELECT device, last_seq, received, gaps, missing, out_of_order, duplicates FROM devices ORDER BY device"
        ).fetchall()
        keys = ("last_seq", "received", "gaps", "missing", "out_of_order", "duplicates")
        return {r[0]: dict(zip(keys, r[1:])) for r in rows}

    def stats(self) -> dict[str, Any]:
        """Counts for ``edgeloop trainer status``."""
        c = self._conn()
        total, labelled, held = c.execute(
            "SELECT COUNT(*), COUNT(label), COALESCE(SUM(heldout), 0) FROM samples"
        ).fetchone()
        per_class = dict(c.execute("SELECT label, n FROM class_counts ORDER BY label").fetchall())
        without_truth = c.execute("SELECT COUNT(*) FROM samples WHERE label IS NULL AND truth IS NULL").fetchone()[0]
        return {
            "samples": total, "labelled": labelled, "unlabelled": total - labelled, "heldout": held,
            "unlabelled_without_truth": without_truth, "bytes": self.live_bytes(),
            "per_class": per_class, "rejected": self.rejections(), "devices": self.devices(),
            "device_rejections": self.device_rejections(),
        }

    # -- labelling ---------------------------------------------------------------------------------------
    def set_label(self, sample_id: str, label: str, source: str, heldout_fraction: float = 0.2,
                  overwrite: bool = False) -> bool:
        """Label a sample; returns False if it is unknown, or already labelled (unless ``overwrite``).

        The sample is assigned to the held-out set here, once, class-stratified: within each class the
        k-th labelled sample is held out iff ``floor((k+1)h + φ) > floor(kh + φ)`` with a per-class phase
        φ — exactly a fraction ``h`` of every class, in a way that is fixed forever once written (so a
        sample that was trained on can never later become evaluation data). Overwriting a label keeps
        the sample's ``label_seq`` and split (the service has it already, or will read the new label).
        """
        return self.set_labels([(sample_id, label)], source, heldout_fraction, overwrite) == 1

    def set_labels(self, labels: Iterable[tuple[str, str]], source: str, heldout_fraction: float = 0.2,
                   overwrite: bool = False) -> int:
        """Label many samples in one transaction (one fsync); returns how many labels were written."""
        pairs = [(sid, str(lab).strip()) for sid, lab in labels]
        for _, lab in pairs:
            if not lab or len(lab) > 256:
                raise ValueError("label must be 1-256 characters")
        if not 0.0 <= heldout_fraction < 1.0:
            raise ValueError("heldout_fraction must be in [0, 1)")
        if not pairs:
            return 0
        done = 0
        with self._write_lock:
            conn = self._conn()
            conn.execute("BEGIN IMMEDIATE")
            try:
                seq = int(conn.execute("SELECT COALESCE(MAX(label_seq), 0) FROM samples").fetchone()[0])
                for sample_id, label in pairs:
                    rowid = _resolve(conn, sample_id)
                    r = None if rowid is None else conn.execute("SELECT label FROM samples WHERE rowid=?", (rowid,)).fetchone()
                    if r is None or (r[0] is not None and not overwrite):
                        continue
                    done += 1
                    if r[0] is not None:
                        conn.execute("UPDATE samples SET label=?, label_source=?, labelled_at=? WHERE rowid=?",
                                     (label, source, time.time(), rowid))
                        continue
                    cc = conn.execute("SELECT n, heldout FROM class_counts WHERE label=?", (label,)).fetchone()
                    k, k_held = (cc if cc else (0, 0))
                    phi = heldout_phase(label)
                    held = math.floor((k + 1) * heldout_fraction + phi) > math.floor(k * heldout_fraction + phi)
                    seq += 1
                    conn.execute(
                        "UPDATE samples SET label=?, label_source=?, labelled_at=?, label_seq=?, heldout=? "
                        "WHERE rowid=?",
                        (label, source, time.time(), seq, int(held), rowid),
                    )
                    conn.execute(
                        "INSERT INTO class_counts (label, n, heldout) VALUES (?, ?, ?) ON CONFLICT(label) "
                        "DO UPDATE SET n=excluded.n, heldout=excluded.heldout",
                        (label, k + 1, k_held + int(held)),
                    )
                conn.execute("COMMIT")
            except BaseException:
                _rollback(conn)
                raise
        return done

    # -- small key/value state (e.g. import-file position) ------------------------------------------------
    def get_meta(self, key: str, default: str | None = None) -> str | None:
        r = self._conn().execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return r[0] if r else default

    def meta_items(self, prefix: str) -> list[tuple[str, str]]:
        """Every (key, value) whose key starts with ``prefix`` (e.g. the explicitly added classes)."""
        return self._conn().execute("SELECT key, value FROM meta WHERE substr(key, 1, ?) = ? ORDER BY key",
                                    (len(prefix), prefix)).fetchall()

    def set_meta(self, key: str, value: str) -> None:
        with self._write_lock:
            self._conn().execute(
                "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value=excluded.value",
                (key, value),
            )


def _rollback(conn: sqlite3.Connection) -> None:
    """ROLLBACK if a transaction is still open. SQLite ends the transaction itself on some errors (a full
    disk during COMMIT); an unconditional ROLLBACK then raises "no transaction is active" and hides the
    error that matters."""
    if conn.in_transaction:
        conn.execute("ROLLBACK")


def _resolve(conn: sqlite3.Connection, sample_id: str) -> int | None:
    """The rowid an id alone names: the row of the device whose namespace the id is in, else the oldest."""
    rows = conn.execute("SELECT rowid, device FROM samples WHERE sample_id=? ORDER BY rowid", (sample_id,)).fetchall()
    if not rows:
        return None
    for rowid, device in rows:
        if sample_id.startswith(device + "."):
            return int(rowid)
    return int(rows[0][0])


def _migrate(conn: sqlite3.Connection) -> None:
    """Bring a store written by an older edgeloop to :data:`SCHEMA_VERSION` (in one transaction).

    1 -> 2: ``sample_id`` was UNIQUE on its own; the key is now ``(device, sample_id)``. SQLite cannot drop a
    column constraint, so the table is copied (same columns, same order) and swapped.
    """
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    row = conn.execute("SELECT sql FROM sqlite_master WHERE type='table' AND name='samples'").fetchone()
    if row is None or version >= 2 or "sample_id TEXT NOT NULL UNIQUE" not in row[0]:
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        create = _SCHEMA[_SCHEMA.index("CREATE TABLE IF NOT EXISTS samples"):_SCHEMA.index(");") + 2]
        conn.execute(create.replace("IF NOT EXISTS samples", "samples_v2"))
        conn.execute("INSERT INTO samples_v2 SELECT * FROM samples")
        conn.execute("DROP TABLE samples")
        conn.execute("ALTER TABLE samples_v2 RENAME TO samples")
        conn.execute("COMMIT")
    except BaseException:
        _rollback(conn)
        raise
