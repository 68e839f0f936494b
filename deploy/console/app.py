"""The console's web application (Starlette + Jinja2 templates + small plain JavaScript, served by uvicorn).

:class:`Console` is the application object: it owns the services the pages read (the trainer client, the
rollouts adapter, the live fleet view), starts and stops them in one place, and builds the Starlette app.

Request rules, in one place (:meth:`Console.guard`): every page and API call needs a session (pages
redirect to /login, API calls get 401); roles are checked per route; every ``POST`` must also carry the
session's CSRF token and, if the browser sends an ``Origin``, come from this console's own origin; bodies
are read with a size and a time limit. No ``GET`` changes anything. Every response carries a strict
Content-Security-Policy (scripts and styles only from /static, no inline script), ``nosniff`` and
``frame-ancestors 'none'``.
"""
from __future__ import annotations

import asyncio
import hmac
import io
import json
import logging
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from . import exchange, plots
from .auth import ROLES, LoginThrottle, Session, Sessions, Users
from .live import FleetView
from .rollouts import NoControllerState, Rollouts
from .trainer_client import TrainerClient, TrainerError

log = logging.getLogger("edgeloop.console")

__all__ = ["Console", "ConsoleSettings", "SESSION_COOKIE"]

HERE = Path(__file__).parent
SESSION_COOKIE = "edgeloop_session"
LOGIN_COOKIE = "edgeloop_login"
CSP = ("default-src 'self'; img-src 'self' data: blob:; script-src 'self'; style-src 'self'; "
       "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'")
FORM_LIMIT = 64 * 1024


@dataclass
class ConsoleSettings:
    state_dir: Path = Path("./edgeloop-console")
    trainer_url: str = "http://127.0.0.1:8765"
    trainer_token: str = field(default="", repr=False)
    deploy_state: Path = Path(".edgeloop/deploy")
    broker: str | None = "mqtt://127.0.0.1:1883"
    prefix: str = "edgeloop/v1"
    mqtt_ca: str | None = None
    mqtt_cert: str | None = None
    mqtt_key: str | None = None
    secure_cookies: bool = False           # True when served over TLS
    max_import_bytes: int = 32 * 1024 * 1024
    body_timeout_s: float = 30.0


