"""The example configuration files shipped in deploy/configs stay valid."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("command,config", [("edge", "deploy/configs/edge.yaml"),
                                            ("trainer", "deploy/configs/trainer.yaml"),
                                            ("deploy", "deploy/configs/deploy.yaml")])
def test_shipped_config_files_load(command: str, config: str) -> None:
    """The example configs in deploy/configs validate against the current schema (they rot otherwise)."""
    argv = [sys.executable, "-m", "deploy.cli", command] + (["run"] if command in ("trainer", "deploy") else [])
    result = subprocess.run(argv + ["--config", str(ROOT / config), "--print-config"], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def test_renamed_edge_key_fails_naming_the_new_one(tmp_path: Path) -> None:
    """The device's health-watch triggers were renamed (``health_*``); an old config says which key to use."""
    from edge.config import EdgeConfig
    from protocol.config import ConfigError, load_config

    cfg = tmp_path / "edge.yaml"
    cfg.write_text("updater:\n  limits:\n    max_confidence_drop: 0.4\n")
    with pytest.raises(ConfigError, match="updater.limits.max_confidence_drop: renamed; use "
                                          "updater.limits.health_max_confidence_drop"):
        load_config(EdgeConfig, cfg)
    cfg.write_text("updater:\n  limits:\n    health_max_confidence_drop: 0.4\n")
    assert load_config(EdgeConfig, cfg).updater.limits.health_max_confidence_drop == 0.4
