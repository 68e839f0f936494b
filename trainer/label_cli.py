"""``edgeloop label``: label queued samples in the terminal.

Talks to a running trainer's HTTP API (``--api``, default http://127.0.0.1:8765) with its bearer token
(``--token-file``, default ``./edgeloop-trainer/api_token``, or the ``EDGELOOP_TRAINER_TOKEN`` variable;
never on the command line, where ``ps`` would show it), or opens a state directory's sample store
directly (``--state-dir``; SQLite lets it run next to the service). For each unlabelled sample it shows
the device, the model's top-k prediction, an ASCII preview of the image and the image URL, then asks for
a label: Enter skips, ``=`` accepts the top prediction, ``?`` lists the known labels, ``q`` quits. A label
that is not a known class is refused unless you confirm that it is a new class (a typo never becomes
one). ``--import FILE`` applies a CSV of ``sample_id,label`` instead (known classes only).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any, TextIO

__all__ = ["main", "label_loop", "ascii_preview", "read_token", "TOKEN_ENV"]

TOKEN_ENV = "EDGELOOP_TRAINER_TOKEN"
DEFAULT_TOKEN_FILE = "./edgeloop-trainer/api_token"


def read_token(path: str | None) -> str | None:
    """The API token: from ``path``, else ``$EDGELOOP_TRAINER_TOKEN``, else the default state dir's file."""
    if path is None and os.environ.get(TOKEN_ENV):
        return os.environ[TOKEN_ENV].strip()
    p = path or DEFAULT_TOKEN_FILE
    try:
        with open(p, encoding="utf-8") as fh:
            return fh.read().strip() or None
    except FileNotFoundError:
        if path is not None:
            raise
        return None

_RAMP = " .:-=+*#%@"


def ascii_preview(data: bytes, width: int = 28) -> str:
    """A small greyscale rendering of an image (best effort: empty if it cannot be decoded)."""
    try:
        import torch
        import torch.nn.functional as F

        from .images import decode

        img = decode(data).float()
        g = img.mean(0, keepdim=True) if img.shape[0] == 3 else img
        h = max(1, round(width * g.shape[1] / g.shape[2] / 2))  # terminal cells are ~2x taller than wide
        small = F.interpolate(g.unsqueeze(0), size=(h, width), mode="area")[0, 0] / 255.0
        idx = (small * (len(_RAMP) - 1)).round().to(torch.long)
        return "\n".join("".join(_RAMP[int(v)] for v in row) for row in idx)
    except Exception:
        return ""


class _Http:
    def __init__(self, base: str, token: str | None) -> None:
        self.base = base.rstrip("/")
        self.token = token

    def _req(self, path: str, body: dict | None = None) -> tuple[int, bytes]:
        req = urllib.request.Request(self.base + path, data=None if body is None else json.dumps(body).encode(),
                                     method="GET" if body is None else "POST")
        req.add_header("Content-Type", "application/json")
        if self.token:
            req.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    def unlabelled(self, limit: int) -> list[dict[str, Any]]:
        code, data = self._req(f"/samples?status=unlabelled&limit={limit}")
        if code != 200:
            raise RuntimeError(f"label API: {code} {data[:200]!r}")
        return json.loads(data)

    def image(self, sid: str) -> bytes:
        code, data = self._req(f"/samples/{sid}/image")
        return data if code == 200 else b""

    def labels(self) -> list[str]:
        code, data = self._req("/labels")
        return json.loads(data) if code == 200 else []

    def label(self, sid: str, label: str, new_class: bool = False) -> tuple[str, str]:
        """("ok" | "unknown_label" | "refused", message)."""
        code, data = self._req(f"/samples/{sid}/label", {"label": label, "new_class": new_class})
        if code == 200:
            return "ok", ""
        try:
            err = json.loads(data)
        except ValueError:
            err = {}
        if code == 401:
            raise RuntimeError(f"label API: {err.get('detail', 'wrong token')}")
        return ("unknown_label" if err.get("error") == "unknown_label" else "refused",
                str(err.get("detail") or data[:200].decode(errors="replace")))

    def image_url(self, sample: dict[str, Any]) -> str:
        return self.base + sample.get("image_url", "")


