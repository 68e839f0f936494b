"""``python -m bench.learning_mer [learning options]``: ``edgeloop bench learning`` with the MER strategy known.

trainer/strategies/mer.py is not in the strategy registry yet (trainer/strategies/__init__.py is being
restructured); until it is, this registers it for this process only -- ``mer`` with iw-er's defaults plus
``mer_batches=2``, ``mer_beta=0.5`` -- and runs the learning benchmark's own CLI, e.g.::

    python -m bench.learning_mer --strategy mer --strategy iw-er --seeds 0,1,2 --threads 1 --no-joint
"""
from __future__ import annotations

import sys

from trainer import learning_bench
from trainer.strategies import DEFAULT_CONFIGS, STRATEGIES
from trainer.strategies.mer import MER


def register() -> None:
    STRATEGIES.setdefault("mer", MER)
    DEFAULT_CONFIGS.setdefault("mer", {**DEFAULT_CONFIGS["iw-er"], "mer_batches": 2, "mer_beta": 0.5})


def main(argv: list[str] | None = None) -> int:
    register()
    return learning_bench.main(argv)


if __name__ == "__main__":
    sys.exit(main())
