"""The trainer's HTTP API: the label queue, classes, versions and metrics (stdlib ``http.server``, threads).

Who uses it: ``edgeloop label`` (terminal), the web console (``edgeloop console``, which never imports the
trainer and reads everything through here), and scripts. Every request needs the bearer token.

Endpoints (JSON unless noted; errors are ``{"error": reason, "detail": text}``):

- ``GET  /status`` -> store counts, known classes, API counters
- ``GET  /samples?status=unlabelled|labelled|all&device=D&reason=R&predicted=C&label=L&limit=N&after=ROWID``
  -> samples, oldest first (``order=newest``: the latest first): id, rowid, device, prediction (top-k ``[label, probability]``), uncertainty, ``p_select``,
  reason, ROI and frame size, image URL, label (if any)
- ``GET  /samples/summary`` -> waiting samples counted by device, reason and predicted class
- ``GET  /samples/{id}`` -> one sample; ``GET /samples/{id}/image`` -> its bytes (``image/jpeg`` or ``image/png``)
- ``POST /samples/{id}/label`` ``{"label": "scratch", "new_class": false, "relabel": false}`` -> 200
  ``{"id", "label", "previous"}``; 404 unknown sample; 409 already labelled (``relabel: true`` corrects it);
  422 ``unknown_label`` with ``known`` (the label is not a known class and ``new_class`` was not set)
- ``POST /labels`` ``{"labels": [{"id", "label"}, ...], "new_classes": false, "relabel": false}`` -> per-item
  results (imports: at most 10,000 per request, one transaction)
- ``GET  /classes`` -> ``{"known", "added"}``; ``POST /classes`` ``{"name": "crack"}`` adds one explicitly
- ``GET  /labels`` -> the known classes (a plain list; kept for older clients)
- ``GET  /versions`` -> the registry (lineage, status, metrics); ``GET /versions/{v}/confusion`` -> that
  version's confusion matrix on the current held-out set (computed once per held-out size, cached)
- ``GET  /decisions?limit=N`` -> the latest gate decisions with their numbers and reasons
- ``GET  /devices`` -> per-device upload bookkeeping (received, gaps, duplicates)

Hardening (an HTTP surface on a plant network is attacked like any other): a bearer token is required on
every request (generated at first start into ``<state dir>/api_token``, mode 0600; compared in constant
time); state changes are ``POST`` with ``Content-Type: application/json`` only (a cross-site form or
``text/plain`` post is refused before the body is read); any request carrying an ``Origin`` that is not
explicitly allowed, or ``Sec-Fetch-Site: cross-site``, is refused (no browser page is ever a legitimate
client: the console calls the API from its server); bodies are bounded (64 KiB, 2 MiB for ``/labels``);
every connection has a deadline (``request_timeout``, default 10 s, headers and body together), enforced
by a reaper thread that shuts the socket down, so a slow body cannot hold a thread; at most
``max_connections`` requests are served at once (beyond that: 503 at once); one request per connection.
It binds 127.0.0.1 unless told otherwise and logs a warning when it is not a loopback address: put TLS (a
reverse proxy) in front of it before exposing it.
"""
from __future__ import annotations

import hmac
import json
import logging
import os
import re
import secrets
import socket
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from protocol.hosts import is_loopback

from .classes import UnknownLabel, add_class, added_classes, check_class_name, check_label, known_classes
from .store import SampleStore, StoredSample

log = logging.getLogger(__name__)

__all__ = ["TrainerAPI", "LabelServer", "ApiError", "load_or_create_token", "TOKEN_FILE", "TOKEN_ENV"]

TOKEN_FILE = "api_token"
#: Clients (``edgeloop label``, the console) read the token from this variable when no file is given.
TOKEN_ENV = "EDGELOOP_TRAINER_TOKEN"
MAX_BODY = 64 * 1024
MAX_BATCH_BODY = 2 * 1024 * 1024
MAX_BATCH = 10_000
_LABEL_KEYS = {"label", "new_class", "relabel"}
_BATCH_KEYS = {"labels", "new_classes", "relabel"}


