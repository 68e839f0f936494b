"""``edgeloop deploy run``: the rollout side of the loop as one long-running service.

What runs, in the order :meth:`DeployService.start` starts it (and :meth:`~DeployService.stop` stops it in
reverse):

* **Controller** (:class:`deploy.controller.Controller`): the MQTT connection, the rollout state machine and its
  tick thread, the fleet table, chunk read-back and repair.
* **Promotion intake** (:class:`deploy.promotions.PromotionIntake`): the trainer's notices on
  ``trainer/promoted`` and ``trainer/models/+``, and the model bytes it fetches from the broker and verifies.
* **Feeder** (:class:`deploy.rollout_feeder.RolloutFeeder`): promoted versions -> rollouts by ``mode``:
  ``auto`` (one at a time, the newest next) or ``approve`` (each waits for ``edgeloop rollout approve``).
* **Metrics** (deploy/metrics.py): ``/metrics`` and ``/healthz`` on 127.0.0.1:9853 by default.
* **Loop**: a thread that polls the feeder four times a second.

Everything it knows is in ``{state_dir}/rollout.sqlite`` and ``{state_dir}/models/``, so it can be killed at
any moment and started again (systemd: deploy/systemd/edgeloop-deploy.service). SIGHUP re-reads the config
file: ``mode`` and the ``rollout`` policy apply to the next rollout, ``log_level`` at once; other keys need a
restart (the log says which). The demo (deploy/demo/app.py) runs this same service in its own process.
"""
from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from protocol.chunks import DEFAULT_CHUNK_SIZE

from .controller import Controller
from .promotions import FETCH_TIMEOUT_S, MAX_MODEL_BYTES, PromotionIntake
from .rollout_feeder import Notify, RolloutFeeder
from .rollout_gate import Policy

__all__ = ["DeployService", "DeployServiceConfig", "MqttSettings", "MetricsSettings", "ENV_PREFIX", "DEFAULT_STATE",
           "DEFAULT_KEY"]

log = logging.getLogger("edgeloop.deploy")

ENV_PREFIX = "EDGELOOP_DEPLOY__"
DEFAULT_STATE = ".edgeloop/deploy"
DEFAULT_KEY = ".edgeloop/keys/signing.key"
#: Keys SIGHUP applies without a restart.
RELOADABLE = ("mode", "rollout", "log_level")


