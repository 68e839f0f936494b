"""The rollout controller: canary waves with thresholds, automatic advance, halt and rollback.

State machine of one rollout (states and allowed moves: ``State``/``TRANSITIONS`` in
deploy/rollout_store.py; persisted in SQLite after every transition, so a restarted controller continues
where the last one stopped)::

    awaiting_approval --approve--> running ...        --reject--> rejected
       (a newer version promoted while it waits, not yet approved --> superseded)
    running --(wave reported healthy, `soak` after it went out)--> running (next wave) ... --> completed
       |  ^
       v  |  pause / resume
     paused
    running --(breach: a check of deploy/rollout_gate.py's BREACH_CHECKS)
            --> rolling_back --(no online device runs the bad version)--> rolled_back
    any --abort--> aborted (stop publishing; devices keep what they run)
    any --rollback--> rolling_back (operator)
    any --start_rollout (or an approval) on the same fleet--> superseded

A version that differs from the rollout's previous version only in its weights (deploy/model_graph.py) takes the
policy's ``weights_only_waves`` if it has them (event ``weights_only``): the graph has run on every device already.

Targeting: one *retained* manifest per fleet (``fleet/{fleet}/manifest``) always carries the fleet's
current target. Wave k's manifest (new seq, signed) has ``compat.rollout = {"salt": rollout_id, "below":
B_k}``; a device is in the wave iff ``wave_bucket(salt, device) < B_k`` (see protocol/waves.py). ``B_k`` is
chosen so that at least ``ceil(fraction_k x known devices)`` known devices fall in, and never shrinks, so
waves are nested; devices unknown to the controller (offline since forever) fall in by hash. The last wave
has ``below = 10000`` (everyone). A rollback is a new manifest (higher seq) for the previous version with
``below = 10000``; devices already running it just confirm.

Sequence numbers: ``max(last + 1, unix time in ms)`` - monotonic across restarts even if the SQLite file
is lost, so devices (which reject seq <= highest accepted) never lock out a rebuilt controller.

Chunks on the broker (issue: faults): chunks are retained, and "paho queued them" proves nothing about what
the broker holds later. So the controller reads them back (deploy/chunk_audit.py) after publishing, after
every reconnection, when a device's download stalls and periodically, and republishes any that is missing or
wrong; a device that reports a corrupt chunk (``failed``/``chunk_hash`` with the chunk's index) gets that chunk
republished and keeps counting as pending, not failed. Chunks of versions that no fleet target, active
rollout or rollback target needs any more are cleared (an empty retained payload), whatever way the rollout
ended. Model bytes in memory are a small LRU (deploy/artifact_cache.py); the files are on disk.

Threading: paho's loop thread feeds :class:`deploy.fleet.Fleet` (and the chunk read-back, and any topic routed
with :meth:`Controller.route`); one controller thread ticks every ``tick_s`` (and immediately when a model
status arrives) and owns all SQLite writes and publishes of manifests. CLI commands
(``pause``/``resume``/``abort``/``rollback``/``approve``/``reject``) are queued in the store by other
processes (:meth:`RolloutStore.queue_command`) and picked up on the next tick, as are requests that need the
MQTT connection (``forget`` a decommissioned device: clear its retained topics).
"""
from __future__ import annotations

import logging
import math
import os
import threading
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any, Callable, NamedTuple

import msgspec

from protocol.chunks import DEFAULT_CHUNK_SIZE
from protocol.memory import trim_heap
from protocol.signing import load_private_key
from protocol.topics import Topics
from protocol.waves import BUCKETS, wave_bucket

from .artifact_cache import ArtifactCache
from .chunk_audit import AuditResult, ChunkAudit
from .fleet import DeviceInfo, Fleet, Registry
from .model_graph import weights_only_change
from .publisher import ModelArtifact, Publisher, read_artifact
from . import rollout_gate as gate
from .rollout_gate import Policy, WaveDevices, parse_duration, parse_fraction, parse_waves
from .rollout_store import ACTIVE, TERMINAL, WAITING, FleetTarget, Rollout, RolloutStore, State

__all__ = ["Policy", "Controller", "Verdict", "RolloutStore", "Rollout", "State", "TERMINAL", "ACTIVE", "WAITING",
           "rollout_status", "parse_duration", "parse_fraction", "parse_waves"]

log = logging.getLogger("edgeloop.controller")

#: A device whose download shows no progress this long makes the controller read the version's chunks back.
STALL_S = 30.0
#: At most one stall-triggered read-back per version this often (a read-back costs the model's size).
STALL_AUDIT_EVERY_S = 60.0
#: Every fleet target's chunks are read back this often even when nothing looks wrong.
AUDIT_EVERY_S = 600.0
#: Republish-and-check rounds for one version before the controller gives up until the next trigger.
MAX_REPAIRS = 3
#: The device registry (provisioned devices) is read again this often.
REGISTRY_REFRESH_S = 30.0
#: how often the loop gives freed heap back to the OS: model bytes, chunk envelopes and read-back chunks are
#: allocated on paho's thread and freed on this one (protocol/memory.py says why that fragments the heap).
#: With 20 cameras the live heap stays at ~36 MB while ~30 MB a minute is allocated and freed around it: a
#: trim once a minute let RSS swing 112-152 MB, so RSS said little about what is live. A trim costs ~2 ms.
TRIM_EVERY_S = 10.0


