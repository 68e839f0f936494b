"""Evaluation of candidates: metrics, forgetting, the held-out split and the promotion gate (one metric,
:func:`gate`; the trainer's decision over two slices of the held-out set, :func:`two_slice_gate`).

Metrics are computed with numpy from labels and predictions so that they can be unit-tested on
hand-made arrays and stored per model version (as plain floats/lists) in the registry.
"""
from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .weighting import weighted_loss

__all__ = [
    "ForgettingTracker",
    "MIN_EVIDENCE",
    "PAIRED_MODES",
    "accuracy",
    "chance_check",
    "collapse_reason",
    "compute_metrics",
    "confusion_matrix",
    "evaluate_model",
    "forgetting",
    "gate",
    "macro_f1",
    "named_metrics",
    "onnx_argmax",
    "onnx_session",
    "one_class_reason",
    "per_class_accuracy",
    "predict",
    "sign_test",
    "stratified_split",
    "two_slice_gate",
]


MIN_EVIDENCE = 30          # predictions needed before "one class" / "at chance" is judged


def one_class_reason(pred: np.ndarray, y: np.ndarray, num_classes: int) -> str | None:
    """Why predictions ``pred`` on labels ``y`` show a model that answers one class whatever it sees, or None.

    One class = >= 95 % of predictions go to a class that is < 70 % of the truth, or (per-class recall) no
    class but one is recognised at all (recall <= 5 %) while at least two classes have >= 5 samples. Fewer than
    MIN_EVIDENCE samples say nothing either way (None)."""
    pred, y = np.asarray(pred).reshape(-1), np.asarray(y).reshape(-1)
    if len(y) < MIN_EVIDENCE or num_classes < 2:
        return None
    counts_p = np.bincount(pred, minlength=num_classes) / len(pred)
    counts_y = np.bincount(y, minlength=num_classes) / len(y)
    top = int(counts_p.argmax())
    if counts_p[top] >= 0.95 and counts_y[top] < 0.7:
        return f"predicts one class ({counts_p[top]:.0%} of predictions are class {top}, which is {counts_y[top]:.0%} of the data)"
    present = [c for c in range(num_classes) if (y == c).sum() >= 5]
    recalled = [c for c in present if float((pred[y == c] == c).mean()) > 0.05]
    if len(present) >= 2 and len(recalled) <= 1:
        return f"recognises one class at most (recall > 5 % only for {recalled or 'none'} of classes {present})"
    return None


def collapse_reason(pred: np.ndarray, y: np.ndarray, num_classes: int) -> str | None:
    """Why predictions ``pred`` on labels ``y`` look like a dead model, or None: :func:`one_class_reason`, or
    accuracy at chance (no better than always answering the most common class plus 2 points, when that leaves
    room). Fewer than MIN_EVIDENCE samples say nothing either way (None)."""
    why = one_class_reason(pred, y, num_classes)
    pred, y = np.asarray(pred).reshape(-1), np.asarray(y).reshape(-1)
    if why is not None or len(y) < MIN_EVIDENCE or num_classes < 2:
        return why
    acc = float((pred == y).mean())
    majority = float((np.bincount(y, minlength=num_classes) / len(y)).max())
    if majority < 0.9 and acc <= majority + 0.02:
        return f"accuracy at chance ({acc:.1%}; always answering the commonest class gives {majority:.1%})"
    return None


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int | None = None) -> np.ndarray:
    """C[i, j] = number of samples of true class i predicted as j."""
    y_true = np.asarray(y_true, dtype=np.int64).reshape(-1)
    y_pred = np.asarray(y_pred, dtype=np.int64).reshape(-1)
    if num_classes is None:
        num_classes = int(max(y_true.max(initial=-1), y_pred.max(initial=-1))) + 1
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(cm, (y_true, y_pred), 1)
    return cm


def accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    y_true, y_pred = np.asarray(y_true).reshape(-1), np.asarray(y_pred).reshape(-1)
    return float(np.mean(y_true == y_pred)) if len(y_true) else float("nan")


def per_class_accuracy(cm: np.ndarray) -> np.ndarray:
    """Recall per class (diagonal / row sum); NaN for classes without test samples."""
    support = cm.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(support > 0, np.diag(cm) / np.maximum(support, 1), np.nan)


