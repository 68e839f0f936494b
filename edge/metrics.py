"""Prometheus ``/metrics`` and ``/healthz`` for one edge node (the ``prometheus_client`` library).

Why a custom collector: the node already counts everything (frames, outbox rows, uploads, capture, sampler,
updater, verdicts) in its own components, so the collector reads those at scrape time instead of keeping a
second set of counters in step. The frame loop pays nothing for it, except the per-frame latency histogram:
``LatencyHistogram.observe`` is one ``bisect`` and two additions (single writer, the frame loop; ~0.3 µs),
where ``prometheus_client.Histogram.observe`` takes a lock per bucket and sum (~4x as much). On the edge
path that difference is ~1 % of the 85 % goal's margin (``bench/edge_path.py``).

Metric names follow docs/CONTRACTS.md "Metrics": ``edgeloop_edge_*``, base units, ``_total`` counters,
low-cardinality labels. The server binds 127.0.0.1 by default and is read-only (GET only); it has no
authentication, so binding another address is allowed but logged as a warning.
"""
from __future__ import annotations

import bisect
import logging
import time
from typing import TYPE_CHECKING, Annotated, Iterator

import msgspec
from prometheus_client import CollectorRegistry, ProcessCollector, make_wsgi_app
from prometheus_client.core import (
    CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, InfoMetricFamily, Metric,
)
from prometheus_client.registry import Collector

from protocol.metrics_server import LOOPBACK, MetricsServer

if TYPE_CHECKING:
    from edge.node import EdgeNode

__all__ = ["MetricsConfig", "LatencyHistogram", "EdgeCollector", "metrics_server", "LOOPBACK"]

log = logging.getLogger("edgeloop.edge.metrics")


class MetricsConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    enabled: bool = True
    host: str = "127.0.0.1"                  # another address exposes unauthenticated metrics: a warning says so
    port: Annotated[int, msgspec.Meta(ge=0, le=65535)] = 9851  # 0 = any free port (logged)
    stall_s: Annotated[float, msgspec.Meta(gt=0)] = 30.0  # /healthz fails when no frame was classified this long


class LatencyHistogram:
    """Per-frame latency in fixed buckets, written by the frame loop only and read at scrape time."""

    BOUNDS_MS: tuple[float, ...] = (0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0)

    def __init__(self) -> None:
        self.counts = [0] * (len(self.BOUNDS_MS) + 1)  # last = above every bound
        self.sum_ms = 0.0

    def observe(self, ms: float) -> None:
        self.counts[bisect.bisect_left(self.BOUNDS_MS, ms)] += 1
        self.sum_ms += ms

    def buckets(self) -> tuple[list[tuple[str, int]], float]:
        """Cumulative (upper bound in seconds, count) pairs ending with ``+Inf``, and the sum in seconds."""
        counts, total = list(self.counts), self.sum_ms  # one consistent-enough copy (the loop keeps writing)
        out, acc = [], 0
        for bound, n in zip(self.BOUNDS_MS, counts):
            acc += n
            out.append((repr(bound / 1000.0), acc))
        out.append(("+Inf", acc + counts[-1]))
        return out, total / 1000.0


def _counter(name: str, doc: str, value: float, labels: dict[str, str] | None = None) -> CounterMetricFamily:
    if labels is None:
        return CounterMetricFamily(name, doc, value=value)
    fam = CounterMetricFamily(name, doc, labels=list(labels))
    fam.add_metric(list(labels.values()), value)
    return fam


def _by(name: str, doc: str, label: str, values: dict[str, float], kind: type = CounterMetricFamily) -> Metric:
    fam = kind(name, doc, labels=[label])
    for key, v in sorted(values.items()):
        fam.add_metric([str(key)], v)
    return fam


