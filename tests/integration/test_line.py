"""The production shape, as separate processes on loopback with no demo code: ``edgeloop broker --pki`` (mosquitto
with TLS, client certificates and the generated ACL; every process with its own identity),
``edgeloop trainer run`` (oracle labels), ``edgeloop deploy run`` and two ``edgeloop edge`` sim cameras in their
own state directories. A version the trainer promotes reaches both cameras by itself (mode auto); then, with the
rollout service restarted in mode approve, the next promoted version waits until ``edgeloop rollout approve``
and then reaches both cameras. Everything is read as an outside tool would: the CLI's JSON, the controller's
``/metrics`` parsed by ``prometheus_client``'s parser, ``/healthz``.

Where to add the readable-topics checks (issue 14 items 2 and 3): :func:`outside_view` collects what a stranger
sees; add the cameras' verdict JSON (``dev/+/predictions``) and stats JSON (``dev/+/stats``) read with
``mosquitto_sub`` and ``json.loads`` there, and assert on them in :func:`test_a_promoted_version_reaches_both_cameras`.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from bench.procs import Procs
from deploy.broker import find_mosquitto, free_port
from deploy.pki import init_pki

pytestmark = [pytest.mark.timeout(900), pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]
ROI = "96,56,128,128"  # sim:digits' label card at 320x240

if find_mosquitto() is None:
    pytest.skip("mosquitto is not installed", allow_module_level=True)


def check(procs: Procs) -> None:
    """Fail with the log's tail if a process of the line has exited."""
    for name in procs.dead():
        raise AssertionError(f"{name} exited with {procs.procs[name].returncode}:\n{procs.tail(name, 40)}")


def wait_for(cond: Callable[[], Any], timeout: float, what: str, procs: Procs | None = None) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        if procs is not None:
            check(procs)
        got = cond()
        if got:
            return got
        if time.monotonic() > deadline:
            logs = "" if procs is None else "\n".join(f"--- {n}\n{procs.tail(n, 15)}" for n in procs.procs)
            raise AssertionError(f"timed out waiting for {what}\n{logs}")
        time.sleep(0.5)


def cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "deploy.cli", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "PYTHONPATH": str(ROOT)})


def _render_bootstrap_set(folder: Path) -> None:
    """ROI crops of sim:digits frames from seeds no camera uses (what an operator's labelled set would be)."""
    import cv2

    from edge.sources.sim import open_sim

    for seed in (901, 902):
        src = open_sim(f"sim:digits?seed={seed}")
        x, y, w, h = src.roi
        for i in range(300):
            f = src.frame_at(i * 3)
            (folder / str(f.truth)).mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(folder / str(f.truth) / f"{seed}_{i}.png"), f.image[y:y + h, x:x + w])


