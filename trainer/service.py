"""The trainer loop: labelled samples -> buffered importance-weighted updates -> gate -> export -> register.

One tick (:meth:`TrainerService.step`):

1. the labeller labels what it can (oracle / queue / import, :mod:`trainer.labelers`);
2. new labelled *training* samples (``label_seq`` above what the learner has consumed) join the buffer;
3. when the buffer holds B samples, or T seconds passed since its oldest arrived (and at least
   ``min_batch``), the first B become one update: ``strategy.update(batch, steps=K)``, mixing them with
   replay memory and weighting each new sample by ``min(1/p_select, w_max)`` (the strategy does that with
   :mod:`trainer.weighting`). A label the model has never seen grows the head first;
4. every ``eval.every`` updates the candidate is evaluated on the held-out slice (class-stratified,
   assigned once at labelling time, never trained on) *and so is the best promoted version, on the same
   slice* (its ONNX file, with onnxruntime) -- numbers from different test sets are not comparable. The
   candidate is promoted unless it regresses on the recent uploads or forgets too much of the whole set
   (:func:`trainer.evaluate.two_slice_gate`); every decision is logged and appended to
   ``decisions.jsonl`` with its numbers;
5. a promoted candidate is exported (ONNX + metadata: parent, labels, samples seen, metrics), registered,
   announced (callback ``on_promoted`` and a retained ``{prefix}/trainer/promoted`` message);
6. a checkpoint is written after every update, atomically: model, optimiser, replay memory, strategy
   state and counters including the last ``label_seq`` trained on -- *before* the gate, so a version is only
   ever promoted from a model whose checkpoint is on disk.

Resume after ``kill -9``: the checkpoint and the counters in it are one file, replaced atomically, so the
learner restarts exactly after its last completed update; labelled samples after that ``label_seq`` (the
buffer at the time of the kill) are read again from the store and trained once. Nothing labelled is lost
(labels are in the store, which is durable before the sample is even acknowledged), nothing is trained
twice.

Faults, each of which used to wedge or repeat work:

- an update that raises or leaves non-finite weights: the learner is restored from its checkpoint (the state
  before the batch), the batch is *quarantined* with the reason (:mod:`trainer.quarantine`) and the learner
  moves on; a person may retry or drop it (``edgeloop trainer quarantine``);
- a checkpoint that cannot be written (a full disk): the update stays done in memory, its batch is not taken
  again, nothing is evaluated or promoted, and the save is retried every tick until it succeeds; meanwhile
  the trainer is ``degraded`` (retained ``trainer/state`` with the reason, ``/healthz``, ``trainer status``).
  Killed before it succeeds, the trainer resumes from the previous checkpoint and trains the batch once;
- ingestion that cannot store (a full disk) stops acknowledging and reports ``degraded`` the same way
  (:mod:`trainer.ingest`); both clear by themselves when space returns.

One process per state directory (:mod:`trainer.statelock`); a second one is refused with the holder's pid.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from protocol.memory import trim_heap
from protocol.messages import P_SELECT_MIN
from protocol.model_meta import ModelMeta
from protocol.reports import SelectionHint, State, encode_report
from protocol.topics import Topics

from . import quarantine, retention, torch_cpu
from .announce import Announcer
from .checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from .config import TrainerConfig
from .evaluate import chance_check, onnx_argmax, onnx_session, predict, two_slice_gate
from .hints import Hint, HintPolicy
from .export import export_onnx
from .images import UPLOAD_FORMATS, InputFormat, max_image_size, preprocess_bytes
from .ingest import describe_write_error
from .labelers import Labeller, make_labeller
from .nets import Classifier
from .prefix_cache import PrefixCache
from .registry import Registry
from .statelock import StateLock
from .store import SampleStore, StoredSample
from .strategies import LabelledBatch, make_strategy
from .weighting import selection_weights

log = logging.getLogger(__name__)

__all__ = ["TrainerService", "HeldOut", "NotBootstrapped", "UpdateFailed", "PromotedHook",
           "promoted_topic", "HISTORY_LIMIT", "TIMELINE_FILE", "HEALTH_FILE"]

#: (version, ONNX path, metrics) -> None; called from the service thread after registration.
PromotedHook = Callable[[str, Path, dict[str, Any]], None]
#: Update records kept in the checkpoint (enough to audit "every sample trained exactly once").
HISTORY_LIMIT = 10_000
#: One JSON line per update in the state dir: wall-clock stage boundaries and the samples it trained on.
#: Why: "how long until a labelled frame is in a deployed model" (bench/freshness.py) needs to know which
#: update first trained on a sample and when that update's training, gate, export and announcement ended;
#: the checkpoint's history has the label_seq ranges but no times. Append-only, a few hundred bytes per update.
TIMELINE_FILE = "timeline.jsonl"
#: The running service's live figures (degraded reasons, label queue, quarantine, deployed-model health),
#: rewritten every few seconds, so that ``edgeloop trainer status`` (another process) can show them.
HEALTH_FILE = "health.json"
#: Quarantined batches retried, remembered in the checkpoint (enough to never train one twice).
RETRIED_LIMIT = 1000


class HeldOut(NamedTuple):
    """The held-out set the gate judges on: inputs, label names, and how many of them (the last ones)
    are held-out uploads rather than the bootstrap slice."""

    x: torch.Tensor
    names: list[str]
    n_uploaded: int
    keys: tuple[Any, ...] = ()  # one per input: ("boot", i) or the sample's rowid (caches key on it)
    p_select: tuple[float, ...] = ()  # one per held-out upload: its selection probability at the camera


class NotBootstrapped(RuntimeError):
    """The state directory has no checkpoint: run ``edgeloop trainer bootstrap`` first."""


class UpdateFailed(RuntimeError):
    """An update left the model unusable (a non-finite loss or weight)."""


def promoted_topic(topics: Topics) -> str:
    """Retained notice of the newest promoted version (protocol/promotion.py; bytes: trainer/announce.py)."""
    return topics.trainer_promoted()


def make_optimizer(name: str, params: Any, lr: float) -> torch.optim.Optimizer:
    """The update optimiser; SGD with momentum is the continual-learning default (Adam's moments go stale)."""
    if name == "adam":
        return torch_cpu.adam(params, lr)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9)
    raise ValueError(f"unknown optimizer {name!r}; use sgd or adam")


#: The update buffer holds at most this many batches (B) of labelled rows; the rest waits in the store.
MAX_BUFFERED_BATCHES = 8


