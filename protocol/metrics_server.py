"""``GET /metrics`` and ``GET /healthz`` on one port, for any long-running edgeloop process (stdlib only).

Why here: the edge, the trainer and the rollout controller each serve the same two endpoints the same way
(read-only, loopback by default, a warning when bound elsewhere since there is no authentication, a health
check that raises counts as unhealthy). The metrics themselves are the caller's: a WSGI app, normally
``prometheus_client.make_wsgi_app(registry)``, so this module needs no third-party import.

``/healthz`` answers JSON ``{"status": "ok"|"unhealthy", ...details}`` with 200 or 503 (what systemd watchdogs,
Kubernetes probes and load balancers understand). Methods other than GET/HEAD get 405, other paths 404.
"""
from __future__ import annotations

import json
import logging
import socket
import threading
import time
from socketserver import ThreadingMixIn
from typing import Any, Callable
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

__all__ = ["MetricsServer", "LOOPBACK", "Health"]

log = logging.getLogger("edgeloop.metrics")

LOOPBACK = ("127.0.0.1", "::1", "localhost")
#: () -> (healthy, details); details go into the JSON body.
Health = Callable[[], tuple[bool, dict[str, Any]]]
WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Any]


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _Server6(_Server):
    address_family = socket.AF_INET6


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        pass


class MetricsServer:
    """Serve ``metrics_app`` on ``/metrics`` and ``health`` on ``/healthz`` (``name`` goes into ``/``'s text)."""

    def __init__(self, metrics_app: WSGIApp, health: Health, host: str = "127.0.0.1", port: int = 0,
                 name: str = "edgeloop") -> None:
        self.metrics_app = metrics_app
        self.health = health
        self.host, self.port = host, port
        self.name = name
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> str:
        """Bind and serve in a daemon thread; returns the base URL. Raises OSError if the port is taken."""
        cls = _Server6 if ":" in self.host else _Server
        self._server = make_server(self.host, self.port, self._app, cls, handler_class=_QuietHandler)
        self.port = self._server.server_port
        self._thread = threading.Thread(target=self._server.serve_forever, name=f"{self.name}-metrics", daemon=True)
        self._thread.start()
        if self.host not in LOOPBACK:
            log.warning("metrics and health endpoint listen on %s:%d without authentication: anyone who can reach "
                        "that address reads these metrics (read-only); bind 127.0.0.1 and scrape through a proxy "
                        "or an SSH tunnel if that is not intended", self.host, self.port)
        return self.url

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def _app(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        method, path = environ["REQUEST_METHOD"], environ.get("PATH_INFO", "/")
        if method not in ("GET", "HEAD"):
            start_response("405 Method Not Allowed", [("Allow", "GET, HEAD"), ("Content-Type", "text/plain")])
            return [b"read-only: use GET\n"]
        if path == "/metrics":
            return self.metrics_app({**environ, "REQUEST_METHOD": "GET"}, start_response)
        if path == "/healthz":
            ok, details = self._health()
            body = json.dumps({"status": "ok" if ok else "unhealthy", **details}, sort_keys=True, default=str)
            start_response("200 OK" if ok else "503 Service Unavailable",
                           [("Content-Type", "application/json"), ("Cache-Control", "no-store")])
            return [body.encode() + b"\n"]
        if path == "/":
            start_response("200 OK", [("Content-Type", "text/plain")])
            return [f"{self.name}: /metrics (Prometheus), /healthz\n".encode()]
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"not found: /metrics or /healthz\n"]

    def _health(self) -> tuple[bool, dict[str, Any]]:
        try:
            return self.health()
        except Exception as exc:  # a health check that raises is itself a failure, not a crashed server
            log.exception("health check failed")
            return False, {"reason": f"health check raised {type(exc).__name__}: {exc}", "time": time.time()}
