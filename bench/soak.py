"""Benchmark: soak -- the production shape runs for half an hour; nothing grows, nothing is lost.

    edgeloop bench soak                       # 20 cameras, 30 minutes, RSS every 10 s (outside CI and `bench all`)
    edgeloop bench soak --quick --out DIR     # 4 cameras, 3 minutes: a smoke run, logs + CSV + PNG kept in DIR
    python -m bench.soak --cameras 20 --minutes 30 --interval 10 --out soak-run

Why: the other benchmarks measure seconds of work; leaks, queues that only fill and stores that never shrink
show up only over time. Issue 13's list of things that grew without bound is the reason this exists.

What runs, as separate processes on loopback (the shape of ``tests/integration/test_line.py``, secure as in
production): ``edgeloop pki init`` + ``edgeloop pki device cam-NN --fleet default`` for every camera;
``edgeloop broker --pki`` (mosquitto, TLS, client certificates, ACL, persistence); ``edgeloop trainer
bootstrap`` on rendered ``sim:digits`` label cards, then ``edgeloop trainer run --labeller oracle --identity
PKI/services/trainer``; ``edgeloop deploy run --mode auto`` (``EDGELOOP_MQTT_IDENTITY=PKI/services/deploy``);
and ``--cameras`` ``edgeloop edge --identity PKI/devices/cam-NN --source sim:digits?...&realtime=1``. Every
setting is the product's default except ports (metrics and label API on free ports) and the camera's frame
rate (10 fps): the default upload budgets (30 a minute, 600 an hour) set the load, the trainer's default
update/gate settings decide promotions, and the rollout service's default waves roll them out.

Measured:

* **RSS** (``VmRSS`` in ``/proc/PID/status``) of the trainer, the rollout service (``edgeloop deploy run``), the
  broker (the mosquitto process itself, not its Python launcher) and every camera, every ``--interval``
  seconds. Growth per process = (median RSS over the last minute - RSS at the start of the growth window) /
  RSS at the start of the window. The window is the last 20 minutes of a run of 25 minutes or more (the first
  minutes are warm-up: imports, the first export, the held-out cache filling); a shorter run uses its last
  ``minutes - 5`` minutes, but never less than half the run, and says so in the notes.
* **Samples lost**, by sample id. When the time is up the cameras get SIGTERM: each stops selecting and drains
  its outbox to the broker for up to 5 s (what is left stays on the camera's disk and is *not yet sent*, not
  lost); then the benchmark waits until the trainer has stored what the broker acknowledged. A sample is
  *committed* when the camera's outbox stored it (the outbox's ``put`` counter; with one boot and no refusal the
  committed ids are exactly ``cam.1.0`` .. ``cam.1.(put-1)``, since the sequence is given back on a failed
  write). *Lost* = committed, not stored by the trainer, not still in the outbox. Samples the outbox's bound
  dropped (``drop_oldest``) are committed and never stored: they count as lost, and are shown apart.
* **Store size**: rows and bytes (``samples/`` on disk) over time, and the trainer's retention limits when its
  configuration has them (``trainer run --print-config``); within retention = under each configured limit.

Goal: growth < 5 % for every process, 0 samples lost, store within its retention.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from bench.procs import Procs

ROOT = Path(__file__).resolve().parent.parent
NAME = "soak"
GROWTH_LIMIT = 0.05
GOAL = ("RSS growth < 5 % per process (trainer, rollout service, mosquitto, every camera) over the last 20 minutes "
        "of 30, 0 samples lost, trainer store within its retention")
DEFAULT = {"cameras": 20, "minutes": 30.0, "interval": 10.0}
QUICK = {"cameras": 4, "minutes": 3.0, "interval": 10.0}
FULL_WINDOW_MIN = 20.0
WARMUP_MIN = 5.0
LAST_S = 60.0
CAMERA_FPS = 10
BOOTSTRAP_FRAMES = {"full": 600, "quick": 300}
BOOTSTRAP_EPOCHS = {"full": 3, "quick": 2}
DRAIN_TIMEOUT_S = 180.0


# =========================================================================== pure parts (tested)
def growth_window_min(minutes: float) -> tuple[float, str | None]:
    """The growth window in minutes, and a note when it is not the standard last 20 minutes."""
    if minutes >= FULL_WINDOW_MIN + WARMUP_MIN:
        return FULL_WINDOW_MIN, None
    window = max(minutes - WARMUP_MIN, minutes / 2.0)
    return window, (f"a {minutes:g}-minute run: growth measured over its last {window:g} minutes "
                    f"(the standard is the last {FULL_WINDOW_MIN:g} of a run of at least "
                    f"{FULL_WINDOW_MIN + WARMUP_MIN:g})")


def rss_growth(series: Sequence[tuple[float, int]], end_s: float, window_s: float,
               last_s: float = LAST_S) -> dict[str, Any]:
    """Growth of one process's RSS: (median of the samples in the last ``last_s`` before ``end_s`` - the first
    sample at or after ``end_s - window_s``) / that first sample. ``series`` is (seconds, kB), in time order."""
    start = next(((t, kb) for t, kb in series if t >= end_s - window_s - 1e-9), None)
    tail = [kb for t, kb in series if end_s - last_s < t <= end_s + 1e-9]
    if start is None or not tail or start[1] <= 0:
        return {"start_kb": None, "end_kb": None, "growth": None, "samples": len(series)}
    end_kb = statistics.median(tail)
    return {"start_kb": start[1], "start_at_s": round(start[0], 1), "end_kb": end_kb,
            "growth": (end_kb - start[1]) / start[1], "peak_kb": max(kb for _, kb in series),
            "samples": len(series)}


@dataclass
class OutboxEnd:
    """One camera's outbox when it stopped: its persistent counters, the ids still in it, its boot count."""

    put: int
    rejected: int = 0
    dropped_oldest: int = 0
    dropped_lowest_priority: int = 0
    remaining: set[str] = field(default_factory=set)
    boot: int = 1