class _Section(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    pass


class MqttSettings(_Section):
    url: str = "mqtt://127.0.0.1:1883"          # mqtts://host:8883 for TLS
    topic_prefix: str = "edgeloop/v1"
    client_id: str | None = None                # default: edgeloop-deploy-{fleet}
    ca_file: str | None = None                  # TLS: CA bundle, client certificate and key (mqtts:// only)
    cert_file: str | None = None
    key_file: str | None = None


class MetricsSettings(_Section):
    enabled: bool = True
    host: str = "127.0.0.1"                     # another address serves unauthenticated metrics: a warning says so
    port: Annotated[int, Meta(ge=0, le=65535)] = 9853   # 0 = any free port (logged)
    stall_s: Annotated[float, Meta(gt=0)] = 30.0        # /healthz fails when a loop made no step this long


class DeployServiceConfig(_Section):
    """Every key of ``edgeloop deploy run`` (YAML < ``EDGELOOP_DEPLOY__*`` < flags; ``--print-config``)."""

    state_dir: str = DEFAULT_STATE              # rollout.sqlite, models/ (fetched from the trainer)
    signing_key: str = DEFAULT_KEY              # manifest signing key (edgeloop keys generate)
    fleet: str = "default"
    mode: Literal["auto", "approve"] = "auto"   # promoted versions roll out by themselves, or wait for approval
    model_id: str | None = None                 # roll out promotions of this model only (default: any)
    baseline: str | None = None                 # what the fleet runs now (default: the trainer's bootstrap version)
    rollout: Policy = msgspec.field(default_factory=Policy)   # waves, soak and the gate's thresholds
    chunk_size: Annotated[int, Meta(ge=1024, le=16 * 1024 * 1024)] = DEFAULT_CHUNK_SIZE
    tick_s: Annotated[float, Meta(gt=0, le=10)] = 0.2
    poll_s: Annotated[float, Meta(gt=0, le=10)] = 0.25
    cache_versions: Annotated[int, Meta(ge=1, le=64)] = 4      # model versions held in memory
    cache_bytes: Annotated[int, Meta(ge=1)] = 256 * 1024 * 1024
    max_model_bytes: Annotated[int, Meta(ge=1)] = MAX_MODEL_BYTES
    fetch_timeout_s: Annotated[float, Meta(gt=0)] = FETCH_TIMEOUT_S
    connect_timeout_s: Annotated[float, Meta(gt=0)] = 30.0
    mqtt: MqttSettings = msgspec.field(default_factory=MqttSettings)
    metrics: MetricsSettings = msgspec.field(default_factory=MetricsSettings)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"


class DeployService:
    """Controller + promotion intake + feeder + metrics, started and stopped in one readable list."""

    def __init__(self, cfg: DeployServiceConfig, *, notify: Notify | None = None) -> None:
        self.cfg = cfg
        self.fleet = cfg.fleet
        self.notify = notify
        self.ctl: Controller | None = None  # type: ignore[assignment]
        self.intake: PromotionIntake | None = None
        self.feeder: RolloutFeeder | None = None
        self.metrics: Any = None
        self.metrics_url: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.feeder_last_ok = time.monotonic()

    # -- start / stop -----------------------------------------------------------------------------------------
    def start(self) -> "DeployService":
        try:
            for step in (self.start_controller, self.start_intake, self.start_feeder, self.start_metrics,
                         self.start_loop):
                step()
        except BaseException:
            self.stop()
            raise
        return self

    def start_controller(self) -> None:
        c, m = self.cfg, self.cfg.mqtt
        self.ctl = Controller(m.url, c.signing_key, c.state_dir, prefix=m.topic_prefix, fleet=c.fleet,
                              chunk_size=c.chunk_size, tick_s=c.tick_s, client_id=m.client_id or f"edgeloop-deploy-{c.fleet}",
                              tls={"ca": m.ca_file, "cert": m.cert_file, "key": m.key_file},
                              cache_items=c.cache_versions, cache_bytes=c.cache_bytes)
        self.ctl.start(self.cfg.connect_timeout_s)

    def start_intake(self) -> None:
        assert self.ctl is not None
        self.intake = PromotionIntake(self.ctl, Path(self.cfg.state_dir) / "models", model_id=self.cfg.model_id,
                                      max_model_bytes=self.cfg.max_model_bytes,
                                      fetch_timeout_s=self.cfg.fetch_timeout_s).attach()

    def start_feeder(self) -> None:
        assert self.ctl is not None
        self.feeder = RolloutFeeder(self.ctl, self.cfg.baseline, self.cfg.rollout, fleet=self.fleet,
                                    model_id=self.cfg.model_id, notify=self.notify, mode=self.cfg.mode,
                                    intake=self.intake)

    def start_metrics(self) -> None:
        m = self.cfg.metrics
        if not m.enabled:
            return
        from .metrics import metrics_server

        self.metrics = metrics_server(self, m.host, m.port)
        self.metrics_url = self.metrics.start()

    def start_loop(self) -> None:
        self._stop.clear()
        self.feeder_last_ok = time.monotonic()
        self._thread = threading.Thread(target=self._loop, name="deploy-feeder", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        assert self.feeder is not None
        while not self._stop.is_set():
            try:
                self.feeder.poll()
                self.feeder_last_ok = time.monotonic()
            except Exception:
                log.exception("feeder step failed; trying again")
            self._stop.wait(self.cfg.poll_s)

    def close_feeder(self) -> None:
        """Stop the loop and report the feeder's last events: no rollout starts after this, the store stays
        readable (a caller that wants the feeder's records reads them now, then calls :meth:`stop`)."""
        self._stop_loop()
        self._close_feeder()

    def stop(self) -> None:
        """Stop in reverse order; each step guarded so that one failure cannot leave the others running."""
        for what, step in (("loop", self._stop_loop), ("feeder", self._close_feeder), ("metrics", self._stop_metrics),
                           ("controller", self._stop_controller)):
            try:
                step()
            except Exception:
                log.exception("stopping the %s failed", what)

    def _stop_loop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def _close_feeder(self) -> None:
        if self.feeder is not None:
            self.feeder.close()

    def _stop_metrics(self) -> None:
        if self.metrics is not None:
            self.metrics.stop()
            self.metrics = None

    def _stop_controller(self) -> None:
        if self.ctl is not None:
            self.ctl.stop()

    # -- reload, health ------------------------------------------------------------------------------------
    def reload(self, cfg: DeployServiceConfig) -> list[str]:
        """Apply a re-read config (SIGHUP): returns the keys applied; logs those that need a restart."""
        applied, old = [], self.cfg
        if self.feeder is not None:
            if cfg.mode != old.mode:
                self.feeder.mode = cfg.mode
                applied.append("mode")
            if cfg.rollout != old.rollout:
                self.feeder.policy = cfg.rollout
                applied.append("rollout")
        if cfg.log_level != old.log_level:
            logging.getLogger().setLevel(cfg.log_level)
            applied.append("log_level")
        changed = [f for f in cfg.__struct_fields__ if getattr(cfg, f) != getattr(old, f) and f not in RELOADABLE]
        if changed:
            log.warning("config reloaded: %s changed but only apply after a restart", ", ".join(changed))
        self.cfg = msgspec.structs.replace(old, **{k: getattr(cfg, k) for k in RELOADABLE})
        log.info("config reloaded: %s", ", ".join(f"{k}={getattr(self.cfg, k)!r}" for k in applied) or "nothing changed")
        return applied

    def loop_ages(self) -> dict[str, float]:
        now = time.monotonic()
        out = {"feeder": now - self.feeder_last_ok}
        if self.ctl is not None:
            out["controller"] = now - self.ctl.last_tick_ok
        return out

    def health(self) -> tuple[bool, dict[str, Any]]:
        """Unhealthy when the controller's tick or the feeder's loop made no step for ``metrics.stall_s``."""
        stall = self.cfg.metrics.stall_s
        ages = {k: round(v, 2) for k, v in self.loop_ages().items()}
        details: dict[str, Any] = {"loop_age_seconds": ages, "mqtt_connected": bool(self.ctl and self.ctl.connected),
                                   "fleet": self.fleet, "mode": self.cfg.mode}
        if self.ctl is None:
            return False, {**details, "reason": "the controller is not running"}
        ok, why = self.ctl.health(stall)
        if not ok:
            return False, {**details, "reason": why}
        if self._thread is None or not self._thread.is_alive() or ages["feeder"] > stall:
            return False, {**details, "reason": f"the feeder loop made no step for {ages['feeder']:.0f}s"}
        return True, details

    def run(self) -> None:
        """Start and serve until :meth:`request_stop` (signal handlers call it); then stop."""
        self.start()
        try:
            self.wait()
        finally:
            self.stop()

    def wait(self) -> None:
        """Block until :meth:`request_stop` (waking every second, so signal handlers run)."""
        while not self._stop.wait(1.0):
            pass

    def request_stop(self) -> None:
        self._stop.set()
