"""Avalanche peer for the Split-MNIST learning benchmark: Avalanche's Naive, Replay and DER on our exact stream.

Run with the Avalanche virtualenv's python (see bench/avalanche_env.py), never imported there::

    ~/.cache/edgeloop-avalanche-venv/bin/python bench/avalanche_peer.py --seeds 0,1,2 --json out.json

The trainer calls :func:`run_peer` from the project's own environment; it runs this file as a script in
the Avalanche venv and returns the rows. Module level therefore imports only the standard library and
numpy; torch and avalanche are imported inside :func:`main`.

Protocol (/work/shared/data/mnist/README.md), built exactly as ``trainer.datasets.make_split_mnist`` does:
the per-digit split with one ``numpy.random.default_rng(0)`` (first floor(0.8 n) of each digit's
permutation to the stream, the rest to the 2,000-image test set), five experiences 0-1, 2-3, 4-5, 6-7,
8-9, each experience's order = ``default_rng(seed).permutation`` (the same generator advanced experience by
experience), minibatches of 10 in that order, one pass, the seed's ConvNet built in the same parameter
order as ``trainer.nets.convnet`` (so ``torch.manual_seed(seed)`` gives the same initial weights), Adam 1e-3.

The experiences are handed to Avalanche as ready-made datasets (``benchmark_from_datasets``), so Avalanche
neither re-splits nor reorders classes, and training runs with ``shuffle=False`` so the stream's
minibatches are ours. What Avalanche's strategies do with their *memory* is left as Avalanche does it:
DER shuffles its memory loader itself; for Replay, whose ``ReplayDataLoader`` uses one shuffle flag for
stream and memory, the stream sampler is made sequential and the memory sampler keeps Avalanche's
shuffle (``--order avalanche`` instead lets Avalanche shuffle both, its default).

Reported per (strategy, seed), with the same keys as trainer/learning_bench.py rows: final accuracy on the
2,000 test images, forgetting = mean over digits 0-7 of (best per-digit accuracy after any experience −
final), training wall and CPU seconds (evaluation excluded), memory samples and an estimate of its bytes
(samples × the bytes of one stored item: float32 image, int64 label, int64 task label, DER's float32
logits), accuracy after each experience and the final per-digit accuracies.
"""
from __future__ import annotations

import argparse
import gzip
import json
import os
import struct
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_IMAGES = ROOT / "data" / "mnist" / "t10k-images-idx3-ubyte.gz"
DEFAULT_LABELS = ROOT / "data" / "mnist" / "t10k-labels-idx1-ubyte.gz"
STRATEGIES = ("naive", "replay", "der")
MINIBATCH = 10
LR = 1e-3
CLASSES_PER_EXPERIENCE = 2

__all__ = ["STRATEGIES", "PeerUnavailable", "main", "protocol_split", "read_idx", "run_peer", "stream_indices"]


class PeerUnavailable(RuntimeError):
    """The Avalanche virtualenv is not there (or cannot import avalanche); the message says how to make it."""


# ---------------------------------------------------------------- data (numpy only, importable anywhere)

def read_idx(path: str | Path) -> np.ndarray:
    """The array in an IDX file, gzip-compressed or raw (sniffed by the gzip magic)."""
    raw = Path(path).read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise ValueError(f"{path}: not a uint8 IDX file")
    ndim = raw[3]
    shape = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(shape)):
        raise ValueError(f"{path}: payload {data.size} bytes, shape {shape}")
    return data.reshape(shape)


def protocol_split(labels: np.ndarray, fraction: float = 0.8) -> tuple[np.ndarray, np.ndarray]:
    """(stream indices, test indices): one default_rng(0), digits 0..9 in order, first floor(0.8 n) to the stream."""
    rng = np.random.default_rng(0)
    stream, test = [], []
    for digit in range(int(labels.max()) + 1):
        idx = rng.permutation(np.flatnonzero(labels == digit))
        cut = int(np.floor(fraction * len(idx)))
        stream.append(idx[:cut])
        test.append(idx[cut:])
    return np.concatenate(stream), np.concatenate(test)