@pytest.fixture(scope="module")
def line(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    d = tmp_path_factory.mktemp("line")
    (d / "logs").mkdir()
    _render_bootstrap_set(d / "labelled")
    boot = cli("trainer", "bootstrap", str(d / "labelled"), "--arch", "convnet", "--roi", ROI, "--epochs", "10",
               "--exporter", "torchscript", "--state-dir", str(d / "trainer"), "--no-progress", "--threads", "2",
               timeout=600)  # ~20 s alone; minutes on a shared box
    assert boot.returncode == 0, boot.stderr
    keys = cli("keys", "generate", "--out", str(d / "keys"))
    assert keys.returncode == 0, keys.stderr
    # Secure, as on a line: a PKI, the broker with TLS + client certificates + ACL, an identity per process, and
    # the rollout gate counting the PKI's devices only.
    pki = init_pki(d / "pki")
    for k in (1, 2):
        pki.issue(f"cam-{k}", "device", fleet="default")
    svc = pki.root / "services"
    procs = Procs(d / "logs")
    port, metrics_port = free_port(), free_port()
    broker = f"mqtts://127.0.0.1:{port}"
    try:
        procs.start("broker", "broker", "--port", str(port), "--kind", "mosquitto", "--workdir", str(d / "broker"),
                    "--pki", str(pki.root))
        wait_for(lambda: "listening" in (d / "logs" / "broker.log").read_text(), 30, "the broker", procs)
        deploy = ("deploy", "run", "--state-dir", str(d / "deploy"), "--key", str(d / "keys" / "signing.key"),
                  "--broker", broker, "--waves", "50%,100%", "--soak", "1s", "--health-seconds", "1",
                  "--metrics-port", str(metrics_port), "--pki", str(pki.root), "--ca-file", str(pki.root / "ca.pem"),
                  "--cert-file", str(svc / "deploy" / "cert.pem"), "--key-file", str(svc / "deploy" / "key.pem"))
        procs.start("deploy", *deploy, "--mode", "auto")
        procs.start("trainer", "trainer", "run", "--state-dir", str(d / "trainer"), "--broker", broker,
                    "--identity", str(svc / "trainer"),
                    "--labeller", "oracle", "-B", "16", "-T", "4", "-K", "5", "--max-regression", "1.0", "--no-api",
                    "--exporter", "torchscript", "--client-id", f"line-trainer-{os.getpid()}", "--log-level", "INFO",
                    env={"EDGELOOP_TRAINER__EVAL__MAX_FORGETTING": "1.0"})  # promote every update: a fast loop
        model = d / "trainer" / "models" / "v0001.onnx"
        for k in (1, 2):
            procs.start(f"cam-{k}", "edge", "--device-id", f"cam-{k}", "--source",
                        f"sim:digits?seed={k}&realtime=1&fps=10", "--model", str(model), "--broker", broker,
                        "--state-dir", str(d / f"cam-{k}"), "--trusted-key", str(d / "keys" / "signing.pub"),
                        "--identity", str(pki.identity_dir(f"cam-{k}")),
                        "--p-min", "0.5", "--budget-minute", "600", "--budget-hour", "none", "--budget-day", "none",
                        "--stats-interval", "1", "--seed", str(k), "--log-level", "WARNING",
                        "--metrics-port", "0")  # two cameras on one host: the default port fits one
        yield {"dir": d, "procs": procs, "broker": broker, "deploy": deploy,
               "metrics": f"http://127.0.0.1:{metrics_port}"}
    finally:
        procs.stop_all()


def outside_view(line: dict[str, Any]) -> dict[str, Any]:
    """What a stranger's tools read: rollout state from the CLI's JSON, the controller's metrics and health."""
    from prometheus_client.parser import text_string_to_metric_families

    view: dict[str, Any] = {"metrics": {}, "healthz": None}
    state = str(line["dir"] / "deploy")
    out = cli("rollout", "status", "--json", "--state-dir", state)
    view["status"] = json.loads(out.stdout) if out.returncode == 0 and out.stdout.strip() else {}
    out = cli("rollout", "promotions", "--json", "--limit", "10000", "--state-dir", state)  # every one, v0001 too
    view["promotions"] = json.loads(out.stdout) if out.returncode == 0 else []
    try:
        with urllib.request.urlopen(line["metrics"] + "/metrics", timeout=5) as r:
            for fam in text_string_to_metric_families(r.read().decode()):
                for s in fam.samples:
                    view["metrics"][(s.name, tuple(sorted(s.labels.items())))] = s.value
        with urllib.request.urlopen(line["metrics"] + "/healthz", timeout=5) as r:
            view["healthz"] = (r.status, json.loads(r.read()))
    except OSError:
        pass
    return view


def _on_both(line: dict[str, Any], states: tuple[str, ...] = ("completed",)) -> dict[str, Any] | None:
    v = outside_view(line)
    st = v["status"]
    if st.get("state") in states and v["metrics"].get(("edgeloop_deploy_device_versions",
                                                       (("version", st.get("version")),))) == 2:
        return v
    return None


def test_a_promoted_version_reaches_both_cameras(line: dict[str, Any]) -> None:
    v = wait_for(lambda: _on_both(line), 420, "a promoted version on both cameras (mode auto)", line["procs"])
    st = v["status"]
    assert st["version"] >= "v0002" and st["devices"].get("on_target") == 2
    promos = {p["version"]: p for p in v["promotions"]}
    assert promos["v0001"]["status"] == "baseline" and promos[st["version"]]["status"] == "started"
    # the rollback target: the last version the whole fleet reached (v0001 at first, then each completed one)
    assert promos[st["prev_version"]]["status"] in ("baseline", "started") and st["prev_version"] < st["version"]
    m = v["metrics"]
    assert m[("edgeloop_deploy_rollouts", (("state", "completed"),))] >= 1
    assert m[("edgeloop_deploy_promotions_total", (("outcome", "received"),))] >= 2  # v0001 and a promotion
    assert m[("edgeloop_deploy_gate_decisions_total", (("outcome", "complete"),))] >= 1
    assert m[("edgeloop_deploy_mqtt_connected", ())] == 1
    assert v["healthz"][0] == 200 and v["healthz"][1]["status"] == "ok"
    # the model the cameras run came over the broker: the controller's copy, not the trainer's file
    fetched = Path(promos[st["version"]]["path"])
    assert line["dir"] / "deploy" / "models" in fetched.parents
    assert fetched.read_bytes() == (line["dir"] / "trainer" / "models" / f"{st['version']}.onnx").read_bytes()


def test_in_approve_mode_a_promoted_version_waits_for_edgeloop_rollout_approve(line: dict[str, Any]) -> None:
    procs, state = line["procs"], str(line["dir"] / "deploy")
    assert procs.stop("deploy") == 0  # SIGTERM: a clean stop
    before = outside_view(line)["status"]["version"]
    procs.start("deploy", *line["deploy"], "--mode", "approve")

    def waiting() -> str | None:
        st = outside_view(line)["status"]
        return st.get("version") if st.get("state") == "awaiting_approval" and st.get("version") > before else None

    approved = None
    deadline = time.monotonic() + 420
    while approved is None:  # the trainer may promote again meanwhile, superseding what waited: approve the newest
        version = wait_for(waiting, max(1.0, deadline - time.monotonic()), "a promoted version awaiting approval",
                           procs)
        # nothing ships before the approval (a rollout the auto mode had started may have left its first
        # wave on the newer version: the cameras run `before` or older, never what waits)
        assert version not in _versions_on_cameras(line)
        out = cli("rollout", "approve", version, "--state-dir", state, "--by", "test")
        if out.returncode == 0:
            approved = version
        else:
            assert "awaits approval" in out.stderr, out.stderr
    v = wait_for(lambda: _approved_done(line, approved), 300, f"{approved} on both cameras after the approval",
                 procs)
    assert v["metrics"][("edgeloop_deploy_promotions_total", (("outcome", "approved"),))] == 1


def _approved_done(line: dict[str, Any], version: str) -> dict[str, Any] | None:
    """``version`` runs on both cameras (a newer promotion may wait for approval by now: the latest rollout in the
    status may be that one, so look ours up among the promotions)."""
    v = outside_view(line)
    rid = next((p["rollout_id"] for p in v["promotions"] if p["version"] == version and p["rollout_id"]), None)
    if rid is not None:  # a rollout the gate ended otherwise will never finish: say why now, not at the timeout
        out = cli("rollout", "status", "--id", rid, "--json", "--state-dir", str(line["dir"] / "deploy"))
        st = json.loads(out.stdout) if out.returncode == 0 and out.stdout.strip() else {}
        assert st.get("state") not in ("rolled_back", "rolling_back", "aborted", "superseded", "rejected"), st
    done = any(p["version"] == version and p["status"] == "started" for p in v["promotions"])
    on_both = v["metrics"].get(("edgeloop_deploy_device_versions", (("version", version),))) == 2
    return v if done and on_both else None


def _versions_on_cameras(line: dict[str, Any]) -> set[str]:
    out = cli("rollout", "devices", "--json", "--state-dir", str(line["dir"] / "deploy"))
    return {r["version"] for r in json.loads(out.stdout)}