class _Direct:
    def __init__(self, state_dir: str, heldout: float) -> None:
        from pathlib import Path

        from .store import SampleStore

        self.store = SampleStore(Path(state_dir) / "samples")
        self.heldout = heldout

    def unlabelled(self, limit: int) -> list[dict[str, Any]]:
        return [s.to_json() for s in self.store.unlabelled(limit)]

    def image(self, sid: str) -> bytes:
        return self.store.image(sid)[0]

    def labels(self) -> list[str]:
        from pathlib import Path

        from .classes import known_classes

        return known_classes(self.store, Path(self.store.root).parent)

    def label(self, sid: str, label: str, new_class: bool = False) -> tuple[str, str]:
        from .classes import UnknownLabel, add_class, check_label

        try:
            label = add_class(self.store, label) if new_class else check_label(label, self.labels())
        except UnknownLabel as e:
            return "unknown_label", str(e)
        except ValueError as e:
            return "refused", str(e)
        ok = self.store.set_label(sid, label, "person", self.heldout)
        return ("ok", "") if ok else ("refused", "unknown or already labelled")

    def image_url(self, sample: dict[str, Any]) -> str:
        return f"(store) {sample['id']}"


def label_loop(backend: Any, *, limit: int = 100, preview: bool = True, input_fn: Callable[[str], str] = input,
               out: TextIO = sys.stdout) -> int:
    """Ask for a label for each unlabelled sample; returns how many were labelled."""
    samples = backend.unlabelled(limit)
    if not samples:
        print("no samples waiting for a label", file=out)
        return 0
    done = 0
    for i, s in enumerate(samples, 1):
        pred = ", ".join(f"{n} {p:.2f}" for n, p in s.get("prediction", []))
        print(f"\n[{i}/{len(samples)}] {s['id']}  device {s['device']}  model {s.get('model_version')}  "
              f"{s.get('uncertainty_kind')} {s.get('uncertainty', 0):.3f}", file=out)
        print(f"  prediction: {pred}", file=out)
        print(f"  image: {backend.image_url(s)}", file=out)
        if preview:
            art = ascii_preview(backend.image(s["id"]))
            if art:
                print("  " + art.replace("\n", "\n  "), file=out)
        while True:
            try:
                answer = input_fn("label [Enter=skip, '='=accept prediction, ?=labels, q=quit]: ").strip()
            except EOFError:
                answer = "q"
            if answer == "?":
                print("  known labels: " + ", ".join(backend.labels()), file=out)
                continue
            break
        if answer == "q":
            break
        if not answer:
            continue
        if answer == "=":
            if not s.get("prediction"):
                continue
            answer = s["prediction"][0][0]
        status, msg = backend.label(s["id"], answer)
        if status == "unknown_label":
            print(f"  {answer!r} is not a known class ({', '.join(backend.labels())})", file=out)
            try:
                sure = input_fn(f"  add {answer!r} as a NEW class? type the name again to confirm: ").strip()
            except EOFError:
                sure = ""
            status, msg = backend.label(s["id"], answer, new_class=True) if sure == answer else ("refused", "not confirmed")
        print(f"  {'labelled ' + answer if status == 'ok' else 'not labelled: ' + msg}", file=out)
        done += status == "ok"
    print(f"\n{done} labelled", file=out)
    return done


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="edgeloop label", description=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--api", default="http://127.0.0.1:8765", help="the trainer's label API (default: %(default)s)")
    p.add_argument("--token-file", metavar="FILE", help="file holding the API's bearer token (default: "
                   f"${TOKEN_ENV} if set, else ./edgeloop-trainer/api_token)")
    p.add_argument("--state-dir", help="open this trainer state's sample store directly instead of the API")
    p.add_argument("--held-out", type=float, default=0.2, help="with --state-dir: held-out fraction (default: %(default)s)")
    p.add_argument("--limit", type=int, default=100, help="at most this many samples per session (default: %(default)s)")
    p.add_argument("--no-preview", action="store_true", help="no ASCII image preview")
    p.add_argument("--import", dest="import_csv", metavar="CSV", help="apply labels from a CSV of sample_id,label and exit")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    try:
        backend: Any = _Direct(args.state_dir, args.held_out) if args.state_dir else \
            _Http(args.api, read_token(args.token_file))
        if args.import_csv:
            from .labelers import read_label_csv

            rows = read_label_csv(args.import_csv)
            ok = sum(backend.label(sid, lab)[0] == "ok" for sid, lab in rows)
            print(f"{ok} of {len(rows)} labels applied (the rest: unknown samples or classes, or already labelled)")
            return 0
        label_loop(backend, limit=args.limit, preview=not args.no_preview)
    except (urllib.error.URLError, ConnectionError, RuntimeError, OSError, ValueError) as e:
        print(f"edgeloop label: {e}", file=sys.stderr)
        return 1
    return 0