def stream_indices(labels: np.ndarray, seed: int, limit: int | None = None) -> tuple[list[np.ndarray], list[tuple[int, ...]], np.ndarray]:
    """Per-experience index arrays in arrival order, the experiences' classes, and the test indices.

    Same construction as trainer.datasets.make_split_mnist(order_seed=seed). ``limit`` keeps only the
    first ``limit`` samples of each experience and of each digit's test share (for smoke tests).
    """
    stream_idx, test_idx = protocol_split(labels)
    n_classes = int(labels.max()) + 1
    rng = np.random.default_rng(seed)
    stream_y = labels[stream_idx]
    exps, classes = [], []
    for start in range(0, n_classes, CLASSES_PER_EXPERIENCE):
        cls = tuple(range(start, min(start + CLASSES_PER_EXPERIENCE, n_classes)))
        idx = stream_idx[np.isin(stream_y, cls)]
        idx = idx[rng.permutation(len(idx))]
        exps.append(idx if limit is None else idx[:limit])
        classes.append(cls)
    if limit is not None:
        test_idx = np.concatenate([test_idx[labels[test_idx] == d][:limit] for d in range(n_classes)])
    return exps, classes, test_idx


def forgetting(per_class_after: list[list[float]], classes: range = range(8)) -> float:
    """Mean over ``classes`` of (best accuracy after any experience − final accuracy); inputs in [0, 1]."""
    best = np.max(np.array(per_class_after, dtype=float), axis=0)
    final = np.array(per_class_after[-1], dtype=float)
    return float(np.mean([best[c] - final[c] for c in classes]))


# ---------------------------------------------------------------- the runner side (the project's environment)

def run_peer(
    images: str | Path | None = None,
    labels: str | Path | None = None,
    seeds: list[int] | tuple[int, ...] = (0, 1, 2),
    buffer: int = 500,
    strategies: list[str] | tuple[str, ...] = STRATEGIES,
    *,
    limit: int | None = None,
    threads: int = 1,
    python: str | Path | None = None,
    timeout: float | None = None,
    verbose: bool = False,
) -> list[dict[str, Any]]:
    """Run this script in the Avalanche venv and return its rows (strategy "avalanche-naive", ...).

    ``python`` defaults to :func:`bench.avalanche_env.find_python` (EDGELOOP_AVALANCHE_PYTHON, the default
    venv, or this interpreter if it imports avalanche); raises :class:`PeerUnavailable` when none is there.
    """
    if python is None:
        from bench.avalanche_env import find_python

        python = find_python()
        if python is None:
            from bench.avalanche_env import DEFAULT_VENV

            raise PeerUnavailable(
                f"Avalanche is not installed: no venv at {DEFAULT_VENV} (make it with `python -m bench.avalanche_env --create`, "
                "about 6 GB, or set EDGELOOP_AVALANCHE_PYTHON)"
            )
    with tempfile.TemporaryDirectory(prefix="avalanche-peer-") as tmp:
        out = Path(tmp) / "rows.json"
        cmd = [str(python), str(Path(__file__).resolve()), "--seeds", ",".join(str(s) for s in seeds),
               "--buffer", str(buffer), "--strategies", ",".join(strategies), "--threads", str(threads), "--json", str(out)]
        if images is not None:
            cmd += ["--images", str(images)]
        if labels is not None:
            cmd += ["--labels", str(labels)]
        if limit is not None:
            cmd += ["--limit", str(limit)]
        env = {**os.environ, "PYTHONWARNINGS": "ignore"}
        proc = subprocess.run(cmd, stdout=None if verbose else subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              timeout=timeout, env=env, cwd=tempfile.gettempdir(), check=False)
        if proc.returncode != 0 or not out.exists():
            tail = "\n".join(proc.stderr.strip().splitlines()[-15:])
            raise RuntimeError(f"avalanche peer failed (exit {proc.returncode}): {' '.join(cmd)}\n{tail}")
        return list(json.loads(out.read_text())["rows"])


# ---------------------------------------------------------------- the Avalanche side (the venv's python)

def _build(torch: Any) -> Any:
    """The seed's ConvNet, parameters created in trainer.nets.convnet's order (features, then head)."""
    nn = torch.nn

    class ConvNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.features = nn.Sequential(
                nn.Conv2d(1, 32, 3, 1), nn.ReLU(), nn.Conv2d(32, 64, 3, 1), nn.ReLU(), nn.MaxPool2d(2),
                nn.Flatten(1), nn.Linear(9216, 128), nn.ReLU(),
            )
            self.head = nn.Linear(128, 10)

        def forward(self, x: Any) -> Any:
            return self.head(self.features(x))

    return ConvNet()


def _per_class(torch: Any, model: Any, x: Any, y: np.ndarray, n_classes: int = 10) -> tuple[float, list[float]]:
    model.eval()
    with torch.no_grad():
        pred = torch.cat([model(x[i : i + 500]).argmax(1) for i in range(0, len(x), 500)]).numpy()
    model.train()
    per = [float(np.mean(pred[y == c] == c)) if np.any(y == c) else float("nan") for c in range(n_classes)]
    return float(np.mean(pred == y)), per