class EdgeCollector(Collector):
    """Reads the node's own figures at scrape time (a scrape runs on the HTTP server's thread)."""

    def __init__(self, node: "EdgeNode") -> None:
        self.node = node

    def collect(self) -> Iterator[Metric]:
        n, p = self.node, "edgeloop_edge_"
        st = n.stats
        yield _counter(p + "frames", "Frames classified.", st.frames)
        yield GaugeMetricFamily(p + "fps", "Frames classified per second over the last stats interval.",
                                value=n.recent_fps)
        buckets, total = st.latency.buckets()
        yield HistogramMetricFamily(p + "inference_latency_seconds", "Per-frame edge path: preprocess, ONNX "
                                    "inference, scoring and the sampling decision.", buckets=buckets, sum_value=total)
        yield _by(p + "errors", "Errors by reason (inference raised; outbox write failed).", "reason",
                  {"inference": st.errors, "outbox_write": st.outbox_errors + n.link.outbox_write_errors})
        yield _counter(p + "samples_selected", "Frames the sampler selected for upload.", st.selected)
        yield _counter(p + "samples_hinted", "Uploads only the trainer's selection hint took (its own budget).",
                       n.sampler.hinted)
        yield _by(p + "selection_hints", "Selection hints received, by outcome (applied, capped, withdrawn, "
                  "expired, ignored, rejected).", "outcome", dict(st.hints))
        hint = n.sampler.hint  # read once: paho's thread may withdraw it meanwhile
        yield GaugeMetricFamily(p + "selection_hint_active", "1 while a selection hint is in force.",
                                value=float(hint is not None and hint.expires > time.time()))
        yield _counter(p + "samples_stored", "Selected samples committed to the outbox.", st.stored)
        yield _by(p + "samples_not_stored", "Selected samples not committed: refused by the outbox bound, or "
                  "the outbox could not be written (disk full).", "reason",
                  {"outbox_bound": st.refused, "outbox_error": st.unspooled})
        yield _counter(p + "uploads", "Samples the broker acknowledged (deleted from the outbox).", n.link.uploads)
        ob = n.outbox.stats()
        yield GaugeMetricFamily(p + "outbox_depth", "Samples waiting in the outbox.", value=ob["depth"])
        yield GaugeMetricFamily(p + "outbox_bytes", "Payload bytes in the outbox.", value=ob["bytes"])
        yield _by(p + "outbox_dropped", "Samples dropped or refused by the outbox bound, by policy (persistent "
                  "across restarts).", "reason", {"oldest": ob["dropped_oldest"],
                                                  "lowest_priority": ob["dropped_lowest_priority"],
                                                  "rejected": ob["rejected"]})
        yield GaugeMetricFamily(p + "uploads_held", "1 while samples wait in the outbox because no trainer has "
                                "connected to this broker yet (upload.wait_for_trainer).", value=float(n.link.held))
        yield GaugeMetricFamily(p + "outbox_paused", "1 while spooling is paused because the outbox cannot be "
                                "written (disk full).", value=float(n.outbox_error is not None))
        v = n.verdicts
        yield _counter(p + "predictions_published", "Verdicts published on dev/{id}/predictions.", v.published)
        yield _by(p + "predictions_dropped", "Verdicts the mode wanted but not published.", "reason",
                  {"rate_limit": v.rate_limited, "offline": v.offline})
        yield _counter(p + "defects", "Frames classified outside the configured ok labels.", v.defects)
        yield GaugeMetricFamily(p + "drift_score", "Drift score (shift of confidence/entropy in reference "
                                "standard deviations).", value=float(n.drift.score))
        yield GaugeMetricFamily(p + "drift_active", "1 while drift is detected.", value=float(n.drift.active))
        model = n.slot.get()
        yield InfoMetricFamily(p + "model", "The active model.", value={"version": str(model.version)})
        yield from self._updater(p)
        cap = n.capture.stats
        yield _counter(p + "capture_frames", "Frames read from the source.", cap.frames)
        yield _counter(p + "capture_dropped", "Frames dropped because inference fell behind.", cap.dropped)
        yield _counter(p + "capture_reconnects", "Source reopened after a failure or stall.", cap.reconnects)
        yield _counter(p + "capture_stalls", "Source stalls (no frame for stall_timeout_s).", cap.stalls)
        yield GaugeMetricFamily(p + "mqtt_connected", "1 while connected to the broker.",
                                value=float(n.link.is_connected))
        yield _counter(p + "mqtt_disconnects", "Connections to the broker lost.", n.link.disconnects)
        yield GaugeMetricFamily(p + "last_frame_age_seconds", "Seconds since the frame loop last classified a "
                                "frame (since start, before the first).", value=n.last_frame_age())
        if st.correct:
            yield GaugeMetricFamily(p + "accuracy", "Rolling accuracy against ground truth (simulated sources).",
                                    value=sum(st.correct) / len(st.correct))

    def _updater(self, p: str) -> Iterator[Metric]:
        u = self.node.updater
        if u is None:
            return
        yield _by(p + "model_rejections", "Models refused or given up by this device, by reason.", "reason",
                  dict(u.rejections))
        yield GaugeMetricFamily(p + "updater_queue_depth", "Messages waiting for the updater's worker.",
                                value=u.queue_depth)
        yield _counter(p + "updater_queue_dropped", "Messages dropped because the updater's queue was full.",
                       u.queue_dropped)
        yield _counter(p + "updater_storage_errors", "Model chunks or files the disk refused (full, read-only); "
                       "the download waits and tries again.", u.storage_errors)


def metrics_server(node: "EdgeNode", config: MetricsConfig) -> MetricsServer:
    """The node's ``/metrics`` (its collector and the process's CPU/memory) and ``/healthz`` (``node.health``)."""
    registry = CollectorRegistry()
    registry.register(EdgeCollector(node))
    registry.register(ProcessCollector(registry=None))  # process_cpu_seconds_total, resident memory, fds
    return MetricsServer(make_wsgi_app(registry), node.health, config.host, config.port, name="edgeloop edge")
