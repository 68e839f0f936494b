"""Prometheus ``/metrics`` and ``/healthz`` for the trainer service (the ``prometheus_client`` library).

A collector reads the service's own figures at scrape time (the store's all-time counts, the ingestor's,
the learner's counters) rather than keeping a second set in step. Names follow docs/CONTRACTS.md "Metrics":
``edgeloop_trainer_*``, base units, ``_total`` counters, breakdowns as low-cardinality labels (``reason``,
``outcome``, ``part``, ``state``); per-device figures stay in ``edgeloop trainer status``.

Served by the shared :class:`protocol.metrics_server.MetricsServer` (read-only GET, 127.0.0.1 by default, any
other address logged as a warning); the reads themselves run on one worker thread (see :class:`_OneThread`).
"""
from __future__ import annotations

import logging
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Callable, TypeVar

from prometheus_client import CollectorRegistry, ProcessCollector, make_wsgi_app
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily, Metric
from prometheus_client.registry import Collector

from protocol.metrics_server import MetricsServer

if TYPE_CHECKING:
    from .service import TrainerService

__all__ = ["TrainerCollector", "TrainerMetricsServer", "DEFAULT_PORT"]

T = TypeVar("T")

log = logging.getLogger(__name__)

DEFAULT_PORT = 9852
TIMEOUT_S = 10.0
_PARTS = ("ingest", "checkpoint", "learner")


def _family(kind: type, name: str, doc: str, label: str | None = None, values: dict[str, float] | float = 0.0) -> Metric:
    """A counter or gauge family: one value, or one per ``label`` value."""
    if label is None:
        return kind(name, doc, value=values)
    fam = kind(name, doc, labels=[label])
    for key, v in sorted(values.items()):  # type: ignore[union-attr]
        fam.add_metric([str(key)], v)
    return fam


