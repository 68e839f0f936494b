"""The console over HTTP (real uvicorn, real trainer API, real rollout store; no browser): login, sessions,
roles, CSRF and Origin checks, labelling through the trainer's path, rollout commands through the CLI's
path, import and export. The browser tests are in tests/integration/test_console_browser.py."""
from __future__ import annotations

import io
import json
import os
import stat
import sys
import zipfile
from pathlib import Path

import pytest

from bench.browser import ServedApp

from deploy.console.app import Console, ConsoleSettings
from deploy.console.auth import INITIAL_PASSWORD_FILE, Users, hash_password, verify_password
from deploy.console.exchange import parse_labelstudio
from deploy.console.rollouts import Rollouts
from deploy.console.trainer_client import TrainerClient
from deploy.rollout_gate import Policy
from deploy.rollout_store import RolloutStore

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "trainer"))
from _helpers import fill_store  # noqa: E402
from console_helpers import Client  # noqa: E402

pytestmark = pytest.mark.timeout(120)
PASSWORDS = {"admin": "operator-pass-1", "lab": "labeller-pass-1", "view": "viewer-pass-1"}


@pytest.fixture
def stack(tmp_path: Path):
    from trainer.label_api import TrainerAPI
    from trainer.store import SampleStore

    store = SampleStore(tmp_path / "trainer" / "samples")
    ids = fill_store(store, ["red", "green"], 12)
    api = TrainerAPI(store, "127.0.0.1", 0, heldout=0.0, known_labels=lambda: ["red", "green"]).start()
    rs = RolloutStore(tmp_path / "deploy" / "rollout.sqlite")
    rid = rs.create_rollout("default", "edgeloop", "v0002", "v0001", Policy()).id
    rs.close()
    users = Users(tmp_path / "console")
    for name, role in (("admin", "operator"), ("lab", "labeller"), ("view", "viewer")):
        users.set(name, PASSWORDS[name], role)
    console = Console(ConsoleSettings(state_dir=tmp_path / "console", deploy_state=tmp_path / "deploy", broker=None),
                      trainer=TrainerClient(api.url, api.token))
    with ServedApp(console.app, on_exit=console.close_streams) as served:
        yield {"url": served.url, "port": served.port, "store": store, "ids": ids, "api": api, "console": console,
               "deploy": tmp_path / "deploy", "rid": rid}
    api.stop()
    store.close()


def logged_in(stack: dict, user: str) -> Client:
    c = Client(stack["port"])
    assert c.login(user, PASSWORDS[user]) == 200
    return c


def test_passwords_are_stored_hashed_with_mode_0600(tmp_path: Path) -> None:
    users = Users(tmp_path / "c")
    pw_file = users.ensure_initial()
    assert pw_file is not None and pw_file.name == INITIAL_PASSWORD_FILE
    password = pw_file.read_text().strip()
    for p in (pw_file, users.path):
        assert stat.S_IMODE(os.stat(p).st_mode) == 0o600
    assert password not in users.path.read_text() and users.verify("admin", password) == "operator"
    assert users.verify("admin", "wrong") is None and users.verify("nobody", password) is None
    assert users.ensure_initial() is None  # only at first start
    h = hash_password("x" * 12)
    assert h.startswith("scrypt$") and verify_password("x" * 12, h) and not verify_password("y" * 12, h)


def test_login_session_cookie_and_logout(stack: dict) -> None:
    c = Client(stack["port"])
    code, headers, _ = c.get("/fleet")
    assert code == 303 and headers["location"].startswith("/login")
    assert c.login("admin", "wrong password") != 200 and "edgeloop_session" not in c.cookies
    assert c.login("admin", PASSWORDS["admin"]) == 200
    cookie = next(v for v in c.raw_cookies if v.startswith("edgeloop_session="))
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie.replace("Strict", "strict")
    code, headers, page = c.get("/fleet")
    assert code == 200 and b"Fleet" in page and "frame-ancestors 'none'" in headers["content-security-policy"]
    assert c.form("/logout", {"csrf_token": "bad"})[0] == 403  # logging out is a state change too
    assert c.form("/logout", {"csrf_token": c.csrf()})[0] == 303
    assert c.get("/fleet")[0] == 303


