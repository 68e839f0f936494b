"""Train the first model from labelled data and write a trainer state directory with version v0001.

Inputs:

- a folder in torchvision ``ImageFolder`` layout (``root/<class>/<image>.png|jpg``), or
- MNIST-format IDX files (a folder holding ``*images*idx3*`` and ``*labels*idx1*``, or an images file plus
  ``idx_labels=``), with class names from ``labels=`` (default: the numbers as strings).

``sim:`` scenarios are not read here: the trainer must never import ``edge`` (where the simulator lives).
``edgeloop demo`` renders simulated frames into an ImageFolder and then calls :func:`bootstrap` on it.

Robust by construction, because a new user's data set is one nobody tuned for (a digits set that is not
MNIST ended at chance with a fixed lr=3e-3 and nothing warned): Adam with a short linear warm-up, cosine
decay and gradient-norm clipping; divergence is watched while training (a non-finite or exploding loss, one
predicted class) and the held-out result is checked (chance-level accuracy, one predicted class). A failed
attempt is retried from a fresh initialisation at a third, then a tenth of the learning rate; when every
attempt fails, :class:`BootstrapDiverged` says what happened in each, and nothing is registered.

What it writes into ``state_dir``: a checkpoint (model, empty optimiser state, replay memory seeded with
the training set -- with the model's logits for its rows when the trainer's strategy distils -- counters),
``bootstrap_heldout.pt`` (the held-out slice, kept for later evaluations so that forgetting of the bootstrap
classes is measured), and the first registered ONNX version, promoted.
"""
from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping, Sequence
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from protocol.model_meta import ModelMeta

from . import torch_cpu
from .augment import Augment, parse_augment
from .checkpoint import load_checkpoint, save_checkpoint
from .datasets import read_idx
from .evaluate import collapse_reason, evaluate_model, predict, stratified_split
from .export import export_onnx
from .images import InputFormat, preprocess_bytes
from .nets import ARCH_INPUT, build_model
from .registry import Registry
from .replay import ReplayMemory

log = logging.getLogger(__name__)

__all__ = ["bootstrap", "BootstrapResult", "BootstrapDiverged", "Attempt", "collapse_reason", "train_classifier",
           "load_dataset", "distils", "IMAGE_EXTENSIONS", "DEFAULT_LR", "RETRY_LR_FACTORS"]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")
DEFAULT_LR = 1e-3
#: learning rate of attempt k = lr x RETRY_LR_FACTORS[k]; each attempt starts from a fresh initialisation
RETRY_LR_FACTORS = (1.0, 1 / 3, 1 / 10)
CLIP_NORM = 10.0           # gradient-norm clip: a spike cannot throw the weights far in one step
WARMUP_FRACTION = 0.05     # of all steps (at most 200): Adam's first steps are its largest
DECAY_TO = 0.1             # cosine decay of the learning rate to this fraction of the peak (1.0 = none)
EXPLODED = 4.0             # an epoch's mean loss above this many times chance level (ln K) has exploded
JUDGE_AFTER_STEPS = 150    # training predictions are judged only after this many steps (a short run is judged at the end)


@dataclass
class BootstrapResult:
    """What bootstrap produced: the registered version, its file and held-out metrics."""

    version: str
    path: Path
    labels: list[str]
    metrics: dict[str, Any]
    train_size: int
    heldout_size: int
    seconds: float
    extra: dict[str, Any] = field(default_factory=dict)


def _find_idx(folder: Path) -> tuple[Path, Path]:
    files = sorted(p for p in folder.iterdir() if p.is_file() and "idx" in p.name)
    images = [p for p in files if "idx3" in p.name or "images" in p.name]
    labels = [p for p in files if "idx1" in p.name or "labels" in p.name]
    if len(images) != 1 or len(labels) != 1:
        raise ValueError(f"{folder}: expected one *images*idx3* and one *labels*idx1* file, found {[p.name for p in files]}")
    return images[0], labels[0]


def _is_idx(path: Path) -> bool:
    if path.is_dir():
        return any("idx" in p.name for p in path.iterdir()) and not any(p.is_dir() for p in path.iterdir())
    return path.is_file()


