import msgspec
import pytest

from protocol import signing
from protocol.errors import ProtocolError
from protocol.messages import decode_message, encode_message

from _proto_helpers import manifest

NOW = 1_900_000_000.0


@pytest.fixture(scope="module")
def keys():
    priv_pem, pub_pem = signing.generate_keypair()
    priv = signing.private_key_from_pem(priv_pem)
    pub = signing.public_key_from_pem(pub_pem)
    return priv, pub, {signing.key_id(pub): pub}


def reason(m, trusted, now=NOW, highest_seq=None) -> str:
    with pytest.raises(ProtocolError) as e:
        signing.verify_manifest(m, trusted, now=now, highest_seq=highest_seq)
    return e.value.reason


def test_sign_verify_round_trip_over_the_wire(keys):
    priv, pub, trusted = keys
    signed = signing.sign_manifest(manifest(expires=2_000_000_000), priv)  # int expires on purpose
    assert signed.key_id == signing.key_id(pub) == signing.key_id(priv)
    assert len(signed.key_id) == 16 and len(signed.signature) == 128
    received = decode_message(encode_message(signed, device="deploy", seq=1)).msg
    signing.verify_manifest(received, trusted, now=NOW, highest_seq=6)
    signing.verify_manifest(received, trusted, now=NOW, highest_seq=None)


def test_canonical_bytes_deterministic(keys):
    m = manifest()
    assert signing.canonical_bytes(m) == signing.canonical_bytes(manifest())
    assert b"signature" not in signing.canonical_bytes(m)
    assert signing.canonical_bytes(m) != signing.canonical_bytes(manifest(wave=2))


@pytest.mark.parametrize(
    "field, value",
    [("version", "v5"), ("seq", 8), ("sha256", "0" * 64), ("size", 999), ("rollout_id", "r-2"), ("wave", 0),
     ("expires", 2_100_000_000.0), ("compat", {"labels": ["a"]}), ("chunk_sha256", ["0" * 64] * 3),
     ("model_id", "other"), ("fleet", "other")],
)
def test_tampered_field(keys, field, value):
    priv, _, trusted = keys
    signed = signing.sign_manifest(manifest(), priv)
    tampered = msgspec.structs.replace(signed, **{field: value})
    assert reason(tampered, trusted) == "bad_signature"


def test_distinct_reasons(keys):
    priv, pub, trusted = keys
    signed = signing.sign_manifest(manifest(seq=7, expires=NOW + 60), priv)
    other_priv = signing.private_key_from_pem(signing.generate_keypair()[0])
    # unknown key: signed by a key nobody trusts
    assert reason(signing.sign_manifest(manifest(), other_priv), trusted) == "unknown_key"
    # wrong key: claims a trusted key_id but was signed by another key
    forged = msgspec.structs.replace(signing.sign_manifest(manifest(), other_priv), key_id=signed.key_id)
    assert reason(forged, trusted) == "bad_signature"
    assert reason(msgspec.structs.replace(signed, signature=""), trusted) == "bad_signature"
    assert reason(msgspec.structs.replace(signed, signature="zz" * 64), trusted) == "bad_signature"
    assert reason(signed, trusted, now=NOW + 61) == "expired"
    assert reason(signed, trusted, highest_seq=7) == "replayed"
    assert reason(signed, trusted, highest_seq=100) == "replayed"
    signing.verify_manifest(signed, trusted, now=NOW, highest_seq=6)


def test_a_manifest_binds_its_fleet(keys):
    """The fleet is signed: a manifest for fleet A carried to fleet B's topic is refused there (issue 12)."""
    priv, _, trusted = keys
    signed = signing.sign_manifest(manifest(fleet="A"), priv)
    assert b'"fleet":"A"' in signing.canonical_bytes(signed)
    signing.verify_manifest(signed, trusted, now=NOW, highest_seq=None, fleet="A")
    with pytest.raises(ProtocolError) as e:
        signing.verify_manifest(signed, trusted, now=NOW, highest_seq=None, fleet="B")
    assert e.value.reason == "wrong_fleet"
    relabelled = msgspec.structs.replace(signed, fleet="B")  # and it cannot be re-labelled
    with pytest.raises(ProtocolError) as e:
        signing.verify_manifest(relabelled, trusted, now=NOW, highest_seq=None, fleet="B")
    assert e.value.reason == "bad_signature"


def test_key_files(tmp_path):
    priv_path, pub_path = signing.write_keypair(tmp_path, "deploy")
    assert (priv_path.stat().st_mode & 0o777) == 0o600
    priv = signing.load_private_key(priv_path)
    trusted = signing.load_trusted_keys([pub_path])
    assert list(trusted) == [signing.key_id(priv)]
    signing.verify_manifest(signing.sign_manifest(manifest(), priv), trusted, now=NOW, highest_seq=None)
    with pytest.raises(FileExistsError):
        signing.write_keypair(tmp_path, "deploy")
    (tmp_path / "junk.pub").write_bytes(b"not a key")
    with pytest.raises(ProtocolError) as e:
        signing.load_public_key(tmp_path / "junk.pub")
    assert e.value.reason == "bad_key"
