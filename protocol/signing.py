"""Ed25519 manifest signing and verification.

Edges install whatever a manifest points at, so the manifest is the trust
anchor: it is signed over a canonical encoding (sorted-key JSON of every field
but ``signature``, with ``key_id`` included so a signature cannot be re-labelled),
and verification fails with a distinct reason per cause so operators can tell
an attack (``bad_signature``) from a misconfiguration (``unknown_key``), a manifest
carried over from another fleet (``wrong_fleet``), an old rollout (``expired``) or a
replay of an older manifest, such as a downgrade (``replayed``).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Iterable

import msgspec
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from .errors import ProtocolError
from .messages import Manifest

__all__ = [
    "generate_keypair", "private_key_from_pem", "public_key_from_pem", "load_private_key",
    "load_public_key", "load_trusted_keys", "write_keypair", "key_id", "canonical_bytes",
    "sign_manifest", "verify_manifest",
]

_canonical = msgspec.json.Encoder(order="sorted").encode


def generate_keypair() -> tuple[bytes, bytes]:
    """New Ed25519 key pair as (private PKCS8 PEM, public SubjectPublicKeyInfo PEM)."""
    key = Ed25519PrivateKey.generate()
    priv = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())
    pub = key.public_key().public_bytes(serialization.Encoding.PEM,
                                        serialization.PublicFormat.SubjectPublicKeyInfo)
    return priv, pub


def private_key_from_pem(pem: bytes) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as e:
        raise ProtocolError("bad_key", f"not a PEM private key: {e}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ProtocolError("bad_key", f"private key is {type(key).__name__}, want Ed25519")
    return key


def public_key_from_pem(pem: bytes) -> Ed25519PublicKey:
    try:
        key = serialization.load_pem_public_key(pem)
    except (ValueError, TypeError) as e:
        raise ProtocolError("bad_key", f"not a PEM public key: {e}") from None
    if not isinstance(key, Ed25519PublicKey):
        raise ProtocolError("bad_key", f"public key is {type(key).__name__}, want Ed25519")
    return key


def load_private_key(path: str | os.PathLike[str]) -> Ed25519PrivateKey:
    """Load an Ed25519 private key from a PEM file."""
    return private_key_from_pem(Path(path).read_bytes())


def load_public_key(path: str | os.PathLike[str]) -> Ed25519PublicKey:
    """Load an Ed25519 public key from a PEM file."""
    return public_key_from_pem(Path(path).read_bytes())


def load_trusted_keys(paths: Iterable[str | os.PathLike[str]]) -> dict[str, Ed25519PublicKey]:
    """Public key files → ``{key_id: key}``, the ``trusted_keys`` argument of verify_manifest."""
    keys = [load_public_key(p) for p in paths]
    return {key_id(k): k for k in keys}


def write_keypair(directory: str | os.PathLike[str], name: str = "signing") -> tuple[Path, Path]:
    """Generate and write ``name.key`` (mode 0600) and ``name.pub``; refuses to overwrite."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    priv, pub = generate_keypair()
    priv_path, pub_path = d / f"{name}.key", d / f"{name}.pub"
    fd = os.open(priv_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(priv)
    pub_path.write_bytes(pub)
    return priv_path, pub_path


def key_id(public_key: Ed25519PublicKey | Ed25519PrivateKey) -> str:
    """First 16 hex chars of sha256(raw public key): short, stable, collision-safe enough for a trust list."""
    if isinstance(public_key, Ed25519PrivateKey):
        public_key = public_key.public_key()
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def canonical_bytes(manifest: Manifest) -> bytes:
    """Deterministic bytes that are signed: every field except ``signature``, keys sorted.

    ``expires`` is forced to float because a receiver decodes it as float;
    an int on the signer side would otherwise serialise differently.
    """
    fields = msgspec.structs.asdict(manifest)
    del fields["signature"]
    fields["expires"] = float(fields["expires"])
    fields["type"] = Manifest.TYPE  # domain separation: these bytes are a manifest
    try:
        return _canonical(fields)
    except (TypeError, ValueError, OverflowError) as e:
        raise ProtocolError("schema", f"manifest not canonically encodable: {e}") from None


def sign_manifest(manifest: Manifest, private_key: Ed25519PrivateKey) -> Manifest:
    """Return a copy of ``manifest`` with ``key_id`` and hex ``signature`` set."""
    unsigned = msgspec.structs.replace(manifest, key_id=key_id(private_key), signature="")
    sig = private_key.sign(canonical_bytes(unsigned))
    return msgspec.structs.replace(unsigned, signature=sig.hex())


def verify_manifest(
    manifest: Manifest,
    trusted_keys: dict[str, Ed25519PublicKey],
    *,
    now: float,
    highest_seq: int | None,
    fleet: str | None = None,
) -> None:
    """Raise ProtocolError unless the manifest is signed by a trusted key, for ``fleet``, unexpired and newer.

    Order matters: the signature is checked before fleet/expiry/sequence so unsigned
    data never influences anything else. ``highest_seq`` is the highest seq the
    device has accepted (persisted; a reset device starts from its provisioning
    floor minus one); None on a fresh device without a floor. ``fleet``: the
    device's fleet (None: not checked, for tools that only inspect manifests).
    """
    key = trusted_keys.get(manifest.key_id)
    if key is None:
        raise ProtocolError("unknown_key", f"key_id {manifest.key_id!r} is not trusted")
    try:
        sig = bytes.fromhex(manifest.signature)
    except ValueError:
        raise ProtocolError("bad_signature", "signature is not hex") from None
    if len(sig) != 64:
        raise ProtocolError("bad_signature", f"signature is {len(sig)} bytes, want 64")
    try:
        key.verify(sig, canonical_bytes(manifest))
    except InvalidSignature:
        raise ProtocolError(
            "bad_signature", f"manifest {manifest.model_id}/{manifest.version} seq {manifest.seq} fails verification"
        ) from None
    if fleet is not None and manifest.fleet != fleet:
        raise ProtocolError("wrong_fleet", f"manifest is for fleet {manifest.fleet!r}, this device is in {fleet!r}")
    if manifest.expires <= now:
        raise ProtocolError("expired", f"manifest expired at {manifest.expires:.0f}, now {now:.0f}")
    if highest_seq is not None and manifest.seq <= highest_seq:
        raise ProtocolError("replayed", f"manifest seq {manifest.seq} <= highest accepted {highest_seq} "
                                        f"({manifest.model_id}/{manifest.version}: an older manifest, or a downgrade)")
