"""Every numeric config key has a range; a value outside it fails at load, naming the key, the value and the range."""
from __future__ import annotations

import typing
from pathlib import Path

import msgspec
import pytest

from edge.config import EdgeConfig
from protocol.config import ConfigError, load_config
from trainer.config import TrainerConfig


@pytest.mark.parametrize("key,value,message", [
    ("strategy.w_max", 0.5, "strategy.w_max: 0.5 is out of range [1, 1000000]"),
    ("update.batch", 0, "update.batch: 0 is out of range [1, 2147483647]"),
    ("eval.heldout", 1.0, "eval.heldout: 1.0 is out of range [0, 1)"),
    ("eval.paired_alpha", 0, "eval.paired_alpha: 0 is out of range (0, 1)"),
    ("labeler.noise", 1.5, "labeler.noise: 1.5 is out of range [0, 1]"),
    ("ingest.device_rate", 0, "ingest.device_rate: 0 is out of range (0, 1000000]"),
    ("mqtt.keepalive_s", -1, "mqtt.keepalive_s: -1 is out of range [5, 65535]"),
    ("metrics.port", 70000, "metrics.port: 70000 is out of range [0, 65535]"),
    ("retention.compact_below", 0, "retention.compact_below: 0 is out of range (0, 1]"),
    ("update.lr", -0.1, "update.lr: -0.1 is out of range (0, 10]"),
])
def test_trainer_key_out_of_range(key: str, value: object, message: str) -> None:
    with pytest.raises(ConfigError) as e:
        load_config(TrainerConfig, overrides={key: value})
    assert str(e.value) == message


def test_strategy_settings_of_another_strategy_are_checked_too() -> None:
    with pytest.raises(ConfigError, match=r"strategy.ewc_gamma: 2 is out of range \[0, 1\]"):
        load_config(TrainerConfig, overrides={"update.strategy": "ewc", "strategy.ewc_gamma": 2})


def test_yaml_file_error_names_the_file_key_value_and_range(tmp_path: Path) -> None:
    f = tmp_path / "trainer.yaml"
    f.write_text("retention:\n  max_age_days: -3\n")
    with pytest.raises(ConfigError, match=r"trainer.yaml: retention.max_age_days: -3 is out of range \(0, 36500\]"):
        load_config(TrainerConfig, f)


@pytest.mark.parametrize("key,value", [("upload.jpeg_quality", 0), ("outbox.max_bytes", 10), ("source.target_fps", 0),
                                       ("model.threads", 0), ("mqtt.window", 0), ("stats_interval_s", 0)])
def test_edge_key_out_of_range(key: str, value: object) -> None:
    with pytest.raises(ConfigError, match=rf"^{key}: {value} is out of range "):
        load_config(EdgeConfig, overrides={key: value})


def _numeric_keys(cls: type, prefix: str = "") -> list[tuple[str, object]]:
    out = []
    for name, hint in typing.get_type_hints(cls, include_extras=True).items():
        if name not in cls.__struct_fields__:
            continue
        inner = [a for a in (typing.get_args(hint) or (hint,)) if a is not type(None)]
        base = [typing.get_args(a)[0] if hasattr(a, "__metadata__") else a for a in inner]
        if any(isinstance(b, type) and issubclass(b, msgspec.Struct) for b in base):
            out += _numeric_keys(next(b for b in base if isinstance(b, type)), f"{prefix}{name}.")
        elif any(b in (int, float) for b in base):
            out.append((prefix + name, hint))
    return out


def test_every_numeric_trainer_key_has_a_range() -> None:
    unbounded = [k for k, hint in _numeric_keys(TrainerConfig)
                 if not any(isinstance(m, msgspec.Meta) for a in (hint, *typing.get_args(hint))
                            for m in getattr(a, "__metadata__", ()))]
    assert unbounded == []