class TrainerCollector(Collector):
    """The trainer's figures, read when Prometheus scrapes."""

    def __init__(self, service: "TrainerService") -> None:
        self.svc = service

    def collect(self) -> Iterator[Metric]:
        svc, p = self.svc, "edgeloop_trainer_"
        C, G = CounterMetricFamily, GaugeMetricFamily
        st = svc.store.stats()
        c = svc.counters
        yield _family(G, p + "store_samples", "Samples in the store (labelled or not).", values=st["samples"])
        yield _family(G, p + "store_bytes", "Image bytes the store's rows point at.", values=st["bytes"])
        yield _family(C, p + "samples_rejected", "Messages rejected by ingestion, by reason (all time).", "reason",
                      st["rejected"])
        yield _family(C, p + "labels", "Samples labelled (all time; labelled samples are never deleted).",
                      values=st["labelled"])
        yield _family(G, p + "label_queue_depth", "Samples waiting for a label.", values=svc.labels_waiting)
        yield _family(G, p + "labels_skipped_no_truth", "Unlabelled samples the oracle labeller skips: they carry "
                      "no ground truth (real frames).", values=svc.labels_skipped)
        yield _family(G, p + "buffered_samples", "Labelled samples waiting for the next update.", values=svc.buffered)
        yield _family(C, p + "updates", "Updates trained.", values=c.get("updates", 0))
        yield _family(C, p + "samples_trained", "Samples trained on (each once).", values=c.get("samples_seen", 0))
        yield _family(C, p + "rehearsal_steps", "Replay-only optimiser steps run while waiting for labels "
                      "(update.rehearse_steps).", values=c.get("rehearsal_steps", 0))
        yield _family(C, p + "rehearsals_failed", "Rehearsal rounds undone: a non-finite loss or weight.",
                      values=c.get("rehearsals_failed", 0))
        evaluations, promotions = c.get("evaluations", 0), c.get("promotions", 0)
        yield _family(C, p + "gate_decisions", "Promotion gate decisions, by outcome.", "outcome",
                      {"promote": promotions, "keep": max(0, evaluations - promotions)})
        yield _family(C, p + "promotions", "Versions promoted.", values=promotions)
        yield _family(G, p + "selection_hint_labels", "Predicted labels the selection hint in force asks the cameras "
                      "for more of (0: none; hints.enabled).", values=len(svc.hint_in_force))
        yield _family(C, p + "selection_hint_changes", "Selection hints published or withdrawn (not renewals).",
                      values=svc.hint_changes)
        yield _family(C, p + "paired_promotions", "Versions promoted although behind the deployed one by more than "
                      "eval.max_regression on the recent slice, because the paired test (eval.paired) found the loss "
                      "within chance.", values=c.get("paired_promotions", 0))
        q = svc.quarantine_counts()
        yield _family(G, p + "quarantined_batches", "Batches set aside because their update failed, by state.",
                      "state", q)
        yield _family(C, p + "undecodable_samples", "Samples skipped by an update: image not decodable.",
                      values=c.get("undecodable", 0))
        yield _family(C, p + "retention_deleted", "Unlabelled samples deleted by retention.",
                      values=c.get("retention_deleted", 0))
        mem = svc.strategy.memory
        yield _family(G, p + "replay_rows", "Rows in the replay memory.", values=len(mem))
        yield _family(G, p + "replay_rows_without_logits", "Replay rows with no stored logits: rows distillation "
                      "cannot use (all of them when the strategy does not distil).", values=mem.rows_without_logits)
        yield _family(C, p + "distill_targets_filled", "Replay rows whose distillation targets the trainer filled in "
                      "from the restored model at a start (a memory saved without them).",
                      values=c.get("distill_targets_filled", 0))
        degraded = svc.degraded
        yield _family(G, p + "degraded", "1 while a part is impaired (reason in /healthz, trainer status and the "
                      "retained trainer/state).", "part", {k: float(k in degraded) for k in _PARTS})
        yield from self._ingest(p)
        yield from self._deployed(p)
        yield _family(G, p + "loop_age_seconds", "Seconds since the update loop last came round.",
                      values=svc.loop_age())

    def _ingest(self, p: str) -> Iterator[Metric]:
        ing = self.svc.ingestor
        if ing is None:
            return
        s = ing.stats
        depth, nbytes = ing.queue_depth()
        yield _family(CounterMetricFamily, p + "samples_received", "Messages received on dev/+/samples.",
                      values=s.received)
        yield _family(CounterMetricFamily, p + "samples_stored", "New samples stored (then acknowledged).",
                      values=s.stored)
        yield _family(CounterMetricFamily, p + "samples_duplicate", "Samples received again (redeliveries).",
                      values=s.duplicates)
        yield _family(CounterMetricFamily, p + "store_write_errors", "Failed store writes (retried; nothing "
                      "acknowledged meanwhile).", values=s.write_errors)
        yield _family(GaugeMetricFamily, p + "ingest_queue_depth", "Messages received, not yet stored.", values=depth)
        yield _family(GaugeMetricFamily, p + "ingest_queue_bytes", "Bytes received, not yet stored.", values=nbytes)
        yield _family(GaugeMetricFamily, p + "ingest_oldest_wait_seconds", "Age of the oldest message not yet "
                      "stored and acknowledged.", values=ing.oldest_wait())
        yield _family(GaugeMetricFamily, p + "mqtt_connected", "1 while connected to the broker.",
                      values=float(ing.connected.is_set()))

    def _deployed(self, p: str) -> Iterator[Metric]:
        h = self.svc.model_health
        if not h:
            return
        yield InfoMetricFamily(p + "deployed_model", "The promoted version the gate last judged.",
                               value={"version": str(h["version"])})
        yield _family(GaugeMetricFamily, p + "deployed_accuracy", "Accuracy of the deployed version on the held-out "
                      "set.", values=h["accuracy"])
        yield _family(GaugeMetricFamily, p + "deployed_chance_accuracy", "Accuracy of always answering the most "
                      "frequent class on the same set.", values=h["chance"])
        yield _family(GaugeMetricFamily, p + "deployed_at_chance", "1 when the deployed version is no better than "
                      "chance or predicts a single class.", values=float(h["at_chance"]))


class _OneThread(Collector):
    """Runs ``inner.collect`` on one long-lived worker thread.

    The shared :class:`MetricsServer` answers each request on a thread of its own, and the store gives each
    thread its own SQLite connection (kept until the store closes): a thread per scrape would add one
    connection per scrape. One worker keeps it to one, and a read stuck on a lock is cut off after
    ``TIMEOUT_S`` instead of piling up threads.
    """

    def __init__(self, inner: Collector) -> None:
        self.inner = inner
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="trainer-metrics-read")

    def collect(self) -> Iterator[Metric]:
        return iter(self.call(lambda: list(self.inner.collect())))

    def call(self, fn: Callable[[], T]) -> T:
        """``fn()`` on the worker thread (TimeoutError after ``TIMEOUT_S``)."""
        return self._pool.submit(fn).result(TIMEOUT_S)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


class TrainerMetricsServer(MetricsServer):
    """The shared server with the trainer's ``/metrics`` (its collector and the process's CPU/memory) and
    ``/healthz`` (``service.health``), both read on the collector's one worker thread."""

    def __init__(self, service: "TrainerService", host: str = "127.0.0.1", port: int = DEFAULT_PORT) -> None:
        self._reader = _OneThread(TrainerCollector(service))
        registry = CollectorRegistry()
        registry.register(self._reader)
        registry.register(ProcessCollector(registry=None))  # process_cpu_seconds_total, resident memory, fds
        super().__init__(make_wsgi_app(registry), lambda: self._reader.call(service.health), host, port,
                         name="edgeloop trainer")

    def stop(self) -> None:
        super().stop()
        self._reader.close()
