"""Registry of exported model versions in the trainer's state directory.

One SQLite file (``state_dir/registry.sqlite``, WAL) with one row per version, and the ONNX bytes beside it
in ``state_dir/models/<version>.onnx``. Versions are ``v0001``, ``v0002``, ... (``v%04d``; past 9999 they just
get longer) and ordered by their integer sequence, never by string.

Why SQLite rather than a JSON file: the deploy side and tools read the registry while the trainer writes it;
WAL gives them consistent snapshots without locking the writer out, and each register/status change is a
single transaction.

Atomicity of :meth:`Registry.register`: the model file is put in place first (tmp + fsync + rename), then the
row is inserted in one transaction. A crash between the two leaves an unreferenced file, never a row
pointing at a missing or half-written file; the next registration of that version simply replaces it.

Status lifecycle: ``candidate`` (exported, being evaluated) -> ``promoted`` (passed the no-regression gate,
eligible for rollout) or ``rejected``; a promoted version that is superseded or rolled back may become
``retired``. Metrics are a free-form JSON object (accuracy, macro_f1, per_class, forgetting, ...).
"""
from __future__ import annotations

import builtins
import json
import os
import re
import shutil
import sqlite3
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from protocol.durable import fsync_dir as _fsync_dir, sha256_file as _sha256_file