def test_login_is_throttled_and_never_redirects_off_site(stack: dict) -> None:
    c = Client(stack["port"])
    for _ in range(5):
        c.login("admin", "nope")
    assert c.login("admin", PASSWORDS["admin"]) != 200  # blocked even with the right password now
    c2 = Client(stack["port"])
    _, _, page = c2.get("/login?next=//evil.example/x")
    assert b'value="/fleet"' in page


def test_labelling_goes_through_the_trainer_and_bad_requests_change_nothing(stack: dict) -> None:
    store, ids = stack["store"], stack["ids"]
    anon = Client(stack["port"])
    assert anon.post_json(f"/api/samples/{ids[0]}/label", {"label": "red"})[0] == 401
    lab = logged_in(stack, "lab")
    csrf = lab.csrf("/label")
    assert lab.post_json(f"/api/samples/{ids[0]}/label", {"label": "red"})[0] == 403  # no CSRF token
    assert lab.post_json(f"/api/samples/{ids[0]}/label", {"label": "red"}, csrf="forged")[0] == 403
    assert lab.post_json(f"/api/samples/{ids[0]}/label", {"label": "red"}, csrf=csrf,
                         headers={"Origin": "http://evil.example"})[0] == 403
    code, _, _ = lab.request("POST", f"/api/samples/{ids[0]}/label", b"label=red",
                             {"Content-Type": "application/x-www-form-urlencoded", "X-CSRF-Token": csrf})
    assert code == 415
    assert lab.get(f"/api/samples/{ids[0]}/label")[0] == 405  # nothing changes on GET
    assert store.get(ids[0]).label is None
    view = logged_in(stack, "view")
    assert view.post_json(f"/api/samples/{ids[0]}/label", {"label": "red"}, csrf=view.csrf())[0] == 403
    assert store.get(ids[0]).label is None

    code, res = lab.post_json(f"/api/samples/{ids[0]}/label", {"label": "red"}, csrf=csrf)
    assert code == 200 and store.get(ids[0]).label == "red" and store.get(ids[0]).label_source == "person"
    code, res = lab.post_json(f"/api/samples/{ids[1]}/label", {"label": "gren"}, csrf=csrf)
    assert code == 422 and res["error"] == "unknown_label" and res["known"] == ["red", "green"]
    code, res = lab.post_json(f"/api/samples/{ids[1]}/label", {"label": "crack", "new_class": True}, csrf=csrf)
    assert code == 200 and store.get(ids[1]).label == "crack"
    code, res = lab.post_json(f"/api/samples/{ids[1]}/label", {"label": "green", "relabel": True}, csrf=csrf)
    assert code == 200 and res["previous"] == "crack" and store.get(ids[1]).label == "green"
    queue = json.loads(lab.get("/api/queue?limit=3")[2])
    assert [s["id"] for s in queue] == ids[2:5] and queue[0]["image_url"].startswith("/api/samples/")
    code, headers, img = lab.get(queue[0]["image_url"])
    assert code == 200 and headers["content-type"] == "image/png" and img == store.image(ids[2])[0]


