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


@pytest.mark.parametrize("config,module,cls", [("deploy/configs/edge.yaml", "edge.config", "EdgeConfig"),
                                               ("deploy/configs/trainer.yaml", "trainer.config", "TrainerConfig"),
                                               ("deploy/configs/deploy.yaml", "deploy.service", "DeployServiceConfig")])
def test_shipped_config_files_hold_every_key_with_its_default(config: str, module: str, cls: str) -> None:
    """Each file says it holds every key with its default: a key added to the schema must be added there too."""
    import importlib

    import msgspec
    import yaml

    from protocol.config import load_config

    def flat(node: object, where: str = "") -> dict[str, object]:
        if isinstance(node, dict) and node:
            return {k: v for name, child in node.items() for k, v in flat(child, f"{where}.{name}" if where else name).items()}
        return {where: list(node) if isinstance(node, tuple) else node}

    defaults = flat(msgspec.to_builtins(load_config(getattr(importlib.import_module(module), cls))))
    shipped = flat(yaml.safe_load((ROOT / config).read_text()))
    assert [k for k in defaults if k not in shipped] == [], "keys missing from " + config
    assert {k: (v, defaults[k]) for k, v in shipped.items() if k in defaults and v != defaults[k]} == {}


def test_an_unquoted_off_is_explained(tmp_path: Path) -> None:
    """YAML 1.1 reads ``off`` as false; a setting whose value is the word says how to write it."""
    from protocol.config import ConfigError, load_config
    from trainer.config import TrainerConfig

    cfg = tmp_path / "trainer.yaml"
    cfg.write_text("eval:\n  paired: off\n")
    with pytest.raises(ConfigError, match='eval.paired: Expected `str`, got `bool` .*quote the word, e.g. "off"'):
        load_config(TrainerConfig, cfg)
    cfg.write_text('eval:\n  paired: "off"\n')
    assert load_config(TrainerConfig, cfg).eval.paired == "off"
    with pytest.raises(ConfigError, match="strategy.augment: Expected `str`, got `null` .*the word none means null"):
        load_config(TrainerConfig, overrides={"strategy.augment": "none"})


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