class _SecurityHeaders:
    """Pure ASGI middleware (works with streaming responses): security headers on every response."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def wrapped(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers += [(b"content-security-policy", CSP.encode()), (b"x-content-type-options", b"nosniff"),
                            (b"referrer-policy", b"same-origin"), (b"x-frame-options", b"DENY")]
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, wrapped)


class Console:
    """The console application; ``app`` is the ASGI app, ``start()``/``stop()`` its services."""

    def __init__(self, settings: ConsoleSettings, *, trainer: TrainerClient | None = None,
                 rollouts: Rollouts | None = None, fleet: FleetView | None = None) -> None:
        from protocol.topics import Topics

        self.settings = settings
        self.users = Users(settings.state_dir)
        self.sessions = Sessions()
        self.throttle = LoginThrottle()
        self.trainer = trainer or TrainerClient(settings.trainer_url, settings.trainer_token)
        self.rollouts = rollouts or Rollouts(settings.deploy_state)
        self.fleet = fleet or FleetView(Topics(settings.prefix))
        self.templates = Jinja2Templates(directory=str(HERE / "templates"))
        self.templates.env.filters["ago"] = _ago
        self.templates.env.filters["num"] = _num
        self._png_cache: dict[str, bytes] = {}
        self.closing = threading.Event()  # set when the server stops: live streams end so shutdown is quick
        self.app = _SecurityHeaders(Starlette(routes=self._routes(), lifespan=self._lifespan))

    # -- services ---------------------------------------------------------------------------------------------
    def start(self) -> None:
        """The services the pages read, in order; a broker that is down does not stop the console."""
        pw = self.users.ensure_initial()
        if pw is not None:
            log.warning("first start: user 'admin' (operator) created; its password is in %s (mode 0600) -- log in, "
                        "set your own with `edgeloop console user add admin`, then delete that file", pw)
        if self.settings.broker and not self.fleet.connected:
            s = self.settings
            try:
                self.fleet.start(s.broker, ca=s.mqtt_ca, cert=s.mqtt_cert, key=s.mqtt_key)
            except (ConnectionError, OSError, ValueError) as e:
                log.warning("fleet view: %s (retrying in the background)", e)

    def close_streams(self) -> None:
        """End every live (server-sent events) stream within half a second; call before stopping the server."""
        self.closing.set()

    def stop(self) -> None:
        self.fleet.stop()
        self.rollouts.close()

    @asynccontextmanager
    async def _lifespan(self, app: Any) -> AsyncIterator[None]:
        await run_in_threadpool(self.start)
        try:
            yield
        finally:
            await run_in_threadpool(self.stop)

    def _routes(self) -> list[Any]:
        r = Route
        return [
            r("/", lambda req: RedirectResponse("/fleet", 303)),
            r("/login", self.login_page), r("/login", self.login, methods=["POST"]),
            r("/logout", self.logout, methods=["POST"]),
            r("/fleet", self.fleet_page), r("/fleet/events", self.fleet_events), r("/fleet/{device}", self.device_page),
            r("/rollouts", self.rollouts_page), r("/rollouts/events", self.rollouts_events),
            r("/rollouts/{rid}/{action}", self.rollout_action, methods=["POST"]),
            r("/approve/{version}", self.approve, methods=["POST"]),
            r("/reject/{version}", self.reject, methods=["POST"]),
            r("/models", self.models_page), r("/models/accuracy.png", self.accuracy_png),
            r("/models/{version}/confusion.png", self.confusion_png),
            r("/label", self.label_page), r("/api/queue", self.api_queue), r("/api/classes", self.api_classes),
            r("/api/classes", self.api_add_class, methods=["POST"]),
            r("/api/samples/{sid}/image", self.api_image),
            r("/api/samples/{sid}/label", self.api_label, methods=["POST"]),
            r("/data", self.data_page), r("/data/export", self.data_export),
            r("/data/import", self.data_import, methods=["POST"]),
            Mount("/static", StaticFiles(directory=str(HERE / "static")), name="static"),
        ]

    # -- request rules ----------------------------------------------------------------------------------------------
    def session(self, request: Request) -> Session | None:
        return self.sessions.get(request.cookies.get(SESSION_COOKIE))

    def guard(self, request: Request, role: str = "viewer", api: bool = False) -> Session:
        """The session if it may do this; else raise (redirect to login, 401, or 403)."""
        s = self.session(request)
        if s is None:
            if api or request.method != "GET":
                raise HTTPException(401, "log in first")
            raise HTTPException(303, headers={"Location": "/login?next=" + quote(request.url.path)})
        if not s.allows(role):
            raise HTTPException(403, f"needs the {role} role (you are {s.user}, {s.role})")
        if request.method != "GET":
            origin = request.headers.get("origin")
            if origin is not None and origin != _own_origin(request):
                raise HTTPException(403, "cross-origin request refused")
            token = request.headers.get("x-csrf-token") or getattr(request.state, "form_csrf", "")
            if not token or not hmac.compare_digest(token.encode(), s.csrf.encode()):
                raise HTTPException(403, "missing or wrong CSRF token: reload the page")
        return s

    async def body(self, request: Request, limit: int) -> bytes:
        """The request body, at most ``limit`` bytes, read within the body timeout (413 / 408 otherwise)."""
        cl = request.headers.get("content-length")
        if cl is not None and (not cl.isdigit() or int(cl) > limit):
            raise HTTPException(413, f"body larger than {limit} bytes")
        chunks: list[bytes] = []
        size = 0

        async def read() -> None:
            nonlocal size
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise HTTPException(413, f"body larger than {limit} bytes")
                chunks.append(chunk)

        try:
            await asyncio.wait_for(read(), self.settings.body_timeout_s)
        except asyncio.TimeoutError:
            raise HTTPException(408, "request body too slow") from None
        return b"".join(chunks)

    async def form(self, request: Request) -> dict[str, str]:
        if request.headers.get("content-type", "").split(";")[0].strip() != "application/x-www-form-urlencoded":
            raise HTTPException(415, "expected a form")
        data = await self.body(request, FORM_LIMIT)
        form = {k: v[-1] for k, v in parse_qs(data.decode("utf-8", "replace")).items()}
        request.state.form_csrf = form.get("csrf_token", "")
        return form

    async def json_body(self, request: Request) -> dict[str, Any]:
        if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
            raise HTTPException(415, "expected Content-Type: application/json")
        try:
            body = json.loads(await self.body(request, FORM_LIMIT))
        except ValueError:
            raise HTTPException(400, "body is not JSON") from None
        if not isinstance(body, dict):
            raise HTTPException(400, "body must be a JSON object")
        return body

    def render(self, request: Request, name: str, s: Session | None, **ctx: Any) -> Response:
        ctx.update(session=s, roles=ROLES, path=request.url.path, fleet_connected=self.fleet.connected)
        return self.templates.TemplateResponse(request, name, ctx, headers={"Cache-Control": "no-store"})

    def _cookie(self, resp: Response, name: str, value: str, max_age: int | None = None) -> None:
        resp.set_cookie(name, value, max_age=max_age, httponly=True, samesite="strict", path="/",
                        secure=self.settings.secure_cookies)

    # -- login ------------------------------------------------------------------------------------------------------
    async def login_page(self, request: Request) -> Response:
        import secrets

        token = secrets.token_urlsafe(24)
        resp = self.render(request, "login.html", None, csrf=token, next=_safe_next(request.query_params.get("next")),
                           error=request.query_params.get("error"))
        self._cookie(resp, LOGIN_COOKIE, token, max_age=3600)
        return resp

    async def login(self, request: Request) -> Response:
        form = await self.form(request)
        client = request.client.host if request.client else "?"
        cookie = request.cookies.get(LOGIN_COOKIE, "")
        nxt = _safe_next(form.get("next"))
        if not cookie or not hmac.compare_digest(cookie.encode(), form.get("csrf_token", "").encode()):
            return RedirectResponse("/login?error=expired", 303)
        if self.throttle.blocked(client):
            log.warning("login from %s refused: too many failed attempts", client)
            return RedirectResponse("/login?error=throttled", 303)
        user = form.get("user", "")
        role = await run_in_threadpool(self.users.verify, user, form.get("password", ""))
        if role is None:
            self.throttle.failed(client)
            log.warning("failed login for %r from %s", user[:64], client)
            return RedirectResponse("/login?error=bad&next=" + quote(nxt), 303)
        self.throttle.succeeded(client)
        s = self.sessions.create(user, role)
        log.info("login: %s (%s) from %s", user, role, client)
        resp = RedirectResponse(nxt, 303)
        self._cookie(resp, SESSION_COOKIE, s.id)
        resp.delete_cookie(LOGIN_COOKIE, path="/")
        return resp

    async def logout(self, request: Request) -> Response:
        await self.form(request)
        s = self.guard(request)
        self.sessions.drop(s.id)
        resp = RedirectResponse("/login", 303)
        resp.delete_cookie(SESSION_COOKIE, path="/")
        return resp

    # -- fleet --------------------------------------------------------------------------------------------------------
    async def fleet_page(self, request: Request) -> Response:
        s = self.guard(request)
        rows = self.fleet.rows()
        return self.render(request, "fleet.html", s, rows=rows, rev=self.fleet.rev,
                           online=sum(1 for r in rows if r["online"]))

    async def fleet_events(self, request: Request) -> Response:
        """Server-sent events: ``{"rev", "devices": [changed rows]}`` at most twice a second."""
        self.guard(request, api=True)
        try:
            rev = int(request.query_params.get("rev", "0"))
        except ValueError:
            rev = 0

        async def stream() -> Any:
            nonlocal rev
            last_beat = time.monotonic()
            yield "retry: 2000\n\n"
            while not self.closing.is_set() and not await request.is_disconnected():
                if self.fleet.rev > rev:
                    rev, rows = self.fleet.changes(rev)
                    yield f"data: {json.dumps({'rev': rev, 'devices': rows, 'now': time.time()})}\n\n"
                elif time.monotonic() - last_beat > 10:
                    last_beat = time.monotonic()
                    yield f"data: {json.dumps({'rev': rev, 'devices': [], 'now': time.time()})}\n\n"
                await asyncio.sleep(0.5)

        return StreamingResponse(stream(), media_type="text/event-stream", headers={"Cache-Control": "no-store"})

    async def device_page(self, request: Request) -> Response:
        s = self.guard(request)
        device = request.path_params["device"]
        row = self.fleet.row(device)
        recent, error = [], None
        try:
            recent = await run_in_threadpool(self.trainer.samples, status="all", device=device, limit=24, order="newest")
        except TrainerError as e:
            error = str(e)
        if row is None and not recent:
            raise HTTPException(404, f"no device {device!r}")
        return self.render(request, "device.html", s, device=device, row=row or {}, recent=recent, error=error)

    # -- rollouts -----------------------------------------------------------------------------------------------------
    def _rollout_ctx(self, rid: str | None = None) -> dict[str, Any]:
        try:
            return {"rollouts": self.rollouts.list(), "current": self.rollouts.status(rid),
                    "waiting": self.rollouts.waiting_approval(), "error": None}
        except NoControllerState as e:
            return {"rollouts": [], "current": {}, "waiting": [], "error": str(e)}

    async def rollouts_page(self, request: Request) -> Response:
        s = self.guard(request)
        ctx = await run_in_threadpool(self._rollout_ctx, request.query_params.get("id"))
        return self.render(request, "rollouts.html", s, now=time.time(), **ctx)

    async def rollouts_events(self, request: Request) -> Response:
        """Server-sent events: the re-rendered rollout panel whenever it changes (checked every second)."""
        s = self.guard(request, api=True)
        rid = request.query_params.get("id")
        template = self.templates.get_template("rollout_panel.html")

        async def stream() -> Any:
            last = ""
            yield "retry: 2000\n\n"
            while not self.closing.is_set() and not await request.is_disconnected():
                ctx = await run_in_threadpool(self._rollout_ctx, rid)
                html = template.render(session=s, now=time.time(), **ctx)
                if html != last:
                    last = html
                    yield f"data: {json.dumps({'html': html})}\n\n"
                for _ in range(4):
                    if self.closing.is_set():
                        break
                    await asyncio.sleep(0.25)

        return StreamingResponse(stream(), media_type="text/event-stream", headers={"Cache-Control": "no-store"})

    async def rollout_action(self, request: Request) -> Response:
        await self.form(request)
        s = self.guard(request, "operator")
        rid, action = request.path_params["rid"], request.path_params["action"]
        try:
            res = await run_in_threadpool(self.rollouts.command, rid, action)
        except (KeyError, ValueError, NoControllerState) as e:
            return RedirectResponse("/rollouts?error=" + quote(str(e)), 303)
        log.info("operator %s: %s rollout %s", s.user, action, rid)
        note = f"{action} queued for {rid}" + ("" if res["controller_alive"] else " (no controller running)")
        return RedirectResponse(f"/rollouts?id={quote(rid)}&note=" + quote(note), 303)

    async def approve(self, request: Request) -> Response:
        await self.form(request)
        s = self.guard(request, "operator")
        version = request.path_params["version"]
        try:
            res = await run_in_threadpool(self.rollouts.approve, version, s.user)
        except (KeyError, ValueError, NoControllerState) as e:
            return RedirectResponse("/rollouts?error=" + quote(str(e).strip("'\"")), 303)
        log.info("operator %s approved %s", s.user, version)
        note = f"{version} approved" + ("" if res["controller_alive"] else " (no controller running)")
        return RedirectResponse(f"/rollouts?id={quote(res['id'])}&note=" + quote(note), 303)

    async def reject(self, request: Request) -> Response:
        form = await self.form(request)
        s = self.guard(request, "operator")
        version = request.path_params["version"]
        try:
            res = await run_in_threadpool(self.rollouts.reject, version, s.user, str(form.get("reason") or ""))
        except (KeyError, ValueError, NoControllerState) as e:
            return RedirectResponse("/rollouts?error=" + quote(str(e).strip("'\"")), 303)
        log.info("operator %s rejected %s", s.user, version)
        return RedirectResponse(f"/rollouts?id={quote(res['id'])}&note=" + quote(f"{version} rejected"), 303)

    # -- models -------------------------------------------------------------------------------------------------------
    async def models_page(self, request: Request) -> Response:
        s = self.guard(request)
        try:
            versions = await run_in_threadpool(self.trainer.versions)
            decisions = await run_in_threadpool(self.trainer.decisions, 1000)
        except TrainerError as e:
            return self.render(request, "models.html", s, versions=[], tree=[], decisions={}, error=str(e))
        by_version = {d["version"]: d for d in decisions if d.get("version")}
        rejected = [d for d in decisions if not d.get("promote")][-10:]
        return self.render(request, "models.html", s, versions=versions[::-1], tree=_lineage(versions),
                           decisions=by_version, rejected=rejected[::-1], error=None)

    async def _png(self, key: str, make: Any) -> Response:
        data = self._png_cache.get(key)
        if data is None:
            data = await run_in_threadpool(make)
            if len(self._png_cache) > 64:
                self._png_cache.clear()
            self._png_cache[key] = data
        return Response(data, media_type="image/png", headers={"Cache-Control": "private, max-age=30"})

    async def accuracy_png(self, request: Request) -> Response:
        self.guard(request)
        versions = await run_in_threadpool(self.trainer.versions)
        key = "acc:" + json.dumps([(v["version"], v["status"], v["metrics"].get("accuracy")) for v in versions])
        return await self._png(key, lambda: plots.accuracy_png(versions))

    async def confusion_png(self, request: Request) -> Response:
        self.guard(request)
        try:
            cm = await run_in_threadpool(self.trainer.confusion, request.path_params["version"])
        except TrainerError as e:
            raise HTTPException(404 if e.status == 404 else 502, str(e)) from None
        return await self._png(f"cm:{cm['version']}:{cm['n']}", lambda: plots.confusion_png(cm))

    # -- label queue -----------------------------------------------------------------------------------------------------
    async def label_page(self, request: Request) -> Response:
        s = self.guard(request, "labeller")
        try:
            classes = await run_in_threadpool(self.trainer.classes)
            summary = await run_in_threadpool(self.trainer.summary)
            error = None
        except TrainerError as e:
            classes, summary, error = {"known": [], "added": []}, {"device": {}, "reason": {}, "predicted": {}}, str(e)
        return self.render(request, "label.html", s, classes=classes["known"], summary=summary, error=error,
                           waiting=sum(summary["device"].values()))

    async def api_queue(self, request: Request) -> Response:
        self.guard(request, "labeller", api=True)
        q = request.query_params
        filters = {k: q.get(k) for k in ("device", "reason", "predicted")}
        try:
            rows = await run_in_threadpool(self.trainer.samples, status="unlabelled", after=q.get("after", "0"),
                                           limit=min(int(q.get("limit", "50") or 50), 200), **filters)
        except (TrainerError, ValueError) as e:
            return JSONResponse({"error": str(e)}, 502)
        for r in rows:
            r["image_url"] = f"/api/samples/{quote(r['id'], safe='')}/image"
        return JSONResponse(rows, headers={"Cache-Control": "no-store"})

    async def api_image(self, request: Request) -> Response:
        self.guard(request, api=True)
        try:
            data, ctype = await run_in_threadpool(self.trainer.image, request.path_params["sid"])
        except TrainerError as e:
            raise HTTPException(404 if e.status == 404 else 502, str(e)) from None
        # an uploaded image never changes: let the browser keep the preloaded copy
        return Response(data, media_type=ctype, headers={"Cache-Control": "private, max-age=3600"})

    async def api_label(self, request: Request) -> Response:
        body = await self.json_body(request)
        s = self.guard(request, "labeller", api=True)
        label = body.get("label")
        if not isinstance(label, str):
            raise HTTPException(400, "label must be a string")
        try:
            res = await run_in_threadpool(lambda: self.trainer.label(
                request.path_params["sid"], label, new_class=body.get("new_class") is True,
                relabel=body.get("relabel") is True))
        except TrainerError as e:
            return JSONResponse({"error": e.body.get("error", "trainer"), "detail": str(e),
                                 "known": e.body.get("known")}, e.status or 502)
        if body.get("new_class") is True:
            log.info("labeller %s added class %r (confirmed new class)", s.user, res["label"])
        return JSONResponse(res)

    async def api_classes(self, request: Request) -> Response:
        self.guard(request, api=True)
        return JSONResponse(await run_in_threadpool(self.trainer.classes))

    async def api_add_class(self, request: Request) -> Response:
        body = await self.json_body(request)
        s = self.guard(request, "labeller", api=True)
        try:
            res = await run_in_threadpool(self.trainer.add_class, str(body.get("name", "")))
        except TrainerError as e:
            return JSONResponse({"error": e.body.get("error", "trainer"), "detail": str(e)}, e.status or 502)
        log.info("labeller %s added class %r", s.user, res["name"])
        return JSONResponse(res)

    # -- data in and out ---------------------------------------------------------------------------------------------------
    async def data_page(self, request: Request) -> Response:
        s = self.guard(request, "labeller")
        try:
            status = await run_in_threadpool(self.trainer.status)
        except TrainerError as e:
            status = {"error": str(e)}
        return self.render(request, "data.html", s, status=status)

    async def data_export(self, request: Request) -> Response:
        self.guard(request, "labeller")
        fmt = request.query_params.get("format", "imagefolder")
        if fmt not in ("imagefolder", "labelstudio"):
            raise HTTPException(400, "format must be imagefolder or labelstudio")
        unlabelled = request.query_params.get("unlabelled") == "1"

        def build() -> bytes:
            buf = io.BytesIO()
            sink = exchange.ZipSink(buf)
            if fmt == "imagefolder":
                exchange.export_imagefolder(self.trainer, sink)
            else:
                exchange.export_labelstudio(self.trainer, sink, include_unlabelled=unlabelled)
            sink.close()
            return buf.getvalue()

        try:
            data = await run_in_threadpool(build)
        except TrainerError as e:
            raise HTTPException(502, str(e)) from None
        name = f"edgeloop-{fmt}-{time.strftime('%Y%m%d-%H%M%S')}.zip"
        return Response(data, media_type="application/zip",
                        headers={"Content-Disposition": f'attachment; filename="{name}"', "Cache-Control": "no-store"})

    async def data_import(self, request: Request) -> Response:
        data = await self.body(request, self.settings.max_import_bytes)
        s = self.guard(request, "labeller", api=True)
        fmt = request.query_params.get("format", "auto")
        new_classes = request.query_params.get("new_classes") == "1"
        try:
            pairs, skipped = exchange.parse_labels(data.decode("utf-8-sig"), fmt)
            res = await run_in_threadpool(exchange.import_labels, self.trainer, pairs, new_classes)
        except (ValueError, UnicodeDecodeError) as e:
            return JSONResponse({"error": "bad_file", "detail": str(e)}, 400)
        except TrainerError as e:
            return JSONResponse({"error": "trainer", "detail": str(e)}, 502)
        res["rows"], res["without_label"] = len(pairs), skipped
        log.info("labeller %s imported %d of %d labels (%s)", s.user, res["applied"], len(pairs), res["counts"])
        return JSONResponse(res)


def _own_origin(request: Request) -> str:
    host = request.headers.get("host", "")
    return f"{request.url.scheme}://{host}"


def _safe_next(nxt: str | None) -> str:
    """Only local paths: a login must never redirect to another site."""
    if not nxt or not nxt.startswith("/") or nxt.startswith("//") or "\\" in nxt:
        return "/fleet"
    return urlsplit(nxt).path or "/fleet"


def _lineage(versions: list[dict[str, Any]]) -> list[tuple[int, dict[str, Any]]]:
    """Versions in tree order with their depth (parent -> child), roots first."""
    children: dict[str | None, list[dict[str, Any]]] = {}
    known = {v["version"] for v in versions}
    for v in versions:
        children.setdefault(v["parent"] if v["parent"] in known else None, []).append(v)
    out: list[tuple[int, dict[str, Any]]] = []
    stack = [(0, v) for v in reversed(children.get(None, []))]
    while stack:
        depth, v = stack.pop()
        out.append((depth, v))
        stack += [(depth + 1, c) for c in reversed(children.get(v["version"], []))]
    return out


def _ago(ts: Any) -> str:
    if not isinstance(ts, (int, float)) or ts <= 0:
        return "-"
    d = max(0.0, time.time() - ts)
    return f"{d:.0f}s ago" if d < 120 else f"{d / 60:.0f}m ago" if d < 7200 else f"{d / 3600:.0f}h ago"


def _num(v: Any, digits: int = 2) -> str:
    if isinstance(v, bool) or v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)
