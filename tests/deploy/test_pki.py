"""The PKI, provisioning and ACL rendering, without a broker (the broker side: tests/integration/test_security.py)."""
from __future__ import annotations

import os
import sqlite3
import stat
from pathlib import Path

import pytest
from cryptography import x509

from deploy import pki_cli
from deploy.acl import emqx_acl, mosquitto_acl
from deploy.keys import generate
from deploy.pki import PKI, PKIError, init_pki, open_pki, provisioned_devices
from edge.config import EdgeConfig
from protocol.config import load_config
from protocol.mqtt import certificate_identity
from protocol.topics import Topics


@pytest.fixture
def pki(tmp_path: Path) -> PKI:
    return init_pki(tmp_path / "pki", ["broker.plant", "10.1.2.3"])


@pytest.fixture
def signing(tmp_path: Path) -> Path:
    return generate(tmp_path / "keys")[1]


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def test_init_layout_modes_and_broker_names(pki: PKI) -> None:
    root = pki.root
    keys = [root / "private" / "ca.key", root / "broker" / "key.pem",
            *[root / "services" / s / "key.pem" for s in ("trainer", "deploy", "monitor")]]
    for k in keys:
        assert _mode(k) == 0o600, k
    for d in [root, root / "private", root / "broker", root / "services", root / "services" / "trainer"]:
        assert _mode(d) == 0o700, d
    assert set(pki.broker_sans()) >= {"localhost", "127.0.0.1", "::1", "broker.plant", "10.1.2.3"}
    assert certificate_identity(root / "services" / "trainer" / "cert.pem") == "trainer"
    ca = x509.load_pem_x509_certificate((root / "ca.pem").read_bytes())
    leaf = x509.load_pem_x509_certificate((root / "services" / "deploy" / "cert.pem").read_bytes())
    leaf.verify_directly_issued_by(ca)
    assert pki.revoked_serials() == set()  # an empty CRL exists from the start (the broker needs one)


def test_nothing_is_overwritten_without_force(pki: PKI, signing: Path) -> None:
    ca_before = pki.ca_cert_path.read_bytes()
    with pytest.raises(PKIError, match="refusing"):
        init_pki(pki.root)
    assert pki.ca_cert_path.read_bytes() == ca_before
    d = pki.issue("cam-1", "device", fleet="line1")
    key_before = (d / "key.pem").read_bytes()
    with pytest.raises(PKIError, match="refusing to overwrite"):
        pki.issue("cam-1", "device", fleet="line1")
    assert pki_cli.main(["device", "cam-1", "--dir", str(pki.root), "--signing-key", str(signing)]) == 1
    assert (d / "key.pem").read_bytes() == key_before
    with pytest.raises(PKIError, match="refusing"):
        pki.issue_broker_cert(("x",))


def test_reissue_revokes_the_old_certificate(pki: PKI) -> None:
    d = pki.issue("cam-1", "device", fleet="line1")
    old = x509.load_pem_x509_certificate((d / "cert.pem").read_bytes()).serial_number
    pki.issue("cam-1", "device", fleet="line1", force=True)
    new = x509.load_pem_x509_certificate((d / "cert.pem").read_bytes()).serial_number
    assert pki.revoked_serials() == {old} and new != old
    assert _mode(d / "key.pem") == 0o600
    assert provisioned_devices(pki.root) == {"cam-1": "line1"}


def test_registry_of_real_devices_excludes_revoked_ones(pki: PKI) -> None:
    pki.issue("cam-1", "device", fleet="line1")
    pki.issue("cam-2", "device", fleet="line2")
    assert provisioned_devices(pki.root) == {"cam-1": "line1", "cam-2": "line2"}
    serials = pki.revoke("cam-2")
    assert provisioned_devices(pki.root) == {"cam-1": "line1"}
    assert {int(s, 16) for s in serials} <= pki.revoked_serials()
    crl = x509.load_pem_x509_crl(pki.crl_path.read_bytes())
    assert crl.next_update_utc >= x509.load_pem_x509_certificate(pki.ca_cert_path.read_bytes()).not_valid_after_utc
    with pytest.raises(PKIError, match="no identity"):
        pki.revoke("cam-9")


@pytest.mark.parametrize("name,role,fleet,match", [
    ("trainer", "device", "A", "already a trainer"),  # one namespace: usernames and client ids
    ("a/b", "device", "A", "bad_topic"),
    ("cam+", "device", "A", "bad_topic"),
    ("cam-1", "device", "x/y", "bad_topic"),
    ("cam-1", "root", None, "unknown role"),
])
def test_bad_identities_are_refused(pki: PKI, name: str, role: str, fleet: str | None, match: str) -> None:
    with pytest.raises(Exception, match=match):
        pki.issue(name, role, fleet=fleet)


def test_not_a_pki(tmp_path: Path) -> None:
    with pytest.raises(PKIError, match="pki init"):
        open_pki(tmp_path)
    assert pki_cli.main(["list", "--dir", str(tmp_path)]) == 1


