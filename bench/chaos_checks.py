"""What ``edgeloop bench chaos`` reads to judge a run, from outside the processes it breaks.

Why apart from ``bench/chaos.py``: that module says what is broken and when; this one holds the stranger's view
of the result, read from the files and endpoints an operator has (no process is asked how it feels):

* a camera's outbox (``outbox.sqlite``, read-only): its persistent counters and the ids it still holds;
* the trainer's store (``samples/samples.db``) and timeline: what was stored, what was trained twice;
* the rollout store (``rollout.sqlite``, read-only): rollouts and their states, the fleet's target, the models;
* a camera's model on disk: ``edge.updater.select_boot_model`` names what it boots, which must be the file its
  ``active.json`` names (not a fallback), hashing to what the controller registered for that version;
* a camera's ``/metrics`` (frames, verdicts, samples not stored and why, the outbox pause, the model running);
* a small file system (tmpfs) under a camera's state directory that can be filled to the last byte.
"""
from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any, Callable

ACTIVE = ("running", "paused", "rolling_back")


def wait(cond: Callable[[], Any], timeout: float, what: str, step: float = 0.5) -> Any:
    """Poll ``cond`` until it is truthy; TimeoutError naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = cond()
        if got:
            return got
        time.sleep(step)
    raise TimeoutError(f"timed out after {timeout:g}s waiting for {what}")


def _ro(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)


# -- cameras' outboxes ---------------------------------------------------------------------------------------
def outbox_counts(state: Path) -> dict[str, int]:
    """The camera's persistent outbox counters (put, acked, dropped by its bound) and how many rows it holds."""
    with _ro(state / "outbox.sqlite") as db:
        meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
        left = db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]
    return {"put": int(meta.get("put", 0)), "acked": int(meta.get("acked", 0)),
            "dropped": int(meta.get("dropped_oldest", 0)) + int(meta.get("dropped_lowest_priority", 0)),
            "left": int(left)}


def outbox_ids(state: Path) -> list[str]:
    """The sample ids the camera's outbox holds now."""
    with _ro(state / "outbox.sqlite") as db:
        return [r[0] for r in db.execute("SELECT sample_id FROM outbox ORDER BY id")]


# -- the trainer's store ---------------------------------------------------------------------------------------
def trainer_view(state: Path) -> tuple[dict[str, int], int]:
    """Samples stored per device, and samples that appear in more than one update of the timeline."""
    with _ro(state / "samples" / "samples.db") as db:
        stored = dict(db.execute("SELECT device, COUNT(*) FROM samples GROUP BY device").fetchall())
    seen: set[str] = set()
    twice = 0
    timeline = state / "timeline.jsonl"
    if timeline.exists():
        for line in timeline.read_text().splitlines():
            try:
                ids = json.loads(line).get("samples", [])
            except ValueError:
                continue  # a line cut by kill -9
            for sid in ids:
                twice += sid in seen
                seen.add(sid)
    return {k: int(v) for k, v in stored.items()}, twice


def stored_copies(state: Path, ids: list[str]) -> dict[str, int]:
    """How many rows the trainer's store has for each of ``ids`` (1 = arrived once)."""
    with _ro(state / "samples" / "samples.db") as db:
        return {sid: int(db.execute("SELECT COUNT(*) FROM samples WHERE sample_id = ?", (sid,)).fetchone()[0])
                for sid in ids}


# -- the rollout store -----------------------------------------------------------------------------------------
def rollouts(deploy: Path) -> list[dict[str, Any]]:
    """Every rollout (id, version, state, wave, reason), oldest first; [] before the controller made the file."""
    path = deploy / "rollout.sqlite"
    if not path.exists():
        return []
    with _ro(path) as db:
        db.row_factory = sqlite3.Row
        return [dict(r) for r in db.execute(
            "SELECT id, version, prev_version, state, wave, wave_published, reason, created, finished "
            "FROM rollouts ORDER BY created")]


