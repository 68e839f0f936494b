"""The fleet's own small certificate authority: who may connect to the broker, and as whom.

Every client of the broker proves an identity with a certificate this CA issued: a device (certificate CN =
device id), or a service (``trainer``, ``deploy``, or more instances of those roles). The broker uses the CN
as the MQTT username *and* client id, so the ACL (deploy/acl.py) pins each identity to its own topics and no
one can take over another's session by guessing its client id. Revoking puts the certificate's serial on a
CRL the broker checks at every TLS handshake.

Layout of a PKI directory (directories 0700, private keys 0600; nothing is ever overwritten without
``force``)::

    ca.pem                    the CA certificate every client and the broker trust
    private/ca.key            the CA key: whoever holds it can mint identities (keep this directory offline)
    crl.pem                   revoked serials (always present: the broker refuses every client without one)
    broker/{cert,key}.pem     the broker's server certificate (SANs: localhost, 127.0.0.1, ::1, --host ...)
    services/NAME/{ca,cert,key}.pem    trainer, deploy, monitor, ... (one directory per identity)
    devices/ID/{ca,cert,key}.pem       one camera (plus its config file, written by deploy/provision.py)
    registry.json             every identity issued: kind, role or fleet, serials, revoked or not
    brokers/PID.json          brokers running on this PKI (for reloading them after a change)

Keys are ECDSA P-256: small, fast handshakes on a camera's CPU, supported by every TLS stack that matters.
"""
from __future__ import annotations

import datetime as dt
import fcntl
import ipaddress
import json
import os
import secrets
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from protocol.durable import atomic_write
from protocol.topics import check_id

__all__ = [
    "PKI", "PKIError", "Identity", "ROLES", "SERVICE_ROLES", "provisioned_devices", "init_pki", "open_pki",
    "write_private", "make_private_dir",
]

Kind = Literal["device", "service"]
#: Service roles the ACL knows (deploy/acl.py). ``monitor`` reads everything and writes nothing (a console,
#: a dashboard, an operator's ``mosquitto_sub``).
SERVICE_ROLES = ("trainer", "deploy", "monitor")
ROLES = ("device", *SERVICE_ROLES)
#: Identities ``edgeloop pki init`` issues, one per role, named after it.
DEFAULT_SERVICES = SERVICE_ROLES

CA_DAYS = 3650          # the CA and the CRL: ten years, then a new CA is a planned event
LEAF_DAYS = 1825        # devices and services: five years (a camera's service life); renew with --force
BROKER_SANS = ("localhost", "127.0.0.1", "::1")
REGISTRY_VERSION = 1


class PKIError(RuntimeError):
    """A PKI operation that cannot be done; the message says why and what to do."""


@dataclass
class Identity:
    """One entry of the registry: the name is the certificate CN, the MQTT username and client id."""

    name: str
    kind: Kind
    role: str                        # "device" or a service role
    fleet: str | None = None         # devices only
    serials: list[str] = field(default_factory=list)  # every certificate issued to it, newest last (hex)
    issued: float = 0.0
    not_after: float = 0.0
    revoked: float | None = None     # when, if revoked

    @property
    def active(self) -> bool:
        return self.revoked is None


# -- files ------------------------------------------------------------------------------------------------

def make_private_dir(path: Path) -> Path:
    """mkdir -p with mode 0700 on every directory it creates, and on ``path`` itself."""
    missing = [p for p in (path, *path.parents) if not p.exists()]
    for p in reversed(missing):
        p.mkdir(mode=0o700, exist_ok=True)
        os.chmod(p, 0o700)  # mkdir's mode is filtered by the umask
    os.chmod(path, 0o700)
    return path


