"""Real, small ONNX models for tests -- and deliberately broken ones.

Tests on every side of the loop need model files that look exactly like what the trainer ships (same
exporter, same metadata, same verification), so this goes through :func:`trainer.export.export_onnx`
instead of hand-building ONNX graphs. Training a few steps makes the model's predictions mean something
(the convnet on real MNIST digits reaches ~93 % after 30 steps of 16), which the edge's uncertainty and sampler
tests can rely on.

Import it as ``from model_factory import make_onnx_model`` with ``tests/`` on ``sys.path`` (pytest puts it
there for files directly under ``tests/``; elsewhere insert ``Path(__file__).parents[1]``), or as
``tests.model_factory`` from the repo root.

Caching: each distinct set of arguments is trained and exported once per process into a private cache
directory (removed at exit) and then *copied* to the requested path, so a test may corrupt its copy freely.
Set ``EDGELOOP_MODEL_CACHE=/some/dir`` to keep the cache across runs; the key includes a hash of this file,
``trainer/export.py`` and ``trainer/nets.py`` so a code change never serves a stale model.
"""
from __future__ import annotations

import atexit
import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import nn

from protocol.model_meta import ModelMeta
from trainer.export import export_onnx
from trainer.nets import ARCH_INPUT, build_model

__all__ = ["make_onnx_model", "make_broken_model", "default_meta", "BROKEN_KINDS", "DIGIT_LABELS", "PARTS_LABELS"]

DIGIT_LABELS = [str(d) for d in range(10)]
PARTS_LABELS = ["ok", "scratch", "dent", "stain"]
_IMAGENET_MEAN = [0.485, 0.456, 0.406]
_IMAGENET_STD = [0.229, 0.224, 0.225]

_REPO = Path(__file__).resolve().parents[1]
#: Minibatch for the few training steps. 16 keeps 30 convnet steps at ~3 s on 2 cores and still reaches
#: ~93 % on the held-out digits (64 gives ~97 % for 2x the time; tests need "clearly trained", not SOTA).
_BATCH = 16
_cache_dir: Path | None = None


def _cache() -> Path:
    global _cache_dir
    if _cache_dir is None:
        env = os.environ.get("EDGELOOP_MODEL_CACHE")
        if env:
            _cache_dir = Path(env)
            _cache_dir.mkdir(parents=True, exist_ok=True)
        else:
            _cache_dir = Path(tempfile.mkdtemp(prefix="edgeloop-models-"))
            atexit.register(shutil.rmtree, _cache_dir, True)
    return _cache_dir


def _code_hash() -> str:
    h = hashlib.sha256()
    for p in (Path(__file__), _REPO / "trainer" / "export.py", _REPO / "trainer" / "nets.py"):
        h.update(p.read_bytes())
    return h.hexdigest()[:16]


def default_meta(arch: str, labels: list[str], version: str = "v0001", **overrides: Any) -> ModelMeta:
    """The metadata a freshly bootstrapped ``arch`` would carry: its input size, colour order and normalisation.

    convnet: 28x28 GRAY, pixels scaled to [0, 1] and no mean/std (the seed's MNIST protocol). The colour
    archs use ImageNet mean/std, as torchvision's MobileNet weights expect.
    """
    spec = ARCH_INPUT[arch]
    channels = overrides.pop("channels", spec.channels)
    gray = channels == 1
    base: dict[str, Any] = dict(
        version=version,
        labels=list(labels),
        width=spec.width,
        height=spec.height,
        channels=channels,
        color_order="GRAY" if gray else "RGB",
        scale=1.0 / 255.0,
        mean=[0.0] if gray else list(_IMAGENET_MEAN),
        std=[1.0] if gray else list(_IMAGENET_STD),
        architecture=arch,
        created=time.time(),
    )
    base.update(overrides)
    return ModelMeta(**base)


