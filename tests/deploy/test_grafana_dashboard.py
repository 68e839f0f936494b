"""deploy/grafana/edgeloop.json: valid Grafana JSON whose rollout panels query metrics the controller exports
(so a renamed metric cannot silently blank a panel), and whose camera and trainer panels query the names listed
here (edge/metrics.py and the trainer's metrics own those; keep this list in step with them)."""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "edgeloop.json"
#: What the dashboard reads from the other processes (edgeloop_edge_*: edge/metrics.py; edgeloop_trainer_*: the
#: trainer's metrics), by the names of docs/CONTRACTS.md "Metrics".
OTHERS = {
    "edgeloop_edge_fps", "edgeloop_edge_inference_latency_seconds_bucket", "edgeloop_edge_frames_total",
    "edgeloop_edge_uploads_total", "edgeloop_edge_outbox_depth", "edgeloop_edge_outbox_dropped_total",
    "edgeloop_edge_samples_not_stored_total", "edgeloop_edge_outbox_paused", "edgeloop_edge_model_info",
    "edgeloop_edge_predictions_published_total", "edgeloop_edge_defects_total", "edgeloop_edge_mqtt_connected",
    "edgeloop_trainer_samples_stored_total", "edgeloop_trainer_samples_rejected_total", "edgeloop_trainer_labels_total",
    "edgeloop_trainer_queue_depth", "edgeloop_trainer_updates_total", "edgeloop_trainer_promotions_total",
    "edgeloop_trainer_gate_decisions_total", "process_resident_memory_bytes",
}


class _Service:
    """What DeployCollector reads of a running service, around a controller that never connects."""

    def __init__(self, ctl: Any) -> None:
        self.ctl, self.fleet, self.intake = ctl, "default", None

    def loop_ages(self) -> dict[str, float]:
        return {"controller": 0.1, "feeder": 0.2}


def _exported(tmp_path: Path, keys: dict[str, Path]) -> set[str]:
    from deploy.controller import Controller
    from deploy.metrics import DeployCollector

    ctl = Controller("mqtt://127.0.0.1:1", keys["priv"], tmp_path / "ctl")
    try:
        reg = CollectorRegistry()
        reg.register(DeployCollector(_Service(ctl)))  # type: ignore[arg-type]
        text = generate_latest(reg).decode()
    finally:
        ctl.store.close()
    suffix = {"counter": "_total", "info": "_info", "histogram": "_bucket"}
    # families without a sample yet (no device, no rejection) still declare their name and type
    return {f.name + suffix.get(f.type, "") for f in text_string_to_metric_families(text)} | {
        "process_resident_memory_bytes"}


def _queried(dash: dict[str, Any]) -> set[str]:
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    return {m for e in exprs for m in re.findall(r"\b((?:edgeloop|process)_[a-z0-9_]+)\b", e)}


def test_the_dashboard_is_grafana_json_with_a_datasource_variable() -> None:
    dash = json.loads(DASHBOARD.read_text())
    assert dash["uid"] == "edgeloop-overview" and dash["schemaVersion"] >= 36
    assert {v["name"] for v in dash["templating"]["list"]} == {"datasource", "edge_job", "trainer_job", "deploy_job"}
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    for p in dash["panels"]:
        for t in p.get("targets", []):
            assert t["datasource"]["uid"] == "${datasource}"


def test_every_rollout_panel_queries_a_metric_the_controller_exports(tmp_path: Path, keys: dict[str, Path]) -> None:
    queried = _queried(json.loads(DASHBOARD.read_text()))
    deploy = {m for m in queried if m.startswith("edgeloop_deploy_")}
    assert len(deploy) >= 20
    assert deploy <= _exported(tmp_path, keys), deploy - _exported(tmp_path, keys)
    assert queried - deploy == OTHERS
