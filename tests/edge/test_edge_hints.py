"""edge.hints.take_hint: a trainer's selection hint as a device takes it -- within its own caps, never past
its own time limit, withdrawn by an empty boost, and malformed ones refused without changing anything."""
from __future__ import annotations

import pytest

from edge.hints import take_hint
from edge.sampler import Hint, Sampler, SamplerConfig
from protocol.errors import ProtocolError
from protocol.reports import SelectionHint, encode_report

NOW = 1_800_000_000.0


def _payload(**kw) -> bytes:
    base = {"device": "trainer", "boost": {"scratch": 10.0}, "budget_per_minute": 30, "expires": NOW + 60,
            "reason": "crack: 18 of 27 labels predicted as scratch"}
    return encode_report(SelectionHint(**{**base, **kw}))


def test_a_hint_within_the_caps_is_applied_as_sent() -> None:
    s = Sampler(SamplerConfig())
    assert take_hint(s, _payload(), now=NOW) == "applied"
    assert s.hint == Hint({"scratch": 10.0}, 30, NOW + 60, "crack: 18 of 27 labels predicted as scratch")


def test_a_hint_asking_more_than_the_device_allows_is_capped() -> None:
    s = Sampler(SamplerConfig(hint_max_boost=4.0, hint_max_budget_per_minute=10, hint_max_ttl_s=120.0))
    assert take_hint(s, _payload(boost={"scratch": 500.0, "ok": 2.0}, budget_per_minute=9999,
                                 expires=NOW + 86400), now=NOW) == "capped"
    assert s.hint is not None
    assert s.hint.boost == {"scratch": 4.0, "ok": 2.0} and s.hint.budget_per_minute == 10
    assert s.hint.expires == NOW + 120.0  # a skewed trainer clock cannot keep it in force


def test_by_default_a_hint_gets_at_most_the_device_s_own_minute_budget() -> None:
    s = Sampler(SamplerConfig(budget_per_minute=12))
    assert take_hint(s, _payload(budget_per_minute=500), now=NOW) == "capped"
    assert s.hint is not None and s.hint.budget_per_minute == 12


def test_withdrawn_expired_and_ignored() -> None:
    s = Sampler(SamplerConfig())
    take_hint(s, _payload(), now=NOW)
    assert take_hint(s, _payload(boost={}), now=NOW) == "withdrawn" and s.hint is None
    take_hint(s, _payload(), now=NOW)
    assert take_hint(s, _payload(expires=NOW - 1), now=NOW) == "expired" and s.hint is None  # a stale retained one
    off = Sampler(SamplerConfig(hints=False))
    assert take_hint(off, _payload(), now=NOW) == "ignored" and off.hint is None


@pytest.mark.parametrize("payload, reason", [
    (b"not json", "bad_json"),
    (b'{"type": "selection_hint", "device": "trainer", "boost": {"scratch": 0.5}, "expires": 1}', "schema"),
    (b'{"type": "selection_hint", "device": "trainer", "boost": {"scratch": 2}, "budget_per_minute": -1, '
     b'"expires": 1}', "schema"),
    (b'{"type": "selection_hint", "device": "trainer", "boost": {}, "expires": 1, "extra": 1}', "schema"),
    (b'{"type": "state", "device": "trainer", "state": "online", "boot": 1}', "wrong_type"),
])
def test_malformed_hints_are_refused_and_change_nothing(payload: bytes, reason: str) -> None:
    s = Sampler(SamplerConfig())
    take_hint(s, _payload(), now=NOW)
    before = s.hint
    with pytest.raises(ProtocolError) as e:
        take_hint(s, payload, now=NOW)
    assert e.value.reason == reason
    assert s.hint is before
