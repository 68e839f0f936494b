"""``edgeloop pki``: the fleet's CA, camera provisioning and revocation.

    edgeloop pki init --dir DIR [--host NAME ...]            CA, broker certificate, trainer/deploy/monitor
    edgeloop pki device ID --dir DIR [--fleet NAME]          a camera's identity + its edge.yaml
    edgeloop pki revoke ID --dir DIR                         onto the CRL; the broker refuses it
    edgeloop pki service NAME --role trainer --dir DIR       another service identity (a second trainer)
    edgeloop pki broker --dir DIR --host NAME ... --force    re-issue the broker's certificate for new names
    edgeloop pki list --dir DIR [--json]                     every identity, its role/fleet, revoked or not
    edgeloop pki acl --dir DIR [--format emqx]               the ACL for this PKI (mosquitto or EMQX syntax)

--dir defaults to $EDGELOOP_PKI_DIR. Changes that affect the broker (device, revoke, service) regenerate
the ACL of every broker `edgeloop broker` runs on this PKI and reload it (SIGHUP: mosquitto re-reads ACL and
CRL without dropping connections). A broker you run yourself needs the same: regenerate its ACL with
`edgeloop pki acl` and `kill -HUP` it.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from deploy.pki import LEAF_DAYS, SERVICE_ROLES, PKI, PKIError, init_pki, open_pki
from deploy.provision import (DEFAULT_DEPLOY_STATE, DEFAULT_SIGNING_KEY, default_broker_url, fleet_manifest_seq,
                              load_signing_keys, write_device_config)
from protocol.errors import ProtocolError
from protocol.mqtt import MQTTURLError, parse_url
from protocol.topics import DEFAULT_PREFIX, Topics

__all__ = ["main"]

ENV_DIR = "EDGELOOP_PKI_DIR"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="edgeloop pki", description="The fleet's certificate authority: broker, "
                                "service and camera identities, provisioning and revocation.",
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    sub = p.add_subparsers(dest="cmd", required=True)

    def with_dir(sp: argparse.ArgumentParser) -> argparse.ArgumentParser:
        sp.add_argument("--dir", default=os.environ.get(ENV_DIR), help=f"the PKI directory (default ${ENV_DIR})")
        return sp

    i = with_dir(sub.add_parser("init", help="create the CA, the broker certificate and the service identities"))
    i.add_argument("--host", action="append", default=[], metavar="NAME",
                   help="a name or address clients use to reach the broker (repeatable; localhost, 127.0.0.1 "
                        "and ::1 are always in)")
    i.add_argument("--force", action="store_true", help="start a new CA over an existing one (every identity it "
                   "issued stops working)")

    d = with_dir(sub.add_parser("device", help="issue a camera's identity and write its edge.yaml"))
    d.add_argument("id", help="device id: the certificate's CN, MQTT username, client id and topic segment")
    d.add_argument("--fleet", help="fleet whose manifests it follows (default: its current fleet, else 'default')")
    d.add_argument("--broker", metavar="URL", help="broker URL for the device (default: mqtts:// to the broker "
                   "certificate's first non-local name, port of a running edgeloop broker or 8883)")
    d.add_argument("--signing-key", action="append", type=Path, metavar="PEM",
                   help=f"manifest signing key the device trusts, public or private half (repeatable; default "
                        f"{DEFAULT_SIGNING_KEY})")
    d.add_argument("--min-seq", type=int, metavar="N", help="manifest sequence floor (default: the fleet's current "
                   "manifest from --deploy-state, else 0)")
    d.add_argument("--deploy-state", type=Path, default=DEFAULT_DEPLOY_STATE,
                   help="rollout controller state to read the floor from (default %(default)s)")
    d.add_argument("--install-dir", metavar="PATH", help="where the bundle will be on the camera (paths in "
                   "edge.yaml; default: this directory)")
    d.add_argument("--prefix", default=DEFAULT_PREFIX, help="topic prefix (default %(default)s)")
    d.add_argument("--days", type=int, default=LEAF_DAYS, help="certificate lifetime (default %(default)s)")
    d.add_argument("--force", action="store_true", help="re-issue: new key and certificate, the old ones revoked")
    d.add_argument("--config-only", action="store_true", help="keep the certificate; rewrite edge.yaml and the "
                   "trusted signing keys (signing key rotation, a new broker address)")

    r = with_dir(sub.add_parser("revoke", help="revoke an identity: the broker refuses it from its next reload"))
    r.add_argument("id")

    s = with_dir(sub.add_parser("service", help="issue another service identity"))
    s.add_argument("name")
    s.add_argument("--role", choices=SERVICE_ROLES, required=True)
    s.add_argument("--force", action="store_true", help="re-issue (the old certificate is revoked)")

    b = with_dir(sub.add_parser("broker", help="re-issue the broker's server certificate"))
    b.add_argument("--host", action="append", default=[], metavar="NAME",
                   help="every name or address clients use (repeatable; replaces the old list; localhost, "
                        "127.0.0.1 and ::1 are always in)")
    b.add_argument("--force", action="store_true", help="replace the existing broker certificate")

    ls = with_dir(sub.add_parser("list", help="every identity: role or fleet, certificate expiry, revoked"))
    ls.add_argument("--json", action="store_true")

    a = with_dir(sub.add_parser("acl", help="print the ACL for this PKI"))
    a.add_argument("--format", choices=["mosquitto", "emqx"], default="mosquitto")
    a.add_argument("--prefix", default=DEFAULT_PREFIX)
    return p


def _reload(pki: PKI) -> None:
    from deploy.broker import reload_brokers

    pids = reload_brokers(pki.root)
    if pids:
        print(f"reloaded broker{'s' if len(pids) > 1 else ''} (pid {', '.join(map(str, pids))}): ACL and CRL applied")
    else:
        print("no running `edgeloop broker` uses this PKI; a broker you run yourself: `edgeloop pki acl` into its "
              "acl_file, then kill -HUP it")


def _device(args: argparse.Namespace) -> int:
    pki = open_pki(args.dir)
    # Everything that can fail is checked before a certificate is issued: no half-provisioned device.
    keys = load_signing_keys(args.signing_key or [DEFAULT_SIGNING_KEY])
    Topics(args.prefix)
    if args.broker:
        parse_url(args.broker)
    if args.min_seq is not None and args.min_seq < 0:
        raise PKIError(f"--min-seq must be >= 0, not {args.min_seq}")
    current = pki.devices(include_revoked=True).get(args.id)
    if args.config_only and args.id not in pki.devices():
        raise PKIError(f"--config-only: {args.id!r} is not an active device of {pki.root}")
    if args.config_only and args.fleet and args.fleet != current.fleet:  # type: ignore[union-attr]
        raise PKIError("--config-only keeps the certificate and its fleet; moving a device to another fleet "
                       "re-issues it (--force --fleet NAME)")
    fleet = args.fleet or (current.fleet if current else None) or "default"
    if args.min_seq is not None:
        floor, origin = args.min_seq, "--min-seq"
    else:
        found = fleet_manifest_seq(args.deploy_state, fleet)
        floor, origin = (found, f"fleet {fleet}'s manifest in {args.deploy_state}") if found is not None else \
            (0, f"no rollout state for fleet {fleet} in {args.deploy_state}")
    if not args.config_only:
        pki.issue(args.id, "device", fleet=fleet, force=args.force, days=args.days)
    broker = args.broker or default_broker_url(pki)
    config = write_device_config(pki, args.id, broker=broker, signing_keys=keys, min_seq=floor,
                                 install_dir=args.install_dir, prefix=args.prefix)
    print(f"device {args.id}: {config.parent}/{{ca,cert,key}}.pem")
    print(f"config: {config}  (broker {broker}, min_manifest_seq {floor} from {origin})")
    print(f"copy {config.parent}/ to the camera{' as ' + args.install_dir if args.install_dir else ''} and run "
          f"`edgeloop edge --config {(args.install_dir or str(config.parent)).rstrip('/')}/edge.yaml`")
    _reload(pki)
    return 0


def _list(args: argparse.Namespace) -> int:
    pki = open_pki(args.dir)
    idents = pki.identities()
    if args.json:
        print(json.dumps({n: {**vars(i), "active": i.active} for n, i in idents.items()}, indent=2))
        return 0
    print(f"{'identity':<24} {'role':<8} {'fleet':<12} {'expires':<11} state")
    for name, i in sorted(idents.items(), key=lambda kv: (kv[1].kind, kv[0])):
        print(f"{name:<24} {i.role:<8} {i.fleet or '-':<12} {time.strftime('%Y-%m-%d', time.localtime(i.not_after))}"
              f"  {'active' if i.active else 'REVOKED'}")
    return 0


def _run(args: argparse.Namespace) -> int:
    if args.cmd == "init":
        pki = init_pki(args.dir, args.host, force=args.force)
        print(f"CA: {pki.ca_cert_path} (key in {pki.ca_key_path.parent}/, keep it offline)")
        print(f"broker certificate: {pki.broker_dir}/cert.pem for {', '.join(pki.broker_sans())}")
        for name in pki.services():
            print(f"service identity: {pki.root / 'services' / name}/{{ca,cert,key}}.pem")
        print(f"next: edgeloop broker --pki {pki.root}; edgeloop pki device ID --dir {pki.root}")
        return 0
    if args.cmd == "device":
        return _device(args)
    if args.cmd == "revoke":
        pki = open_pki(args.dir)
        serials = pki.revoke(args.id)
        print(f"revoked {args.id}: {len(serials)} certificate(s) on {pki.crl_path}")
        _reload(pki)
        return 0
    if args.cmd == "service":
        pki = open_pki(args.dir)
        d = pki.issue(args.name, args.role, force=args.force)
        print(f"service identity {args.name} ({args.role}): {d}/{{ca,cert,key}}.pem")
        _reload(pki)
        return 0
    if args.cmd == "broker":
        pki = open_pki(args.dir)
        pki.issue_broker_cert(tuple(args.host), force=args.force)
        print(f"broker certificate for {', '.join(pki.broker_sans())}; restart the broker to use it")
        return 0
    if args.cmd == "list":
        return _list(args)
    from deploy.acl import emqx_acl, mosquitto_acl

    render = emqx_acl if args.format == "emqx" else mosquitto_acl
    print(render(open_pki(args.dir), Topics(args.prefix)), end="")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if not args.dir:
        print(f"edgeloop pki: give --dir DIR (or set {ENV_DIR})", file=sys.stderr)
        return 2
    try:
        return _run(args)
    except (PKIError, ProtocolError, MQTTURLError, OSError) as exc:
        print(f"edgeloop pki: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
