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


def test_the_learners_rate_goes_with_its_learner(tmp_path) -> None:
    """Adam at 3e-3 was measured for the parts learner only (README #64): without that learner -- digits, another
    net, a --trainer-config -- updates keep the demo's 1e-3, and its steps with it."""
    from deploy.demo.plan import UPDATE_LR, UPDATE_STEPS, demo_trainer_settings

    assert demo_trainer_settings(DemoOptions(), 127.0)["update.lr"] == 3e-3
    assert demo_trainer_settings(DemoOptions(), 127.0, slow=True)["update.lr"] == 3e-3
    (tmp_path / "t.yaml").write_text("eval:\n  weighted: true\n")
    for opts in (DemoOptions(scenario="digits"), DemoOptions(arch="small_cnn"),
                 DemoOptions(trainer_config=str(tmp_path / "t.yaml"))):
        settings = demo_trainer_settings(opts, 127.0)
        assert (settings["update.lr"], settings["update.steps"]) == (UPDATE_LR, UPDATE_STEPS) == (1e-3, 40)


def test_a_trainer_config_file_may_set_the_optimiser_and_its_rate(tmp_path) -> None:
    """They belong to a learner: the shipped 128 config's Adam at 3e-3 reaches the trainer; a rate alone runs with the
    demo's Adam; an optimiser alone with the trainer's default rate (never Adam's 1e-3 with SGD)."""
    from deploy.demo.plan import check_trainer_config, demo_trainer_settings
    from protocol.config import load_config
    from trainer.config import TrainerConfig

    def effective(text: str) -> tuple[str, float]:
        f = tmp_path / "t.yaml"
        f.write_text(text)
        assert check_trainer_config(str(f)) is None
        cfg = load_config(TrainerConfig, str(f), overrides=demo_trainer_settings(DemoOptions(trainer_config=str(f)), 127.0))
        return cfg.update.optimizer, cfg.update.lr

    shipped = Path(__file__).resolve().parents[2] / "deploy/configs/trainer-surface-defects-128.yaml"
    assert effective(shipped.read_text()) == ("adam", 3e-3)
    assert effective("update:\n  lr: 0.005\n") == ("adam", 0.005)
    assert effective("update:\n  optimizer: sgd\n") == ("sgd", TrainerConfig().update.lr)
    assert effective("strategy:\n  augment: dihedral\n") == ("adam", 1e-3)


def test_the_shipped_128_config_is_the_parts_scenarios_learner() -> None:
    """deploy/configs/trainer-surface-defects-128.yaml is what a deployment copies: the demo's own learner, key by
    key, with the optimiser and rate it updates with (the trainer's defaults are SGD at 0.01) and its steps per
    update (the trainer's default)."""
    import yaml

    from deploy.demo.plan import SCENARIOS, demo_trainer_settings
    from trainer.config import UpdateConfig

    doc = yaml.safe_load((Path(__file__).resolve().parents[2] / "deploy/configs/trainer-surface-defects-128.yaml").read_text())
    flat = {f"{section}.{k}": v for section, keys in doc.items() for k, v in keys.items()}
    demo = demo_trainer_settings(DemoOptions(), 127.0)
    assert flat == {**demo_learner(DemoOptions()), "update.optimizer": "adam", "update.lr": 3e-3}
    assert (demo["update.optimizer"], demo["update.lr"]) == ("adam", SCENARIOS["parts"]["learner_lr"]) == ("adam", 3e-3)
    assert demo["update.steps"] == UpdateConfig().steps == SCENARIOS["parts"]["learner_steps"]


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
