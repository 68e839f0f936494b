"""A camera's provisioning bundle: its identity plus the config file ``edgeloop edge --config`` reads.

``edgeloop pki device ID`` writes ``DIR/devices/ID/``: ``ca.pem``, ``cert.pem``, ``key.pem`` (deploy/pki.py), the
manifest signing public key(s) the device trusts (``signing-<key id>.pub``), and ``edge.yaml`` with the broker
URL, the device id and fleet, those files' paths as they will be on the camera (``--install-dir``) and
``updater.min_manifest_seq``: the sequence of the manifest the fleet runs now. A device that was reset (no
updater state) starts from that floor, so a replayed older manifest — a downgrade — is rejected.
"""
from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import yaml
from cryptography.hazmat.primitives import serialization

from deploy.pki import PKI, PKIError
from protocol.errors import ProtocolError
from protocol.signing import key_id, load_private_key, load_public_key
from protocol.topics import DEFAULT_PREFIX

__all__ = ["DEFAULT_SIGNING_KEY", "DEFAULT_DEPLOY_STATE", "fleet_manifest_seq", "write_device_config",
           "default_broker_url", "load_signing_keys"]

#: Where `edgeloop rollout` keeps its signing key and state by default (deploy/rollout_cli.py).
DEFAULT_SIGNING_KEY = Path(".edgeloop/keys/signing.pub")
DEFAULT_DEPLOY_STATE = Path(".edgeloop/deploy")
CONFIG_NAME = "edge.yaml"


def fleet_manifest_seq(deploy_state: str | Path, fleet: str) -> int | None:
    """Sequence of the manifest the rollout controller last published for ``fleet`` (what the fleet accepts
    now), read from its state (``rollout.sqlite``, read-only); None if there is no such state or fleet."""
    db_path = Path(deploy_state) / "rollout.sqlite"
    if not db_path.exists():
        return None
    try:
        with sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=10) as db:
            row = db.execute("SELECT seq FROM fleets WHERE fleet = ?", (fleet,)).fetchone()
    except sqlite3.Error as exc:
        raise PKIError(f"cannot read the fleet's manifest sequence from {db_path}: {exc}; pass --min-seq") from None
    return int(row[0]) if row and row[0] is not None else None


def load_signing_keys(paths: list[Path]) -> dict[str, bytes]:
    """``{key id: public PEM}`` of manifest signing key files; a private key file is accepted and only its
    public half kept. A device needs at least one: without a trusted key it installs no model."""
    if not paths:
        raise PKIError("a device needs at least one trusted manifest signing key (--signing-key; "
                       "`edgeloop keys generate --out .edgeloop/keys` makes one)")
    out = {}
    for path in paths:
        try:
            key = load_public_key(path)
        except ProtocolError:
            key = load_private_key(path).public_key()  # raises bad_key if it is neither
        except FileNotFoundError:
            raise PKIError(f"signing key {path} not found (create one with `edgeloop keys generate --out "
                           f"{Path(path).parent}`, or pass --signing-key)") from None
        out[key_id(key)] = key.public_bytes(serialization.Encoding.PEM,
                                            serialization.PublicFormat.SubjectPublicKeyInfo)
    return out


def default_broker_url(pki: PKI) -> str:
    """mqtts:// to the first name in the broker certificate that other machines can use, on the port of a
    broker running on this PKI (else 8883)."""
    import json

    port = 8883
    for rec in sorted((pki.root / "brokers").glob("*.json")):
        try:
            port = int(json.loads(rec.read_text())["port"])
            break
        except (OSError, ValueError, KeyError):
            continue
    sans = [s for s in pki.broker_sans() if s not in ("localhost", "127.0.0.1", "::1")]
    host = sans[0] if sans else "127.0.0.1"
    return f"mqtts://{f'[{host}]' if ':' in host else host}:{port}"


def write_device_config(pki: PKI, device_id: str, *, broker: str, signing_keys: dict[str, bytes], min_seq: int,
                        install_dir: str | None = None, prefix: str = DEFAULT_PREFIX) -> Path:
    """Write the signing keys (from :func:`load_signing_keys`) and ``edge.yaml`` into the device's directory;
    returns the config's path.

    Paths in the config are where the bundle will be on the camera (``install_dir``, default: this directory,
    for a device on this machine).
    """
    ident = pki.devices(include_revoked=True).get(device_id)
    if ident is None:
        raise PKIError(f"{device_id!r} is not a provisioned device")
    if not signing_keys:
        raise PKIError("a device needs at least one trusted manifest signing key")
    if min_seq < 0:
        raise PKIError(f"--min-seq must be >= 0, not {min_seq}")
    directory = pki.root / "devices" / device_id
    base = (install_dir or str(directory)).rstrip("/")
    for old in directory.glob("signing-*.pub"):
        old.unlink()
    trusted = []
    for kid, pem in signing_keys.items():
        (directory / f"signing-{kid}.pub").write_bytes(pem)
        trusted.append(f"{base}/signing-{kid}.pub")
    config = {
        "device_id": device_id,
        "fleet": ident.fleet,
        "mqtt": {"url": broker, "ca_file": f"{base}/ca.pem", "cert_file": f"{base}/cert.pem",
                 "key_file": f"{base}/key.pem", "topic_prefix": prefix},
        "updater": {"trusted_keys": sorted(set(trusted)), "min_manifest_seq": int(min_seq)},
    }
    header = (f"# edgeloop edge --config {base}/{CONFIG_NAME}\n"
              f"# written by `edgeloop pki device {device_id}` on {time.strftime('%Y-%m-%d %H:%M:%S')}; add source, "
              "model and state_dir for this camera.\n")
    path = directory / CONFIG_NAME
    path.write_text(header + yaml.safe_dump(config, sort_keys=False))
    return path
