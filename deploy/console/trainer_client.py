"""The console's client of the trainer's HTTP API (``trainer/label_api.py``): the console never imports the
trainer, it reads and labels through this.

The bearer token comes from a file (``--trainer-token-file``; the trainer writes ``<state>/api_token``) or
the ``EDGELOOP_TRAINER_TOKEN`` variable, never from the command line.
"""
from __future__ import annotations

import http.client
import json
import os
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

__all__ = ["TrainerClient", "TrainerError", "read_token_file", "TOKEN_ENV", "DEFAULT_TOKEN_FILE"]

TOKEN_ENV = "EDGELOOP_TRAINER_TOKEN"
DEFAULT_TOKEN_FILE = "./edgeloop-trainer/api_token"


class TrainerError(RuntimeError):
    """The trainer API refused or could not be reached; ``status`` 0 = unreachable; ``body`` its JSON error."""

    def __init__(self, status: int, message: str, body: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.body = body or {}


def read_token_file(path: str | None) -> str:
    """Token from ``path``; without one, ``$EDGELOOP_TRAINER_TOKEN``, else the default trainer state's file."""
    if path is None and os.environ.get(TOKEN_ENV):
        return os.environ[TOKEN_ENV].strip()
    p = Path(path or DEFAULT_TOKEN_FILE)
    try:
        token = p.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        raise FileNotFoundError(f"trainer API token file {p} not found: give --trainer-token-file (the trainer "
                                f"writes <state dir>/api_token) or set {TOKEN_ENV}") from None
    if not token:
        raise ValueError(f"trainer API token file {p} is empty")
    return token


class TrainerClient:
    """Blocking calls (the console runs them in its thread pool); one connection per request, as the API wants."""

    def __init__(self, base_url: str, token: str, timeout: float = 10.0) -> None:
        u = urlsplit(base_url)
        if u.scheme not in ("http", "https") or not u.hostname:
            raise ValueError(f"trainer API URL must be http(s)://host:port, not {base_url!r}")
        self.base_url = base_url.rstrip("/")
        self._scheme, self._host, self._port = u.scheme, u.hostname, u.port or (443 if u.scheme == "https" else 80)
        self._token = token
        self.timeout = timeout

    def __repr__(self) -> str:  # never the token
        return f"TrainerClient({self.base_url!r})"

    def request(self, method: str, path: str, body: Any = None) -> tuple[int, bytes, str]:
        cls = http.client.HTTPSConnection if self._scheme == "https" else http.client.HTTPConnection
        conn = cls(self._host, self._port, timeout=self.timeout)
        headers = {"Authorization": f"Bearer {self._token}"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        try:
            conn.request(method, path, body=data, headers=headers)
            r = conn.getresponse()
            return r.status, r.read(), r.getheader("Content-Type", "")
        except (OSError, http.client.HTTPException) as e:
            raise TrainerError(0, f"trainer API at {self.base_url} unreachable: {e}") from None
        finally:
            conn.close()

    def _json(self, method: str, path: str, body: Any = None) -> Any:
        status, data, _ = self.request(method, path, body)
        try:
            parsed = json.loads(data) if data else None
        except ValueError:
            parsed = None
        if status != 200:
            err = parsed if isinstance(parsed, dict) else {}
            raise TrainerError(status, f"trainer API {method} {path}: {status} {err.get('detail') or data[:200]!r}", err)
        return parsed

    def get(self, path: str, **params: Any) -> Any:
        q = {k: v for k, v in params.items() if v not in (None, "")}
        return self._json("GET", path + ("?" + urlencode(q) if q else ""))

    def post(self, path: str, body: dict[str, Any]) -> Any:
        return self._json("POST", path, body)

    # -- the calls the console makes --------------------------------------------------------------------
    def samples(self, **filters: Any) -> list[dict[str, Any]]:
        return self.get("/samples", **filters)

    def sample(self, sid: str) -> dict[str, Any]:
        return self.get(f"/samples/{quote(sid, safe='')}")

    def image(self, sid: str) -> tuple[bytes, str]:
        status, data, ctype = self.request("GET", f"/samples/{quote(sid, safe='')}/image")
        if status != 200:
            raise TrainerError(status, f"image of {sid}: {status}")
        return data, ctype

    def label(self, sid: str, label: str, *, new_class: bool = False, relabel: bool = False) -> dict[str, Any]:
        return self.post(f"/samples/{quote(sid, safe='')}/label",
                         {"label": label, "new_class": new_class, "relabel": relabel})

    def label_batch(self, pairs: list[tuple[str, str]], *, new_classes: bool = False) -> dict[str, Any]:
        return self.post("/labels", {"labels": [{"id": i, "label": lab} for i, lab in pairs],
                                     "new_classes": new_classes})

    def classes(self) -> dict[str, Any]:
        return self.get("/classes")

    def add_class(self, name: str) -> dict[str, Any]:
        return self.post("/classes", {"name": name})

    def summary(self) -> dict[str, dict[str, int]]:
        return self.get("/samples/summary")

    def status(self) -> dict[str, Any]:
        return self.get("/status")

    def versions(self) -> list[dict[str, Any]]:
        return self.get("/versions")

    def confusion(self, version: str) -> dict[str, Any]:
        return self.get(f"/versions/{quote(version, safe='')}/confusion")

    def decisions(self, limit: int = 500) -> list[dict[str, Any]]:
        return self.get("/decisions", limit=limit)