def macro_f1(cm: np.ndarray) -> float:
    """Unweighted mean F1 over classes that occur in the truth or the predictions.

    Classes absent from both are left out (they say nothing about this model on this set); a class that
    is predicted but never true counts with F1 = 0, so spurious predictions are penalised.
    """
    tp = np.diag(cm).astype(float)
    fp = cm.sum(axis=0) - tp
    fn = cm.sum(axis=1) - tp
    present = (cm.sum(axis=0) + cm.sum(axis=1)) > 0
    denom = 2 * tp + fp + fn
    f1 = np.where(denom > 0, 2 * tp / np.maximum(denom, 1), 0.0)
    return float(f1[present].mean()) if present.any() else float("nan")


def compute_metrics(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int | None = None) -> dict[str, Any]:
    """accuracy, macro_f1, per_class (list, NaN→None for JSON), confusion (list of lists), n."""
    cm = confusion_matrix(y_true, y_pred, num_classes)
    pca = per_class_accuracy(cm)
    return {
        "accuracy": accuracy(y_true, y_pred),
        "macro_f1": macro_f1(cm),
        "per_class": [None if np.isnan(v) else float(v) for v in pca],
        "confusion": cm.tolist(),
        "n": len(np.asarray(y_true).reshape(-1)),
    }


@torch.no_grad()
def predict(model: torch.nn.Module, x: torch.Tensor, batch_size: int = 500) -> np.ndarray:
    """Arg-max predictions in eval mode (the model's mode is restored afterwards)."""
    if len(x) == 0:
        return np.zeros(0, dtype=np.int64)
    return predict_logits(model, x, batch_size).argmax(dim=1).numpy()


