"""Randomised, budgeted, de-duplicated selection of frames to upload.

Per frame, in this order (every factor is folded into the ``p_select`` that travels with the sample, so
the trainer's weight ``w = min(1 / p_select, w_max)`` is always the inverse of the probability that was
actually used for the draw):

1. ``p_base = clip(g(score), p_min, p_max)``; ``g`` is a logistic around ``threshold`` with
   ``temperature`` (default) or a linear ramp. ``p_min > 0`` gives every frame a known non-zero chance:
   weights stay finite and the trainer sees frames far from the decision boundary (drift).
2. Drift boost: ``p *= boost`` (capped at 1) while ``edge.drift`` reports drift.
3. Near-duplicate suppression (``edge.dedup``), *before* the draw: ``p *= duplicate_factor`` for a frame
   that matches a recent upload. The fingerprint is computed only when the uniform draw falls below the
   undeduplicated probability (otherwise the frame is not selected whatever the fingerprint says), and
   the demand estimate of step 4 counts probabilities before dedup. Suppressing *after* a successful draw would make the reported
   ``p_select`` a lie (the real inclusion probability would be ``p * P(not duplicate)``), silently
   under-weighting exactly those samples. Doing it before keeps the reported number true. The default
   factor 0 is the one deliberate exception to "every frame has a non-zero chance": a duplicate of a
   recent upload is reported with ``p_select = 0`` and reason ``duplicate``; the upload it duplicates
   stands for it, so the weights are unbiased for the stream of *distinct scenes* rather than of raw
   frames (what we want: a static scene weighted by its frame count would dominate training), and the
   dedup TTL re-samples a long-still scene periodically. Set ``duplicate_factor > 0`` to keep frame-level
   unbiasedness (a history-dependent probability is fine for importance weighting as long as it is known
   at draw time) at the price of some budget.
4. Budget pacing, *without bias*: per calendar window (minute, hour, day; UTC-aligned tumbling windows,
   so "at most B per minute" is exact and easy to audit) the remaining budget ``R_w`` and the time left
   ``T_w`` give an allowed rate ``R_w / T_w``. Demand ``lambda`` (expected selections per second before
   the budget) is a time-decayed running estimate of the sum of step-3 probabilities per second.
   ``factor = min(1, min_w (R_w / T_w) / lambda)`` multiplies every frame's probability alike, so a short
   budget lowers everybody's chance uniformly instead of taking the first frames of a window and
   starving the tail (which would bias training towards whatever happens at the top of each minute).
   A hard cap still applies: when ``R_w`` reaches 0 the factor is 0 until the window rolls over. With
   small budgets the count's random spread (~sqrt(B)) would often exhaust a window a little early and
   starve its last seconds, so pacing aims at a window ``pacing_headroom`` (default 10 %) longer than it
   is: ~90 % utilisation, and at B=30/min under 0.5 % of frames ever see p = 0 (measured; vs 3.7 % at 0).
5. Selection hint (the trainer's ``selection_hint`` report, :class:`Hint`): while one is in force, a frame
   the model *predicts* as a hinted class also gets ``p_hint = min(1, p * boost[label])`` paced by the
   hint's own per-minute budget (its own demand estimate; the hour and day budgets still cap everything),
   and ``p_select = max(p * factor, p_hint * factor_hint)``. Why: a class the deployed model cannot name
   hides in the classes it is confused with, mostly with confident predictions that the uncertainty curve
   gives ``p_min``; the trainer sees in the labels where it hides and asks for those frames. The probability
   stays the one used for the draw, so the weights stay exact; the extra uploads come from a budget of
   their own, so the other classes keep theirs. An upload is charged to the hint's budget only when the
   base probability alone would not have taken it (reason ``hint``).
6. Draw ``u ~ U[0, 1)`` from a seeded generator; selected iff ``u < p_select``. ``u`` is drawn for every
   frame so that a given seed gives the same decisions whatever the dedup/budget state.

``Sampler.decide`` returns a ``Decision`` with the effective ``p_select``, the reason and the budget
left per window. The clock is injectable (``clock=``) so tests simulate hours without sleeping.
"""
from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Literal

