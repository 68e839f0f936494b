"""The strategy interface: one buffered update = K optimiser steps on new samples mixed with replay.

Every strategy is a small class with ONE learning method, :meth:`Strategy.update`. What they share
lives here: the labelled-batch type, optimiser (re)creation when the head grows, minibatch mixing
and memory bookkeeping. A strategy only says how the loss of one step is formed (:meth:`Strategy.step_loss`)
and, if it needs to, what to do after the K steps (:meth:`Strategy.after_update`). Its settings are its
``Config``: :class:`StrategyConfig` (the settings every strategy has) or a subclass of it declared in the
strategy's own module.
"""
from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Literal, Self

import msgspec
from msgspec import Meta
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from protocol.config import value_error
from trainer.augment import parse_augment
from trainer.nets import Classifier, DihedralMean, grow_head
from trainer.replay import ReplayBatch, ReplayMemory

__all__ = ["LabelledBatch", "LabelledSample", "OptimizerLike", "Strategy", "StrategyConfig", "NonNegative", "Positive"]

#: Ranges for settings (checked at load; the error names the key, the value and the range).
NonNegative = Annotated[float, Meta(ge=0.0, le=1e9)]
Positive = Annotated[float, Meta(gt=0.0, le=1e9)]
_BatchSize = Annotated[int, Meta(ge=0, le=1_000_000)]

OptimizerLike = torch.optim.Optimizer | Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]


@dataclass
class LabelledSample:
    """One labelled sample for learning.

    ``p_select`` is the probability with which the edge selected it for upload (1.0 for data that was
    not selected by an edge, e.g. a bootstrap set); ``importance`` an optional extra per-sample factor;
    ``logits`` optional stored model outputs (for distillation).
    """

    x: torch.Tensor
    y: int
    p_select: float = 1.0
    importance: float | None = None
    logits: torch.Tensor | None = None


@dataclass
class LabelledBatch:
    """A batch of labelled samples, as tensors. x float32 (n, C, H, W) in [0, 1]; y long (n,)."""

    x: torch.Tensor
    y: torch.Tensor
    p_select: torch.Tensor | None = None
    importance: torch.Tensor | None = None
    logits: torch.Tensor | None = None

    def __post_init__(self) -> None:
        self.y = torch.as_tensor(self.y, dtype=torch.long).reshape(-1)
        if self.p_select is None:
            self.p_select = torch.ones(len(self.y))
        self.p_select = torch.as_tensor(self.p_select, dtype=torch.float32).reshape(-1)
        if len(self.x) != len(self.y) or len(self.p_select) != len(self.y):
            raise ValueError("x, y and p_select must have the same length")
        if self.importance is not None:
            self.importance = torch.as_tensor(self.importance, dtype=torch.float32).reshape(-1)

    def __len__(self) -> int:
        return len(self.y)

    @classmethod
    def from_samples(cls, samples: Sequence[LabelledSample]) -> LabelledBatch:
        """Stack samples; importance/logits are kept only when every sample has them."""
        if not samples:
            raise ValueError("empty batch")
        imp = None
        if all(s.importance is not None for s in samples):
            imp = torch.tensor([float(s.importance) for s in samples])  # type: ignore[arg-type]
        logits = None
        if all(s.logits is not None for s in samples):
            logits = torch.stack([s.logits for s in samples])  # type: ignore[misc]
        return cls(
            x=torch.stack([s.x.float() for s in samples]),
            y=torch.tensor([int(s.y) for s in samples]),
            p_select=torch.tensor([float(s.p_select) for s in samples]),
            importance=imp,
            logits=logits,
        )

    def subset(self, idx: torch.Tensor) -> LabelledBatch:
        return LabelledBatch(
            self.x[idx],
            self.y[idx],
            self.p_select[idx],
            None if self.importance is None else self.importance[idx],
            None if self.logits is None else self.logits[idx],
        )


