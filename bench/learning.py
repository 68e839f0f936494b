"""Split-MNIST continual-learning benchmark (``edgeloop bench learning``); the logic is in trainer.learning_bench."""
from __future__ import annotations

from trainer.learning_bench import GOAL, main, run

__all__ = ["GOAL", "main", "run"]

if __name__ == "__main__":
    raise SystemExit(main())
