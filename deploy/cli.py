"""The one ``edgeloop`` command.

Subcommands live with their package; this module only dispatches, and imports each package lazily so
that ``edgeloop edge`` on a camera never imports torch (or the trainer, or the deploy controller).
"""
from __future__ import annotations

import importlib
import sys

# name -> (module with a ``main(argv) -> int``, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "edge": ("edge.cli", "run the edge node on a camera: frames -> ONNX -> uncertain samples over MQTT"),
    "trainer": ("trainer.cli", "the central learner: bootstrap a model, ingest samples, update, export"),
    "label": ("trainer.label_cli", "label queued samples in the terminal"),
    "deploy": ("deploy.deploy_cli", "the rollout service: roll out what the trainer promotes (auto or on approval)"),
    "rollout": ("deploy.rollout_cli", "roll a model version out, approve, watch and steer rollouts, list devices"),
    "demo": ("deploy.demo.cli", "the whole loop in one command, with a report"),
    "broker": ("deploy.broker", "start the embedded MQTT broker for one machine"),
    "keys": ("deploy.keys", "generate and inspect manifest signing keys"),
    "console": ("deploy.console.cli", "the web console: fleet, rollouts, models, label queue, data in and out"),
    "pki": ("deploy.pki_cli", "the fleet's CA: provision cameras and services, revoke them"),
    "bench": ("bench.run_all", "run the benchmarks and write bench/results.json"),
}

USAGE = "usage: edgeloop <command> [options]   (edgeloop <command> --help for its options)"


def _help() -> str:
    width = max(len(name) for name in SUBCOMMANDS)
    lines = [USAGE, "", "commands:"]
    lines += [f"  {name:<{width}}  {text}" for name, (_, text) in SUBCOMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_help())
        return 0
    if argv[0] in ("-V", "--version"):
        from importlib.metadata import version

        print(f"edgeloop {version('edgeloop')}")
        return 0
    name, rest = argv[0], argv[1:]
    if name not in SUBCOMMANDS:
        print(f"edgeloop: unknown command {name!r}\n\n{_help()}", file=sys.stderr)
        return 2
    module_name, _ = SUBCOMMANDS[name]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name == module_name:
            print(f"edgeloop {name}: not built yet in this version", file=sys.stderr)
            return 2
        extra = {"torch": "trainer", "torchvision": "trainer", "onnx": "trainer", "cv2": "edge",
                 "onnxruntime": "edge", "paho": "edge", "amqtt": "deploy", "rich": "deploy",
                 "matplotlib": "deploy", "starlette": "console", "uvicorn": "console", "jinja2": "console",
                 "prometheus_client": "deploy"}.get((exc.name or "").split(".")[0])
        hint = f" (pip install 'edgeloop[{extra}]')" if extra else ""
        print(f"edgeloop {name}: missing dependency {exc.name!r}{hint}", file=sys.stderr)
        return 2
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