class TrainerService:
    """The central learner. Programmatic use (what ``edgeloop trainer run`` and the demo do)::

        cfg = load_config(TrainerConfig, overrides={"state_dir": "state", "mqtt.url": "mqtt://127.0.0.1:1883"})
        svc = TrainerService(cfg, on_promoted=lambda version, path, metrics: ...)
        svc.start()          # background thread; or svc.run() to block
        ...
        svc.stop()

    ``labeller`` overrides the one the config describes; ``mqtt.url: null`` runs without ingestion
    (labels and samples come from the store, e.g. filled by another process or a test).
    """

    def __init__(self, config: TrainerConfig, *, on_promoted: PromotedHook | None = None,
                 labeller: Labeller | None = None, exporter: str = "dynamo") -> None:
        self.config = config
        self.state_dir = Path(config.state_dir)
        self.on_promoted = on_promoted
        self.exporter = exporter
        self.topics = Topics(config.mqtt.topic_prefix)
        torch.set_num_threads(max(1, config.torch_threads))
        torch.manual_seed(config.update.seed)
        if load_checkpoint(self.state_dir) is None:
            raise NotBootstrapped(f"no checkpoint in {self.state_dir}: run `edgeloop trainer bootstrap` first")
        self._state_lock = StateLock(self.state_dir).acquire()
        try:
            ckpt = load_checkpoint(self.state_dir)  # again: read under the lock
            assert ckpt is not None
            self._restore(ckpt)
            self._build(labeller)
        except BaseException:
            self._state_lock.release()
            raise
        log.info("trainer state %s: %s, %d classes %s, checkpoint generation %d, %d samples seen, last label_seq %d",
                 self.state_dir, self.arch, len(self.labels), self.labels, self.generation,
                 self.counters["samples_seen"], self.counters["label_seq"])

    def _restore(self, ckpt: Checkpoint) -> None:
        """The learner as the checkpoint left it: model, strategy (optimiser, replay memory), counters.

        The strategy's own state (counters, generator) is restored only when the checkpoint was written by
        the same strategy and optimiser; otherwise the model and the memory carry over and the rest starts
        fresh (a changed ``update.strategy`` or ``update.optimizer``).
        """
        u = self.config.update
        self.arch = ckpt.arch
        self.labels: list[str] = list(ckpt.labels)
        self.fmt = InputFormat.from_dict(ckpt.extra["input"])
        self.model = ckpt.build_model()
        opt_name = str(ckpt.extra.get("optimizer", u.optimizer))
        if opt_name != u.optimizer:
            log.info("optimizer changed from %s to %s: starting it fresh", opt_name, u.optimizer)
        self.strategy = make_strategy(
            u.strategy, self.model, lambda p: make_optimizer(u.optimizer, p, u.lr), config=self.config.strategy,
            capacity=u.replay_size, policy=u.replay, seed=u.seed,
        )
        strat_state = ckpt.extra.get("strategy")
        if strat_state is not None and strat_state.get("name") == self.strategy.name and opt_name == u.optimizer:
            self.strategy.load_state_dict({**strat_state, "model": ckpt.model_state, "optimizer": ckpt.optimizer_state,
                                           "memory": ckpt.replay_state, "num_classes": len(self.labels)})
        else:
            ckpt.restore(self.model)
            if self.strategy.memory is not None and ckpt.replay_state is not None:
                self.strategy.memory.load_state_dict(ckpt.replay_state)
        self.counters: dict[str, Any] = {"label_seq": 0, "samples_seen": 0, "updates": 0, "evaluations": 0,
                                         "promotions": 0, "paired_promotions": 0, "rehearsals": 0,
                                         "rehearsal_steps": 0, **ckpt.counters}
        self._fill_distillation_targets()
        self.history: list[list[int]] = [list(h) for h in ckpt.extra.get("history", [])]
        self.retried: list[int] = [int(q) for q in ckpt.extra.get("retried_quarantine", [])]
        self.generation = ckpt.generation

    def _fill_distillation_targets(self) -> None:
        """Give every replayed row a distillation target when the strategy distils and the restored memory has none.

        The checkpoint's memory settings win on restore, and a memory written without logits (a bootstrap from
        before it stored them, a state first run with a strategy that does not distil) would leave a distilling
        strategy without its distillation term for good (README, Adaptation #20). The targets are the restored
        model's logits: for a fresh bootstrap state that is the bootstrap model, whose logits DER stores for the
        rows it memorises. Counted in ``counters["distill_targets_filled"]`` (``edgeloop trainer status``).
        """
        mem = self.strategy.memory
        if mem is None or not type(self.strategy).wants_logits(self.strategy.config) or not mem.rows_without_logits:
            return
        missing = mem.rows_without_logits
        filled = mem.fill_logits(self.strategy.predict_logits, self.model.num_classes)
        self.counters["distill_targets_filled"] = int(self.counters.get("distill_targets_filled", 0)) + filled
        log.info("replay memory restored with %d of %d rows without logits: stored the restored model's logits for "
                 "%d of them as distillation targets for %s", missing, len(mem), filled, self.strategy.name)
        if mem.rows_without_logits:
            log.warning("strategy %s is set to distil replayed logits, but the model's logits for %d of %d replayed "
                        "rows are not finite: those rows are not distilled (distillation is off for them in this run)",
                        self.strategy.name, mem.rows_without_logits, len(mem))

    def _build(self, labeller: Labeller | None) -> None:
        """What the learner works with: the sample store, the labeller, the buffer, caches and thread state.
        The broker connection and the label API come later, in :meth:`open`."""
        config = self.config
        self.store = SampleStore(self.state_dir / "samples", config.ingest.segment_bytes)
        self._registries: dict[int, Registry] = {}  # sqlite3 connections are bound to their thread
        self.labeller = labeller or make_labeller(
            config.labeler.kind, delay_s=config.labeler.delay_s, noise=config.labeler.noise,
            seed=config.labeler.seed, csv_path=config.labeler.csv, heldout=config.eval.heldout,
        )
        self._buffer: list[StoredSample] = []
        self._fetched_seq = int(self.counters["label_seq"])
        self._buffer_since: float | None = None
        self._heldout_cache: dict[int, tuple[torch.Tensor, str, float]] = {}
        self._ref_cache: tuple[str, dict[Any, str]] = ("", {})  # deployed version -> its prediction per held-out key
        self.max_image = max_image_size(self.fmt, config.ingest.max_image_side)
        self._degraded: dict[str, str] = {}  # what is impaired -> why (published as trainer/state "degraded")
        self._unsaved: str | None = None     # why the last update's checkpoint could not be written yet
        self._eval_due = False               # the update waiting for a checkpoint is due for the gate
        self._rehearse_left = 0              # rehearsal rounds still allowed before the next update (rehearse_once)
        self.last_work: dict[str, Any] | None = None  # what the last step that worked did: update or rehearsal
        self._retry_marks: list[int] = []    # retried quarantine ids to mark once their checkpoint is written
        self.last_loop = time.monotonic()    # the update loop's last round (/healthz)
        self.model_health: dict[str, Any] | None = None  # the deployed version at chance level? (see _check_deployed)
        self.labels_waiting = self.labels_skipped = 0
        self.hints = HintPolicy(config.hints)  # where a missed class hides (trainer/hints.py)
        self._hint_sent: tuple[Any, float] | None = None  # (boost, expires) last published
        self.hint_changes = 0                  # hints published or withdrawn (not renewals)
        self._next_retention = self._next_report = 0.0
        self.retention_report: dict[str, Any] | None = None
        self.metrics_server = None
        fixed = quarantine.reconcile(self.store, self.retried)
        if fixed:
            log.info("quarantined batches %s were retried before the last stop; marked retried", fixed)
        self._bootstrap_heldout = self._load_bootstrap_heldout()
        self._ort_cache: dict[str, Any] = {}
        self._prefix_cache = PrefixCache()  # the frozen blocks' outputs per held-out key (strategy.frozen_blocks)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.RLock()
        self.last_decision: dict[str, Any] | None = None
        self._marks: dict[str, float] = {}  # wall-clock stage ends of the update in progress (timeline.jsonl)
        self.boot = int(self.store.get_meta("trainer_boot", "0") or 0) + 1
        self.store.set_meta("trainer_boot", str(self.boot))
        self._seq = 0
        self.ingestor = None
        self.label_server = None
        self.announcer = Announcer(self.topics, self.state_dir, config.model_id)

    # -- lifecycle ---------------------------------------------------------------------------------------
    def open(self) -> "TrainerService":
        """Connect to the broker (if configured) and start the label API (if configured). Idempotent."""
        cfg = self.config
        if cfg.mqtt.url and self.ingestor is None:
            from .ingest import Ingestor  # paho only when ingesting

            m = cfg.mqtt
            self.ingestor = Ingestor(
                self.store, m.url, topics=self.topics, client_id=m.client_id, shared_group=m.shared_group,
                will=(self.topics.trainer_state(), self._state_payload("offline"), 1, True),
                keepalive=m.keepalive_s, username=m.username, password=m.password, ca=m.ca_file, cert=m.cert_file,
                key=m.key_file, max_message_bytes=cfg.ingest.max_message_bytes,
                max_image_bytes=cfg.ingest.max_image_bytes, batch_max=cfg.ingest.batch_max,
                linger_ms=cfg.ingest.linger_ms, max_delay_ms=cfg.ingest.max_delay_ms, max_image_size=self.max_image,
                queue_max=cfg.ingest.queue_max, queue_max_bytes=cfg.ingest.queue_max_bytes,
                device_rate=cfg.ingest.device_rate, device_burst=cfg.ingest.device_burst,
                on_connect=self._on_broker_connect,
                on_degraded=lambda reason: self._set_degraded("ingest", reason),
            ).start()
        if cfg.metrics.enabled and self.metrics_server is None:
            from .metrics import TrainerMetricsServer  # prometheus_client only when serving metrics

            server = TrainerMetricsServer(self, cfg.metrics.host, cfg.metrics.port)
            try:
                log.info("metrics on %s/metrics, health on %s/healthz", server.start(), server.url)
                self.metrics_server = server
            except OSError as e:  # learning matters more than its metrics: say so loudly and go on
                log.error("cannot serve metrics on %s:%d (%s): running without /metrics and /healthz; set "
                          "metrics.port (0 = any free port) or metrics.enabled: false", cfg.metrics.host,
                          cfg.metrics.port, e)
        api_port = cfg.labeler.api_port
        if cfg.labeler.kind == "queue" and api_port is None:
            api_port = 0
        if api_port is not None and self.label_server is None:
            from .label_api import LabelServer

            self.label_server = LabelServer(self.store, cfg.labeler.api_host, api_port, heldout=cfg.eval.heldout,
                                            known_labels=lambda: list(self.labels)).start()
        return self

    def start(self) -> "TrainerService":
        """:meth:`open`, then run the loop in a background thread."""
        self.open()
        self._thread = threading.Thread(target=self._run_loop, name="trainer-service", daemon=True)
        self._thread.start()
        return self

    def run(self, duration: float | None = None, max_updates: int | None = None) -> None:
        """Run the loop in this thread until :meth:`stop`, ``duration`` seconds or ``max_updates`` updates."""
        self.open()
        self._run_loop(duration, max_updates)

    def _run_loop(self, duration: float | None = None, max_updates: int | None = None) -> None:
        end = None if duration is None else time.monotonic() + duration
        start_updates = self.counters["updates"]
        backoff = self.config.poll_s
        while not self._stop.is_set():
            self.last_loop = time.monotonic()
            try:
                worked = self.step()
                self._housekeeping()
                self._set_degraded("learner", None)
                backoff = self.config.poll_s
            except Exception as e:  # a full disk while labelling, an unreadable pack file...: say so, retry
                reason = describe_write_error(e)
                if self._degraded.get("learner") != reason:
                    log.exception("trainer step failed (%s); retrying with backoff", reason)
                self._set_degraded("learner", reason)
                worked, backoff = False, min(max(backoff, self.config.poll_s) * 2, 5.0)
            if max_updates is not None and self.counters["updates"] - start_updates >= max_updates:
                break
            if end is not None and time.monotonic() >= end:
                break
            if not worked:
                self._stop.wait(backoff)

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the loop (after the update in progress), publish offline, close everything, release the state."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)
        if self.metrics_server is not None:
            self.metrics_server.stop()
            self.metrics_server = None
        if self.label_server is not None:
            self.label_server.stop()
            self.label_server = None
        if self.ingestor is not None:
            self.ingestor.publish(self.topics.trainer_state(), self._state_payload("offline"), 1, True)
            self.ingestor.stop()
            self.ingestor = None
        for reg in list(self._registries.values()):
            try:
                reg.close()
            except Exception:  # a connection of another (finished) thread: sqlite refuses; it dies with it
                pass
        self._registries.clear()
        self.store.close()
        self._state_lock.release()

    def _on_broker_connect(self, ing: Any) -> None:
        """Every (re)connection: say online (or degraded), and put the kept promoted versions on the broker
        again."""
        self._publish_state(ing)
        self.announcer.republish_soon(ing.publish)

    def _state_payload(self, state: str, reason: str | None = None) -> bytes:
        self._seq += 1
        return encode_report(State(device="trainer", state=state, boot=self.boot, reason=reason))

    # -- degraded state ------------------------------------------------------------------------------------
    @property
    def degraded(self) -> dict[str, str]:
        """What is impaired right now and why (empty when healthy)."""
        return dict(self._degraded)

    def _set_degraded(self, part: str, reason: str | None) -> None:
        """Record (or clear) why ``part`` (ingest, checkpoint, learner) is impaired; publish on a change."""
        if self._degraded.get(part) == reason:
            return
        if reason is None:
            del self._degraded[part]
            log.info("%s recovered%s", part, "" if self._degraded else "; trainer healthy again")
        else:
            self._degraded[part] = reason
            log.warning("trainer degraded: %s: %s", part, reason)
        if self.ingestor is not None:
            self._publish_state(self.ingestor)

    def _publish_state(self, ing: Any) -> None:
        """Retained trainer/state: online, or degraded with every reason."""
        why = "; ".join(f"{k}: {v}" for k, v in sorted(self._degraded.items()))
        payload = self._state_payload("degraded", why[:1000]) if why else self._state_payload("online")
        ing.publish(self.topics.trainer_state(), payload, 1, True)

    # -- one tick ----------------------------------------------------------------------------------------
    def step(self, force: bool = False) -> bool:
        """Label, fill the buffer, and run one update if it is due (or ``force`` and not empty); first, a
        checkpoint that could not be written is written, and a quarantined batch a person asked to retry is."""
        with self._lock:
            if self._unsaved is not None:
                if not self._save_checkpoint():
                    return False
                if self._eval_due:
                    self.evaluate_and_maybe_promote()
            self.labeller.poll(self.store)
            self._fill_buffer()
            if self._retry_quarantined():
                return True
            if not self._due() and not (force and self._buffer):
                if self._rehearse_left > 0:
                    self.rehearse_once()
                    return True
                return False
            self.update_once()
            return True

    def _fill_buffer(self) -> None:
        """Move newly labelled training rows from the store into the update buffer, at most
        :data:`MAX_BUFFERED_BATCHES` batches of them: a trainer slower than its cameras leaves the rest in the
        store (durable, in labelling order) instead of holding an ever longer list in memory."""
        limit = MAX_BUFFERED_BATCHES * self.config.update.batch
        while len(self._buffer) < limit:
            rows = self.store.labelled_after(self._fetched_seq, limit=min(1000, limit), heldout=None)
            if not rows:
                return
            for r in rows:
                if len(self._buffer) >= limit:
                    return
                self._fetched_seq = r.label_seq  # type: ignore[assignment]
                if r.topk:
                    self.hints.observe(r.labelled_at or time.time(), str(r.label), r.topk[0][0], r.p_select)
                if not r.heldout:
                    if not self._buffer:
                        self._buffer_since = time.monotonic()
                    self._buffer.append(r)

    def _due(self) -> bool:
        u = self.config.update
        if len(self._buffer) >= u.batch:
            return True
        return (len(self._buffer) >= max(1, u.min_batch) and self._buffer_since is not None
                and time.monotonic() - self._buffer_since >= u.wait_s)

    @property
    def registry(self) -> Registry:
        """This thread's registry handle (the service thread, CLIs and hooks may all read it)."""
        tid = threading.get_ident()
        reg = self._registries.get(tid)
        if reg is None:
            reg = self._registries[tid] = Registry(self.state_dir)
        return reg

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    # -- the update -----------------------------------------------------------------------------------------
    def _tensor(self, s: StoredSample) -> torch.Tensor:
        data, _ = self.store.image(s)
        w, h = self.max_image
        return preprocess_bytes(data, self.fmt, (s.width, s.height), s.roi, max_pixels=w * h,
                                formats=tuple(UPLOAD_FORMATS.values()))

    def _class_index(self, label: str) -> int:
        if label not in self.labels:
            self.labels.append(label)
            self.strategy.observe_new_classes(len(self.labels))
            log.info("new class %r: head grown to %d outputs %s", label, len(self.labels), self.labels)
        return self.labels.index(label)

    def update_once(self) -> dict[str, Any]:
        """Train on the first B buffered samples, checkpoint, maybe evaluate/promote. Returns the update record.
        The batch leaves the buffer whatever happens to it: trained, or quarantined."""
        rows = self._buffer[: self.config.update.batch]
        record = self._update(rows)
        del self._buffer[: len(rows)]
        self._buffer_since = time.monotonic() if self._buffer else None
        trim_heap()  # training, export and evaluation freed large buffers: give them back (protocol/memory.py)
        return record

    def _update(self, rows: list[StoredSample], retry_of: int | None = None) -> dict[str, Any]:
        u = self.config.update
        t_start = time.time()
        self._marks = {}
        first, last = int(rows[0].label_seq), int(rows[-1].label_seq)  # type: ignore[arg-type]
        t0 = time.perf_counter()
        try:
            xs, ys, ps = self._batch_tensors(rows)
            result = self._train(xs, ys, ps)
        except Exception as e:
            return self._quarantine(rows, e, retry_of)
        t_trained = time.time()
        self.counters["label_seq"] = max(int(self.counters["label_seq"]), last)  # a retried batch lies behind it
        self.counters["samples_seen"] += len(xs)
        self.counters["updates"] += 1
        self.history.append([self.counters["updates"], first, last, len(rows)])
        self.history = self.history[-HISTORY_LIMIT:]
        if retry_of is not None:
            self.retried = (self.retried + [retry_of])[-RETRIED_LIMIT:]
            self._retry_marks.append(retry_of)
        log.info("update %d: %d new samples (label_seq %d..%d%s), %d steps, loss %.4f, %.2fs",
                 self.counters["updates"], len(xs), first, last,
                 f", quarantined batch {retry_of} retried" if retry_of is not None else "", u.steps,
                 result.get("loss", float("nan")), time.perf_counter() - t0)
        self._eval_due = self.counters["updates"] % max(1, self.config.eval.every) == 0
        self._rehearse_left = u.rehearse_rounds if u.rehearse_steps > 0 else 0
        self.last_work = {"kind": "update", "steps": u.steps}
        decision = None
        if self._save_checkpoint() and self._eval_due:  # never promote what is not on disk
            decision = self.evaluate_and_maybe_promote()
        self._write_timeline(t_start, t_trained, first, last, rows, len(xs), decision)
        return {"update": self.counters["updates"], "first": first, "last": last, "n": len(xs),
                "loss": result.get("loss"), "decision": decision}

    def rehearse_once(self) -> dict[str, Any]:
        """One round of ``update.rehearse_steps`` replay-only optimiser steps, then checkpoint and gate.

        Why: the trainer waits most of its time for labels (in the demo an update, its evaluation and export
        take ~3 s of every ~11), and a learner on a label budget does better when it rehearses while it waits
        (the label-budget benchmark's 20 % result). Replay is class-balanced, so a new class's few labels are a
        fair share of every step. Measured in the loop (README, Adaptation #39): on the demo's 127 s stream it
        buys nothing, and with ``strategy.augment: dihedral`` its rounds deepen the new class's trade against
        the old ones; on a 254 s stream with dihedral it gave the best median measured (83.2 %). Bounded: at most ``rehearse_rounds`` rounds per update, so a line without
        new labels leaves the CPU alone. A round that fails (non-finite loss or weight) is undone from the
        checkpoint and the rounds stop until the next update; it is counted (``rehearsals_failed``).
        """
        u = self.config.update
        self._rehearse_left -= 1
        self._marks = {}
        t0, t_start = time.perf_counter(), time.time()
        try:
            result = self.strategy.rehearse(u.rehearse_steps)
            loss = result.get("loss")
            if result.get("steps") and self._left_nonfinite(loss):
                raise UpdateFailed(f"rehearsal left a non-finite loss or weight ({loss})")
        except Exception as e:
            log.error("rehearsal after update %d failed (%s): the learner goes back to its last checkpoint and "
                      "rehearses no more until the next update", self.counters["updates"], e, exc_info=e)
            ckpt = load_checkpoint(self.state_dir)
            if ckpt is None:
                raise NotBootstrapped(f"checkpoint of {self.state_dir} disappeared") from e
            self._restore(ckpt)  # (the counters too: count the failure after)
            self.counters["rehearsals_failed"] = int(self.counters.get("rehearsals_failed", 0)) + 1
            self._rehearse_left = 0
            self.last_work = {"kind": "rehearsal", "steps": 0, "failed": True}
            return {"rehearsal": None, "steps": 0, "decision": None, "error": str(e)}
        steps = int(result.get("steps", 0))
        self.last_work = {"kind": "rehearsal", "steps": steps}
        if steps == 0:  # an empty memory: nothing to rehearse
            self._rehearse_left = 0
            return {"rehearsal": None, "steps": 0, "decision": None}
        self.counters["rehearsals"] = int(self.counters.get("rehearsals", 0)) + 1
        self.counters["rehearsal_steps"] = int(self.counters.get("rehearsal_steps", 0)) + steps
        log.info("rehearsal %d after update %d: %d replay steps, loss %.4f, %.2fs", self.counters["rehearsals"],
                 self.counters["updates"], steps, result.get("loss", float("nan")), time.perf_counter() - t0)
        self._eval_due = True
        t_trained = time.time()
        decision = self.evaluate_and_maybe_promote() if self._save_checkpoint() else None
        self._write_timeline(t_start, t_trained, 0, 0, [], 0, decision, rehearsal=int(self.counters["rehearsals"]))
        return {"rehearsal": self.counters["rehearsals"], "steps": steps, "loss": result.get("loss"),
                "decision": decision}

    def _batch_tensors(self, rows: list[StoredSample]) -> tuple[list[torch.Tensor], list[int], list[float]]:
        xs, ys, ps = [], [], []
        for s in rows:
            try:
                x = self._tensor(s)
            except Exception as e:  # an undecodable (or oversized) image cannot be trained on; skip it, say so
                log.warning("sample %s: cannot decode its image (%s); skipped", s.sample_id, e)
                self.counters["undecodable"] = self.counters.get("undecodable", 0) + 1
                continue
            xs.append(x)
            ys.append(self._class_index(str(s.label)))
            ps.append(min(max(float(s.p_select), P_SELECT_MIN), 1.0))  # stored before the floor existed: clip
        return xs, ys, ps

    def _train(self, xs: list[torch.Tensor], ys: list[int], ps: list[float]) -> dict[str, Any]:
        """The strategy's update; :class:`UpdateFailed` if it leaves a non-finite loss or weight behind."""
        if not xs:
            return {"loss": float("nan")}
        batch = LabelledBatch(torch.stack(xs), torch.tensor(ys), torch.tensor(ps, dtype=torch.float64))
        result = self.strategy.update(batch, steps=self.config.update.steps)
        loss = result.get("loss")
        if self._left_nonfinite(loss):
            raise UpdateFailed(f"the update left a non-finite {'loss' if loss is not None else 'weight'} ({loss})")
        return result

    def _left_nonfinite(self, loss: Any) -> bool:
        """Did the last optimiser steps leave a non-finite loss or weight behind?"""
        return (isinstance(loss, float) and not math.isfinite(loss)) or not all(
            bool(torch.isfinite(p).all()) for p in self.model.parameters())

    def _quarantine(self, rows: list[StoredSample], exc: Exception, retry_of: int | None) -> dict[str, Any]:
        """Set a failed batch aside: restore the learner from its checkpoint (the state before the batch),
        record the batch and its reason, move ``label_seq`` past it and checkpoint that."""
        reason = f"{type(exc).__name__}: {exc}"
        log.error("update on label_seq %d..%d failed (%s): batch quarantined; the learner goes on from its last "
                  "checkpoint. `edgeloop trainer quarantine list|retry ID|drop ID`", rows[0].label_seq,
                  rows[-1].label_seq, reason, exc_info=exc)
        ckpt = load_checkpoint(self.state_dir)
        if ckpt is None:
            raise NotBootstrapped(f"checkpoint of {self.state_dir} disappeared") from exc
        self._restore(ckpt)
        if retry_of is not None:
            entry = quarantine.mark(self.store, retry_of, "quarantined", reason, failed=True)
        else:
            entry = quarantine.add(self.store, rows, reason)
        self.counters["label_seq"] = max(int(self.counters["label_seq"]), int(rows[-1].label_seq))  # type: ignore[arg-type]
        self.counters["quarantined"] = self.counters.get("quarantined", 0) + (retry_of is None)
        self._save_checkpoint()
        return {"update": self.counters["updates"], "first": rows[0].label_seq, "last": rows[-1].label_seq, "n": 0,
                "loss": None, "decision": None, "quarantined": entry.id, "reason": reason}

    def _retry_quarantined(self) -> bool:
        """Train one batch a person asked to retry (``edgeloop trainer quarantine retry ID``), if any."""
        for entry in quarantine.entries(self.store, "retry"):
            if entry.id in self.retried:  # trained already (a crash before its status was updated)
                quarantine.mark(self.store, entry.id, "retried")
                continue
            rows = [r for r in (self.store.get_rowid(rowid) for rowid, _ in entry.samples)
                    if r is not None and r.label is not None]
            if not rows:
                quarantine.mark(self.store, entry.id, "dropped", "its samples are no longer in the store")
                continue
            log.info("retrying quarantined batch %d (%d samples, label_seq %d..%d)", entry.id, len(rows),
                     entry.first_seq, entry.last_seq)
            self._update(sorted(rows, key=lambda r: r.label_seq or 0), retry_of=entry.id)
            return True
        return False

    def _write_timeline(self, t_start: float, t_trained: float, first: int, last: int, rows: list[StoredSample],
                        n_trained: int, decision: dict[str, Any] | None, rehearsal: int | None = None) -> None:
        """Append this update's stage boundaries (wall clock, ``time.time()``) to ``timeline.jsonl``.

        A rehearsal round writes one too (``rehearsal``: its number; ``update``: the last update before it; no
        samples): a version it promotes holds every update so far, and a reader that knows only the updates' versions
        (``bench freshness``) took the cameras running it for cameras running nothing new.

        ``start`` is when the update took its batch from the buffer (before decoding images), ``trained``
        after the optimiser steps, ``evaluated`` after the gate decision, ``exported``/``registered``/
        ``announced`` after the ONNX export, the registry row and the announcement (retained notice +
        ``on_promoted``), ``checkpointed`` after the checkpoint. ``samples`` are the ids of the training
        samples in this update's batch (held-out samples in ``first..last`` are never trained on).
        Instrumentation only: a write failure is logged and never stops the learner.
        """
        rec: dict[str, Any] = {
            "update": self.counters["updates"], "first": first, "last": last, "n": n_trained,
            "start": t_start, "trained": t_trained, **self._marks,
            "promote": None if decision is None else bool(decision.get("promote")),
            "version": None if decision is None else decision.get("version"),
            "samples": [s.sample_id for s in rows], **({"rehearsal": rehearsal} if rehearsal is not None else {}),
        }
        try:
            with open(self.state_dir / TIMELINE_FILE, "a", encoding="utf-8") as fh:
                fh.write(json.dumps(rec, default=_json_default) + "\n")
        except OSError as e:
            log.warning("cannot append to %s: %s", TIMELINE_FILE, e)

    def checkpoint(self) -> Path:
        """Save the learner state atomically (model, optimiser, replay, strategy, counters, history)."""
        strat = {k: v for k, v in self.strategy.state_dict().items() if k not in ("model", "optimizer", "memory")}
        path = save_checkpoint(
            self.state_dir, model=self.model, arch=self.arch, labels=self.labels, counters=self.counters,
            optimizer=self.strategy.optimizer, replay=self.strategy.memory,
            extra={"input": self.fmt.as_dict(), "strategy": strat, "optimizer": self.config.update.optimizer,
                   "history": self.history, "in_channels": self.fmt.channels, "retried_quarantine": self.retried},
        )
        self.generation += 1
        return path

    def _save_checkpoint(self) -> bool:
        """:meth:`checkpoint`, reporting a failure instead of raising: the update stays done in memory (its
        batch is never taken again) and the save is retried at every tick until it works."""
        try:
            self.checkpoint()
        except Exception as e:
            reason = describe_write_error(e)
            if self._unsaved != reason:
                log.error("cannot write the checkpoint (%s): keeping the update in memory, promoting nothing until "
                          "it is saved; retrying", reason)
            self._unsaved = reason
            self._set_degraded("checkpoint", reason)
            return False
        self._marks["checkpointed"] = time.time()
        self._unsaved = None
        self._set_degraded("checkpoint", None)
        for qid in self._retry_marks:
            quarantine.mark(self.store, qid, "retried")
        self._retry_marks.clear()
        return True

    # -- evaluation and promotion --------------------------------------------------------------------------
    def _load_bootstrap_heldout(self) -> tuple[torch.Tensor, list[str]] | None:
        p = self.state_dir / "bootstrap_heldout.pt"
        if not p.exists():
            return None
        d = torch.load(p, weights_only=True)
        names = [d["labels"][int(i)] for i in d["y"]]
        return d["x"], names

    def heldout_set(self) -> HeldOut:
        """Held-out inputs (float [0, 1]) and their label names: the bootstrap slice, then the held-out
        labelled uploads in labelling order (how many of those there are is ``n_uploaded``)."""
        xs: list[torch.Tensor] = []
        names: list[str] = []
        if self._bootstrap_heldout is not None:
            bx, bn = self._bootstrap_heldout
            xs.append(bx.float() / 255.0 if bx.dtype == torch.uint8 else bx.float())
            names += bn
        keys: list[Any] = [("boot", i) for i in range(len(names))]
        fresh = []
        window = self.store.heldout(newest=self.config.eval.max_heldout)
        for s in window:
            if s.rowid not in self._heldout_cache:
                try:
                    self._heldout_cache[s.rowid] = (self._tensor(s), str(s.label), float(s.p_select))
                except Exception as e:
                    log.warning("held-out sample %s: cannot decode (%s); left out", s.sample_id, e)
                    continue
            fresh.append(self._heldout_cache[s.rowid])
            keys.append(s.rowid)
        in_window = {s.rowid for s in window}
        for rowid in [k for k in self._heldout_cache if k not in in_window]:  # bounded: only the window is kept
            del self._heldout_cache[rowid]
        if fresh:
            xs.append(torch.stack([t for t, _, _ in fresh]))
            names += [n for _, n, _ in fresh]
        if not xs:
            return HeldOut(torch.zeros(0, self.fmt.channels, self.fmt.height, self.fmt.width), [], 0)
        return HeldOut(torch.cat(xs), names, len(fresh), tuple(keys), tuple(p for _, _, p in fresh))

    def _upload_weights(self, held: HeldOut) -> list[float]:
        """``min(1/p_select, w_max)`` per held-out upload, as training weighs a new sample (trainer/weighting.py)."""
        return selection_weights(list(held.p_select), getattr(self.strategy.config, "w_max", 10.0)).tolist()

    def _onnx_predict(self, version: str, path: Path, x: torch.Tensor) -> list[str]:
        from .export import read_meta

        if version not in self._ort_cache:
            if len(self._ort_cache) >= 2:  # the deployed version and the one before: each holds its arena
                self._ort_cache.clear()
            self._ort_cache[version] = (onnx_session(path), read_meta(path))
        sess, meta = self._ort_cache[version]
        return [meta.labels[j] for j in onnx_argmax(sess, meta.input_name, meta.output_name, x.numpy())]

    def evaluate_and_maybe_promote(self) -> dict[str, Any]:
        """Gate the current model against the deployed version on the held-out set (the recent uploads and
        the whole set: :func:`~trainer.evaluate.two_slice_gate`); promote it if it passes. The decision is
        logged and appended to ``decisions.jsonl`` with its numbers."""
        ev = self.config.eval
        held = self.heldout_set()
        self.counters["evaluations"] += 1
        decision: dict[str, Any] = {"update": self.counters["updates"], "time": time.time(), "n_heldout": len(held.names)}
        if len(held.names) < max(1, ev.min_heldout):
            decision.update(promote=False, reason=f"only {len(held.names)} held-out samples (< {ev.min_heldout}): "
                            "cannot judge")
            self._marks["evaluated"] = time.time()
            return self._record(decision)
        ref = self.registry.latest_promoted()
        ref_pred = self._reference_predictions(ref, held)
        cand_pred = [self.labels[i] for i in self._candidate_predictions(held)]
        verdict = two_slice_gate(held.names, cand_pred, ref_pred,
                                 self.labels, min(ev.recent, held.n_uploaded), max_regression=ev.max_regression,
                                 max_forgetting=ev.max_forgetting, min_recent=ev.min_recent,
                                 paired=ev.paired, paired_alpha=ev.paired_alpha,
                                 deployed_labels=ref.labels if ref is not None else None,
                                 recent_weights=self._upload_weights(held) if ev.weighted else None)
        if "best" in verdict:
            verdict["best"] = {"version": ref.version, **verdict["best"]}
        decision.update(verdict)
        self._marks["evaluated"] = time.time()
        self._eval_due = False
        if decision["promote"]:
            if "p_worse" in verdict.get("recent", {}):  # behind by more than the allowance; the paired test let it by
                self.counters["paired_promotions"] += 1
            decision["version"] = self.promote(verdict["candidate"], ref.version if ref else None)
        deployed = (decision.get("version"), cand_pred) if decision["promote"] else (ref.version if ref else None, ref_pred)
        if deployed[0] is not None and deployed[1] is not None:
            decision["deployed"] = self._check_deployed(deployed[0], held.names, deployed[1])
        return self._record(decision)

    def _candidate_predictions(self, held: HeldOut) -> np.ndarray:
        """The candidate's predictions on the held-out set; with frozen blocks, their outputs for inputs judged before
        are reused (trainer/prefix_cache.py), so the evaluation costs the blocks that learn."""
        model, n = self.strategy.candidate(), self.strategy.config.frozen_blocks
        if n == 0 or not isinstance(model, Classifier) or len(held.keys) != len(held.names):
            return predict(model, held.x)
        return self._prefix_cache.predict(model, n, held.x, held.keys)

    def _check_deployed(self, version: str, truth: list[str], predicted: list[str]) -> dict[str, Any]:
        """Is the deployed version any better than always answering the most frequent class? A loud warning
        (log, ``trainer status``, metric ``edgeloop_trainer_deployed_at_chance``) when it is not."""
        health = {"version": version, **chance_check(truth, predicted)}
        self.model_health = health
        if health["at_chance"]:
            log.warning("DEPLOYED MODEL %s IS AT CHANCE LEVEL: accuracy %.3f on %d held-out samples vs %.3f for always "
                        "answering the most frequent class; it predicts %d of %d classes (%s). Check the labels, "
                        "the camera and the ROI before trusting its verdicts", version, health["accuracy"],
                        health["n"], health["chance"], health["classes_predicted"], health["classes"],
                        ", ".join(health["predicted"][:5]))
        return health

    def _reference_predictions(self, ref: Any, held: HeldOut) -> list[str] | None:
        """The deployed version's predictions on the held-out inputs (onnxruntime, the file that shipped).

        Scored incrementally: a version's prediction for a held-out sample never changes, so only inputs it
        has not seen yet are run (the cache follows the bounded window and is reset when the version changes).
        """
        if ref is None:
            return None
        if len(held.keys) != len(held.names):  # a HeldOut built without keys: nothing to cache on
            try:
                return self._onnx_predict(ref.version, ref.path, held.x)
            except Exception as e:
                log.warning("cannot re-evaluate deployed %s (%s): judging the candidate on its own", ref.version, e)
                return None
        version, cache = self._ref_cache
        if version != ref.version:
            cache = {}
        keep = set(held.keys)
        cache = {k: v for k, v in cache.items() if k in keep}
        missing = [i for i, k in enumerate(held.keys) if k not in cache]
        try:
            if missing:
                for i, label in zip(missing, self._onnx_predict(ref.version, ref.path, held.x[missing])):
                    cache[held.keys[i]] = label
        except Exception as e:
            log.warning("cannot re-evaluate deployed %s (%s): judging the candidate on its own", ref.version, e)
            return None
        self._ref_cache = (ref.version, cache)
        return [cache[k] for k in held.keys]

    def _record(self, decision: dict[str, Any]) -> dict[str, Any]:
        c = decision.get("candidate") or {}
        log.info("gate after update %d: %s -- accuracy %s macro-F1 %s forgetting %s on %d held-out; %s",
                 decision["update"], "PROMOTE " + decision.get("version", "") if decision["promote"] else "keep",
                 _fmt(c.get("accuracy")), _fmt(c.get("macro_f1")), _fmt(c.get("forgetting")),
                 decision["n_heldout"], decision["reason"])
        with open(self.state_dir / "decisions.jsonl", "a", encoding="utf-8") as fh:
            fh.write(json.dumps(decision, default=_json_default) + "\n")
        self.last_decision = decision
        return decision

    def promote(self, metrics: dict[str, Any], parent: str | None) -> str:
        """Export the current model as the next version, register it as promoted, announce it."""
        version = self.registry.next_version()
        path = self.registry.model_path(version)
        clean = json.loads(json.dumps(metrics, default=_json_default))
        meta = ModelMeta(
            version=version, labels=list(self.labels), width=self.fmt.width, height=self.fmt.height,
            channels=self.fmt.channels, color_order=self.fmt.color_order,
            mean=[0.0] * self.fmt.channels, std=[1.0] * self.fmt.channels,
            roi=list(self.fmt.roi) if self.fmt.roi else None, parent_version=parent, architecture=self.arch,
            samples_seen=int(self.counters["samples_seen"]), metrics=_scalar_metrics(clean), created=time.time(),
        )
        x = self.heldout_set().x
        export_onnx(self.strategy.candidate(), meta, path, exporter=self.exporter, verify_inputs=x[:16] if len(x) else None)  # type: ignore[arg-type]
        self._marks["exported"] = time.time()
        rec = self.registry.register(version, path=path, labels=list(self.labels), parent=parent, metrics=clean,
                                     samples_seen=int(self.counters["samples_seen"]), status="promoted", arch=self.arch)
        self._marks["registered"] = time.time()
        self.counters["promotions"] += 1
        self._announce(version, rec.path, clean, rec.sha256)
        self._marks["announced"] = time.time()
        return version

    def _announce(self, version: str, path: Path, metrics: dict[str, Any], sha256: str) -> None:
        if self.ingestor is not None:  # bytes and notice on the broker (trainer/announce.py)
            try:
                self.announcer.announce(self.ingestor.publish, version)
            except Exception:
                log.exception("announcing %s failed; it is announced again on the next reconnection", version)
        if self.on_promoted is not None:
            try:
                self.on_promoted(version, path, metrics)
            except Exception:
                log.exception("on_promoted hook failed for %s", version)

    # -- status -------------------------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        """Counters, buffer, store and ingestion figures, last gate decision (for CLIs and the demo)."""
        st = {"state_dir": str(self.state_dir), "arch": self.arch, "labels": list(self.labels),
              "counters": dict(self.counters), "buffered": len(self._buffer), "store": self.store.stats(),
              "last_decision": self.last_decision, **self.live()}
        if self.ingestor is not None:
            st["ingest"] = self.ingestor.stats.as_dict()
        if self.label_server is not None:
            st["label_api"] = self.label_server.url
        latest = self.registry.latest_promoted()
        st["promoted"] = latest.version if latest else None
        return st


    def live(self) -> dict[str, Any]:
        """What only the running process knows (also written to ``health.json`` for ``trainer status``)."""
        q = quarantine.entries(self.store, ("quarantined", "retry"))
        out: dict[str, Any] = {
            "pid": os.getpid(), "time": time.time(), "state": "degraded" if self._degraded else "online",
            "degraded": dict(self._degraded), "labeller": self.labeller.name,
            "labels": {"waiting": self.labels_waiting, "skipped_no_truth": self.labels_skipped},
            "quarantine": [e.as_dict() for e in q], "deployed": self.model_health, "retention": self.retention_report,
        }
        if self.ingestor is not None:
            depth, nbytes = self.ingestor.queue_depth()
            out["ingest_queue"] = {"messages": depth, "bytes": nbytes, "oldest_wait_s": self.ingestor.oldest_wait()}
        return out

    def quarantine_counts(self) -> dict[str, int]:
        """Quarantined batches waiting for a decision, and those a person asked to retry."""
        rows = self.store.connection().execute("SELECT status, COUNT(*) FROM quarantine GROUP BY status").fetchall()
        counts = dict(rows)
        return {k: int(counts.get(k, 0)) for k in ("quarantined", "retry")}

    def loop_age(self) -> float:
        return time.monotonic() - self.last_loop

    def health(self) -> tuple[bool, dict[str, Any]]:
        """For ``/healthz``: unhealthy when ingestion holds a sample unacknowledged longer than
        ``metrics.ingest_stall_s`` (wedged, or a full disk) or the update loop has not come round for
        ``metrics.loop_stall_s``."""
        m = self.config.metrics
        problems = []
        loop_age = time.monotonic() - self.last_loop
        if loop_age > m.loop_stall_s:
            problems.append(f"update loop stalled for {loop_age:.0f} s")
        wait = self.ingestor.oldest_wait() if self.ingestor is not None else 0.0
        if wait > m.ingest_stall_s:
            problems.append(f"ingestion has not acknowledged a sample for {wait:.0f} s"
                            + (f" ({self._degraded['ingest']})" if "ingest" in self._degraded else ""))
        return not problems, {"reason": "; ".join(problems) or None, "degraded": dict(self._degraded),
                              "loop_age_s": round(loop_age, 1), "ingest_oldest_wait_s": round(wait, 1)}

    def _housekeeping(self) -> None:
        """Between ticks: retention (every ``retention.every_s``), the label counts, ``health.json``."""
        now = time.monotonic()
        if now >= self._next_retention:
            self._next_retention = now + self.config.retention.every_s
            rep = retention.enforce(self.store, self.config.retention)
            self.retention_report = {"deleted": rep.deleted, "reclaimed_bytes": rep.reclaimed_bytes,
                                     "compacted": rep.compacted, "over_limit": rep.over_limit, "time": time.time()}
            self.counters["retention_deleted"] = self.counters.get("retention_deleted", 0) + rep.total_deleted
        if now >= self._next_report:
            self._next_report = now + 5.0
            self._count_labels()
            self._write_health()
        if self.ingestor is not None:
            self.publish_hint(self.ingestor.publish)

    # -- the selection hint ------------------------------------------------------------------------------
    def selection_hint(self, now: float | None = None) -> Hint | None:
        """The hint the labelled uploads call for now (None when ``hints.enabled`` is off or nothing is
        missed; see trainer/hints.py)."""
        if not self.config.hints.enabled:
            return None
        return self.hints.hint(time.time() if now is None else now)

    @property
    def hint_in_force(self) -> dict[str, float]:
        """The boost of the hint last published and not withdrawn (empty: none)."""
        sent = self._hint_sent
        return dict(sent[0]) if sent is not None and time.time() < sent[1] else {}

    def publish_hint(self, publish: Callable[[str, bytes, int, bool], Any]) -> Hint | None:
        """Publish the hint (retained) when it changes, renew it before it lapses, withdraw it (an empty
        ``boost``) once nothing is missed; returns the hint in force."""
        now = time.time()
        h = self.selection_hint(now)
        sent = self._hint_sent
        if h is None and sent is None:
            return None
        if h is not None and sent is not None and h.boost == sent[0] and now < sent[1] - self.config.hints.ttl_s / 2:
            return h  # unchanged and not due for renewal
        msg = SelectionHint(device="trainer", boost=h.boost if h else {}, budget_per_minute=h.budget_per_minute if h else 0,
                            expires=h.expires if h else now, reason=h.reason if h else "nothing missed")
        publish(self.topics.selection_hint(), encode_report(msg), 1, True)
        if (h is None) != (sent is None) or (h is not None and sent is not None and h.boost != sent[0]):
            log.info("selection hint: %s", f"{h.boost} ({h.reason})" if h else "withdrawn")
            self.hint_changes += 1
        self._hint_sent = (h.boost, h.expires) if h else None
        return h

    def _count_labels(self) -> None:
        """How many samples wait for a label and how many the labeller cannot label (the oracle, without
        ground truth: real frames). Logged when it changes; a warning when samples are being skipped."""
        unlabelled = self.store.count("label IS NULL")
        skipped = self.store.count("label IS NULL AND truth IS NULL") if self.labeller.name == "oracle" else 0
        if (unlabelled - skipped, skipped) != (self.labels_waiting, self.labels_skipped):
            if skipped > self.labels_skipped:
                log.warning("labels: %d samples skipped by the oracle labeller: they carry no ground truth (real "
                            "frames); run with --labeller queue or import to have them labelled", skipped)
            log.info("labels: %d samples wait for a label, %d skipped for lack of ground truth", unlabelled - skipped,
                     skipped)
            if self.labeller.name == "queue" and unlabelled > self.labels_waiting \
                    and self.store.count("label IS NULL AND truth IS NOT NULL"):
                log.info("labels: some samples waiting for people carry simulated ground truth: run with "
                         "--labeller oracle to have simulated cameras labelled automatically")
        self.labels_waiting, self.labels_skipped = unlabelled - skipped, skipped

    def _write_health(self) -> None:
        """``health.json``, atomically; a failure (a full disk) is not the learner's problem."""
        tmp = self.state_dir / f"{HEALTH_FILE}.tmp"
        try:
            tmp.write_text(json.dumps(self.live(), default=_json_default))
            os.replace(tmp, self.state_dir / HEALTH_FILE)
        except OSError:
            pass


def _scalar_metrics(m: dict[str, Any]) -> dict[str, Any]:
    """The small part of the metrics that goes into ONNX metadata and MQTT notices."""
    keep = ("accuracy", "macro_f1", "forgetting", "n", "per_class")
    return {k: m[k] for k in keep if k in m}


def _fmt(v: Any) -> str:
    return f"{v:.4f}" if isinstance(v, (int, float)) and not (isinstance(v, float) and math.isnan(v)) else "-"


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, float) and math.isnan(o):
        return None
    if dataclasses.is_dataclass(o):
        return dataclasses.asdict(o)  # type: ignore[arg-type]
    return str(o)