class StrategyConfig(msgspec.Struct, kw_only=True):
    """The settings every strategy has: how one optimiser step's minibatch is made.

    A strategy with settings of its own declares a subclass of this in its module, beside the loss that
    reads them (DER++'s ``alpha``/``beta`` in :mod:`trainer.strategies.derpp`), and names it as its
    ``Config``; the defaults there are the only ones. :meth:`from_dict` is how settings arrive from a
    config file, the benchmark's ``--set`` or a test: unknown keys and wrong types fail naming the key.
    """

    replay_batch_size: _BatchSize = 32  # replayed samples mixed into every step's minibatch
    new_batch_size: _BatchSize = 32     # at most this many of the new samples per step (0 = all of them)
    balanced_replay: bool = True        # draw replay round-robin over classes
    grad_clip: Positive | None = None   # clip the gradient norm of every step to this (None = no clipping)
    freeze_bn: bool = True              # batch norm in inference mode during updates (see Strategy.train_mode)
    # every step's new and replayed inputs changed by trainer.augment (see Strategy._optimise); "dihedral" only
    # where orientation means nothing (surface defects: the demo's parts), never for digits
    augment: Literal["none", "photometric", "geometric", "both", "dihedral", "all"] = "none"
    # when augment starts: from the first step ("start"), or from the first class the loop adds to the head
    # ("new-class": a new defect's few labels need the turned copies, the old world does not; see _augmented)
    augment_from: Literal["start", "new-class"] = "start"
    # the candidate the trainer gates and ships: the weights themselves (0), or their exponential moving average
    # over optimiser steps with this decay (see Strategy.candidate)
    ema: Annotated[float, Meta(ge=0.0, lt=1.0)] = 0.0
    # the candidate answers the mean of its input's eight turns and mirror images while the turned copies are
    # being learnt (needs augment dihedral or all; see Strategy.candidate and trainer.nets.DihedralMean)
    tta: bool = False
    # the first this many modules of the net's ``features`` keep their weights in updates (see Strategy.freeze_early)
    frozen_blocks: Annotated[int, Meta(ge=0, le=100)] = 0

    @classmethod
    def from_dict(cls, values: Mapping[str, Any] | None, strategy: str = "") -> Self:
        """These settings from a mapping (missing keys keep their defaults); ``ValueError`` names a key
        that is unknown to this strategy or has a value of the wrong type."""
        values = dict(values or {})
        known = cls.__struct_fields__
        for key in values:
            if key not in known:
                who = f"strategy {strategy}" if strategy else cls.__name__
                raise ValueError(f"{key}: not a setting of {who} (its settings: {', '.join(sorted(known))})")
        try:
            config = msgspec.convert(values, type=cls, strict=False)
        except msgspec.ValidationError as e:
            raise ValueError(value_error(e, values, cls)) from None
        if config.tta and not _dihedral(config.augment):
            raise ValueError(f"tta: true needs augment dihedral or all (the views a model is asked are the ones "
                             f"it learnt), not {config.augment!r}")
        return config

    def as_dict(self) -> dict[str, Any]:
        """Every setting with its value (for configs printed or written back)."""
        return {k: getattr(self, k) for k in self.__struct_fields__}


