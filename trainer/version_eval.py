"""A registered version's confusion matrix on the held-out set, for the console's model pages.

Why computed here and on demand: the gate keeps accuracy, macro-F1 and per-class accuracy per version, not
the matrix, and the held-out set grows after a version is registered. So the matrix is computed from the
version's ONNX file exactly as it shipped (onnxruntime, the model's own metadata for preprocessing) on
the *current* held-out set (the bootstrap slice plus the newest held-out uploads), and cached per (version,
held-out window): a page view costs one evaluation only when new held-out samples arrived. Rows are the
true classes, columns the predicted ones; classes the version does not know are rows it can only miss.
"""
from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .evaluate import compute_metrics, onnx_argmax, onnx_session
from .images import InputFormat, preprocess_bytes
from .store import SampleStore

__all__ = ["ConfusionCache", "MAX_UPLOADED"]

#: The newest this many held-out uploads are used (bounded work per page view).
MAX_UPLOADED = 5000
#: Matrices kept for this many versions (a page view asks for one or two; the rest are recomputed on demand).
MAX_VERSIONS = 16


class ConfusionCache:
    """``get(version)`` -> ``{"version", "labels", "matrix", "n", "accuracy", "macro_f1", "per_class"}``."""

    def __init__(self, state_dir: Path, store: SampleStore) -> None:
        self.state_dir = Path(state_dir)
        self.store = store
        self._lock = threading.Lock()
        self._cache: dict[tuple[str, int, int | None], dict[str, Any]] = {}
        self._inputs: dict[tuple[int, int, int, str, tuple[int, ...] | None], dict[int, torch.Tensor]] = {}

    def get(self, version: str) -> dict[str, Any]:
        from .registry import Registry, RegistryError

        with Registry(self.state_dir) as reg:
            try:
                rec = reg.get(version)
            except RegistryError as e:
                raise KeyError(str(e)) from None
        heldout = self.store.heldout(newest=MAX_UPLOADED)
        # Size and newest row: once the window is full its size stays MAX_UPLOADED while its contents move on.
        key = (version, len(heldout), heldout[-1].rowid if heldout else None)
        with self._lock:
            if key not in self._cache:
                self._cache = {k: v for k, v in self._cache.items() if k[0] != version}
                self._cache[key] = self._compute(version, rec.path, heldout)
                while len(self._cache) > MAX_VERSIONS:  # dicts keep insertion order: the oldest computed goes
                    del self._cache[next(iter(self._cache))]
            return self._cache[key]

    def _compute(self, version: str, path: Path, heldout: list[Any]) -> dict[str, Any]:
        from .export import read_meta

        meta = read_meta(path)
        fmt = InputFormat(meta.width, meta.height, meta.channels, meta.color_order,
                          tuple(meta.roi) if meta.roi else None)  # type: ignore[arg-type]
        xs, names = self._bootstrap_slice(fmt)
        key = (fmt.width, fmt.height, fmt.channels, fmt.color_order, fmt.roi)
        cache = self._inputs.get(key, {})
        # Bounded: only the current window's uploads, in the input format of the version asked for last.
        window = {s.rowid for s in heldout}
        self._inputs = {key: {rowid: t for rowid, t in cache.items() if rowid in window}}
        cache = self._inputs[key]
        for s in heldout:
            if s.rowid not in cache:
                try:
                    cache[s.rowid] = preprocess_bytes(self.store.image(s)[0], fmt, (s.width, s.height), s.roi)
                except Exception:
                    continue  # an undecodable upload is left out, as the gate leaves it out
            xs.append(cache[s.rowid].unsqueeze(0))
            names.append(str(s.label))
        labels = list(meta.labels)
        space = labels + sorted({n for n in names if n not in labels})
        if not names:
            return {"version": version, "labels": space, "predicted": labels, "matrix": [], "n": 0}
        x = torch.cat(xs).numpy().astype(np.float32)
        mean = np.asarray(meta.mean, np.float32).reshape(1, -1, 1, 1)
        std = np.asarray(meta.std, np.float32).reshape(1, -1, 1, 1)
        x = (x - mean) / std
        pred = onnx_argmax(onnx_session(path), meta.input_name, meta.output_name, x)
        idx = {n: i for i, n in enumerate(space)}
        m = compute_metrics(np.array([idx[n] for n in names]), pred, len(space))
        cm = np.asarray(m["confusion"]).tolist()
        per_class = {space[i]: v for i, v in enumerate(m["per_class"]) if v is not None}
        return {"version": version, "labels": space, "predicted": labels, "matrix": cm, "n": len(names),
                "accuracy": m["accuracy"], "macro_f1": m["macro_f1"], "per_class": per_class}

    def _bootstrap_slice(self, fmt: InputFormat) -> tuple[list[torch.Tensor], list[str]]:
        p = self.state_dir / "bootstrap_heldout.pt"
        if not p.exists():
            return [], []
        d = torch.load(p, weights_only=True)
        x = d["x"].float() / 255.0 if d["x"].dtype == torch.uint8 else d["x"].float()
        if tuple(x.shape[1:]) != (fmt.channels, fmt.height, fmt.width):
            return [], []  # a version with another input size: the bootstrap slice does not fit it
        return [x], [d["labels"][int(i)] for i in d["y"]]
