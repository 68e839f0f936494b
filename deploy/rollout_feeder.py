"""Promoted versions -> rollouts, by policy: ``auto`` (one at a time, the newest next) or ``approve``.

Why one at a time: the trainer may promote a version every few seconds, while a canary rollout (waves,
soaks, downloads) takes tens of seconds. Starting a rollout per promotion would supersede each one in its
canary wave, and the fleet's tail would never get anything. In ``auto`` the feeder keeps at most one rollout
in progress; when it ends, it starts the newest version promoted meanwhile. Versions in between are
``skipped`` on purpose: the learner is cumulative, so the newest version contains what they learned.
One exception: a rollout that took the policy's ``weights_only_waves`` (a version that only changed weights,
deploy/model_graph.py) may be superseded by the newest promotion once every device of its last wave runs it --
nobody is left behind, and only its soak is cut short. Rollback targets stay the versions whose rollouts
completed.
In ``approve`` each newest promoted version is recorded as a rollout that *awaits approval* (nothing is
published); ``edgeloop rollout approve vNNNN`` or the console releases it, ``reject`` refuses it, and a newer
promotion supersedes a version still waiting.

The rollback target of each rollout is the last version that reached the whole fleet
(:meth:`RolloutStore.fleet_baseline`: the newest completed rollout's version, at first the provisioned
baseline) - not the controller's default, the fleet manifest's last target, which may be a version that
never got past its canary. The provisioned baseline is the ``baseline`` given here, or the trainer's
bootstrap version (a notice without a parent: what cameras are provisioned with).

Where promotions come from: :class:`deploy.promotions.PromotionIntake` (the trainer's notices and bytes over
MQTT: the service, ``edgeloop deploy run``, and the demo), or :meth:`on_promoted` (an in-process hook taking
an ONNX path or bytes, for embedders and tests). Everything is kept in the rollout store (``promotions``), so
a restarted service continues exactly where it stopped, and a version promoted while it was down shows up.

How it is driven::

    feeder = RolloutFeeder(controller, policy=Policy(...), mode="auto", intake=PromotionIntake(ctl, dir).attach())
    while running:
        feeder.poll()        # one thread: intake, decisions, events
    feeder.close()           # report the last events; no rollout is started after this

What happens is reported through ``notify(kind, text, wall, **data)`` (the demo's event log; default: the
log): ``promoted``, ``rollout``, ``awaiting``, ``approved``, ``rejected``, ``wave``, ``completed``,
``rollback``, ``failed``.
"""
from __future__ import annotations

import json
import logging
import os
import re
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Literal

from deploy.controller import TERMINAL, Controller, Policy
from deploy.rollout_store import Event, PromotionRecord

if TYPE_CHECKING:
    from deploy.promotions import PromotionIntake

__all__ = ["RolloutFeeder", "Notify", "MODES"]

log = logging.getLogger("edgeloop.rollout_feeder")

#: ``notify(kind, text, wall=None, **data)``: one readable event; ``wall`` is the time it happened, ``data``
#: carries e.g. ``version``.
Notify = Callable[..., None]
Mode = Literal["auto", "approve"]
MODES = ("auto", "approve")

_VERSION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
EVENT_LIMIT = 500        # events read per rollout and poll (a rollout has a handful: started, waves, outcome)
ENDED_GRACE_S = 2.0      # keep reading a finished rollout's events this long (its last event follows its state)
TIDY_EVERY_S = 60.0      # how often model files nothing needs any more are deleted
_OPEN = ("announced", "ready")


def _log_notify(kind: str, text: str, wall: float | None = None, **data: Any) -> None:
    log.info("%s: %s", kind, text)


