"""``edgeloop deploy run``: the rollout controller as a service that rolls out what the trainer promotes.

Examples::

    edgeloop deploy run --state-dir /var/lib/edgeloop/deploy --key /etc/edgeloop/keys/signing.key
    edgeloop deploy run --mode approve --waves 5%,25%,100% --soak 10m      # each version waits for approval
    edgeloop deploy run --config /etc/edgeloop/deploy.yaml --print-config   # every key with its value

Approving (mode approve): ``edgeloop rollout approve v0007``, ``edgeloop rollout reject v0007 --reason "..."``,
or the web console's Rollouts page. Watching: ``edgeloop rollout status``, ``edgeloop rollout promotions``,
``/metrics`` and ``/healthz`` on 127.0.0.1:9853. Signals: SIGTERM/SIGINT stop it cleanly (it continues where it
stopped when started again), SIGHUP re-reads the config file (mode, rollout policy, log level).
"""
from __future__ import annotations

import argparse
import logging
import signal
import sys
from pathlib import Path
from typing import Any

from protocol.config import ConfigError, dump_config, load_config
from protocol.state_dir import service_mode, service_state_dir

__all__ = ["main", "build_parser", "load_service_config"]

#: flag -> (dotted config key, type, help); flags win over the YAML file and the environment.
FLAGS: list[tuple[str, str, Any, str]] = [
    ("--state-dir", "state_dir", str, "controller state: rollout.sqlite and models/ (default .edgeloop/deploy; "
                                      "under systemd: StateDirectory=)"),
    ("--key", "signing_key", str, "manifest signing key (edgeloop keys generate; default .edgeloop/keys/signing.key)"),
    ("--broker", "mqtt.url", str, "broker URL mqtt://host:port or mqtts://host:8883 (default mqtt://127.0.0.1:1883)"),
    ("--prefix", "mqtt.topic_prefix", str, "topic prefix (default edgeloop/v1)"),
    ("--client-id", "mqtt.client_id", str, "MQTT client id (default edgeloop-deploy-FLEET)"),
    ("--ca-file", "mqtt.ca_file", str, "TLS CA bundle (mqtts://)"),
    ("--cert-file", "mqtt.cert_file", str, "TLS client certificate"),
    ("--key-file", "mqtt.key_file", str, "TLS client key"),
    ("--fleet", "fleet", str, "fleet to roll out to (default 'default')"),
    ("--pki", "pki_dir", str, "the fleet's PKI directory (edgeloop pki init): only its provisioned devices count "
                              "in waves (or list them: `devices:` in the config; neither: any id counts, warned)"),
    ("--mode", "mode", str, "auto: promoted versions roll out one at a time, the newest next (default); "
                            "approve: each waits for `edgeloop rollout approve VERSION`"),
    ("--model-id", "model_id", str, "roll out promotions of this model only (default: any)"),
    ("--baseline", "baseline", str, "version the fleet runs now, the first rollback target (default: the "
                                    "trainer's bootstrap version)"),
    ("--waves", "rollout.waves", "waves", "wave sizes, e.g. 5%%,25%%,100%%"),
    ("--weights-only-waves", "rollout.weights_only_waves", "waves", "wave sizes of a version that differs from the "
     "fleet's only in its weights, e.g. 100%% (default: --waves)"),
    ("--soak", "rollout.soak", "duration", "how long each wave must stay healthy, e.g. 60s, 10m"),
    ("--max-failed", "rollout.max_failed", "fraction", "halt when more than this share of a wave fails, e.g. 10%%"),
    ("--min-agreement", "rollout.min_agreement", float, "halt below this shadow agreement (0..1)"),
    ("--shadow", "rollout.shadow", int, "shadow-run frames per device before the swap (0: none)"),
    ("--health-seconds", "rollout.health_seconds", "duration", "how long each device watches a new model"),
    ("--wave-timeout", "rollout.wave_timeout", "duration", "halt when a wave's devices do not finish in time, or "
                                                           "too few report (no_reports)"),
    ("--min-reporting", "rollout.min_reporting", int, "devices per wave that must report the new version healthy "
                                                      "(default 1; a smaller wave: all of it)"),
    ("--metrics-host", "metrics.host", str, "address of /metrics and /healthz (default 127.0.0.1; another "
                                            "address is reachable without authentication)"),
    ("--metrics-port", "metrics.port", int, "port of /metrics and /healthz (default 9853; 0 = any free port)"),
    ("--log-level", "log_level", str, "DEBUG | INFO | WARNING | ERROR (default INFO)"),
]


