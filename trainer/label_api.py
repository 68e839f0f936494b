"""A small HTTP API for people labelling queued samples (stdlib ``http.server`` in a thread).

Endpoints (JSON unless noted):

- ``GET  /samples?status=unlabelled|labelled|all&limit=N&after=ROWID`` -> list of samples: id, device,
  prediction (top-k ``[label, probability]``), uncertainty, image URL, label (if any), ...
- ``GET  /samples/{id}`` -> one sample
- ``GET  /samples/{id}/image`` -> the image bytes (``image/jpeg`` or ``image/png``)
- ``POST /samples/{id}/label`` with ``{"label": "scratch"}`` -> 200 ``{"id", "label"}``; 404 unknown sample;
  409 already labelled; 400 bad body. A label may name a class the model does not know yet (the head grows).
- ``GET  /labels`` -> the classes known so far (model labels + labels given)
- ``GET  /status`` -> store counts

Why stdlib and not a web framework: it is one screen of code, has no dependency, and the API is for a
handful of people on a trusted network. It binds to 127.0.0.1 by default and has an optional bearer
token (``token=``); put a reverse proxy with TLS in front of it before exposing it further.
"""
from __future__ import annotations

import json
import logging
import re
import threading
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from .store import SampleStore

log = logging.getLogger(__name__)

__all__ = ["LabelServer"]

_SAMPLE_RE = re.compile(r"^/samples/([^/]+)(/image|/label)?/?$")
MAX_BODY = 64 * 1024


class LabelServer:
    """Serve the label API for ``store`` on ``host:port`` (port 0 = any free port; see :attr:`url`)."""

    def __init__(self, store: SampleStore, host: str = "127.0.0.1", port: int = 8765, *, heldout: float = 0.2,
                 known_labels: Callable[[], list[str]] | None = None, token: str | None = None,
                 on_label: Callable[[str, str], None] | None = None) -> None:
        self.store = store
        self.heldout = heldout
        self.known_labels = known_labels or (lambda: [])
        self.token = token
        self.on_label = on_label
        handler = self._make_handler()
        self.httpd = ThreadingHTTPServer((host, port), handler)
        self.httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self.httpd.server_address[1])

    @property
    def url(self) -> str:
        host = self.httpd.server_address[0]
        return f"http://{host}:{self.port}"

    def start(self) -> "LabelServer":
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="label-api", daemon=True)
        self._thread.start()
        log.info("label API on %s", self.url)
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        if self._thread is not None:
            self._thread.join(5)

    # -- request handling ------------------------------------------------------------------------------
    def _make_handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, fmt: str, *args: Any) -> None:  # route access logs to logging, quietly
                log.debug("%s %s", self.address_string(), fmt % args)

            def _send(self, status: int, body: bytes, ctype: str = "application/json") -> None:
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                self.wfile.write(body)

            def _json(self, status: int, obj: Any) -> None:
                self._send(status, json.dumps(obj).encode())

            def _error(self, status: int, message: str) -> None:
                self._json(status, {"error": message})

            def _authorised(self) -> bool:
                if server.token is None:
                    return True
                if self.headers.get("Authorization", "") == f"Bearer {server.token}":
                    return True
                self._error(HTTPStatus.UNAUTHORIZED, "missing or wrong bearer token")
                return False

            def do_GET(self) -> None:  # noqa: N802 - http.server naming
                try:
                    if self._authorised():
                        server._get(self)
                except Exception as e:  # never kill the server thread; say what went wrong
                    log.exception("label API GET %s failed", self.path)
                    self._error(HTTPStatus.INTERNAL_SERVER_ERROR, str(e))

            def do_POST(self) -> None:  # noqa: N802
                try:
                    if self._authorised():
                        server._post(self)
                except Exception as e:
                    log.exception("label API POST %s failed", self.path)
                    self._error(HTTPStatus.INTERNAL_SERVER_ERROR, str(e))

        return Handler

    def _sample_json(self, s: Any) -> dict[str, Any]:
        d = s.to_json()
        d["image_url"] = f"/samples/{s.sample_id}/image"
        return d

    def _get(self, h: Any) -> None:
        parts = urlsplit(h.path)
        path = parts.path
        q = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        if path in ("/samples", "/samples/"):
            status = q.get("status", "unlabelled")
            try:
                limit = max(1, min(int(q.get("limit", 100)), 10_000))
                after = int(q.get("after", 0))
            except ValueError:
                return h._error(HTTPStatus.BAD_REQUEST, "limit and after must be integers")
            if status == "unlabelled":
                rows = self.store.unlabelled(limit, after_rowid=after)
            elif status in ("labelled", "all"):
                cond = "label IS NOT NULL" if status == "labelled" else "1"
                rows = self.store.query(cond, limit=limit, after_rowid=after)
            else:
                return h._error(HTTPStatus.BAD_REQUEST, "status must be unlabelled, labelled or all")
            return h._json(HTTPStatus.OK, [self._sample_json(s) for s in rows])
        if path == "/labels":
            known = list(self.known_labels())
            for lab in self.store.stats()["per_class"]:
                if lab not in known:
                    known.append(lab)
            return h._json(HTTPStatus.OK, known)
        if path == "/status":
            st = self.store.stats()
            st.pop("devices", None)
            return h._json(HTTPStatus.OK, st)
        m = _SAMPLE_RE.match(path)
        if m and m.group(2) in (None, "/image"):
            s = self.store.get(unquote(m.group(1)))
            if s is None:
                return h._error(HTTPStatus.NOT_FOUND, "unknown sample")
            if m.group(2) is None:
                return h._json(HTTPStatus.OK, self._sample_json(s))
            data, ctype = self.store.image(s)
            return h._send(HTTPStatus.OK, data, ctype)
        return h._error(HTTPStatus.NOT_FOUND, f"no such endpoint: GET {path}")

    def _post(self, h: Any) -> None:
        path = urlsplit(h.path).path
        m = _SAMPLE_RE.match(path)
        if not m or m.group(2) != "/label":
            return h._error(HTTPStatus.NOT_FOUND, f"no such endpoint: POST {path}")
        try:
            length = int(h.headers.get("Content-Length", "0"))
        except ValueError:
            return h._error(HTTPStatus.BAD_REQUEST, "bad Content-Length")
        if length <= 0 or length > MAX_BODY:
            return h._error(HTTPStatus.BAD_REQUEST, f"body must be 1..{MAX_BODY} bytes of JSON")
        try:
            body = json.loads(h.rfile.read(length))
            label = body["label"]
            if not isinstance(label, str) or not label.strip() or len(label.strip()) > 256:
                raise ValueError
        except (ValueError, KeyError, TypeError):
            return h._error(HTTPStatus.BAD_REQUEST, 'body must be {"label": "<1-256 characters>"}')
        sid = unquote(m.group(1))
        s = self.store.get(sid)
        if s is None:
            return h._error(HTTPStatus.NOT_FOUND, "unknown sample")
        if s.label is not None:
            return h._json(HTTPStatus.CONFLICT, {"error": "already labelled", "id": sid, "label": s.label})
        if not self.store.set_label(sid, label.strip(), "person", self.heldout):
            return h._error(HTTPStatus.CONFLICT, "already labelled")
        if self.on_label is not None:
            self.on_label(sid, label.strip())
        return h._json(HTTPStatus.OK, {"id": sid, "label": label.strip()})
