"""``edgeloop keys``: create and inspect the Ed25519 keys that sign rollout manifests.

Devices install whatever a correctly signed manifest points at, so the private
key is the fleet's root of trust: it is written once with mode 0600 and never
overwritten (``generate`` refuses), and the public half (``signing.pub``) is what
each device lists in its trusted keys. ``show`` prints the key id the manifests
carry, so an operator can match a device's ``unknown_key`` rejection to a file.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from protocol.errors import ProtocolError
from protocol.signing import key_id, load_private_key, load_public_key, write_keypair

__all__ = ["main", "generate", "show"]


def generate(out: str | Path, name: str = "signing") -> tuple[Path, Path]:
    """Write ``{out}/{name}.key`` (private, 0600) and ``{name}.pub``; refuse to overwrite."""
    out = Path(out)
    for suffix in (".key", ".pub"):
        if (out / f"{name}{suffix}").exists():
            raise FileExistsError(f"{out / (name + suffix)} exists; refusing to overwrite a signing key")
    return write_keypair(out, name)


def show(path: str | Path) -> dict[str, str]:
    """Describe a key file (private or public): kind, key id, and the public key path to hand to devices."""
    p = Path(path)
    if p.is_dir():
        p = p / "signing.pub" if (p / "signing.pub").exists() else p / "signing.key"
    try:
        key = load_public_key(p)
        kind = "public"
    except ProtocolError:
        key = load_private_key(p)  # raises bad_key with a clear message if it is neither
        kind = "private"
    return {"path": str(p), "kind": kind, "key_id": key_id(key)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="edgeloop keys", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("generate", help="write a new signing key pair (NAME.key 0600 + NAME.pub)")
    g.add_argument("--out", required=True, help="directory for the key pair")
    g.add_argument("--name", default="signing", help="file name stem (default: signing)")
    s = sub.add_parser("show", help="print the key id of a key file or key directory")
    s.add_argument("path")
    args = parser.parse_args(argv)
    try:
        if args.cmd == "generate":
            priv, pub = generate(args.out, args.name)
            info = show(pub)
            print(f"private key: {priv}  (keep secret; the rollout controller signs with it)")
            print(f"public key:  {pub}  (add to each device's trusted keys)")
            print(f"key id:      {info['key_id']}")
        else:
            info = show(args.path)
            print(f"{info['kind']} key {info['path']}: key id {info['key_id']}")
    except (FileExistsError, FileNotFoundError, ProtocolError) as e:
        print(f"edgeloop keys: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