class RolloutFeeder:
    """Hands promoted versions to a :class:`deploy.controller.Controller` according to ``mode``.

    ``baseline`` = (version, model path) of what the fleet runs before the first rollout, or only its version
    (its bytes then come with the trainer's notice of it); default: the trainer's bootstrap version.
    ``history`` bounds the rollouts :meth:`records` returns.
    """

    def __init__(self, controller: Controller, baseline: tuple[str, str | os.PathLike[str]] | str | None = None,
                 policy: Policy | None = None, *, fleet: str | None = None, model_id: str | None = None,
                 notify: Notify | None = None, model_dir: str | os.PathLike[str] | None = None,
                 history: int = 10_000, mode: Mode = "auto", intake: "PromotionIntake | None" = None) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
        self.ctl = controller
        self.store = controller.store
        self.policy = policy or Policy()
        self.mode: Mode = mode
        self.fleet = fleet or controller.default_fleet
        self.model_id = model_id
        self.notify = notify or _log_notify
        self.model_dir = Path(model_dir) if model_dir is not None else None
        self.history = history
        self.intake = intake
        if intake is not None:
            intake.on_new = self._announced
        self.rejected = 0                        # promotions that could not be rolled out (bad input, bad file)
        self.baseline_version = baseline if isinstance(baseline, str) else baseline[0] if baseline else None
        self._watch: dict[str, tuple[str, float | None]] = {}           # rid -> (version, first seen ended)
        self._seen: dict[str, float] = {}                                # rid -> ts of the last event reported
        self._closed = False
        self._tidied = time.monotonic()
        self._lock = threading.Lock()
        if isinstance(baseline, tuple):
            art = controller.register_model(baseline[1], model_id, baseline[0])
            self.model_id = self.model_id or art.model_id
            if self.store.fleet_baseline(self.fleet) is None:
                self.store.set_baseline(self.fleet, baseline[0])
        for r in self.store.get_waiting(self.fleet) + self.store.get_active(self.fleet):
            self._watch[r.id] = (r.version, None)  # a restarted service keeps reporting what it started

    # -- input: in-process (any thread) ----------------------------------------------------------------------
    def on_promoted(self, version: str, model: str | os.PathLike[str] | bytes, metrics: dict[str, Any]) -> None:
        """Record a promoted version; the next :meth:`poll` acts on it unless a newer one arrives first.

        ``model`` is an ONNX path or its bytes (kept as ``model_dir/{version}.onnx``). Raises ValueError for a
        version that is not a plain name or bytes without a ``model_dir``.
        """
        path = self._model_file(version, model)
        model_id = self.model_id or self._model_id_of(path)
        with self._lock:
            seq = max((p.seq for p in self.store.promotions(limit=1)), default=0) + 1
            notice = json.dumps({"version": version, "metrics": _scalar(metrics), "time": time.time(),
                                 "path": str(path)})
            sha, size = _digest(path)
            if self.store.record_promotion(model_id, version, seq, self.store.fleet_baseline(self.fleet) or "?",
                                           sha, size, time.time(), notice):
                self.store.set_promotion(model_id, version, "ready", path=str(path))
        rec = self.store.promotion(model_id, version)
        if rec is not None:
            self._announced(rec)

    def _model_id_of(self, path: Path) -> str:
        from deploy.publisher import read_artifact

        try:
            return read_artifact(path).model_id
        except Exception:  # not a model: recorded anyway, and refused clearly when its rollout would start
            return "unknown"

    def _model_file(self, version: str, model: str | os.PathLike[str] | bytes) -> Path:
        if not isinstance(version, str) or not _VERSION.match(version):
            self.rejected += 1
            raise ValueError(f"promoted version {version!r} is not a plain name (letters, digits, . _ -)")
        if not isinstance(model, (bytes, bytearray)):
            return Path(model).resolve()
        if self.model_dir is None:
            self.rejected += 1
            raise ValueError(f"model bytes for {version} but the feeder has no model_dir to keep them in")
        self.model_dir.mkdir(parents=True, exist_ok=True)
        path = self.model_dir / f"{version}.onnx"
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_bytes(bytes(model))
        os.replace(tmp, path)  # a reader never sees half a model
        return path.resolve()

    def _announced(self, rec: PromotionRecord) -> None:
        if rec.parent is None:
            return  # the trainer's bootstrap version: the fleet's baseline (reported as such), not a promotion
        m = _notice(rec).get("metrics") or {}
        acc = m.get("accuracy")
        text = (f"{rec.version} (held-out accuracy {acc:.3f} on {m.get('n', '?')})"
                if isinstance(acc, (int, float)) else rec.version)
        self.notify("promoted", text, rec.announced or rec.received, version=rec.version)

    # -- driving (one thread) -------------------------------------------------------------------------------
    def poll(self) -> None:
        """Take in notices, fetch what is wanted, start (or put up for approval) the newest promoted version
        when the policy allows, and report the controller's new events."""
        if self.intake is not None:
            self.intake.poll()
        self._decide()
        self._report_events()
        if time.monotonic() - self._tidied > TIDY_EVERY_S:
            self._tidied = time.monotonic()
            self.tidy()

    def close(self) -> None:
        """Report what is left to report; from now on promotions are recorded but never rolled out."""
        with self._lock:
            self._closed = True
        self._report_events()

    def _decide(self) -> None:
        recs = self.store.promotions(limit=200)
        open_ = [r for r in recs if r.status in _OPEN]
        if not open_:
            return
        baseline = self.store.fleet_baseline(self.fleet)
        handled = max((r.seq for r in recs if r.status in ("started", "baseline")), default=0)
        newest = max((r for r in open_ if not self._baseline_candidate(r, baseline)), key=lambda r: r.seq,
                     default=None)
        for r in sorted(open_, key=lambda r: r.seq):
            if self._baseline_candidate(r, baseline):
                self._adopt_baseline(r)
            elif r is not newest or r.seq <= handled:
                why = f"{newest.version} is newer" if newest is not None and r is not newest else "older than " \
                      "what the fleet already got"
                self.store.set_promotion(r.model_id, r.version, "skipped", detail=why)
            elif r.status == "announced":
                if self.intake is not None:
                    self.intake.want(r)
            elif not self._closed and not self._waiting_for_baseline(open_, baseline):
                if self.mode == "approve" or self._free():
                    self._start(r, baseline)

    def _free(self) -> bool:
        """No rollout in progress, or only one that took the weights-only waves and has reached every device of its
        last wave: the newest version may take over from it (its soak is what it gives up; it stays out of the
        rollback targets, which are the versions whose rollouts completed)."""
        active = self.store.get_active(self.fleet)
        return all(self.ctl.weights_only(r.id) and self.ctl.delivered(r.id) for r in active)

    def _baseline_candidate(self, r: PromotionRecord, baseline: str | None) -> bool:
        if baseline is not None:
            return r.version == baseline
        return r.parent is None or r.version == self.baseline_version

    def _waiting_for_baseline(self, open_: list[PromotionRecord], baseline: str | None) -> bool:
        """The bootstrap version's bytes are on their way: start nothing until the rollback target is here."""
        return baseline is None and any(self._baseline_candidate(r, None) and r.status == "announced" for r in open_)

    def _adopt_baseline(self, r: PromotionRecord) -> None:
        if r.status == "announced":
            if self.intake is not None:
                self.intake.want(r)
            return
        self.store.set_promotion(r.model_id, r.version, "baseline", detail="what the fleet runs: the rollback target")
        if self.store.fleet_baseline(self.fleet) is None:
            self.store.set_baseline(self.fleet, r.version)
        self.notify("rollout", f"{r.version} is the fleet's baseline (rollback target); not rolled out", r.updated,
                    version=r.version)

    def _start(self, r: PromotionRecord, baseline: str | None) -> None:
        wait = self.mode == "approve"
        try:
            rid = self.ctl.start_rollout(r.version, r.path, self.policy, fleet=self.fleet,
                                         model_id=None if r.model_id == "unknown" else r.model_id,
                                         previous=baseline, await_approval=wait)
        except Exception as exc:  # a bad model file must not stop later versions from shipping
            self.rejected += 1
            log.exception("rollout of %s not started", r.version)
            self.store.set_promotion(r.model_id, r.version, "failed", detail=f"{type(exc).__name__}: {exc}")
            self.notify("failed", f"{r.version}: rollout not started: {type(exc).__name__}: {exc}", version=r.version)
            return
        self.store.set_promotion(r.model_id, r.version, "started", rollout_id=rid)
        self._watch[rid] = (r.version, None)

    def _report_events(self) -> None:
        """Turn the controller's new events of the watched rollouts into notifications, oldest first."""
        now = time.time()
        rows: list[tuple[Event, str]] = []
        for rid, (version, ended) in list(self._watch.items()):
            r = self.store.rollout(rid)
            for e in self.store.events(rid, EVENT_LIMIT):
                if e.ts > self._seen.get(rid, 0.0):
                    rows.append((e, version))
                    self._seen[rid] = e.ts
            if r is None or r.state in TERMINAL:
                if ended is None:
                    self._watch[rid] = (version, now)
                elif now - ended > ENDED_GRACE_S:
                    del self._watch[rid]
                    self._seen.pop(rid, None)
        for e, version in sorted(rows, key=lambda row: row[0].ts):
            self._notify_event(e.kind, e.detail or "", e.ts, version)

    def _notify_event(self, kind: str, detail: str, ts: float, version: str) -> None:
        if kind == "started":
            prev = detail.rsplit("prev=", 1)[-1] if "prev=" in detail else "?"
            self.notify("rollout", f"{version} rollout started (rollback target {prev})", ts, version=version)
        elif kind == "awaiting_approval":
            self.notify("awaiting", f"{version} awaits approval (edgeloop rollout approve {version})", ts,
                        version=version)
        elif kind in ("approved", "rejected"):
            self.notify(kind, f"{version} {kind} {detail}".rstrip(), ts, version=version)
        elif kind == "wave":
            self.notify("wave", f"{version} {detail.split(' below=')[0]}", ts, version=version)
        elif kind == "wave_skipped":
            self.notify("wave", f"{version} {detail}", ts, version=version)
        elif kind == "completed":
            self.notify("completed", f"{version} on the whole fleet ({detail})", ts, version=version)
        elif kind in ("breach", "rollback", "rolled_back", "halted"):
            self.notify("rollback", f"{version} {kind}: {detail}", ts, version=version)
        elif kind == "superseded":
            self.notify("rollout", f"{version} superseded by {detail}", ts, version=version)

    def tidy(self) -> int:
        """Delete model files (in the intake's model dir) of versions nothing needs any more: skipped, failed,
        or rolled out and neither a fleet target, the baseline, nor in a rollout still going. Returns how many."""
        if self.intake is None:
            return 0
        root = self.intake.model_dir.resolve()
        targets = {(t.model_id, t.version) for t in self.store.targets()}
        live = {(r.model_id, r.version) for r in self.store.get_active() + self.store.get_waiting()}
        live |= {(r.model_id, r.prev_version) for r in self.store.get_active()}
        baseline = self.store.fleet_baseline(self.fleet)
        removed = 0
        for p in self.store.promotions(limit=1000):
            if not p.path or (p.model_id, p.version) in targets | live or p.version == baseline:
                continue
            done = p.status in ("skipped", "failed") or (p.status == "started" and p.rollout_id is not None and (
                (r := self.store.rollout(p.rollout_id)) is None or r.state in TERMINAL))
            path = Path(p.path)
            if done and path.is_file() and root in path.resolve().parents:
                path.unlink()
                removed += 1
        return removed

    # -- reading --------------------------------------------------------------------------------------------
    @property
    def promotions(self) -> list[dict[str, Any]]:
        """Every promotion received, oldest first: version, wall (promotion time), path, accuracy, status."""
        out = []
        for p in self.store.promotions(limit=self.history):
            m = _notice(p).get("metrics") or {}
            out.append({"version": p.version, "wall": p.announced or p.received, "path": p.path,
                        "accuracy": m.get("accuracy"), "macro_f1": m.get("macro_f1"), "n": m.get("n"),
                        "status": p.status})
        return out

    @property
    def pending(self) -> tuple[str, Path] | None:
        """The newest promoted version not handled yet (and its file, once here)."""
        open_ = [p for p in self.store.promotions(limit=200) if p.status in _OPEN]
        if not open_:
            return None
        p = max(open_, key=lambda p: p.seq)
        return p.version, Path(p.path) if p.path else Path()

    def describe(self) -> str:
        """One line for a status display: the rollout in progress and its devices, what waits, or what comes next."""
        active = self.store.get_active(self.fleet)
        if active:
            st = self.ctl.status(active[-1].id)
            devs = ", ".join(f"{k} {v}" for k, v in sorted(st.get("devices", {}).items()))
            return f"{st.get('version')} wave {st.get('wave')} ({st.get('wave_fraction', 0):.0%}) {st.get('state')}; {devs}"
        waiting = self.store.get_waiting(self.fleet)
        base = f"idle; fleet baseline {self.store.fleet_baseline(self.fleet)}"
        if waiting:
            return base + f"; {waiting[-1].version} awaits approval"
        nxt = self.pending
        return base + (f", next {nxt[0]}" if nxt else "")

    def records(self) -> list[dict[str, Any]]:
        """One row per rollout started here, oldest first: version, rollback target, waves, outcome, timing."""
        out = []
        for p in self.store.promotions("started", limit=self.history):
            r = self.store.rollout(p.rollout_id) if p.rollout_id else None
            if r is None:
                continue
            waves = sum(1 for e in self.store.events(r.id, EVENT_LIMIT) if e.kind == "wave")
            done = r.finished
            out.append({"id": r.id, "version": r.version, "previous": r.prev_version, "waves": waves,
                        "outcome": str(r.state), "reason": r.reason, "started_wall": r.created,
                        "finished_wall": done, "seconds": round(done - r.created, 2) if done else None})
        return sorted(out, key=lambda row: row["started_wall"])


def _digest(path: Path) -> tuple[str, int]:
    """sha256 and size of a file handed over in-process ("" and 0 if it is unreadable: refused when started)."""
    from protocol.durable import sha256_file

    try:
        return sha256_file(path), path.stat().st_size
    except OSError:
        return "", 0


def _notice(p: PromotionRecord) -> dict[str, Any]:
    try:
        d = json.loads(p.notice)
        return d if isinstance(d, dict) else {}
    except ValueError:
        return {}


def _scalar(metrics: dict[str, Any]) -> dict[str, Any]:
    return {k: metrics[k] for k in ("accuracy", "macro_f1", "n") if isinstance(metrics.get(k), (int, float))}
