"""Crash-safe checkpoints of the learner state in ``state_dir/checkpoint/``.

What a checkpoint holds: the model ``state_dict``, the optimiser state, the replay memory's state (any
object with ``state_dict()`` / ``load_state_dict()``), a counters dict (samples seen, last ingested sample
rowid, update count, ...), the labels list and the architecture name. All of it goes into **one file per
generation**, so a single ``os.replace`` switches from the old state to the new one: the model and the
counters can never disagree because they can never come from different writes.

Crash safety (``kill -9`` or power loss at any moment leaves the old or the new checkpoint, never a torn one):

1. serialise to memory, prepend a header (magic, format version, payload length, SHA-256 of the payload);
2. write ``ckpt-<generation>.pt.tmp-<pid>``, ``flush`` + ``fsync`` the file;
3. ``os.replace`` it to ``ckpt-<generation>.pt`` (atomic on POSIX), then ``fsync`` the directory so the
   rename itself is durable;
4. only then delete generations older than the newest ``keep``.

Loading picks the newest generation whose header and hash verify and falls back to the previous one
(with a warning) if the newest is damaged by something a rename cannot prevent (a disk that lies about
fsync, a bit flip, a truncating copy). Stray ``*.tmp-*`` files are what a kill mid-write leaves; they are
ignored by ``load`` and removed by the next ``save``.

Loading uses ``torch.load(weights_only=True)`` with numpy arrays allow-listed: state is tensors, numpy
arrays and plain containers of str/int/float/bool/None. Custom classes in a replay memory's state are
refused on load rather than unpickled -- keep ``state_dict()`` plain.
"""
from __future__ import annotations

import hashlib
import io
import logging
import os
import re
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn
from protocol.durable import fsync_dir as _fsync_dir

log = logging.getLogger(__name__)

CHECKPOINT_DIRNAME = "checkpoint"
FORMAT_VERSION = 1
_MAGIC = b"EDGELOOP-CKPT\x00"
# magic, format version (u32), payload length (u64), sha256 of payload (32 bytes)
_HEADER = struct.Struct(f"<{len(_MAGIC)}sIQ32s")
_NAME_RE = re.compile(r"^ckpt-(\d{8})\.pt$")


class CheckpointError(RuntimeError):
    """A checkpoint file is unreadable (bad magic, wrong length, hash mismatch, refused content)."""


class Stateful(Protocol):
    """Anything with the ``state_dict()`` / ``load_state_dict()`` pair (replay memories, schedulers)."""

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> Any: ...


@dataclass
class Checkpoint:
    """A loaded checkpoint: plain state, to be applied to freshly built objects with :meth:`restore`."""

    generation: int
    arch: str
    labels: list[str]
    model_state: dict[str, torch.Tensor]
    optimizer_state: dict[str, Any] | None
    replay_state: dict[str, Any] | None
    counters: dict[str, Any]
    extra: dict[str, Any] = field(default_factory=dict)
    saved_at: float = 0.0
    path: Path | None = None

    def build_model(self) -> nn.Module:
        """Build ``arch`` with ``len(labels)`` outputs and load the weights (the head may have grown since bootstrap)."""
        from trainer.nets import build_model

        in_channels = self.extra.get("in_channels")
        model = build_model(self.arch, len(self.labels), in_channels=in_channels)
        model.load_state_dict(self.model_state)
        return model

    def restore(
        self,
        model: nn.Module | None = None,
        optimizer: torch.optim.Optimizer | None = None,
        replay: Stateful | None = None,
    ) -> None:
        """Load the saved state into already-built objects (the optimiser must be built over ``model``'s parameters)."""
        if model is not None:
            model.load_state_dict(self.model_state)
        if optimizer is not None and self.optimizer_state is not None:
            optimizer.load_state_dict(self.optimizer_state)
        if replay is not None and self.replay_state is not None:
            replay.load_state_dict(self.replay_state)


def checkpoint_dir(state_dir: str | os.PathLike[str]) -> Path:
    return Path(state_dir) / CHECKPOINT_DIRNAME


def _generations(directory: Path) -> list[tuple[int, Path]]:
    """Complete checkpoint files, newest first (tmp files never match the name pattern)."""
    found = []
    if directory.is_dir():
        for p in directory.iterdir():
            m = _NAME_RE.match(p.name)
            if m:
                found.append((int(m.group(1)), p))
    return sorted(found, reverse=True)


def _encode(payload: dict[str, Any]) -> bytes:
    buf = io.BytesIO()
    torch.save(payload, buf)
    body = buf.getvalue()
    return _HEADER.pack(_MAGIC, FORMAT_VERSION, len(body), hashlib.sha256(body).digest()) + body