def active_rollout(deploy: Path) -> dict[str, Any] | None:
    """The rollout in progress with a wave out (what a mid-rollout kill interrupts), if any."""
    try:
        live = [r for r in rollouts(deploy) if r["state"] in ACTIVE and r["wave_published"]]
    except sqlite3.Error:
        return None
    return live[-1] if live else None


def events_after(deploy: Path, rollout_id: str, ts: float) -> int:
    """Events the controller recorded for a rollout after ``ts`` (wall clock): the restarted one carried it on."""
    with _ro(deploy / "rollout.sqlite") as db:
        return int(db.execute("SELECT COUNT(*) FROM events WHERE rollout_id = ? AND ts > ?",
                              (rollout_id, ts)).fetchone()[0])


def store_health(deploy: Path) -> dict[str, Any]:
    """``PRAGMA integrity_check``, rollouts by state, the fleet's target and the registered models' hashes."""
    with _ro(deploy / "rollout.sqlite") as db:
        integrity = str(db.execute("PRAGMA integrity_check").fetchone()[0])
        states = dict(db.execute("SELECT state, COUNT(*) FROM rollouts GROUP BY state").fetchall())
        row = db.execute("SELECT version, below FROM fleets WHERE fleet = 'default'").fetchone()
        models = {v: sha for v, sha in db.execute("SELECT version, sha256 FROM models")}
    return {"integrity": integrity, "states": states, "target": row[0] if row else None,
            "target_below": int(row[1]) if row else None, "models": models}


# -- a camera's model ------------------------------------------------------------------------------------------
def camera_model(state: Path, provisioned: Path) -> dict[str, Any]:
    """What the camera boots: version, sha256, and whether that is the file ``active.json`` names (complete
    and verified) rather than a fallback after a broken install."""
    from edge.updater import select_boot_model
    from protocol.durable import sha256_file

    path, version = select_boot_model(state, provisioned)
    try:
        pointer = json.loads((state / "active.json").read_text())
    except (OSError, ValueError):
        pointer = {}
    sha = sha256_file(path) if path is not None and path.exists() else None
    named = (pointer.get("active") or {}).get("sha256")
    return {"version": version, "sha256": sha, "pointer_ok": named is None or named == sha}


# -- a camera's /metrics ---------------------------------------------------------------------------------------
def scrape(port: int) -> dict[str, float] | None:
    """A camera's /metrics as {name or name{label=value}: value}; None when it does not answer."""
    from prometheus_client.parser import text_string_to_metric_families

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            text = r.read().decode()
    except OSError:
        return None
    out: dict[str, float] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
            out[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
    return out


def model_running(metrics: dict[str, float] | None) -> str | None:
    """The version named by ``edgeloop_edge_model_info``."""
    for key in metrics or {}:
        if key.startswith("edgeloop_edge_model_info{") and "version=" in key:
            return key.split("version=", 1)[1].rstrip("}").split(",")[0]
    return None


# -- a small file system that fills up -------------------------------------------------------------------------
def mount_small_fs(where: Path, size: str = "64m") -> str | None:
    """Mount a tmpfs of ``size`` at ``where``; None when done, else why it could not (not root, no mount)."""
    where.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        return "mounting a file system needs root"
    try:
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(where)], check=True,
                       capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"mount -t tmpfs failed: {getattr(exc, 'stderr', '') or exc}".strip()
    return None


def umount(where: Path) -> None:
    subprocess.run(["umount", "-l", str(where)], capture_output=True, timeout=20)


def fill(filler: Path) -> int:
    """Write ``filler`` until its file system has no byte left; the bytes written."""
    n = 0
    with open(filler, "wb", buffering=0) as f:
        for size in (1 << 20, 1 << 12, 1):
            try:
                while True:
                    n += f.write(b"\0" * size)
            except OSError:
                pass
    return n