import numpy as np

from edge.dedup import DedupConfig, Deduplicator

GKind = Literal["logistic", "linear"]

WINDOWS: dict[str, float] = {"minute": 60.0, "hour": 3600.0, "day": 86400.0}


@dataclass(frozen=True)
class SamplerConfig:
    """Selection curve, budgets and dedup. ``None`` budget = unlimited for that window."""

    g: GKind = "logistic"
    threshold: float = 0.5  # score at which logistic g = 0.5 (linear: score where g reaches 1 is ``threshold + temperature``)
    temperature: float = 0.1  # logistic width; linear: ramp from threshold - temperature to threshold + temperature
    p_min: float = 0.01
    p_max: float = 1.0
    budget_per_minute: int | None = 30
    budget_per_hour: int | None = 600
    budget_per_day: int | None = 5000
    rate_tau_s: float = 30.0  # time constant of the demand estimate
    fps_hint: float = 30.0  # demand estimate before the second frame
    pacing_headroom: float = 0.1  # pace as if each window were this fraction longer: fewer early exhaustions (see step 4)
    duplicate_factor: float = 0.0
    seed: int | None = None
    dedup: DedupConfig = field(default_factory=DedupConfig)
    # The trainer's selection hint (step 5): whether to follow it, and this device's caps on what it may ask
    # (a hint asking more is clamped to them, and says so in the log): the boost, the extra uploads a minute
    # (None: as many as budget_per_minute, the device's own), and how long a hint lives here whatever its
    # ``expires`` says, so a skewed clock cannot keep one in force.
    hints: bool = True
    hint_max_boost: float = 10.0
    hint_max_budget_per_minute: int | None = None
    hint_max_ttl_s: float = 600.0

    def budgets(self) -> dict[str, int | None]:
        return {"minute": self.budget_per_minute, "hour": self.budget_per_hour, "day": self.budget_per_day}


@dataclass(frozen=True)
class Hint:
    """A selection hint in force on this device (:meth:`Sampler.set_hint`): more frames predicted as the
    ``boost`` labels (label -> multiplier on the frame's probability, >= 1), from ``budget_per_minute``
    uploads of their own, until ``expires`` (Unix seconds; a hint nobody renews lapses by itself)."""

    boost: dict[str, float]
    budget_per_minute: int
    expires: float
    reason: str = ""


@dataclass(slots=True)
class Decision:
    """The outcome for one frame; ``p_select`` is the probability actually used (travels with the sample).

    Treat it as read-only. Not ``frozen``: a frozen dataclass pays ``object.__setattr__`` per field (about
    0.8 us per frame here), and this object is built for every frame the camera sees.
    """

    selected: bool
    p_select: float
    p_base: float
    score: float
    reason: str  # selected: "uncertain" | "explore" | "drift" | "hint"; not: "not_drawn" | "duplicate" | "budget"
    budget_factor: float
    duplicate: bool
    budget_left: dict[str, int | None]
    fingerprint: object = None


def selection_curve(kind: GKind, threshold: float, temperature: float, p_min: float = 0.0,
                    p_max: float = 1.0) -> Callable[[float], float]:
    """``p_base(score) = clip(g(score), p_min, p_max)`` as a plain-Python function of one score; with the
    default bounds it is ``g`` itself. The one implementation of the curve: :class:`Sampler` calls it for
    every frame, the label-budget benchmark (bench/label_budget.py) over its minibatches.

    ``g`` is ``1 / (1 + exp(-(s - threshold) / temperature))`` (logistic, exponent clipped to ±60 so tiny
    temperatures stay finite) or a ramp from 0 at ``threshold - temperature`` to 1 at ``threshold +
    temperature`` (linear). Plain floats and a closure over the constants, because this runs per frame:
    numpy on a scalar costs ~5 us a call, a method reading its constants from ``self`` ~0.2 us more.
    """
    t = max(float(temperature), 1e-9)
    lo, hi = float(p_min), max(float(p_min), float(p_max))
    if kind == "linear":
        start, width = threshold - t, 2.0 * t

        def p_base(score: float) -> float:
            g = (score - start) / width
            g = 0.0 if g < 0.0 else (1.0 if g > 1.0 else g)
            return lo if g < lo else (hi if g > hi else g)
    elif kind == "logistic":
        def p_base(score: float) -> float:
            z = (score - threshold) / t
            z = -60.0 if z < -60.0 else (60.0 if z > 60.0 else z)
            g = 1.0 / (1.0 + math.exp(-z))
            return lo if g < lo else (hi if g > hi else g)
    else:
        raise ValueError(f"unknown selection curve {kind!r}; use logistic or linear")
    return p_base