STATUSES = ("candidate", "promoted", "rejected", "retired")
_VERSION_RE = re.compile(r"^v(\d{4,})$")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS versions (
    seq          INTEGER PRIMARY KEY,
    version      TEXT    NOT NULL UNIQUE,
    parent       TEXT,
    path         TEXT    NOT NULL,
    sha256       TEXT    NOT NULL,
    size         INTEGER NOT NULL,
    arch         TEXT,
    labels       TEXT    NOT NULL,
    metrics      TEXT    NOT NULL,
    samples_seen INTEGER NOT NULL,
    created      TEXT    NOT NULL,
    status       TEXT    NOT NULL CHECK (status IN ('candidate', 'promoted', 'rejected', 'retired')),
    updated      TEXT    NOT NULL
);
CREATE INDEX IF NOT EXISTS versions_status ON versions(status, seq);
"""


class RegistryError(RuntimeError):
    """Invalid registry operation (unknown version, duplicate version, bad status, missing file)."""


def format_version(seq: int) -> str:
    """1 -> "v0001"."""
    if seq < 1:
        raise ValueError("version numbers start at 1")
    return f"v{seq:04d}"


def parse_version(version: str) -> int:
    """"v0001" -> 1; anything else is a :class:`RegistryError` (keeps file names and ordering predictable)."""
    m = _VERSION_RE.match(version)
    if not m or int(m.group(1)) < 1:
        raise RegistryError(f"bad version {version!r}: expected v0001, v0002, ...")
    return int(m.group(1))


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@dataclass(frozen=True)
class ModelRecord:
    """One registered version, as stored."""

    version: str
    seq: int
    parent: str | None
    path: Path
    sha256: str
    size: int
    arch: str | None
    labels: list[str]
    metrics: dict[str, Any]
    samples_seen: int
    created: str
    status: str
    updated: str

    @classmethod
    def _from_row(cls, row: sqlite3.Row, root: Path) -> ModelRecord:
        return cls(
            version=row["version"],
            seq=row["seq"],
            parent=row["parent"],
            path=root / row["path"],
            sha256=row["sha256"],
            size=row["size"],
            arch=row["arch"],
            labels=json.loads(row["labels"]),
            metrics=json.loads(row["metrics"]),
            samples_seen=row["samples_seen"],
            created=row["created"],
            status=row["status"],
            updated=row["updated"],
        )


class Registry:
    """Versions of the model, their files, lineage, metrics and status.

    Safe to open from several processes at once (SQLite WAL + ``BEGIN IMMEDIATE`` for writes). One instance
    holds one sqlite3 connection, which Python ties to the thread that opened it: use one ``Registry`` per
    thread (they are cheap) rather than sharing one.
    """

    def __init__(self, state_dir: str | os.PathLike[str]) -> None:
        self.state_dir = Path(state_dir)
        self.models_dir = self.state_dir / "models"
        self.models_dir.mkdir(parents=True, exist_ok=True)
        self.db_path = self.state_dir / "registry.sqlite"
        # isolation_level=None: we issue BEGIN IMMEDIATE ourselves so read-then-write is one transaction.
        self._db = sqlite3.connect(self.db_path, timeout=30.0, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")  # a registered version must survive power loss
        self._db.execute("PRAGMA busy_timeout=30000")
        self._db.executescript(_SCHEMA)

    # -- lifecycle -------------------------------------------------------------------------------------
    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Registry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    # -- naming ----------------------------------------------------------------------------------------
    def model_path(self, version: str) -> Path:
        """Where ``version``'s ONNX file lives; export straight here to avoid a copy at :meth:`register`."""
        parse_version(version)
        return self.models_dir / f"{version}.onnx"

    def next_version(self) -> str:
        """The version after the highest registered one ("v0001" in an empty registry)."""
        row = self._db.execute("SELECT MAX(seq) FROM versions").fetchone()
        return format_version((row[0] or 0) + 1)

    # -- writes ----------------------------------------------------------------------------------------
    def register(
        self,
        version: str,
        *,
        path: str | os.PathLike[str],
        labels: list[str],
        parent: str | None = None,
        metrics: Mapping[str, Any] | None = None,
        samples_seen: int = 0,
        created: str | None = None,
        status: str = "candidate",
        arch: str | None = None,
    ) -> ModelRecord:
        """Record ``version`` and put its ONNX file at ``models/<version>.onnx``.

        ``path`` may already be :meth:`model_path` (nothing is copied) or any other file (copied in atomically;
        the source is left alone). Registering an existing version is an error: versions are immutable names
        that manifests and edge devices refer to.
        """
        seq = parse_version(version)
        if status not in STATUSES:
            raise RegistryError(f"bad status {status!r}; one of {STATUSES}")
        if parent is not None:
            parse_version(parent)
        if self._db.execute("SELECT 1 FROM versions WHERE version = ?", (version,)).fetchone():
            raise RegistryError(f"version {version} is already registered")
        src = Path(path)
        if not src.is_file():
            raise RegistryError(f"model file {src} does not exist")
        dest = self.model_path(version)
        if src.resolve() != dest.resolve():
            tmp = dest.with_name(f"{dest.name}.tmp-{os.getpid()}")
            with open(src, "rb") as fin, open(tmp, "wb") as fout:
                shutil.copyfileobj(fin, fout, 1 << 20)
                fout.flush()
                os.fsync(fout.fileno())
            os.replace(tmp, dest)
            _fsync_dir(self.models_dir)
        now = _now()
        try:
            with self._write() as db:
                if parent is not None and not db.execute("SELECT 1 FROM versions WHERE version = ?", (parent,)).fetchone():
                    raise RegistryError(f"parent {parent} is not registered")
                db.execute(
                    "INSERT INTO versions (seq, version, parent, path, sha256, size, arch, labels, metrics,"
                    " samples_seen, created, status, updated) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                    (seq, version, parent, str(dest.relative_to(self.state_dir)), _sha256_file(dest),
                     dest.stat().st_size, arch, json.dumps(list(labels)), json.dumps(dict(metrics or {}), sort_keys=True),
                     int(samples_seen), created or now, status, now),
                )
        except sqlite3.IntegrityError as e:
            raise RegistryError(f"cannot register {version}: {e}") from e
        return self.get(version)

    def set_status(self, version: str, status: str) -> ModelRecord:
        """Move a version through its lifecycle (e.g. candidate -> promoted)."""
        if status not in STATUSES:
            raise RegistryError(f"bad status {status!r}; one of {STATUSES}")
        with self._write() as db:
            cur = db.execute("UPDATE versions SET status = ?, updated = ? WHERE version = ?", (status, _now(), version))
            if cur.rowcount == 0:
                raise RegistryError(f"unknown version {version}")
        return self.get(version)

    def update_metrics(self, version: str, metrics: Mapping[str, Any]) -> ModelRecord:
        """Merge ``metrics`` into the stored ones (evaluation usually finishes after export)."""
        with self._write() as db:
            row = db.execute("SELECT metrics FROM versions WHERE version = ?", (version,)).fetchone()
            if row is None:
                raise RegistryError(f"unknown version {version}")
            merged = {**json.loads(row["metrics"]), **dict(metrics)}
            db.execute("UPDATE versions SET metrics = ?, updated = ? WHERE version = ?",
                       (json.dumps(merged, sort_keys=True), _now(), version))
        return self.get(version)

    # -- reads -----------------------------------------------------------------------------------------
    def get(self, version: str) -> ModelRecord:
        row = self._db.execute("SELECT * FROM versions WHERE version = ?", (version,)).fetchone()
        if row is None:
            raise RegistryError(f"unknown version {version}")
        return ModelRecord._from_row(row, self.state_dir)

    def __contains__(self, version: object) -> bool:
        return bool(self._db.execute("SELECT 1 FROM versions WHERE version = ?", (version,)).fetchone())

    def list(self, status: str | None = None) -> builtins.list[ModelRecord]:
        """All versions (or those with ``status``), oldest first."""
        if status is None:
            rows = self._db.execute("SELECT * FROM versions ORDER BY seq").fetchall()
        else:
            rows = self._db.execute("SELECT * FROM versions WHERE status = ? ORDER BY seq", (status,)).fetchall()
        return [ModelRecord._from_row(r, self.state_dir) for r in rows]

    def latest(self, status: str | None = None) -> ModelRecord | None:
        """The newest version (or newest with ``status``), None if there is none."""
        records = self._db.execute(
            "SELECT * FROM versions" + (" WHERE status = ?" if status else "") + " ORDER BY seq DESC LIMIT 1",
            (status,) if status else (),
        ).fetchone()
        return ModelRecord._from_row(records, self.state_dir) if records else None

    def latest_promoted(self) -> ModelRecord | None:
        """What the rollout controller should ship: the newest promoted version."""
        return self.latest("promoted")

    def best(self, metric: str = "accuracy", *, status: str | None = "promoted", higher_is_better: bool = True) -> ModelRecord | None:
        """The version with the best numeric ``metric`` (ties go to the newer one); versions without it are skipped."""
        scored = [r for r in self.list(status) if isinstance(r.metrics.get(metric), (int, float))]
        if not scored:
            return None
        sign = 1.0 if higher_is_better else -1.0
        return max(scored, key=lambda r: (sign * float(r.metrics[metric]), r.seq))

    def lineage(self, version: str) -> builtins.list[ModelRecord]:
        """``version`` and its ancestors, newest first (for reports and forgetting measurements)."""
        chain = []
        current: str | None = version
        while current is not None:
            record = self.get(current)
            chain.append(record)
            current = record.parent
        return chain

    def verify_file(self, version: str) -> bool:
        """True if the stored file still has the registered size and sha256 (before publishing it)."""
        record = self.get(version)
        return record.path.is_file() and record.path.stat().st_size == record.size and _sha256_file(record.path) == record.sha256
