"""The trainer's HTTP API: token, JSON-only state changes, Origin check, size and time limits, classes,
versions and confusion matrices. Each class of bad request gets a test that it changes nothing."""
from __future__ import annotations

import json
import logging
import os
import socket
import stat
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from trainer.bootstrap import bootstrap
from trainer.label_api import TrainerAPI, load_or_create_token
from trainer.store import SampleStore

sys.path.insert(0, str(Path(__file__).parent))
from _helpers import fill_store, image_folder  # noqa: E402

pytestmark = pytest.mark.timeout(120)


def call(url: str, body: dict | bytes | None = None, token: str | None = None, ctype: str = "application/json",
         headers: dict[str, str] | None = None) -> tuple[int, dict | list | bytes]:
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method="GET" if data is None else "POST")
    if data is not None:
        req.add_header("Content-Type", ctype)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    for k, v in (headers or {}).items():
        req.add_header(k, v)
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            raw, code, ct = r.read(), r.status, r.headers.get("Content-Type", "")
    except urllib.error.HTTPError as e:
        raw, code, ct = e.read(), e.code, e.headers.get("Content-Type", "")
    return code, json.loads(raw) if ct.startswith("application/json") else raw


@pytest.fixture
def api(tmp_path: Path):
    st = SampleStore(tmp_path / "samples")
    ids = fill_store(st, ["red", "green"], 6)
    srv = TrainerAPI(st, "127.0.0.1", 0, heldout=0.0, known_labels=lambda: ["red", "green"], request_timeout=1.0,
                     max_connections=4).start()
    srv.ids = ids  # type: ignore[attr-defined]
    yield srv
    srv.stop()
    st.close()


def test_token_is_generated_once_with_mode_0600(tmp_path: Path) -> None:
    t1 = load_or_create_token(tmp_path / "api_token")
    assert stat.S_IMODE(os.stat(tmp_path / "api_token").st_mode) == 0o600
    assert load_or_create_token(tmp_path / "api_token") == t1 and len(t1) >= 40


def test_requests_without_the_token_change_nothing(api: TrainerAPI) -> None:
    sid = api.ids[0]  # type: ignore[attr-defined]
    assert call(f"{api.url}/samples")[0] == 401
    assert call(f"{api.url}/samples/{sid}/image", token="wrong")[0] == 401
    code, err = call(f"{api.url}/samples/{sid}/label", {"label": "red"}, token="wrong")
    assert code == 401 and err["error"] == "unauthorized"
    assert api.store.get(sid).label is None


@pytest.mark.parametrize("ctype,body", [("text/plain", b'{"label": "red"}'),
                                        ("application/x-www-form-urlencoded", b"label=red"),
                                        ("multipart/form-data; boundary=x", b"--x--")])
def test_cross_site_form_posts_are_refused(api: TrainerAPI, ctype: str, body: bytes) -> None:
    sid = api.ids[0]  # type: ignore[attr-defined]
    code, err = call(f"{api.url}/samples/{sid}/label", body, token=api.token, ctype=ctype)
    assert code == 415 and err["error"] == "unsupported_media_type"
    code, err = call(f"{api.url}/samples/{sid}/label", {"label": "red"}, token=api.token,
                     headers={"Origin": "http://evil.example"})
    assert code == 403 and err["error"] == "forbidden_origin"
    assert call(f"{api.url}/samples", token=api.token, headers={"Sec-Fetch-Site": "cross-site"})[0] == 403
    assert api.store.get(sid).label is None and api.rejected["unsupported_media_type"] >= 1


def test_bodies_are_bounded(api: TrainerAPI) -> None:
    sid = api.ids[0]  # type: ignore[attr-defined]
    code, err = call(f"{api.url}/samples/{sid}/label", b'{"label": "' + b"r" * 70_000 + b'"}', token=api.token)
    assert code == 413 and err["error"] == "too_large"
    assert call(f"{api.url}/samples/{sid}/label", b"not json", token=api.token)[1]["error"] == "bad_json"
    assert call(f"{api.url}/samples/{sid}/label", {"label": "red", "extra": 1}, token=api.token)[0] == 400
    assert call(f"{api.url}/samples/{sid}/label", {"label": "red", "relabel": "yes"}, token=api.token)[0] == 400
    assert api.store.get(sid).label is None


