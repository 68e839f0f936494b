"""Where rollouts live: one SQLite file (WAL) per controller state dir, readable from any process.

Any process may record a new rollout (``edgeloop rollout start --detach``); after that only the running
controller writes its progress. Other processes (``edgeloop rollout pause|resume|abort|rollback``,
``status``, the demo's report) read, or queue a command in the rollout's ``command`` column. Every method
is one short transaction, so a controller killed at any point restarts from the last completed step.

Schema versions (``PRAGMA user_version``), migrated forward when a file is opened:

* 0: files written before the version was recorded (same tables).
* 1: the gate's shadow thresholds in stored policies are named ``shadow_*`` (see ``Policy.renamed_keys``).
* 2: rollouts may wait for approval (states ``awaiting_approval``, ``rejected``; a command's ``command_detail``);
  the promotions the controller received (``promotions``) and requests for it (``requests``).

Writes are kept small on purpose: the device snapshot writes only the rows that changed (telemetry such as fps
at most every ``DEVICE_REFRESH_S``), so a fleet of thousands does not rewrite the table every second.
"""
from __future__ import annotations

import contextlib
import enum
import json
import logging
import os
import sqlite3
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator

import msgspec

from .rollout_gate import Policy

__all__ = ["State", "ACTIVE", "WAITING", "TERMINAL", "TRANSITIONS", "COMMANDS", "Rollout", "ModelRecord",
           "FleetTarget", "Event", "PromotionRecord", "PROMOTION_STATUSES", "RolloutStore", "SCHEMA_VERSION",
           "SchemaError", "DEVICE_REFRESH_S"]

log = logging.getLogger("edgeloop.controller")


class SchemaError(RuntimeError):
    """The file was written by a newer edgeloop (its rollout schema is beyond what this one knows)."""


class State(enum.StrEnum):
    """The states of a rollout (a ``str``: compares equal to its value, stored as it)."""

    AWAITING_APPROVAL = "awaiting_approval"  # recorded, nothing published: an operator approves or rejects it
    RUNNING = "running"             # publishing waves and judging them
    PAUSED = "paused"               # operator hold: no wave advances, nothing is judged
    ROLLING_BACK = "rolling_back"   # the previous version is published to everyone; waiting for devices
    COMPLETED = "completed"         # every wave soaked healthy
    ROLLED_BACK = "rolled_back"     # no online device runs the new version any more (or the wait timed out)
    ABORTED = "aborted"             # operator stop (devices keep what they run), or no version to roll back to
    SUPERSEDED = "superseded"       # a newer rollout on the same fleet took over (or a newer version was promoted
                                    # while this one waited for approval)
    REJECTED = "rejected"           # an operator refused it while it waited for approval


ACTIVE = (State.RUNNING, State.PAUSED, State.ROLLING_BACK)
WAITING = (State.AWAITING_APPROVAL,)
TERMINAL = (State.COMPLETED, State.ROLLED_BACK, State.ABORTED, State.SUPERSEDED, State.REJECTED)

#: Which state may follow which; :meth:`RolloutStore.set_state` refuses anything else (compare-and-set in
#: SQLite, so a rollout another process superseded is never overwritten by a controller's stale view).
TRANSITIONS: dict[State, tuple[State, ...]] = {
    State.AWAITING_APPROVAL: (State.RUNNING, State.REJECTED, State.SUPERSEDED, State.ABORTED),
    State.RUNNING: (State.PAUSED, State.ROLLING_BACK, State.COMPLETED, State.ABORTED, State.SUPERSEDED),
    State.PAUSED: (State.RUNNING, State.ROLLING_BACK, State.ABORTED, State.SUPERSEDED),
    State.ROLLING_BACK: (State.ROLLING_BACK, State.ROLLED_BACK, State.ABORTED, State.SUPERSEDED),
    **{s: () for s in TERMINAL},
}

