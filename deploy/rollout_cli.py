"""``edgeloop rollout``: start, approve, watch and steer model rollouts.

How the commands relate: the controller is a process. ``edgeloop deploy run`` is the service that rolls out
what the trainer promotes; ``start`` runs a controller in the foreground for one version you name until the
rollout ends; ``run`` continues whatever rollout is active (no promotions). All state lives in SQLite
(``--state-dir``/rollout.sqlite), so the other commands work from any shell: ``status``, ``devices`` and
``promotions`` read it; ``pause``/``resume``/``abort``/``rollback``/``approve``/``reject`` and
``devices --forget`` write a command that the running controller applies within a tick. A controller killed
mid-rollout is simply started again and continues.
"""
from __future__ import annotations

import argparse
import getpass
import json
import logging
import sys
import time
from typing import Any

from .controller import Controller, rollout_status
from .rollout_gate import Policy, parse_duration, parse_fraction, parse_waves
from .rollout_store import TERMINAL, RolloutStore, SchemaError

__all__ = ["main"]

DEFAULT_STATE = ".edgeloop/deploy"
DEFAULT_KEY = ".edgeloop/keys/signing.key"


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--state-dir", default=DEFAULT_STATE, help=f"controller state (default {DEFAULT_STATE})")


def _controller_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--broker", default="mqtt://127.0.0.1:1883")
    p.add_argument("--prefix", default="edgeloop/v1", help="topic prefix")
    p.add_argument("--key", default=DEFAULT_KEY, help="signing key (edgeloop keys generate)")
    p.add_argument("--chunk-size", type=int, default=256 * 1024)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="edgeloop rollout", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("start", help="roll a version out (runs the controller until the rollout ends)")
    s.add_argument("--version", required=True)
    s.add_argument("--model", help="ONNX file of that version (not needed if registered before)")
    s.add_argument("--previous", nargs=2, metavar=("VERSION", "MODEL"),
                   help="what the fleet runs now (rollback target), if the controller does not know it yet")
    s.add_argument("--fleet", default="default")
    s.add_argument("--waves", default="5%,25%,100%")
    s.add_argument("--soak", default="60s")
    s.add_argument("--max-failed", default="10%")
    s.add_argument("--min-agreement", type=float, default=0.9)
    s.add_argument("--shadow", type=int, default=0, help="shadow-run frames per device before the swap (0: none)")
    s.add_argument("--wave-timeout", default="10m")
    s.add_argument("--detach", action="store_true", help="only record the rollout; a running controller takes it")
    _common(s)
    _controller_args(s)
    r = sub.add_parser("run", help="run a controller that continues an interrupted rollout (promotions: "
                                   "edgeloop deploy run)")
    r.add_argument("--until-done", action="store_true", help="exit when no rollout is active")
    _common(r)
    _controller_args(r)
    for name, text in (("status", "show the latest (or --id) rollout"),
                       ("pause", "stop advancing waves"), ("resume", "continue a paused rollout"),
                       ("abort", "stop the rollout; devices keep what they run"),
                       ("rollback", "publish the previous version to the whole fleet")):
        c = sub.add_parser(name, help=text)
        c.add_argument("--id", help="rollout id (default: the latest)")
        _common(c)
        if name == "status":
            c.add_argument("--json", action="store_true")
    a = sub.add_parser("approve", help="release the rollout of VERSION that awaits approval (deploy mode approve)")
    a.add_argument("version")
    j = sub.add_parser("reject", help="refuse the rollout of VERSION that awaits approval")
    j.add_argument("version")
    j.add_argument("--reason", required=True, help="why (kept with the rollout's history)")
    for c in (a, j):
        c.add_argument("--fleet", help="the fleet (default: whichever waits for VERSION)")
        c.add_argument("--by", default=getpass.getuser(), help="who decides (default: the login name)")
        _common(c)
    d = sub.add_parser("devices", help="per-device table; --forget ID clears a decommissioned device")
    d.add_argument("--forget", metavar="ID", action="append",
                   help="drop device ID: the controller clears its retained state, birth and model status on the "
                        "broker and forgets it (stop the device and revoke its certificate first); repeatable")
    d.add_argument("--json", action="store_true")
    _common(d)
    pr = sub.add_parser("promotions", help="promoted versions the controller received, and what became of them")
    pr.add_argument("--json", action="store_true")
    pr.add_argument("--limit", type=int, default=20)
    _common(pr)
    return p


def _policy(args: argparse.Namespace) -> Policy:
    return Policy(waves=parse_waves(args.waves), soak=parse_duration(args.soak),
                  max_failed=parse_fraction(args.max_failed), min_agreement=args.min_agreement,
                  shadow=args.shadow, wave_timeout=parse_duration(args.wave_timeout))


def _print_status(st: dict[str, Any]) -> None:
    from rich.console import Console

    con = Console()
    if not st:
        con.print("no rollouts yet")
        return
    con.print(f"[bold]{st['id']}[/] {st['model_id']}/{st['version']} on fleet {st['fleet']}: "
              f"[bold]{st['state']}[/] wave {st['wave']} ({st['wave_fraction']:.0%})"
              + (f"  reason: {st['reason']}" if st.get("reason") else ""))
    con.print(f"previous: {st['prev_version']}   devices: {st['devices']}   "
              f"controller {'running' if st['controller_alive'] else '[red]not running[/]'}")
    for e in st["events"][-8:]:
        con.print(f"  {time.strftime('%H:%M:%S', time.localtime(e['ts']))} {e['kind']:<10} {e['detail'] or ''}")


