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
import torch

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
    # 6 epochs, not the helper's 2: iw-er distils towards v0001's logits, and after 2 epochs v0001 is at chance
    # (logits ~0.1): at these tests' lr 0.05 the pull towards "knows nothing" collapsed the updates to one class
    return bootstrap_state(tmp_path_factory.mktemp("boot"), BASE, epochs=6)


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
        assert svc.counters["samples_seen"] == n_train  # every training sample, once
        with Registry(state) as reg:
            rec = reg.get(version)
            assert rec.status == "promoted" and rec.labels == meta.labels and "per_class" in rec.metrics
        # the shipped version says how many it had seen (the last update's candidate may have been refused)
        assert 0 < meta.samples_seen == rec.samples_seen <= n_train
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


def test_paired_new_class_applies_while_the_deployed_version_does_not_know_the_class(bootstrapped: Path,
                                                                                      tmp_path: Path) -> None:
    """``eval.paired: new-class`` reaches the gate with the deployed version's own label list: the paired test is
    named on the recent slice exactly while the deployed version lacks ``yellow`` and ``yellow`` is held out there."""
    state = tmp_path / "state"
    shutil.copytree(bootstrapped, state)
    with SampleStore(state / "samples") as st:
        fill_store(st, BASE, 48)
        fill_store(st, BASE + ["yellow"], 96, seed=2, start=48)
    svc = TrainerService(_config(state, **{"eval.paired": "new-class", "eval.min_recent": 5}), exporter="torchscript")
    try:
        while svc.step():
            pass
        svc.step(force=True)
    finally:
        svc.stop()
    decisions = [json.loads(x) for x in (state / "decisions.jsonl").read_text().splitlines()]
    with Registry(state) as reg:
        knows = {r.version: "yellow" in r.labels for r in reg.list()}
    judged = [d for d in decisions if "recent" in d and "best" in d]
    assert judged, decisions
    for d in judged:  # against a version that knows yellow: never; against one that does not: only when it is there
        allowed = {None} if knows[d["best"]["version"]] else {None, "new class yellow"}
        assert d["recent"].get("paired") in allowed, (d["best"]["version"], d["recent"])
    assert any(d["recent"].get("paired") == "new class yellow" for d in judged), [d["recent"] for d in judged]
    let_by = sum(d["promote"] and "p_worse" in d["recent"] for d in judged)
    assert svc.counters["paired_promotions"] == let_by, (svc.counters, [d["recent"] for d in judged])


def test_weighted_recent_slice_reaches_the_gate_with_each_uploads_p_select(bootstrapped: Path, tmp_path: Path) -> None:
    """``eval.weighted``: the gate's recent slice is judged with min(1/p_select, w_max) per held-out upload, from
    the store's own p_select (here 0.5 for the first 72 uploads, 0.05 after: weights 2 and 10)."""
    from _helpers import incoming

    state = tmp_path / "state"
    shutil.copytree(bootstrapped, state)
    rng = np.random.default_rng(3)
    with SampleStore(state / "samples") as st:
        st.add_batch([incoming(f"s{i:05d}", BASE[i % 3], rng, seq=i, p_select=0.5 if i < 72 else 0.05)
                      for i in range(144)])
    svc = TrainerService(_config(state, **{"eval.weighted": True, "eval.min_recent": 5}), exporter="torchscript")
    try:
        while svc.step():
            pass
        svc.step(force=True)
        held = svc.heldout_set()
        assert sorted(set(held.p_select)) == [0.05, 0.5] and len(held.p_select) == held.n_uploaded
        assert svc._upload_weights(held)[-1] == 10.0 and svc._upload_weights(held)[0] == 2.0  # noqa: SLF001
    finally:
        svc.stop()
    judged = [json.loads(x) for x in (state / "decisions.jsonl").read_text().splitlines()]
    judged = [d for d in judged if "recent" in d]
    assert judged and all(d["recent"]["weighted"] is True and "candidate_unweighted" in d["recent"] for d in judged)


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


