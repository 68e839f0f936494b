"""Which class names a person's label may use, and how a new class is added on purpose.

Why: the head grows for every label it has not seen (:mod:`trainer.service`), and a grown head ships to
the fleet. A typo ("scrach") must therefore never become a class. A label is accepted when it names a
*known* class:

- a class of any registered model version (the registry's ``labels``; bootstrap registers v0001),
- a class that already has labelled samples in the store,
- a class added explicitly (``edgeloop trainer classes add NAME``, ``POST /classes``, or a label request
  with ``"new_class": true`` -- the console's confirmed "new class" action).

Anything else is rejected with reason ``unknown_label`` and the list of known classes. The simulated oracle
is exempt: it is the ground truth of a simulation, not a person typing. Added classes live in the sample
store's ``meta`` table (one row per class, ``class:<name>``), so every process that opens the state
directory (the service, ``edgeloop label --state-dir``, the CLI) sees the same list.
"""
from __future__ import annotations

import re
import time
from collections.abc import Iterable
from pathlib import Path

from .store import SampleStore

__all__ = ["UnknownLabel", "known_classes", "added_classes", "add_class", "check_label", "check_class_name",
           "CLASS_NAME_PATTERN"]

#: A new class name: it becomes a directory name in ImageFolder exports and a label in ONNX metadata.
CLASS_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._ -]{0,63}\Z"
_NAME_RE = re.compile(CLASS_NAME_PATTERN)
_META_PREFIX = "class:"


class UnknownLabel(ValueError):
    """A label outside the known classes (``reason = "unknown_label"``; ``known`` lists the allowed ones)."""

    reason = "unknown_label"

    def __init__(self, label: str, known: list[str]) -> None:
        super().__init__(f"unknown label {label!r}: not one of the known classes {known}; add it explicitly "
                         f"(`edgeloop trainer classes add NAME`, or new_class=true on the request) if it is new")
        self.label = label
        self.known = known


def check_class_name(name: str) -> str:
    """Return ``name`` stripped if it may become a class, else raise ``ValueError`` saying why."""
    name = str(name).strip()
    if not _NAME_RE.match(name) or name in (".", ".."):
        raise ValueError(f"class name {name!r} must be 1-64 characters of letters, digits, '.', '_', '-' or "
                         "space, starting with a letter or digit")
    return name


def added_classes(store: SampleStore) -> list[str]:
    """Classes added explicitly, in the order they were added."""
    rows = store.meta_items(_META_PREFIX)
    return [k[len(_META_PREFIX):] for k, _ in sorted(rows, key=lambda kv: float(kv[1]))]


def _registry_labels(state_dir: Path | None) -> list[str]:
    if state_dir is None or not (state_dir / "registry.sqlite").exists():
        return []
    from .registry import Registry

    with Registry(state_dir) as reg:
        out: list[str] = []
        for rec in reg.list():
            out += [lab for lab in rec.labels if lab not in out]
        return out


def known_classes(store: SampleStore, state_dir: Path | None = None, model_labels: Iterable[str] = ()) -> list[str]:
    """Model classes first (in head order), then labelled classes, then added ones; no duplicates."""
    out: list[str] = []
    for lab in [*model_labels, *_registry_labels(state_dir), *store.stats()["per_class"], *added_classes(store)]:
        if lab not in out:
            out.append(lab)
    return out


def add_class(store: SampleStore, name: str) -> str:
    """Add a class explicitly (idempotent); returns the checked name."""
    name = check_class_name(name)
    if store.get_meta(_META_PREFIX + name) is None:
        store.set_meta(_META_PREFIX + name, repr(time.time()))
    return name


def check_label(label: str, known: list[str]) -> str:
    """``label`` stripped if it is one of ``known``; else :class:`UnknownLabel`."""
    label = str(label).strip()
    if label not in known:
        raise UnknownLabel(label, known)
    return label
