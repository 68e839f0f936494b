"""Continual-learning strategies and their registry.

Each strategy is one small class whose single learning entry point is ``update(batch, steps)``
(see :mod:`trainer.strategies.base`), in one module with its settings (its ``Config``, e.g.
:class:`~trainer.strategies.derpp.DERppConfig`), in the manner of Mammoth's ``models/derpp.py``.
``make_strategy`` builds one by name with its settings and a fitting memory.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from trainer.nets import Classifier
from trainer.replay import ReplayMemory
from trainer.strategies.base import (
    LabelledBatch,
    LabelledSample,
    OptimizerLike,
    Strategy,
    StrategyConfig,
)
from trainer.strategies.derpp import DERpp
from trainer.strategies.er import ER
from trainer.strategies.ewc import EWC
from trainer.strategies.iw_er import IWER
from trainer.strategies.mer import MER
from trainer.strategies.naive import Naive

__all__ = [
    "DEFAULT_STRATEGY",
    "STRATEGIES",
    "LabelledBatch",
    "LabelledSample",
    "Strategy",
    "StrategyConfig",
    "make_strategy",
    "strategy_class",
    "strategy_settings",
]

STRATEGIES: dict[str, type[Strategy]] = {
    "naive": Naive,
    "er": ER,
    "iw-er": IWER,
    "der++": DERpp,
    "ewc": EWC,
    "mer": MER,
}
DEFAULT_STRATEGY = "iw-er"


def strategy_class(name: str) -> type[Strategy]:
    """The strategy registered as ``name``; ``ValueError`` lists the known ones."""
    if name not in STRATEGIES:
        raise ValueError(f"unknown strategy {name!r}; known: {', '.join(STRATEGIES)}")
    return STRATEGIES[name]


def strategy_settings(name: str, values: StrategyConfig | Mapping[str, Any] | None = None) -> StrategyConfig:
    """The settings of strategy ``name``: its own ``Config`` with ``values`` laid over the defaults there
    (``ValueError`` names an unknown key or a wrong type)."""
    return strategy_class(name).settings(values)


def make_strategy(
    name: str,
    model: Classifier,
    optimizer: OptimizerLike,
    memory: ReplayMemory | None = None,
    config: StrategyConfig | Mapping[str, Any] | None = None,
    *,
    capacity: int = 500,
    max_bytes: int | None = None,
    policy: str = "class_balanced",
    seed: int = 0,
) -> Strategy:
    """Build a strategy by name with its settings (see :func:`strategy_settings`). When the strategy
    replays and no memory is given, a memory is made (``capacity``/``max_bytes``/``policy``, logits stored
    if the strategy, so configured, distils); ``seed`` seeds the strategy's and the memory's sampling."""
    cls = strategy_class(name)
    cfg = cls.settings(config)
    logits = cls.wants_logits(cfg)
    if memory is None and cls.uses_memory:
        memory = ReplayMemory(capacity, max_bytes, policy, store_logits=logits, seed=seed)
    if logits and memory is not None and not memory.store_logits:
        raise ValueError(f"{name} (so configured) needs a memory with store_logits=True")
    return cls(model, optimizer, memory, cfg, seed=seed)