def write_private(path: Path, data: bytes, force: bool = False) -> None:
    """Write a secret with mode 0600 from its first byte (never world-readable, not even for a moment)."""
    if path.exists() and not force:
        raise PKIError(f"{path} exists; refusing to overwrite a key (use --force)")
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o600)  # O_CREAT's mode is masked by the umask only towards *fewer* rights; be explicit
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _pem_cert(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


# -- the CA -----------------------------------------------------------------------------------------------

class PKI:
    """A PKI directory. Use :func:`init_pki` to create one and :func:`open_pki` to use an existing one."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).resolve()

    # paths
    @property
    def ca_cert_path(self) -> Path:
        return self.root / "ca.pem"

    @property
    def ca_key_path(self) -> Path:
        return self.root / "private" / "ca.key"

    @property
    def crl_path(self) -> Path:
        return self.root / "crl.pem"

    @property
    def broker_dir(self) -> Path:
        return self.root / "broker"

    @property
    def registry_path(self) -> Path:
        return self.root / "registry.json"

    def identity_dir(self, name: str) -> Path:
        ident = self.identities().get(name)
        kind = ident.kind if ident else "device"
        return self.root / ("services" if kind == "service" else "devices") / name

    def exists(self) -> bool:
        return self.ca_cert_path.exists() and self.ca_key_path.exists() and self.registry_path.exists()

    # registry
    @contextmanager
    def locked(self) -> Iterator[None]:
        """One writer at a time (two `edgeloop pki device` runs in parallel must not lose an entry, nor their
        broker reloads overlap: mosquitto drops a SIGHUP that arrives while it is reloading)."""
        make_private_dir(self.root)
        with open(self.root / ".lock", "a+") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def _read_registry(self) -> dict[str, Any]:
        try:
            data = json.loads(self.registry_path.read_text())
        except FileNotFoundError:
            raise PKIError(f"{self.root} is not an edgeloop PKI (no registry.json): run `edgeloop pki init --dir "
                           f"{self.root}` first") from None
        except (OSError, ValueError) as exc:
            raise PKIError(f"{self.registry_path}: unreadable ({exc})") from None
        if data.get("version") != REGISTRY_VERSION:
            raise PKIError(f"{self.registry_path}: registry version {data.get('version')!r}, expected "
                           f"{REGISTRY_VERSION}")
        return data

    def _write_registry(self, data: dict[str, Any]) -> None:
        atomic_write(self.registry_path, (json.dumps(data, indent=1, sort_keys=True) + "\n").encode())

    def identities(self) -> dict[str, Identity]:
        """Every identity ever issued (revoked ones too), by name."""
        if not self.registry_path.exists():
            return {}
        raw = self._read_registry()["identities"]
        return {name: Identity(name=name, **entry) for name, entry in raw.items()}

    def devices(self, include_revoked: bool = False) -> dict[str, Identity]:
        return {n: i for n, i in self.identities().items()
                if i.kind == "device" and (include_revoked or i.active)}

    def services(self, include_revoked: bool = False) -> dict[str, Identity]:
        return {n: i for n, i in self.identities().items()
                if i.kind == "service" and (include_revoked or i.active)}

    def _ca(self) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        try:
            cert = x509.load_pem_x509_certificate(self.ca_cert_path.read_bytes())
            key = serialization.load_pem_private_key(self.ca_key_path.read_bytes(), password=None)
        except FileNotFoundError as exc:
            raise PKIError(f"{exc.filename} missing: is {self.root} an edgeloop PKI (`edgeloop pki init`)?") from None
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        return cert, key

    # issuing
    def _issue(self, cn: str, *, server: bool, days: int, sans: tuple[str, ...] = (),
               ou: str | None = None) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        ca_cert, ca_key = self._ca()
        key = ec.generate_private_key(ec.SECP256R1())
        now = _now()
        attrs = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, "edgeloop")]
        if ou:
            attrs.append(x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, ou))
        attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, cn))
        b = (x509.CertificateBuilder()
             .subject_name(x509.Name(attrs))
             .issuer_name(ca_cert.subject)
             .public_key(key.public_key())
             .serial_number(x509.random_serial_number())
             .not_valid_before(now - dt.timedelta(minutes=5))  # small clock skew between machines
             .not_valid_after(min(now + dt.timedelta(days=days), ca_cert.not_valid_after_utc))
             .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
             .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                          data_encipherment=False, key_agreement=True, key_cert_sign=False,
                                          crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
             .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH if server
                                                   else ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
             .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
             .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False))
        if sans:
            b = b.add_extension(x509.SubjectAlternativeName([_san(s) for s in sans]), critical=False)
        return b.sign(ca_key, hashes.SHA256()), key

    def _write_identity_files(self, directory: Path, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey,
                              force: bool) -> None:
        make_private_dir(directory)
        write_private(directory / "key.pem", _pem_key(key), force=force)
        atomic_write(directory / "cert.pem", _pem_cert(cert))
        atomic_write(directory / "ca.pem", self.ca_cert_path.read_bytes())

    def issue(self, name: str, role: str, *, fleet: str | None = None, force: bool = False,
              days: int = LEAF_DAYS) -> Path:
        """Issue (or with ``force`` re-issue) a client identity; returns its directory.

        ``role`` is ``device`` (needs ``fleet``) or a service role. Names share one namespace: they are MQTT
        usernames and client ids, so a device may not be called ``trainer``. Re-issuing revokes every earlier
        certificate of the identity (and lifts a revocation of the name: the new certificate is valid).
        """
        check_id(name, "identity")
        if role not in ROLES:
            raise PKIError(f"unknown role {role!r}; one of {', '.join(ROLES)}")
        kind: Kind = "device" if role == "device" else "service"
        if kind == "device":
            check_id(fleet or "", "fleet")
        with self.locked():
            data = self._read_registry()
            old = data["identities"].get(name)
            if old is not None:
                if old["kind"] != kind or (kind == "service" and old["role"] != role):
                    raise PKIError(f"{name!r} is already a {old['role']} identity; pick another name")
                if not force:
                    state = "revoked" if old.get("revoked") else "provisioned"
                    raise PKIError(f"{name!r} is already {state}; refusing to overwrite its key (use --force to "
                                   "issue a new certificate and key)")
            directory = self.root / ("devices" if kind == "device" else "services") / name
            if (directory / "key.pem").exists() and not force:
                raise PKIError(f"{directory / 'key.pem'} exists; refusing to overwrite (use --force)")
            cert, key = self._issue(name, server=False, days=days, ou=role)
            self._write_identity_files(directory, cert, key, force=True)
            previous = (old or {}).get("serials", [])
            data["identities"][name] = {
                "kind": kind, "role": role, "fleet": fleet if kind == "device" else None,
                "serials": previous + [format(cert.serial_number, "x")],
                "issued": time.time(), "not_after": cert.not_valid_after_utc.timestamp(), "revoked": None,
            }
            if previous:
                # A re-issued identity has one valid certificate: the bundle it replaces (lost, copied, leaked)
                # stops working at the broker's next reload.
                revoked = data.setdefault("revoked", {})
                for serial in previous:
                    revoked.setdefault(serial, {"identity": name, "at": time.time()})
                self._write_crl(data)
            self._write_registry(data)
        return directory

    def revoke(self, name: str) -> list[str]:
        """Put every certificate ever issued to ``name`` on the CRL and mark it revoked; returns the serials."""
        with self.locked():
            data = self._read_registry()
            entry = data["identities"].get(name)
            if entry is None:
                known = ", ".join(sorted(data["identities"])) or "none"
                raise PKIError(f"no identity {name!r} in {self.root} (known: {known})")
            entry["revoked"] = entry.get("revoked") or time.time()
            revoked = data.setdefault("revoked", {})
            for serial in entry["serials"]:
                revoked.setdefault(serial, {"identity": name, "at": entry["revoked"]})
            self._write_registry(data)
            self._write_crl(data)
            return list(entry["serials"])

    def _write_crl(self, data: dict[str, Any]) -> None:
        """Sign a CRL of every revoked serial. Its nextUpdate is the CA's end: an expired CRL would make the
        broker refuse *every* client, so it must not lapse while the CA is valid."""
        ca_cert, ca_key = self._ca()
        now = _now()
        number = int(data.get("crl_number", 0)) + 1
        data["crl_number"] = number
        b = (x509.CertificateRevocationListBuilder()
             .issuer_name(ca_cert.subject)
             .last_update(now - dt.timedelta(minutes=5))
             .next_update(ca_cert.not_valid_after_utc)
             .add_extension(x509.CRLNumber(number), critical=False)
             .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False))
        for serial, info in sorted(data.get("revoked", {}).items()):
            b = b.add_revoked_certificate(
                x509.RevokedCertificateBuilder().serial_number(int(serial, 16))
                .revocation_date(dt.datetime.fromtimestamp(info["at"], dt.timezone.utc)).build())
        crl = b.sign(ca_key, hashes.SHA256())
        atomic_write(self.crl_path, crl.public_bytes(serialization.Encoding.PEM))
        self._write_registry(data)

    def revoked_serials(self) -> set[int]:
        """Serials on the CRL file (what the broker actually enforces)."""
        crl = x509.load_pem_x509_crl(self.crl_path.read_bytes())
        return {r.serial_number for r in crl}

    def issue_broker_cert(self, hosts: tuple[str, ...] = (), force: bool = False, days: int = LEAF_DAYS) -> Path:
        """The broker's server certificate; SANs: localhost, 127.0.0.1, ::1 and every host name or address
        clients will use to reach it (TLS hostname checks fail otherwise)."""
        sans = tuple(dict.fromkeys((*BROKER_SANS, *hosts)))
        cert, key = self._issue("edgeloop-broker", server=True, days=days, sans=sans, ou="broker")
        make_private_dir(self.broker_dir)
        write_private(self.broker_dir / "key.pem", _pem_key(key), force=force)
        atomic_write(self.broker_dir / "cert.pem", _pem_cert(cert))
        return self.broker_dir

    def broker_sans(self) -> list[str]:
        cert = x509.load_pem_x509_certificate((self.broker_dir / "cert.pem").read_bytes())
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        return [str(v) for v in ext.get_values_for_type(x509.DNSName)] + \
               [str(v) for v in ext.get_values_for_type(x509.IPAddress)]


def _san(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def init_pki(root: str | os.PathLike[str], hosts: list[str] | tuple[str, ...] = (), *, force: bool = False,
             services: tuple[str, ...] = DEFAULT_SERVICES, ca_days: int = CA_DAYS) -> PKI:
    """Create a CA, an empty CRL, the broker's certificate and the service identities in ``root``.

    Refuses if ``root`` already holds a CA unless ``force`` (which starts a new CA: every identity issued by
    the old one stops working).
    """
    pki = PKI(root)
    if (pki.ca_key_path.exists() or pki.ca_cert_path.exists()) and not force:
        raise PKIError(f"{pki.root} already holds a CA; refusing to overwrite it (use --force to start a new CA, "
                       "which invalidates every certificate it issued)")
    for host in hosts:
        if not host or "/" in host or " " in host:
            raise PKIError(f"--host {host!r}: not a host name or address")
    make_private_dir(pki.root)
    make_private_dir(pki.root / "private")
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "edgeloop"),
                      x509.NameAttribute(NameOID.COMMON_NAME, f"edgeloop fleet CA {secrets.token_hex(4)}")])
    now = _now()
    ca = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
          .serial_number(x509.random_serial_number())
          .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=ca_days))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                       data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                       crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
          .sign(key, hashes.SHA256()))
    write_private(pki.ca_key_path, _pem_key(key), force=force)
    atomic_write(pki.ca_cert_path, _pem_cert(ca))
    registry = {"version": REGISTRY_VERSION, "ca": ca.subject.rfc4514_string(), "created": time.time(),
                "identities": {}, "revoked": {}, "crl_number": 0}
    with pki.locked():
        pki._write_registry(registry)
        pki._write_crl(registry)
    pki.issue_broker_cert(tuple(hosts), force=force)
    for svc in services:
        pki.issue(svc, svc, force=force)
    return pki


def open_pki(root: str | os.PathLike[str]) -> PKI:
    """An existing PKI; raises PKIError naming the fix if ``root`` is not one."""
    pki = PKI(root)
    if not pki.exists():
        raise PKIError(f"{pki.root} is not an edgeloop PKI: run `edgeloop pki init --dir {root}` first")
    return pki


def provisioned_devices(pki_dir: str | os.PathLike[str]) -> dict[str, str]:
    """``{device id: fleet}`` of every device provisioned in ``pki_dir`` and not revoked.

    For the rollout controller: a device id that is not in here is not a real device, whatever it publishes.
    """
    return {name: ident.fleet or "default" for name, ident in open_pki(pki_dir).devices().items()}
