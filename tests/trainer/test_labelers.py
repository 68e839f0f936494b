"""Labellers: oracle (delay, seeded noise), CSV import, and the HTTP queue API + terminal labeller."""
from __future__ import annotations

import io
import json
import sys
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path

import pytest

from trainer.classes import add_class
from trainer.label_api import LabelServer
from trainer.label_cli import _Http, label_loop
from trainer.labelers import ImportLabeller, OracleLabeller, make_labeller
from trainer.store import SampleStore

sys.path.insert(0, str(Path(__file__).parent))
from _helpers import fill_store  # noqa: E402


def test_oracle_labels_truth_after_delay_with_seeded_noise(tmp_path: Path) -> None:
    with SampleStore(tmp_path) as st:
        fill_store(st, ["red", "green", "blue"], 300)
        assert OracleLabeller(delay_s=3600).poll(st) == 0  # nothing is old enough yet
        lab = OracleLabeller(noise=0.2, seed=7)
        assert lab.poll(st) == 300 and lab.poll(st) == 0
        rows = st.labelled_after(0, limit=1000, heldout=None)
        flipped = {r.sample_id for r in rows if r.label != r.truth}
        assert 30 <= len(flipped) <= 90 and lab.flipped == len(flipped)
        assert {r.label for r in rows} == {"red", "green", "blue"}
    with SampleStore(tmp_path / "again") as st2:  # same seed -> the very same flips (restart-safe)
        fill_store(st2, ["red", "green", "blue"], 300)
        OracleLabeller(noise=0.2, seed=7).poll(st2)
        assert {r.sample_id for r in st2.labelled_after(0, limit=1000, heldout=None) if r.label != r.truth} == flipped


def test_import_csv_waits_for_samples_that_have_not_arrived(tmp_path: Path) -> None:
    csv = tmp_path / "labels.csv"
    csv.write_text("sample_id,label\ns00000,scratch\ns00001,dent\nlater,red\n")
    with SampleStore(tmp_path / "st") as st:
        fill_store(st, ["red"], 2)
        st.set_label("s00001", "red", "person")  # "red" is now a known (labelled) class
        add_class(st, "scratch")  # a new class, added on purpose
        lab = make_labeller("import", csv_path=str(csv))
        assert isinstance(lab, ImportLabeller)
        assert lab.poll(st) == 1 and lab.waiting == 1 and lab.skipped_labelled == 1
        assert st.get("s00000").label == "scratch"
        from _helpers import incoming
        import numpy as np
        st.add_batch([incoming("later", None, np.random.default_rng(0))])
        assert lab.poll(st) == 1 and st.get("later").label == "red" and lab.waiting == 0


def test_import_csv_rejects_a_label_outside_the_known_classes(tmp_path: Path) -> None:
    csv = tmp_path / "labels.csv"
    csv.write_text("s00000,scrach\n")
    with SampleStore(tmp_path / "st") as st:
        fill_store(st, ["red"], 1)
        lab = ImportLabeller(csv)
        assert lab.poll(st) == 0 and lab.rejected_unknown == 1
        assert st.get("s00000").label is None and st.stats()["per_class"] == {}


def _call(url: str, body: dict | None = None, token: str | None = None) -> tuple[int, bytes, str]:
    req = urllib.request.Request(url, data=None if body is None else json.dumps(body).encode(),
                                 method="GET" if body is None else "POST")
    if body is not None:
        req.add_header("Content-Type", "application/json")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, r.read(), r.headers.get("Content-Type", "")
    except urllib.error.HTTPError as e:
        return e.code, e.read(), ""


def test_queue_http_api_and_terminal_labeller(tmp_path: Path) -> None:
    with SampleStore(tmp_path / "samples") as st:
        ids = fill_store(st, ["red", "green"], 5)
        srv = LabelServer(st, "127.0.0.1", 0, heldout=0.0, known_labels=lambda: ["red", "green"]).start()
        tok = srv.token
        try:
            assert (tmp_path / "api_token").read_text().strip() == tok
            code, body, _ = _call(f"{srv.url}/samples?status=unlabelled", token=tok)
            items = json.loads(body)
            assert code == 200 and [i["id"] for i in items] == ids
            assert items[0]["device"] == "cam1" and items[0]["prediction"][0] == ["red", 0.5]
            code, img, ctype = _call(srv.url + items[0]["image_url"], token=tok)
            assert code == 200 and ctype == "image/png" and img == st.image(ids[0])[0]
            assert _call(f"{srv.url}/samples/{ids[0]}/label", {"label": "rust", "new_class": True}, tok)[0] == 200
            assert _call(f"{srv.url}/samples/{ids[0]}/label", {"label": "red"}, tok)[0] == 409
            assert _call(f"{srv.url}/samples/nope/label", {"label": "red"}, tok)[0] == 404
            assert _call(f"{srv.url}/samples/{ids[1]}/label", {"lbl": "red"}, tok)[0] == 400
            assert _call(f"{srv.url}/samples/{ids[1]}/image/x", token=tok)[0] == 404
            assert len(json.loads(_call(f"{srv.url}/samples?status=unlabelled", token=tok)[1])) == 4
            assert json.loads(_call(f"{srv.url}/labels", token=tok)[1]) == ["red", "green", "rust"]
            assert st.get(ids[0]).label == "rust" and st.get(ids[0]).label_source == "person"

            # the terminal labeller against the same API: a typo refused (not confirmed), a label, accept a
            # prediction, a new class confirmed by typing it again, quit
            answers = iter(["?", "grene", "no", "green", "=", "teal", "teal", "q"])
            out = io.StringIO()
            n = label_loop(_Http(srv.url, tok), input_fn=lambda prompt: next(answers), out=out)
            assert "known labels: red, green, rust" in out.getvalue()
            assert "'grene' is not a known class" in out.getvalue()
            assert n == 3 and "prediction: red 0.50, green 0.30" in out.getvalue()
            labels = Counter(s.label for s in st.query(limit=10))
            assert labels == {"rust": 1, "green": 1, "red": 1, "teal": 1, None: 1}, labels
            with pytest.raises(RuntimeError, match="token"):
                label_loop(_Http(srv.url, "wrong"), input_fn=lambda prompt: "red", out=io.StringIO())
        finally:
            srv.stop()


@pytest.mark.parametrize("kind", ["oracle", "queue"])
def test_make_labeller(kind: str) -> None:
    assert make_labeller(kind).name == kind
