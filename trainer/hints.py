"""Where a class the fleet misses hides, read from the labels: the trainer's selection hint.

A defect the deployed model cannot name yet is not *uncertain* to it: the cameras predict it, mostly with
confidence, as the class it looks most like (a one-pixel crack as a scratch), so the uncertainty curve
gives those frames ``p_min`` and the few that are uploaded arrive by chance. The labels say where they
hide: every sample carries the camera's top-1 prediction and the probability it was selected with. For each
class C and each predicted label P, ``sum(1 / p_select)`` over the window's labelled uploads predicted P
and labelled C, divided by the same sum over all uploads predicted P, is an unbiased estimate (Horvitz-
Thompson) of the share of C among *all* frames the cameras predict as P -- not just among those they
uploaded -- counted from C's first label in the window, so that a defect that arrived a minute ago is not
diluted by the clean frames before it. When the cameras miss most of a class's labels (``min_miss``) and it makes up at least
``min_share`` of some predicted label's frames, the hint asks for more frames predicted as that label
(``boost``), from an upload budget of its own (``budget_per_minute`` per camera, edge/sampler.py step 5).
A label where the class is rare (`ok` at 13 %) is not boosted: its frames would spend the budget on `ok`.

The hint lapses by itself (``ttl_s``; the trainer renews one still in force) and is withdrawn as soon as
the cameras name the class, so it costs labels only while a class is being missed. A boost in force is
released only below ``release`` times the thresholds that started it (hysteresis): with one set of thresholds
a share estimated from a few dozen labels crossed them back and forth, and the retained hint was published,
withdrawn and published again within a second (the demo, seed 1). Settings: the trainer
config's ``hints`` section (:class:`trainer.config.HintsConfig`).
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any

__all__ = ["HintPolicy", "Hint"]


@dataclass(frozen=True)
class Hint:
    """What to ask the cameras for, and why (``protocol.reports.SelectionHint`` without the transport)."""

    boost: dict[str, float]
    budget_per_minute: int
    expires: float
    reason: str


class HintPolicy:
    """The labelled uploads of the last ``window_s`` seconds and the hint they call for.

    ``observe`` is fed every labelled upload once (training and held-out alike); ``hint(now)`` is cheap
    (a pass over at most ``max_rows`` rows) and returns None while nothing is missed.
    """

    def __init__(self, config: Any, max_rows: int = 5000) -> None:
        self.config = config
        self._rows: deque[tuple[float, str, str, float]] = deque(maxlen=max_rows)
        self._on: set[tuple[str, str]] = set()   # (class, predicted label) pairs the last hint boosted

    def observe(self, t: float, label: str, predicted: str, p_select: float) -> None:
        """One labelled upload: when it was labelled, its label, the camera's top-1, its ``p_select``."""
        self._rows.append((float(t), str(label), str(predicted), max(float(p_select), 1e-6)))

    def hint(self, now: float) -> Hint | None:
        c = self.config
        rows = self._rows
        while rows and rows[0][0] < now - c.window_s:
            rows.popleft()
        n: dict[str, int] = {}          # labels per class
        missed: dict[str, int] = {}     # of them, predicted as something else
        since: dict[str, float] = {}    # when the class was first labelled in the window
        for t, label, pred, _p in rows:
            n[label] = n.get(label, 0) + 1
            since.setdefault(label, t)
            if pred != label:
                missed[label] = missed.get(label, 0) + 1
        boost: dict[str, float] = {}
        why: list[str] = []
        on: set[tuple[str, str]] = set()
        for label in sorted(missed):
            asking = any(cls == label for cls, _ in self._on)
            if n[label] < c.min_labels or missed[label] < c.min_miss * (c.release if asking else 1.0) * n[label]:
                continue
            for pred, share, k in self._shares(label, since[label]):
                held = (label, pred) in self._on
                if k >= 2 and share >= c.min_share * (c.release if held else 1.0):
                    on.add((label, pred))
                    boost[pred] = float(c.boost)
                    why.append(f"{label}: {k} of {n[label]} labels predicted as {pred} (~{100 * share:.0f} % of its "
                               "frames)")
        self._on = on
        if not boost:
            return None
        return Hint(boost, int(c.budget_per_minute), now + c.ttl_s, "; ".join(why)[:1024])

    def _shares(self, label: str, since: float) -> list[tuple[str, float, int]]:
        """(predicted label, the estimated share of ``label`` among all frames predicted as it, uploads behind
        the estimate) since ``label`` first appeared: a defect that arrived a minute ago is judged on the frames
        since, not diluted by the hour of clean frames before it."""
        w_pred: dict[str, float] = {}
        w_hit: dict[str, float] = {}
        k: dict[str, int] = {}
        for t, lab, pred, p in self._rows:
            if t < since:
                continue
            w_pred[pred] = w_pred.get(pred, 0.0) + 1.0 / p
            if lab == label and pred != label:
                w_hit[pred] = w_hit.get(pred, 0.0) + 1.0 / p
                k[pred] = k.get(pred, 0) + 1
        return [(pred, w / w_pred[pred], k[pred]) for pred, w in sorted(w_hit.items())]
