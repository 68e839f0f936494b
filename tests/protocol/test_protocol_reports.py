"""Plain-JSON reports (state, birth, stats, model status, predictions): a stranger reads them with json.loads,
receivers validate them as strictly as envelopes and reject every defect with a reason."""

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocol.errors import REASONS, ProtocolError
from protocol.messages import encode_message
from protocol.reports import (
    KIND_TYPES, REPORT_SCHEMA, REPORT_TYPES, Report, State, decode_report, encode_report,
)

from _proto_helpers import manifest, report_examples


def reason(fn, *a, **kw) -> str:
    with pytest.raises(ProtocolError) as e:
        fn(*a, **kw)
    assert e.value.reason in REASONS
    return e.value.reason


def edited(msg: Report, **changes) -> bytes:
    doc = json.loads(encode_report(msg))
    doc.update(changes)
    return json.dumps(doc).encode()


@pytest.mark.parametrize("msg", report_examples(), ids=lambda m: m.TYPE)
def test_round_trip_and_plain_json(msg):
    data = encode_report(msg)
    assert decode_report(data) == msg
    doc = json.loads(data.decode("utf-8"))  # what Node-RED, Telegraf or a PLC gateway does
    assert doc["type"] == msg.TYPE and doc["schema"] == REPORT_SCHEMA and doc["device"] == "cam-1"
    assert doc["ts"] == 1.7e9


def test_every_type_has_an_example_and_a_topic_kind():
    assert {m.TYPE for m in report_examples()} == set(REPORT_TYPES)
    assert {c.TYPE for c in KIND_TYPES.values()} == set(REPORT_TYPES)


def test_kind_must_match_the_topic():
    state = encode_report(State(device="d", state="online", boot=1))
    assert decode_report(state, "state").state == "online"
    assert decode_report(state, "trainer_state").state == "online"
    assert reason(decode_report, state, "stats") == "wrong_type"
    assert reason(decode_report, state, "samples") == "bad_topic"


def test_ts_defaults_to_now():
    import time

    s = State(device="d", state="offline", boot=0)
    assert abs(s.ts - time.time()) < 5


@pytest.mark.parametrize(
    "payload, expected",
    [
        (b"", "bad_json"),
        (b"\xff\xfe", "bad_json"),
        (b"[1, 2]", "bad_json"),
        (b'"online"', "bad_json"),
        (b"{", "bad_json"),
        (b"{}", "unknown_type"),
        (b'{"type": "sample"}', "unknown_type"),
        (b'{"type": "state", "schema": 3, "device": "d", "state": "online", "boot": 1}', "bad_version"),
        (b'{"type": "state", "schema": 1, "device": "d", "state": "online", "boot": 1}', "bad_version"),
        (b'{"type": "state", "device": "d", "state": "online"}', "schema"),
        (b'{"type": "state", "device": "d/x", "state": "online", "boot": 1}', "schema"),
        (b'{"type": "state", "device": "d", "state": "online", "boot": 1, "extra": 1}', "schema"),
        (b"ELP\x01\x00\x00\x00\x02{}", "bad_version"),  # a binary envelope from an edgeloop before schema 2
        (b"x" * (256 * 1024 + 1), "too_large"),
    ],
)
def test_bad_payloads_rejected_by_reason(payload, expected):
    assert reason(decode_report, payload) == expected


@pytest.mark.parametrize(
    "index, changes",
    [
        (0, {"capabilities": []}),
        (1, {"state": "sleeping"}),
        (1, {"boot": -1}),
        (2, {"fps": -1}),
        (2, {"budget_left": {"minute": "lots"}}),
        (2, {"defect_rate": 1.5}),
        (3, {"state": "exploded"}),
        (4, {"confidence": 1.2}),
        (4, {"topk": [{"label": "ok"}]}),
        (4, {"topk": [["ok", 0.4]]}),
        (4, {"frame_index": -1}),
        (4, {"roi": [1, 2, 3]}),
        (4, {"ok": "yes"}),
        (4, {"ts": -1.0}),
    ],
)
def test_field_violations_are_schema_errors(index, changes):
    assert reason(decode_report, edited(report_examples()[index], **changes)) == "schema"


def test_sender_checks():
    with pytest.raises(ValueError, match="finite"):
        State(device="d", state="online", boot=1, ts=float("nan"))
    bad = State(device="d/x", state="online", boot=1)  # patterns are checked on decode...
    assert reason(encode_report, bad) == "schema"          # ...which encode_report runs by default
    assert reason(encode_report, manifest()) == "unknown_type"
    assert encode_report(bad, validate=False)  # the per-frame verdict path skips the check


def test_envelope_codec_refuses_reports():
    assert reason(encode_message, State(device="d", state="online", boot=1), device="d", seq=1) == "unknown_type"


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=2048) | st.sampled_from([encode_report(m) for m in report_examples()]).flatmap(
    lambda b: st.integers(0, len(b)).map(lambda i: b[:i] + b"\x00" + b[i + 1:])))
def test_arbitrary_bytes_give_a_report_or_protocol_error(data):
    try:
        msg = decode_report(data)
    except ProtocolError as e:
        assert e.reason in REASONS and isinstance(e.detail, str)
        return
    assert decode_report(encode_report(msg)) == msg
