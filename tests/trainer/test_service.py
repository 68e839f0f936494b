"""The service on a tiny stream: buffered updates, head growth, gate + promotion, MQTT state and notices."""
from __future__ import annotations

import json
import shutil
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from protocol.messages import Sample, encode_message
from protocol.mqtt import make_client, start
from protocol.topics import Topics
from trainer.export import read_meta
from trainer.registry import Registry
from trainer.service import NotBootstrapped, TrainerService, promoted_topic
from trainer.store import SampleStore

sys.path.insert(0, str(Path(__file__).parent))
from _helpers import bootstrap_state, fill_store, png, service_config  # noqa: E402

pytestmark = pytest.mark.timeout(120)
BASE = ["red", "green", "blue"]


@pytest.fixture(scope="module")
def bootstrapped(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return bootstrap_state(tmp_path_factory.mktemp("boot"), BASE)


_config = service_config


def test_needs_bootstrap(tmp_path: Path) -> None:
    with pytest.raises(NotBootstrapped):
        TrainerService(_config(tmp_path))


def test_a_trainer_behind_its_cameras_buffers_a_bounded_number_of_rows(bootstrapped: Path, tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """When labels arrive faster than updates take them, the rest waits in the store, not in a growing list;
    every training row still reaches the buffer once, in labelling order."""
    from trainer import service

    monkeypatch.setattr(service, "MAX_BUFFERED_BATCHES", 2)
    state = tmp_path / "state"
    shutil.copytree(bootstrapped, state)
    with SampleStore(state / "samples") as st:
        fill_store(st, BASE, 150)
    svc = TrainerService(_config(state), exporter="torchscript")
    try:
        svc.labeller.poll(svc.store)
        seen: list[int] = []
        for _ in range(20):
            svc._fill_buffer()  # noqa: SLF001
            assert len(svc._buffer) <= 2 * 16  # noqa: SLF001
            seen += [int(r.label_seq) for r in svc._buffer]  # type: ignore[arg-type]  # noqa: SLF001
            svc._buffer.clear()  # noqa: SLF001 - as if an update took them all
        training = [int(r.label_seq) for r in svc.store.labelled_after(0, limit=1000, heldout=False)]  # type: ignore[arg-type]
        assert seen == training and len(training) > 4 * 16
    finally:
        svc.stop()


def test_stream_promotes_above_chance_and_grows_the_head(bootstrapped: Path, tmp_path: Path) -> None:
    state = tmp_path / "state"
    shutil.copytree(bootstrapped, state)
    with SampleStore(state / "samples") as st:
        fill_store(st, BASE + ["yellow"], 120)  # yellow: a class the bootstrap never saw
    promoted: list[tuple[str, Path, dict]] = []
    svc = TrainerService(_config(state), exporter="torchscript",
                         on_promoted=lambda v, p, m: promoted.append((v, p, m)))
    try:
        while svc.step():
            pass
        assert svc.buffered < 16  # the remainder waits for B more or T seconds
        assert svc.step(force=True)  # ... or a forced flush
        assert svc.labels == sorted(BASE) + ["yellow"] and svc.model.num_classes == 4
        assert promoted, "no version promoted"
        version, path, metrics = promoted[-1]
        assert metrics["accuracy"] > 0.5  # chance is 0.25
        meta = read_meta(path)
        assert meta.labels == sorted(BASE) + ["yellow"] and meta.parent_version is not None
        n_train = svc.store.count("heldout = 0")
        assert meta.samples_seen == svc.counters["samples_seen"] == n_train  # every training sample, once
        with Registry(state) as reg:
            rec = reg.get(version)
            assert rec.status == "promoted" and rec.labels == meta.labels and "per_class" in rec.metrics
        decisions = [json.loads(x) for x in (state / "decisions.jsonl").read_text().splitlines()]
        assert len(decisions) == svc.counters["updates"]
        assert all("reason" in d and "candidate" in d for d in decisions)
        assert svc.counters["label_seq"] == 120
    finally:
        svc.stop()


def test_a_class_labelled_in_the_loop_gets_an_output_and_is_predicted(bootstrapped: Path, tmp_path: Path) -> None:
    """A new class that starts to arrive mid-stream (as crack does in the demo) gets a head output, is trained on,
    and the version that ships (its ONNX file) recognises it on fresh images, while the old classes stay."""
    import torch

    from trainer.images import preprocess_bytes

    state = tmp_path / "state"
    shutil.copytree(bootstrapped, state)
    with SampleStore(state / "samples") as st:
        fill_store(st, BASE, 48)                                       # the old world first
        fill_store(st, BASE + ["yellow"], 96, seed=2, start=48)        # then yellow is a quarter of the stream
    svc = TrainerService(_config(state), exporter="torchscript")
    try:
        while svc.step():
            pass
        svc.step(force=True)
        assert svc.labels[-1] == "yellow" and svc.model.num_classes == 4
        with Registry(state) as reg:
            ref = reg.latest_promoted()
        assert ref is not None and "yellow" in ref.labels, "no promoted version knows the new class"
        rng = np.random.default_rng(99)
        names = [c for c in BASE + ["yellow"] for _ in range(12)]
        x = torch.stack([preprocess_bytes(png(c, rng), svc.fmt, (16, 16), None) for c in names])
        pred = svc._onnx_predict(ref.version, ref.path, x)  # noqa: SLF001 - what ships, through onnxruntime
        recall = {c: np.mean([p == c for p, n in zip(pred, names) if n == c]) for c in BASE + ["yellow"]}
        assert recall["yellow"] >= 0.75 and min(recall[c] for c in BASE) >= 0.75, recall
    finally:
        svc.stop()


def test_gate_rejects_a_regressing_candidate(bootstrapped: Path, tmp_path: Path) -> None:
    state = tmp_path / "state"
    shutil.copytree(bootstrapped, state)
    with SampleStore(state / "samples") as st:
        fill_store(st, BASE, 96)
    svc = TrainerService(_config(state, **{"eval.max_regression": 0.0}), exporter="torchscript")
    try:
        while svc.step():
            pass
        assert svc.last_decision["candidate"]["accuracy"] > 0.5
        with Registry(state) as reg:
            before = len(reg.list())
        import torch
        with torch.no_grad():  # sabotage the model: it now predicts one class for everything
            svc.model.head.weight.zero_()
            svc.model.head.bias.copy_(torch.tensor([5.0, 0.0, 0.0]))
        d = svc.evaluate_and_maybe_promote()
        # a one-class model is refused before any comparison (evaluate.one_class_reason), whatever the baseline
        assert d["promote"] is False and "never promoted: the candidate predicts one class" in d["reason"], d
        with Registry(state) as reg:
            assert len(reg.list()) == before
    finally:
        svc.stop()


def test_over_mqtt_state_and_promotion_notice(bootstrapped: Path, tmp_path: Path, mosquitto_broker,
                                              topic_prefix: str) -> None:
    state = tmp_path / "state"
    shutil.copytree(bootstrapped, state)
    t = Topics(topic_prefix)
    cfg = _config(state, **{"mqtt.url": mosquitto_broker.url, "mqtt.topic_prefix": topic_prefix,
                            "mqtt.client_id": f"trainer-{topic_prefix[-6:]}", "update.wait_s": 0.5,
                            "poll_s": 0.05})
    hook = threading.Event()
    svc = TrainerService(cfg, exporter="torchscript", on_promoted=lambda v, p, m: hook.set()).start()
    seen: dict[str, bytes] = {}
    sub = make_client(f"watch-{topic_prefix[-6:]}", mosquitto_broker.url)
    sub.on_message = lambda c, u, m: seen.__setitem__(m.topic, m.payload)
    start(sub)
    sub.subscribe([(t.trainer_state(), 1), (promoted_topic(t), 1)])
    pub = make_client(f"edge-{topic_prefix[-6:]}", mosquitto_broker.url)
    start(pub)
    try:
        rng = np.random.default_rng(5)
        for i in range(40):
            lab = BASE[i % 3]
            s = Sample(sample_id=f"m{i}", model_version="v0001", topk=[(lab, 0.6), ("red", 0.4)], uncertainty=0.2,
                       uncertainty_kind="margin", p_select=0.5, reason="uncertain", frame_index=i, width=16,
                       height=16, truth=lab)
            pub.publish(t.samples("cam1"), encode_message(s, png(lab, rng), device="cam1", seq=i,
                                                          content_type="image/png"), qos=1)
        assert hook.wait(60), "no promotion"
        deadline = time.monotonic() + 10
        # the bootstrap version is announced at connect; wait for the promotion's notice
        while json.loads(seen.get(promoted_topic(t), b'{"version": ""}'))["version"] < "v0002" \
                and time.monotonic() < deadline:
            time.sleep(0.02)
        notice = json.loads(seen[promoted_topic(t)])
        assert notice["version"] >= "v0002" and Path(notice["path"]).exists()
        assert json.loads(seen[t.trainer_state()])["state"] == "online"  # plain JSON, as any tool reads it
    finally:
        svc.stop()
        time.sleep(0.2)
        sub.disconnect()
        sub.loop_stop()
        pub.disconnect()
        pub.loop_stop()
    assert json.loads(seen[t.trainer_state()])["state"] == "offline"


def test_a_distilling_strategy_on_a_memory_without_logits_says_so(bootstrapped: Path, tmp_path: Path,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    """iw-er's default distils replayed logits; the bootstrap's memory has none, so the service says the term is
    off instead of training without it in silence (README, Adaptation #20)."""
    state = tmp_path / "state"
    shutil.copytree(bootstrapped, state)
    with caplog.at_level("WARNING", logger="trainer.service"):
        svc = TrainerService(_config(state), exporter="torchscript")
    try:
        assert svc.strategy.name == "iw-er" and not svc.strategy.memory.store_logits
        assert any("distillation is off" in r.getMessage() for r in caplog.records)
    finally:
        svc.stop()