@torch.no_grad()
def predict_logits(model: torch.nn.Module, x: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    """Logits ``[N, classes]`` in eval mode (the model's mode is restored afterwards)."""
    was = model.training
    model.eval()
    out = [model(x[i : i + batch_size]) for i in range(0, len(x), batch_size)]
    model.train(was)
    return torch.cat(out) if out else torch.zeros(0, int(getattr(model, "num_classes", 0)))


#: Samples per onnxruntime call when the trainer scores an exported model. ONNX Runtime's CPU arena keeps the
#: largest activations a session ever needed for as long as the session lives, and the trainer keeps the
#: deployed version's session between updates: 256 28x28 frames through the digits convnet left ~105 MB
#: resident per session, 64 leave ~43 MB, at the same speed per sample (measured on the 2-core box).
ORT_BATCH = 64


def onnx_session(path: str | Path) -> Any:
    """An onnxruntime CPU session on one thread (evaluation runs beside training, not instead of it)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def onnx_argmax(sess: Any, input_name: str, output_name: str, x: np.ndarray) -> np.ndarray:
    """Arg-max class indices of an exported model on ``x`` (float32, NCHW), :data:`ORT_BATCH` at a time."""
    x = np.asarray(x, np.float32)
    preds = [sess.run([output_name], {input_name: x[i:i + ORT_BATCH]})[0].argmax(1) for i in range(0, len(x), ORT_BATCH)]
    return np.concatenate(preds) if preds else np.zeros(0, dtype=np.int64)


def evaluate_model(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor | np.ndarray, num_classes: int | None = None) -> dict[str, Any]:
    """:func:`compute_metrics` of the model's predictions on (x, y)."""
    y_np = y.numpy() if isinstance(y, torch.Tensor) else np.asarray(y)
    if num_classes is None:
        num_classes = int(getattr(model, "num_classes", int(y_np.max()) + 1))
    return compute_metrics(y_np, predict(model, x), num_classes)


def forgetting(best: Sequence[float | None], current: Sequence[float | None], classes: Sequence[int] | None = None) -> float:
    """Mean over ``classes`` of (best accuracy ever − current accuracy) (Chaudhry et al. 2018).

    Classes without a value on either side are skipped; ``classes=None`` uses all with values.
    """
    idx = range(len(best)) if classes is None else classes
    diffs = [
        best[c] - current[c]  # type: ignore[operator]
        for c in idx
        if c < len(best) and c < len(current) and best[c] is not None and current[c] is not None
    ]
    return float(np.mean(diffs)) if diffs else 0.0


class ForgettingTracker:
    """Keeps the best per-class accuracy seen across evaluations (versions / experiences)."""

    def __init__(self) -> None:
        self.best: list[float | None] = []

    def update(self, per_class: Sequence[float | None]) -> None:
        if len(per_class) > len(self.best):
            self.best.extend([None] * (len(per_class) - len(self.best)))
        for c, v in enumerate(per_class):
            valid = v is not None and not (isinstance(v, float) and np.isnan(v))
            if valid and (self.best[c] is None or v > self.best[c]):  # type: ignore[operator]
                self.best[c] = float(v)  # type: ignore[arg-type]

    def forgetting(self, per_class: Sequence[float | None], classes: Sequence[int] | None = None) -> float:
        return forgetting(self.best, per_class, classes)

    def state_dict(self) -> dict[str, Any]:
        return {"best": list(self.best)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best = list(state["best"])


def stratified_split(labels: np.ndarray | Sequence[int], fraction: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Split indices into (held_out, rest) taking ``round(fraction × n_c)`` of each class c.

    A class with at least two samples always keeps one on each side, so every class is both evaluated
    and trained on; a singleton class goes to training.
    """
    if not 0.0 <= fraction <= 1.0:
        raise ValueError("fraction must lie in [0, 1]")
    labels = np.asarray(labels).reshape(-1)
    held, rest = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        k = round(fraction * len(idx))
        if len(idx) >= 2 and 0.0 < fraction < 1.0:
            k = min(max(k, 1), len(idx) - 1)
        elif len(idx) < 2 and fraction < 1.0:
            k = 0
        held.append(idx[:k])
        rest.append(idx[k:])
    cat = lambda parts: np.sort(np.concatenate(parts)).astype(np.int64) if parts else np.zeros(0, np.int64)
    return cat(held), cat(rest)


def gate(
    candidate_metrics: dict[str, Any],
    best_metrics: dict[str, Any] | None,
    max_regression: float = 0.01,
    metric: str = "accuracy",
    max_class_regression: float | None = None,
) -> tuple[bool, str]:
    """Promote a candidate unless it regresses more than ``max_regression`` (absolute, e.g. 0.01 = 1 point)
    on ``metric`` versus the best version so far; optionally also per class.

    Returns (promote, reason) with the numbers, so the registry can record why.
    """
    cand = float(candidate_metrics[metric])
    if best_metrics is None or best_metrics.get(metric) is None:
        return True, f"no previous best; {metric} {cand:.4f}"
    best = float(best_metrics[metric])
    delta = cand - best
    if delta < -max_regression:
        return False, f"{metric} {cand:.4f} vs best {best:.4f}: regression {-delta:.4f} > allowed {max_regression:.4f}"
    if max_class_regression is not None:
        cpc, bpc = candidate_metrics.get("per_class") or [], best_metrics.get("per_class") or []
        for c, (a, b) in enumerate(zip(cpc, bpc)):
            if a is not None and b is not None and b - a > max_class_regression:
                return False, (
                    f"class {c} accuracy {a:.4f} vs best {b:.4f}: regression {b - a:.4f} > allowed {max_class_regression:.4f}"
                )
    return True, f"{metric} {cand:.4f} vs best {best:.4f} (delta {delta:+.4f}, allowed regression {max_regression:.4f})"


#: Below this many held-out samples the chance check says nothing (``at_chance`` False).
CHANCE_MIN_SAMPLES = 20


def chance_check(truth: Sequence[str], predicted: Sequence[str], margin: float = 0.02) -> dict[str, Any]:
    """Is a model better than the majority-class baseline (always answering the most frequent class)?

    ``at_chance`` when, on at least :data:`CHANCE_MIN_SAMPLES` samples of two or more classes, it predicts a
    single class, or its accuracy is within ``margin`` of that baseline. On a line where 95 % of parts are
    fine, a model that always says "ok" scores 0.95 and is at chance: it never finds a defect.
    """
    n = len(truth)
    counts = Counter(truth)
    classes = sorted(counts)
    chance = max(counts.values()) / n if n else 0.0
    acc = sum(t == p for t, p in zip(truth, predicted)) / n if n else 0.0
    seen = [c for c, _ in Counter(predicted).most_common()]
    judged = n >= CHANCE_MIN_SAMPLES and len(classes) >= 2
    return {"n": n, "accuracy": acc, "chance": chance, "classes": len(classes), "classes_predicted": len(seen),
            "predicted": seen, "at_chance": bool(judged and (len(seen) <= 1 or acc <= chance + margin))}


def named_metrics(predicted: Sequence[str], truth: Sequence[str], space: Sequence[str]) -> dict[str, Any]:
    """:func:`compute_metrics` on label names over the label ``space`` (which must hold every name given):
    per-class accuracy keyed by name (classes without samples left out), no confusion matrix."""
    idx = {n: i for i, n in enumerate(space)}
    m = compute_metrics(np.array([idx[n] for n in truth]), np.array([idx[n] for n in predicted]), len(space))
    m.pop("confusion", None)
    m["per_class"] = {space[i]: v for i, v in enumerate(m["per_class"]) if v is not None}
    return m


def weighted_accuracy(predicted: Sequence[str], truth: Sequence[str], weights: Sequence[float]) -> float:
    """``sum w_i [predicted_i == truth_i] / sum w_i``: with ``w_i = min(1/p_select, w_max)`` the self-normalised
    estimate of the accuracy over every frame the cameras saw, from the few they uploaded -- the uploads are chosen
    for uncertainty (and, under a selection hint, for one predicted class), so their plain accuracy says how the
    model does on the hard frames, not on the stream. The same estimator training minimises
    (:func:`trainer.weighting.weighted_loss`), with "right" in place of the loss."""
    if len(weights) != len(truth) or len(predicted) != len(truth):
        raise ValueError(f"weighted_accuracy: {len(predicted)} predictions, {len(truth)} truths, {len(weights)} weights")
    w = torch.as_tensor(list(weights), dtype=torch.float64)
    if len(w) == 0 or float(w.sum()) <= 0:
        return 0.0
    right = torch.tensor([p == t for p, t in zip(predicted, truth)], dtype=torch.float64)
    return float(weighted_loss(right, w))


#: When the gate's recent slice is judged by :func:`sign_test` as well as by the allowance (``eval.paired``).
PAIRED_MODES = ("off", "new-class", "always")


def sign_test(wins: int, losses: int) -> float:
    """One-sided exact sign test on paired outcomes: the probability of ``losses`` or more among ``wins + losses``
    discordant samples if losing and winning were equally likely (1.0 when there are none).

    Two models judged on the same samples differ only where one is right and the other wrong; the samples both
    get right or both get wrong say nothing about which is better (McNemar's insight). On ~40 recent uploads a
    2-point allowance is one sample, a coin toss; the discordant pairs say how much of a loss chance explains.
    """
    n = wins + losses
    if n == 0:
        return 1.0
    return sum(math.comb(n, k) for k in range(losses, n + 1)) / 2 ** n


def _pairs(truth: Sequence[str], candidate: Sequence[str], deployed: Sequence[str], labels: Sequence[str],
           paired: str, deployed_labels: Sequence[str] | None) -> dict[str, Any]:
    """The candidate's ``wins`` and ``losses`` against the deployed version on these samples, and ``paired``
    (why the sign test applies) when ``paired`` says it does: "always", or "new-class" when the samples hold a
    class the candidate knows and ``deployed_labels`` lack."""
    out: dict[str, Any] = {"wins": sum(c == t != d for t, c, d in zip(truth, candidate, deployed)),
                           "losses": sum(d == t != c for t, c, d in zip(truth, candidate, deployed))}
    if paired == "always":
        out["paired"] = "always"
    elif paired == "new-class" and deployed_labels is not None:
        new = sorted((set(truth) & set(labels)) - set(deployed_labels))
        if new:
            out["paired"] = "new class " + ", ".join(new)
    return out


def _recent_slice(truth: Sequence[str], candidate: Sequence[str], deployed: Sequence[str], space: list[str],
                  ref_space: list[str], weights: list[float] | None) -> tuple[dict, dict, dict[str, Any]]:
    """Both versions' metrics on the recent slice, their accuracies weighted when ``weights`` are given (the plain
    ones kept beside them), and the slice's summary for the decision record."""
    cand_r = named_metrics(candidate, truth, space)
    ref_r = named_metrics(deployed, truth, ref_space)
    weighted: dict[str, Any] = {}
    if weights is not None:
        weighted = {"weighted": True, "candidate_unweighted": cand_r["accuracy"], "deployed_unweighted": ref_r["accuracy"]}
        cand_r["accuracy"] = weighted_accuracy(candidate, truth, weights)
        ref_r["accuracy"] = weighted_accuracy(deployed, truth, weights)
    summary = {"n": len(truth), "candidate_accuracy": cand_r["accuracy"], "deployed_accuracy": ref_r["accuracy"], **weighted}
    return cand_r, ref_r, summary


def two_slice_gate(
    truth: Sequence[str],
    candidate: Sequence[str],
    deployed: Sequence[str] | None,
    labels: Sequence[str],
    n_recent: int,
    *,
    max_regression: float,
    max_forgetting: float,
    min_recent: int,
    paired: str = "off",
    paired_alpha: float = 0.05,
    deployed_labels: Sequence[str] | None = None,
    recent_weights: Sequence[float] | None = None,
) -> dict[str, Any]:
    """Promote the candidate or not, judged against the deployed version on the same held-out samples.

    ``truth``, ``candidate`` and ``deployed`` are label names per held-out sample (``deployed`` None: no
    deployed version to compare with, promote unless dead); the last ``n_recent`` samples are the held-out uploads
    of late. Two slices answer two questions. The *recent* slice asks "is it at least as good on what
    the cameras see now?" (accuracy within ``max_regression``); the *whole* set asks "did it forget too
    much?" (accuracy and macro-F1 within ``max_forgetting``). After a lighting change the whole set is
    mostly the old world, so judging on it alone keeps rejecting exactly the models that adapt; judging
    on the recent slice alone would let a model forget the classes that are rare right now. With fewer
    than ``min_recent`` recent samples the whole set is judged with ``max_regression``.

    ``paired`` (:func:`_pairs`): a candidate more than ``max_regression`` behind on the recent slice (tens of
    samples: the allowance is one or two) is refused only if also *significantly* behind, a :func:`sign_test` on
    the samples where the two disagree giving p < ``paired_alpha``. "new-class" asks it only of the first version
    that knows a class the deployed one cannot name; its successors face the allowance again, so a chain of "not
    significantly worse" steps cannot walk the fleet downhill as "always" did (README, Adaptation #42).

    ``recent_weights`` (``eval.weighted``; the last ``n_recent`` used): the recent slice by :func:`weighted_accuracy`.

    Whatever the baseline, a candidate that answers one class (:func:`one_class_reason` on the whole set) is
    never promoted: a deployed model that is dead already must not make a dead successor look "no worse".

    Returns ``promote``, ``reason`` (every check with its numbers), ``candidate`` metrics (with
    ``forgetting`` per class against the deployed version), ``best`` (the deployed version's metrics)
    and ``recent`` (both accuracies on the recent slice, the candidate's ``wins`` and ``losses`` there, ``paired``
    when the sign test applies and ``p_worse`` when it was consulted) when they were computed.
    """
    if paired not in PAIRED_MODES:
        raise ValueError(f"paired must be one of {', '.join(PAIRED_MODES)}, not {paired!r}")
    space = list(labels) + sorted({n for n in truth if n not in labels})
    cand = named_metrics(candidate, truth, space)
    out: dict[str, Any] = {"candidate": cand}
    idx = {n: i for i, n in enumerate(space)}
    dead = one_class_reason(np.array([idx[n] for n in candidate]), np.array([idx[n] for n in truth]), len(space))
    if dead is not None:
        cand["forgetting"] = None
        return {**out, "promote": False, "dead": True, "reason": f"never promoted: the candidate {dead}"}
    if deployed is None:
        cand["forgetting"] = 0.0
        return {**out, "promote": True, "reason": "no deployed version to compare with"}
    ref_space = space + sorted({n for n in deployed if n not in space})
    ref = out["best"] = named_metrics(deployed, truth, ref_space)
    classes = [c for c in ref["per_class"] if c in cand["per_class"]]
    cand["forgetting"] = forgetting([ref["per_class"][c] for c in classes], [cand["per_class"][c] for c in classes])
    two_slices = n_recent >= min_recent
    checks = [(cand, ref, max_forgetting if two_slices else max_regression, metric, "whole set")
              for metric in ("accuracy", "macro_f1")]
    if two_slices:
        sl = slice(len(truth) - n_recent, len(truth))
        cand_r, ref_r, out["recent"] = _recent_slice(truth[sl], candidate[sl], deployed[sl], space, ref_space,
                                                     None if recent_weights is None else list(recent_weights)[-n_recent:])
        out["recent"].update(_pairs(truth[sl], candidate[sl], deployed[sl], labels, paired, deployed_labels))
        checks.append((cand_r, ref_r, max_regression, "accuracy", f"recent {n_recent}"))
    promote, reasons = True, []
    for c, r, allowed, metric, where in checks:
        ok, why = gate(c, r, allowed, metric)
        if not ok and where.startswith("recent") and "paired" in out["recent"]:
            p = out["recent"]["p_worse"] = sign_test(out["recent"]["wins"], out["recent"]["losses"])
            ok = p >= paired_alpha
            why += (f"; paired ({out['recent']['paired']}): {out['recent']['wins']} wins, {out['recent']['losses']} "
                    f"losses, p {p:.3f} "
                    + (f">= {paired_alpha:g}: not significantly worse" if ok else f"< {paired_alpha:g}: worse"))
        promote &= ok
        reasons.append(f"{where}: {why}")
    return {**out, "promote": promote, "reason": "; ".join(reasons)}