class Strategy:
    """Base class. Subclasses set ``name`` and implement :meth:`step_loss` (and maybe :meth:`after_update`);
    one with settings of its own sets ``Config`` to its :class:`StrategyConfig` subclass.

    Constructed with a model (a :class:`~trainer.nets.Classifier`), an optimiser *or* an optimiser factory
    (``params -> Optimizer``; needed to rebuild it when the head grows — an optimiser instance is turned
    into a factory of the same class and defaults), a replay memory (or None), its settings (a ``Config``
    or a mapping for :meth:`StrategyConfig.from_dict`) and the seed of its minibatch sampling.
    """

    name = "base"
    uses_memory = True
    stores_logits = False
    Config: ClassVar[type[StrategyConfig]] = StrategyConfig

    def __init__(
        self,
        model: Classifier,
        optimizer: OptimizerLike,
        memory: ReplayMemory | None = None,
        config: StrategyConfig | Mapping[str, Any] | None = None,
        *,
        seed: int = 0,
    ) -> None:
        self.model = model
        self.config = self.settings(config)
        self.freeze_early()
        if isinstance(optimizer, torch.optim.Optimizer):
            opt_cls, defaults = type(optimizer), dict(optimizer.defaults)
            self.optimizer_factory: Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer] = (
                lambda params: opt_cls(params, **defaults)
            )
            self.optimizer = optimizer
        else:
            self.optimizer_factory = optimizer
            self.optimizer = optimizer(model.parameters())
        self.memory = memory
        self.rng = np.random.default_rng(seed)
        self.updates = 0
        self.steps = 0
        self.update_steps = 1
        self.ema_model: Classifier | None = None  # the weights' moving average, with ``ema`` > 0 (candidate())
        self.grown = False  # has the head grown since this strategy's first state (a class learnt in the loop)?

    def freeze_early(self) -> None:
        """With ``frozen_blocks`` N, the first N modules of the net's ``features`` stop learning: their parameters
        get no gradients, so autograd neither keeps their activations nor runs their backward pass.

        Why: the first blocks of a camera net see the image at full resolution and find lines, edges and colours,
        which a lighting change or a new defect does not make new; they are also where a step spends most of its
        time (``small_cnn128``, one thread, B=64: 0.174 s a step, 0.090 s with its first two of five blocks
        frozen; ``python -m bench.step_cost``). A trainer that shares a camera box's CPU gets more steps, and
        sooner, from the same seconds. The optimiser still holds every parameter (Adam skips those without a
        gradient), so checkpoints load whatever the setting. The frozen blocks' batch-norm statistics stay too
        (:meth:`train_mode`), so their outputs for an input never change and the trainer's evaluations reuse them
        (trainer/prefix_cache.py).
        """
        n = self.config.frozen_blocks
        if n == 0:
            return
        blocks = list(self.model.features.children())
        if n >= len(blocks):
            raise ValueError(f"frozen_blocks: {n} would freeze every module of the net's features ({len(blocks)}); "
                             f"at most {len(blocks) - 1}")
        for block in blocks[:n]:
            for p in block.parameters():
                p.requires_grad_(False)

    @classmethod
    def settings(cls, config: StrategyConfig | Mapping[str, Any] | None = None) -> Any:
        """This strategy's settings: ``config`` itself if it is one, else its ``Config`` from a mapping."""
        if isinstance(config, StrategyConfig):
            if not isinstance(config, cls.Config):
                raise TypeError(f"{cls.name} takes {cls.Config.__name__}, not {type(config).__name__}")
            return config
        return cls.Config.from_dict(config, cls.name)

    @classmethod
    def wants_logits(cls, config: StrategyConfig) -> bool:
        """Whether this strategy, so configured, needs logits stored in memory."""
        return cls.stores_logits

    # ------------------------------------------------------------------ head growth
    def observe_new_classes(self, num_classes: int) -> bool:
        """Grow the head to ``num_classes`` and carry the optimiser over.

        A new ``nn.Linear`` means new Parameter objects, so the optimiser is rebuilt; the state of every
        unchanged parameter is kept, and the old head's state (Adam's moments, step) is copied into the
        old rows of the new head's state, new rows start at zero. Stored logits in memory are widened.
        """
        old_head = self.model.head
        if not grow_head(self.model, num_classes):
            return False
        old_state = self.optimizer.state
        old_w, old_b = old_head.weight, old_head.bias
        new_opt = self.optimizer_factory(self.model.parameters())
        for group in new_opt.param_groups:
            for p in group["params"]:
                if p is self.model.head.weight:
                    src = old_w
                elif p is self.model.head.bias:
                    src = old_b
                else:
                    src = p
                if src not in old_state:
                    continue
                state = {}
                for k, v in old_state[src].items():
                    if isinstance(v, torch.Tensor) and v.shape == src.shape and src is not p:
                        grown = torch.zeros_like(p)
                        grown[: src.shape[0]] = v
                        state[k] = grown
                    else:
                        state[k] = v.clone() if isinstance(v, torch.Tensor) else v
                new_opt.state[p] = state
        self.optimizer = new_opt
        if self.ema_model is not None:  # the average grows too; its new rows start where the model's do
            n_old = old_w.shape[0]
            grow_head(self.ema_model, num_classes)
            with torch.no_grad():
                self.ema_model.head.weight[n_old:] = self.model.head.weight[n_old:]
                self.ema_model.head.bias[n_old:] = self.model.head.bias[n_old:]
        if self.memory is not None:
            self.memory.grow_logits(num_classes)
        self.grown = True
        self.on_head_grown(old_w, old_b)
        return True

    def on_head_grown(self, old_weight: torch.Tensor, old_bias: torch.Tensor) -> None:
        """Hook for strategies holding per-parameter state (EWC)."""

    # ------------------------------------------------------------------ the update
    def update(self, batch: LabelledBatch, steps: int = 1) -> dict[str, float]:
        """Run ``steps`` optimiser steps on minibatches mixing ``batch`` with replay, then update memory.

        Labels beyond the head grow it first. Returns metrics: loss (mean over steps), steps, new and
        replay samples per step, memory size.
        """
        if len(batch) == 0:
            return {"loss": float("nan"), "steps": 0}
        top = int(batch.y.max()) + 1
        if top > self.model.num_classes:
            self.observe_new_classes(top)
        self.train_mode()
        losses = []
        n_replay = 0
        self.update_steps = max(1, int(steps))  # how many steps this update makes (iw-er's ace_mix="steps" reads it)
        for _ in range(self.update_steps):
            new = self._new_minibatch(batch)
            replay = self._replay_minibatch()
            n_replay = 0 if replay is None else len(replay)
            losses.append(self._optimise(new, replay))
        self.after_update(batch)
        self.updates += 1
        return {
            "loss": float(np.mean(losses)),
            "steps": float(len(losses)),
            "new": float(len(batch)),
            "replay": float(n_replay),
            "memory": float(len(self.memory)) if self.memory is not None else 0.0,
        }

    def rehearse(self, steps: int = 1) -> dict[str, float]:
        """Run ``steps`` replay-only optimiser steps: the strategy's own loss with no new samples.

        What a trainer can do with compute it has while it waits for labels. Spending that compute on
        *extra steps over the same new batch* instead is harmful: with iw-er, K/f steps on one batch of
        10 made its stored logits confidently wrong and distillation then pinned the new classes to the
        old ones (Split-MNIST at 20 % labels: 69.7 % vs 97.4 %; trainer/learning_bench.py). A strategy
        without memory, or with an empty one, does nothing. Memory is not changed.
        """
        if int(steps) <= 0 or not self.uses_memory or self.memory is None or len(self.memory) == 0:
            return {"loss": float("nan"), "steps": 0.0}
        self.train_mode()
        losses = []
        for _ in range(int(steps)):
            replay = self._replay_minibatch()
            assert replay is not None  # memory is non-empty
            losses.append(self._optimise(LabelledBatch(replay.x[:0], replay.y[:0]), replay))
        return {"loss": float(np.mean(losses)), "steps": float(len(losses))}

    def train_mode(self) -> None:
        """The model in training mode for an update; with ``freeze_bn``, its batch-norm layers stay in inference mode.

        Why: a step in training mode normalises with the statistics of its own minibatch (32 new samples + 32
        replayed) and moves the running statistics towards them, while the exported model normalises with the
        running statistics. When a minibatch's make-up departs from the data those statistics describe -- a new
        class whose few samples activate channels nothing else does -- the two disagree: on the adaptation
        benchmark the first update with `crack` samples left a model that called 100 % of held-out samples
        ``scratch`` (whole-set accuracy 0.39) although its training loss fell. With the running statistics
        frozen, every step optimises exactly the function that ships; the affine parameters still learn.
        """
        self.model.train()
        if self.config.freeze_bn:
            for m in self.model.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        for block in list(self.model.features.children())[: self.config.frozen_blocks]:
            block.eval()  # a frozen block keeps its batch-norm statistics too: it computes exactly what it did

    def _optimise(self, new: LabelledBatch, replay: ReplayBatch | None) -> float:
        new, replay = self._augmented(new, replay)
        loss = self.step_loss(new, replay)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.config.grad_clip:
            nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip)
        self.optimizer.step()
        self.steps += 1
        self._update_ema()
        return float(loss.detach())

    def candidate(self) -> Classifier | DihedralMean:
        """The model to judge and ship: the learner's weights, or with ``ema`` > 0 their moving average; with
        ``tta``, while the turned copies are being learnt, asked all eight views (:class:`DihedralMean`).

        Why: a new class learnt from a few samples makes the weights swing from step to step between giving it
        the old classes' samples and taking them back; offline, 25 `crack` labels turned and mirrored scored
        69-86 % (seed 0) and 51-81 % (seed 1) on the same frames at checkpoints 100 steps apart, while the
        average at decay 0.99 climbed steadily to 86 / 85 % (README, Adaptation #41). The gate sees one
        checkpoint, so it draws from that lottery; the average is what the steps agree on. Training continues
        from the weights themselves, never from the average.
        """
        model = self.ema_model if self.config.ema > 0 and self.ema_model is not None else self.model
        if self.config.tta and self.augmenting():
            return DihedralMean(model)
        return model

    @torch.no_grad()
    def _update_ema(self) -> None:
        d = self.config.ema
        if d <= 0:
            return
        if self.ema_model is None:
            self.ema_model = copy.deepcopy(self.model).eval()
            for p in self.ema_model.parameters():
                p.requires_grad_(False)
            return
        for pe, pm in zip(self.ema_model.parameters(), self.model.parameters()):
            pe.lerp_(pm, 1.0 - d)
        for be, bm in zip(self.ema_model.buffers(), self.model.buffers()):  # batch-norm statistics: as they are
            be.copy_(bm)

    def _augmented(self, new: LabelledBatch, replay: ReplayBatch | None) -> tuple[LabelledBatch, ReplayBatch | None]:
        """The step's inputs changed by ``augment`` (unchanged with "none"); replayed logits, the distillation
        targets, stay those of the stored inputs, which asks the model to answer a turned sample as it did the
        original.

        Why: a new defect arrives with a handful of labels. With quarter turns and mirror images each stands for
        eight, and the adaptation benchmark's ``crack``, 25 labels, went from 5-20 % recall to 56-75 %
        (README, Adaptation #35). But the turned copies cost the old world about two points before any new class
        arrives (#36, #42); ``augment_from: new-class`` turns them on only once the loop has added a class to the
        head (:attr:`grown`, kept in the checkpoint; README #43). The generator is seeded from the strategy's own
        on first use, so a run repeats; it is not checkpointed (a restarted trainer draws other turns, which
        changes nothing that matters).
        """
        a = parse_augment(self.config.augment)
        if a is None or not self.augmenting():
            return new, replay
        gen = self.__dict__.get("_aug_gen")
        if gen is None:
            gen = self._aug_gen = torch.Generator().manual_seed(int(self.rng.integers(1 << 30)))
        if len(new):
            new = dataclasses.replace(new, x=a(new.x, gen))
        if replay is not None and len(replay):
            replay = dataclasses.replace(replay, x=a(replay.x, gen))
        return new, replay

    def augmenting(self) -> bool:
        """Whether steps now see changed inputs: ``augment`` is set and, with ``augment_from: new-class``, the
        loop has added a class to the head."""
        return (parse_augment(self.config.augment) is not None
                and (self.config.augment_from == "start" or self.grown))

    def _new_minibatch(self, batch: LabelledBatch) -> LabelledBatch:
        k = self.config.new_batch_size
        if k <= 0 or k >= len(batch):
            return batch
        return batch.subset(torch.from_numpy(self.rng.choice(len(batch), size=k, replace=False)))

    def _replay_minibatch(self) -> ReplayBatch | None:
        if not self.uses_memory or self.memory is None or len(self.memory) == 0:
            return None
        return self.memory.sample(self.config.replay_batch_size, self.rng, balanced=self.config.balanced_replay)

    def step_loss(self, new: LabelledBatch, replay: ReplayBatch | None) -> torch.Tensor:
        """The loss of one optimiser step (subclasses)."""
        raise NotImplementedError

    def after_update(self, batch: LabelledBatch) -> None:
        """After the K steps: by default offer the batch to memory with its selection weights."""
        if self.uses_memory and self.memory is not None:
            self.remember(batch)

    def remember(self, batch: LabelledBatch, weight: torch.Tensor | None = None) -> None:
        """Offer ``batch`` to memory; with stored logits, the model after the update predicts them for the
        samples the memory keeps (only those: see :meth:`ReplayMemory.add`)."""
        if self.memory is not None:
            logits = self.predict_logits if self.memory.store_logits else None
            self.memory.add(batch.x, batch.y, weight, logits)

    @torch.no_grad()
    def predict_logits(self, x: torch.Tensor) -> torch.Tensor:
        was = self.model.training
        self.model.eval()
        out = self.model(x)
        self.model.train(was)
        return out

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        """Model, optimiser, memory, counters and generator state (strategies add their own)."""
        return {
            "name": self.name,
            "model": self.model.state_dict(),
            "num_classes": self.model.num_classes,
            "optimizer": self.optimizer.state_dict(),
            "memory": None if self.memory is None else self.memory.state_dict(),
            "updates": self.updates,
            "steps": self.steps,
            "rng": self.rng.bit_generator.state,
            "ema": None if self.ema_model is None else self.ema_model.state_dict(),
            "grown": self.grown,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["num_classes"] > self.model.num_classes:
            self.observe_new_classes(int(state["num_classes"]))
        self.model.load_state_dict(state["model"])
        # deep copy: torch's Optimizer.load_state_dict keeps the given tensors (same dtype/device), and
        # they may still belong to a live optimiser (the state's source) that keeps updating them in place.
        self.optimizer.load_state_dict(copy.deepcopy(state["optimizer"]))
        if self.memory is not None and state["memory"] is not None:
            self.memory.load_state_dict(state["memory"])
        self.updates, self.steps = int(state["updates"]), int(state["steps"])
        self.rng.bit_generator.state = state["rng"]
        self.grown = bool(state.get("grown", self.grown))  # a checkpoint from before the flag: what loading did
        self.ema_model = None
        if self.config.ema > 0 and state.get("ema") is not None:  # else it starts again from the weights
            self.ema_model = copy.deepcopy(self.model).eval()
            for p in self.ema_model.parameters():
                p.requires_grad_(False)
            self.ema_model.load_state_dict(state["ema"])


def _dihedral(augment: str) -> bool:
    a = parse_augment(augment)
    return a is not None and a.dihedral


def cross_entropy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-sample CE (reduction none), the building block every strategy weights its own way."""
    return F.cross_entropy(logits, y, reduction="none")