def test_device_bundle_is_an_edge_config(pki: PKI, signing: Path, tmp_path: Path, capsys) -> None:
    state = tmp_path / "deploy"
    state.mkdir()
    with sqlite3.connect(state / "rollout.sqlite") as db:  # the controller's table (deploy/controller.py)
        db.execute("CREATE TABLE fleets (fleet TEXT PRIMARY KEY, rollout_id TEXT, model_id TEXT, version TEXT, "
                   "wave INTEGER, below INTEGER, seq INTEGER, expires REAL, policy TEXT)")
        db.execute("INSERT INTO fleets(fleet, seq) VALUES ('line1', 1700000000123)")
    assert pki_cli.main(["device", "cam-7", "--dir", str(pki.root), "--fleet", "line1", "--signing-key", str(signing),
                         "--deploy-state", str(state)]) == 0
    d = pki.root / "devices" / "cam-7"
    cfg = load_config(EdgeConfig, d / "edge.yaml")
    assert (cfg.device_id, cfg.fleet) == ("cam-7", "line1")
    assert cfg.mqtt.url == "mqtts://broker.plant:8883"
    assert cfg.mqtt.cert_file == str(d / "cert.pem") and certificate_identity(cfg.mqtt.cert_file) == "cam-7"
    assert cfg.updater.min_manifest_seq == 1700000000123
    assert len(cfg.updater.trusted_keys) == 1 and Path(cfg.updater.trusted_keys[0]).exists()
    assert {p.name for p in d.iterdir()} >= {"ca.pem", "cert.pem", "key.pem", "edge.yaml"}
    assert _mode(d / "key.pem") == 0o600 and _mode(d) == 0o700
    # no rollout state: floor 0 unless told; --install-dir rewrites the paths for the camera
    assert pki_cli.main(["device", "cam-8", "--dir", str(pki.root), "--signing-key", str(signing), "--deploy-state",
                         str(tmp_path / "none"), "--install-dir", "/etc/edgeloop", "--broker", "mqtts://b:1"]) == 0
    cfg8 = load_config(EdgeConfig, pki.root / "devices" / "cam-8" / "edge.yaml")
    assert cfg8.updater.min_manifest_seq == 0 and cfg8.mqtt.key_file == "/etc/edgeloop/key.pem"
    assert cfg8.fleet == "default" and cfg8.mqtt.url == "mqtts://b:1"


def test_signing_key_rotation_rewrites_the_config_not_the_certificate(pki: PKI, signing: Path,
                                                                      tmp_path: Path) -> None:
    assert pki_cli.main(["device", "cam-1", "--dir", str(pki.root), "--signing-key", str(signing)]) == 0
    d = pki.root / "devices" / "cam-1"
    cert = (d / "cert.pem").read_bytes()
    new = generate(tmp_path / "keys2")[0]  # the private half is accepted; only the public half is copied
    assert pki_cli.main(["device", "cam-1", "--dir", str(pki.root), "--config-only", "--signing-key", str(signing),
                         "--signing-key", str(new), "--min-seq", "5"]) == 0
    cfg = load_config(EdgeConfig, d / "edge.yaml")
    assert len(cfg.updater.trusted_keys) == 2 and cfg.updater.min_manifest_seq == 5
    assert (d / "cert.pem").read_bytes() == cert
    assert all(b"PRIVATE" not in Path(k).read_bytes() for k in cfg.updater.trusted_keys)


def test_a_failed_provisioning_issues_nothing(pki: PKI, tmp_path: Path) -> None:
    """No half-provisioned device: a missing signing key, a bad URL or floor fail before the certificate."""
    for extra in (["--signing-key", str(tmp_path / "missing.pub")],
                  ["--signing-key", str(tmp_path / "missing.pub"), "--broker", "http://x"],
                  ["--min-seq", "-1"]):
        assert pki_cli.main(["device", "cam-1", "--dir", str(pki.root), *extra]) in (1, 2)
    assert "cam-1" not in pki.identities()
    assert not (pki.root / "devices" / "cam-1").exists()


def test_pki_cli_needs_a_dir(monkeypatch, capsys) -> None:
    monkeypatch.delenv("EDGELOOP_PKI_DIR", raising=False)
    assert pki_cli.main(["list"]) == 2
    assert "--dir" in capsys.readouterr().err


def test_acl_rules_per_role(pki: PKI) -> None:
    pki.issue("cam-1", "device", fleet="line1")
    pki.issue("cam-2", "device", fleet="line2")
    pki.issue("trainer-2", "trainer")
    pki.revoke("cam-2")
    acl = mosquitto_acl(pki, Topics("plant/v1"))
    block = acl.split("user cam-1\n")[1].split("\n\n")[0].splitlines()
    assert block == ["topic write plant/v1/dev/cam-1/#", "topic read plant/v1/fleet/line1/manifest",
                     "topic read plant/v1/models/#", "topic read plant/v1/trainer/state",
                     "topic read plant/v1/trainer/selection_hint"]
    assert "user cam-2" not in acl  # revoked: no rights at all
    assert "pattern" not in acl.replace("No `pattern` lines", "")
    trainer2 = acl.split("user trainer-2\n")[1].split("\n\n")[0]
    assert "topic write plant/v1/trainer/#" in trainer2 and "topic read plant/v1/dev/+/samples" in trainer2
    assert "fleet" not in trainer2
    emqx = emqx_acl(pki, Topics("plant/v1"))
    assert '{allow, {username, "cam-1"}, publish, ["plant/v1/dev/cam-1/#"]}.' in emqx
    assert '{allow, {username, "cam-1"}, subscribe, ["plant/v1/trainer/state"]}.' in emqx
    assert emqx.rstrip().endswith("{deny, all}.") and "cam-2" not in emqx


def test_private_files_are_never_readable_by_others(pki: PKI) -> None:
    """Even with a permissive umask the keys are created 0600 (no window in which they are world-readable)."""
    old = os.umask(0)
    try:
        d = pki.issue("cam-u", "device", fleet="A")
    finally:
        os.umask(old)
    assert _mode(d / "key.pem") == 0o600 and _mode(d) == 0o700
