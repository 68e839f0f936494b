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
import json
import logging
import threading
import time
from typing import TYPE_CHECKING, Annotated, Any, Callable, Iterator
from wsgiref.simple_server import WSGIRequestHandler, make_server

import msgspec
from prometheus_client import CollectorRegistry, ProcessCollector, make_wsgi_app
from prometheus_client.core import (
    CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, InfoMetricFamily, Metric,
)
from prometheus_client.exposition import ThreadingWSGIServer
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from edge.node import EdgeNode

__all__ = ["MetricsConfig", "LatencyHistogram", "EdgeCollector", "MetricsServer", "LOOPBACK"]

log = logging.getLogger("edgeloop.edge.metrics")

LOOPBACK = ("127.0.0.1", "::1", "localhost")


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


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        pass


class MetricsServer:
    """``GET /metrics`` (Prometheus text format) and ``GET /healthz`` (JSON; 200 healthy, 503 not) on one port.

    ``health`` returns (healthy, details). Anything else is 404; methods other than GET/HEAD are 405.
    """

    def __init__(self, registry: CollectorRegistry, health: Callable[[], tuple[bool, dict[str, Any]]],
                 host: str = "127.0.0.1", port: int = 9851) -> None:
        self.registry = registry
        self.health = health
        self.host, self.port = host, port
        self._metrics_app = make_wsgi_app(registry)
        self._server: ThreadingWSGIServer | None = None
        self._thread: threading.Thread | None = None

    @classmethod
    def for_node(cls, node: "EdgeNode", config: MetricsConfig) -> "MetricsServer":
        registry = CollectorRegistry()
        registry.register(EdgeCollector(node))
        registry.register(ProcessCollector(registry=None))  # process_cpu_seconds_total, resident memory, fds
        return cls(registry, node.health, config.host, config.port)

    def start(self) -> str:
        """Bind and serve in a daemon thread; returns the base URL. Raises OSError if the port is taken."""
        server_cls = type("_Server", (ThreadingWSGIServer,), {})
        if ":" in self.host:
            import socket

            server_cls.address_family = socket.AF_INET6
        self._server = make_server(self.host, self.port, self._app, server_cls, handler_class=_QuietHandler)
        self.port = self._server.server_port
        self._thread = threading.Thread(target=self._server.serve_forever, name="edgeloop-metrics", daemon=True)
        self._thread.start()
        if self.host not in LOOPBACK:
            log.warning("metrics and health endpoint listen on %s:%d without authentication: anyone who can reach "
                        "that address reads this device's metrics (read-only); bind 127.0.0.1 and scrape through "
                        "a proxy or an SSH tunnel if that is not intended", self.host, self.port)
        return self.url

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def _app(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        method, path = environ["REQUEST_METHOD"], environ.get("PATH_INFO", "/")
        if method not in ("GET", "HEAD"):
            start_response("405 Method Not Allowed", [("Allow", "GET, HEAD"), ("Content-Type", "text/plain")])
            return [b"read-only: use GET\n"]
        if path == "/metrics":
            environ = {**environ, "REQUEST_METHOD": "GET"}
            return self._metrics_app(environ, start_response)
        if path == "/healthz":
            ok, details = self._health()
            body = json.dumps({"status": "ok" if ok else "unhealthy", **details}, sort_keys=True).encode() + b"\n"
            start_response("200 OK" if ok else "503 Service Unavailable",
                           [("Content-Type", "application/json"), ("Cache-Control", "no-store")])
            return [body]
        if path == "/":
            start_response("200 OK", [("Content-Type", "text/plain")])
            return [b"edgeloop edge: /metrics (Prometheus), /healthz\n"]
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"not found: /metrics or /healthz\n"]

    def _health(self) -> tuple[bool, dict[str, Any]]:
        try:
            return self.health()
        except Exception as exc:  # a health check that raises is itself a failure, not a crashed server
            log.exception("health check failed")
            return False, {"reason": f"health check raised {type(exc).__name__}: {exc}", "time": time.time()}