def _item_bytes(item: Any) -> int:
    """Bytes of one stored memory item: tensors by their storage, Python ints as int64."""
    total = 0
    for v in item if isinstance(item, (tuple, list)) else (item,):
        if hasattr(v, "element_size"):
            total += int(v.numel()) * int(v.element_size())
        elif isinstance(v, (int, float, np.integer, np.floating)):
            total += 8
    return total


def _ordered_replay_plugin(plugin: Any) -> Any:
    """Make Avalanche's ReplayPlugin keep the stream's order while its memory sampler still shuffles."""
    from avalanche.benchmarks.utils.data_loader import ReplayDataLoader, _make_sampler

    class StreamInOrderReplayDataLoader(ReplayDataLoader):  # type: ignore[misc,valid-type]
        n_stream = 1

        def _create_samplers(self, datasets, batch_sizes, distributed_sampling, loader_kwargs):  # type: ignore[no-untyped-def]
            samplers = []
            for i, (ds, mb) in enumerate(zip(datasets, batch_sizes)):
                kw = dict(loader_kwargs, shuffle=False) if i < self.n_stream else dict(loader_kwargs, shuffle=True)
                samplers.append(_make_sampler(ds, distributed_sampling, kw, mb))
            return samplers

    base_cls = type(plugin)

    class StreamInOrderReplayPlugin(base_cls):  # type: ignore[misc,valid-type]
        def before_training_exp(self, strategy, num_workers=0, shuffle=True, drop_last=False, **kwargs):  # type: ignore[no-untyped-def]
            super().before_training_exp(strategy, num_workers=num_workers, shuffle=True, drop_last=drop_last, **kwargs)
            dl = strategy.dataloader
            if isinstance(dl, ReplayDataLoader):
                # one data subset (batch size is an int, no task split) followed by the memory subsets
                dl.__class__ = StreamInOrderReplayDataLoader
                dl.n_stream = 1

    plugin.__class__ = StreamInOrderReplayPlugin
    return plugin


