"""``edgeloop demo``'s command line: options that are checked before anything starts."""
from __future__ import annotations

import pytest

from deploy.demo.cli import main
from deploy.demo.plan import DemoOptions, demo_arch


def test_an_unknown_architecture_is_refused_naming_the_known_ones(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--arch", "resnet9000", "--out", "/nonexistent/never-written"]) == 2
    err = capsys.readouterr().err
    assert "--arch 'resnet9000' is not an architecture" in err and "small_cnn128" in err


def test_the_architecture_is_the_scenarios_unless_asked() -> None:
    assert demo_arch(DemoOptions()) == "small_cnn"
    assert demo_arch(DemoOptions(scenario="digits")) == "convnet"
    assert demo_arch(DemoOptions(arch="small_cnn128")) == "small_cnn128"
