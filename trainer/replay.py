"""Replay memory: which labelled samples the trainer keeps to rehearse, bounded in samples and bytes.

Kept apart from the strategies (as Avalanche keeps its storage policies apart) so that any strategy
can use any policy, and so that the memory can be checkpointed on its own.

Storage is explicit about bytes, because the trainer may run next to other services:

- ``x`` is stored as ``uint8`` (default; inputs in [0, 1] are quantised to k/255, which is lossless for
  images that came from 8-bit pixels, as camera frames and MNIST do) or ``float16`` (for inputs that
  are not 8-bit images, e.g. normalised tensors; 2 bytes per value);
- ``y`` int64, ``weight`` float32, ``logits`` float32 (optional, for distillation), plus an int16 count
  of how many logit columns each row holds, since rows stored before a head grew have fewer.

Policies:

- ``reservoir``: every sample seen has the same chance to be in memory (Vitter's algorithm R).
- ``class_balanced``: class-balanced reservoir (CBRS, Chrysakis & Moens 2020): when full, a sample of
  a class that is not among the largest evicts a random sample of the largest class; a sample of a
  largest class replaces a random sample of its own class with probability m_c / n_c. Classes stay
  balanced as new classes arrive, and each class's share is a uniform sample of that class.

Deterministic given ``seed`` (a numpy Generator whose state is part of ``state_dict``).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

__all__ = ["POLICIES", "ReplayBatch", "ReplayMemory"]

POLICIES = ("reservoir", "class_balanced")
_X_DTYPES = {"uint8": torch.uint8, "float16": torch.float16}


@dataclass
class ReplayBatch:
    """Samples drawn from memory: x float32, y long, weight float32, logits float32 (or None) and a
    boolean ``logit_mask`` saying which logit columns each row actually stored."""

    x: torch.Tensor
    y: torch.Tensor
    weight: torch.Tensor
    logits: torch.Tensor | None
    logit_mask: torch.Tensor | None
    index: torch.Tensor

    def __len__(self) -> int:
        return len(self.y)


class ReplayMemory:
    """A bounded rehearsal buffer (see module docstring for the policies and the byte accounting)."""

    def __init__(
        self,
        capacity: int = 500,
        max_bytes: int | None = None,
        policy: str = "reservoir",
        x_dtype: str = "uint8",
        store_logits: bool = False,
        seed: int = 0,
    ) -> None:
        if policy not in POLICIES:
            raise ValueError(f"unknown replay policy {policy!r}; known: {', '.join(POLICIES)}")
        if x_dtype not in _X_DTYPES:
            raise ValueError(f"x_dtype must be one of {', '.join(_X_DTYPES)}")
        if capacity < 0:
            raise ValueError("capacity must be >= 0")
        self.capacity = int(capacity)
        self.max_bytes = None if max_bytes is None else int(max_bytes)
        self.policy = policy
        self.x_dtype = x_dtype
        self.store_logits = bool(store_logits)
        self.rng = np.random.default_rng(seed)
        self.seen = 0
        self.seen_per_class: dict[int, int] = {}
        self._size = 0
        self._limit: int | None = None  # rows, fixed once the sample shape is known
        self._x: torch.Tensor | None = None
        self._y = torch.zeros(0, dtype=torch.long)
        self._w = torch.zeros(0, dtype=torch.float32)
        self._logits: torch.Tensor | None = None
        self._nlogits = torch.zeros(0, dtype=torch.int16)

    # ---------------------------------------------------------------- sizes
    def __len__(self) -> int:
        return self._size

    @property
    def limit(self) -> int:
        """Rows this memory can hold: min(capacity, max_bytes // bytes_per_sample), once shapes are known."""
        return self.capacity if self._limit is None else self._limit

    def bytes_per_sample(self, x_numel: int | None = None, num_logits: int | None = None) -> int:
        """Bytes one stored row takes: x + y (8) + weight (4) + logit count (2) + logits (4 each)."""
        if x_numel is None:
            x_numel = 0 if self._x is None else int(self._x[0].numel())
        if num_logits is None:
            num_logits = 0 if self._logits is None else int(self._logits.shape[1])
        item = 1 if self.x_dtype == "uint8" else 2
        return x_numel * item + 8 + 4 + 2 + (4 * num_logits if self.store_logits else 0)

    @property
    def nbytes(self) -> int:
        """Bytes held by the filled rows (what the memory costs; the preallocated rows are ``allocated_bytes``)."""
        return self._size * self.bytes_per_sample() if self._x is not None else 0

    @property
    def allocated_bytes(self) -> int:
        return 0 if self._x is None else len(self._y) * self.bytes_per_sample()

    def class_counts(self) -> dict[int, int]:
        """Samples per class currently held."""
        ys, counts = torch.unique(self._y[: self._size], return_counts=True)
        return {int(a): int(b) for a, b in zip(ys, counts)}

    # ---------------------------------------------------------------- storage helpers
    def _allocate(self, x_shape: tuple[int, ...], num_logits: int, limit: int | None = None) -> None:
        numel = int(np.prod(x_shape))
        if limit is None:
            limit = self.capacity
            if self.max_bytes is not None:
                limit = min(limit, self.max_bytes // self.bytes_per_sample(numel, num_logits))
        self._limit = int(limit)
        self._x = torch.zeros((self._limit, *x_shape), dtype=_X_DTYPES[self.x_dtype])
        self._y = torch.zeros(self._limit, dtype=torch.long)
        self._w = torch.zeros(self._limit, dtype=torch.float32)
        self._nlogits = torch.zeros(self._limit, dtype=torch.int16)
        self._logits = torch.zeros((self._limit, num_logits), dtype=torch.float32) if self.store_logits else None

    def _encode(self, x: torch.Tensor) -> torch.Tensor:
        if self.x_dtype == "uint8":
            if x.dtype == torch.uint8:
                return x
            return torch.round(x.detach().float().clamp(0, 1) * 255.0).to(torch.uint8)
        return x.detach().to(torch.float16)

    def _decode(self, x: torch.Tensor) -> torch.Tensor:
        return x.float() / 255.0 if self.x_dtype == "uint8" else x.float()

    def grow_logits(self, num_classes: int) -> None:
        """Widen stored logits to ``num_classes`` columns (zeros; the row's count keeps them masked out).

        Called when the head grows. The byte limit is re-checked: if wider rows no longer fit, random
        rows are dropped so the memory stays within ``max_bytes``.
        """
        if self._logits is None or num_classes <= self._logits.shape[1]:
            return
        pad = torch.zeros((self._logits.shape[0], num_classes - self._logits.shape[1]))
        self._logits = torch.cat([self._logits, pad], dim=1)
        self._fit_bytes()

    def _fit_bytes(self) -> None:
        """After rows got wider: drop random rows if the memory no longer fits ``max_bytes``."""
        if self.max_bytes is not None:
            new_limit = min(self.capacity, self.max_bytes // self.bytes_per_sample())
            if new_limit < self.limit:
                keep = np.sort(self.rng.permutation(self._size)[: min(self._size, new_limit)])
                self._compact(torch.from_numpy(keep), new_limit)

    @property
    def rows_without_logits(self) -> int:
        """Filled rows with no stored logit (all of them when logits are not stored): rows that cannot be distilled."""
        if self._logits is None:
            return self._size
        return int((self._nlogits[: self._size] == 0).sum())

    @torch.no_grad()
    def fill_logits(self, predict: Callable[[torch.Tensor], torch.Tensor], num_classes: int,
                    batch_size: int = 256) -> int:
        """Store logits from ``predict`` (inputs as :meth:`sample` returns them -> logits) for every row that has
        none, switching logit storage on if it was off; returns how many rows got them.

        Why: a memory written without logits (``edgeloop trainer bootstrap`` before it stored them, or a strategy
        switched to a distilling one) would leave distillation off for good, since the checkpoint's settings win
        on restore. A row whose prediction is not finite keeps no logits (it is not distilled). Storing logits
        makes rows wider: with ``max_bytes`` random rows may be dropped to stay within it.
        """
        if not self.store_logits:
            self.store_logits = True
            if self._x is not None:
                self._logits = torch.zeros((len(self._y), num_classes), dtype=torch.float32)
                self._nlogits.zero_()
                self._fit_bytes()
        if self._x is None:
            return 0
        self.grow_logits(num_classes)
        rows = torch.nonzero(self._nlogits[: self._size] == 0).flatten()
        filled = 0
        for i in range(0, len(rows), batch_size):
            idx = rows[i:i + batch_size]
            out = predict(self._decode(self._x[idx])).detach().float()
            ok = torch.isfinite(out).all(1)
            idx, out = idx[ok], out[ok]
            k = min(out.shape[1], self._logits.shape[1])
            self._logits[idx, :k] = out[:, :k]
            self._nlogits[idx] = k
            filled += len(idx)
        return filled

    def _compact(self, keep: torch.Tensor, new_limit: int) -> None:
        """Reallocate to ``new_limit`` rows holding only the rows ``keep``."""
        n = len(keep)

        def take(t: torch.Tensor) -> torch.Tensor:
            out = torch.zeros((new_limit, *t.shape[1:]), dtype=t.dtype)
            out[:n] = t[keep]
            return out

        self._x, self._y, self._w, self._nlogits = take(self._x), take(self._y), take(self._w), take(self._nlogits)
        if self._logits is not None:
            self._logits = take(self._logits)
        self._limit, self._size = new_limit, n

    def _write(self, row: int, x: torch.Tensor, y: int, w: float, logits: torch.Tensor | None) -> None:
        self._x[row] = self._encode(x)
        self._y[row] = y
        self._w[row] = w
        if self._logits is not None:
            self._logits[row] = 0.0
            if logits is not None:
                k = min(len(logits), self._logits.shape[1])
                self._logits[row, :k] = logits[:k].detach().float()
                self._nlogits[row] = k
            else:
                self._nlogits[row] = 0

    # ---------------------------------------------------------------- adding
    def add(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        weight: torch.Tensor | None = None,
        logits: torch.Tensor | Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> int:
        """Offer a batch to the memory (one sample at a time, in order); returns how many were stored.

        ``logits`` is a tensor (one row per sample) or a function ``x -> logits``. A function is called once,
        after the reservoir has decided, on the samples that were stored: once the memory is full most offered
        samples are discarded, yet a forward pass over all of them was iw-er's largest cost beyond the
        optimiser step at one step per minibatch (Split-MNIST, K=1: with the distillation term it serves, 16 %
        of the update time; 3,206 of that stream's 7,997 samples are kept).
        """
        n = len(y)
        if n == 0 or self.capacity == 0:
            self.seen += n
            return 0
        predict = None
        if callable(logits):
            if self._logits is None:  # first add (or logits not stored): no width to write into yet, predict all
                logits = logits(x).detach().float() if self.store_logits else None
            else:
                predict, logits = logits, None
        if self._x is None:
            num_logits = int(logits.shape[1]) if logits is not None else 0
            self._allocate(tuple(x.shape[1:]), num_logits)
        if self._logits is not None and logits is not None and logits.shape[1] > self._logits.shape[1]:
            self.grow_logits(int(logits.shape[1]))
        weight = torch.ones(n) if weight is None else weight.detach().float().reshape(-1)
        stored = 0
        written: dict[int, int] = {}  # row -> the sample that holds it now (a later sample may replace an earlier one)
        for i in range(n):
            row = self._choose_row(int(y[i]))
            if row is not None:
                self._write(row, x[i], int(y[i]), float(weight[i]), None if logits is None else logits[i])
                written[row] = i
                stored += 1
        if predict is not None and written:
            # the head grows before a batch with a new class is learnt (Strategy.observe_new_classes widens the
            # memory then), so the prediction fits the stored width; a wider one would be cut to it
            rows = torch.tensor(list(written), dtype=torch.long)
            self.update_logits(rows, predict(x[torch.tensor(list(written.values()), dtype=torch.long)]))
        return stored

    def _choose_row(self, label: int) -> int | None:
        """The row the next sample goes to (None = discard); updates the seen counters."""
        self.seen += 1
        self.seen_per_class[label] = self.seen_per_class.get(label, 0) + 1
        if self._limit == 0:
            return None
        if self._size < self._limit:
            self._size += 1
            return self._size - 1
        if self.policy == "reservoir":
            j = int(self.rng.integers(0, self.seen))
            return j if j < self._limit else None
        # class-balanced reservoir
        ys = self._y[: self._size].numpy()
        counts = np.bincount(ys)
        largest = int(counts.max())
        mine = int(counts[label]) if label < len(counts) else 0
        if mine < largest:
            big = np.flatnonzero(counts == largest)
            victim_class = int(big[self.rng.integers(0, len(big))])
            rows = np.flatnonzero(ys == victim_class)
            return int(rows[self.rng.integers(0, len(rows))])
        if self.rng.random() <= mine / self.seen_per_class[label]:
            rows = np.flatnonzero(ys == label)
            return int(rows[self.rng.integers(0, len(rows))])
        return None

    # ---------------------------------------------------------------- sampling
    def sample(self, n: int, rng: np.random.Generator | None = None, balanced: bool = False) -> ReplayBatch | None:
        """Draw up to ``n`` distinct rows (None when empty).

        ``balanced=True`` draws classes round-robin (equal counts per class, random rows within a class),
        which matters right after a class arrives and with the reservoir policy, whose content follows
        the stream's class mix.
        """
        if self._size == 0 or n <= 0:
            return None
        rng = self.rng if rng is None else rng
        n = min(n, self._size)
        if not balanced:
            idx = rng.choice(self._size, size=n, replace=False)
        else:
            ys = self._y[: self._size].numpy()
            classes = np.unique(ys)
            per = [rng.permutation(np.flatnonzero(ys == c)) for c in classes]
            order = rng.permutation(len(classes))
            picked: list[int] = []
            depth = 0
            while len(picked) < n:
                for k in order:
                    if depth < len(per[k]):
                        picked.append(int(per[k][depth]))
                        if len(picked) == n:
                            break
                depth += 1
            idx = np.asarray(picked)
        index = torch.from_numpy(np.asarray(idx, dtype=np.int64))
        logits = mask = None
        if self._logits is not None:
            logits = self._logits[index].clone()
            cols = torch.arange(self._logits.shape[1])
            mask = cols.unsqueeze(0) < self._nlogits[index].long().unsqueeze(1)
        return ReplayBatch(self._decode(self._x[index]), self._y[index].clone(), self._w[index].clone(), logits, mask, index)

    def update_logits(self, index: torch.Tensor, logits: torch.Tensor) -> None:
        """Overwrite stored logits of rows (for strategies that refresh their distillation targets)."""
        if self._logits is None:
            return
        k = min(logits.shape[1], self._logits.shape[1])
        self._logits[index, :k] = logits[:, :k].detach().float()
        self._nlogits[index] = k

    # ---------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume identically (tensors, counters and the generator state)."""
        n = self._size
        return {
            "version": 1,
            "config": {
                "capacity": self.capacity,
                "max_bytes": self.max_bytes,
                "policy": self.policy,
                "x_dtype": self.x_dtype,
                "store_logits": self.store_logits,
            },
            "limit": self._limit,
            "x_shape": None if self._x is None else tuple(self._x.shape[1:]),
            "num_logits": None if self._logits is None else int(self._logits.shape[1]),
            "x": None if self._x is None else self._x[:n].clone(),
            "y": self._y[:n].clone(),
            "weight": self._w[:n].clone(),
            "logits": None if self._logits is None else self._logits[:n].clone(),
            "nlogits": self._nlogits[:n].clone(),
            "seen": self.seen,
            "seen_per_class": dict(self.seen_per_class),
            "rng": self.rng.bit_generator.state,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore from :meth:`state_dict` (the config in the state wins over the constructor's)."""
        cfg = state["config"]
        self.capacity, self.max_bytes, self.policy = cfg["capacity"], cfg["max_bytes"], cfg["policy"]
        self.x_dtype, self.store_logits = cfg["x_dtype"], cfg["store_logits"]
        self.seen = int(state["seen"])
        self.seen_per_class = {int(k): int(v) for k, v in state["seen_per_class"].items()}
        self.rng = np.random.default_rng()
        self.rng.bit_generator.state = state["rng"]
        self._size = 0
        self._x, self._limit = None, None
        if state["x_shape"] is None:
            return
        self._allocate(tuple(state["x_shape"]), int(state["num_logits"] or 0), int(state["limit"]))
        n = len(state["y"])
        self._size = n
        self._x[:n] = state["x"]
        self._y[:n] = state["y"]
        self._w[:n] = state["weight"]
        self._nlogits[:n] = state["nlogits"]
        if self._logits is not None and state["logits"] is not None:
            self._logits[:n] = state["logits"]