@pytest.mark.parametrize("trickle", [False, True])
def test_a_slow_body_does_not_hold_a_thread(api: TrainerAPI, trickle: bool) -> None:
    """Headers promise 100 bytes; 10 arrive and then nothing, or one byte every 0.4 s (each read is quick, the
    whole is not): either way the connection is closed at the 1 s deadline and nothing is labelled."""
    s = socket.create_connection(("127.0.0.1", api.port))
    s.sendall(f"POST /samples/{api.ids[0]}/label HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {api.token}\r\n"  # type: ignore[attr-defined]
              "Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"label\":".encode())
    t0 = time.monotonic()
    s.settimeout(0.4)
    closed = False
    while time.monotonic() - t0 < 6 and not closed:
        try:
            closed = s.recv(4096) == b""
        except socket.timeout:
            if trickle:
                try:
                    s.sendall(b" ")
                except OSError:
                    closed = True
        except OSError:
            closed = True
    assert closed and time.monotonic() - t0 < 3.0
    s.close()
    assert call(f"{api.url}/status", token=api.token)[0] == 200  # still serving
    assert api.httpd.counters["timeout"] >= 1 and api.store.get(api.ids[0]).label is None  # type: ignore[attr-defined]


def test_too_many_connections_get_503_at_once(api: TrainerAPI) -> None:
    idle = [socket.create_connection(("127.0.0.1", api.port)) for _ in range(4)]
    time.sleep(0.2)
    try:
        extra = socket.create_connection(("127.0.0.1", api.port))
        extra.settimeout(2)
        assert extra.recv(100).startswith(b"HTTP/1.1 503")
        extra.close()
    finally:
        for s in idle:
            s.close()
    deadline = time.monotonic() + 5
    while call(f"{api.url}/status", token=api.token)[0] != 200:  # slots come back
        assert time.monotonic() < deadline
        time.sleep(0.1)


def test_unknown_label_is_refused_unless_added_explicitly(api: TrainerAPI) -> None:
    a, b, c, d = api.ids[:4]  # type: ignore[attr-defined]
    code, err = call(f"{api.url}/samples/{a}/label", {"label": "scrach"}, token=api.token)
    assert code == 422 and err["error"] == "unknown_label" and err["known"] == ["red", "green"]
    assert api.store.get(a).label is None and api.store.stats()["per_class"] == {}
    code, ok = call(f"{api.url}/samples/{a}/label", {"label": "scratch", "new_class": True}, token=api.token)
    assert code == 200 and ok["label"] == "scratch"
    assert call(f"{api.url}/samples/{b}/label", {"label": "../x", "new_class": True}, token=api.token)[1]["error"] \
        == "bad_class_name"
    code, cls = call(f"{api.url}/classes", {"name": "dent"}, token=api.token)
    assert code == 200 and cls["known"] == ["red", "green", "scratch", "dent"]
    assert call(f"{api.url}/samples/{b}/label", {"label": "dent"}, token=api.token)[0] == 200
    assert call(f"{api.url}/classes", token=api.token)[1]["added"] == ["scratch", "dent"]
    # a correction (the console's undo) replaces the label; without relabel it is a conflict
    assert call(f"{api.url}/samples/{b}/label", {"label": "red"}, token=api.token)[0] == 409
    code, ok = call(f"{api.url}/samples/{b}/label", {"label": "red", "relabel": True}, token=api.token)
    assert code == 200 and ok["previous"] == "dent" and api.store.get(b).label == "red"
    # batches (imports): per-item outcomes, one transaction for the accepted ones
    code, res = call(f"{api.url}/labels", {"labels": [{"id": c, "label": "green"}, {"id": d, "label": "blu"},
                                                      {"id": "nope", "label": "red"}, {"id": a, "label": "red"}]},
                     token=api.token)
    assert code == 200 and res["applied"] == 1
    assert [r["status"] for r in res["results"]] == ["labelled", "unknown_label", "unknown_sample", "already_labelled"]
    assert api.store.get(c).label == "green" and api.store.get(d).label is None


