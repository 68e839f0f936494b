"""``edgeloop demo``'s command line: options that are checked before anything starts."""
from __future__ import annotations

from pathlib import Path

import pytest

from deploy.demo.cli import main
from deploy.demo.plan import DemoOptions, demo_arch, demo_learner


def test_an_unknown_architecture_is_refused_naming_the_known_ones(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--arch", "resnet9000", "--out", "/nonexistent/never-written"]) == 2
    err = capsys.readouterr().err
    assert "--arch 'resnet9000' is not an architecture" in err and "small_cnn128" in err


def test_the_architecture_is_the_scenarios_unless_asked() -> None:
    assert demo_arch(DemoOptions()) == "small_cnn128"
    assert demo_arch(DemoOptions(scenario="digits")) == "convnet"
    assert demo_arch(DemoOptions(arch="small_cnn")) == "small_cnn"


def test_the_scenarios_learner_goes_with_its_own_net_and_no_trainer_config() -> None:
    """The parts learner (frozen blocks, dihedral, ...) was measured for small_cnn128 on parts: another --arch, a
    --trainer-config or the digits scenario (where a turned 6 is a 9) run without it."""
    learner = demo_learner(DemoOptions())
    assert learner["strategy.frozen_blocks"] == 2 and learner["strategy.augment"] == "dihedral"
    assert demo_learner(DemoOptions(arch="small_cnn128")) == learner
    assert demo_learner(DemoOptions(arch="small_cnn")) == {}
    assert demo_learner(DemoOptions(trainer_config="t.yaml")) == {}
    assert demo_learner(DemoOptions(scenario="digits")) == {}


def test_the_shipped_128_config_is_the_parts_scenarios_learner() -> None:
    """deploy/configs/trainer-surface-defects-128.yaml is what a deployment copies: the demo's own learner, key by key."""
    import yaml

    doc = yaml.safe_load((Path(__file__).resolve().parents[2] / "deploy/configs/trainer-surface-defects-128.yaml").read_text())
    flat = {f"{section}.{k}": v for section, keys in doc.items() for k, v in keys.items()}
    assert flat == demo_learner(DemoOptions())


def test_the_demo_learner_takes_every_key_of_the_trainer_config(tmp_path) -> None:
    """The learner keys are real TrainerConfig keys (a typo would otherwise surface only in a 3-minute demo), and
    none of them is one the demo sets itself."""
    from deploy.demo.plan import DEMO_TRAINER_KEYS, trainer_settings
    from protocol.config import load_config
    from trainer.config import TrainerConfig

    learner = demo_learner(DemoOptions())
    cfg = load_config(TrainerConfig, None, overrides={**learner, **trainer_settings(127.0)})
    assert cfg.strategy["frozen_blocks"] == 2 and cfg.update.rehearse_rounds == 2 and cfg.eval.weighted is True
    assert not [k for k in learner if any(k == d or k.startswith(d + ".") for d in DEMO_TRAINER_KEYS)]


def test_a_trainer_config_file_is_checked_before_anything_starts(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    """--trainer-config: validated as `edgeloop trainer run --config` validates it, naming the key; a key the demo
    sets itself is refused rather than silently overridden; a missing file is named."""
    from deploy.demo.plan import check_trainer_config

    bad = tmp_path / "bad.yaml"
    bad.write_text("eval:\n  paired: sometimes\n")
    assert main(["--trainer-config", str(bad), "--out", "/nonexistent/never-written"]) == 2
    err = capsys.readouterr().err
    assert "--trainer-config:" in err and "eval.paired" in err and "sometimes" in err
    own = tmp_path / "own.yaml"
    own.write_text("update:\n  batch: 8\n  rehearse_steps: 20\nmqtt:\n  url: mqtt://x\n")
    assert check_trainer_config(str(own)) == f"{own}: the demo sets update.batch, mqtt.url itself (leave them out)"
    assert "config file not found" in (check_trainer_config(str(tmp_path / "missing.yaml")) or "")
    good = tmp_path / "good.yaml"
    good.write_text("update:\n  rehearse_steps: 20\nstrategy:\n  augment: dihedral\n  augment_from: new-class\n"
                    "eval:\n  paired: new-class\n")
    assert check_trainer_config(str(good)) is None
    for name in ("trainer-surface-defects.yaml", "trainer-surface-defects-128.yaml"):
        shipped = Path(__file__).resolve().parents[2] / "deploy/configs" / name
        assert check_trainer_config(str(shipped)) is None  # the examples the README points to work with the demo


def test_the_trainer_gets_the_files_settings_under_the_demos_own(tmp_path) -> None:
    """What start_trainer builds: the file's keys, the demo's cadence over the defaults."""
    from deploy.demo.plan import trainer_settings
    from protocol.config import load_config
    from trainer.config import TrainerConfig

    f = tmp_path / "t.yaml"
    f.write_text("update:\n  rehearse_steps: 20\neval:\n  paired: new-class\n")
    cfg = load_config(TrainerConfig, str(f), overrides=trainer_settings(127.0))
    assert cfg.update.rehearse_steps == 20 and cfg.eval.paired == "new-class"
    assert cfg.update.batch == 32 and cfg.update.optimizer == "adam"
