"""``edgeloop deploy run`` as a process: /healthz answers, SIGHUP re-reads the config file (mode applies at once,
other keys are named as needing a restart), SIGTERM stops it cleanly; and /healthz fails while the controller
loop is stalled, and recovers."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from conftest import wait_for  # tests/deploy/conftest.py
from deploy.broker import free_port

pytestmark = pytest.mark.timeout(120)
ROOT = Path(__file__).resolve().parents[2]


def _health(url: str) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(url + "/healthz", timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())
    except OSError:
        return 0, {}


def test_sighup_reloads_the_config_and_sigterm_stops_cleanly(mosquitto_broker, topic_prefix, keys,
                                                             tmp_path) -> None:
    port = free_port()
    cfg = tmp_path / "deploy.yaml"
    cfg.write_text(f"mode: auto\nlog_level: INFO\nmetrics:\n  port: {port}\n")
    log = tmp_path / "deploy.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "deploy.cli", "deploy", "run", "--config", str(cfg), "--state-dir",
             str(tmp_path / "deploy"), "--key", str(keys["priv"]), "--broker", mosquitto_broker.url, "--prefix",
             topic_prefix], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: _health(url)[0] == 200, 30, "the service's /healthz")
        assert _health(url)[1]["mode"] == "auto"
        cfg.write_text(f"mode: approve\nlog_level: INFO\ntick_s: 0.5\nmetrics:\n  port: {port}\n")
        proc.send_signal(signal.SIGHUP)
        wait_for(lambda: _health(url)[1].get("mode") == "approve", 10, "the reloaded mode")
        text = log.read_text()
        assert "config reloaded: mode='approve'" in text and "tick_s changed but only apply after a restart" in text
        cfg.write_text("mode: [broken\n")  # a broken file changes nothing and says why
        proc.send_signal(signal.SIGHUP)
        wait_for(lambda: "config not reloaded" in log.read_text(), 10, "the refusal")
        assert proc.poll() is None and _health(url)[1]["mode"] == "approve"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_healthz_fails_while_the_controller_loop_is_stalled(mosquitto_broker, topic_prefix, keys, tmp_path) -> None:
    from deploy.service import DeployService, DeployServiceConfig, MetricsSettings, MqttSettings

    cfg = DeployServiceConfig(state_dir=str(tmp_path / "deploy"), signing_key=str(keys["priv"]), tick_s=0.05,
                              mqtt=MqttSettings(url=mosquitto_broker.url, topic_prefix=topic_prefix),
                              metrics=MetricsSettings(port=0, stall_s=1.0))
    svc = DeployService(cfg).start()
    try:
        assert _health(svc.metrics_url)[0] == 200
        with svc.ctl._lock:  # a tick that never ends (a wedged SQLite, a deadlock): the loop makes no step
            wait_for(lambda: _health(svc.metrics_url)[0] == 503, 10, "/healthz to fail")
            code, body = _health(svc.metrics_url)
            assert body["status"] == "unhealthy" and "no controller tick completed" in body["reason"]
        wait_for(lambda: _health(svc.metrics_url)[0] == 200, 10, "/healthz to recover")
        assert _health(svc.metrics_url)[1]["loop_age_seconds"]["controller"] < 1.0
    finally:
        svc.stop()
