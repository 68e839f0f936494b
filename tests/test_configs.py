"""The example configuration files shipped in deploy/configs stay valid."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("command,config", [("edge", "deploy/configs/edge.yaml"),
                                            ("trainer", "deploy/configs/trainer.yaml")])
def test_shipped_config_files_load(command: str, config: str) -> None:
    """The example configs in deploy/configs validate against the current schema (they rot otherwise)."""
    argv = [sys.executable, "-m", "deploy.cli", command] + (["run"] if command == "trainer" else [])
    result = subprocess.run(argv + ["--config", str(ROOT / config), "--print-config"], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
