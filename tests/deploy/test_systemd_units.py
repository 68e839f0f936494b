"""The systemd units in deploy/systemd/ run commands the real CLI accepts, keep state under /var/lib/edgeloop
in the directory systemd creates for them, restart on failure, and say how they reload; and in service mode
no process falls back to a state directory relative to the working directory."""
from __future__ import annotations

import argparse
import configparser
import shlex
from pathlib import Path
from typing import Any

import pytest

from protocol.state_dir import service_state_dir

ROOT = Path(__file__).resolve().parents[2]
UNITS = sorted((ROOT / "deploy" / "systemd").glob("*.service"))
BIN = "/opt/edgeloop/venv/bin/edgeloop"


class Parsed(Exception):
    """Raised instead of running the command once argparse accepted it."""

    def __init__(self, ns: argparse.Namespace) -> None:
        super().__init__("parsed")
        self.ns = ns


def _unit(path: Path) -> configparser.ConfigParser:
    cp = configparser.ConfigParser(strict=False, interpolation=None, delimiters=("=",))
    cp.optionxform = str  # type: ignore[assignment,method-assign]
    cp.read_string(path.read_text())
    return cp


def _parse(argv: list[str], monkeypatch: pytest.MonkeyPatch) -> argparse.Namespace:
    """Run the real ``edgeloop`` dispatcher on ``argv`` with argparse stopped right after a successful parse."""
    from deploy.cli import main

    real = argparse.ArgumentParser.parse_args

    def stop_after_parse(self: argparse.ArgumentParser, args: Any = None, namespace: Any = None) -> Any:
        raise Parsed(real(self, args, namespace))

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", stop_after_parse)
    with pytest.raises(Parsed) as e:
        main(argv)
    return e.value.ns


def test_there_is_a_unit_per_process() -> None:
    assert [u.name for u in UNITS] == ["edgeloop-broker.service", "edgeloop-deploy.service",
                                       "edgeloop-edge@.service", "edgeloop-trainer.service"]


@pytest.mark.parametrize("unit", UNITS, ids=lambda p: p.name)
def test_exec_start_parses_with_the_real_cli(unit: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    svc = _unit(unit)["Service"]
    words = shlex.split(svc["ExecStart"].replace("%i", "cam-1"))
    assert words[0] == BIN
    ns = _parse(words[1:], monkeypatch)
    state = getattr(ns, "state_dir", None) or getattr(ns, "workdir", None)
    expected = "/var/lib/" + svc["StateDirectory"].replace("%i", "cam-1")
    assert state == expected, f"{unit.name}: state in {state}, systemd creates {expected}"
    for flag in ("config", "signing_key"):
        if getattr(ns, flag, None):
            assert Path(getattr(ns, flag)).is_absolute() and getattr(ns, flag).startswith("/etc/edgeloop/")


@pytest.mark.parametrize("unit", UNITS, ids=lambda p: p.name)
def test_units_restart_on_failure_and_stop_with_sigterm(unit: Path) -> None:
    svc = _unit(unit)["Service"]
    assert svc["Restart"] == "on-failure" and svc["KillSignal"] == "SIGTERM"
    assert svc["User"] == "edgeloop" and svc["StateDirectoryMode"] == "0700"
    assert svc["StateDirectory"].startswith("edgeloop/")
    # SIGHUP reloads where the process supports it (the rollout service); elsewhere no ExecReload promises one
    assert ("ExecReload" in svc) == (unit.name == "edgeloop-deploy.service")


def test_service_mode_never_uses_the_working_directory() -> None:
    systemd = {"INVOCATION_ID": "0123456789abcdef"}
    assert service_state_dir("./edgeloop-edge", "edge", {}) == "./edgeloop-edge"  # interactive: as before
    assert service_state_dir("/srv/cam", "edge", systemd) == "/srv/cam"  # absolute: as given
    assert service_state_dir("./edgeloop-edge", "edge", {**systemd, "STATE_DIRECTORY": "/var/lib/edgeloop/edge"}) \
        == "/var/lib/edgeloop/edge"
    with pytest.raises(ValueError, match="relative to the working directory"):
        service_state_dir("./edgeloop-edge", "edge", systemd)


@pytest.mark.parametrize("argv", [["edge", "--print-config"], ["trainer", "run", "--print-config"],
                                  ["deploy", "run", "--print-config"]])
def test_each_process_refuses_a_relative_state_dir_under_systemd(argv: list[str], monkeypatch: pytest.MonkeyPatch,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    from deploy.cli import main

    monkeypatch.setenv("INVOCATION_ID", "0123456789abcdef")
    monkeypatch.delenv("STATE_DIRECTORY", raising=False)
    assert main(argv) == 2
    assert "relative to the working directory" in capsys.readouterr().err
    monkeypatch.setenv("STATE_DIRECTORY", "/var/lib/edgeloop/x")
    if argv[0] == "deploy":
        monkeypatch.setenv("EDGELOOP_DEPLOY__SIGNING_KEY", "/etc/edgeloop/keys/signing.key")
    assert main(argv) == 0
    assert "state_dir: /var/lib/edgeloop/x" in capsys.readouterr().out