def _model_logits(state: Path, x: torch.Tensor) -> torch.Tensor:
    """The checkpointed model's logits for ``x`` (eval mode), from the state on disk."""
    from trainer.checkpoint import load_checkpoint

    ckpt = load_checkpoint(state)
    model = ckpt.build_model()
    ckpt.restore(model)
    model.eval()
    with torch.no_grad():
        return model(x)


def test_bootstrap_stores_the_models_logits_when_the_strategy_distils(bootstrapped: Path) -> None:
    """iw-er's default distils: the bootstrap's memory holds the bootstrap model's logits for every row it keeps,
    the targets DER stores (README, Adaptation #20: it wrote none, and distillation never ran in the loop)."""
    from trainer.checkpoint import load_checkpoint
    from trainer.replay import ReplayMemory

    mem = ReplayMemory()
    mem.load_state_dict(load_checkpoint(bootstrapped).replay_state)
    assert mem.store_logits and len(mem) > 0 and mem.rows_without_logits == 0
    batch = mem.sample(len(mem))
    assert batch.logit_mask.all() and batch.logits.shape[1] == len(BASE)
    torch.testing.assert_close(batch.logits, _model_logits(bootstrapped, batch.x))


@pytest.fixture(scope="module")
def bootstrapped_without_logits(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A state whose memory stores no logits: bootstrapped for a strategy that does not distil (as every bootstrap
    before the fix was written)."""
    return bootstrap_state(tmp_path_factory.mktemp("boot-nolog"), BASE, strategy_settings={"distill": 0.0})


def test_a_memory_without_logits_gets_the_restored_models_at_start(bootstrapped_without_logits: Path, tmp_path: Path,
                                                                  caplog: pytest.LogCaptureFixture,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """A distilling trainer on a logit-less memory fills the targets in from the restored model once, says so at
    INFO and counts it, and its updates then carry the distillation term; the filled memory is checkpointed, so
    `trainer status` shows it and the next start fills nothing."""
    import msgspec

    from trainer.checkpoint import load_checkpoint
    from trainer.cli import main
    from trainer.strategies.base import LabelledBatch

    state = tmp_path / "state"
    shutil.copytree(bootstrapped_without_logits, state)
    assert not load_checkpoint(state).replay_state["config"]["store_logits"]
    with caplog.at_level("INFO", logger="trainer.service"):
        svc = TrainerService(_config(state), exporter="torchscript")
    try:
        mem = svc.strategy.memory
        assert mem.store_logits and mem.rows_without_logits == 0
        assert svc.counters["distill_targets_filled"] == len(mem) > 0
        assert any("without logits" in r.getMessage() and r.levelname == "INFO" for r in caplog.records)
        assert not any(r.levelname == "WARNING" for r in caplog.records)
        batch = mem.sample(len(mem))
        torch.testing.assert_close(batch.logits, _model_logits(state, batch.x))
        with SampleStore(state / "samples") as st:
            fill_store(st, BASE, 40)
        assert svc.step(force=True)  # a real update: the model moves away from the stored targets
        replay = mem.sample(16, np.random.default_rng(0))
        empty = LabelledBatch(replay.x[:0], replay.y[:0])  # the loss of a replay-only step, with and without the term
        with torch.no_grad():
            with_term = float(svc.strategy.step_loss(empty, replay))
            cfg = svc.strategy.config
            svc.strategy.config = msgspec.structs.replace(cfg, distill=0.0)
            without = float(svc.strategy.step_loss(empty, replay))
            svc.strategy.config = cfg
        assert with_term > without + 1e-6, (with_term, without)
    finally:
        svc.stop()
    capsys.readouterr()
    assert main(["status", "--state-dir", str(state)]) == 0
    out = capsys.readouterr().out
    assert "filled in from the model at a start" in out and "distillation targets" in out
    caplog.clear()
    with caplog.at_level("INFO", logger="trainer.service"):
        svc = TrainerService(_config(state), exporter="torchscript")
    svc.stop()
    assert not any("without logits" in r.getMessage() for r in caplog.records)


def test_a_memory_whose_targets_cannot_be_computed_says_distillation_is_off(
        bootstrapped_without_logits: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The one case that still cannot distil: the restored model's logits are not finite. Those rows get no target
    (a NaN target would poison every later step), and the trainer says that distillation is off for them."""
    from trainer.checkpoint import load_checkpoint, save_checkpoint
    from trainer.replay import ReplayMemory

    state = tmp_path / "state"
    shutil.copytree(bootstrapped_without_logits, state)
    ckpt = load_checkpoint(state)
    model = ckpt.build_model()
    ckpt.restore(model)
    with torch.no_grad():
        model.head.bias.fill_(float("nan"))
    mem = ReplayMemory()
    mem.load_state_dict(ckpt.replay_state)
    save_checkpoint(state, model=model, arch=ckpt.arch, labels=ckpt.labels, optimizer=None, replay=mem,
                    counters=ckpt.counters, extra=ckpt.extra)
    with caplog.at_level("INFO", logger="trainer.service"):
        svc = TrainerService(_config(state), exporter="torchscript")
    try:
        assert svc.strategy.memory.rows_without_logits == len(svc.strategy.memory) > 0
        assert svc.counters["distill_targets_filled"] == 0
        assert any("distillation is off" in r.getMessage() and r.levelname == "WARNING" for r in caplog.records)
    finally:
        svc.stop()


def _nothing_due(svc: TrainerService) -> None:
    """As if no more labels had arrived: the buffer empty and the store read to its end, so no update is due."""
    svc._buffer.clear()  # noqa: SLF001
    svc._fetched_seq = 10**9  # noqa: SLF001


def test_idle_rehearsal_is_bounded_gated_checkpointed_and_counted(bootstrapped: Path, tmp_path: Path) -> None:
    """With update.rehearse_steps, the trainer spends the time it waits for labels on replay-only steps: at most
    rehearse_rounds rounds after each update, each one changing the model, written to the checkpoint and judged by
    the gate like an update; nothing new is trained twice (samples_seen, label_seq unchanged)."""
    from trainer.checkpoint import load_checkpoint

    state = tmp_path / "state"
    shutil.copytree(bootstrapped, state)
    with SampleStore(state / "samples") as st:
        fill_store(st, BASE + ["yellow"], 40)
    svc = TrainerService(_config(state, **{"update.rehearse_steps": 4, "update.rehearse_rounds": 2}),
                         exporter="torchscript")
    try:
        assert svc.step() and svc.last_work == {"kind": "update", "steps": 5}
        seen, seq, updates = svc.counters["samples_seen"], svc.counters["label_seq"], svc.counters["updates"]
        decisions = len((state / "decisions.jsonl").read_text().splitlines())
        _nothing_due(svc)
        before = [p.detach().clone() for p in svc.model.parameters()]
        assert svc.step() and svc.last_work == {"kind": "rehearsal", "steps": 4}
        assert any(not torch.equal(a, b) for a, b in zip(before, svc.model.parameters()))
        assert svc.step() and svc.counters["rehearsals"] == 2 and svc.counters["rehearsal_steps"] == 8
        assert not svc.step(), "more rounds than update.rehearse_rounds"
        assert (svc.counters["samples_seen"], svc.counters["label_seq"], svc.counters["updates"]) == (seen, seq, updates)
        assert len((state / "decisions.jsonl").read_text().splitlines()) == decisions + 2  # each round gated
        # each round on the timeline too, so a reader knows which update a version it promotes holds
        timeline = [json.loads(line) for line in (state / "timeline.jsonl").read_text().splitlines()]
        assert [(r.get("rehearsal"), r["update"], r["samples"]) for r in timeline[-2:]] == [(1, updates, []), (2, updates, [])]
        assert all(r["start"] <= r["trained"] for r in timeline[-2:]) and "rehearsal" not in timeline[-3]
        ck = load_checkpoint(state)
        assert ck is not None and ck.counters["rehearsals"] == 2
        assert all(torch.equal(ck.model_state[k], v) for k, v in svc.model.state_dict().items())
        from trainer.metrics import TrainerCollector

        names = {m.name: m for m in TrainerCollector(svc).collect()}
        assert names["edgeloop_trainer_rehearsal_steps"].samples[0].value == 8
    finally:
        svc.stop()


def test_rehearsal_is_off_by_default_and_a_failed_round_is_undone(bootstrapped: Path, tmp_path: Path) -> None:
    state = tmp_path / "state"
    shutil.copytree(bootstrapped, state)
    with SampleStore(state / "samples") as st:
        fill_store(st, BASE, 48)
    svc = TrainerService(_config(state), exporter="torchscript")
    try:
        assert svc.config.update.rehearse_steps == 0
        assert svc.step(force=True)
        _nothing_due(svc)
        assert not svc.step() and svc.counters["rehearsals"] == 0  # off: an idle trainer stays idle
    finally:
        svc.stop()
    svc = TrainerService(_config(state, **{"update.rehearse_steps": 3}), exporter="torchscript")
    try:
        assert svc.step(force=True)
        _nothing_due(svc)
        real = svc.strategy.rehearse

        def poison(steps):
            out = real(steps)
            with torch.no_grad():
                next(svc.model.parameters()).fill_(float("nan"))
            return out

        svc.strategy.rehearse = poison  # type: ignore[method-assign]
        assert svc.step() and svc.last_work["failed"]  # type: ignore[index]
        assert svc.counters["rehearsals_failed"] == 1 and svc.counters["rehearsals"] == 0
        assert all(bool(torch.isfinite(p).all()) for p in svc.model.parameters())  # back to the checkpoint
        assert not svc.step(), "rehearsal goes on after a failed round"
    finally:
        svc.stop()


def _until_promoted(bootstrapped: Path, state: Path, **overrides: object) -> tuple[TrainerService, list]:
    """A service with these settings on a copy of the bootstrap and 120 samples, stepped until it promotes a
    version; the caller stops it. ``promoted`` holds (version, path, meta) per promotion."""
    shutil.copytree(bootstrapped, state)
    with SampleStore(state / "samples") as st:
        fill_store(st, BASE, 120)
    promoted: list[tuple[str, Path, dict]] = []
    svc = TrainerService(_config(state, **overrides), exporter="torchscript",
                         on_promoted=lambda v, p, m: promoted.append((v, p, m)))
    try:
        while svc.step(force=True):
            if promoted and svc.last_decision and svc.last_decision.get("promote"):
                break
        assert promoted, "nothing promoted"
    except BaseException:
        svc.stop()
        raise
    return svc, promoted


def test_with_strategy_ema_the_gate_judges_and_the_version_ships_the_average(bootstrapped: Path, tmp_path: Path) -> None:
    """strategy.ema: what is gated and exported is the moving average of the weights (the ONNX file predicts what
    the average predicts, which is not what the learner's own weights predict), and the checkpoint carries it."""
    from trainer.checkpoint import load_checkpoint
    from trainer.evaluate import onnx_argmax, onnx_session, predict

    state = tmp_path / "state"
    svc, promoted = _until_promoted(bootstrapped, state, **{"strategy.ema": 0.8, "update.lr": 0.1})
    try:
        cand = svc.strategy.candidate()
        assert cand is not svc.model
        x = svc.heldout_set().x
        meta = read_meta(promoted[-1][1])
        sess = onnx_session(promoted[-1][1])
        shipped = sess.run([meta.output_name], {meta.input_name: x.numpy()})[0]
        with torch.no_grad():
            svc.model.eval()
            average, weights = cand(x).numpy(), svc.model(x).numpy()
        assert np.allclose(shipped, average, atol=1e-4) and not np.allclose(shipped, weights, atol=1e-3)
        assert np.array_equal(np.asarray(onnx_argmax(sess, meta.input_name, meta.output_name, x.numpy())),
                              predict(cand, x))
        ck = load_checkpoint(state)
        assert ck is not None and ck.extra["strategy"]["ema"] is not None and meta.labels == sorted(BASE)
    finally:
        svc.stop()


def test_with_strategy_tta_the_version_ships_the_eight_view_mean(bootstrapped: Path, tmp_path: Path) -> None:
    """strategy.tta through the real service: the gate judges the candidate asked its eight views, the registered
    ONNX file answers as that candidate does, and a turned or mirrored input gets the same answer."""
    from trainer.evaluate import onnx_session, predict
    from trainer.nets import DihedralMean

    svc, promoted = _until_promoted(bootstrapped, tmp_path / "state",
                                    **{"strategy.augment": "dihedral", "strategy.tta": True})
    try:
        cand = svc.strategy.candidate()
        assert isinstance(cand, DihedralMean) and cand.model is svc.model
        x = svc.heldout_set().x
        meta = read_meta(promoted[-1][1])
        sess = onnx_session(promoted[-1][1])
        shipped = sess.run([meta.output_name], {meta.input_name: x.numpy()})[0]
        turned = sess.run([meta.output_name], {meta.input_name: torch.rot90(x, 1, dims=(2, 3)).contiguous().numpy()})[0]
        mirrored = sess.run([meta.output_name], {meta.input_name: torch.flip(x, dims=(3,)).contiguous().numpy()})[0]
        with torch.no_grad():
            cand.eval()
            assert np.allclose(shipped, cand(x).numpy(), atol=1e-4)
        assert np.allclose(shipped, turned, atol=1e-4) and np.allclose(shipped, mirrored, atol=1e-4)
        assert np.array_equal(shipped.argmax(1), predict(cand, x))
    finally:
        svc.stop()


def test_with_frozen_blocks_the_gate_reuses_their_outputs_and_ships_what_it_judged(bootstrapped: Path,
                                                                                 tmp_path: Path) -> None:
    """strategy.frozen_blocks through the real service: the first blocks keep the bootstrap's weights, the gate's
    predictions are the shipped ONNX file's, and later evaluations run the frozen blocks only on new inputs."""
    from trainer.checkpoint import load_checkpoint
    from trainer.evaluate import onnx_argmax, onnx_session, predict

    boot = load_checkpoint(bootstrapped)
    assert boot is not None
    svc, promoted = _until_promoted(bootstrapped, tmp_path / "state", **{"strategy.frozen_blocks": 2})
    try:
        held = svc.heldout_set()  # the model just promoted is the one the gate judged
        cached = svc._prefix_cache.predict(svc.strategy.candidate(), 2, held.x, held.keys)
        meta = read_meta(promoted[-1][1])
        shipped = onnx_argmax(onnx_session(promoted[-1][1]), meta.input_name, meta.output_name, held.x.numpy())
        assert np.array_equal(np.asarray(shipped), cached) and np.array_equal(cached, predict(svc.model, held.x))
        seen, computed, evaluations = set(held.keys), svc._prefix_cache.computed, svc.counters["evaluations"]
        fill_store(svc.store, BASE, 60, seed=2, start=1000)
        while svc.counters["evaluations"] < evaluations + 2 and svc.step(force=True):
            pass
        new = [k for k in svc.heldout_set().keys if k not in seen]
        assert svc.counters["evaluations"] == evaluations + 2 and new
        assert svc._prefix_cache.computed - computed == len(new)  # the frozen blocks ran on the new inputs only
        frozen = svc.model.features[:2].state_dict()
        assert all(torch.equal(v, boot.model_state[f"features.{k}"]) for k, v in frozen.items())
        assert not torch.equal(svc.model.features[3][0].weight, boot.model_state["features.3.0.weight"])
    finally:
        svc.stop()
