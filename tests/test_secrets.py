"""Secrets stay off command lines and out of printed configuration; credentials come from config or environment."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from protocol.config import config_digest, dump_config, redact
from protocol.mqtt import (MQTTURLError, identity_files, make_client, read_secret_file, refuse_password_in_url,
                           resolve_password, resolve_tls)

ROOT = Path(__file__).resolve().parents[1]


def _cli(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "deploy.cli", *argv], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, env={**os.environ, **(env or {})})


@pytest.mark.parametrize("command", [["edge"], ["trainer", "run"]])
def test_print_config_redacts_passwords(command: list[str]) -> None:
    prefix = "EDGELOOP_EDGE__" if command == ["edge"] else "EDGELOOP_TRAINER__"
    out = _cli(*command, "--print-config", env={f"{prefix}MQTT__PASSWORD": "hunter2",
                                                f"{prefix}MQTT__USERNAME": "cam"})
    assert out.returncode == 0, out.stderr
    assert "hunter2" not in out.stdout and "password: '***'" in out.stdout


@pytest.mark.parametrize("command", [["edge"], ["trainer", "run"]])
def test_a_password_in_a_command_line_url_is_refused(command: list[str]) -> None:
    out = _cli(*command, "--broker", "mqtt://cam:hunter2@127.0.0.1:1883", "--print-config")
    assert out.returncode == 2 and "ps" in out.stderr and "hunter2" not in out.stdout + out.stderr


def test_redact_and_digest() -> None:
    tree = {"mqtt": {"url": "mqtt://u:s3cret@h:1", "password": "p", "username": "u"}, "n": [{"token": "t"}]}
    red = redact(tree)
    assert red == {"mqtt": {"url": "mqtt://u:***@h:1", "password": "***", "username": "u"}, "n": [{"token": "***"}]}
    assert "s3cret" not in dump_config(tree) and "s3cret" not in str(red)
    # the published config digest does not depend on the password (it must not help guess it)
    assert config_digest({"mqtt": {"password": "a"}}) == config_digest({"mqtt": {"password": "b"}})


def test_password_files(tmp_path: Path) -> None:
    f = tmp_path / "pw"
    f.write_text("hunter2\n")
    f.chmod(0o644)
    with pytest.raises(MQTTURLError, match="readable by others"):
        read_secret_file(f)
    f.chmod(0o600)
    assert read_secret_file(f) == "hunter2"
    assert resolve_password(None, str(f)) == "hunter2" and resolve_password("x", None) == "x"
    with pytest.raises(MQTTURLError, match="both"):
        resolve_password("x", str(f))
    with pytest.raises(MQTTURLError, match="password file"):
        read_secret_file(tmp_path / "missing")
    refuse_password_in_url("mqtt://user@h:1")  # a username alone is fine
    refuse_password_in_url(None)


def test_password_from_environment(tmp_path: Path, monkeypatch) -> None:
    f = tmp_path / "pw"
    f.write_text("from-file")
    f.chmod(0o600)
    monkeypatch.setenv("EDGELOOP_MQTT_PASSWORD_FILE", str(f))
    c = make_client("x", "mqtt://cam@127.0.0.1:1", protocol="3.1.1")
    assert c._password == b"from-file"  # paho keeps it here; it never was on a command line


def test_tls_files_precedence(tmp_path: Path, monkeypatch) -> None:
    ident = tmp_path / "id"
    ident.mkdir()
    for name in ("ca.pem", "cert.pem", "key.pem"):
        (ident / name).write_text("x")
    monkeypatch.setenv("EDGELOOP_MQTT_IDENTITY", str(ident))
    assert resolve_tls("mqtts://h") == identity_files(ident)        # environment, when nothing else says
    assert resolve_tls("mqtt://h") == (None, None, None)            # never for plain MQTT
    assert resolve_tls("mqtts://h?ca=/a&cert=/b&key=/c") == ("/a", "/b", "/c")  # the URL beats the environment
    assert resolve_tls("mqtts://h", "/x", "/y", "/z") == ("/x", "/y", "/z")     # the caller (config) beats both
    with pytest.raises(MQTTURLError, match="together"):
        resolve_tls("mqtts://h", None, "/cert-without-key", None)
    with pytest.raises(MQTTURLError, match="missing"):
        identity_files(tmp_path)
