"""The trainer's /metrics (scraped and parsed with prometheus_client's parser), /healthz, the chance-level
warning, and the bounded, incrementally scored held-out set."""
from __future__ import annotations

import shutil
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import torch
from prometheus_client.parser import text_string_to_metric_families

from trainer.cli import main as trainer_cli
from trainer.evaluate import chance_check
from trainer.service import TrainerService

sys.path.insert(0, str(Path(__file__).parent))
from _helpers import bootstrap_state, fill_store, service_config  # noqa: E402

pytestmark = pytest.mark.timeout(240)
BASE = ["red", "green", "blue"]


@pytest.fixture(scope="module")
def bootstrapped(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return bootstrap_state(tmp_path_factory.mktemp("boot"), BASE)


@pytest.fixture()
def state(bootstrapped: Path, tmp_path: Path) -> Path:
    shutil.copytree(bootstrapped, tmp_path / "state")
    return tmp_path / "state"


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def test_metrics_are_scraped_and_parsed_and_healthz_fails_when_the_loop_stalls(state: Path) -> None:
    fill_store(SampleStoreOf(state), BASE, 40)
    svc = TrainerService(service_config(state, **{"metrics.enabled": True, "metrics.port": 0,
                                                  "metrics.loop_stall_s": 30}), exporter="torchscript")
    svc.open()
    try:
        while svc.step():
            pass
        svc._housekeeping()
        assert svc.metrics_server is not None and svc.metrics_server.host == "127.0.0.1"
        status, text = _get(svc.metrics_server.url + "/metrics")
        assert status == 200
        fams = {f.name: f for f in text_string_to_metric_families(text)}
        want = {"edgeloop_trainer_store_samples", "edgeloop_trainer_samples_rejected", "edgeloop_trainer_labels",
                "edgeloop_trainer_label_queue_depth", "edgeloop_trainer_labels_skipped_no_truth",
                "edgeloop_trainer_updates", "edgeloop_trainer_promotions", "edgeloop_trainer_gate_decisions",
                "edgeloop_trainer_paired_promotions", "edgeloop_trainer_selection_hint_labels",
                "edgeloop_trainer_selection_hint_changes", "edgeloop_trainer_quarantined_batches", "edgeloop_trainer_degraded", "edgeloop_trainer_loop_age_seconds",
                "edgeloop_trainer_deployed_at_chance"}
        assert want <= set(fams), want - set(fams)
        value = {s.name: s.value for f in fams.values() for s in f.samples if not s.labels}
        assert value["edgeloop_trainer_updates_total"] == svc.counters["updates"] >= 1
        assert value["edgeloop_trainer_store_samples"] == 40
        mem = svc.strategy.memory
        assert value["edgeloop_trainer_replay_rows"] == len(mem) > 0
        assert value["edgeloop_trainer_replay_rows_without_logits"] == mem.rows_without_logits
        assert value["edgeloop_trainer_distill_targets_filled_total"] == svc.counters.get("distill_targets_filled", 0)
        decisions = {s.labels["outcome"]: s.value for s in fams["edgeloop_trainer_gate_decisions"].samples}
        assert decisions["promote"] + decisions["keep"] == svc.counters["evaluations"]
        assert value["edgeloop_trainer_paired_promotions_total"] == svc.counters.get("paired_promotions", 0) == 0
        assert value["edgeloop_trainer_selection_hint_labels"] == 0 == value["edgeloop_trainer_selection_hint_changes_total"]
        assert {s.labels["part"] for s in fams["edgeloop_trainer_degraded"].samples} == {"ingest", "checkpoint", "learner"}
        status, body = _get(svc.metrics_server.url + "/healthz")
        assert status == 200 and '"status": "ok"' in body
        svc.last_loop = time.monotonic() - 120  # the update loop has not come round for two minutes
        status, body = _get(svc.metrics_server.url + "/healthz")
        assert status == 503 and "update loop stalled" in body
        req = urllib.request.Request(svc.metrics_server.url + "/metrics", method="POST", data=b"x")
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(req, timeout=10)
        assert e.value.code == 405
    finally:
        svc.stop()


def SampleStoreOf(state: Path):  # noqa: N802 - reads like the class it opens
    from trainer.store import SampleStore

    return SampleStore(state / "samples")


def test_a_deployed_model_that_answers_one_class_is_flagged_loudly(state: Path, caplog, capsys) -> None:
    fill_store(SampleStoreOf(state), BASE, 60)
    svc = TrainerService(service_config(state, **{"update.batch": 1000}), exporter="torchscript")
    try:
        svc.step()  # labels everything; nothing is due
        with torch.no_grad():  # a broken model: the head always says class 0
            svc.model.head.weight.zero_()
            svc.model.head.bias.copy_(torch.tensor([50.0] + [0.0] * (len(svc.labels) - 1)))
        broken = svc.promote({"accuracy": 0.0}, None)
        d = svc.evaluate_and_maybe_promote()
        assert d["deployed"]["at_chance"] and d["deployed"]["classes_predicted"] == 1
        assert svc.model_health["version"] in (broken, d.get("version"))
        assert "IS AT CHANCE LEVEL" in caplog.text
        svc._write_health()
        assert trainer_cli(["status", "--state-dir", str(state)]) == 0
        assert "is at chance level" in capsys.readouterr().out
    finally:
        svc.stop()


def test_chance_check() -> None:
    truth = ["ok"] * 19 + ["scratch"]
    assert chance_check(truth, ["ok"] * 20)["at_chance"]  # 95 % and useless
    good = chance_check(truth * 2, truth * 2)
    assert not good["at_chance"] and good["accuracy"] == 1.0 and good["chance"] == 0.95
    assert not chance_check(["a", "b"], ["a", "a"])["at_chance"]  # too few to say


def test_heldout_set_is_bounded_and_the_deployed_version_scored_once_per_sample(state: Path) -> None:
    fill_store(SampleStoreOf(state), BASE, 80)
    svc = TrainerService(service_config(state, **{"update.batch": 1000, "eval.max_heldout": 10}),
                         exporter="torchscript")
    runs: list[int] = []
    real = svc._onnx_predict
    svc._onnx_predict = lambda v, p, x: (runs.append(len(x)), real(v, p, x))[1]  # type: ignore[method-assign]
    try:
        svc.step()
        held = svc.heldout_set()
        assert held.n_uploaded == 10 and svc.store.count("heldout = 1") == 20  # the newest 10 of 20
        n_boot = len(held.names) - 10
        svc.evaluate_and_maybe_promote()
        promoted = svc.last_decision.get("version")
        svc.evaluate_and_maybe_promote()
        if promoted is None:  # same deployed version: nothing scored again
            assert runs == [n_boot + 10]
        fill_store(SampleStoreOf(state), BASE, 16, start=1000)
        svc.step()
        runs.clear()
        svc.evaluate_and_maybe_promote()
        new = svc.heldout_set().keys
        assert len(svc._heldout_cache) == 10 and len(new) == n_boot + 10
        if svc.last_decision.get("version") is None and promoted is None:
            assert runs == [4]  # only the held-out samples it had not seen
    finally:
        svc.stop()