def load_dataset(data: str | Path, fmt: InputFormat, *, idx_labels: str | Path | None = None,
                 labels: Sequence[str] | None = None, max_samples: int | None = None,
                 seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Load ``data`` as (x uint8 (N, C, H, W), y long (N,), class names), preprocessed for ``fmt``.

    uint8 because that is what the images were and what the replay memory keeps (lossless); the
    network gets ``x / 255``.
    """
    s = str(data)
    if s.startswith("sim:"):
        raise ValueError(
            "sim: scenarios are rendered by the deploy layer (the trainer never imports edge): run "
            "`edgeloop demo`, or render frames to an ImageFolder and pass that folder")
    path = Path(s)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist")
    if path.is_dir() and any(p.is_dir() for p in path.iterdir()):
        return _load_folder(path, fmt, labels, max_samples, seed)
    if path.is_dir():
        img_path, lab_path = _find_idx(path)
    else:
        if idx_labels is None:
            raise ValueError(f"{path} is an IDX images file: also give the labels file (--idx-labels)")
        img_path, lab_path = path, Path(idx_labels)
    return _load_idx(img_path, lab_path, fmt, labels, max_samples, seed)


def _subsample(n: int, max_samples: int | None, seed: int) -> np.ndarray:
    idx = np.arange(n)
    if max_samples is not None and n > max_samples:
        idx = np.sort(np.random.default_rng(seed).permutation(n)[:max_samples])
    return idx


def _load_idx(images: Path, labels_path: Path, fmt: InputFormat, names: Sequence[str] | None,
              max_samples: int | None, seed: int) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    x = read_idx(images)
    y = read_idx(labels_path).astype(np.int64)
    if x.ndim not in (3, 4) or y.ndim != 1 or len(x) != len(y):
        raise ValueError(f"IDX images {x.shape} and labels {y.shape} do not match")
    idx = _subsample(len(y), max_samples, seed)
    x, y = x[idx], y[idx]
    classes = sorted(int(c) for c in np.unique(y))
    if names is not None:
        if len(names) <= max(classes):
            raise ValueError(f"{len(names)} label names given, but the IDX labels go up to {max(classes)}")
        label_names = list(names)
    else:
        label_names = [str(c) for c in range(max(classes) + 1)]
    t = torch.from_numpy(np.ascontiguousarray(x))
    t = t.unsqueeze(1) if t.ndim == 3 else t.permute(0, 3, 1, 2)  # (N, H, W[, C]) -> (N, C, H, W)
    t = t.float()
    if fmt.channels == 3 and t.shape[1] == 1:
        t = t.expand(-1, 3, -1, -1)
    elif fmt.channels == 1 and t.shape[1] == 3:
        t = (t * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)
    if t.shape[2:] != (fmt.height, fmt.width):
        t = F.interpolate(t, size=(fmt.height, fmt.width), mode="bilinear", align_corners=False, antialias=True)
    return t.round().clamp(0, 255).to(torch.uint8), torch.from_numpy(y), label_names


def _load_folder(root: Path, fmt: InputFormat, names: Sequence[str] | None, max_samples: int | None,
                 seed: int) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if names is not None:
        unknown = set(classes) - set(names)
        if unknown:
            raise ValueError(f"folders {sorted(unknown)} are not in the given labels {list(names)}")
        label_names = list(names)
    else:
        label_names = classes
    files: list[tuple[Path, int]] = []
    for c in classes:
        for p in sorted((root / c).rglob("*")):
            if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS:
                files.append((p, label_names.index(c)))
    if not files:
        raise ValueError(f"{root}: no images ({', '.join(IMAGE_EXTENSIONS)}) in class folders")
    files = [files[i] for i in _subsample(len(files), max_samples, seed)]
    xs = [(preprocess_bytes(p.read_bytes(), fmt) * 255.0).round().to(torch.uint8) for p, _ in files]
    return torch.stack(xs), torch.tensor([c for _, c in files]), label_names


def _parse_names(labels: str | Sequence[str] | None) -> list[str] | None:
    if labels is None:
        return None
    if isinstance(labels, str):
        p = Path(labels)
        if p.is_file():
            return [line.strip() for line in p.read_text().splitlines() if line.strip()]
        return [x.strip() for x in labels.split(",") if x.strip()]
    return list(labels)


@dataclass
class Attempt:
    """One training attempt: its settings and how it ended (``reason`` is None when it was healthy)."""

    lr: float
    seed: int
    epochs_run: int
    final_loss: float | None
    reason: str | None
    seconds: float
    heldout_accuracy: float | None = None
    heldout_macro_f1: float | None = None

    def describe(self) -> str:
        what = "ok" if self.reason is None else self.reason
        acc = f", held-out accuracy {self.heldout_accuracy:.3f}" if self.heldout_accuracy is not None else ""
        return f"lr {self.lr:.2g} (seed {self.seed}, {self.epochs_run} epochs{acc}): {what}"


class BootstrapDiverged(RuntimeError):
    """Every attempt diverged or collapsed; ``attempts`` says how. Nothing was registered."""

    def __init__(self, attempts: list[Attempt], classes: int) -> None:
        self.attempts, self._classes = attempts, classes
        lines = "; ".join(f"attempt {i + 1}: {a.describe()}" for i, a in enumerate(attempts))
        super().__init__(
            f"bootstrap failed: no attempt learnt the {classes} classes ({lines}). Check that the labels match "
            f"the images (one folder or IDX label per class), that every class has enough samples, and try "
            f"--lr lower or --epochs higher; no model was registered")

    def __reduce__(self) -> tuple[Any, ...]:  # picklable, so a worker process can report it (bench/jobs.py)
        return (type(self), (self.attempts, self._classes))


def _schedule(total_steps: int) -> Any:
    """Linear warm-up over WARMUP_FRACTION of the steps, then cosine decay to 10 % of the learning rate."""
    warm = max(1, min(200, int(WARMUP_FRACTION * total_steps)))

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        t = (step - warm) / max(1, total_steps - warm)
        return DECAY_TO + (1.0 - DECAY_TO) * 0.5 * (1.0 + math.cos(math.pi * min(1.0, t)))

    return factor


def train_classifier(model: torch.nn.Module, x_u8: torch.Tensor, y: torch.Tensor, *, epochs: int, lr: float,
                     batch_size: int, seed: int, augment: Augment | None = None, bar: Any = None,
                     min_batch: int = 1) -> tuple[float | None, str | None, int]:
    """Train ``model`` in place on uint8 inputs ``x_u8``; returns (last epoch's mean loss, divergence reason or
    None, epochs run). Stops at the first sign of divergence: a non-finite loss, an epoch loss above EXPLODED x
    chance level, or -- from the third epoch (or a third of them, and JUDGE_AFTER_STEPS steps) on -- an epoch whose training predictions
    collapse (:func:`collapse_reason`)."""
    k = int(y.max()) + 1 if len(y) else 1
    chance = math.log(max(2, k))
    opt = torch_cpu.adam(model.parameters(), lr)
    steps_per_epoch = max(1, -(-len(y) // batch_size))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _schedule(epochs * steps_per_epoch))
    gen = torch.Generator().manual_seed(seed)
    check_from = max(2, epochs // 3, -(-JUDGE_AFTER_STEPS // steps_per_epoch))
    model.train()
    mean = None
    for epoch in range(epochs):
        perm = torch.randperm(len(y), generator=gen)
        total, count = 0.0, 0
        preds, truth = [], []
        for i in range(0, len(y), batch_size):
            idx = perm[i:i + batch_size]
            if len(idx) < min_batch:
                continue
            xb = x_u8[idx].float() / 255.0
            if augment is not None:
                xb = augment(xb, gen)
            out = model(xb)
            loss = F.cross_entropy(out, y[idx])
            if not torch.isfinite(loss):
                return None, f"loss is {float(loss)} at epoch {epoch + 1}", epoch + 1
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP_NORM)
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(idx)
            count += len(idx)
            preds.append(out.detach().argmax(1))
            truth.append(y[idx])
            if bar is not None:
                bar.update(1)
                bar.set_postfix(epoch=epoch + 1, loss=f"{total / max(count, 1):.4f}", lr=f"{lr:.1e}")
        mean = total / max(count, 1)
        if mean > EXPLODED * chance:
            return mean, f"loss exploded ({mean:.3g} at epoch {epoch + 1}; chance level is {chance:.3g})", epoch + 1
        if epoch >= check_from and preds:
            why = collapse_reason(torch.cat(preds).numpy(), torch.cat(truth).numpy(), k)
            if why:
                return mean, f"training {why} at epoch {epoch + 1}", epoch + 1
    return mean, None, epochs


def bootstrap(
    state_dir: str | Path,
    data: str | Path,
    *,
    arch: str = "convnet",
    epochs: int = 3,
    lr: float | None = None,
    batch_size: int = 64,
    labels: str | Sequence[str] | None = None,
    roi: Sequence[int] | None = None,
    input_size: int | tuple[int, int] | None = None,
    heldout: float = 0.2,
    weights: str | Path | None = None,
    idx_labels: str | Path | None = None,
    max_samples: int | None = None,
    replay_size: int = 2000,
    replay_policy: str = "class_balanced",
    seed: int = 0,
    exporter: str = "dynamo",
    progress: bool = True,
    force: bool = False,
    torch_threads: int | None = None,
    retries: int = len(RETRY_LR_FACTORS) - 1,
    augment: str | bool | Augment | None = None,
    strategy: str | None = None,
    strategy_settings: Mapping[str, Any] | None = None,
) -> BootstrapResult:
    """Train ``arch`` on ``data`` and write the trainer state with the first promoted ONNX version.

    ``roi`` (x, y, w, h in source-frame pixels) goes into the model metadata so edges crop it; images in
    ``data`` are cropped with it too unless they already have the ROI's size. ``input_size`` overrides the
    architecture's input (convnet is fixed at 28). ``weights`` loads a local ``state_dict`` file (e.g.
    torchvision MobileNet weights) before training; keys that do not fit (the head) are skipped.
    Refuses to overwrite an existing state unless ``force``.

    ``lr`` defaults to :data:`DEFAULT_LR`. Up to ``retries`` more attempts follow one that diverges or
    collapses (see the module docstring); :class:`BootstrapDiverged` when none is healthy. ``augment``
    ("photometric", "geometric", "both"/True) trains on randomly changed copies of the inputs
    (:mod:`trainer.augment`).

    ``strategy`` / ``strategy_settings``: what the trainer will run (config ``update.strategy`` / ``strategy:``;
    default: the trainer's defaults). When it distils (:func:`distils`), the replay memory stores the bootstrap
    model's logits for its rows, the targets DER keeps: the logits at the time a sample was memorised.
    """
    t_start = time.perf_counter()
    store_logits = distils(strategy, strategy_settings)  # before training: a wrong name fails fast
    state_dir = Path(state_dir)
    if torch_threads:
        torch.set_num_threads(torch_threads)
    torch.manual_seed(seed)
    if not force and load_checkpoint(state_dir) is not None:
        raise FileExistsError(f"{state_dir} already holds a trainer state (use force=True / --force to replace it)")
    fmt = _input_format(arch, input_size, roi)
    data_set = _load_split(data, fmt, heldout, seed, idx_labels=idx_labels, labels=labels, max_samples=max_samples)
    log.info("bootstrap %s on %s: %d samples, %d classes %s, %d held out", arch, data,
             len(data_set.yt) + len(data_set.yh), len(data_set.names), data_set.names, len(data_set.yh))
    run = _Training(arch, fmt.channels, epochs, DEFAULT_LR if lr is None else float(lr), batch_size, seed,
                    parse_augment(augment), None if weights is None else Path(weights), progress)
    model, m, attempts = _train_with_retries(run, data_set, retries)
    metrics: dict[str, Any] = {
        "accuracy": m["accuracy"], "macro_f1": m["macro_f1"], "n": m["n"], "forgetting": 0.0,
        "per_class": {data_set.names[i]: v for i, v in enumerate(m["per_class"]) if v is not None},
        "evaluated_on": "heldout" if len(data_set.yh) else "train",
    }
    state_dir.mkdir(parents=True, exist_ok=True)
    rec = _register_first_version(state_dir, model, fmt, arch, data_set, metrics, exporter)
    _save_state(state_dir, model, arch, fmt, data_set, attempts, rec.version,
                ReplayMemory(replay_size, policy=replay_policy, store_logits=store_logits, seed=seed))
    seconds = time.perf_counter() - t_start
    result = BootstrapResult(rec.version, rec.path, list(data_set.names), metrics, int(len(data_set.yt)),
                             int(len(data_set.yh)), seconds, extra={"attempts": [dataclasses.asdict(a) for a in attempts]})
    log.info("bootstrap done: %s, accuracy %.4f macro-F1 %.4f on %d %s samples, %.1fs", rec.version,
             metrics["accuracy"], metrics["macro_f1"], metrics["n"], metrics["evaluated_on"], seconds)
    return result


def _input_format(arch: str, input_size: int | tuple[int, int] | None, roi: Sequence[int] | None) -> InputFormat:
    """What the model takes: the architecture's input (or ``input_size``), its colour order, the ROI."""
    if arch not in ARCH_INPUT:
        raise ValueError(f"unknown architecture {arch!r}; known: {', '.join(sorted(ARCH_INPUT))}")
    spec = ARCH_INPUT[arch]
    w, h = spec.width, spec.height
    if input_size is not None:
        w, h = (input_size, input_size) if isinstance(input_size, int) else input_size
        if arch == "convnet" and (w, h) != (28, 28):
            raise ValueError("convnet takes 28x28 input only")
    return InputFormat(w, h, spec.channels, "GRAY" if spec.channels == 1 else "RGB",
                       tuple(int(v) for v in roi) if roi else None)  # type: ignore[arg-type]


@dataclass
class _DataSet:
    """The bootstrap data as uint8 tensors: the training part (xt, yt) and the held-out part (xh, yh)."""

    xt: torch.Tensor
    yt: torch.Tensor
    xh: torch.Tensor
    yh: torch.Tensor
    names: list[str]

    @property
    def eval_xy(self) -> tuple[torch.Tensor, torch.Tensor]:
        """What the result is judged on: the held-out part, or the training part when nothing is held out."""
        return (self.xh, self.yh) if len(self.yh) else (self.xt, self.yt)


def _load_split(data: str | Path, fmt: InputFormat, heldout: float, seed: int, **load: Any) -> _DataSet:
    """Load ``data`` in ``fmt`` and split it, stratified, into training and held-out parts."""
    labels = load.pop("labels", None)
    x_u8, y, names = load_dataset(data, fmt, labels=_parse_names(labels), seed=seed, **load)
    held_idx, train_idx = stratified_split(y.numpy(), heldout, np.random.default_rng(seed))
    if len(train_idx) == 0:
        raise ValueError("no training samples left after the held-out split")
    return _DataSet(x_u8[train_idx], y[train_idx], x_u8[held_idx], y[held_idx], list(names))


@dataclass
class _Training:
    """The settings of one bootstrap training run (every attempt uses them, at its own rate and seed)."""

    arch: str
    channels: int
    epochs: int
    lr: float
    batch_size: int
    seed: int
    augment: Augment | None
    weights: Path | None
    progress: bool


def _train_with_retries(run: _Training, ds: _DataSet, retries: int) -> tuple[torch.nn.Module, dict[str, Any],
                                                                             list[Attempt]]:
    """Attempts at RETRY_LR_FACTORS of the rate, each from a fresh initialisation, until one is healthy:
    (model, held-out metrics, attempts); :class:`BootstrapDiverged` when none is."""
    attempts: list[Attempt] = []
    for k, factor in enumerate(RETRY_LR_FACTORS[: max(0, retries) + 1]):
        model, m, att = _attempt(run, ds, k, run.lr * factor)
        attempts.append(att)
        if att.reason is None:
            return model, m, attempts
        log.warning("bootstrap attempt %d diverged: %s%s", k + 1, att.describe(),
                    "; retrying from a fresh initialisation" if k < retries and k + 1 < len(RETRY_LR_FACTORS) else "")
    raise BootstrapDiverged(attempts, len(ds.names))


def _attempt(run: _Training, ds: _DataSet, k: int, lr: float) -> tuple[torch.nn.Module, dict[str, Any], Attempt]:
    """Attempt ``k``: train a fresh model at ``lr``, then judge it on the held-out part (collapse_reason)."""
    t_a = time.perf_counter()
    seed = run.seed + 1000 * k
    torch.manual_seed(seed)
    model = build_model(run.arch, len(ds.names), in_channels=run.channels)
    if run.weights is not None:
        _load_weights(model, run.weights)
    bar = None
    if run.progress:
        from tqdm import tqdm

        steps_per_epoch = max(1, -(-len(ds.yt) // run.batch_size))
        bar = tqdm(total=run.epochs * steps_per_epoch, desc=f"bootstrap {run.arch}" + (f" (retry {k})" if k else ""),
                   unit="step")
    try:
        loss, why, ran = train_classifier(model, ds.xt, ds.yt, epochs=run.epochs, lr=lr, batch_size=run.batch_size,
                                          seed=seed, augment=run.augment, bar=bar,
                                          min_batch=1 if run.arch == "convnet" else 2)  # batch norm needs 2
    finally:
        if bar is not None:
            bar.close()
    att = Attempt(lr, seed, ran, loss, why, 0.0)
    m: dict[str, Any] = {}
    if why is None:
        ex, ey = ds.eval_xy
        m = evaluate_model(model, ex.float() / 255.0, ey, len(ds.names))
        att.heldout_accuracy, att.heldout_macro_f1 = m["accuracy"], m["macro_f1"]
        why = collapse_reason(predict(model, ex.float() / 255.0), ey.numpy(), len(ds.names))
        att.reason = None if why is None else f"{'held-out' if len(ds.yh) else 'training'} {why}"
    att.seconds = round(time.perf_counter() - t_a, 2)
    return model, m, att


def _register_first_version(state_dir: Path, model: torch.nn.Module, fmt: InputFormat, arch: str, ds: _DataSet,
                            metrics: dict[str, Any], exporter: str) -> Any:
    """Export the model as ONNX with its metadata and register it as the first promoted version."""
    registry = Registry(state_dir)
    try:
        version = registry.next_version()
        path = registry.model_path(version)
        meta = ModelMeta(
            version=version, labels=list(ds.names), width=fmt.width, height=fmt.height, channels=fmt.channels,
            color_order=fmt.color_order, mean=[0.0] * fmt.channels, std=[1.0] * fmt.channels,
            roi=list(fmt.roi) if fmt.roi else None, parent_version=None, architecture=arch,
            samples_seen=int(len(ds.yt)), metrics=metrics, created=time.time(),
        )
        export_onnx(model, meta, path, exporter=exporter,  # type: ignore[arg-type]
                    verify_inputs=(ds.eval_xy[0][:16].float() / 255.0))
        return registry.register(version, path=path, labels=list(ds.names), metrics=metrics,
                                 samples_seen=int(len(ds.yt)), status="promoted", arch=arch)
    finally:
        registry.close()


def distils(strategy: str | None = None, settings: Mapping[str, Any] | None = None) -> bool:
    """Whether the trainer strategy ``strategy`` (default: ``update.strategy``'s default), with ``settings``
    laid over its defaults, distils replayed logits, so that the bootstrap's replay memory must store them."""
    from .config import UpdateConfig
    from .strategies import strategy_class, strategy_settings

    name = strategy or UpdateConfig().strategy
    return strategy_class(name).wants_logits(strategy_settings(name, settings))


def _save_state(state_dir: Path, model: torch.nn.Module, arch: str, fmt: InputFormat, ds: _DataSet,
                attempts: list[Attempt], version: str, memory: ReplayMemory) -> None:
    """The trainer's starting state: the checkpoint (``memory`` seeded with the training set, kept as uint8 so
    the bootstrap set is rehearsed later to limit forgetting; with the model's logits for the rows it keeps when
    it stores logits) and the held-out part for later evaluations."""
    memory.add(ds.xt, ds.yt)
    if memory.store_logits:
        model.eval()
        memory.fill_logits(model, len(ds.names))
    torch.save({"x": ds.xh.clone(), "y": ds.yh.clone(), "labels": list(ds.names)}, state_dir / "bootstrap_heldout.pt")
    save_checkpoint(
        state_dir, model=model, arch=arch, labels=list(ds.names), optimizer=None, replay=memory,
        counters={"label_seq": 0, "samples_seen": 0, "updates": 0, "evaluations": 0, "promotions": 0,
                  "bootstrap_samples": int(len(ds.yt))},
        extra={"input": fmt.as_dict(), "in_channels": fmt.channels, "history": [], "bootstrap_version": version,
               "bootstrap_attempts": [dataclasses.asdict(a) for a in attempts]},
    )


def _load_weights(model: torch.nn.Module, path: Path) -> None:
    """Load a local state_dict; accepts plain torchvision keys (``features.*``, ``classifier.*``) too."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    own = model.state_dict()
    mapped: dict[str, torch.Tensor] = {}
    for k, v in state.items():
        for cand in (k, f"features.0.{k[len('features.'):]}" if k.startswith("features.") else None,
                     f"features.3.{k[len('classifier.'):]}" if k.startswith("classifier.") else None):
            if cand and cand in own and own[cand].shape == v.shape:
                mapped[cand] = v
                break
    missing = [k for k in own if k not in mapped]
    model.load_state_dict(mapped, strict=False)
    log.info("loaded %d tensors from %s (%d left at random init: %s)", len(mapped), path, len(missing),
             ", ".join(missing[:5]) + ("..." if len(missing) > 5 else ""))
    if not mapped:
        raise ValueError(f"{path}: no tensor fits the {type(model).__name__} architecture")