def test_rollout_buttons_take_the_cli_path_and_need_operator_and_csrf(stack: dict) -> None:
    rid = stack["rid"]

    def command() -> str | None:
        rs = RolloutStore(stack["deploy"] / "rollout.sqlite")
        try:
            return rs.rollout(rid).command
        finally:
            rs.close()

    view = logged_in(stack, "view")
    assert view.form(f"/rollouts/{rid}/pause", {"csrf_token": view.csrf()})[0] == 403
    op = logged_in(stack, "admin")
    code, _, page = op.get("/rollouts")
    assert code == 200 and rid.encode() in page and b'data-action="pause"' in page
    assert b'data-action="resume"' not in page  # only what applies to a running rollout
    assert op.form(f"/rollouts/{rid}/pause", {"csrf_token": "forged"})[0] == 403
    assert Client(stack["port"]).form(f"/rollouts/{rid}/pause", {"csrf_token": "x"})[0] == 401
    assert command() is None
    code, headers, _ = op.form(f"/rollouts/{rid}/pause", {"csrf_token": op.csrf()})
    assert code == 303 and "pause%20queued" in headers["location"] and command() == "pause"
    code, headers, _ = op.form(f"/rollouts/{rid}/resume", {"csrf_token": op.csrf()})  # running, not paused
    assert "error=" in headers["location"]
    code, headers, _ = op.form("/approve/v0002", {"csrf_token": op.csrf()})  # running, not waiting
    assert code == 303 and "no%20rollout%20of%20v0002%20awaits%20approval" in headers["location"]


def test_approve_and_reject_take_the_cli_path_with_who_and_why(stack: dict) -> None:
    from deploy.rollout_store import State

    rs = RolloutStore(stack["deploy"] / "rollout.sqlite")
    try:
        w3 = rs.create_rollout("default", "edgeloop", "v0003", "v0001", Policy(), State.AWAITING_APPROVAL).id
        w4 = rs.create_rollout("line-2", "edgeloop", "v0004", "v0001", Policy(), State.AWAITING_APPROVAL).id
        view, op = logged_in(stack, "view"), logged_in(stack, "admin")
        page = op.get("/rollouts")[2]
        assert b'data-version="v0003"' in page and b'action="/approve/v0004"' in page
        assert b"/approve/" not in view.get("/rollouts")[2]  # viewers see what waits, not the buttons
        assert view.form("/approve/v0003", {"csrf_token": view.csrf()})[0] == 403
        assert op.form("/approve/v0003", {"csrf_token": "forged"})[0] == 403
        assert rs.rollout(w3).command is None
        code, headers, _ = op.form("/approve/v0003", {"csrf_token": op.csrf()})
        assert code == 303 and "v0003%20approved" in headers["location"]
        assert (rs.rollout(w3).command, rs.rollout(w3).command_detail) == ("approve", "by admin")
        code, headers, _ = op.form("/reject/v0004", {"csrf_token": op.csrf(), "reason": "  "})
        assert "error=a%20rejection%20needs%20a%20reason" in headers["location"] and rs.rollout(w4).command is None
        code, headers, _ = op.form("/reject/v0004", {"csrf_token": op.csrf(), "reason": "wrong line"})
        assert code == 303 and (rs.rollout(w4).command, rs.rollout(w4).command_detail) == ("reject",
                                                                                          "by admin: wrong line")
    finally:
        rs.close()


def test_rollouts_adapter_without_controller_state(tmp_path: Path) -> None:
    r = Rollouts(tmp_path)
    assert not r.available
    with pytest.raises(FileNotFoundError):
        r.list()
    assert not (tmp_path / "rollout.sqlite").exists()  # reading never creates the controller's state