def committed_ids(device: str, ob: OutboxEnd) -> set[str] | None:
    """The ids the outbox committed, when they follow from its counters: one boot and nothing refused (then the
    sequence ran 0..put-1 with no number skipped); else None (count only)."""
    if ob.boot != 1 or ob.rejected or ob.dropped_lowest_priority:
        return None
    return {f"{device}.1.{seq}" for seq in range(ob.put)}


def account(outboxes: dict[str, OutboxEnd], stored: dict[str, set[str]]) -> dict[str, Any]:
    """Selected & committed samples vs what the trainer stored, per camera and in total.

    lost = committed - stored - still in the outbox (by id where :func:`committed_ids` knows them, else by count).
    ``unexpected`` = stored ids of a camera that its outbox never committed (0 unless the accounting is wrong).
    """
    per: dict[str, dict[str, Any]] = {}
    for dev, ob in sorted(outboxes.items()):
        got = stored.get(dev, set())
        ids = committed_ids(dev, ob)
        row: dict[str, Any] = {"committed": ob.put, "stored": len(got), "in_outbox": len(ob.remaining),
                               "dropped_by_outbox_bound": ob.dropped_oldest, "by_id": ids is not None}
        if ids is not None:
            missing = ids - got - ob.remaining
            row.update(lost=len(missing), lost_ids=sorted(missing, key=_seq)[:20],
                       unexpected=len(got - ids))
        else:
            row.update(lost=max(0, ob.put - len(got) - len(ob.remaining)), lost_ids=[], unexpected=None)
        per[dev] = row
    total = {k: sum(r[k] for r in per.values()) for k in ("committed", "stored", "in_outbox", "lost",
                                                          "dropped_by_outbox_bound")}
    total["unexpected"] = sum(r["unexpected"] or 0 for r in per.values())
    total["by_id"] = all(r["by_id"] for r in per.values())
    total["stored_from_unknown_devices"] = sum(len(v) for d, v in stored.items() if d not in outboxes)
    return {"total": total, "per_camera": per}


def _seq(sample_id: str) -> int:
    try:
        return int(sample_id.rsplit(".", 1)[1])
    except (IndexError, ValueError):
        return -1


