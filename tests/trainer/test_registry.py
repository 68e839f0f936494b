"""Registry CRUD, ordering, lineage, persistence across reopen and processes, and its refusals."""
from __future__ import annotations

import hashlib
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from trainer.registry import Registry, RegistryError, format_version, parse_version


def _file(tmp: Path, name: str, content: bytes) -> Path:
    p = tmp / name
    p.write_bytes(content)
    return p


@pytest.fixture()
def reg(tmp_path: Path) -> Registry:
    r = Registry(tmp_path / "state")
    yield r
    r.close()


def test_version_names() -> None:
    assert format_version(1) == "v0001" and format_version(12345) == "v12345"
    assert parse_version("v0042") == 42 and parse_version("v12345") == 12345
    for bad in ("1", "v1", "v0000", "V0001", "v00a1", "../v0001"):
        with pytest.raises(RegistryError):
            parse_version(bad)


def test_register_copies_file_and_reads_back(reg: Registry, tmp_path: Path) -> None:
    assert reg.next_version() == "v0001" and reg.latest() is None and reg.list() == []
    src = _file(tmp_path, "export.onnx", b"model one")
    rec = reg.register("v0001", path=src, labels=["0", "1"], metrics={"accuracy": 0.8}, samples_seen=100,
                       arch="convnet", created="2026-01-01T00:00:00+00:00")
    assert rec.path == reg.model_path("v0001") == tmp_path / "state" / "models" / "v0001.onnx"
    assert rec.path.read_bytes() == b"model one" and src.exists()  # copied, source left alone
    assert rec.sha256 == hashlib.sha256(b"model one").hexdigest() and rec.size == 9
    assert (rec.labels, rec.metrics, rec.samples_seen, rec.status, rec.parent, rec.arch) == (
        ["0", "1"], {"accuracy": 0.8}, 100, "candidate", None, "convnet")
    assert rec.created == "2026-01-01T00:00:00+00:00"
    assert reg.get("v0001") == rec and "v0001" in reg and "v0002" not in reg
    assert reg.next_version() == "v0002"
    assert reg.verify_file("v0001")
    assert not list((tmp_path / "state" / "models").glob("*.tmp-*"))


def test_export_in_place_is_not_copied(reg: Registry) -> None:
    dest = reg.model_path("v0001")
    dest.write_bytes(b"exported straight here")
    rec = reg.register("v0001", path=dest, labels=["a"])
    assert rec.path == dest and dest.read_bytes() == b"exported straight here"


def test_lifecycle_latest_best_lineage(reg: Registry, tmp_path: Path) -> None:
    accs = {"v0001": 0.70, "v0002": 0.90, "v0003": 0.85, "v0004": 0.95}
    parent = None
    for v, acc in accs.items():
        reg.register(v, path=_file(tmp_path, f"{v}.bin", v.encode()), labels=["a", "b"], parent=parent,
                     metrics={"accuracy": acc}, samples_seen=parse_version(v) * 10)
        parent = v
    reg.set_status("v0001", "promoted")
    reg.set_status("v0002", "promoted")
    reg.set_status("v0003", "rejected")
    assert [r.version for r in reg.list()] == list(accs)
    assert [r.version for r in reg.list("promoted")] == ["v0001", "v0002"]
    assert reg.latest().version == "v0004" and reg.latest("candidate").version == "v0004"
    assert reg.latest_promoted().version == "v0002"
    assert reg.best("accuracy").version == "v0002"  # best *promoted*
    assert reg.best("accuracy", status=None).version == "v0004"
    assert reg.best("accuracy", status=None, higher_is_better=False).version == "v0001"
    assert reg.best("macro_f1") is None
    reg.update_metrics("v0004", {"macro_f1": 0.9})
    assert reg.get("v0004").metrics == {"accuracy": 0.95, "macro_f1": 0.9}
    reg.set_status("v0002", "retired")
    assert reg.latest_promoted().version == "v0001"
    assert [r.version for r in reg.lineage("v0004")] == ["v0004", "v0003", "v0002", "v0001"]


def test_refusals(reg: Registry, tmp_path: Path) -> None:
    f = _file(tmp_path, "m.onnx", b"x")
    reg.register("v0001", path=f, labels=["a"])
    with pytest.raises(RegistryError, match="already registered"):
        reg.register("v0001", path=f, labels=["a"])
    with pytest.raises(RegistryError, match="parent v0009"):
        reg.register("v0002", path=f, labels=["a"], parent="v0009")
    assert "v0002" not in reg
    with pytest.raises(RegistryError, match="bad status"):
        reg.register("v0002", path=f, labels=["a"], status="live")
    with pytest.raises(RegistryError, match="does not exist"):
        reg.register("v0002", path=tmp_path / "nope.onnx", labels=["a"])
    with pytest.raises(RegistryError, match="bad version"):
        reg.register("latest", path=f, labels=["a"])
    with pytest.raises(RegistryError, match="unknown version"):
        reg.set_status("v0007", "promoted")
    with pytest.raises(RegistryError, match="unknown version"):
        reg.get("v0007")


def test_tampered_file_is_detected(reg: Registry, tmp_path: Path) -> None:
    rec = reg.register("v0001", path=_file(tmp_path, "m", b"good bytes"), labels=["a"])
    rec.path.write_bytes(b"evil bytes")
    assert not reg.verify_file("v0001")


def test_orphan_file_from_a_crash_is_replaced(reg: Registry, tmp_path: Path) -> None:
    """A crash between copying the file and inserting the row leaves a file without a row: harmless."""
    reg.model_path("v0001").write_bytes(b"half of an old attempt")
    rec = reg.register("v0001", path=_file(tmp_path, "m", b"the real one"), labels=["a"])
    assert rec.path.read_bytes() == b"the real one" and reg.verify_file("v0001")


def test_persists_and_is_shared_with_other_processes(tmp_path: Path) -> None:
    state = tmp_path / "state"
    with Registry(state) as r:
        r.register("v0001", path=_file(tmp_path, "a", b"1"), labels=["x"], metrics={"accuracy": 0.5})
        r.set_status("v0001", "promoted")
        # another process (e.g. the rollout controller) reads while this connection is still open
        code = ("import sys; from trainer.registry import Registry; r = Registry(sys.argv[1]); "
                "print(r.latest_promoted().version); r.register('v0002', path=sys.argv[2], labels=['x','y'], parent='v0001')")
        out = subprocess.run([sys.executable, "-c", code, str(state), str(_file(tmp_path, "b", b"2"))],
                             capture_output=True, text=True, check=True)
        assert out.stdout.strip() == "v0001"
        assert r.get("v0002").labels == ["x", "y"]  # WAL: the writer in the other process is visible here
    with Registry(state) as r2:
        assert [v.version for v in r2.list()] == ["v0001", "v0002"]
        assert r2.get("v0001").status == "promoted" and r2.get("v0002").parent == "v0001"
    mode = sqlite3.connect(state / "registry.sqlite").execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"