def test_export_and_import_round_trip(stack: dict) -> None:
    store, ids = stack["store"], stack["ids"]
    store.set_labels([(ids[0], "red"), (ids[1], "green")], "person", 0.0)
    lab = logged_in(stack, "lab")
    code, headers, data = lab.get("/data/export?format=imagefolder")
    assert code == 200 and headers["content-type"] == "application/zip"
    z = zipfile.ZipFile(io.BytesIO(data))
    assert sorted(z.namelist()) == sorted([f"red/{ids[0]}.png", f"green/{ids[1]}.png", "samples.csv"])
    assert z.read(f"red/{ids[0]}.png") == store.image(ids[0])[0]
    code, _, data = lab.get("/data/export?format=labelstudio&unlabelled=1")
    z = zipfile.ZipFile(io.BytesIO(data))
    tasks = json.loads(z.read("tasks.json"))
    assert len(tasks) == len(ids) and '<Choice value="green"/>' in z.read("labeling_config.xml").decode()
    assert tasks[0]["annotations"][0]["result"][0]["value"]["choices"] == ["red"]
    assert tasks[2]["predictions"][0]["result"][0]["value"]["choices"] == ["red"] and "annotations" not in tasks[2]
    assert z.read(tasks[2]["data"]["image"].split("?d=")[1]) == store.image(ids[2])[0]
    # "label them in Label Studio": annotate two waiting tasks (one with a typo), import the export
    tasks[2]["annotations"] = [{"result": [{"type": "choices", "value": {"choices": ["green"]}}]}]
    tasks[3]["annotations"] = [{"result": [{"type": "choices", "value": {"choices": ["gren"]}}]}]
    assert parse_labelstudio(json.dumps(tasks))[0][2:] == [(ids[2], "green"), (ids[3], "gren")]
    csrf = lab.csrf("/data")
    code, _, body = lab.request("POST", "/data/import?format=labelstudio", json.dumps(tasks).encode(),
                                {"Content-Type": "application/json", "X-CSRF-Token": csrf})
    res = json.loads(body)
    assert code == 200 and res["applied"] == 1, res
    assert res["counts"] == {"already_labelled": 2, "labelled": 1, "unknown_label": 1}
    assert store.get(ids[2]).label == "green" and store.get(ids[3]).label is None
    code, _, body = lab.request("POST", "/data/import?format=csv", f"sample_id,label\n{ids[4]},red\n".encode(),
                                {"Content-Type": "text/csv", "X-CSRF-Token": csrf})
    assert code == 200 and json.loads(body)["applied"] == 1 and store.get(ids[4]).label == "red"
    code, _, _ = lab.request("POST", "/data/import?format=csv", f"{ids[5]},red\n".encode(), {"Content-Type": "text/csv"})
    assert code == 403 and store.get(ids[5]).label is None  # no CSRF token: nothing imported


def test_pages_render(stack: dict) -> None:
    op = logged_in(stack, "admin")
    for path, text in (("/fleet", b"No device has published yet"), ("/label", b"Label queue"),
                       ("/models", b"Models"), ("/data", b"Import labels"), ("/rollouts", b"v0002")):
        code, _, page = op.get(path)
        assert code == 200 and text in page, (path, page[:300])


def test_cli_export_import_and_users(stack: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from deploy.console.cli import main

    store, ids, api = stack["store"], stack["ids"], stack["api"]
    store.set_labels([(ids[0], "red")], "person", 0.0)
    tok = ["--trainer", api.url, "--trainer-token-file", str(api.state_dir / "api_token")]
    assert main(["export", "--format", "imagefolder", "--out", str(tmp_path / "if"), *tok]) == 0
    assert (tmp_path / "if" / "red" / f"{ids[0]}.png").read_bytes() == store.image(ids[0])[0]
    assert main(["export", "--format", "labelstudio", "--out", str(tmp_path / "ls"), "--unlabelled", *tok]) == 0
    assert len(json.loads((tmp_path / "ls" / "tasks.json").read_text())) == len(ids)
    (tmp_path / "l.csv").write_text(f"{ids[1]},green\n{ids[2]},teal\n")
    assert main(["import", str(tmp_path / "l.csv"), *tok]) == 0
    assert "1 of 2 labels applied" in capsys.readouterr().out and store.get(ids[2]).label is None
    assert main(["import", str(tmp_path / "l.csv"), "--new-classes", *tok]) == 0 and store.get(ids[2]).label == "teal"
    assert main(["export", "--out", str(tmp_path / "x"), "--trainer", api.url, "--trainer-token-file",
                 str(tmp_path / "missing")]) == 1
    (tmp_path / "pw").write_text("a-long-password\n")
    assert main(["user", "add", "carol", "--role", "labeller", "--password-file", str(tmp_path / "pw"),
                 "--state-dir", str(tmp_path / "c")]) == 0
    assert Users(tmp_path / "c").verify("carol", "a-long-password") == "labeller"
    (tmp_path / "short").write_text("short\n")
    assert main(["user", "add", "dave", "--password-file", str(tmp_path / "short"), "--state-dir", str(tmp_path / "c")]) == 2