def within_retention(retention: dict[str, Any] | None, rows: int, live_bytes: int,
                     oldest_unlabelled_age_s: float | None) -> bool | None:
    """Under every configured limit (None: the trainer has no retention settings to judge against)."""
    if not retention:
        return None
    checks = [("max_samples", rows), ("max_bytes", live_bytes)]
    ok = all(retention.get(k) is None or v <= retention[k] for k, v in checks)
    age = retention.get("max_age_days")
    if age is not None and oldest_unlabelled_age_s is not None:
        # retention runs every every_s: an unlabelled sample may outlive max_age by that much
        ok = ok and oldest_unlabelled_age_s <= age * 86400.0 + float(retention.get("every_s") or 0.0)
    return ok


def verdict(growth: dict[str, dict[str, Any]], lost: int, retention_ok: bool | None) -> bool | None:
    """met: every process grew < 5 %, nothing lost, and the store within retention where that can be judged."""
    values = [g["growth"] for g in growth.values()]
    if not values or any(v is None for v in values):
        return None
    return all(v < GROWTH_LIMIT for v in values) and lost == 0 and retention_ok is not False


# =========================================================================== reading the processes
def rss_kb(pid: int) -> int | None:
    """VmRSS of ``pid`` in kB, None once it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def mosquitto_pid(pki: Path, port: int) -> int | None:
    """The mosquitto process of the broker on ``port``: ``edgeloop broker`` registers it in ``PKI/brokers/``."""
    for rec in (pki / "brokers").glob("*.json"):
        try:
            data = json.loads(rec.read_text())
            pid = int(data["pid"])
            if int(data.get("port", -1)) == port and Path(f"/proc/{pid}/comm").read_text().strip() == "mosquitto":
                return pid
        except (OSError, ValueError, KeyError):
            continue
    return None


def _ro(db: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30.0)


def read_outbox(state: Path) -> OutboxEnd:
    """A stopped camera's outbox counters and remaining ids (read-only)."""
    con = _ro(state / "outbox.sqlite")
    try:
        meta = dict(con.execute("SELECT key, value FROM meta").fetchall())
        remaining = {r[0] for r in con.execute("SELECT sample_id FROM outbox")}
    finally:
        con.close()
    try:
        boot = int((state / "boot").read_text().strip())
    except (OSError, ValueError):
        boot = 1
    return OutboxEnd(put=int(meta.get("put", 0)), rejected=int(meta.get("rejected", 0)),
                     dropped_oldest=int(meta.get("dropped_oldest", 0)),
                     dropped_lowest_priority=int(meta.get("dropped_lowest_priority", 0)), remaining=remaining,
                     boot=boot)


def store_ids(samples_dir: Path) -> dict[str, set[str]]:
    """Every stored sample id per device, read-only from the trainer's SQLite index."""
    db = samples_dir / "samples.db"
    if not db.exists():
        return {}
    con = _ro(db)
    try:
        out: dict[str, set[str]] = {}
        for dev, sid in con.execute("SELECT device, sample_id FROM samples"):
            out.setdefault(dev, set()).add(sid)
        return out
    finally:
        con.close()


def store_size(samples_dir: Path) -> dict[str, Any]:
    """Rows, image bytes referenced, bytes on disk (index + pack files), oldest unlabelled sample's age."""
    disk = sum(p.stat().st_size for p in samples_dir.rglob("*") if p.is_file()) if samples_dir.exists() else 0
    db = samples_dir / "samples.db"
    if not db.exists():
        return {"rows": 0, "live_bytes": 0, "disk_bytes": disk, "oldest_unlabelled_age_s": None}
    con = _ro(db)
    try:
        rows, live = con.execute("SELECT COUNT(*), COALESCE(SUM(length), 0) FROM samples").fetchone()
        oldest = con.execute("SELECT MIN(received) FROM samples WHERE label IS NULL").fetchone()[0]
    finally:
        con.close()
    return {"rows": int(rows), "live_bytes": int(live), "disk_bytes": disk,
            "oldest_unlabelled_age_s": None if oldest is None else round(time.time() - float(oldest), 1)}


# =========================================================================== the processes
def cli(*args: str, env: dict[str, str] | None = None, timeout: float = 600.0) -> str:
    """Run one ``edgeloop`` command to completion; its stdout, or RuntimeError with its stderr."""
    out = subprocess.run([sys.executable, "-m", "deploy.cli", *args], cwd=ROOT, capture_output=True, text=True,
                         timeout=timeout, env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})})
    if out.returncode != 0:
        raise RuntimeError(f"edgeloop {' '.join(args[:3])} failed ({out.returncode}): {out.stderr[-2000:]}")
    return out.stdout


