"""The trainer's selection hint, as a device takes it: validated, capped by the device's own limits, put in
force on its sampler (edge/sampler.py step 5).

The hint arrives retained on ``trainer/selection_hint`` (only the trainer may write there: deploy/acl.py),
so a device that connects late still gets the one in force, and a hint from a trainer's earlier life lapses
at its ``expires``. What it can make a device do is bounded here, not by trusting the sender: at most
``hint_max_boost`` times a frame's probability, at most ``hint_max_budget_per_minute`` extra uploads a minute
(by default as many as the device's own ``budget_per_minute``), for
at most ``hint_max_ttl_s`` seconds, and never past the device's hour and day budgets.
"""
from __future__ import annotations

import logging
import time

from edge.sampler import Hint, Sampler
from protocol.reports import SelectionHint, decode_report

__all__ = ["take_hint"]

log = logging.getLogger("edgeloop.edge.hints")


def take_hint(sampler: Sampler, payload: bytes, now: float | None = None) -> str:
    """Apply one ``selection_hint`` payload to ``sampler``; returns what happened: ``applied``, ``capped``
    (applied within this device's limits), ``withdrawn`` (empty boost), ``expired`` or ``ignored`` (hints
    off on this device). A malformed payload raises ``ProtocolError`` and changes nothing."""
    msg = decode_report(payload, "selection_hint")
    assert isinstance(msg, SelectionHint)
    c = sampler.config
    now = time.time() if now is None else now
    if not c.hints:
        return "ignored"
    if not msg.boost:
        sampler.set_hint(None)
        return "withdrawn"
    if msg.expires <= now:
        sampler.set_hint(None)
        return "expired"
    max_boost = max(1.0, float(c.hint_max_boost))
    boost = {label: min(float(b), max_boost) for label, b in msg.boost.items()}
    cap = c.hint_max_budget_per_minute if c.hint_max_budget_per_minute is not None else c.budget_per_minute
    budget = int(msg.budget_per_minute) if cap is None else min(int(msg.budget_per_minute), max(0, int(cap)))
    expires = min(float(msg.expires), now + max(0.0, float(c.hint_max_ttl_s)))
    capped = boost != dict(msg.boost) or budget != msg.budget_per_minute or expires != msg.expires
    sampler.set_hint(Hint(boost, budget, expires, msg.reason))
    log.info("selection hint in force until %.0f: %s, %d uploads a minute%s (%s)", expires, boost, budget,
             " (capped by this device's limits)" if capped else "", msg.reason)
    return "capped" if capped else "applied"
