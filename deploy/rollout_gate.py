"""The fleet gate of a rollout: when a wave may advance and when the rollout must halt.

A rollout's :class:`Policy` is its wave plan plus the gate's thresholds. Each tick the controller sorts the
current wave's devices by what they report about this rollout (:func:`count_wave`), then asks every check
in :data:`BREACH_CHECKS` in turn; the first reason returned halts the rollout and rolls it back. A wave
advances when none of its online devices is still pending, at least ``min_reporting`` of its devices (at
least one, at most the wave's size) run the new version and reported it healthy, and the wave has been out
for the policy's ``soak`` (the soak runs beside the devices' health watch, not after it). A wave nobody reports from does not advance: after ``wave_timeout`` it halts with
``no_reports`` (issue 12: a forged "offline" for every canary device must not let a wave through unchecked).

What counts (issue 12): only a wave's *members*, which the controller takes from its device registry
(provisioned devices, deploy/pki.py, or the configured list) when it has one; only a model status that names
this rollout and a manifest sequence the controller issued for it (:func:`count_wave`'s ``max_seq``); other
statuses of members are ignored (``WaveDevices.ignored``: a stale one from an earlier rollout, or a foreign
one naming a sequence never issued or none at all), so a status left over from an earlier rollout, or made up,
cannot advance a wave or fail it.

These are *fleet-level* thresholds over a wave's shadow runs (``shadow_*``). A device also judges a new
model on its own after the swap, with its own, looser triggers (``health_*`` in
:class:`edge.updater.UpdaterLimits`) and rolls back by itself; the gate sees that as a failed device.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Annotated, Callable, ClassVar

import msgspec
from msgspec import Meta

from .fleet import DeviceInfo
from .publisher import DEFAULT_EXPIRY_S

__all__ = ["Policy", "WaveDevices", "BREACH_CHECKS", "FAILED_STATES", "RETRYABLE_REASONS", "count_wave", "evaluate",
           "first_breach", "no_reports", "wave_done", "parse_duration", "parse_fraction", "parse_waves"]

#: Model states a device reports for a version it gave up on (``dev/{id}/model/status``).
FAILED_STATES = ("failed", "rolled_back", "rejected")
#: Failure reasons that are not the model's fault: a chunk the device received was wrong or out of range. The
#: device keeps waiting for that chunk and the controller republishes it (deploy/controller.py), so the device
#: counts as still working on the wave, not as failed: one corrupt transfer must not roll a good model back.
RETRYABLE_REASONS = ("chunk_hash", "chunk_range")


class Policy(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """How a rollout proceeds and when the fleet gate stops it. Defaults = the automatic policy for promoted
    versions.

    ``waves``: fractions of the known devices in each wave (nested; 1.0 is appended if missing); a wave
    advances once its devices reported healthy and it has been out for ``soak`` seconds (since a resume, if
    later): the soak runs beside the devices' health watch, so a canary's exposure is max(soak, health watch). ``max_failed``: halt when more than this
    fraction of the wave's online devices reports the new version failed (any reason, including the
    device's own health rollback). ``wave_timeout``: devices of a wave that neither finish nor fail in
    time halt the rollout (and bound how long a rollback waits for devices).

    ``shadow``: frames the candidate runs beside the active model on each device before swapping (0 = no
    shadow run, and none of the shadow checks below). Devices refuse to swap below ``min_agreement``
    themselves, and the gate halts when the wave's mean agreement is below it.
    ``shadow_max_confidence_drop``: halt when the wave's mean top-1 confidence of the candidate is this
    fraction below the active model's. ``shadow_max_latency_ratio``: halt when candidate latency / active
    latency exceeds it and the candidate is also ``shadow_latency_slack_ms`` slower (sub-millisecond models
    jitter by more than 3x). ``shadow_seconds``: a device's bound on its shadow run.

    ``min_reporting``: devices of each wave (at least 1; a smaller wave needs all of its members) that must run
    the new version, have reported it healthy after their health watch (``health_seconds``) and sent stats
    since, before the wave may advance. Fewer than that after ``wave_timeout``: halt with ``no_reports``.

    ``health_seconds``: how long each device watches the new model after its swap (sent to devices).
    ``weights_only_waves``: the waves of a version that differs from the rollout's previous version (the fleet's
    baseline, which every device ran) only in its weights -- same graph, input spec, labels and opset
    (deploy/model_graph.py); None (the default): the same ``waves`` as any version. ``[1.0]`` sends such a version
    to everyone at once; each device still watches it (``health_seconds``) and rolls back by itself, and the
    wave's breach checks still halt the rollout and roll the fleet back.
    ``expiry``: lifetime of a signed manifest (the controller re-signs the fleet's at half of it).
    """

    #: Keys of earlier releases -> their names now (stored rollouts are migrated; config files fail naming these).
    renamed_keys: ClassVar[dict[str, str]] = {
        "max_confidence_drop": "shadow_max_confidence_drop",
        "max_latency_ratio": "shadow_max_latency_ratio",
        "latency_slack_ms": "shadow_latency_slack_ms",
    }

    waves: list[float] = msgspec.field(default_factory=lambda: [0.05, 0.25, 1.0])
    weights_only_waves: list[float] | None = None
    soak: Annotated[float, Meta(ge=0)] = 60.0
    max_failed: Annotated[float, Meta(ge=0, le=1)] = 0.10
    min_agreement: Annotated[float, Meta(ge=0, le=1)] = 0.90
    shadow: Annotated[int, Meta(ge=0)] = 0
    shadow_seconds: Annotated[float, Meta(gt=0)] = 60.0
    shadow_max_confidence_drop: Annotated[float, Meta(ge=0, le=1)] = 0.25
    shadow_max_latency_ratio: Annotated[float, Meta(gt=0)] = 3.0
    shadow_latency_slack_ms: Annotated[float, Meta(ge=0)] = 5.0
    health_seconds: Annotated[float, Meta(ge=0)] = 30.0
    wave_timeout: Annotated[float, Meta(gt=0)] = 600.0
    min_reporting: Annotated[int, Meta(ge=1)] = 1
    expiry: Annotated[float, Meta(gt=60)] = DEFAULT_EXPIRY_S

    def __post_init__(self) -> None:
        self.waves = _checked_waves("waves", self.waves)
        if self.weights_only_waves is not None:
            self.weights_only_waves = _checked_waves("weights_only_waves", self.weights_only_waves)
        if not 0 <= self.max_failed <= 1:
            raise ValueError("max_failed must be a fraction in [0, 1]")


def _checked_waves(key: str, waves: list[float]) -> list[float]:
    """Increasing fractions in (0, 1], 1.0 appended if missing."""
    if not waves or any(not 0 < w <= 1 for w in waves) or sorted(waves) != waves:
        raise ValueError(f"{key} must be increasing fractions in (0, 1], got {waves}")
    return waves if waves[-1] == 1.0 else [*waves, 1.0]


def parse_duration(text: str | float) -> float:
    """``"60s"``, ``"5m"``, ``"1h"``, ``"250ms"`` or a number of seconds."""
    if isinstance(text, (int, float)):
        return float(text)
    t = text.strip().lower()
    for suffix, mult in (("ms", 0.001), ("s", 1.0), ("m", 60.0), ("h", 3600.0)):
        if t.endswith(suffix):
            return float(t[: -len(suffix)]) * mult
    return float(t)


def parse_fraction(text: str | float) -> float:
    """``"10%"`` or ``0.1``."""
    if isinstance(text, (int, float)):
        return float(text)
    t = text.strip()
    return float(t[:-1]) / 100.0 if t.endswith("%") else float(t)


def parse_waves(text: str) -> list[float]:
    """``"5%,25%,100%"`` -> [0.05, 0.25, 1.0]."""
    return [parse_fraction(p) for p in text.split(",") if p.strip()]


# -- counting a wave -----------------------------------------------------------------------------------------
def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


@dataclass
class WaveDevices:
    """The current wave's devices, sorted by what they report about this rollout's version.

    ``active``: online and running the new version; ``failed``: online and reporting this rollout's
    version in a failed state; ``pending``: online and neither yet. ``shadowed``: members (online or not)
    whose shadow run of this rollout's version finished (they report an ``agreement``). ``reporting``: active
    members whose status about this rollout says the new version passed its health watch (or was running
    already) and that sent stats since. ``ignored``: (device, ``stale``/``foreign``) for members whose status
    does not name this rollout and one of its manifest sequences.
    """

    members: list[DeviceInfo]
    active: list[DeviceInfo] = field(default_factory=list)
    failed: list[DeviceInfo] = field(default_factory=list)
    pending: list[DeviceInfo] = field(default_factory=list)
    shadowed: list[DeviceInfo] = field(default_factory=list)
    reporting: list[DeviceInfo] = field(default_factory=list)
    ignored: list[tuple[DeviceInfo, str]] = field(default_factory=list)
    started: float | None = None   # when the wave's manifest was published
    now: float = 0.0

    @property
    def online(self) -> int:
        return len(self.active) + len(self.failed) + len(self.pending)

    @property
    def offline(self) -> int:
        return len(self.members) - self.online

    @property
    def failures(self) -> dict[str, int]:
        """Failed devices per reason."""
        out: dict[str, int] = {}
        for d in self.failed:
            key = d.reason or d.model_state or "?"
            out[key] = out.get(key, 0) + 1
        return out

    def shadow_mean(self, metric: str) -> float:
        """Mean of one shadow metric over the shadowed devices (missing = 0)."""
        return _mean([float(d.status_metrics.get(metric, 0)) for d in self.shadowed])

    def needed(self, p: Policy) -> int:
        """Devices that must report healthy on the new version: ``min_reporting``, at most the wave's size, at
        least one (a wave without members never passes)."""
        return max(1, min(p.min_reporting, len(self.members)))

    def summary(self) -> str:
        return (f"{len(self.active)} active ({len(self.reporting)} reported healthy), {len(self.failed)} failed, "
                f"{self.offline} offline")


def count_wave(members: list[DeviceInfo], rollout_id: str, version: str, started: float | None = None,
               now: float | None = None, max_seq: int | None = None) -> WaveDevices:
    """Sort a wave's members; only status reports about *this* rollout's version count as failures.

    ``max_seq``: the sequence of the fleet's current manifest. When given, a status counts only if it names
    ``rollout_id`` and a sequence no higher (rollout ids are unique, so that is a manifest of this rollout);
    others are ``ignored``: ``stale`` (another rollout's) or ``foreign`` (a sequence never issued, or none).
    """
    w = WaveDevices(members, started=started, now=time.time() if now is None else now)
    for d in members:
        mine = d.rollout_id == rollout_id and d.model_version == version
        if max_seq is not None and d.model_state is not None:
            why = _ignored(d, rollout_id, max_seq)
            if why is not None:
                w.ignored.append((d, why))
                mine = False
        if mine and "agreement" in d.status_metrics:
            w.shadowed.append(d)
        if not d.online:
            continue
        if mine and d.model_state in FAILED_STATES and d.reason not in RETRYABLE_REASONS:
            w.failed.append(d)
        elif d.version == version:
            w.active.append(d)
            if mine and _healthy(d):
                w.reporting.append(d)
        else:
            w.pending.append(d)
    return w


def _ignored(d: DeviceInfo, rollout_id: str, max_seq: int) -> str | None:
    """Why a member's model status does not count for this rollout (None: it does)."""
    if d.rollout_id != rollout_id:
        return "stale"
    if d.status_seq is None or d.status_seq > max_seq:
        return "foreign"
    return None


def _healthy(d: DeviceInfo) -> bool:
    """Active on this rollout's version after a passed health watch (or already running it when the wave's
    manifest came), and alive since: a stats message after that status."""
    m = d.status_metrics
    passed = d.model_state == "active" and (m.get("health") == "ok" or m.get("already") is True)
    return passed and d.stats_time >= d.status_time > 0


# -- the breach checks: each returns a reason to halt, or None ------------------------------------------------
def failed_fraction(w: WaveDevices, p: Policy) -> str | None:
    """Too many of the wave's online devices gave up on the new version."""
    if w.failed and len(w.failed) / max(w.online, 1) > p.max_failed:
        return f"failed {len(w.failed)}/{w.online} > {p.max_failed:.0%} ({w.failures})"
    return None


def shadow_agreement(w: WaveDevices, p: Policy) -> str | None:
    """The candidate disagrees with the active model too often in the wave's shadow runs."""
    if p.shadow > 0 and w.shadowed:
        agree = w.shadow_mean("agreement")
        if agree < p.min_agreement:
            return f"shadow agreement {agree:.3f} < {p.min_agreement:.3f}"
    return None


def confidence_drop(w: WaveDevices, p: Policy) -> str | None:
    """The candidate is much less sure of itself than the active model was on the same frames."""
    if p.shadow > 0 and w.shadowed:
        new, old = w.shadow_mean("confidence"), w.shadow_mean("active_confidence")
        if old > 0 and new < old * (1 - p.shadow_max_confidence_drop):
            return f"confidence {new:.3f} vs active {old:.3f} dropped > {p.shadow_max_confidence_drop:.0%}"
    return None


def latency(w: WaveDevices, p: Policy) -> str | None:
    """The candidate is several times slower than the active model (and slower by more than the slack)."""
    timed = [d for d in w.shadowed if d.latency_ms]
    if p.shadow > 0 and timed:
        cand = _mean([float(d.status_metrics.get("latency_ms", 0)) for d in timed])
        act = _mean([float(d.latency_ms or 0) for d in timed])
        ratio = cand / max(act, 1e-6)
        if ratio > p.shadow_max_latency_ratio and cand - act > p.shadow_latency_slack_ms:
            return f"latency ratio {ratio:.2f} > {p.shadow_max_latency_ratio:.2f}"
    return None


def wave_timeout(w: WaveDevices, p: Policy) -> str | None:
    """Devices of the wave neither finished nor failed in time."""
    if w.pending and w.started and w.now - w.started > p.wave_timeout:
        return f"wave timeout: {len(w.pending)} devices did not finish in {p.wave_timeout:.0f}s"
    return None


def no_reports(w: WaveDevices, p: Policy) -> str | None:
    """Too few of the wave's devices reported the new version healthy in ``wave_timeout``: all offline, say,
    or only unprovisioned ids. Waiting longer proves nothing, and advancing would check nothing."""
    if w.started and w.now - w.started > p.wave_timeout and len(w.reporting) < w.needed(p):
        return (f"no_reports: {len(w.reporting)} of the {w.needed(p)} devices needed reported the new version "
                f"healthy in {p.wave_timeout:.0f}s ({w.summary()})")
    return None


#: The gate's rules, asked in this order; the first reason halts the rollout.
BREACH_CHECKS: tuple[Callable[[WaveDevices, Policy], str | None], ...] = (
    failed_fraction, shadow_agreement, confidence_drop, latency, wave_timeout, no_reports)


def evaluate(w: WaveDevices, p: Policy) -> str | None:
    """The first breach reason of :data:`BREACH_CHECKS`, or None when the wave is within the policy."""
    found = first_breach(w, p)
    return found[1] if found else None


def first_breach(w: WaveDevices, p: Policy) -> tuple[str, str] | None:
    """(the check's name, its reason) of the first breach, or None: the name is what metrics count by."""
    for check in BREACH_CHECKS:
        reason = check(w, p)
        if reason is not None:
            return check.__name__, reason
    return None


def wave_done(w: WaveDevices, p: Policy) -> bool:
    """Nobody online is still working on the wave, and enough of its devices reported the new version healthy
    (:meth:`WaveDevices.needed`). A wave whose devices are all offline is never done: it halts (no_reports)."""
    return not w.pending and len(w.reporting) >= w.needed(p)