def _digits(labels: list[str], seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """MNIST t10k split per the benchmark protocol: (train x, train y, test x, test y) for the digits in ``labels``."""
    from trainer.datasets import load_mnist, split_mnist

    if not set(labels) <= set(DIGIT_LABELS):
        raise ValueError(f"data='digits' needs labels among {DIGIT_LABELS}, got {labels}")
    x, y = load_mnist()
    stream, test = split_mnist(y)
    digits = [int(label) for label in labels]
    remap = np.full(10, -1, dtype=np.int64)
    remap[digits] = np.arange(len(digits))

    def pick(idx: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        idx = idx[np.isin(y[idx], digits)]
        return torch.from_numpy(x[idx].astype(np.float32) / 255.0).unsqueeze(1), torch.from_numpy(remap[y[idx]])

    trx, trY = pick(np.random.default_rng(seed).permutation(stream))
    tex, teY = pick(test)
    return trx, trY, tex[:500], teY[:500]


def _synthetic(meta: ModelMeta, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Class-conditional blobs in preprocessed space: one random prototype per class plus noise (learnable in a few steps)."""
    g = torch.Generator().manual_seed(seed)
    shape = (meta.channels, meta.height, meta.width)
    protos = torch.randn(len(meta.labels), *shape, generator=g)
    y = torch.randint(0, len(meta.labels), (n,), generator=g)
    return protos[y] + 0.5 * torch.randn(n, *shape, generator=g), y


def _train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int, batch: int, seed: int) -> None:
    """A few Adam steps (lr 1e-3, as in the seed); enough to make predictions non-trivial."""
    torch.manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        idx = torch.randint(0, len(x), (batch,), generator=g)
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
        loss.backward()
        opt.step()
    model.eval()


@torch.no_grad()
def _accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    return float((model(x).argmax(1) == y).float().mean())


def _build(arch: str, labels: list[str] | None, train_steps: int, seed: int, data: str | None,
           version: str, overrides: dict[str, Any]) -> tuple[nn.Module, ModelMeta, torch.Tensor]:
    """Train and describe a model; returns (model, meta, a real verification batch)."""
    if arch not in ARCH_INPUT:
        raise ValueError(f"unknown arch {arch!r}")
    data = data or ("digits" if arch == "convnet" else "random")
    if labels is None:
        labels = DIGIT_LABELS if data == "digits" else PARTS_LABELS
    meta = default_meta(arch, labels, version, **overrides)
    torch.manual_seed(seed)
    model = build_model(arch, len(labels), in_channels=meta.channels)
    metrics: dict[str, Any] = {}
    if data == "digits":
        if (meta.channels, meta.height, meta.width) != (1, 28, 28):
            raise ValueError("data='digits' trains on 1x28x28 MNIST images")
        trx, trY, tex, teY = _digits(labels, seed)
        _train(model, trx, trY, train_steps, _BATCH, seed)
        metrics = {"accuracy": round(_accuracy(model, tex, teY), 4), "eval_samples": len(teY)}
        samples = train_steps * _BATCH
        verify = tex[:8]
    elif data == "random":
        x, y = _synthetic(meta, 256, seed)
        _train(model, x, y, train_steps, _BATCH, seed)
        metrics = {"accuracy": round(_accuracy(model, x[:128], y[:128]), 4), "eval_samples": 128}
        samples = train_steps * _BATCH
        verify = x[:8]
    else:
        raise ValueError(f"data must be 'digits' or 'random', got {data!r}")
    if "metrics" not in overrides:
        meta = dataclasses.replace(meta, metrics=metrics)
    if "samples_seen" not in overrides:
        meta = dataclasses.replace(meta, samples_seen=samples)
    return model, meta, verify


def _deliver(cached: Path, path: str | os.PathLike[str], default_name: str) -> Path:
    dest = Path(path)
    if dest.is_dir():
        dest = dest / default_name
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(cached, dest)
    return dest


def make_onnx_model(
    path: str | os.PathLike[str],
    *,
    arch: str = "convnet",
    labels: list[str] | None = None,
    train_steps: int = 30,
    seed: int = 0,
    data: str | None = None,
    version: str = "v0001",
    roi: list[int] | None = None,
    exporter: str = "dynamo",
    **meta_overrides: Any,
) -> Path:
    """Train ``arch`` for ``train_steps`` and export it with metadata to ``path`` (a file, or a directory for
    ``<arch>-<version>.onnx`` if it is an existing directory); returns the written path.

    ``data``: "digits" (real MNIST, default for convnet; ``labels`` must be digit names, e.g. ["0", "1"]) or
    "random" (class prototypes plus noise, default for the colour archs). ``meta_overrides`` are any other
    :class:`ModelMeta` fields (``parent_version``, ``width``/``height`` for archs with global pooling,
    ``channels``, ``color_order``, ``scale``, ``mean``, ``std``, ``metrics``, ``samples_seen``, ``created``).
    ``created`` defaults to a fixed 1.7e9 so the cached bytes do not depend on the clock.
    """
    meta_overrides = dict(meta_overrides)
    if roi is not None:
        meta_overrides["roi"] = list(roi)
    meta_overrides.setdefault("created", 1_700_000_000.0)
    key_src = json.dumps(
        dict(arch=arch, labels=labels, train_steps=train_steps, seed=seed, data=data, version=version,
             exporter=exporter, meta=meta_overrides, code=_code_hash()),
        sort_keys=True, default=str,
    )
    key = hashlib.sha256(key_src.encode()).hexdigest()[:20]
    cached = _cache() / f"{arch}-{version}-{key}.onnx"
    if not cached.is_file():
        model, meta, verify = _build(arch, labels, train_steps, seed, data, version, meta_overrides)
        export_onnx(model, meta, cached, verify_inputs=verify, exporter=exporter)  # type: ignore[arg-type]
    return _deliver(cached, path, f"{arch}-{version}.onnx")


#: What each broken variant does, and what a loader should say about it.
BROKEN_KINDS: dict[str, str] = {
    "truncated": "the first 60% of a valid file: not parseable as ONNX",
    "garbage": "random bytes of a plausible size: not parseable as ONNX",
    "bitflip": "one byte inside the weights flipped: still loads and runs; only a sha256 check catches it",
    "wrong_input_size": "metadata width/height +4 px larger than the graph's input",
    "wrong_channels": "metadata says 3-channel RGB for a 1-channel graph (or GRAY for a 3-channel one)",
    "wrong_labels": "metadata has one label more than the graph has outputs",
    "wrong_input_name": "metadata input_name is not the graph's input name",
    "missing_metadata": "the edgeloop.labels key is removed from metadata_props",
    "bad_metadata": "edgeloop.labels is not JSON",
    "no_metadata": "no metadata_props at all",
    "nan": "the head's weights are NaN: every output is NaN (exported without verification)",
}


def _rewrite_props(src: Path, dest: Path, edit: Any) -> None:
    proto = onnx.load(str(src))
    props = {p.key: p.value for p in proto.metadata_props}
    props = edit(props)
    del proto.metadata_props[:]
    if props:
        onnx.helper.set_model_props(proto, props)
    dest.write_bytes(proto.SerializeToString())


def make_broken_model(
    path: str | os.PathLike[str],
    kind: str,
    *,
    arch: str = "convnet",
    labels: list[str] | None = None,
    version: str = "v0002",
    seed: int = 0,
    data: str | None = None,
) -> Path:
    """A model file broken in one specific way (see :data:`BROKEN_KINDS`), derived from a valid
    :func:`make_onnx_model` of the same ``arch`` (untrained: the breakage is the point, and it keeps this cheap)."""
    if kind not in BROKEN_KINDS:
        raise ValueError(f"unknown kind {kind!r}; one of {sorted(BROKEN_KINDS)}")
    dest = Path(path)
    if dest.is_dir():
        dest = dest / f"{arch}-{version}-{kind}.onnx"
    dest.parent.mkdir(parents=True, exist_ok=True)
    good = make_onnx_model(_cache() / "broken-src" / f"{arch}-{version}-{seed}.onnx", arch=arch, labels=labels,
                           train_steps=0, seed=seed, version=version, data=data)
    raw = good.read_bytes()
    rng = np.random.default_rng(seed)

    if kind == "truncated":
        dest.write_bytes(raw[: int(len(raw) * 0.6)])
    elif kind == "garbage":
        dest.write_bytes(rng.integers(0, 256, len(raw) // 4, dtype=np.uint8).tobytes())
    elif kind == "bitflip":
        data = bytearray(raw)
        data[len(data) // 2] ^= 0x01  # middle of the file = inside the largest initializer
        dest.write_bytes(bytes(data))
    elif kind == "nan":
        meta = _read_meta(good)
        model = build_model(arch, len(meta.labels), in_channels=meta.channels)
        with torch.no_grad():
            model.head.weight.fill_(float("nan"))
        export_onnx(model, meta, dest, verify=False)
    else:
        def edit(props: dict[str, str]) -> dict[str, str]:
            meta = ModelMeta.from_props(props)
            if kind == "wrong_input_size":
                return dataclasses.replace(meta, width=meta.width + 4, height=meta.height + 4).to_props()
            if kind == "wrong_channels":
                if meta.channels == 1:
                    return dataclasses.replace(meta, channels=3, color_order="RGB", mean=[0.0] * 3, std=[1.0] * 3).to_props()
                return dataclasses.replace(meta, channels=1, color_order="GRAY", mean=[0.0], std=[1.0]).to_props()
            if kind == "wrong_labels":
                return dataclasses.replace(meta, labels=[*meta.labels, "extra"]).to_props()
            if kind == "wrong_input_name":
                return dataclasses.replace(meta, input_name="pixels").to_props()
            if kind == "missing_metadata":
                return {k: v for k, v in props.items() if k != "edgeloop.labels"}
            if kind == "bad_metadata":
                return {**props, "edgeloop.labels": "[not json"}
            if kind == "no_metadata":
                return {}
            raise AssertionError(kind)

        _rewrite_props(good, dest, edit)
    return dest


def _read_meta(path: Path) -> ModelMeta:
    proto = onnx.load(str(path), load_external_data=False)
    return ModelMeta.from_props({p.key: p.value for p in proto.metadata_props})
