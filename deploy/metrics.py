"""Prometheus metrics of the rollout controller service (``edgeloop deploy run``): ``edgeloop_deploy_*``.

Like the edge's (edge/metrics.py), a collector reads the service's own figures at scrape time - the rollout
store (rollouts and promotions by state), the controller's in-memory fleet table (devices by state and by
model version), the gate's view of the current wave, and the counters the controller, the promotion intake
and the feeder keep - instead of keeping a second set of counters in step. Names follow docs/CONTRACTS.md
"Metrics": base units, ``_total`` counters (declared without the suffix), labels with few values (``state``,
``outcome``, ``reason``, ``check``); the one ``version`` label is on a per-version device count, which has as
many values as versions in the field at once (two or three), and the ``_info`` metric of the current rollout.

Every metric, for dashboards (deploy/grafana/edgeloop.json) and alerts:

=================================================  =======  ============================================================
``edgeloop_deploy_rollouts{state}``                 gauge    rollouts in the store by state (every state, 0 included)
``edgeloop_deploy_rollout_info{fleet,version,state}`` info   the fleet's current (newest active or waiting) rollout
``edgeloop_deploy_rollout_wave``                    gauge    its current wave, 1-based (0: no rollout in progress)
``edgeloop_deploy_rollout_waves``                   gauge    the number of waves in its plan
``edgeloop_deploy_wave_devices{state}``             gauge    the current wave's devices: active, failed, pending, offline
``edgeloop_deploy_waves_published_total``           counter  wave manifests published
``edgeloop_deploy_waves_skipped_total``             counter  waves skipped: they would add no device (small fleets)
``edgeloop_deploy_rollouts_weights_only_total``     counter  rollouts that took ``weights_only_waves`` (only weights changed)
``edgeloop_deploy_gate_decisions_total{outcome}``   counter  advance (next wave), complete, halt (a breach)
``edgeloop_deploy_gate_breaches_total{check}``      counter  halts by the gate's check (rollout_gate.BREACH_CHECKS)
``edgeloop_deploy_devices{state}``                  gauge    known devices: offline, or online by model state (idle: none)
``edgeloop_deploy_device_versions{version}``        gauge    online devices by the model version they run
``edgeloop_deploy_promotions_total{outcome}``       counter  received, approved, rejected (this process)
``edgeloop_deploy_promotion_records{status}``       gauge    promotions in the store by status (announced ... failed)
``edgeloop_deploy_promotion_notices_rejected_total{reason}`` counter  notices refused (schema, too_large, ...)
``edgeloop_deploy_promotion_fetches_total{outcome}`` counter ok, failed
``edgeloop_deploy_chunks_published_total``          counter  model chunks published with a version's first wave
``edgeloop_deploy_chunks_republished_total{reason}`` counter republished: readback (absent/wrong on the broker), device
``edgeloop_deploy_chunks_cleared_total``            counter  retained chunks cleared (versions nothing needs)
``edgeloop_deploy_artifact_cache_bytes``            gauge    model bytes held in memory (bounded LRU)
``edgeloop_deploy_artifact_cache_versions``         gauge    versions held in memory
``edgeloop_deploy_device_rows_written_total``       counter  device snapshot rows written (only what changed)
``edgeloop_deploy_device_messages_rejected_total{reason}`` counter device messages the fleet table refused
``edgeloop_deploy_devices_forgotten_total``         counter  decommissioned devices cleared
``edgeloop_deploy_loop_age_seconds{loop}``          gauge    since the controller / feeder loop last completed a step
``edgeloop_deploy_mqtt_connected``                  gauge    1 while connected to the broker
``edgeloop_deploy_tick_errors_total``               counter  controller steps that raised (logged)
=================================================  =======  ============================================================
"""
from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Any, Iterator, Protocol

from prometheus_client import CollectorRegistry, ProcessCollector, make_wsgi_app
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily, Metric
from prometheus_client.registry import Collector

from protocol.metrics_server import MetricsServer

from .rollout_gate import BREACH_CHECKS
from .rollout_store import PROMOTION_STATUSES, State

