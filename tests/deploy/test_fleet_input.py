"""The controller's fleet view takes device messages from the network: bad ones are rejected, counted by
reason and never crash it or corrupt what it knows."""
from __future__ import annotations

from hypothesis import given, settings, strategies as st

from deploy.fleet import Fleet
from protocol import envelope
from protocol.messages import Sample, encode_message
from protocol.reports import PredictionReport, State, Stats, TopK, encode_report
from protocol.topics import Topics

T = Topics()


def _stats(device: str, fps: float = 12.0) -> bytes:
    return encode_report(Stats(device=device, fps=fps, latency_p50_ms=1.0, latency_p95_ms=2.0, outbox_depth=3,
                               outbox_bytes=10, outbox_dropped=0, uploads=1))


def test_good_messages_update_the_device() -> None:
    fleet = Fleet(T)
    fleet.on_message(T.state("cam1"), encode_report(State(device="cam1", state="online", boot=2)))
    fleet.on_message(T.stats("cam1"), _stats("cam1"))
    d = fleet.get("cam1")
    assert d is not None and d.online and d.fps == 12.0 and fleet.dropped == 0
    # a late Will of an earlier boot does not mark the device offline; its own does
    fleet.on_message(T.state("cam1"), encode_report(State(device="cam1", state="offline", boot=1)))
    assert fleet.get("cam1").online
    fleet.on_message(T.state("cam1"), encode_report(State(device="cam1", state="offline", boot=2)))
    assert not fleet.get("cam1").online


def test_bad_messages_are_rejected_by_reason() -> None:
    fleet = Fleet(T)
    fleet.on_message(T.stats("cam1"), _stats("cam1", fps=5.0))
    fleet.on_message(T.stats("cam1"), b"\x00garbage")                       # malformed
    fleet.on_message(T.stats("cam1"), _stats("cam2", fps=99.0))             # cam2 speaking as cam1
    sample = encode_message(Sample(sample_id="s1", model_version="v1", topk=[("ok", 0.9)], uncertainty=0.1,
                                   uncertainty_kind="margin", p_select=0.5, reason="uncertain", frame_index=1,
                                   width=10, height=10), b"\xff\xd8jpeg", device="cam1", seq=2)
    fleet.on_message(T.stats("cam1"), sample)                               # an envelope: senders before JSON
    verdict = encode_report(PredictionReport(device="cam1", label="ok", confidence=0.9, ok=True,
                                             topk=[TopK("ok", 0.9)], model_version="v1", frame_index=1,
                                             frame_time=1.0, latency_ms=1.0))
    fleet.on_message(T.stats("cam1"), verdict)                              # wrong type for the topic
    old = envelope.encode({"type": "stats", "schema": 1, "id": "a", "device": "cam1", "seq": 1, "ts": 1.0,
                           "content_type": "none", "msg": {}})
    fleet.on_message(T.stats("cam1"), old)
    assert fleet.get("cam1").fps == 5.0
    assert fleet.dropped == 5
    assert fleet.rejected == {"bad_json": 1, "device_mismatch": 1, "bad_version": 2, "wrong_type": 1}


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=512), st.sampled_from(["state", "birth", "stats", "model_status"]))
def test_arbitrary_bytes_never_crash_the_fleet(payload: bytes, kind: str) -> None:
    fleet = Fleet(T)
    topic = {"state": T.state, "birth": T.birth, "stats": T.stats, "model_status": T.model_status}[kind]("cam1")
    fleet.on_message(topic, payload)
    assert fleet.get("cam1") is None or fleet.dropped == 0
