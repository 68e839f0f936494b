"""Each strategy owns its settings: one source of defaults, every setting reachable from the trainer's
config file, unknown keys and wrong types rejected naming the key."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from protocol.config import ConfigError, dump_config, load_config
from trainer.config import TrainerConfig
from trainer.learning_bench import main as bench_main
from trainer.nets import Classifier
from trainer.strategies import STRATEGIES, StrategyConfig, make_strategy, strategy_settings
from trainer.strategies.derpp import DERppConfig
from trainer.strategies.ewc import EWCConfig
from trainer.strategies.iw_er import IWERConfig


def _model() -> Classifier:
    return Classifier(nn.Sequential(nn.Flatten(1), nn.Linear(4, 8), nn.ReLU()), 8, 2)


def _adam(params):  # type: ignore[no-untyped-def]
    return torch.optim.Adam(params, lr=1e-3)


def test_each_strategy_declares_its_settings_in_its_module() -> None:
    assert STRATEGIES["der++"].Config is DERppConfig and STRATEGIES["ewc"].Config is EWCConfig
    assert STRATEGIES["iw-er"].Config is IWERConfig
    assert STRATEGIES["naive"].Config is StrategyConfig and STRATEGIES["er"].Config is StrategyConfig
    shared = set(StrategyConfig.__struct_fields__)
    assert set(DERppConfig.__struct_fields__) - shared == {"alpha", "beta"}
    assert set(EWCConfig.__struct_fields__) - shared == {"ewc_lambda", "ewc_gamma", "ewc_window"}


def test_one_source_of_defaults_the_values_the_benchmark_measured() -> None:
    """make_strategy(name) with no settings, with a dict and the trainer's config all start from the same
    defaults: EWC's are lambda 100, window 100 (bench/results/learning.json was measured with those)."""
    ewc = make_strategy("ewc", _model(), _adam)
    assert (ewc.config.ewc_lambda, ewc.config.ewc_window, ewc.config.ewc_gamma) == (100.0, 100, 1.0)
    assert make_strategy("ewc", _model(), _adam, config={"ewc_gamma": 0.9}).config.ewc_lambda == 100.0
    iw = make_strategy("iw-er", _model(), _adam)
    assert (iw.config.class_balance, iw.config.ace, iw.config.distill, iw.config.w_max) == (True, True, 0.3, 10.0)
    assert iw.config.ace_mix == "steps"  # 1 − 1/(2K): half full CE at one step, ~pure ACE at the trainer's 20 (README, "At Avalanche's budget")
    assert iw.memory is not None and iw.memory.store_logits  # distill > 0 by default
    assert TrainerConfig().strategy == strategy_settings("iw-er").as_dict()


@pytest.mark.parametrize("values,message", [
    ({"alphaa": 1.0}, "alphaa: not a setting of strategy der++"),
    ({"alpha": "much"}, "alpha: Expected `float`, got `str`"),
    ({"ewc_lambda": 5.0}, "ewc_lambda: not a setting of strategy der++"),
    ({"seed": 1}, "seed: not a setting"),  # the seed is make_strategy's (the trainer's update.seed)
])
def test_bad_settings_name_the_key(values: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make_strategy("der++", _model(), _adam, config=values)


def test_settings_of_another_strategy_are_refused() -> None:
    with pytest.raises(TypeError, match="der.. takes DERppConfig, not EWCConfig"):
        make_strategy("der++", _model(), _adam, config=EWCConfig())


def test_every_setting_can_be_set_from_the_config_file(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "trainer.yaml"
    path.write_text("update:\n  strategy: der++\nstrategy:\n  alpha: 0.7\n  beta: 0.1\n  grad_clip: 5\n")
    cfg = load_config(TrainerConfig, path, environ={"EDGELOOP_TRAINER__STRATEGY__REPLAY_BATCH_SIZE": "8"},
                      env_prefix="EDGELOOP_TRAINER__")
    assert cfg.strategy == {**strategy_settings("der++").as_dict(), "alpha": 0.7, "beta": 0.1, "grad_clip": 5.0,
                            "replay_batch_size": 8}
    assert "strategy:\n  replay_batch_size: 8\n" in dump_config(cfg)  # --print-config shows every setting
    s = make_strategy(cfg.update.strategy, _model(), _adam, config=cfg.strategy)
    assert (s.config.alpha, s.config.beta, s.config.grad_clip, s.config.replay_batch_size) == (0.7, 0.1, 5.0, 8)


@pytest.mark.parametrize("text,message", [
    ("strategy:\n  alpha: 0.7\n", "strategy.alpha: not a setting of strategy iw-er"),
    ("update:\n  strategy: ewc\nstrategy:\n  ewc_lambda: lots\n", "strategy.ewc_lambda: Expected `float`"),
    ("update:\n  strategy: ewcc\n", "update.strategy: unknown strategy 'ewcc'"),
    ("update:\n  w_max: 5\n", "update.w_max: unknown key"),
])
def test_config_file_errors_name_the_key(tmp_path, text: str, message: str) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "trainer.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_config(TrainerConfig, path)


def test_bench_set_names_an_unknown_setting(capsys) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(SystemExit):
        bench_main(["--strategy", "er", "--set", "alpha=0.5", "--seeds", "0"])
    assert "--set alpha: not a setting of er" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        bench_main(["--strategy", "der++", "--set", "alpha=much", "--seeds", "0"])
    assert "alpha: Expected `float`, got `str`" in capsys.readouterr().err