def _numpy_safe_globals() -> list[Any]:
    """What ``torch.load(weights_only=True)`` needs to rebuild numpy arrays and scalars, and nothing more."""
    try:
        from numpy._core import multiarray  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core import multiarray  # type: ignore[no-redef]
    allowed: list[Any] = [np.ndarray, np.dtype, multiarray._reconstruct, multiarray.scalar]
    allowed += [type(np.dtype(t)) for t in (np.bool_, np.uint8, np.int8, np.int16, np.uint16, np.int32,
                                             np.uint32, np.int64, np.uint64, np.float16, np.float32, np.float64)]
    return allowed


def _decode(data: bytes, path: Path) -> dict[str, Any]:
    if len(data) < _HEADER.size:
        raise CheckpointError(f"{path}: truncated header ({len(data)} bytes)")
    magic, version, length, digest = _HEADER.unpack_from(data)
    if magic != _MAGIC:
        raise CheckpointError(f"{path}: not an edgeloop checkpoint (bad magic)")
    if version != FORMAT_VERSION:
        raise CheckpointError(f"{path}: checkpoint format {version}, this code reads {FORMAT_VERSION}")
    body = data[_HEADER.size:]
    if len(body) != length:
        raise CheckpointError(f"{path}: payload is {len(body)} bytes, header says {length}")
    if hashlib.sha256(body).digest() != digest:
        raise CheckpointError(f"{path}: payload hash mismatch")
    try:
        with torch.serialization.safe_globals(_numpy_safe_globals()):
            return torch.load(io.BytesIO(body), map_location="cpu", weights_only=True)
    except Exception as e:  # an unpickling refusal is a content problem, not a crash artefact
        raise CheckpointError(f"{path}: cannot load payload: {e}") from e


def save_checkpoint(
    state_dir: str | os.PathLike[str],
    *,
    model: nn.Module,
    arch: str,
    labels: list[str],
    counters: dict[str, Any],
    optimizer: torch.optim.Optimizer | None = None,
    replay: Stateful | None = None,
    extra: dict[str, Any] | None = None,
    keep: int = 2,
) -> Path:
    """Write a new checkpoint generation atomically and durably; returns its path.

    ``keep`` (>= 1) complete generations stay on disk: keeping 2 lets :func:`load_checkpoint` fall back one
    step if the newest file is ever found damaged.
    """
    if keep < 1:
        raise ValueError("keep must be >= 1")
    directory = checkpoint_dir(state_dir)
    directory.mkdir(parents=True, exist_ok=True)
    existing = _generations(directory)
    generation = existing[0][0] + 1 if existing else 1
    payload = {
        "format": FORMAT_VERSION,
        "generation": generation,
        "saved_at": time.time(),
        "arch": arch,
        "labels": list(labels),
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "replay": replay.state_dict() if replay is not None else None,
        "counters": dict(counters),
        "extra": dict(extra or {}),
    }
    data = _encode(payload)

    final = directory / f"ckpt-{generation:08d}.pt"
    tmp = directory / f"{final.name}.tmp-{os.getpid()}"
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, final)
    _fsync_dir(directory)

    # Only now is the new generation durable; older ones and crash leftovers may go.
    for _, old in _generations(directory)[keep:]:
        old.unlink(missing_ok=True)
    for stray in directory.glob("*.tmp-*"):
        if stray != tmp:
            stray.unlink(missing_ok=True)
    _fsync_dir(directory)
    return final


def load_checkpoint(state_dir: str | os.PathLike[str]) -> Checkpoint | None:
    """Load the newest intact checkpoint, or None if there is none yet (a fresh state dir).

    Raises :class:`CheckpointError` only if checkpoint files exist and *none* of them verifies: silently
    starting from scratch would throw away everything the trainer has learnt.
    """
    generations = _generations(checkpoint_dir(state_dir))
    errors: list[str] = []
    for generation, path in generations:
        try:
            payload = _decode(path.read_bytes(), path)
        except (CheckpointError, OSError) as e:
            log.warning("skipping damaged checkpoint %s: %s", path, e)
            errors.append(str(e))
            continue
        return Checkpoint(
            generation=generation,
            arch=payload["arch"],
            labels=list(payload["labels"]),
            model_state=payload["model"],
            optimizer_state=payload["optimizer"],
            replay_state=payload["replay"],
            counters=dict(payload["counters"]),
            extra=dict(payload.get("extra") or {}),
            saved_at=float(payload.get("saved_at", 0.0)),
            path=path,
        )
    if errors:
        raise CheckpointError("no intact checkpoint: " + "; ".join(errors))
    return None
