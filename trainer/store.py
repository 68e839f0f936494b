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
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields
from operator import attrgetter
from pathlib import Path
from typing import Any

__all__ = ["SampleStore", "SampleRecord", "StoredSample", "IncomingSample", "BatchResult"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS samples (
    rowid INTEGER PRIMARY KEY,
    sample_id TEXT NOT NULL UNIQUE,
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
CREATE TABLE IF NOT EXISTS class_counts (label TEXT PRIMARY KEY, n INTEGER NOT NULL, heldout INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""

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
            conn.executescript(_SCHEMA)
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

    def _open_segment(self) -> tuple[int, Any]:
        existing = sorted(self.images_dir.glob("seg-*.pack"))
        n = int(existing[-1].stem.split("-")[1]) if existing else 1
        path = self._segment_path(n)
        created = not path.exists()
        f = open(path, "ab")
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
        if f.tell() >= self.segment_bytes:
            f.close()
            self._segment += 1
            f = self._segment_file = open(self._segment_path(self._segment), "ab")
            self._fsync_dir()
        where = []
        offset = f.tell()
        for img in images:
            where.append((self._segment, offset, len(img)))
            offset += len(img)
        f.write(b"".join(images))
        f.flush()
        os.fsync(f.fileno())
        return where

    # -- ingestion -------------------------------------------------------------------------------------
    def add_batch(self, items: Sequence[IncomingSample], rejections: Counter[str] | None = None) -> BatchResult:
        """Store new samples durably (images fsynced, then one commit); duplicates by ``sample_id`` are skipped.

        Also updates per-device sequence tracking and the persistent rejection counters in the same
        transaction, so the counters survive restarts exactly as the samples do. Returns only after the
        data is on disk: the caller may acknowledge the messages then.
        """
        now = time.time()
        with self._write_lock:
            conn = self._conn()
            ids = [it.sample_id for it in items]
            known: set[str] = set()
            for i in range(0, len(ids), 500):
                chunk = ids[i:i + 500]
                q = f"SELECT sample_id FROM samples WHERE sample_id IN ({','.join('?' * len(chunk))})"
                known.update(r[0] for r in conn.execute(q, chunk))
            fresh: list[IncomingSample] = []
            new_flags: list[bool] = []
            for it in items:
                is_new = it.sample_id not in known
                new_flags.append(is_new)
                if is_new:
                    known.add(it.sample_id)
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
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
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

    # -- reading -----------------------------------------------------------------------------------------
    def get(self, sample_id: str) -> StoredSample | None:
        r = self._conn().execute(f"SELECT {_COLUMNS} FROM samples WHERE sample_id=?", (sample_id,)).fetchone()
        return _row(r) if r else None

    def image(self, sample: StoredSample | str) -> tuple[bytes, str]:
        """The encoded image bytes and content type of a sample."""
        s = self.get(sample) if isinstance(sample, str) else sample
        if s is None:
            raise KeyError(sample)
        with open(self._segment_path(s.segment), "rb") as f:
            data = os.pread(f.fileno(), s.length, s.offset)
        if len(data) != s.length:
            raise OSError(f"pack file {s.segment} is truncated at sample {s.sample_id}")
        return data, s.content_type

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

    def heldout(self) -> list[StoredSample]:
        """Every held-out labelled sample (the evaluation slice), in labelling order."""
        rows = self._conn().execute(
            f"SELECT {_COLUMNS} FROM samples WHERE heldout=1 ORDER BY label_seq"
        ).fetchall()
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
        return {
            "samples": total, "labelled": labelled, "unlabelled": total - labelled, "heldout": held,
            "per_class": per_class, "rejected": self.rejections(), "devices": self.devices(),
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
                    r = conn.execute("SELECT label FROM samples WHERE sample_id=?", (sample_id,)).fetchone()
                    if r is None or (r[0] is not None and not overwrite):
                        continue
                    done += 1
                    if r[0] is not None:
                        conn.execute("UPDATE samples SET label=?, label_source=?, labelled_at=? WHERE sample_id=?",
                                     (label, source, time.time(), sample_id))
                        continue
                    cc = conn.execute("SELECT n, heldout FROM class_counts WHERE label=?", (label,)).fetchone()
                    k, k_held = (cc if cc else (0, 0))
                    phi = heldout_phase(label)
                    held = math.floor((k + 1) * heldout_fraction + phi) > math.floor(k * heldout_fraction + phi)
                    seq += 1
                    conn.execute(
                        "UPDATE samples SET label=?, label_source=?, labelled_at=?, label_seq=?, heldout=? "
                        "WHERE sample_id=?",
                        (label, source, time.time(), seq, int(held), sample_id),
                    )
                    conn.execute(
                        "INSERT INTO class_counts (label, n, heldout) VALUES (?, ?, ?) ON CONFLICT(label) "
                        "DO UPDATE SET n=excluded.n, heldout=excluded.heldout",
                        (label, k + 1, k_held + int(held)),
                    )
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
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