def _wait(cond: Any, timeout: float, what: str, procs: Procs) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        if procs.dead():
            name = procs.dead()[0]
            raise RuntimeError(f"{name} exited with {procs.procs[name].returncode} while waiting for {what}:\n"
                               f"{procs.tail(name)}")
        got = cond()
        if got:
            return got
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.5)


def _log(msg: str) -> None:
    print(f"[soak] {msg}", file=sys.stderr, flush=True)


@dataclass
class Line:
    """The running line: its directory, processes, the broker URL and what to sample."""

    d: Path
    procs: Procs
    broker: str
    pids: dict[str, int]
    cameras: list[str]
    trainer_config: dict[str, Any]


def _bootstrap(d: Path, quick: bool) -> Path:
    """v0001 from rendered sim:digits label cards (seeds no camera uses), as an operator's labelled set would be."""
    from deploy.demo.bootstrap import render_bootstrap_set
    from deploy.demo.plan import DemoOptions

    mode = "quick" if quick else "full"
    _, roi = render_bootstrap_set(DemoOptions(scenario="digits", bootstrap_frames=BOOTSTRAP_FRAMES[mode]),
                                  d / "labelled")
    cli("trainer", "bootstrap", str(d / "labelled"), "--arch", "convnet", "--roi", ",".join(map(str, roi)),
        "--epochs", str(BOOTSTRAP_EPOCHS[mode]), "--exporter", "torchscript", "--state-dir", str(d / "trainer"),
        "--no-progress", "--threads", "2")
    model = d / "model0.onnx"
    shutil.copyfile(d / "trainer" / "models" / "v0001.onnx", model)
    return model


def _trainer_config(args: list[str]) -> tuple[dict[str, Any], dict[str, str]]:
    """The trainer's effective configuration, and the environment that moves its /metrics to a free port when
    this trainer has one (keys it does not know are refused, so ask it first)."""
    import yaml

    cfg = yaml.safe_load(cli(*args, "--print-config")) or {}
    env = {"EDGELOOP_TRAINER__METRICS__PORT": "0"} if isinstance(cfg.get("metrics"), dict) else {}
    return cfg, env


def start_line(d: Path, cameras: int, quick: bool) -> Line:
    """Provision, bootstrap and start broker, trainer, rollout service and cameras (see the module doc)."""
    from deploy.broker import free_port
    from deploy.demo.plan import DemoOptions, camera_seed, sim_url

    _log("bootstrapping v0001 (rendering the labelled set, training) ...")
    model = _bootstrap(d, quick)
    pki, keys = d / "pki", d / "keys"
    cli("keys", "generate", "--out", str(keys))
    cli("pki", "init", "--dir", str(pki))
    names = [f"cam-{k:02d}" for k in range(1, cameras + 1)]
    _log(f"provisioning {cameras} camera identities ...")
    for name in names:
        cli("pki", "device", name, "--dir", str(pki), "--fleet", "default", "--signing-key",
            str(keys / "signing.pub"), "--deploy-state", str(d / "deploy"))
    (d / "logs").mkdir(exist_ok=True)
    procs = Procs(d / "logs")
    port = free_port()
    broker = f"mqtts://127.0.0.1:{port}"
    line = Line(d, procs, broker, {}, names, {})
    try:
        procs.start("broker", "broker", "--pki", str(pki), "--port", str(port), "--state-dir", str(d / "broker"))
        line.pids["broker"] = _wait(lambda: mosquitto_pid(pki, port), 60, "mosquitto", procs)
        trainer = ["trainer", "run", "--state-dir", str(d / "trainer"), "--broker", broker, "--identity",
                   str(pki / "services" / "trainer"), "--labeller", "oracle", "--api-port", "0"]
        line.trainer_config, env = _trainer_config(trainer)
        line.pids["trainer"] = procs.start("trainer", *trainer, env=env).pid
        # Cameras start once the trainer's session exists, as on a running line (a camera started earlier would
        # hold its samples until the trainer's retained state is on the broker: edge/link.py).
        _wait(lambda: "subscribed to" in (d / "logs" / "trainer.log").read_text(errors="replace"), 300,
              "the trainer's first subscription", procs)
        deploy = ["deploy", "run", "--state-dir", str(d / "deploy"), "--key", str(keys / "signing.key"),
                  "--broker", broker, "--mode", "auto", "--metrics-port", "0"]
        if "--pki" in cli("deploy", "run", "--help"):  # newer rollout services: the gate counts the PKI's devices
            deploy += ["--pki", str(pki)]
        line.pids["deploy"] = procs.start(
            "deploy", *deploy, env={"EDGELOOP_MQTT_IDENTITY": str(pki / "services" / "deploy")}).pid
        opts = DemoOptions(scenario="digits", fps=CAMERA_FPS)
        for k, name in enumerate(names, 1):
            line.pids[name] = procs.start(
                name, "edge", "--identity", str(pki / "devices" / name), "--broker", broker,
                "--source", sim_url(opts, camera_seed(0, k), None, realtime=True), "--model", str(model),
                "--state-dir", str(d / "cameras" / name), "--trusted-key", str(keys / "signing.pub"),
                "--metrics-port", "0", "--seed", str(k)).pid
        _wait(lambda: all((d / "cameras" / n / "outbox.sqlite").exists() for n in names), 120, "the cameras",
              procs)
    except BaseException:
        procs.stop_all()
        raise
    return line


