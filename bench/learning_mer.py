"""``python -m bench.learning_mer [learning options]``: ``edgeloop bench learning`` with experimental strategies known.

trainer/strategies/ is being restructured, so new strategies are not in its registry yet; until they are, this
registers them for this process only and runs the learning benchmark's own CLI:

- ``mer``: trainer/strategies/mer.py with iw-er's defaults plus ``mer_batches=2``, ``mer_beta=0.5``;
- ``iw-er-mix``: iw-er whose new samples' loss is ``(1 - ace_mix) x`` asymmetric CE ``+ ace_mix x`` full CE
  (``--set ace_mix=0.5``; 0 = iw-er, 1 = iw-er with ``ace=false``), to find out whether the asymmetric CE that
  keeps forgetting low at K=3 can stay while one step per batch still learns the new classes.

    python -m bench.learning_mer --strategy mer --strategy iw-er --seeds 0,1,2 --threads 1 --no-joint
"""
from __future__ import annotations

import sys

import torch

from trainer import learning_bench
from trainer.strategies import DEFAULT_CONFIGS, STRATEGIES
from trainer.strategies.iw_er import IWER
from trainer.strategies.mer import MER


class MixIWER(IWER):
    """iw-er with a blend of asymmetric and full CE on the new samples (``extra["ace_mix"]``).

    iw-er's own loss evaluated twice on one forward pass -- once with ACE, once without -- and blended: the
    replay CE and the distillation term are identical in both, so only the new samples' CE is mixed. (The product
    version is one ``ace_mix`` line in IWER.step_loss; until trainer/strategies/ can take it, this reuses it.)
    """

    name = "iw-er-mix"

    def step_loss(self, new, replay):  # type: ignore[no-untyped-def]
        m = float(self.config.extra.get("ace_mix", 0.5))
        if replay is None or not self.config.ace or m == 0.0:
            return super().step_loss(new, replay)
        model = self.model
        out = model(torch.cat([new.x, replay.x]))
        self.model = lambda x: out  # type: ignore[assignment] - both evaluations share this forward pass
        try:
            with_ace = super().step_loss(new, replay)
            self.config.ace = False
            full = super().step_loss(new, replay)
        finally:
            self.config.ace = True
            self.model = model
        return (1.0 - m) * with_ace + m * full


def register() -> None:
    STRATEGIES.setdefault("mer", MER)
    DEFAULT_CONFIGS.setdefault("mer", {**DEFAULT_CONFIGS["iw-er"], "mer_batches": 2, "mer_beta": 0.5})
    STRATEGIES.setdefault("iw-er-mix", MixIWER)
    DEFAULT_CONFIGS.setdefault("iw-er-mix", {**DEFAULT_CONFIGS["iw-er"], "ace_mix": 0.5})


def main(argv: list[str] | None = None) -> int:
    register()
    return learning_bench.main(argv)


if __name__ == "__main__":
    sys.exit(main())