class Controller:
    """Runs rollouts against one broker. Programmatic API for the trainer/demo::

        ctl = Controller(broker_url, signing_key_path, state_dir)
        ctl.start()                                                  # connect + background thread
        rid = ctl.start_rollout("v0007", "registry/v0007.onnx")      # default Policy
        ctl.wait(rid, timeout=600)                                   # -> final state
        ctl.stop()

    ``tls``: ``{"ca": path, "cert": path, "key": path}`` for an ``mqtts://`` broker (overrides the URL's query).
    ``registry``: the devices that exist (:func:`deploy.fleet.registry_source`: the PKI's provisioned devices or
    a configured list); only they count in waves, each in its own fleet. None: any id that publishes counts (a
    warning says so; the broker's ACL still ties each report to its sender's certificate).
    ``counters`` (a ``Counter``) and :meth:`health` are what deploy/metrics.py exports.
    """

    def __init__(
        self,
        broker: str,
        signing_key: str | os.PathLike[str] | Any,
        state_dir: str | os.PathLike[str],
        *,
        prefix: str = "edgeloop/v1",
        fleet: str = "default",
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        tick_s: float = 0.2,
        client_id: str | None = None,
        clock: Callable[[], float] = time.time,
        tls: dict[str, str | None] | None = None,
        cache_items: int = 4,
        cache_bytes: int = 256 * 1024 * 1024,
        stall_s: float = STALL_S,
        stall_audit_every_s: float = STALL_AUDIT_EVERY_S,
        registry: Registry | None = None,
    ) -> None:
        self.broker = broker
        self.key = load_private_key(signing_key) if isinstance(signing_key, (str, os.PathLike)) else signing_key
        self.state_dir = Path(state_dir)
        self.store = RolloutStore(self.state_dir / "rollout.sqlite")
        self.topics = Topics(prefix)
        self.default_fleet = fleet
        self.chunk_size = chunk_size
        self.tick_s = tick_s
        self.stall_s = stall_s
        self.stall_audit_every_s = stall_audit_every_s
        self.fleet = Fleet(self.topics, clock)
        self._registry = registry
        self._registry_read = 0.0
        if registry is None:
            log.warning("no device registry (pki_dir or devices in the deploy config): every device id that "
                        "publishes under %s/dev/ counts in rollout waves", prefix)
        self.fleet.seed(self.store.devices())
        self._clock = clock
        self._client_id = client_id or f"edgeloop-deploy-{uuid.uuid4().hex[:8]}"
        self._tls = dict(tls or {})
        self._client: Any = None
        self.publisher = Publisher(self._publish, self.key, self.topics, chunk_size)
        self.audit = ChunkAudit(self.topics, self.subscribe, self.unsubscribe)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._artifacts = ArtifactCache(cache_items, cache_bytes)
        self._routes: list[tuple[str, int, Callable[[str, bytes], None]]] = []
        self._models_prefix = f"{self.topics.prefix}/models/"
        self._last_snapshot = 0.0
        self._last_trim = time.monotonic()
        self._audit_due = False                 # set on every (re)connection: read every needed version back
        self._last_audit: dict[tuple[str, str], float] = {}   # (model, version) -> monotonic time of last audit
        self._repairs: Counter[tuple[str, str]] = Counter()   # consecutive republish rounds per version
        self._handled_reports: dict[tuple[str, float], None] = {}  # (device, status time) acted on already
        self._ignored_reports: dict[tuple[str, float], None] = {}  # (device, status time) counted as ignored
        self._lock = threading.RLock()
        self.counters: Counter[str] = Counter()
        self.last_tick_ok = time.monotonic()    # /healthz: the loop is stalled when this gets old
        self.started = time.monotonic()
        if registry is not None:
            self._refresh_registry()

    # -- MQTT ------------------------------------------------------------------------------------------------
    def _publish(self, topic: str, payload: bytes, qos: int, retain: bool) -> None:
        if self._client is None:
            raise RuntimeError("controller is not connected (call start())")
        info = self._client.publish(topic, payload, qos=qos, retain=retain)
        if info.rc != 0:
            raise RuntimeError(f"publish to {topic} failed: rc={info.rc}")

    def subscribe(self, topic: str, qos: int = 1) -> None:
        """A transient subscription on the controller's connection (not renewed after a reconnection)."""
        if self._client is not None:
            self._client.subscribe(topic, qos)

    def unsubscribe(self, topic: str) -> None:
        if self._client is not None:
            self._client.unsubscribe(topic)

    def route(self, topic_filter: str, qos: int, handler: Callable[[str, bytes], None], *,
              subscribe: bool = True) -> None:
        """Deliver messages matching ``topic_filter`` to ``handler(topic, payload)`` on the MQTT thread. With
        ``subscribe`` the subscription is made now and on every reconnection (e.g. the promotion notices);
        without, the handler only gets what a transient :meth:`subscribe` brings (e.g. one version's chunks)."""
        self._routes.append((topic_filter, qos if subscribe else -1, handler))
        if subscribe and self.connected:
            self.subscribe(topic_filter, qos)

    @property
    def connected(self) -> bool:
        return self._client is not None and self._client.is_connected()

    def _on_message(self, topic: str, payload: bytes) -> None:
        from paho.mqtt.client import topic_matches_sub

        if topic.startswith(self._models_prefix):
            self.audit.on_message(topic, payload)
            return
        for filt, _, handler in self._routes:
            if topic_matches_sub(filt, topic):
                handler(topic, payload)
                return
        self.fleet.on_message(topic, payload)

    def connect(self, timeout: float = 10.0) -> None:
        from protocol import mqtt

        client = mqtt.make_client(self._client_id, self.broker, protocol="3.1.1", max_queued=0,
                                  ca=self._tls.get("ca"), cert=self._tls.get("cert"), key=self._tls.get("key"))

        def on_connect(c: Any, userdata: Any, flags: Any, rc: Any, props: Any = None) -> None:
            if getattr(rc, "is_failure", False):
                log.warning("broker %s refused the controller: %s", self.broker, rc)
                return
            c.subscribe(self.fleet.subscriptions() + [(f, q) for f, q, _ in self._routes if q >= 0])
            self.counters["mqtt_connects"] += 1
            self._audit_due = True  # the broker may have restarted without our retained chunks
            self.fleet.changed.set()

        client.on_connect = on_connect
        client.on_message = lambda c, u, msg: self._on_message(msg.topic, msg.payload)
        self._client = client
        mqtt.start(client, timeout)

    def start(self, timeout: float = 10.0) -> "Controller":
        """Connect and run the tick thread in the background."""
        if self._client is None:
            self.connect(timeout)
        self._stop.clear()
        self.last_tick_ok = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="rollout-controller", daemon=True)
        self._thread.start()
        return self

    def stop(self, flush: float = 5.0) -> None:
        """Stop ticking, let queued publishes drain, disconnect."""
        self._stop.set()
        self.fleet.changed.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        if self._client is not None:
            deadline = time.monotonic() + flush
            while self._client.want_write() and time.monotonic() < deadline:
                time.sleep(0.01)
            self._client.disconnect()
            self._client.loop_stop()
            self._client = None
        self.store.close()

    def kill(self) -> None:
        """Tests: vanish without a clean disconnect (as if the process died)."""
        self._stop.set()
        self.fleet.changed.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        if self._client is not None:
            self._client.loop_stop()
            try:
                self._client.socket().close()
            except Exception:
                pass
            self._client = None
        self.store.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.tick()
                self.last_tick_ok = time.monotonic()
            except Exception:
                self.counters["tick_errors"] += 1
                log.exception("controller tick failed")
            self.fleet.changed.wait(self.tick_s)
            self.fleet.changed.clear()

    def health(self, stall_s: float = 30.0) -> tuple[bool, str]:
        """(healthy, why): unhealthy when no tick completed for ``stall_s`` seconds (loop wedged or failing)."""
        age = time.monotonic() - self.last_tick_ok
        if self._thread is None or not self._thread.is_alive():
            return False, "the controller loop is not running"
        if age > stall_s:
            return False, f"no controller tick completed for {age:.0f}s (limit {stall_s:.0f}s)"
        return True, f"last tick {age:.1f}s ago; MQTT {'connected' if self.connected else 'disconnected'}"

    # -- API ------------------------------------------------------------------------------------------------
    def register_model(self, path: str | os.PathLike[str], model_id: str | None = None,
                       version: str | None = None) -> ModelArtifact:
        """Read a model file and remember it (the previous version must be known to roll back to it)."""
        art = read_artifact(path, model_id, version)
        self._artifacts.put(art)
        self.store.save_model(art.model_id, art.version, art.sha256, str(Path(path).resolve()), art.size,
                              self.chunk_size)
        return art

    def artifact(self, model_id: str, version: str) -> ModelArtifact:
        """A registered version's bytes: from the LRU, else read again from its file (checked against the store)."""
        art = self._artifacts.get(model_id, version)
        if art is None:
            m = self.store.model(model_id, version)
            if m is None:
                raise KeyError(f"model {model_id}/{version} is not registered")
            art = read_artifact(m.path, model_id, version)
            if art.sha256 != m.sha256:
                raise ValueError(f"{m.path} changed since {version} was registered")
            self._artifacts.put(art)
        return art

    @property
    def cache(self) -> ArtifactCache:
        return self._artifacts

    def start_rollout(self, version: str, model_path: str | os.PathLike[str] | None = None,
                      policy: Policy | None = None, *, fleet: str | None = None, model_id: str | None = None,
                      previous: tuple[str, str | os.PathLike[str]] | str | None = None,
                      await_approval: bool = False) -> str:
        """Begin rolling ``version`` out; returns the rollout id. Any rollout on the fleet that is active or
        awaits approval is superseded.

        ``previous`` = (version, path) of what the fleet runs now, the rollback target, or the version alone
        if it is registered already; defaults to the fleet manifest's current target (the last completed
        rollout's version, or the previous one's after a rollback). ``await_approval``: record it as
        ``awaiting_approval`` instead (nothing is published and the running rollout is left alone until an
        operator approves it; an older rollout still waiting on the fleet is superseded by this one).
        A version that is ``previous`` with other weights takes ``policy.weights_only_waves`` (if set).
        """
        fleet = fleet or self.default_fleet
        policy = policy or Policy()
        with self._lock:
            if model_path is not None:
                art = self.register_model(model_path, model_id, version)
            else:
                model_id = model_id or self.store.model_id_of(version)
                if model_id is None:
                    raise KeyError(f"version {version} is unknown; pass its model file")
                art = self.artifact(model_id, version)
            if isinstance(previous, str):
                self.artifact(art.model_id, previous)  # must be registered: it is the rollback target
                prev_version: str | None = previous
            elif previous is not None:
                prev_version = self.register_model(previous[1], art.model_id, previous[0]).version
            else:
                target = self.store.target(fleet)
                prev_version = target.version if target is not None and target.version != version else None
            policy, why = self._weights_only(art, prev_version, policy)
            if await_approval:
                self._supersede(fleet, version, active=False)
                r = self.store.create_rollout(fleet, art.model_id, version, prev_version, policy,
                                              State.AWAITING_APPROVAL)
                self.store.add_event(r.id, "awaiting_approval", f"{art.model_id}/{version} prev={prev_version}")
            else:
                self._supersede(fleet, version)
                r = self.store.create_rollout(fleet, art.model_id, version, prev_version, policy)
                self.store.add_event(r.id, "started", f"{art.model_id}/{version} waves={policy.waves} "
                                                      f"prev={prev_version}")
            if why is not None:
                self.counters["rollouts_weights_only"] += 1
                self.store.add_event(r.id, "weights_only", f"{version} differs from {prev_version} only in its "
                                                           f"weights ({why}): waves {policy.waves}")
        self.fleet.changed.set()
        return r.id

    def _weights_only(self, art: ModelArtifact, prev_version: str | None, policy: Policy) -> tuple[Policy, str | None]:
        """``policy`` with its ``weights_only_waves`` as the waves, and why, when ``art`` differs from the previous
        version (the rollback target: what the fleet ran) only in its weights (deploy/model_graph.py); ``policy``
        and None otherwise -- also when the previous version cannot be read, so a doubt keeps the full waves."""
        if policy.weights_only_waves is None or prev_version is None:
            return policy, None
        try:
            prev = self.artifact(art.model_id, prev_version)
        except (KeyError, OSError, ValueError) as exc:
            log.warning("%s: previous version %s unreadable (%s): full waves", art.version, prev_version, exc)
            return policy, None
        same, why = weights_only_change(art.data, art.compat, prev.data, prev.compat)
        if not same:
            log.info("%s against %s: %s: full waves", art.version, prev_version, why)
            return policy, None
        return msgspec.structs.replace(policy, waves=list(policy.weights_only_waves)), why

    def delivered(self, rid: str) -> bool:
        """Whether rollout ``rid`` runs its last wave and every online member of it runs the new version (none
        still working on it, none failed): a newer version can then take over without leaving a device behind."""
        with self._lock:
            r = self.store.rollout(rid)
            if r is None or r.state != State.RUNNING or not r.wave_published or r.wave < len(r.policy.waves) - 1:
                return False
            t = self.store.target(r.fleet)
            max_seq = t.seq if t is not None and t.rollout_id == r.id else -1
            wave = gate.count_wave(self._members(r, r.below), r.id, r.version, r.wave_started, max_seq=max_seq)
            return bool(wave.active) and not wave.pending and not wave.failed

    def weights_only(self, rid: str) -> bool:
        """Whether rollout ``rid`` took the policy's ``weights_only_waves`` (its ``weights_only`` event)."""
        return any(e.kind == "weights_only" for e in self.store.events(rid, 200))

    def _supersede(self, fleet: str, version: str, *, active: bool = True, exclude: str | None = None,
                   before: float | None = None) -> None:
        """``version`` takes over the fleet: rollouts that await approval (and, with ``active``, those that run)
        end as superseded. A waiting rollout an operator has already approved (the approval queued, not yet
        taken by a tick) is kept when a newer promotion merely waits (``active=False``): the operator's decision
        stands, and the newer version waits after it. ``before``: only rollouts created before that time (an
        approval takes over from what came before it, not from a newer promotion that waits its turn)."""
        waiting = [w for w in self.store.get_waiting(fleet) if active or w.command != "approve"]
        older = waiting + (self.store.get_active(fleet) if active else [])
        for old in older:
            if before is not None and not old.active and old.created > before:
                continue
            why = f"superseded by {version}" if old.active else f"{version} came before approval"
            if old.id != exclude:
                self.store.set_state(old.id, State.SUPERSEDED, why, event=("superseded", version))

    def pause(self, rid: str | None = None) -> None:
        self._command(rid, "pause")

    def resume(self, rid: str | None = None) -> None:
        self._command(rid, "resume")

    def abort(self, rid: str | None = None) -> None:
        self._command(rid, "abort")

    def rollback(self, rid: str | None = None) -> None:
        self._command(rid, "rollback")

    def _command(self, rid: str | None, cmd: str) -> None:
        r = self.store.rollout(rid) if rid else self.store.latest()
        if r is None:
            raise KeyError("no such rollout")
        self.store.queue_command(r.id, cmd)
        self.fleet.changed.set()

    def status(self, rid: str | None = None) -> dict[str, Any]:
        return rollout_status(self.store, rid, self.fleet.devices())

    def wait(self, rid: str, timeout: float = 600.0, states: tuple[str, ...] = TERMINAL) -> str:
        """Block until the rollout reaches one of ``states``; returns the state (or the current one on timeout)."""
        deadline = time.monotonic() + timeout
        while True:
            r = self.store.rollout(rid)
            state = r.state if r else "unknown"
            if state in states or time.monotonic() > deadline:
                return state
            time.sleep(0.05)

    # -- the state machine ------------------------------------------------------------------------------------
    def tick(self) -> None:
        """One step for every rollout that is active or waits for approval, then the chores: manifest refresh,
        chunk read-backs and repairs, queued requests, the device snapshot (only what changed)."""
        with self._lock:
            if self._registry is not None and time.monotonic() - self._registry_read > REGISTRY_REFRESH_S:
                self._refresh_registry()
            for listed in self.store.get_waiting() + self.store.get_active():
                # read again: an approval stepped earlier in this loop may have superseded it, and a stale row
                # would publish its next wave over the approved version's (CI saw v0020's last wave, published
                # after v0022's approval, leave v0022 waiting forever)
                r = self.store.rollout(listed.id)
                if r is not None and r.state in (*ACTIVE, *WAITING):
                    self._step(r)
            self._refresh_manifests()
            self._check_chunks()
            self._take_requests()
            now = time.time()
            if now - self._last_snapshot > 1.0:
                self._last_snapshot = now
                self.counters["device_rows_written"] += self.store.save_devices(
                    [d.to_row() for d in self.fleet.devices()])
                self.store.beat(now)
            if time.monotonic() - self._last_trim > TRIM_EVERY_S:
                self._last_trim = time.monotonic()
                trim_heap()

    def _step(self, r: Rollout) -> None:
        if r.command:
            stepped = self._apply_command(r)
            if stepped is None:
                return
            r = stepped
        if r.state == State.RUNNING:
            self._step_running(r)
        elif r.state == State.ROLLING_BACK:
            self._step_rolling_back(r)

    def _apply_command(self, r: Rollout) -> Rollout | None:
        """Apply a queued operator command; returns the rollout to step on this tick, or None."""
        cmd, detail = r.command or "", r.command_detail
        self.store.clear_command(r.id, cmd)
        self.store.add_event(r.id, f"command:{cmd}", detail or "")
        if r.state == State.AWAITING_APPROVAL:
            if cmd == "approve":
                return self._approve(r, detail)
            if cmd == "reject":
                if self.store.set_state(r.id, State.REJECTED, detail or "rejected by an operator",
                                        event=("rejected", detail or "")):
                    self.counters["promotions_rejected"] += 1
                return None
            if cmd == "abort":
                self.store.set_state(r.id, State.ABORTED, "aborted by operator before approval")
            return None  # pause/resume/rollback mean nothing before it started
        if cmd == "pause" and r.state == State.RUNNING:
            self.store.set_state(r.id, State.PAUSED)
            return None
        if cmd == "resume" and r.state == State.PAUSED:
            self.store.set_state(r.id, State.RUNNING)
            return self.store.rollout(r.id) or r
        if cmd == "abort":
            self.store.set_state(r.id, State.ABORTED, "aborted by operator")
            self._gc_chunks(set())
            return None
        if cmd == "rollback":
            self._begin_rollback(r, "rollback requested by operator")
            return None
        return r  # pause while paused, resume while running, approve while running: nothing to do

    def _approve(self, r: Rollout, detail: str | None) -> Rollout | None:
        """An operator released a waiting rollout: it takes over the fleet now, rolling back (if it must) to
        the version the whole fleet reached last, which may have changed while it waited."""
        self._supersede(r.fleet, r.version, exclude=r.id, before=r.created)
        prev = self.store.fleet_baseline(r.fleet) or r.prev_version
        if prev == r.version:
            prev = r.prev_version
        if prev != r.prev_version:
            self.store.set_prev_version(r.id, prev)
        if not self.store.set_state(r.id, State.RUNNING, event=("approved", (detail or "") + f" prev={prev}")):
            return None
        self.counters["promotions_approved"] += 1
        return self.store.rollout(r.id)

    def _refresh_registry(self) -> None:
        """Read the registry again; a device new to it gets its retained reports delivered again (they were
        dropped as unknown before), by subscribing once more. A registry that cannot be read keeps the last."""
        assert self._registry is not None
        self._registry_read = time.monotonic()
        try:
            new = self.fleet.set_registry(self._registry())
        except Exception as e:  # noqa: BLE001 - a broken PKI directory must not stop rollouts that run
            self.counters["registry_errors"] += 1
            log.error("cannot read the device registry (keeping the last one): %s", e)
            return
        if new and self.connected:
            self._client.subscribe(self.fleet.subscriptions())
            log.info("device registry: %d new device(s), e.g. %s", len(new), new[:5])

    def _members(self, r: Rollout, below: int) -> list[DeviceInfo]:
        return [d for d in self.fleet.devices(r.fleet) if below >= BUCKETS or wave_bucket(r.id, d.device) < below]

    def _wave_below(self, r: Rollout, fraction: float) -> int:
        """Smallest bucket bound that puts ceil(fraction x known devices) known devices in the wave."""
        if fraction >= 1.0:
            return BUCKETS
        ids = self.fleet.ids(r.fleet)
        if not ids:
            return max(r.below, int(fraction * BUCKETS))
        buckets = sorted(wave_bucket(r.id, d) for d in ids)
        k = max(1, math.ceil(fraction * len(buckets)))
        return max(r.below, min(BUCKETS, buckets[k - 1] + 1))

    def _publish_manifest(self, fleet: str, rid: str, art: ModelArtifact, wave: int, below: int,
                          policy: Policy) -> int:
        m = self.store.model(art.model_id, art.version)
        if m is None or not m.published:
            self.counters["chunks_published"] += self.publisher.publish_chunks(art)
            self.store.set_published(art.model_id, art.version, True)
            self._request_audit(art, "published")
        seq = self.store.next_seq()
        targeting: dict[str, Any] = {"salt": rid, "below": below, "health_seconds": policy.health_seconds}
        if policy.shadow > 0:
            targeting.update(shadow_frames=policy.shadow, shadow_seconds=policy.shadow_seconds,
                             min_agreement=policy.min_agreement)
        expires = time.time() + policy.expiry
        manifest = self.publisher.manifest(art, fleet=fleet, seq=seq, rollout_id=rid, wave=wave,
                                           targeting=targeting, expires=expires)
        self.publisher.publish_manifest(fleet, manifest)
        self.store.set_target(FleetTarget(fleet=fleet, rollout_id=rid, model_id=art.model_id, version=art.version,
                                          wave=wave, below=below, seq=seq, expires=expires, policy=policy))
        return seq

    def _step_running(self, r: Rollout) -> None:
        if not r.wave_published:
            self._publish_wave(r)
            return
        verdict = self.evaluate(r)
        if verdict.breach:
            self.counters[f"gate:halt:{verdict.check}"] += 1
            self.store.add_event(r.id, "breach", verdict.breach)
            self._begin_rollback(r, verdict.breach)
            return
        # The soak runs beside the devices' health watch, as a canary's pause runs beside its analysis: the wave
        # advances once its devices reported healthy *and* it has been out for ``soak`` (or since a resume). A
        # soak that began only after the reports made every canary wait health_seconds + soak: 12 of the demo's
        # 14 s per rollout, and `bench freshness` 36 s where the goal is 30.
        since = r.soak_started if r.soak_started is not None else r.wave_started
        if gate.wave_done(verdict.wave, r.policy) and since is not None and time.time() - since >= r.policy.soak:
            self._finish_wave(r, verdict.wave)

    def _publish_wave(self, r: Rollout) -> None:
        waves = r.policy.waves
        below = self._wave_below(r, waves[r.wave])
        seq = self._publish_manifest(r.fleet, r.id, self.artifact(r.model_id, r.version), r.wave, below, r.policy)
        self.store.mark_wave_published(r.id, below)
        self.counters["waves_published"] += 1
        self.store.add_event(r.id, "wave", f"wave {r.wave + 1}/{len(waves)} {waves[r.wave]:.0%} below={below} seq={seq}")
        self._gc_chunks(set())  # a version this rollout superseded may not be needed any more

    def _finish_wave(self, r: Rollout, wave: WaveDevices) -> None:
        """The wave soaked healthy: on to the next one that adds a device, or done.

        A wave that would put no device in beyond those already in (on a 4-device fleet, 25 % is the same one
        device as the 5 % canary) is skipped, with an event: its manifest would target exactly the buckets the
        last one did, so its soak would watch the same devices again and only delay the fleet. The canary's
        watch is ``soak``; the last wave (everyone) is never skipped."""
        waves = r.policy.waves
        if r.wave + 1 < len(waves):
            self.counters["gate:advance"] += 1
            nxt = r.wave + 1
            while nxt + 1 < len(waves) and self._wave_below(r, waves[nxt]) == r.below:
                self.counters["waves_skipped"] += 1
                self.store.add_event(r.id, "wave_skipped", f"wave {nxt + 1}/{len(waves)} {waves[nxt]:.0%} adds no "
                                     f"device to the {len(self._members(r, r.below))} already in: not soaked")
                nxt += 1
            self.store.next_wave(r.id, to=nxt)
        elif self.store.set_state(r.id, State.COMPLETED, event=("completed", wave.summary())):
            self.counters["gate:complete"] += 1
            self._gc_chunks({(r.model_id, r.version), (r.model_id, r.prev_version)})

    def evaluate(self, r: Rollout) -> Verdict:
        """Count the current wave's devices and ask the gate's breach checks (deploy/rollout_gate.py)."""
        t = self.store.target(r.fleet)
        max_seq = t.seq if t is not None and t.rollout_id == r.id else -1
        wave = gate.count_wave(self._members(r, r.below), r.id, r.version, r.wave_started, max_seq=max_seq)
        for d, why in wave.ignored:  # each stale or foreign status counted once
            if (d.device, d.status_time) not in self._ignored_reports:
                self._ignored_reports[(d.device, d.status_time)] = None
                self.counters[f"gate:ignored:{why}"] += 1
        if len(self._ignored_reports) > 10_000:
            self._ignored_reports.clear()
        found = gate.first_breach(wave, r.policy)
        return Verdict(wave, found[1] if found else None, found[0] if found else None)

    def _begin_rollback(self, r: Rollout, reason: str) -> None:
        if not r.prev_version:
            self.store.set_state(r.id, State.ABORTED, f"{reason}; no previous version known to roll back to",
                                 event=("halted", "no previous version"))
            return
        art = self.artifact(r.model_id, r.prev_version)
        seq = self._publish_manifest(r.fleet, r.id, art, r.wave, BUCKETS, msgspec.structs.replace(r.policy, shadow=0))
        self.store.set_state(r.id, State.ROLLING_BACK, reason,
                             event=("rollback", f"to {r.prev_version} seq={seq}: {reason}"))

    def _step_rolling_back(self, r: Rollout) -> None:
        still = [d for d in self.fleet.devices(r.fleet) if d.online and d.version == r.version]
        if not still or time.time() - (r.wave_started or 0) > r.policy.wave_timeout:
            if self.store.set_state(r.id, State.ROLLED_BACK, r.reason,
                                    event=("rolled_back", f"{len(still)} devices still on {r.version}")):
                self._gc_chunks({(r.model_id, r.prev_version)})

    def _needed(self) -> set[tuple[str, str]]:
        """Versions whose chunks devices may still fetch: every fleet target, and each active rollout's
        version and rollback target."""
        keep = {(t.model_id, t.version) for t in self.store.targets()}
        for r in self.store.get_active():
            keep.add((r.model_id, r.version))
            if r.prev_version:
                keep.add((r.model_id, r.prev_version))
        return keep

    def _gc_chunks(self, keep: set[tuple[str, str | None]]) -> None:
        """Clear retained chunks of every published version that nothing needs (:meth:`_needed`, ``keep``)."""
        keep = keep | self._needed()
        for m in self.store.published_models():
            if (m.model_id, m.version) in keep:
                continue
            self.publisher.clear_chunks(m.model_id, m.version, m.chunks)
            self.store.set_published(m.model_id, m.version, False)
            self.counters["chunks_cleared"] += m.chunks
            self.store.add_event(None, "chunks_cleared", f"{m.model_id}/{m.version}")

    def _refresh_manifests(self) -> None:
        """Re-sign a fleet's retained manifest (new seq, same target) when half its lifetime is gone, and after
        every reconnection (a broker restarted without persistence has lost it: devices that boot would find no
        target)."""
        now = time.time()
        for t in self.store.targets():
            if t.expires - now > t.policy.expiry / 2 and not self._audit_due:
                continue
            try:
                art = self.artifact(t.model_id, t.version)
            except (KeyError, OSError, ValueError):
                continue
            self._publish_manifest(t.fleet, t.rollout_id, art, t.wave, t.below, t.policy)
            self.store.add_event(t.rollout_id, "refreshed", f"fleet {t.fleet}")

    # -- chunks on the broker: read back, repair ------------------------------------------------------------
    def _request_audit(self, art: ModelArtifact, reason: str) -> None:
        self._last_audit[(art.model_id, art.version)] = time.monotonic()
        self.audit.request(art.model_id, art.version, self.publisher.chunk_digests(art), self.chunk_size, reason)

    def _check_chunks(self) -> None:
        """Start read-backs that are due (after a reconnection; periodically; a device's download stalls) and
        repair what one found, or what a device reported."""
        self._repair_reported()
        now = time.monotonic()
        published = {(m.model_id, m.version) for m in self.store.published_models()}
        for key in sorted(self._needed() & published):
            if self._audit_due or now - self._last_audit.get(key, self.started) > AUDIT_EVERY_S:
                self._audit_version(key, "reconnected" if self._audit_due else "periodic")
        self._audit_due = False
        result = self.audit.poll()
        if result is not None:
            self._repair(result)

    def _audit_version(self, key: tuple[str, str], reason: str) -> None:
        try:
            self._request_audit(self.artifact(*key), reason)
        except (KeyError, OSError, ValueError) as e:
            log.warning("cannot read %s/%s back (%s): %s", key[0], key[1], reason, e)

    def _repair(self, res: AuditResult) -> None:
        key = (res.model_id, res.version)
        if not res.missing:
            self._repairs.pop(key, None)
            return
        self.counters["audits_missing"] += 1
        if key not in self._needed() or self.store.model(*key) is None:
            return  # cleared meanwhile: nothing to repair
        self._repairs[key] += 1
        if self._repairs[key] > MAX_REPAIRS:
            log.error("%s/%s: chunks still missing after %d republishes (broker retained-message limits?); "
                      "trying again on the next trigger", res.model_id, res.version, MAX_REPAIRS)
            self._repairs.pop(key, None)
            return
        art = self.artifact(*key)
        self.republish(art, res.missing, f"readback:{res.reason}")
        self._request_audit(art, "verify")

    def republish(self, art: ModelArtifact, indices: list[int], reason: str) -> None:
        """Publish some of a version's chunks again (retained), counted by ``reason``."""
        n = self.publisher.publish_chunks(art, indices)
        self.counters["chunks_republished"] += n
        self.counters[f"republish:{reason.split(':')[0]}"] += n
        self.store.add_event(None, "chunks_republished", f"{art.model_id}/{art.version} {indices[:20]} ({reason})")

    def _repair_reported(self) -> None:
        """Act on what devices report about downloading a fleet's target (during a rollout, a rollback, or
        long after, for a device that joins late): a corrupt chunk is republished (the device waits for it),
        chunks a device names as missing are republished, and a download without progress for ``stall_s``
        gets a read-back of the version (at most every ``stall_audit_every_s``)."""
        now = time.time()
        targets = {(t.rollout_id, t.version): t for t in self.store.targets()}
        for d in self.fleet.devices():
            t = targets.get((d.rollout_id or "", d.model_version or ""))
            if t is None or not d.online or (d.device, d.status_time) in self._handled_reports:
                continue
            chunk = d.status_metrics.get("chunk")
            missing = d.status_metrics.get("missing")
            if d.model_state == "failed" and d.reason in gate.RETRYABLE_REASONS and isinstance(chunk, int):
                self._handled_reports[(d.device, d.status_time)] = None
                self.republish(self.artifact(t.model_id, t.version), [chunk], f"device:{d.device} {d.reason}")
            elif d.model_state == "downloading" and isinstance(missing, list) and missing:
                self._handled_reports[(d.device, d.status_time)] = None
                idx = [i for i in missing if isinstance(i, int)][:1000]
                self.republish(self.artifact(t.model_id, t.version), idx, f"device:{d.device} missing")
            elif d.model_state == "downloading" and now - d.status_time > self.stall_s:
                key = (t.model_id, t.version)
                if time.monotonic() - self._last_audit.get(key, 0.0) > self.stall_audit_every_s:
                    self._audit_version(key, f"stalled download on {d.device}")
        if len(self._handled_reports) > 10_000:
            self._handled_reports.clear()

    # -- requests from other processes that need the MQTT connection ---------------------------------------------
    def _take_requests(self) -> None:
        for request_id, kind, arg in self.store.pending_requests():
            if kind == "forget":
                self.forget_device(arg)
            else:
                log.warning("unknown controller request %r (%s): dropped", kind, arg)
            self.store.done_request(request_id)

    def forget_device(self, device: str) -> None:
        """A decommissioned device: clear its retained state, birth and model status on the broker and drop
        it from the fleet table, so that no wave counts it and no restart brings it back."""
        for topic in (self.topics.state(device), self.topics.birth(device), self.topics.model_status(device)):
            self._publish(topic, b"", 1, True)
        self.fleet.forget(device)
        self.store.forget_device(device)
        self.counters["devices_forgotten"] += 1
        self.store.add_event(None, "forgotten", device)


