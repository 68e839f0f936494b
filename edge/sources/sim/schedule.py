"""Which class a simulated frame shows: base priors plus prior-shift and
new-class drifts, as a pure function of the frame index.

Kept apart from rendering so that the label set (``labels``) is known before a
single frame is drawn — the edge and trainer need it up front, including the
classes that only appear later.
"""

from __future__ import annotations

import numpy as np

from .drift import Drift

__all__ = ["ClassSchedule"]


def _median(values: list[float]) -> float:
    v = sorted(values)
    n = len(v)
    return v[n // 2] if n % 2 else 0.5 * (v[n // 2 - 1] + v[n // 2])


class ClassSchedule:
    """Class probabilities at frame ``i``.

    all_classes: the renderer's full class list, in canonical order.
    initial: classes present from frame 0.
    base: optional {class: weight} for the initial classes (normalised here);
      missing initial classes share what is left equally.
    drifts: the scenario's drifts; only ``prior`` and ``newclass`` matter here.
    """

    def __init__(
        self,
        all_classes: list[str],
        initial: list[str],
        base: dict[str, float] | None,
        drifts: list[Drift],
    ) -> None:
        self.class_drifts = sorted(
            (d for d in drifts if d.kind in ("prior", "newclass")), key=lambda d: d.start
        )
        for name in initial:
            if name not in all_classes:
                raise ValueError(f"classes: unknown class {name!r} (known: {all_classes})")
        emitted = set(initial)
        for d in self.class_drifts:
            if d.kind == "newclass":
                emitted.update(d.value)
        # Prior shifts may only name classes that can appear at some point.
        for d in self.class_drifts:
            if d.kind == "prior":
                for name in d.value:
                    if name not in emitted:
                        raise ValueError(
                            f"drift {d.text!r}: prior names class {name!r}, which this scenario never shows"
                            f" (add newclass:{name} first)"
                        )
        self.labels: list[str] = [c for c in all_classes if c in emitted]
        self._index = {c: k for k, c in enumerate(self.labels)}
        p = np.zeros(len(self.labels))
        base = dict(base or {})
        for name in base:
            if name not in initial:
                raise ValueError(f"priors: class {name!r} is not an initial class ({initial})")
            if base[name] < 0:
                raise ValueError(f"priors: weight for {name!r} must be >= 0")
        given = sum(base.values())
        rest = [c for c in initial if c not in base]
        if rest:
            fill = max(0.0, 1.0 - given) / len(rest) if given < 1 else 0.0
            for c in rest:
                base[c] = fill
        for c in initial:
            p[self._index[c]] = base[c]
        if p.sum() <= 0:
            raise ValueError("priors: all initial class weights are zero")
        self._base = p / p.sum()
        self._cache: dict[tuple[float, ...], np.ndarray] = {}

    def probs(self, i: int) -> np.ndarray:
        """Probabilities over ``labels`` at frame ``i`` (sums to 1).

        Strengths are rounded to 1/1000 so that ramps hit the cache; the class
        lists are tiny, so plain Python beats numpy here.
        """
        strengths = tuple(round(d.strength(i), 3) for d in self.class_drifts)
        hit = self._cache.get(strengths)
        if hit is not None:
            return hit
        p = [float(v) for v in self._base]
        for d, s in zip(self.class_drifts, strengths):
            if s <= 0:
                continue
            if d.kind == "newclass":
                idx = [self._index[c] for c in d.value if p[self._index[c]] == 0]
                if not idx:
                    continue
                if d.weight is None:
                    w = _median([v for v in p if v > 0]) * s
                    for k in idx:
                        p[k] = w
                    total = sum(p)
                    p = [v / total for v in p]
                else:
                    new = min(0.999, d.weight * s * len(idx))
                    scale = (1.0 - new) / sum(p)
                    p = [v * scale for v in p]
                    for k in idx:
                        p[k] = new / len(idx)
            else:  # prior shift towards target probabilities, linear in strength
                q = list(p)
                fixed = 0.0
                named = set()
                for c, target in d.value.items():
                    k = self._index[c]
                    if p[k] > 0:
                        q[k] = target
                        fixed += target
                        named.add(k)
                if not named:
                    continue
                others = [k for k in range(len(p)) if p[k] > 0 and k not in named]
                other_mass = sum(p[k] for k in others)
                if other_mass > 0:
                    for k in others:
                        q[k] = p[k] * max(0.0, 1.0 - fixed) / other_mass
                total = sum(q)
                p = [(1.0 - s) * a + s * b / total for a, b in zip(p, q)]
        out = np.asarray(p, dtype=np.float64)
        out /= out.sum()
        if len(self._cache) < 8192:
            self._cache[strengths] = out
        return out

    def sample(self, i: int, u: float) -> str:
        """Class for frame ``i`` given a uniform draw ``u`` in [0, 1)."""
        acc = 0.0
        last = 0
        for k, p in enumerate(self.probs(i)):
            if p <= 0:
                continue
            acc += p
            last = k
            if u < acc:
                return self.labels[k]
        return self.labels[last]