#: Operator commands other processes may queue for the running controller (``approve``/``reject``: a rollout that
#: awaits approval; the command's ``detail`` carries who, and for ``reject`` why).
COMMANDS = ("pause", "resume", "abort", "rollback", "approve", "reject")
#: Device snapshot: a row whose only change is telemetry (fps, latency, outbox, last seen) is written at most
#: this often; any other change is written on the next snapshot.
DEVICE_REFRESH_S = 30.0
_TELEMETRY = ("last_seen", "fps", "latency_ms", "outbox_depth", "status_time", "stats_time")


class Rollout(msgspec.Struct, kw_only=True, frozen=True):
    """One rollout as stored: a snapshot (read it again after changing it)."""

    id: str
    fleet: str
    model_id: str
    version: str
    prev_version: str | None        # the rollback target (None: nothing known to roll back to)
    policy: Policy
    state: State = State.RUNNING
    wave: int = 0                   # index into policy.waves
    below: int = 0                  # bucket bound of the current wave (never shrinks: waves are nested)
    wave_published: bool = False    # the current wave's manifest is out
    wave_started: float | None = None   # when it went out (or when a rollback began)
    soak_started: float | None = None   # since when its soak counts, if not wave_started: the last resume
    reason: str | None = None       # why it halted or ended
    command: str | None = None      # queued operator command, see COMMANDS
    command_detail: str | None = None   # who queued it (and a rejection's reason)
    created: float = 0.0
    updated: float = 0.0
    finished: float | None = None

    @property
    def active(self) -> bool:
        return self.state in ACTIVE

    @property
    def waiting(self) -> bool:
        return self.state in WAITING


