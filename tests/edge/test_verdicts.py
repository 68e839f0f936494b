"""Verdicts on dev/{id}/predictions: which frames each mode publishes, the rate limit, the offline drop,
the defect rate, and the payload a stranger reads with json.loads."""
from __future__ import annotations

import json

import numpy as np
import pytest

from edge.model import Prediction
from edge.verdicts import PredictionsConfig, Verdicts
from protocol.reports import decode_report

LABELS = ["ok", "scratch", "dent"]


class FakeLink:
    def __init__(self) -> None:
        self.is_connected = True
        self.sent: list[tuple[str, bytes, int]] = []

    def publish(self, topic: str, payload: bytes, qos: int = 0, retain: bool = False) -> bool:
        self.sent.append((topic, payload, qos))
        return True


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def pred(label: str, conf: float = 0.8) -> Prediction:
    i = LABELS.index(label)
    probs = np.full(len(LABELS), (1 - conf) / (len(LABELS) - 1), dtype=np.float32)
    probs[i] = conf
    return Prediction(probs, i, label, float(conf), 0.3, LABELS, 3)


def offer(v: Verdicts, label: str, i: int = 0) -> bool:
    return v.offer(pred(label), frame_index=i, frame_time=1.7e9 + i, model_version="v0003",
                   roi=(96, 56, 128, 128), latency_ms=2.5)


def make(mode: str, **kw) -> tuple[Verdicts, FakeLink, Clock]:
    link, clock = FakeLink(), Clock()
    cfg = PredictionsConfig(mode=mode, **{"max_per_s": None, **kw})
    return Verdicts(cfg, "cam-1", "edgeloop/v1/dev/cam-1/predictions", link, clock=clock), link, clock


@pytest.mark.parametrize("mode, expected", [
    ("defects", [False, True, True, False, True]),
    ("changes", [True, True, False, True, True]),
    ("all", [True, True, True, True, True]),
    ("off", [False, False, False, False, False]),
])
def test_modes(mode: str, expected: list[bool]) -> None:
    v, link, _ = make(mode)
    got = [offer(v, label, i) for i, label in enumerate(["ok", "scratch", "scratch", "ok", "dent"])]
    assert got == expected
    assert v.published == sum(expected) == len(link.sent)
    assert v.frames == 5 and v.defects == 3


def test_payload_is_plain_json_with_every_field() -> None:
    v, link, _ = make("all", topk=2, qos=1)
    offer(v, "scratch", 7)
    topic, payload, qos = link.sent[0]
    doc = json.loads(payload)
    assert topic.endswith("/dev/cam-1/predictions") and qos == 1
    assert doc["type"] == "prediction" and doc["device"] == "cam-1" and doc["schema"] == 2
    assert doc["label"] == "scratch" and doc["ok"] is False and doc["confidence"] == pytest.approx(0.8)
    assert [t["label"] for t in doc["topk"]] == ["scratch", "ok"] and len(doc["topk"]) == 2
    assert doc["model_version"] == "v0003" and doc["frame_index"] == 7 and doc["frame_time"] == 1.7e9 + 7
    assert doc["roi"] == [96, 56, 128, 128] and doc["latency_ms"] == 2.5 and doc["ts"] > 1.6e9
    assert decode_report(payload, "predictions").label == "scratch"  # and it passes the receivers' checks


def test_ok_labels_are_configurable() -> None:
    v, link, _ = make("defects", ok_labels=["ok", "dent"])
    assert [offer(v, x) for x in ("ok", "dent", "scratch")] == [False, False, True]
    assert json.loads(link.sent[0][1])["ok"] is False


def test_rate_limit_is_a_token_bucket() -> None:
    v, link, clock = make("all", max_per_s=2.0)
    assert sum(offer(v, "ok", i) for i in range(10)) == 2  # a burst of one second's worth
    assert v.rate_limited == 8
    clock.t += 0.5
    assert sum(offer(v, "ok", i) for i in range(10)) == 1  # 2/s refills one token in 0.5 s
    clock.t += 60
    assert sum(offer(v, "ok", i) for i in range(10)) == 2  # never more than the burst after a quiet minute
    assert v.published == len(link.sent) == 5


def test_offline_link_drops_and_counts_without_blocking() -> None:
    v, link, _ = make("changes")
    link.is_connected = False
    assert not offer(v, "ok") and not offer(v, "scratch")
    assert v.offline == 2 and not link.sent
    link.is_connected = True
    assert offer(v, "scratch")  # "changes" compares with what was published, so nothing is missed


def test_defect_rate_per_interval() -> None:
    v, _, _ = make("off")
    assert v.defect_rate() is None
    for label in ("ok", "scratch", "ok", "ok"):
        offer(v, label)
    assert v.defect_rate() == 0.25
    offer(v, "dent")
    assert v.defect_rate() == 1.0


def test_bad_rate_refused() -> None:
    with pytest.raises(ValueError, match="max_per_s"):
        Verdicts(PredictionsConfig(max_per_s=0.0), "d", "t", FakeLink())