def test_queue_filters_and_summary(api: TrainerAPI) -> None:
    code, rows = call(f"{api.url}/samples?predicted=red&device=cam1&reason=uncertain&limit=2", token=api.token)
    assert code == 200 and len(rows) == 2 and rows[0]["p_select"] == 0.5 and rows[0]["rowid"] < rows[1]["rowid"]
    assert call(f"{api.url}/samples?device=other", token=api.token)[1] == []
    after = call(f"{api.url}/samples?after={rows[1]['rowid']}", token=api.token)[1]
    assert [r["id"] for r in after] == api.ids[2:]  # type: ignore[attr-defined]
    summary = call(f"{api.url}/samples/summary", token=api.token)[1]
    assert summary == {"device": {"cam1": 6}, "reason": {"uncertain": 6}, "predicted": {"red": 6}}
    assert call(f"{api.url}/samples?status=bogus", token=api.token)[0] == 400
    assert call(f"{api.url}/nothing", token=api.token)[0] == 404
    assert call(f"{api.url}/status", {"x": 1}, token=api.token)[0] == 405


def test_non_loopback_bind_warns(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with SampleStore(tmp_path / "samples") as st, caplog.at_level(logging.WARNING, "trainer.label_api"):
        TrainerAPI(st, "0.0.0.0", 0).httpd.server_close()
    assert "not a loopback address" in caplog.text


def test_versions_decisions_and_confusion(tmp_path: Path) -> None:
    state = tmp_path / "state"
    bootstrap(state, image_folder(tmp_path / "imgs", ["red", "green", "blue"], 8), arch="small_cnn", input_size=16,
              epochs=1, batch_size=8, exporter="torchscript", progress=False, replay_size=50, torch_threads=1)
    (state / "decisions.jsonl").write_text('{"update": 1, "promote": false, "reason": "r"}\n{"cut')
    with SampleStore(state / "samples") as st:
        ids = fill_store(st, ["red", "green"], 4)
        st.set_labels([(i, "red") for i in ids], "person", heldout_fraction=0.5)
        srv = TrainerAPI(st, "127.0.0.1", 0).start()
        try:
            versions = call(f"{srv.url}/versions", token=srv.token)[1]
            assert [v["version"] for v in versions] == ["v0001"] and versions[0]["labels"] == ["blue", "green", "red"]
            assert call(f"{srv.url}/decisions", token=srv.token)[1] == [{"update": 1, "promote": False, "reason": "r"}]
            cm = call(f"{srv.url}/versions/v0001/confusion", token=srv.token)[1]
            assert cm["labels"] == ["blue", "green", "red"] and cm["n"] == sum(map(sum, cm["matrix"])) > 2
            assert call(f"{srv.url}/versions/v0009/confusion", token=srv.token)[0] == 404
        finally:
            srv.stop()


def test_confusion_cache_keeps_only_the_current_window(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The console's confusion matrices cache preprocessed held-out inputs; uploads that left the newest-N
    window leave the cache too, so a trainer that runs for months does not keep every held-out image."""
    from trainer import version_eval
    from trainer.version_eval import ConfusionCache

    monkeypatch.setattr(version_eval, "MAX_UPLOADED", 3)
    state = tmp_path / "state"
    bootstrap(state, image_folder(tmp_path / "imgs", ["red", "green"], 8), arch="small_cnn", input_size=16,
              epochs=1, batch_size=8, exporter="torchscript", progress=False, replay_size=50, torch_threads=1)
    with SampleStore(state / "samples") as st:
        cache = ConfusionCache(state, st)
        for start in (0, 12, 24):
            ids = fill_store(st, ["red", "green"], 12, start=start)
            st.set_labels([(i, "red") for i in ids], "person", heldout_fraction=0.5)
            cm = cache.get("v0001")
            window = {s.rowid for s in st.heldout(newest=3)}
            [inputs] = cache._inputs.values()
            assert set(inputs) == window and cm["n"] >= 3
        assert len(st.heldout()) > 3 * 3


def test_cli_classes_add_and_list(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from trainer.cli import main

    with SampleStore(tmp_path / "samples") as st:
        fill_store(st, ["red"], 1)
        st.set_label("s00000", "red", "person")
    assert main(["classes", "add", "crack", "--state-dir", str(tmp_path)]) == 0
    assert main(["classes", "add", "a/b", "--state-dir", str(tmp_path)]) == 2
    capsys.readouterr()
    assert main(["classes", "list", "--state-dir", str(tmp_path)]) == 0
    assert capsys.readouterr().out.split("\n")[:2] == ["red", "crack  (added)"]