def _typed(kind: Any) -> Any:
    from .rollout_gate import parse_duration, parse_fraction, parse_waves

    return {"waves": parse_waves, "duration": parse_duration, "fraction": parse_fraction}.get(kind, kind)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="edgeloop deploy", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="run the rollout service (promoted versions -> canary rollouts)",
                       description="Subscribe to the trainer's promotions, fetch and verify each promoted model "
                                   "from the broker, and roll it out (mode auto) or put it up for approval (mode "
                                   "approve). Settings: YAML (--config) < EDGELOOP_DEPLOY__SECTION__KEY < flags.")
    r.add_argument("--config", metavar="YAML", help="config file (keys: --print-config)")
    for flag, key, kind, text in FLAGS:
        r.add_argument(flag, dest=key, type=_typed(kind), help=text, metavar=key.split(".")[-1].upper())
    r.add_argument("--no-metrics", action="store_true", help="serve no /metrics and /healthz")
    r.add_argument("--print-config", action="store_true", help="print the effective configuration and exit")
    return p


def load_service_config(args: argparse.Namespace) -> Any:
    """The effective config from the file, the environment and the flags; state paths checked for service mode."""
    from .service import ENV_PREFIX, DeployServiceConfig

    overrides = {key: getattr(args, key) for _, key, _, _ in FLAGS}
    if args.no_metrics:
        overrides["metrics.enabled"] = False
    cfg = load_config(DeployServiceConfig, args.config, env_prefix=ENV_PREFIX, overrides=overrides)
    try:
        cfg.state_dir = service_state_dir(cfg.state_dir, "edgeloop deploy")
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if service_mode() and not Path(cfg.signing_key).is_absolute():
        raise ConfigError(f"signing_key {cfg.signing_key!r} is relative to the working directory: under systemd "
                          "pass an absolute --key")
    return cfg


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        cfg = load_service_config(args)
    except ConfigError as e:
        print(f"edgeloop deploy run: configuration error: {e}", file=sys.stderr)
        return 2
    if args.print_config:
        print(dump_config(cfg), end="")
        return 0
    logging.basicConfig(level=cfg.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("onnxruntime",):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if not Path(cfg.signing_key).is_file():
        print(f"edgeloop deploy run: no signing key at {cfg.signing_key} (edgeloop keys generate --out DIR, then --key "
              "DIR/signing.key)", file=sys.stderr)
        return 2
    from .service import DeployService

    svc = DeployService(cfg)
    signal.signal(signal.SIGTERM, lambda *_: svc.request_stop())
    signal.signal(signal.SIGINT, lambda *_: svc.request_stop())
    if hasattr(signal, "SIGHUP"):
        signal.signal(signal.SIGHUP, lambda *_: _reload(svc, args))
    try:
        svc.start()
    except (OSError, ConnectionError, ValueError) as e:
        print(f"edgeloop deploy run: {e}", file=sys.stderr)
        return 1
    logging.getLogger("edgeloop.deploy").info(
        "rolling out to fleet %s (mode %s, waves %s) from %s; state %s; metrics %s", cfg.fleet, cfg.mode,
        cfg.rollout.waves, cfg.mqtt.url, cfg.state_dir, svc.metrics_url or "off")
    try:
        svc.wait()
    finally:
        svc.stop()
    return 0


def _reload(svc: Any, args: argparse.Namespace) -> None:
    """SIGHUP: read the file and the environment again (flags still win); a broken file changes nothing."""
    try:
        svc.reload(load_service_config(args))
    except ConfigError as e:
        logging.getLogger("edgeloop.deploy").error("config not reloaded: %s", e)


if __name__ == "__main__":
    sys.exit(main())