if TYPE_CHECKING:
    from .controller import Controller
    from .promotions import PromotionIntake

__all__ = ["DeployCollector", "ServiceView", "metrics_server", "PREFIX"]

PREFIX = "edgeloop_deploy_"


class ServiceView(Protocol):
    """What the collector reads of the running service (deploy.service.DeployService)."""

    ctl: "Controller"
    fleet: str
    intake: "PromotionIntake | None"

    def loop_ages(self) -> dict[str, float]: ...

    def health(self) -> tuple[bool, dict[str, Any]]: ...


def _family(kind: type, name: str, doc: str, label: str, values: dict[str, float]) -> Metric:
    fam = kind(PREFIX + name, doc, labels=[label])
    for key, v in sorted(values.items()):
        fam.add_metric([str(key)], float(v))
    return fam


def _prefixed(counters: Counter[str], prefix: str) -> dict[str, float]:
    return {k[len(prefix):]: float(v) for k, v in counters.items() if k.startswith(prefix)}


class DeployCollector(Collector):
    """Reads the service at scrape time (on the HTTP server's thread; every read is thread-safe)."""

    def __init__(self, service: ServiceView) -> None:
        self.svc = service

    def collect(self) -> Iterator[Metric]:
        ctl, store = self.svc.ctl, self.svc.ctl.store
        c = ctl.counters
        rollouts = {s.value: 0 for s in State} | store.count_rollouts()
        yield _family(GaugeMetricFamily, "rollouts", "Rollouts in the store by state.", "state", rollouts)
        yield from self._current()
        yield CounterMetricFamily(PREFIX + "waves_published", "Wave manifests published.", value=c["waves_published"])
        yield CounterMetricFamily(PREFIX + "waves_skipped", "Waves skipped because they would add no device to "
                                  "the ones already in (a small fleet).", value=c["waves_skipped"])
        yield CounterMetricFamily(PREFIX + "rollouts_weights_only", "Rollouts of a version that differs from the "
                                  "fleet's only in its weights, on the policy's weights_only_waves.",
                                  value=c["rollouts_weights_only"])
        yield _family(CounterMetricFamily, "gate_decisions", "The gate's decisions: advance to the next wave, "
                      "complete the rollout, halt it (a breach).", "outcome",
                      {"advance": c["gate:advance"], "complete": c["gate:complete"],
                       "halt": sum(_prefixed(c, "gate:halt:").values())})
        yield _family(CounterMetricFamily, "gate_breaches", "Halts by the gate's check that found the breach.", "check",
                      {check.__name__: c[f"gate:halt:{check.__name__}"] for check in BREACH_CHECKS})
        yield _family(CounterMetricFamily, "gate_reports_ignored", "Model statuses of wave members the gate did not "
                      "count: another rollout's (stale) or naming no manifest sequence it issued (foreign).", "why",
                      {"stale": c["gate:ignored:stale"], "foreign": c["gate:ignored:foreign"]})
        yield from self._devices()
        yield from self._promotions()
        yield CounterMetricFamily(PREFIX + "chunks_published", "Model chunks published with a version's first wave.",
                                  value=c["chunks_published"])
        yield _family(CounterMetricFamily, "chunks_republished", "Chunks published again: absent or wrong in the "
                      "broker's read-back (readback), or reported corrupt or missing by a device (device).", "reason",
                      {"readback": c["republish:readback"], "device": c["republish:device"]})
        yield CounterMetricFamily(PREFIX + "chunks_cleared", "Retained chunks cleared (versions nothing needs).",
                                  value=c["chunks_cleared"])
        yield GaugeMetricFamily(PREFIX + "artifact_cache_bytes", "Model bytes held in memory.", value=ctl.cache.bytes)
        yield GaugeMetricFamily(PREFIX + "artifact_cache_versions", "Model versions held in memory.",
                                value=len(ctl.cache))
        yield CounterMetricFamily(PREFIX + "device_rows_written", "Device snapshot rows written to the store.",
                                  value=c["device_rows_written"])
        yield _family(CounterMetricFamily, "device_messages_rejected", "Device messages the fleet table refused.",
                      "reason", dict(ctl.fleet.rejected))
        yield CounterMetricFamily(PREFIX + "devices_forgotten", "Decommissioned devices whose retained topics were "
                                  "cleared.", value=c["devices_forgotten"])
        yield _family(GaugeMetricFamily, "loop_age_seconds", "Seconds since the loop last completed a step.", "loop",
                      self.svc.loop_ages())
        yield GaugeMetricFamily(PREFIX + "mqtt_connected", "1 while connected to the broker.",
                                value=float(ctl.connected))
        yield CounterMetricFamily(PREFIX + "tick_errors", "Controller steps that raised (see the log).",
                                  value=c["tick_errors"])

    def _current(self) -> Iterator[Metric]:
        ctl, fleet = self.svc.ctl, self.svc.fleet
        rows = ctl.store.get_active(fleet) or ctl.store.get_waiting(fleet)
        r = rows[-1] if rows else None
        info = InfoMetricFamily(PREFIX + "rollout", "The fleet's current rollout (active, else awaiting approval).",
                                labels=["fleet"])
        wave_devices = {"active": 0, "failed": 0, "pending": 0, "offline": 0}
        if r is not None:
            info.add_metric([fleet], {"version": r.version, "state": r.state.value, "id": r.id})
            if r.state != State.AWAITING_APPROVAL and r.wave_published:
                w = ctl.evaluate(r).wave
                wave_devices = {"active": len(w.active), "failed": len(w.failed), "pending": len(w.pending),
                                "offline": w.offline}
        yield info
        yield GaugeMetricFamily(PREFIX + "rollout_wave", "The current rollout's wave, 1-based (0: none in progress).",
                                value=(r.wave + 1) if r is not None and r.active else 0)
        yield GaugeMetricFamily(PREFIX + "rollout_waves", "Waves in the current rollout's plan.",
                                value=len(r.policy.waves) if r is not None else 0)
        yield _family(GaugeMetricFamily, "wave_devices", "The current wave's devices as the gate counts them.", "state",
                      wave_devices)

    def _devices(self) -> Iterator[Metric]:
        by_state: Counter[str] = Counter()
        by_version: Counter[str] = Counter()
        for d in self.svc.ctl.fleet.devices():
            if not d.online:
                by_state["offline"] += 1
                continue
            by_state[d.model_state or "idle"] += 1
            by_version[d.version or "unknown"] += 1
        yield _family(GaugeMetricFamily, "devices", "Known devices: offline, or online by their model state.", "state",
                      dict(by_state))
        yield _family(GaugeMetricFamily, "device_versions", "Online devices by the model version they run.", "version",
                      dict(by_version))

    def _promotions(self) -> Iterator[Metric]:
        c, intake = self.svc.ctl.counters, self.svc.intake
        ic: Counter[str] = intake.counters if intake is not None else Counter()
        yield _family(CounterMetricFamily, "promotions", "Promotions received from the trainer, approved and rejected "
                      "by operators (by this process).", "outcome",
                      {"received": ic["received"], "approved": c["promotions_approved"],
                       "rejected": c["promotions_rejected"]})
        yield _family(GaugeMetricFamily, "promotion_records", "Promotions in the store by status.", "status",
                      {s: 0 for s in PROMOTION_STATUSES} | self.svc.ctl.store.count_promotions())
        yield _family(CounterMetricFamily, "promotion_notices_rejected", "Promotion notices refused, by reason.",
                      "reason", _prefixed(ic, "rejected:"))
        yield _family(CounterMetricFamily, "promotion_fetches", "Model fetches from the broker by outcome.", "outcome",
                      {"ok": ic["fetched"], "failed": sum(_prefixed(ic, "failed:").values())})


def metrics_server(service: ServiceView, host: str, port: int) -> MetricsServer:
    """The service's ``/metrics`` (this collector + the process's CPU, memory, fds) and ``/healthz``."""
    registry = CollectorRegistry()
    registry.register(DeployCollector(service))
    registry.register(ProcessCollector(registry=None))
    return MetricsServer(make_wsgi_app(registry), service.health, host, port, name="edgeloop deploy")