class _Demand:
    """Time-decayed estimate of "sum of probabilities per second" (expected selections per second)."""

    def __init__(self, tau: float, fps_hint: float) -> None:
        self.tau = tau
        self.fps_hint = fps_hint
        self.s = 0.0  # decayed sum of p
        self.t = 0.0  # decayed elapsed time
        self.last: float | None = None

    def add(self, p: float, now: float) -> None:
        if self.last is None:
            self.s, self.t, self.last = p, 1.0 / self.fps_hint, now
            return
        dt = max(now - self.last, 0.0)
        decay = math.exp(-dt / self.tau)
        self.s = self.s * decay + p
        self.t = self.t * decay + dt
        self.last = now

    @property
    def rate(self) -> float:
        if self.t <= 0.0:
            return self.s * self.fps_hint
        return self.s / self.t


class Sampler:
    """Decides per frame whether to upload it, with known selection probabilities (see module doc)."""

    def __init__(
        self,
        config: SamplerConfig | None = None,
        clock: Callable[[], float] = time.time,
        rng: np.random.Generator | None = None,
    ) -> None:
        self.config = config or SamplerConfig()
        self.clock = clock
        self.rng = rng if rng is not None else np.random.default_rng(self.config.seed)
        self.dedup = Deduplicator(self.config.dedup)
        self._demand = _Demand(self.config.rate_tau_s, self.config.fps_hint)
        c = self.config
        #: ``p_base(score)``: the probability before drift boost, dedup and budget (:func:`selection_curve`).
        self.p_base = selection_curve(c.g, c.threshold, c.temperature, c.p_min, c.p_max)
        self._window_start: dict[str, float] = {}
        self._t0: float | None = None  # time of the first decision
        self._next_roll = -math.inf  # earliest window end: no calendar arithmetic until then
        self._paced: list[tuple[str, int, float, float]] = []  # set by _roll
        self._last_now = -math.inf
        self._budgets = {k: (None if v is None else int(v)) for k, v in self.config.budgets().items()}
        self._used: dict[str, int] = {name: 0 for name in WINDOWS}
        self._lock = threading.Lock()
        self._left_cache: dict[str, int | None] | None = None  # budget left; rebuilt only when it changes
        self._draws = np.empty(0)  # uniforms drawn in blocks: same stream as one call per frame, 1/4 of the cost
        self._draw_i = 0
        self.frames = 0
        self.selected = 0
        self.reasons: dict[str, int] = {}
        self._sum_p = 0.0
        self._hint: Hint | None = None
        self._hint_demand = _Demand(self.config.rate_tau_s, self.config.fps_hint)
        self._hint_used = 0          # hint uploads in the current calendar minute
        self._hint_minute = -1.0     # start of that minute
        self.hinted = 0              # uploads charged to a hint's budget, ever

    # -- budgets ---------------------------------------------------------------------------------------
    def _roll(self, now: float) -> None:
        if now < self._next_roll and now >= self._last_now:
            return
        nxt = math.inf
        for name, length in WINDOWS.items():
            start = math.floor(now / length) * length
            if self._window_start.get(name) != start:
                self._window_start[name] = start
                self._used[name] = 0
                self._left_cache = None
            nxt = min(nxt, start + length)
        self._next_roll = nxt
        self._last_now = now
        # Per budgeted window: (name, budget, end, extra seconds of pacing headroom). The headroom is
        # proportional to the part of the window this sampler lives through (a device booted at 22:00
        # paces its day budget over 2 h, not 24 h). Constant until the next roll, so computed here.
        t0 = self._t0 if self._t0 is not None else now
        paced = []
        for name, b in self._budgets.items():
            if b is None:
                continue
            start = self._window_start[name]
            end = start + WINDOWS[name]
            paced.append((name, b, end, self.config.pacing_headroom * (end - max(start, t0))))
        self._paced = paced

    def _left(self) -> dict[str, int | None]:
        """Budget left per window. Cached between changes: callers get a shared dict and must not mutate it."""
        if self._left_cache is None:
            used = self._used
            self._left_cache = {name: (None if b is None else max(0, int(b) - used[name]))
                                for name, b in self._budgets.items()}
        return self._left_cache

    def _uniform(self) -> float:
        """The next U[0, 1) draw. ``Generator.random(n)`` yields the same numbers as n scalar calls."""
        i = self._draw_i
        if i >= len(self._draws):
            self._draws = self.rng.random(256)
            i = 0
        self._draw_i = i + 1
        return float(self._draws[i])

    def _factor(self, now: float, demand_rate: float) -> float:
        allowed = math.inf
        used = self._used
        for name, b, end, extra in self._paced:
            left = b - used[name]
            if left <= 0:
                return 0.0
            remaining_t = end - now
            rate = left / ((remaining_t if remaining_t > 1e-3 else 1e-3) + extra)
            if rate < allowed:
                allowed = rate
        if allowed == math.inf or demand_rate <= 0.0:
            return 1.0
        f = allowed / demand_rate
        return f if f < 1.0 else 1.0

    # -- the decision ----------------------------------------------------------------------------------
    def decide(
        self,
        score: float,
        image: np.ndarray | None = None,
        *,
        boost: float = 1.0,
        now: float | None = None,
        fingerprint: object = None,
        label: str | None = None,
    ) -> Decision:
        """Decide for one frame.

        ``image`` (any small uint8 image, ideally the resized model input) is fingerprinted for dedup;
        pass ``fingerprint`` instead if already computed. ``boost`` is the drift multiplier. ``label`` is
        the model's top-1 prediction, which a selection hint may ask more frames of (step 5).
        """
        c = self.config
        now = self.clock() if now is None else now
        s = float(score)
        p0 = self.p_base(s)
        p = min(1.0, p0 * boost) if boost != 1.0 else p0
        dedup = self.dedup
        fp, dup = fingerprint, False
        # One critical section per frame: the frame loop is the only caller, the lock only keeps ``stats()``
        # (another thread) from seeing a half-updated state.
        with self._lock:
            u = self._uniform()
            if self._t0 is None:
                self._t0 = now
            self._roll(now)
            self._demand.add(p, now)
            factor = self._factor(now, self._demand.rate)
            ph, hfactor = self._hinted(p, label, now) if self._hint is not None else (0.0, 0.0)
            # Dedup can only lower p, so a frame whose draw u >= p * factor is "not selected" whatever its
            # fingerprint says: only frames the draw would take pay for fingerprinting. The p_select a
            # selected frame reports still includes the dedup factor, so its weight stays exact.
            if u < p * factor or u < ph * hfactor:
                if fp is None and image is not None and dedup.config.enabled:
                    fp = dedup.fingerprint(image)
                dup = fp is not None and dedup.is_duplicate(fp, now)
                if dup:
                    p *= c.duplicate_factor
                    ph *= c.duplicate_factor
            p_eff = max(p * factor, ph * hfactor)
            selected = u < p_eff
            if selected:
                used = self._used
                for name in used:
                    used[name] += 1
                self._left_cache = None
                if u >= p * factor:  # only the hint took it: its own budget pays (the hour and day ones too)
                    used["minute"] -= 1
                    self._hint_used += 1
                    self.hinted += 1
                    reason = "hint"
                elif boost > 1.0 and u >= p0 * factor:
                    reason = "drift"  # would not have been picked without the boost
                elif p0 <= c.p_min:
                    reason = "explore"
                else:
                    reason = "uncertain"
            elif dup and p == 0.0:
                reason = "duplicate"
            elif factor == 0.0:
                reason = "budget"
            else:
                reason = "not_drawn"
            self.frames += 1
            self._sum_p += p_eff
            self.selected += selected
            self.reasons[reason] = self.reasons.get(reason, 0) + 1
            left = self._left()
        if selected and fp is not None:
            dedup.remember(fp, now)
        return Decision(selected, p_eff, p0, s, reason, factor, dup, left, fp)

    def _hinted(self, p: float, label: str | None, now: float) -> tuple[float, float]:
        """(``p_hint``, the hint budget's pacing factor) for a frame predicted as ``label``; (0, 0) when no
        hint applies. Called under the lock."""
        h = self._hint
        if h is None or now >= h.expires:
            if h is not None:
                self._hint = None  # lapsed
            return 0.0, 0.0
        mult = h.boost.get(label) if label is not None else None
        if mult is None:
            return 0.0, 0.0
        minute = math.floor(now / 60.0) * 60.0
        if minute != self._hint_minute:
            self._hint_minute, self._hint_used = minute, 0
        ph = min(1.0, p * mult)
        self._hint_demand.add(ph, now)
        left = h.budget_per_minute - self._hint_used
        if left <= 0:
            return ph, 0.0
        used = self._used
        for name, b, end, _extra in self._paced:  # the hour and day budgets bound hinted uploads too
            if name != "minute" and b - used[name] <= 0:
                return ph, 0.0
        remaining = max(minute + 60.0 - now, 1e-3) + self.config.pacing_headroom * 60.0
        rate = self._hint_demand.rate
        return ph, (1.0 if rate <= 0.0 else min(1.0, left / remaining / rate))

    def set_hint(self, hint: Hint | None) -> None:
        """Put a selection hint in force (``None`` withdraws it). Takes effect from the next frame."""
        with self._lock:
            if hint is None or (self._hint is not None and set(hint.boost) != set(self._hint.boost)):
                self._hint_demand = _Demand(self.config.rate_tau_s, self.config.fps_hint)
            self._hint = hint

    @property
    def hint(self) -> Hint | None:
        """The hint in force, if any (a lapsed one is dropped at the next frame)."""
        return self._hint

    def decide_batch(self, scores: np.ndarray, images: list[np.ndarray] | None = None, *, boost: float = 1.0,
                     labels: list[str] | None = None) -> list[Decision]:
        """``decide`` over a micro-batch, in frame order (budget state is sequential by nature)."""
        imgs = images if images is not None else [None] * len(scores)
        labs = labels if labels is not None else [None] * len(scores)
        return [self.decide(float(s), im, boost=boost, label=lb)
                for s, im, lb in zip(np.asarray(scores).ravel(), imgs, labs)]

    def budget_left(self, now: float | None = None) -> dict[str, int | None]:
        """Selections still allowed in the current minute/hour/day window (None = unlimited)."""
        with self._lock:
            self._roll(self.clock() if now is None else now)
            return self._left()

    def reset_dedup(self) -> None:
        """Forget recent uploads (after a model swap the same scene is worth asking about again)."""
        self.dedup.clear()

    def stats(self) -> dict[str, object]:
        """Counters for the stats topic: frames, selections, mean effective p, demand, budget left, reasons."""
        with self._lock:
            return {
                "frames": self.frames,
                "selected": self.selected,
                "mean_p_select": (self._sum_p / self.frames) if self.frames else 0.0,
                "demand_per_s": self._demand.rate,
                "budget_left": self._left(),
                "reasons": dict(self.reasons),
                "dedup": self.dedup.stats(),
                "hint": None if self._hint is None else {"boost": dict(self._hint.boost),
                                                         "budget_per_minute": self._hint.budget_per_minute,
                                                         "expires": self._hint.expires, "used": self.hinted},
            }