class ApiError(Exception):
    """An HTTP error with a machine-readable reason (and optional extra JSON fields)."""

    def __init__(self, status: int, reason: str, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.status, self.reason, self.detail, self.extra = int(status), reason, detail, extra


def load_or_create_token(path: str | os.PathLike[str]) -> str:
    """The API token in ``path``; created (32 random bytes, URL-safe, mode 0600) if the file does not exist."""
    p = Path(path)
    try:
        fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        token = p.read_text(encoding="utf-8").strip()
        if not token:
            raise ValueError(f"{p} is empty: delete it and restart to generate a new token") from None
        if p.stat().st_mode & 0o077:
            log.warning("%s is readable by group/others: chmod 600 it", p)
        return token
    token = secrets.token_urlsafe(32)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(token + "\n")
    log.info("generated the trainer API token in %s (mode 0600)", p)
    return token


class _Server(ThreadingHTTPServer):
    """Thread per request, with a bound on concurrent requests and a deadline per connection."""

    daemon_threads = True

    def __init__(self, addr: tuple[str, int], handler: type[BaseHTTPRequestHandler], *, max_connections: int,
                 request_timeout: float) -> None:
        super().__init__(addr, handler)
        self.request_timeout = float(request_timeout)
        self._slots = threading.BoundedSemaphore(max_connections)
        self._deadlines: dict[socket.socket, float] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.counters: Counter[str] = Counter()
        self._reaper = threading.Thread(target=self._reap, name="trainer-api-reaper", daemon=True)
        self._reaper.start()

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self.counters["busy"] += 1
            try:
                request.sendall(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            except OSError:
                pass
            self.shutdown_request(request)
            return
        with self._lock:
            self._deadlines[request] = time.monotonic() + self.request_timeout
        try:
            super().process_request(request, client_address)
        except Exception:
            self._done(request)
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._done(request)

    def _done(self, request: Any) -> None:
        with self._lock:
            if self._deadlines.pop(request, None) is None:
                return
        self._slots.release()

    def _reap(self) -> None:
        """Shut down connections past their deadline: the handler's blocking read then ends at once."""
        while not self._stop.wait(0.2):
            now = time.monotonic()
            with self._lock:
                expired = [s for s, d in self._deadlines.items() if d < now]
                for s in expired:
                    self._deadlines[s] = float("inf")  # reaped once; the handler thread releases the slot
            for s in expired:
                self.counters["timeout"] += 1
                log.warning("trainer API: request not finished within %.0f s: connection closed", self.request_timeout)
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def server_close(self) -> None:
        self._stop.set()
        super().server_close()


class TrainerAPI:
    """Serve the trainer's API for ``store`` on ``host:port`` (port 0 = any free port; see :attr:`url`).

    ``state_dir`` (default: the store's parent, i.e. the trainer state directory) holds the token file, the
    registry and ``decisions.jsonl``. ``token`` overrides the token file (tests); ``known_labels`` gives the
    running model's classes; ``allowed_origins`` lists browser origins that may call it (none by default).
    """

    def __init__(self, store: SampleStore, host: str = "127.0.0.1", port: int = 8765, *, heldout: float = 0.2,
                 known_labels: Callable[[], list[str]] | None = None, token: str | None = None,
                 state_dir: str | os.PathLike[str] | None = None, on_label: Callable[[str, str], None] | None = None,
                 allowed_origins: tuple[str, ...] = (), request_timeout: float = 10.0, max_connections: int = 32) -> None:
        self.store = store
        self.state_dir = Path(state_dir) if state_dir is not None else Path(store.root).parent
        self.heldout = heldout
        self.known_labels = known_labels or (lambda: [])
        self.token = token or load_or_create_token(self.state_dir / TOKEN_FILE)
        self.on_label = on_label
        self.allowed_origins = frozenset(allowed_origins)
        self.rejected: Counter[str] = Counter()
        self._known_cache: tuple[float, list[str]] = (0.0, [])
        self._confusion: Any = None
        self._rois: dict[str, list[int] | None] = {}
        if not is_loopback(host):
            log.warning("trainer API listens on %s, not a loopback address: anyone who can reach it and holds the "
                        "token can label samples; put a TLS reverse proxy in front of it", host)
        self.httpd = _Server((host, port), self._make_handler(), max_connections=max_connections,
                             request_timeout=request_timeout)
        self._thread: threading.Thread | None = None
        self._routes: list[tuple[str, re.Pattern[str], Callable[..., Any]]] = [
            ("GET", re.compile(r"^/status$"), self._status),
            ("GET", re.compile(r"^/samples/?$"), self._samples),
            ("GET", re.compile(r"^/samples/summary$"), lambda q: self.store.unlabelled_summary()),
            ("GET", re.compile(r"^/samples/([^/]+)$"), self._sample),
            ("GET", re.compile(r"^/samples/([^/]+)/image$"), self._image),
            ("POST", re.compile(r"^/samples/([^/]+)/label$"), self._label),
            ("POST", re.compile(r"^/labels$"), self._label_batch),
            ("GET", re.compile(r"^/labels$"), lambda q: self.known()),
            ("GET", re.compile(r"^/classes$"), lambda q: {"known": self.known(), "added": added_classes(self.store)}),
            ("POST", re.compile(r"^/classes$"), self._add_class),
            ("GET", re.compile(r"^/versions$"), self._versions),
            ("GET", re.compile(r"^/versions/([^/]+)/confusion$"), self._version_confusion),
            ("GET", re.compile(r"^/decisions$"), self._decisions),
            ("GET", re.compile(r"^/devices$"), lambda q: self.store.devices()),
        ]

    @property
    def port(self) -> int:
        return int(self.httpd.server_address[1])

    @property
    def url(self) -> str:
        return f"http://{self.httpd.server_address[0]}:{self.port}"

    def start(self) -> "TrainerAPI":
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="trainer-api", daemon=True)
        self._thread.start()
        log.info("trainer API on %s (bearer token in %s)", self.url, self.state_dir / TOKEN_FILE)
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        if self._thread is not None:
            self._thread.join(5)

    # -- request plumbing -----------------------------------------------------------------------------------
    def _make_handler(self) -> type[BaseHTTPRequestHandler]:
        api = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            timeout: float | None = None  # set in setup(): each blocking read is bounded (the reaper bounds the sum)

            def setup(self) -> None:
                self.timeout = api.httpd.request_timeout
                super().setup()

            def log_message(self, fmt: str, *args: Any) -> None:  # access logs go to logging, quietly
                log.debug("%s %s", self.address_string(), fmt % args)

            def send(self, status: int, body: bytes, ctype: str = "application/json") -> None:
                self.close_connection = True
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-store")
                self.send_header("X-Content-Type-Options", "nosniff")
                self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:  # noqa: N802 - http.server naming
                api._handle(self, "GET")

            def do_POST(self) -> None:  # noqa: N802
                api._handle(self, "POST")

            def do_PUT(self) -> None:  # noqa: N802
                api._handle(self, "PUT")

            def do_DELETE(self) -> None:  # noqa: N802
                api._handle(self, "DELETE")

        return Handler

    def _handle(self, h: Any, method: str) -> None:
        try:
            self._check_request(h, method)
            parts = urlsplit(h.path)
            query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
            allowed = []
            for m, rx, fn in self._routes:
                match = rx.match(parts.path)
                if match is None:
                    continue
                allowed.append(m)
                if m != method:
                    continue
                args = [unquote(g) for g in match.groups()]
                if method == "POST":
                    limit = MAX_BATCH_BODY if parts.path == "/labels" else MAX_BODY
                    result = fn(*args, self._read_json(h, limit))
                else:
                    result = fn(*args, query) if not args else fn(*args)
                if isinstance(result, tuple):  # (bytes, content type)
                    return h.send(HTTPStatus.OK, result[0], result[1])
                return h.send(HTTPStatus.OK, json.dumps(result).encode())
            if allowed:
                raise ApiError(HTTPStatus.METHOD_NOT_ALLOWED, "method_not_allowed", f"{method} {parts.path}: use {allowed[0]}")
            raise ApiError(HTTPStatus.NOT_FOUND, "not_found", f"no such endpoint: {method} {parts.path}")
        except ApiError as e:
            self.rejected[e.reason] += 1
            if e.status >= 500 or e.reason not in ("not_found", "already_labelled"):
                log.info("trainer API %s %s: %s (%s)", method, h.path[:200], e.reason, e.detail)
            self._send_error(h, e)
        except (ConnectionError, TimeoutError, OSError) as e:  # client gone, too slow, or reaped
            self.httpd.counters["timeout" if isinstance(e, TimeoutError) else "connection_lost"] += 1
            log.debug("trainer API %s %s: connection ended: %s", method, h.path[:200], e)
            h.close_connection = True
        except Exception as e:  # never kill the server thread; say what went wrong
            log.exception("trainer API %s %s failed", method, h.path[:200])
            self._send_error(h, ApiError(HTTPStatus.INTERNAL_SERVER_ERROR, "internal", f"{type(e).__name__}: {e}"))

    def _send_error(self, h: Any, e: ApiError) -> None:
        try:
            h.send(e.status, json.dumps({"error": e.reason, "detail": e.detail, **e.extra}).encode())
        except OSError:
            h.close_connection = True

    def _check_request(self, h: Any, method: str) -> None:
        origin = h.headers.get("Origin")
        if (origin is not None and origin not in self.allowed_origins) or \
                h.headers.get("Sec-Fetch-Site", "") == "cross-site":
            raise ApiError(HTTPStatus.FORBIDDEN, "forbidden_origin",
                           f"requests from browser origin {origin!r} are refused")
        auth = h.headers.get("Authorization", "")
        if not (auth.startswith("Bearer ") and hmac.compare_digest(auth[7:].strip().encode(), self.token.encode())):
            raise ApiError(HTTPStatus.UNAUTHORIZED, "unauthorized", "missing or wrong bearer token "
                           f"(it is in {self.state_dir / TOKEN_FILE} on the trainer)")
        if method == "POST":
            ctype = h.headers.get("Content-Type", "").split(";")[0].strip().lower()
            if ctype != "application/json":
                raise ApiError(HTTPStatus.UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type",
                               "state changes take a JSON body with Content-Type: application/json")

    @staticmethod
    def _read_json(h: Any, limit: int) -> dict[str, Any]:
        if h.headers.get("Transfer-Encoding"):
            raise ApiError(HTTPStatus.LENGTH_REQUIRED, "length_required", "send Content-Length, not chunked bodies")
        try:
            length = int(h.headers.get("Content-Length", ""))
        except ValueError:
            raise ApiError(HTTPStatus.LENGTH_REQUIRED, "length_required", "Content-Length is required") from None
        if length <= 0 or length > limit:
            raise ApiError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE if length > limit else HTTPStatus.BAD_REQUEST,
                           "too_large" if length > limit else "bad_request", f"body must be 1..{limit} bytes of JSON")
        data = h.rfile.read(length)
        if len(data) != length:
            raise ConnectionError("body ended early")
        try:
            body = json.loads(data)
        except (ValueError, UnicodeDecodeError) as e:
            raise ApiError(HTTPStatus.BAD_REQUEST, "bad_json", f"body is not JSON: {e}") from None
        if not isinstance(body, dict):
            raise ApiError(HTTPStatus.BAD_REQUEST, "bad_request", "body must be a JSON object")
        return body

    # -- classes ----------------------------------------------------------------------------------------------
    def known(self, fresh: bool = False) -> list[str]:
        """Known classes (cached for a second: every label request checks against them)."""
        at, cached = self._known_cache
        if fresh or time.monotonic() - at > 1.0:
            cached = known_classes(self.store, self.state_dir, self.known_labels())
            self._known_cache = (time.monotonic(), cached)
        return list(cached)

    def _accept_label(self, label: Any, new_class: bool) -> str:
        if not isinstance(label, str) or not label.strip() or len(label.strip()) > 256:
            raise ApiError(HTTPStatus.BAD_REQUEST, "bad_request", "label must be a string of 1-256 characters")
        known = self.known()
        if label.strip() in known:
            return label.strip()
        if new_class:
            try:
                name = add_class(self.store, label)
            except ValueError as e:
                raise ApiError(HTTPStatus.UNPROCESSABLE_ENTITY, "bad_class_name", str(e)) from None
            self.known(fresh=True)
            log.info("class %r added (new_class on a label request)", name)
            return name
        try:
            return check_label(label, self.known(fresh=True))
        except UnknownLabel as e:
            raise ApiError(HTTPStatus.UNPROCESSABLE_ENTITY, e.reason, str(e), known=e.known) from None

    def _add_class(self, body: dict[str, Any]) -> dict[str, Any]:
        _only(body, {"name"})
        try:
            name = add_class(self.store, check_class_name(body.get("name", "")))
        except ValueError as e:
            raise ApiError(HTTPStatus.UNPROCESSABLE_ENTITY, "bad_class_name", str(e)) from None
        log.info("class %r added", name)
        return {"name": name, "known": self.known(fresh=True)}

    # -- samples and labels ------------------------------------------------------------------------------------
    def _sample_json(self, s: StoredSample) -> dict[str, Any]:
        d = s.to_json()
        d.update(rowid=s.rowid, image_url=f"/samples/{s.sample_id}/image", heldout=s.heldout, labelled_at=s.labelled_at,
                 model_roi=self._model_roi(s.model_version))
        return d

    def _model_roi(self, version: str) -> list[int] | None:
        """The ROI in the metadata of the version that selected the sample (where a whole-frame upload's ROI is).

        A sample's own ``roi`` is set only when the edge uploaded the crop; an edge that uploads whole frames
        (``upload.crop_roi: false``) leaves it out, and a person still wants to see the region the model saw.
        """
        if version not in self._rois:
            from .registry import Registry

            roi = None
            try:
                with Registry(self.state_dir) as reg:
                    path = reg.get(version).path
                from .export import read_meta  # onnx (and torch): only once a registered version is asked for

                roi = read_meta(path).roi
            except Exception:  # an unregistered or unreadable version: no ROI to show
                roi = None
            if len(self._rois) > 1000:
                self._rois.clear()
            self._rois[version] = list(roi) if roi else None
        return self._rois[version]

    def _samples(self, q: dict[str, str]) -> list[dict[str, Any]]:
        status = q.get("status", "unlabelled")
        conds = {"unlabelled": ["label IS NULL"], "labelled": ["label IS NOT NULL"], "all": []}.get(status)
        if conds is None:
            raise ApiError(HTTPStatus.BAD_REQUEST, "bad_request", "status must be unlabelled, labelled or all")
        try:
            limit = max(1, min(int(q.get("limit", 100)), 1000))
            after = int(q.get("after", 0))
        except ValueError:
            raise ApiError(HTTPStatus.BAD_REQUEST, "bad_request", "limit and after must be integers") from None
        params: list[Any] = []
        for key, expr in (("device", "device = ?"), ("reason", "reason = ?"),
                          ("predicted", "json_extract(topk, '$[0][0]') = ?"), ("label", "label = ?")):
            if q.get(key):
                conds.append(expr)
                params.append(q[key])
        rows = self.store.query(" AND ".join(conds) or "1", limit=limit, after_rowid=after, params=params,
                                newest_first=q.get("order") == "newest")
        return [self._sample_json(s) for s in rows]

    def _get_sample(self, sid: str) -> StoredSample:
        s = self.store.get(sid)
        if s is None:
            raise ApiError(HTTPStatus.NOT_FOUND, "unknown_sample", f"no sample {sid!r}")
        return s

    def _sample(self, sid: str) -> dict[str, Any]:
        return self._sample_json(self._get_sample(sid))

    def _image(self, sid: str) -> tuple[bytes, str]:
        return self.store.image(self._get_sample(sid))

    def _label(self, sid: str, body: dict[str, Any]) -> dict[str, Any]:
        _only(body, _LABEL_KEYS)
        relabel = _flag(body, "relabel")
        label = self._accept_label(body.get("label"), _flag(body, "new_class"))
        s = self._get_sample(sid)
        if s.label is not None and not relabel:
            raise ApiError(HTTPStatus.CONFLICT, "already_labelled", f"{sid} is labelled {s.label!r}; "
                           "send relabel=true to correct it", id=sid, label=s.label)
        if not self.store.set_label(sid, label, "person", self.heldout, overwrite=relabel):
            raise ApiError(HTTPStatus.CONFLICT, "already_labelled", f"{sid} was labelled meanwhile", id=sid)
        if self.on_label is not None:
            self.on_label(sid, label)
        return {"id": sid, "label": label, "previous": s.label}

    def _label_batch(self, body: dict[str, Any]) -> dict[str, Any]:
        _only(body, _BATCH_KEYS)
        items = body.get("labels")
        if not isinstance(items, list) or len(items) > MAX_BATCH:
            raise ApiError(HTTPStatus.BAD_REQUEST, "bad_request", f"labels must be a list of at most {MAX_BATCH} "
                           '{"id": ..., "label": ...} objects')
        relabel, new_classes = _flag(body, "relabel"), _flag(body, "new_classes")
        results: list[dict[str, Any]] = []
        todo: list[tuple[str, str]] = []
        for it in items:
            if not isinstance(it, dict) or not isinstance(it.get("id"), str) or not isinstance(it.get("label"), str):
                raise ApiError(HTTPStatus.BAD_REQUEST, "bad_request", 'each item must be {"id": str, "label": str}')
            sid = it["id"]
            try:
                label = self._accept_label(it["label"], new_classes)
            except ApiError as e:
                results.append({"id": sid, "status": e.reason, "label": it["label"]})
                continue
            s = self.store.get(sid)
            status = ("unknown_sample" if s is None else
                      "already_labelled" if s.label is not None and not relabel else "labelled")
            results.append({"id": sid, "status": status, "label": label})
            if status == "labelled":
                todo.append((sid, label))
        applied = self.store.set_labels(todo, "import", self.heldout, overwrite=relabel)
        counts = Counter(r["status"] for r in results)
        log.info("label batch: %d applied of %d (%s)", applied, len(items), dict(counts))
        return {"applied": applied, "counts": dict(counts), "results": results, "known": self.known()}

    # -- status, versions, decisions ------------------------------------------------------------------------------
    def _status(self, q: dict[str, str]) -> dict[str, Any]:
        st = self.store.stats()
        st.pop("devices", None)
        st["known_classes"] = self.known()
        st["api"] = {"rejected": dict(self.rejected), **dict(self.httpd.counters)}
        return st

    def _versions(self, q: dict[str, str]) -> list[dict[str, Any]]:
        from .registry import Registry

        with Registry(self.state_dir) as reg:
            return [{"version": r.version, "parent": r.parent, "status": r.status, "sha256": r.sha256,
                     "size": r.size, "arch": r.arch, "labels": r.labels, "samples_seen": r.samples_seen,
                     "metrics": r.metrics, "created": r.created, "updated": r.updated} for r in reg.list()]

    def _version_confusion(self, version: str) -> dict[str, Any]:
        from .version_eval import ConfusionCache

        if self._confusion is None:
            self._confusion = ConfusionCache(self.state_dir, self.store)
        try:
            return self._confusion.get(version)
        except KeyError as e:
            raise ApiError(HTTPStatus.NOT_FOUND, "unknown_version", str(e)) from None

    def _decisions(self, q: dict[str, str]) -> list[dict[str, Any]]:
        try:
            limit = max(1, min(int(q.get("limit", 200)), 5000))
        except ValueError:
            raise ApiError(HTTPStatus.BAD_REQUEST, "bad_request", "limit must be an integer") from None
        path = self.state_dir / "decisions.jsonl"
        if not path.exists():
            return []
        with open(path, encoding="utf-8") as fh:
            lines = deque(fh, maxlen=limit)
        out = []
        for line in lines:
            try:
                out.append(json.loads(line))
            except ValueError:
                continue  # a line cut by a crash mid-write
        return out


#: The old name (``trainer.service`` and older scripts use it).
LabelServer = TrainerAPI


def _only(body: dict[str, Any], keys: set[str]) -> None:
    extra = set(body) - keys
    if extra:
        raise ApiError(HTTPStatus.BAD_REQUEST, "bad_request", f"unknown fields {sorted(extra)}; allowed: {sorted(keys)}")


def _flag(body: dict[str, Any], key: str) -> bool:
    v = body.get(key, False)
    if not isinstance(v, bool):
        raise ApiError(HTTPStatus.BAD_REQUEST, "bad_request", f"{key} must be true or false")
    return v