class Verdict(NamedTuple):
    """What :meth:`Controller.evaluate` found: the wave's devices, the first breach (None: within policy) and
    the name of the check that found it."""

    wave: WaveDevices
    breach: str | None
    check: str | None = None


def rollout_status(store: RolloutStore, rid: str | None, devices: list[DeviceInfo] | None = None
                   ) -> dict[str, Any]:
    """Rollout summary for ``status`` (works from any process: SQLite only)."""
    r = store.rollout(rid) if rid else store.latest()
    if r is None:
        return {}
    waves = r.policy.waves
    out: dict[str, Any] = {k: getattr(r, k) for k in ("id", "fleet", "model_id", "version", "prev_version",
                                                       "state", "reason", "created", "finished", "command")}
    out["state"] = str(r.state)  # a plain string for JSON readers
    out["wave"] = f"{min(r.wave + 1, len(waves))}/{len(waves)}"
    out["wave_fraction"] = waves[min(r.wave, len(waves) - 1)]
    out["policy"] = msgspec.to_builtins(r.policy)
    rows = [d.to_row() for d in devices] if devices is not None else store.devices()
    counts: dict[str, int] = {}
    for d in rows:
        if d.get("rollout_id") == r.id or d.get("version") in (r.version, r.prev_version):
            key = "on_target" if d.get("version") == r.version else (d.get("state") or "unknown")
            if not d.get("online"):
                key = "offline"
            counts[key] = counts.get(key, 0) + 1
    out["devices"] = counts
    out["events"] = [msgspec.to_builtins(e) for e in store.events(r.id, 20)]
    out["controller_alive"] = store.controller_alive()
    return out
