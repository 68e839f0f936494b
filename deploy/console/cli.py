"""``edgeloop console``: serve the web console, manage its users, export and import labelled data.

Examples::

    edgeloop console --trainer http://127.0.0.1:8765 --trainer-token-file ./edgeloop-trainer/api_token \\
                     --deploy-state .edgeloop/deploy --broker mqtt://127.0.0.1:1883
    edgeloop console user add alice --role labeller          # asks for the password
    edgeloop console export --format labelstudio --out ./ls-export
    edgeloop console import labelstudio-export.json

The console binds 127.0.0.1:8080 unless told otherwise (``--host``; a warning when it is not loopback
without TLS). With ``--tls-cert``/``--tls-key`` it serves HTTPS and marks its cookies Secure. Secrets are
read from files or the environment, never from the command line: the trainer token from
``--trainer-token-file`` or ``$EDGELOOP_TRAINER_TOKEN``, user passwords from a prompt or ``--password-file``.
"""
from __future__ import annotations

import argparse
import getpass
import json
import logging
import sys
from pathlib import Path
from typing import Any

from protocol.hosts import is_loopback

__all__ = ["main", "build_parser", "make_console"]

log = logging.getLogger("edgeloop.console")


def _trainer_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--trainer", default="http://127.0.0.1:8765", metavar="URL", help="the trainer's HTTP API (default: %(default)s)")
    p.add_argument("--trainer-token-file", metavar="FILE",
                   help="the trainer's API token (default: $EDGELOOP_TRAINER_TOKEN, else ./edgeloop-trainer/api_token)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="edgeloop console", description=__doc__.split("\n\n")[0],
                                epilog=__doc__.split("Examples::", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", metavar="{serve,user,export,import}")
    s = sub.add_parser("serve", help="serve the console (the default)")
    s.add_argument("--host", default="127.0.0.1", help="address to bind (default: %(default)s)")
    s.add_argument("--port", type=int, default=8080)
    s.add_argument("--state-dir", default="./edgeloop-console", help="users and first-start password (default: %(default)s)")
    _trainer_args(s)
    s.add_argument("--deploy-state", default=".edgeloop/deploy", help="the rollout controller's state dir (default: %(default)s)")
    s.add_argument("--broker", default="mqtt://127.0.0.1:1883", help="MQTT broker for live fleet data ('none': no live data)")
    s.add_argument("--prefix", default="edgeloop/v1", help="topic prefix")
    s.add_argument("--mqtt-ca", help="CA file for an mqtts:// broker")
    s.add_argument("--mqtt-cert", help="client certificate for an mqtts:// broker")
    s.add_argument("--mqtt-key", help="client key for an mqtts:// broker")
    s.add_argument("--tls-cert", help="serve HTTPS with this certificate (cookies become Secure)")
    s.add_argument("--tls-key", help="... and this private key")
    s.add_argument("--log-level", default="INFO")

    u = sub.add_parser("user", help="add, list or remove console users")
    u.add_argument("action", choices=["add", "list", "remove"])
    u.add_argument("name", nargs="?")
    u.add_argument("--role", choices=["viewer", "labeller", "operator"], default="viewer")
    u.add_argument("--password-file", help="read the password from this file instead of a prompt")
    u.add_argument("--state-dir", default="./edgeloop-console")

    e = sub.add_parser("export", help="write labelled samples as an ImageFolder tree or Label Studio tasks")
    e.add_argument("--format", choices=["imagefolder", "labelstudio"], default="imagefolder")
    e.add_argument("--out", required=True, help="directory to write into")
    e.add_argument("--unlabelled", action="store_true", help="labelstudio: also the samples waiting for a label")
    _trainer_args(e)

    i = sub.add_parser("import", help="apply labels from a Label Studio JSON export or a sample_id,label CSV")
    i.add_argument("file")
    i.add_argument("--format", choices=["auto", "csv", "labelstudio"], default="auto")
    i.add_argument("--new-classes", action="store_true", help="allow labels that are not known classes yet (creates them)")
    _trainer_args(i)
    return p


def _client(args: argparse.Namespace) -> Any:
    from .trainer_client import TrainerClient, read_token_file

    return TrainerClient(args.trainer, read_token_file(args.trainer_token_file))


def make_console(args: argparse.Namespace) -> Any:
    from .app import Console, ConsoleSettings

    settings = ConsoleSettings(
        state_dir=Path(args.state_dir), trainer_url=args.trainer, deploy_state=Path(args.deploy_state),
        broker=None if args.broker in ("none", "") else args.broker, prefix=args.prefix, mqtt_ca=args.mqtt_ca,
        mqtt_cert=args.mqtt_cert, mqtt_key=args.mqtt_key, secure_cookies=bool(args.tls_cert))
    return Console(settings, trainer=_client(args))


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    logging.basicConfig(level=getattr(logging, args.log_level.upper(), logging.INFO),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if bool(args.tls_cert) != bool(args.tls_key):
        print("edgeloop console: --tls-cert and --tls-key go together", file=sys.stderr)
        return 2
    if not is_loopback(args.host) and not args.tls_cert:
        log.warning("console listens on %s without TLS: passwords and session cookies cross the network in clear "
                    "text; give --tls-cert/--tls-key or put a TLS reverse proxy in front of it", args.host)
    try:
        console = make_console(args)
    except (FileNotFoundError, ValueError) as e:
        print(f"edgeloop console: {e}", file=sys.stderr)
        return 2
    scheme = "https" if args.tls_cert else "http"
    log.info("edgeloop console on %s://%s:%d", scheme, args.host, args.port)
    config = uvicorn.Config(console.app, host=args.host, port=args.port, log_level="warning",
                            ssl_certfile=args.tls_cert, ssl_keyfile=args.tls_key, timeout_keep_alive=5,
                            limit_concurrency=200, timeout_graceful_shutdown=3, proxy_headers=False, server_header=False)

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            console.close_streams()  # live pages' streams end first, so Ctrl-C stops at once
            super().handle_exit(sig, frame)

    Server(config).run()
    return 0


def _user(args: argparse.Namespace) -> int:
    from .auth import Users

    users = Users(args.state_dir)
    if args.action == "list":
        for name, role in users.names().items():
            print(f"{name}\t{role}")
        return 0
    if not args.name:
        print(f"edgeloop console user {args.action}: give the user NAME", file=sys.stderr)
        return 2
    if args.action == "remove":
        ok = users.remove(args.name)
        print(f"user {args.name} {'removed' if ok else 'not found'}")
        return 0 if ok else 1
    if args.password_file:
        password = Path(args.password_file).read_text(encoding="utf-8").strip()
    else:
        password = getpass.getpass(f"password for {args.name}: ")
        if getpass.getpass("again: ") != password:
            print("passwords differ", file=sys.stderr)
            return 2
    try:
        users.set(args.name, password, args.role)
    except ValueError as e:
        print(f"edgeloop console user add: {e}", file=sys.stderr)
        return 2
    print(f"user {args.name} ({args.role}) saved in {users.path}")
    return 0


def _export(args: argparse.Namespace) -> int:
    from . import exchange

    client, sink = _client(args), exchange.DirSink(args.out)
    if args.format == "imagefolder":
        counts = exchange.export_imagefolder(client, sink)
        print(f"{sum(counts.values())} labelled samples written to {args.out} ({json.dumps(counts)})")
    else:
        counts = exchange.export_labelstudio(client, sink, include_unlabelled=args.unlabelled)
        print(f"{sum(counts.values())} Label Studio tasks written to {args.out}/tasks.json ({json.dumps(counts)}); "
              f"serve {args.out} as Label Studio's local-files document root")
    return 0


def _import(args: argparse.Namespace) -> int:
    from . import exchange

    text = Path(args.file).read_text(encoding="utf-8-sig")
    pairs, skipped = exchange.parse_labels(text, args.format)
    res = exchange.import_labels(_client(args), pairs, new_classes=args.new_classes)
    print(f"{res['applied']} of {len(pairs)} labels applied ({json.dumps(res['counts'])})"
          + (f"; {skipped} tasks without a label" if skipped else ""))
    for r in res["refused"][:10]:
        print(f"  {r['id']}: {r['status']} ({r['label']})")
    return 0 if res["applied"] or not pairs else 1


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0].startswith("-") and argv[0] not in ("-h", "--help"):
        argv = ["serve", *argv]
    args = build_parser().parse_args(argv)
    from .trainer_client import TrainerError

    try:
        return {"serve": _serve, "user": _user, "export": _export, "import": _import}[args.cmd](args)
    except (TrainerError, FileNotFoundError, ValueError, OSError) as e:
        print(f"edgeloop console {args.cmd}: {e}", file=sys.stderr)
        return 1