def _print_devices(rows: list[dict[str, Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"{len(rows)} devices")
    for col in ("device", "online", "version", "state", "reason", "last seen", "agreement", "fps", "outbox"):
        t.add_column(col)
    now = time.time()
    for r in rows:
        agree = r.get("agreement")
        t.add_row(r["device"], "yes" if r.get("online") else "[red]no[/]", r.get("version") or "-",
                  f"{r.get('state') or '-'}" + (f" ({r.get('status_version')})" if r.get("status_version") else ""),
                  r.get("reason") or "", f"{now - r['last_seen']:.0f}s ago" if r.get("last_seen") else "-",
                  f"{agree:.3f}" if isinstance(agree, (int, float)) else "-",
                  f"{r['fps']:.1f}" if r.get("fps") is not None else "-",
                  str(r["outbox_depth"]) if r.get("outbox_depth") is not None else "-")
    Console().print(t)


def _no_controller(store: RolloutStore) -> str:
    return "" if store.controller_alive() else " (no controller running: `edgeloop deploy run` applies it when it starts)"


def _devices(store: RolloutStore, args: argparse.Namespace) -> int:
    if args.forget:
        known = {d["device"] for d in store.devices()}
        for device in args.forget:
            store.queue_request("forget", device)
            note = "" if device in known else " (not in the device table; its retained topics are cleared anyway)"
            print(f"forget {device} queued{note}{_no_controller(store)}")
        return 0
    if args.json:
        print(json.dumps(store.devices(), indent=2, default=str))
    else:
        _print_devices(store.devices())
    return 0


def _print_promotions(store: RolloutStore, args: argparse.Namespace) -> None:
    rows = store.promotions(limit=args.limit)
    if args.json:
        print(json.dumps([{k: getattr(p, k) for k in ("model_id", "version", "seq", "parent", "sha256", "size",
                                                       "status", "detail", "rollout_id", "received", "path")}
                          for p in rows], indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"{len(rows)} promotions (newest last)")
    for col in ("version", "model", "status", "rollout", "received", "detail"):
        t.add_column(col)
    for p in rows:
        r = store.rollout(p.rollout_id) if p.rollout_id else None
        t.add_row(p.version, p.model_id, p.status, f"{r.id} {r.state}" if r else "-",
                  time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(p.received)), p.detail or "")
    Console().print(t)


def _run_controller(args: argparse.Namespace, rid: str | None, until_done: bool) -> int:
    ctl = Controller(args.broker, args.key, args.state_dir, prefix=args.prefix, chunk_size=args.chunk_size)
    ctl.start()
    last = ""
    try:
        while True:
            time.sleep(1.0)
            st = ctl.status(rid)
            line = f"{st.get('state')} wave {st.get('wave')} devices {st.get('devices')}" if st else "idle"
            if line != last:
                print(time.strftime("%H:%M:%S"), line, flush=True)
                last = line
            if rid is not None and st.get("state") in TERMINAL:
                print(f"rollout {rid}: {st['state']}" + (f" ({st['reason']})" if st.get("reason") else ""))
                return 0 if st["state"] == "completed" else 1
            if rid is None and until_done and not ctl.store.get_active():
                return 0
    except KeyboardInterrupt:
        print("controller stopped; `edgeloop rollout run` continues the rollout", file=sys.stderr)
        return 130
    finally:
        ctl.stop()


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    try:
        if args.cmd == "start":
            policy = _policy(args)
            # Recording the rollout needs no MQTT; the controller below (or a running one) publishes it.
            ctl = Controller(args.broker, args.key, args.state_dir, prefix=args.prefix, chunk_size=args.chunk_size)
            rid = ctl.start_rollout(args.version, args.model, policy, fleet=args.fleet,
                                    previous=tuple(args.previous) if args.previous else None)  # type: ignore[arg-type]
            ctl.store.close()
            print(rid if args.detach else f"rollout {rid} started", flush=True)
            return 0 if args.detach else _run_controller(args, rid, True)
        if args.cmd == "run":
            return _run_controller(args, None, args.until_done)
        store = RolloutStore(f"{args.state_dir}/rollout.sqlite")
        try:
            if args.cmd == "status":
                st = rollout_status(store, args.id)
                if args.json:
                    print(json.dumps(st, indent=2, default=str))
                else:
                    _print_status(st)
            elif args.cmd == "devices":
                return _devices(store, args)
            elif args.cmd == "promotions":
                _print_promotions(store, args)
            elif args.cmd in ("approve", "reject"):
                r = (store.approve(args.version, args.by, args.fleet) if args.cmd == "approve"
                     else store.reject(args.version, args.by, args.reason, args.fleet))
                print(f"{args.cmd} of {args.version} queued for {r.id} (fleet {r.fleet}){_no_controller(store)}")
            else:
                r = store.rollout(args.id) if args.id else store.latest()
                if r is None:
                    print("no such rollout", file=sys.stderr)
                    return 1
                store.queue_command(r.id, args.cmd, f"by {getpass.getuser()}")
                print(f"{args.cmd} queued for {r.id}{_no_controller(store)}")
        finally:
            store.close()
    except (KeyError, ValueError, FileNotFoundError, SchemaError) as e:
        print(f"edgeloop rollout: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