def _run_one(name: str, seed: int, data: dict[str, Any], buffer: int, order: str, mods: dict[str, Any]) -> dict[str, Any]:
    torch = mods["torch"]
    import random

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    model = _build(torch)
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    crit = torch.nn.CrossEntropyLoss()
    common: dict[str, Any] = {"train_mb_size": MINIBATCH, "train_epochs": 1, "eval_mb_size": 500, "device": "cpu",
                              "evaluator": mods["EvaluationPlugin"](loggers=[]), "eval_every": -1}
    if name == "naive":
        strat = mods["Naive"](model, opt, crit, **common)
    elif name == "replay":
        strat = mods["Replay"](model, opt, crit, mem_size=buffer, **common)
        if order == "protocol":
            for p in strat.plugins:
                if isinstance(p, mods["ReplayPlugin"]):
                    _ordered_replay_plugin(p)
    elif name == "der":
        strat = mods["DER"](model, opt, crit, mem_size=buffer, **common)  # alpha=0.1, beta=0.5 (Avalanche defaults)
    else:
        raise ValueError(f"unknown strategy {name}")
    shuffle = order == "avalanche"
    train_s = cpu_s = eval_s = 0.0
    accs, per_class_after = [], []
    for exp in data["bench"].train_stream:
        t0, c0 = time.perf_counter(), time.process_time()
        strat.train(exp, shuffle=shuffle, num_workers=0)
        t1 = time.perf_counter()
        cpu_s += time.process_time() - c0
        train_s += t1 - t0
        acc, per = _per_class(torch, model, data["test_x"], data["test_y"])
        accs.append(acc)
        per_class_after.append(per)
        eval_s += time.perf_counter() - t1
    mem = getattr(getattr(strat, "storage_policy", None), "buffer", None)
    for p in strat.plugins:
        if mem is None and hasattr(p, "storage_policy"):
            mem = p.storage_policy.buffer
    samples = 0 if mem is None else len(mem)
    per_item = _item_bytes(mem[0]) if samples else 0
    return {
        "strategy": f"avalanche-{name}",
        "seed": seed,
        "final_acc": 100.0 * accs[-1],
        "forgetting": 100.0 * forgetting(per_class_after),
        "seconds": train_s,
        "cpu_seconds": cpu_s,
        "eval_seconds": eval_s,
        "memory_bytes": samples * per_item,
        "memory_samples": samples,
        "acc_after_experience": [100.0 * a for a in accs],
        "per_class_final": per_class_after[-1],
        "buffer": buffer if name != "naive" else 0,
        "order": order,
        "peer": "avalanche",
        "avalanche_version": mods["avalanche_version"],
        "torch_version": torch.__version__,
        "threads": torch.get_num_threads(),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Avalanche's Naive, Replay and DER on the Split-MNIST protocol (run in the Avalanche venv)")
    ap.add_argument("--images", default=str(DEFAULT_IMAGES), help="t10k images IDX (gz or raw)")
    ap.add_argument("--labels", default=str(DEFAULT_LABELS), help="t10k labels IDX (gz or raw)")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--buffer", type=int, default=500, help="mem_size of Replay and DER")
    ap.add_argument("--strategies", default=",".join(STRATEGIES), help=f"comma list of {', '.join(STRATEGIES)}")
    ap.add_argument("--order", choices=["protocol", "avalanche"], default="protocol",
                    help="protocol: the stream's minibatches in our order (default); avalanche: Avalanche's shuffle=True")
    ap.add_argument("--limit", type=int, help="keep the first N samples of each experience and each test digit (smoke tests)")
    ap.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    ap.add_argument("--json", help="write {rows: [...]} here")
    a = ap.parse_args(argv)
    names = [s.strip() for s in a.strategies.split(",") if s.strip()]
    for n in names:
        if n not in STRATEGIES:
            ap.error(f"unknown strategy {n}; known: {', '.join(STRATEGIES)}")
    seeds = [int(s) for s in a.seeds.split(",") if s.strip()]

    import warnings

    warnings.filterwarnings("ignore")
    import torch

    torch.set_num_threads(a.threads)
    import avalanche
    from avalanche.benchmarks.scenarios.dataset_scenario import benchmark_from_datasets
    from avalanche.benchmarks.utils.classification_dataset import (
        _make_taskaware_tensor_classification_dataset,
    )
    from avalanche.training.plugins import EvaluationPlugin, ReplayPlugin
    from avalanche.training.supervised import DER, Naive, Replay

    mods = {"torch": torch, "Naive": Naive, "Replay": Replay, "DER": DER, "ReplayPlugin": ReplayPlugin,
            "EvaluationPlugin": EvaluationPlugin, "avalanche_version": getattr(avalanche, "__version__", "?")}
    x_all = read_idx(a.images)
    y_all = read_idx(a.labels).astype(np.int64)
    to_x = lambda arr: torch.from_numpy(arr.astype(np.float32) / 255.0).unsqueeze(1)
    t_start = time.perf_counter()
    rows: list[dict[str, Any]] = []
    for seed in seeds:
        exps, classes, test_idx = stream_indices(y_all, seed, a.limit)
        train_sets = [
            _make_taskaware_tensor_classification_dataset(to_x(x_all[idx]), torch.from_numpy(y_all[idx]), task_labels=0)
            for idx in exps
        ]
        test_sets = [
            _make_taskaware_tensor_classification_dataset(
                to_x(x_all[test_idx[np.isin(y_all[test_idx], c)]]), torch.from_numpy(y_all[test_idx[np.isin(y_all[test_idx], c)]]),
                task_labels=0)
            for c in classes
        ]
        bench = benchmark_from_datasets(train=train_sets, test=test_sets)
        # the stream Avalanche will iterate is exactly ours: same labels, same order
        for exp, idx in zip(bench.train_stream, exps):
            got = np.asarray([int(t) for t in exp.dataset.targets])
            if not np.array_equal(got, y_all[idx]):
                raise AssertionError(f"experience {exp.current_experience}: Avalanche's targets differ from the protocol's")
        data = {"bench": bench, "test_x": to_x(x_all[test_idx]), "test_y": y_all[test_idx]}
        for name in names:
            row = _run_one(name, seed, data, a.buffer, a.order, mods)
            rows.append(row)
            print(f"  {row['strategy']:<17} seed {seed}: acc {row['final_acc']:6.2f}%  forgetting {row['forgetting']:6.2f}  "
                  f"{row['seconds']:6.1f}s wall {row['cpu_seconds']:6.1f}s cpu  mem {row['memory_samples']} ({row['memory_bytes']} B)",
                  flush=True)
    total = time.perf_counter() - t_start
    print(f"avalanche {mods['avalanche_version']}, torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"order {a.order}, total {total:.0f} s", flush=True)
    if a.json:
        Path(a.json).write_text(json.dumps({"rows": rows, "total_seconds": total}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