def sample(line: Line, minutes: float, interval: float, csv_path: Path) -> tuple[
        dict[str, list[tuple[float, int]]], list[dict[str, Any]]]:
    """RSS of every process and the store's size every ``interval`` s for ``minutes``; rows also go to the CSV
    as they come (an interrupted run keeps what it saw). Raises when a process exits."""
    series: dict[str, list[tuple[float, int]]] = {n: [] for n in line.pids}
    store: list[dict[str, Any]] = []
    n = int(round(minutes * 60.0 / interval))
    t0 = time.monotonic()
    with open(csv_path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["t_s", "process", "pid", "rss_kb"])
        for k in range(n + 1):
            time.sleep(max(0.0, t0 + k * interval - time.monotonic()))
            t = time.monotonic() - t0
            dead = line.procs.dead()
            if dead:
                raise RuntimeError(f"{dead[0]} exited with {line.procs.procs[dead[0]].returncode} after {t:.0f} s "
                                   f"of the soak:\n{line.procs.tail(dead[0])}")
            for name, pid in line.pids.items():
                kb = rss_kb(pid)
                if kb is None:
                    raise RuntimeError(f"{name} (pid {pid}) is gone after {t:.0f} s of the soak")
                series[name].append((t, kb))
                w.writerow([f"{t:.1f}", name, pid, kb])
            size = store_size(line.d / "trainer" / "samples")
            store.append({"t_s": round(t, 1), **size})
            w.writerow([f"{t:.1f}", "store_rows", "", size["rows"]])
            w.writerow([f"{t:.1f}", "store_disk_kb", "", size["disk_bytes"] // 1024])
            f.flush()
            if k % max(1, int(60 / interval)) == 0:
                _log(f"{t / 60:5.1f} min: trainer {series['trainer'][-1][1] / 1024:.0f} MB, rollout service "
                     f"{series['deploy'][-1][1] / 1024:.0f} MB, mosquitto {series['broker'][-1][1] / 1024:.0f} MB, "
                     f"store {size['rows']} samples")
    return series, store


def finish(line: Line) -> dict[str, Any]:
    """Stop the cameras (each drains its outbox), wait for the trainer to store what the broker took, stop the
    services, and account every committed sample."""
    codes = line.procs.stop_many(line.cameras, timeout=60)
    outboxes = {n: read_outbox(line.d / "cameras" / n) for n in line.cameras}
    samples_dir = line.d / "trainer" / "samples"
    deadline, last, stable_since = time.monotonic() + DRAIN_TIMEOUT_S, -1, time.monotonic()
    while time.monotonic() < deadline:
        acc = account(outboxes, store_ids(samples_dir))
        if acc["total"]["lost"] == 0:
            break
        if acc["total"]["stored"] != last:
            last, stable_since = acc["total"]["stored"], time.monotonic()
        elif time.monotonic() - stable_since > 30:
            break  # nothing arrived for 30 s: what is missing now is not on its way
        time.sleep(1.0)
    status = json.loads(cli("trainer", "status", "--state-dir", str(line.d / "trainer"), "--json") or "{}")
    services = line.procs.stop_many(["deploy", "trainer"], timeout=120)  # before the broker: a clean disconnect
    services.update(line.procs.stop_many(["broker"], timeout=60))
    acc = account(outboxes, store_ids(samples_dir))
    return {"accounting": acc, "trainer_status": status, "exit_codes": {**codes, **services}}


def plot(series: dict[str, list[tuple[float, int]]], store: list[dict[str, Any]], window_min: float,
         minutes: float, path: Path) -> None:
    """RSS per process vs time (services; cameras thin with their median bold) and the store's size."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2, ax3) = plt.subplots(3, 1, figsize=(10, 10), sharex=True)
    labels = {"trainer": "trainer", "deploy": "rollout service", "broker": "mosquitto"}
    for name, label in labels.items():
        ax1.plot([t / 60 for t, _ in series[name]], [kb / 1024 for _, kb in series[name]], label=label, lw=1.6)
    cams = [n for n in series if n not in labels]
    for n in cams:
        ax2.plot([t / 60 for t, _ in series[n]], [kb / 1024 for _, kb in series[n]], color="0.7", lw=0.7)
    if cams:
        steps = min(len(series[n]) for n in cams)
        ax2.plot([series[cams[0]][i][0] / 60 for i in range(steps)],
                 [statistics.median(series[n][i][1] for n in cams) / 1024 for i in range(steps)],
                 color="C3", lw=2, label=f"median of {len(cams)} cameras")
    ax3.plot([s["t_s"] / 60 for s in store], [s["disk_bytes"] / 1e6 for s in store], color="C2",
             label="store on disk (MB)")
    ax3b = ax3.twinx()
    ax3b.plot([s["t_s"] / 60 for s in store], [s["rows"] for s in store], color="C4", ls="--",
              label="samples stored")
    for ax in (ax1, ax2, ax3):
        ax.axvspan(minutes - window_min, minutes, color="C0", alpha=0.07)
        ax.grid(alpha=0.3)
    ax1.set_ylabel("RSS (MB)")
    ax2.set_ylabel("camera RSS (MB)")
    ax3.set_ylabel("MB on disk")
    ax3b.set_ylabel("samples")
    ax3.set_xlabel("minutes (shaded: the growth window)")
    ax1.legend(loc="upper left")
    ax2.legend(loc="upper left")
    ax3.legend(loc="upper left")
    ax3b.legend(loc="lower right")
    ax1.set_title("edgeloop soak: resident memory per process and the trainer's store")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _retention(cfg: dict[str, Any]) -> dict[str, Any] | None:
    r = cfg.get("retention")
    return r if isinstance(r, dict) else None


def result(series: dict[str, list[tuple[float, int]]], store: list[dict[str, Any]], end: dict[str, Any],
           cfg: dict[str, Any], cameras: int, minutes: float, interval: float) -> dict[str, Any]:
    """The benchmark's entry for results.json (figures, goal, met, notes)."""
    window, note = growth_window_min(minutes)
    end_s = max(t for s in series.values() for t, _ in s) if series else 0.0
    per = {n: rss_growth(s, end_s, window * 60.0) for n, s in series.items()}
    cams = [per[n] for n in per if n.startswith("cam-")]
    cam_growth = [g["growth"] for g in cams if g["growth"] is not None]

    def pct(g: float | None) -> float | None:
        return None if g is None else round(100.0 * g, 2)

    def proc(g: dict[str, Any]) -> dict[str, Any]:
        mb = {k: (None if g.get(k) is None else round(g[k] / 1024, 1)) for k in ("start_kb", "end_kb", "peak_kb")}
        return {"rss_start_mb": mb["start_kb"], "rss_end_mb": mb["end_kb"], "rss_peak_mb": mb["peak_kb"],
                "growth_pct": pct(g["growth"])}

    acc, status = end["accounting"], end.get("trainer_status") or {}
    final = store_size_final(store, end)
    retention = _retention(cfg)
    ok_ret = within_retention(retention, final["rows"], final["live_bytes"], final["oldest_unlabelled_age_s"])
    worst = max(per, key=lambda n: -1e9 if per[n]["growth"] is None else per[n]["growth"]) if per else None
    figures = {
        "max_growth_pct": pct(per[worst]["growth"]) if worst else None, "max_growth_process": worst,
        "trainer": proc(per["trainer"]), "rollout_service": proc(per["deploy"]), "mosquitto": proc(per["broker"]),
        "cameras_growth_pct": {"median": pct(statistics.median(cam_growth)) if cam_growth else None,
                               "max": pct(max(cam_growth)) if cam_growth else None,
                               "rss_end_mb_median": round(statistics.median(g["end_kb"] for g in cams) / 1024, 1)
                               if cams and all(g["end_kb"] for g in cams) else None},
        "samples_lost": acc["total"]["lost"],
        "samples": {k: acc["total"][k] for k in ("committed", "stored", "in_outbox", "dropped_by_outbox_bound",
                                                  "unexpected", "by_id")},
        "store": {"rows": final["rows"], "disk_mb": round(final["disk_bytes"] / 1e6, 2),
                  "image_mb": round(final["live_bytes"] / 1e6, 2), "within_retention": ok_ret,
                  "retention": retention},
        "trainer_counters": status.get("counters"), "trainer_rejected": (status.get("store") or {}).get("rejected"),
        "trainer_versions": status.get("versions"), "trainer_promoted": status.get("promoted"),
        "cameras": cameras, "minutes": minutes, "interval_s": interval, "growth_window_min": window,
        "exit_codes": end.get("exit_codes"),
    }
    notes = [n for n in (note,) if n]
    if retention is None:
        notes.append("this trainer has no retention settings (retention.* not in its config): store size reported, "
                     "within_retention not judged")
    if not acc["total"]["by_id"]:
        notes.append("some cameras restarted or refused samples: those were accounted by count, not by id")
    lost = [f"{d}: {r['lost']} ({', '.join(r['lost_ids'][:5])})" for d, r in acc["per_camera"].items() if r["lost"]]
    if lost:
        notes.append("lost: " + "; ".join(lost))
    return {"name": NAME, "figures": figures, "goal": GOAL, "met": verdict(per, acc["total"]["lost"], ok_ret),
            "headline": "max_growth_pct", "notes": "; ".join(notes),
            "per_process": {n: proc(g) for n, g in per.items()}, "per_camera_samples": acc["per_camera"]}


def store_size_final(store: list[dict[str, Any]], end: dict[str, Any]) -> dict[str, Any]:
    return end.get("store") or (store[-1] if store else {"rows": 0, "live_bytes": 0, "disk_bytes": 0,
                                                          "oldest_unlabelled_age_s": None})


def bench(cameras: int, minutes: float, interval: float, quick: bool, out: Path | None = None) -> dict[str, Any]:
    """One soak run; with ``out`` its logs, state, ``rss.csv``, ``rss.png`` and ``result.json`` stay there."""
    d = Path(out) if out else Path(tempfile.mkdtemp(prefix="edgeloop-soak-"))
    d.mkdir(parents=True, exist_ok=True)
    try:
        line = start_line(d, cameras, quick)
        try:
            _log(f"running {cameras} cameras for {minutes:g} min, sampling every {interval:g} s ...")
            series, store = sample(line, minutes, interval, d / "rss.csv")
            _log("stopping the cameras (each drains its outbox), waiting for the trainer to store the rest ...")
            end = finish(line)
            end["store"] = store_size(d / "trainer" / "samples")
        finally:
            line.procs.stop_all()
        res = result(series, store, end, line.trainer_config, cameras, minutes, interval)
        plot(series, store, res["figures"]["growth_window_min"], minutes, d / "rss.png")
        (d / "result.json").write_text(json.dumps(res, indent=2, default=str) + "\n")
        if out:
            res["figures"]["out_dir"] = str(d)
        return res
    finally:
        if not out:
            shutil.rmtree(d, ignore_errors=True)


def run(quick: bool = False) -> dict[str, Any]:
    """The harness entry (``edgeloop bench soak``): the full 30-minute run, or the quick smoke run."""
    p = QUICK if quick else DEFAULT
    return bench(int(p["cameras"]), p["minutes"], p["interval"], quick)


def main(argv: list[str] | None = None) -> int:
    """``edgeloop bench soak [options]``: run, print the summary, merge the result into bench/results.json."""
    ap = argparse.ArgumentParser(prog="edgeloop bench soak", description=__doc__.split("\n\n")[0],
                                 epilog="Outside CI and `edgeloop bench all`; the full run takes ~35 minutes.")
    ap.add_argument("--cameras", type=int, help=f"sim cameras (default {DEFAULT['cameras']}, quick {QUICK['cameras']})")
    ap.add_argument("--minutes", type=float, help=f"soak length (default {DEFAULT['minutes']:g}, quick "
                                                  f"{QUICK['minutes']:g})")
    ap.add_argument("--interval", type=float, help=f"seconds between RSS samples (default {DEFAULT['interval']:g})")
    ap.add_argument("--quick", action="store_true", help="4 cameras for 3 minutes: a smoke run")
    ap.add_argument("--out", type=Path, help="keep everything here: logs/, state, rss.csv, rss.png, result.json "
                                             "(default: a temporary directory, removed)")
    ap.add_argument("--results", type=Path, default=ROOT / "bench" / "results.json",
                    help="results JSON to merge into (default bench/results.json; BENCHMARKS.md beside it is "
                         "rewritten as `edgeloop bench` does)")
    ap.add_argument("--no-write", action="store_true", help="do not touch the results JSON")
    args = ap.parse_args(argv)
    p = QUICK if args.quick else DEFAULT
    cameras, minutes = args.cameras or int(p["cameras"]), args.minutes or p["minutes"]
    interval = args.interval or p["interval"]
    if cameras < 1 or minutes <= 0 or interval <= 0 or interval * 6 > minutes * 60:
        ap.error("need --cameras >= 1, --minutes > 0 and at least 6 samples (--interval <= minutes * 10)")
    from bench import run_all

    t0, started = time.perf_counter(), run_all._now()
    try:
        res = bench(cameras, minutes, interval, args.quick, args.out)
        res["status"] = "ok"
    except KeyboardInterrupt:
        print("edgeloop bench soak: interrupted; everything started was stopped", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - recorded like the harness records a crash
        res = {"name": NAME, "status": "error", "error": str(exc)[-3000:], "figures": {}, "goal": GOAL, "met": None}
    res.update(seconds=round(time.perf_counter() - t0, 2), quick=args.quick, ran_at=started)
    res = run_all.jsonable(res)
    if not args.no_write:
        default = args.results.resolve() == (ROOT / "bench" / "results.json").resolve()
        md = ROOT / "BENCHMARKS.md" if default else args.results.parent / "BENCHMARKS.md"
        run_all.write_results([res], args.results, md, args.quick, run_all.REGISTRY, merge=True)
    _summary(res)
    return 1 if res["status"] == "error" else 0


def _summary(res: dict[str, Any]) -> None:
    if res["status"] == "error":
        print(f"soak: error: {res['error']}")
        return
    f = res["figures"]
    print(f"soak: met={res['met']}  {f['cameras']} cameras, {f['minutes']:g} min; growth over the last "
          f"{f['growth_window_min']:g} min: max {f['max_growth_pct']} % ({f['max_growth_process']})")
    for name, g in res["per_process"].items():
        print(f"  {name:<10} RSS {g['rss_start_mb']} -> {g['rss_end_mb']} MB (peak {g['rss_peak_mb']})  "
              f"growth {g['growth_pct']} %")
    s = f["samples"]
    print(f"  samples: {s['committed']} committed, {s['stored']} stored, {s['in_outbox']} still in outboxes, "
          f"{f['samples_lost']} lost ({s['dropped_by_outbox_bound']} dropped by outbox bounds); by id: {s['by_id']}")
    st = f["store"]
    print(f"  store: {st['rows']} samples, {st['disk_mb']} MB on disk; within retention: {st['within_retention']}")
    if res.get("notes"):
        print(f"  notes: {res['notes']}")
    if f.get("out_dir"):
        print(f"  kept in {f['out_dir']} (rss.csv, rss.png, logs/)")


if __name__ == "__main__":
    sys.exit(main())