class ModelRecord(msgspec.Struct, kw_only=True, frozen=True):
    """A registered model file; ``published``: its chunks are retained on the broker."""

    model_id: str
    version: str
    sha256: str
    path: str
    size: int
    chunk_size: int
    published: bool = False

    @property
    def chunks(self) -> int:
        return -(-self.size // self.chunk_size)


class FleetTarget(msgspec.Struct, kw_only=True, frozen=True):
    """What a fleet's retained manifest currently says (to re-sign it before it expires)."""

    fleet: str
    rollout_id: str
    model_id: str
    version: str
    wave: int
    below: int
    seq: int
    expires: float
    policy: Policy


#: What became of a promotion the controller received: ``announced`` (bytes not here yet), ``ready`` (verified
#: bytes on the controller's disk), ``started`` (a rollout was recorded for it: running or awaiting approval),
#: ``baseline`` (what the fleet already runs: kept as the rollback target), ``skipped`` (a newer version was
#: promoted first), ``failed`` (its bytes could not be fetched or verified; ``detail`` says why).
PROMOTION_STATUSES = ("announced", "ready", "started", "baseline", "skipped", "failed")


class PromotionRecord(msgspec.Struct, kw_only=True, frozen=True):
    """A promoted version the controller heard of (one row per model and version; ``notice``: the JSON)."""

    model_id: str
    version: str
    seq: int
    parent: str | None
    sha256: str
    size: int
    status: str
    received: float
    announced: float
    notice: str
    path: str | None = None
    detail: str | None = None
    rollout_id: str | None = None
    updated: float = 0.0


class Event(msgspec.Struct, kw_only=True, frozen=True):
    """One line of a rollout's history; ``version``: the rollout's version, for readers."""

    ts: float
    rollout_id: str | None
    kind: str
    detail: str | None = None
    version: str | None = None


_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS models (
    model_id TEXT NOT NULL, version TEXT NOT NULL, sha256 TEXT NOT NULL, path TEXT NOT NULL,
    size INTEGER NOT NULL, chunk_size INTEGER NOT NULL, published INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (model_id, version));
CREATE TABLE IF NOT EXISTS rollouts (
    id TEXT PRIMARY KEY, fleet TEXT NOT NULL, model_id TEXT NOT NULL, version TEXT NOT NULL,
    prev_version TEXT, state TEXT NOT NULL, wave INTEGER NOT NULL DEFAULT 0,
    below INTEGER NOT NULL DEFAULT 0, wave_published INTEGER NOT NULL DEFAULT 0,
    wave_started REAL, soak_started REAL, policy TEXT NOT NULL, reason TEXT,
    command TEXT, created REAL NOT NULL, updated REAL NOT NULL, finished REAL, command_detail TEXT);
CREATE TABLE IF NOT EXISTS fleets (
    fleet TEXT PRIMARY KEY, rollout_id TEXT, model_id TEXT, version TEXT, wave INTEGER,
    below INTEGER, seq INTEGER, expires REAL, policy TEXT);
CREATE TABLE IF NOT EXISTS events (
    ts REAL NOT NULL, rollout_id TEXT, kind TEXT NOT NULL, detail TEXT);
CREATE TABLE IF NOT EXISTS devices (
    device TEXT PRIMARY KEY, row TEXT NOT NULL, updated REAL NOT NULL);
CREATE TABLE IF NOT EXISTS promotions (
    model_id TEXT NOT NULL, version TEXT NOT NULL, seq INTEGER NOT NULL, parent TEXT, sha256 TEXT NOT NULL,
    size INTEGER NOT NULL, status TEXT NOT NULL, received REAL NOT NULL, announced REAL NOT NULL,
    notice TEXT NOT NULL, path TEXT, detail TEXT, rollout_id TEXT, updated REAL NOT NULL,
    PRIMARY KEY (model_id, version));
CREATE TABLE IF NOT EXISTS requests (
    id INTEGER PRIMARY KEY AUTOINCREMENT, kind TEXT NOT NULL, arg TEXT NOT NULL, created REAL NOT NULL);
"""


def _rename_policy_keys(db: sqlite3.Connection) -> None:
    """Schema 1: stored policies use the gate's ``shadow_*`` threshold names."""
    for table, key in (("rollouts", "id"), ("fleets", "fleet")):
        for row_key, text in db.execute(f"SELECT {key}, policy FROM {table} WHERE policy IS NOT NULL").fetchall():
            policy = json.loads(text)
            renamed = {Policy.renamed_keys.get(k, k): v for k, v in policy.items()}
            if renamed != policy:
                db.execute(f"UPDATE {table} SET policy=? WHERE {key}=?", (json.dumps(renamed), row_key))


def _approval_columns(db: sqlite3.Connection) -> None:
    """Schema 2: a command's detail (tables ``promotions`` and ``requests`` come with the schema script)."""
    cols = {r[1] for r in db.execute("PRAGMA table_info(rollouts)").fetchall()}
    if "command_detail" not in cols:
        db.execute("ALTER TABLE rollouts ADD COLUMN command_detail TEXT")


#: Schema version reached -> the step that reaches it from the one before.
_MIGRATIONS: dict[int, Callable[[sqlite3.Connection], None]] = {1: _rename_policy_keys, 2: _approval_columns}
SCHEMA_VERSION = max(_MIGRATIONS)


def _encode_policy(policy: Policy) -> str:
    return msgspec.json.encode(policy).decode()


def _rollout(row: sqlite3.Row) -> Rollout:
    d = dict(row)
    d["policy"] = msgspec.json.decode(d["policy"], type=Policy)
    d["state"] = State(d["state"])
    d["wave_published"] = bool(d["wave_published"])
    return Rollout(**d)


def _target(row: sqlite3.Row) -> FleetTarget:
    d = dict(row)
    d["policy"] = msgspec.json.decode(d["policy"], type=Policy)
    return FleetTarget(**d)


def _model(row: sqlite3.Row) -> ModelRecord:
    return ModelRecord(**{**dict(row), "published": bool(row["published"])})


class RolloutStore:
    """SQLite (WAL) rollout state; every method is one short transaction, safe across processes."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(self.path, timeout=30, check_same_thread=False, isolation_level=None)
        self.db.row_factory = sqlite3.Row
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self._lock = threading.Lock()
        self._written: dict[str, tuple[str, float]] = {}   # device -> (row without telemetry, when written)
        self._migrate()

    def close(self) -> None:
        self.db.close()

    def _migrate(self) -> None:
        """Create the tables, then bring an older file to :data:`SCHEMA_VERSION` (once, whoever opens it)."""
        self.db.executescript(_SCHEMA)
        if self.db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION:
            return
        with self._tx():
            version = self.db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise SchemaError(f"{self.path} has rollout schema {version}; this edgeloop knows up to "
                                   f"{SCHEMA_VERSION} (upgrade edgeloop, or use another --state-dir)")
            for target in range(version + 1, SCHEMA_VERSION + 1):
                _MIGRATIONS[target](self.db)
                log.info("%s: rollout schema %d -> %d", self.path, target - 1, target)
            self.db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    # -- plumbing ----------------------------------------------------------------------------------------------
    def _rows(self, sql: str, args: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self.db.execute(sql, args).fetchall()

    def _exec(self, sql: str, args: tuple[Any, ...] = ()) -> int:
        """Run one statement; returns the number of rows it changed."""
        with self._lock:
            return self.db.execute(sql, args).rowcount

    @contextlib.contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, taken at once (two processes never both read, then write)."""
        with self._lock:
            self.db.execute("BEGIN IMMEDIATE")
            try:
                yield self.db
            except BaseException:
                self.db.execute("ROLLBACK")
                raise
            self.db.execute("COMMIT")

    # -- controller liveness and manifest sequence -------------------------------------------------------------
    def beat(self, now: float | None = None) -> None:
        """The running controller's heartbeat (``status`` tells operators whether one is running)."""
        self._exec("INSERT INTO meta(key, value) VALUES('heartbeat', ?) "
                   "ON CONFLICT(key) DO UPDATE SET value=excluded.value", (str(time.time() if now is None else now),))

    def heartbeat(self) -> float | None:
        rows = self._rows("SELECT value FROM meta WHERE key='heartbeat'")
        return float(rows[0]["value"]) if rows else None

    def controller_alive(self, max_age: float = 5.0) -> bool:
        hb = self.heartbeat()
        return hb is not None and time.time() - hb < max_age

    def next_seq(self) -> int:
        """Monotonic manifest sequence: max(last + 1, now in ms), persisted before use."""
        with self._tx() as db:
            row = db.execute("SELECT value FROM meta WHERE key='seq'").fetchone()
            seq = max((int(row[0]) + 1) if row else 0, int(time.time() * 1000))
            db.execute("INSERT INTO meta(key, value) VALUES('seq', ?) "
                       "ON CONFLICT(key) DO UPDATE SET value=excluded.value", (str(seq),))
        return seq

    # -- rollouts ----------------------------------------------------------------------------------------------
    def create_rollout(self, fleet: str, model_id: str, version: str, prev_version: str | None,
                       policy: Policy, state: State = State.RUNNING) -> Rollout:
        """Record a new rollout: ``running`` (the controller publishes its first wave on its next tick) or
        ``awaiting_approval`` (nothing happens until an operator approves it)."""
        if state not in (State.RUNNING, State.AWAITING_APPROVAL):
            raise ValueError(f"a rollout starts running or awaiting approval, not {state}")
        now = time.time()
        r = Rollout(id=f"r{time.strftime('%Y%m%d%H%M%S')}-{uuid.uuid4().hex[:6]}", fleet=fleet, model_id=model_id,
                    version=version, prev_version=prev_version, policy=policy, state=state, created=now,
                    updated=now)
        self._exec("INSERT INTO rollouts(id, fleet, model_id, version, prev_version, state, policy, created, updated) "
                   "VALUES(?,?,?,?,?,?,?,?,?)",
                   (r.id, fleet, model_id, version, prev_version, r.state.value, _encode_policy(policy), now, now))
        return r

    def rollout(self, rid: str) -> Rollout | None:
        rows = self._rows("SELECT * FROM rollouts WHERE id=?", (rid,))
        return _rollout(rows[0]) if rows else None

    def latest(self, fleet: str | None = None) -> Rollout | None:
        """The newest rollout (of one fleet, or of any)."""
        if fleet is None:
            rows = self._rows("SELECT * FROM rollouts ORDER BY created DESC LIMIT 1")
        else:
            rows = self._rows("SELECT * FROM rollouts WHERE fleet=? ORDER BY created DESC LIMIT 1", (fleet,))
        return _rollout(rows[0]) if rows else None

    def rollouts(self) -> list[Rollout]:
        """Every rollout, oldest first."""
        return [_rollout(r) for r in self._rows("SELECT * FROM rollouts ORDER BY created")]

    def get_active(self, fleet: str | None = None) -> list[Rollout]:
        """Rollouts the controller still works on (oldest first), of one fleet or of all."""
        return self._in_states(ACTIVE, fleet)

    def get_waiting(self, fleet: str | None = None) -> list[Rollout]:
        """Rollouts that await an operator's approval (oldest first)."""
        return self._in_states(WAITING, fleet)

    def _in_states(self, states: tuple[State, ...], fleet: str | None) -> list[Rollout]:
        marks = ",".join("?" * len(states))
        rows = self._rows(f"SELECT * FROM rollouts WHERE state IN ({marks}) ORDER BY created", states)
        return [r for r in map(_rollout, rows) if fleet is None or r.fleet == fleet]

    def waiting_for(self, version: str, fleet: str | None = None) -> Rollout | None:
        """The rollout of ``version`` that awaits approval (the newest, if several fleets wait for it)."""
        rows = [r for r in self.get_waiting(fleet) if r.version == version]
        return rows[-1] if rows else None

    def fleet_baseline(self, fleet: str) -> str | None:
        """The version the whole fleet reached last: the newest completed rollout's, else the recorded baseline."""
        rows = self._rows("SELECT version FROM rollouts WHERE fleet=? AND state=? ORDER BY finished DESC LIMIT 1",
                          (fleet, State.COMPLETED.value))
        if rows:
            return str(rows[0]["version"])
        rows = self._rows("SELECT value FROM meta WHERE key=?", (f"baseline:{fleet}",))
        return str(rows[0]["value"]) if rows else None

    def set_baseline(self, fleet: str, version: str) -> None:
        """Record what the fleet runs before any rollout completed (what its devices were provisioned with)."""
        self._exec("INSERT INTO meta(key, value) VALUES(?, ?) ON CONFLICT(key) DO UPDATE SET value=excluded.value",
                   (f"baseline:{fleet}", version))

    def set_prev_version(self, rid: str, prev_version: str | None) -> None:
        """Fix the rollback target when an approved rollout starts (the fleet may have moved while it waited)."""
        self._update(rid, "prev_version=?", (prev_version,))

    def _update(self, rid: str, sets: str, args: tuple[Any, ...] = (), where: str = "",
                where_args: tuple[Any, ...] = ()) -> bool:
        sql = f"UPDATE rollouts SET {sets}, updated=? WHERE id=?{where}"
        return self._exec(sql, (*args, time.time(), rid, *where_args)) == 1

    def set_state(self, rid: str, state: State, reason: str | None = None,
                  event: tuple[str, str] | None = None) -> bool:
        """Move a rollout to ``state`` if :data:`TRANSITIONS` allows it from the state it is in *now*.

        Side effects that belong to the state: an end state records ``finished``; resuming restarts the
        soak; rolling back restarts the wave clock (it bounds the wait for devices). ``event`` (kind, detail)
        is recorded in the same transaction, so nobody sees the new state without the event that explains it.
        Returns whether it moved.
        """
        sources = [s for s, nxt in TRANSITIONS.items() if state in nxt]
        sets, args = "state=?, reason=?", [state.value, reason]
        if state in TERMINAL:
            sets, args = sets + ", finished=?", [*args, time.time()]
        elif state == State.RUNNING:
            sets, args = sets + ", soak_started=?", [*args, time.time()]
        elif state == State.ROLLING_BACK:
            sets, args = sets + ", wave_started=?", [*args, time.time()]
        where = f" AND state IN ({','.join('?' * len(sources))})"
        with self._tx() as db:
            moved = db.execute(f"UPDATE rollouts SET {sets}, updated=? WHERE id=?{where}",
                               (*args, time.time(), rid, *sources)).rowcount == 1
            if moved and event is not None:
                db.execute("INSERT INTO events(ts, rollout_id, kind, detail) VALUES(?, ?, ?, ?)",
                           (time.time(), rid, *event))
        if moved and event is not None:
            log.info("rollout %s: %s %s", rid, *event)
        if not moved:
            log.warning("rollout %s: %s is not allowed from its current state (changed meanwhile?)", rid, state.value)
        return moved

    def mark_wave_published(self, rid: str, below: int) -> None:
        """The current wave's manifest is out, targeting buckets below ``below``; its clock starts now."""
        self._update(rid, "below=?, wave_published=1, wave_started=?, soak_started=NULL", (below, time.time()))

    def next_wave(self, rid: str, to: int | None = None) -> None:
        """Advance to the next wave, or to wave index ``to`` (published on the next tick)."""
        if to is None:
            self._update(rid, "wave=wave+1, wave_published=0, soak_started=NULL")
        else:
            self._update(rid, "wave=?, wave_published=0, soak_started=NULL", (int(to),))

    def queue_command(self, rid: str, cmd: str, detail: str | None = None) -> None:
        """Queue an operator command for the running controller (from any process); ``detail``: who, and why."""
        if cmd not in COMMANDS:
            raise ValueError(f"unknown rollout command {cmd!r} (known: {', '.join(COMMANDS)})")
        self._update(rid, "command=?, command_detail=?", (cmd, detail))

    def approve(self, version: str, by: str, fleet: str | None = None) -> Rollout:
        """Queue the approval of the rollout of ``version`` that awaits it (``edgeloop rollout approve``, the
        console); KeyError naming what does wait when ``version`` does not."""
        r = self._waiting_or_raise(version, fleet)
        self.queue_command(r.id, "approve", f"by {by}")
        return r

    def reject(self, version: str, by: str, reason: str, fleet: str | None = None) -> Rollout:
        """Queue the rejection of the waiting rollout of ``version``, with the operator's reason."""
        r = self._waiting_or_raise(version, fleet)
        self.queue_command(r.id, "reject", f"by {by}: {reason}" if reason else f"by {by}")
        return r

    def _waiting_or_raise(self, version: str, fleet: str | None) -> Rollout:
        r = self.waiting_for(version, fleet)
        if r is None:
            waiting = ", ".join(f"{w.version} (fleet {w.fleet})" for w in self.get_waiting(fleet)) or "none"
            raise KeyError(f"no rollout of {version} awaits approval (waiting: {waiting})")
        return r

    def clear_command(self, rid: str, cmd: str) -> None:
        """The controller took ``cmd``; a command queued since then stays for the next tick."""
        self._update(rid, "command=NULL, command_detail=NULL", where=" AND command=?", where_args=(cmd,))

    # -- events ------------------------------------------------------------------------------------------------
    def add_event(self, rollout_id: str | None, kind: str, detail: str = "") -> None:
        self._exec("INSERT INTO events(ts, rollout_id, kind, detail) VALUES(?, ?, ?, ?)",
                   (time.time(), rollout_id, kind, detail))
        log.info("rollout %s: %s %s", rollout_id, kind, detail)

    _EVENTS = "SELECT e.ts, e.rollout_id, e.kind, e.detail, r.version FROM events e " \
              "LEFT JOIN rollouts r ON r.id = e.rollout_id"

    def events(self, rid: str, limit: int = 50) -> list[Event]:
        """The last ``limit`` events of one rollout, oldest first."""
        rows = self._rows(f"{self._EVENTS} WHERE e.rollout_id=? ORDER BY e.ts DESC LIMIT ?", (rid, limit))
        return [Event(**dict(r)) for r in rows][::-1]

    def events_since(self, ts: float) -> list[Event]:
        """Every event after ``ts`` (of all rollouts), oldest first: for followers of the history."""
        return [Event(**dict(r)) for r in self._rows(f"{self._EVENTS} WHERE e.ts > ? ORDER BY e.ts", (ts,))]

    # -- models and fleet targets ------------------------------------------------------------------------------
    def save_model(self, model_id: str, version: str, sha256: str, path: str, size: int, chunk_size: int) -> None:
        """Register (or re-register) a model file; keeps whether its chunks are published."""
        self._exec("INSERT INTO models(model_id, version, sha256, path, size, chunk_size) VALUES(?,?,?,?,?,?) "
                   "ON CONFLICT(model_id, version) DO UPDATE SET sha256=excluded.sha256, path=excluded.path, "
                   "size=excluded.size", (model_id, version, sha256, path, size, chunk_size))

    def model(self, model_id: str, version: str) -> ModelRecord | None:
        rows = self._rows("SELECT * FROM models WHERE model_id=? AND version=?", (model_id, version))
        return _model(rows[0]) if rows else None

    def model_id_of(self, version: str) -> str | None:
        """The model id most recently registered with this version."""
        rows = self._rows("SELECT model_id FROM models WHERE version=? ORDER BY rowid DESC LIMIT 1", (version,))
        return rows[0]["model_id"] if rows else None

    def published_models(self) -> list[ModelRecord]:
        return [_model(r) for r in self._rows("SELECT * FROM models WHERE published=1")]

    def set_published(self, model_id: str, version: str, published: bool) -> None:
        self._exec("UPDATE models SET published=? WHERE model_id=? AND version=?", (int(published), model_id, version))

    def set_target(self, t: FleetTarget) -> None:
        """Remember what the fleet's retained manifest now says."""
        self._exec(
            "INSERT INTO fleets(fleet, rollout_id, model_id, version, wave, below, seq, expires, policy) "
            "VALUES(?,?,?,?,?,?,?,?,?) ON CONFLICT(fleet) DO UPDATE SET rollout_id=excluded.rollout_id, "
            "model_id=excluded.model_id, version=excluded.version, wave=excluded.wave, below=excluded.below, "
            "seq=excluded.seq, expires=excluded.expires, policy=excluded.policy",
            (t.fleet, t.rollout_id, t.model_id, t.version, t.wave, t.below, t.seq, t.expires,
             _encode_policy(t.policy)))

    def target(self, fleet: str) -> FleetTarget | None:
        rows = self._rows("SELECT * FROM fleets WHERE fleet=?", (fleet,))
        return _target(rows[0]) if rows else None

    def targets(self) -> list[FleetTarget]:
        return [_target(r) for r in self._rows("SELECT * FROM fleets")]

    # -- device snapshot (for `edgeloop rollout devices` and a restarted controller) ----------------------------
    def devices(self) -> list[dict[str, Any]]:
        return [json.loads(r["row"]) for r in self._rows("SELECT row FROM devices ORDER BY device")]

    def save_devices(self, rows: list[dict[str, Any]], refresh_s: float = DEVICE_REFRESH_S) -> int:
        """Write the rows that changed since this store last wrote them; returns how many it wrote.

        A change of anything but telemetry (:data:`_TELEMETRY`) is written now; telemetry alone at most every
        ``refresh_s`` seconds per device. Only the controller calls this (its store remembers what it wrote).
        """
        now = time.time()
        todo = []
        for r in rows:
            stable = json.dumps({k: v for k, v in r.items() if k not in _TELEMETRY}, sort_keys=True, default=str)
            last = self._written.get(r["device"])
            if last is None or last[0] != stable or now - last[1] >= refresh_s:
                todo.append((r["device"], json.dumps(r, default=str), now, stable))
        if todo:
            with self._tx() as db:
                db.executemany("INSERT INTO devices(device, row, updated) VALUES(?, ?, ?) "
                               "ON CONFLICT(device) DO UPDATE SET row=excluded.row, updated=excluded.updated",
                               [t[:3] for t in todo])
            for device, _, ts, stable in todo:
                self._written[device] = (stable, ts)
        return len(todo)

    def forget_device(self, device: str) -> bool:
        """Drop a decommissioned device's row; returns whether there was one."""
        self._written.pop(device, None)
        return self._exec("DELETE FROM devices WHERE device=?", (device,)) == 1

    # -- requests for the running controller (work that needs its MQTT connection) ----------------------------
    def queue_request(self, kind: str, arg: str) -> None:
        """E.g. ``("forget", device)``: clear a decommissioned device's retained topics (any process)."""
        self._exec("INSERT INTO requests(kind, arg, created) VALUES(?, ?, ?)", (kind, arg, time.time()))

    def pending_requests(self) -> list[tuple[int, str, str]]:
        return [(r["id"], r["kind"], r["arg"]) for r in self._rows("SELECT id, kind, arg FROM requests ORDER BY id")]

    def done_request(self, request_id: int) -> None:
        self._exec("DELETE FROM requests WHERE id=?", (request_id,))

    # -- promotions received from the trainer ----------------------------------------------------------------------
    def record_promotion(self, model_id: str, version: str, seq: int, parent: str | None, sha256: str, size: int,
                         announced: float, notice: str) -> bool:
        """Remember a promotion notice; returns False if it was known already (announcements repeat)."""
        now = time.time()
        return self._exec("INSERT OR IGNORE INTO promotions(model_id, version, seq, parent, sha256, size, status, "
                          "received, announced, notice, updated) VALUES(?,?,?,?,?,?,?,?,?,?,?)",
                          (model_id, version, seq, parent, sha256, size, "announced", now, announced, notice, now)) == 1

    def promotion(self, model_id: str, version: str) -> PromotionRecord | None:
        rows = self._rows("SELECT * FROM promotions WHERE model_id=? AND version=?", (model_id, version))
        return PromotionRecord(**dict(rows[0])) if rows else None

    def promotions(self, status: str | None = None, limit: int = 1000) -> list[PromotionRecord]:
        """The newest ``limit`` promotions (by the trainer's ``seq``), oldest first."""
        where, args = ("WHERE status=? ", (status,)) if status else ("", ())
        rows = self._rows(f"SELECT * FROM promotions {where}ORDER BY seq DESC LIMIT ?", (*args, limit))
        return [PromotionRecord(**dict(r)) for r in rows][::-1]

    def set_promotion(self, model_id: str, version: str, status: str, *, detail: str | None = None,
                      path: str | None = None, rollout_id: str | None = None) -> None:
        if status not in PROMOTION_STATUSES:
            raise ValueError(f"unknown promotion status {status!r}")
        self._exec("UPDATE promotions SET status=?, detail=COALESCE(?, detail), path=COALESCE(?, path), "
                   "rollout_id=COALESCE(?, rollout_id), updated=? WHERE model_id=? AND version=?",
                   (status, detail, path, rollout_id, time.time(), model_id, version))

    def count_promotions(self) -> dict[str, int]:
        return {r["status"]: r["n"] for r in self._rows("SELECT status, COUNT(*) AS n FROM promotions GROUP BY status")}

    def count_rollouts(self) -> dict[str, int]:
        return {r["state"]: r["n"] for r in self._rows("SELECT state, COUNT(*) AS n FROM rollouts GROUP BY state")}
