"""``edgeloop edge``: run the edge node on one camera."""
from __future__ import annotations

import argparse
import logging
import sys

from protocol.config import dump_config, load_config
from protocol.state_dir import service_state_dir

ENV_PREFIX = "EDGELOOP_EDGE__"

# flag -> dotted config key (flags win over the YAML file and the environment)
def int_or_none(text: str) -> int | str:
    """Budgets take a number or ``none`` (unlimited)."""
    return "none" if text.strip().lower() == "none" else int(text)


def comma_list(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


FLAGS: list[tuple[str, str, object, str]] = [
    ("--device-id", "device_id", str, "device id: MQTT client id and topic segment (default edge-1)"),
    ("--fleet", "fleet", str, "fleet whose manifests this device follows (default 'default')"),
    ("--state-dir", "state_dir", str, "directory for the outbox, models and counters (default ./edgeloop-edge)"),
    ("--source", "source.url", str, "0 (USB camera), clip.mp4[?loop=1], rtsp://..., sim:parts?..., sim:digits?..."),
    ("--target-fps", "source.target_fps", float, "cap the frame rate (default: as fast as the source gives)"),
    ("--model", "model.path", str, "provisioned ONNX model exported by the trainer"),
    ("--threads", "model.threads", int, "ONNX Runtime intra-op threads (default 1)"),
    ("--batch", "model.batch", int, "micro-batch up to N queued frames per inference call (default 1)"),
    ("--broker", "mqtt.url", str, "broker URL mqtt://host[:port] or mqtts://... (default mqtt://127.0.0.1:1883)"),
    ("--username", "mqtt.username", str, "MQTT username (password: mqtt.password_file or EDGELOOP_EDGE__MQTT__PASSWORD)"),
    ("--password-file", "mqtt.password_file", str, "file whose first line is the MQTT password (mode 0600)"),
    ("--ca-file", "mqtt.ca_file", str, "TLS CA bundle for mqtts:// brokers"),
    ("--cert-file", "mqtt.cert_file", str, "TLS client certificate"),
    ("--key-file", "mqtt.key_file", str, "TLS client key"),
    ("--topic-prefix", "mqtt.topic_prefix", str, "topic prefix (default edgeloop/v1)"),
    ("--uncertainty", "uncertainty", str, "least_confidence | margin | entropy (default margin)"),
    ("--p-min", "sampler.p_min", float, "smallest selection probability of any frame (default 0.01)"),
    ("--threshold", "sampler.threshold", float, "uncertainty at which p_select = 0.5"),
    ("--budget-minute", "sampler.budget_per_minute", int_or_none, "uploads allowed per minute ('none' = unlimited)"),
    ("--budget-hour", "sampler.budget_per_hour", int_or_none, "uploads allowed per hour ('none' = unlimited)"),
    ("--budget-day", "sampler.budget_per_day", int_or_none, "uploads allowed per day ('none' = unlimited)"),
    ("--seed", "sampler.seed", int, "seed of the selection RNG (default: from the OS)"),
    ("--calibration", "calibration.mode", str, "test-time input calibration from unlabelled frames: off | drift "
     "(engage when the drift signal fires) | always (default off)"),
    ("--outbox-bytes", "outbox.max_bytes", int, "disk bound of the sample outbox in bytes"),
    ("--outbox-policy", "outbox.policy", str, "drop_oldest | drop_lowest_priority | reject_new"),
    ("--predictions", "predictions.mode", str,
     "verdicts on dev/{id}/predictions: defects (default) | changes | all | off"),
    ("--ok-labels", "predictions.ok_labels", comma_list, "labels that are not defects, comma-separated (default ok)"),
    ("--metrics-host", "metrics.host", str,
     "address of /metrics and /healthz (default 127.0.0.1; any other address is reachable without authentication)"),
    ("--metrics-port", "metrics.port", int, "port of /metrics and /healthz (default 9851; 0 = any free port)"),
    ("--stats-interval", "stats_interval_s", float, "seconds between stats messages (default 10)"),
    ("--max-frames", "max_frames", int, "stop after N frames"),
    ("--log-level", "log_level", str, "DEBUG | INFO | WARNING (default INFO)"),
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edgeloop edge",
        description="Run the edge node: read frames, classify them with ONNX Runtime, upload a randomised, "
                    "budgeted selection of uncertain frames over MQTT through a durable outbox, and follow "
                    "signed model rollouts.",
        epilog=f"Settings: YAML file (--config) < environment ({ENV_PREFIX}SECTION__KEY, e.g. "
               f"{ENV_PREFIX}SAMPLER__P_MIN=0.02) < flags. Every key with its default: --print-config. "
               "Budgets accept 'none' in YAML/environment for unlimited.",
    )
    parser.add_argument("--config", help="YAML config file (see --print-config for every key)")
    for flag, key, typ, text in FLAGS:
        parser.add_argument(flag, dest=key, type=typ, help=text, metavar=key.split(".")[-1].upper())
    parser.add_argument("--trusted-key", dest="trusted_keys", action="append", metavar="PEM",
                        help="public key whose manifest signatures this device accepts (repeatable)")
    parser.add_argument("--identity", metavar="DIR", help="TLS identity from `edgeloop pki device`: DIR/ca.pem, "
                        "cert.pem, key.pem (device id defaults to the certificate's CN)")
    parser.add_argument("--no-updater", action="store_true", help="ignore fleet manifests (no model rollouts)")
    parser.add_argument("--no-metrics", action="store_true", help="serve no /metrics and /healthz")
    parser.add_argument("--no-wait-for-trainer", action="store_true",
                        help="upload samples even before the trainer has ever connected to the broker (a broker "
                             "discards samples nobody subscribes to yet: only for brokers that queue them)")
    parser.add_argument("--homeassistant", action="store_true",
                        help="publish Home Assistant MQTT discovery configs (retained) on every connect")
    parser.add_argument("--print-config", action="store_true", help="print the effective configuration and exit")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    overrides = {key: getattr(args, key) for _, key, _, _ in FLAGS}
    if args.trusted_keys:
        overrides["updater.trusted_keys"] = args.trusted_keys
    if args.no_updater:
        overrides["updater.enabled"] = False
    if args.no_metrics:
        overrides["metrics.enabled"] = False
    if args.homeassistant:
        overrides["homeassistant.enabled"] = True
    if args.no_wait_for_trainer:
        overrides["upload.wait_for_trainer"] = False
    from protocol.mqtt import MQTTURLError, certificate_identity, identity_overrides, refuse_password_in_url, \
        resolve_password

    try:
        from edge.config import EdgeConfig

        refuse_password_in_url(overrides["mqtt.url"])
        if args.identity:
            for key, value in identity_overrides(args.identity).items():
                overrides[key] = overrides.get(key) or value
            overrides["device_id"] = overrides["device_id"] or certificate_identity(overrides["mqtt.cert_file"])
        config = load_config(EdgeConfig, args.config, env_prefix=ENV_PREFIX, overrides=overrides)
        config.state_dir = service_state_dir(config.state_dir, "edgeloop edge")  # never relative under systemd
        if args.print_config:
            print(dump_config(config), end="")
            return 0
        config.mqtt.password = resolve_password(config.mqtt.password, config.mqtt.password_file)
    except ValueError as exc:  # ConfigError, MQTTURLError, or a relative state dir in service mode
        print(f"edgeloop edge: configuration error: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=config.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    from edge.model import ModelError
    from edge.node import EdgeNode
    from edge.outbox import OutboxError
    from edge.sources import SourceError
    from protocol.errors import ProtocolError

    try:
        node = EdgeNode(config)
        node.install_signal_handlers()
        node.run()
    except (ModelError, SourceError, OutboxError, MQTTURLError, ProtocolError, ValueError, OSError) as exc:
        print(f"edgeloop edge: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
