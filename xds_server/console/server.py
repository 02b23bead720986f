"""The web console (``meshd --console HOST:PORT``): pages, login, the split editor and a
live feed, served on meshd's own loop over :class:`~xds_server.http_server.HttpServer`.

Everything it shows or changes goes through the admin API's servicer with the session's
bearer token (:mod:`.calls`): the same roles, namespaces, validation and messages as
``meshctl`` and the gRPC API. Without ``--tokens`` it follows the admin API's rule: it
listens on loopback only, and every visitor gets a session without logging in.

Writes are plain form POSTs carrying the session's CSRF token; the session cookie is
``HttpOnly`` and ``SameSite=Strict``. Live updates are Server-Sent Events fed by the admin
``Watch`` (the same event bus and per-caller filter), each feed bounded like a ``Watch``
stream; at most :data:`MAX_FEEDS_PER_SESSION` feeds per session.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import datetime
import logging
import re
import time
from collections.abc import AsyncIterator, Callable
from http.cookies import CookieError, SimpleCookie
from importlib import resources
from typing import Any
from urllib.parse import parse_qs, quote, unquote

import grpc

from xds_server.admin.api import admin_pb2 as pb
from xds_server.admin.errors import from_mesh_error
from xds_server.admin.proxy_view import ProxyView
from xds_server.admin.server import check_exposure
from xds_server.admin.watch import EventFilter, event_message
from xds_server.console import pages
from xds_server.console.calls import CallError, Watching
from xds_server.console.html import Html, esc, page
from xds_server.console.sessions import COOKIE, Session, Sessions
from xds_server.errors import MeshError
from xds_server.events import WatcherOverflow
from xds_server.http_server import (
    HttpServer,
    Listening,
    Request,
    Response,
    Streamed,
    listen_socket,
)

__all__ = ["Console"]

log = logging.getLogger("meshd.console")

RECENT_EVENTS = 500
"""Events kept for the overview and the events page (each caller sees its share)."""
MAX_FEEDS_PER_SESSION = 4
LOGIN_FAILURES = 10
"""Failed logins a minute from one address; more are answered 429 without a check (the
token is not guessed faster through the console than this)."""
MAX_BODY = 64 * 1024
SSE_KEEPALIVE_S = 15.0
HTML = "text/html; charset=utf-8"
_STATIC = {
    "/static/console.css": ("console.css", "text/css; charset=utf-8"),
    "/static/console.js": ("console.js", "text/javascript; charset=utf-8"),
}
_HTTP_STATUS = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 503,
    grpc.StatusCode.UNAVAILABLE: 503,
}


class Console:
    """The console of one meshd, over its admin servicer ``admin``."""

    def __init__(
        self,
        admin: Any,
        *,
        refused: Callable[[str], None] = lambda reason: None,
        header_timeout: float = 5.0,
        max_connections: int = 64,
        now: Callable[[], datetime.datetime] = lambda: datetime.datetime.now(datetime.UTC),
    ) -> None:
        self.admin = admin
        self.sessions = Sessions(admin.auth)
        self._now = now
        self._http = HttpServer(
            self._handle,
            name="console",
            refused=refused,
            header_timeout=header_timeout,
            max_connections=max_connections,
            max_body=MAX_BODY,
            log=log,
        )
        self._server: Listening | None = None
        self._recent: collections.deque[Any] = collections.deque(maxlen=RECENT_EVENTS)
        self._recorder: asyncio.Task[None] | None = None
        self._feeds: collections.Counter[str] = collections.Counter()
        self._login_failures = FailureWindow(LOGIN_FAILURES, 60.0)
        self.port = 0

    async def start(self, address: str) -> int:
        """Listen on ``address`` (``host:port``); returns the port. ValueError for an open
        console (no ``--tokens``) beyond loopback."""
        check_exposure(address, self.admin.auth, warn=False)
        host, _, port = address.rpartition(":")
        sock = listen_socket(host.strip("[]"), int(port))
        self._server = await self._http.serve(sock)
        self.port = int(sock.getsockname()[1])
        self._recorder = asyncio.create_task(self._record(), name="console-events")
        return self.port

    async def stop(self) -> None:
        if self._recorder is not None:
            self._recorder.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._recorder
        if self._server is not None:
            self._server.close()
            await self._http.close_connections()
            self._server = None

    async def _record(self) -> None:
        """Keep the last events (the overview's and the events page's history)."""
        while True:
            sub = self.admin.events.subscribe(())
            try:
                async for event in sub:
                    self._recent.appendleft(event)
            except WatcherOverflow:
                continue  # (fell behind: carry on from here)
            finally:
                sub.close()

    def _recent_for(self, session: Session) -> list[pb.WatchResponse]:
        admits = EventFilter(
            ProxyView(session.principal, self.admin.state), self.admin.streams, self.admin.prefix
        ).admits
        return [event_message(e) for e in list(self._recent) if admits(e)]

    # -- requests --------------------------------------------------------------------------

    async def _handle(self, req: Request) -> Response | Streamed:
        path = req.path
        if path in _STATIC and req.method in ("GET", "HEAD"):
            name, kind = _STATIC[path]
            body = resources.files("xds_server.console").joinpath("static", name).read_bytes()
            return Response(200, body, kind, [("Cache-Control", "max-age=300")])
        if path == "/login":
            return await self._login(req)
        session = self._session(req)
        fresh: list[tuple[str, str]] = []
        if session is None and not self.admin.auth.enabled:
            session = self.sessions.login(None)  # (an open API: no token to ask for)
            fresh = [("Set-Cookie", _cookie(session.id))]
        if session is None:
            if req.method == "GET" and not req.query.get("fragment") and path != "/events/stream":
                return _redirect("/login?next=" + quote(req.target, safe=""))
            return Response(401, b"log in first: /login\n")
        try:
            answer = await self._route(req, session)
        except CallError as exc:
            if exc.code == grpc.StatusCode.UNAUTHENTICATED:
                self.sessions.logout(session.id)  # (its token was removed: log in again)
                return _redirect("/login?next=" + quote(req.target, safe=""))
            answer = self._error_page(req, session, exc)
        except MeshError as exc:
            err = from_mesh_error(exc)
            answer = self._error_page(req, session, CallError(err.code, err.message))
        if isinstance(answer, Response):
            answer.headers += fresh
            answer.headers += [
                ("X-Content-Type-Options", "nosniff"),
                ("Referrer-Policy", "same-origin"),
                ("Content-Security-Policy", "default-src 'self'; frame-ancestors 'none'"),
            ]
        return answer

    def _session(self, req: Request) -> Session | None:
        raw = req.headers.get("cookie", "")
        try:
            jar = SimpleCookie(raw)
        except CookieError:
            return None
        morsel = jar.get(COOKIE)
        return self.sessions.get(morsel.value if morsel else None)

    async def _route(self, req: Request, session: Session) -> Response | Streamed:
        parts = [unquote(p) for p in req.path.strip("/").split("/")] if req.path != "/" else []
        ctx = pages.PageContext(self.admin, session)
        if req.method == "POST":
            form = _form(req)
            if not session.csrf_ok(form.get("csrf", [""])[0]):
                return Response(403, b"the form's CSRF token does not match your session\n")
            if parts == ["logout"]:
                self.sessions.logout(session.id)
                return _redirect("/login", [("Set-Cookie", _cookie("", expire=True))])
            if len(parts) == 4 and parts[0] == "routes" and parts[3] == "split":
                return await self._set_split(ctx, parts[1], parts[2], form, req)
            return Response(405, b"method not allowed\n", headers=[("Allow", "GET")])
        if req.method not in ("GET", "HEAD"):
            return Response(405, b"method not allowed\n", headers=[("Allow", "GET, POST")])
        q = {k: v[0] for k, v in req.query.items() if v}
        if parts == ["events", "stream"]:
            return await self._feed(session, req)
        main: Html
        live = "events"
        if not parts:
            title, active = "Overview", "/"
            main = await pages.overview(ctx, self._recent_for(session))
        elif parts == ["services"]:
            title, active = "Services", "/services"
            main = await pages.services(ctx)
        elif len(parts) == 3 and parts[0] == "services":
            title, active = f"Service {parts[1]}/{parts[2]}", "/services"
            main = await pages.service_page(ctx, parts[1], parts[2], notice=q.get("saved", ""))
        elif parts == ["topology"]:
            title, active, live = "Topology", "/topology", "poll"
            window = int(q["window"]) if q.get("window", "").isdigit() else 0
            main = await pages.topology(ctx, min(window, 300))
        elif parts == ["proxies"]:
            title, active = "Proxies", "/proxies"
            main = await pages.proxies(ctx)
        elif len(parts) == 2 and parts[0] == "proxies":
            title, active = f"Proxy {parts[1]}", "/proxies"
            main = await pages.proxy_page(ctx, parts[1])
        elif parts == ["events"]:
            title, active, live = "Events", "/events", "feed"
            chosen = {int(v) for v in req.query.get("type", []) if v.isdigit()}
            main = pages.events(self._recent_for(session), chosen)
        elif parts == ["policies"]:
            title, active = "Policies", "/policies"
            main = await pages.policies(ctx, q)
        elif parts == ["certificates"]:
            title, active, live = "Certificates", "/certificates", ""
            main = await pages.certificates(ctx, self._now())
        else:
            return Response(404, page("Not found", Html("<p>No such page.</p>")), HTML)
        return self._page(req, session, title, main, active, live)

    def _page(
        self, req: Request, session: Session, title: str, main: Html, active: str, live: str
    ) -> Response:
        if req.query.get("fragment") == ["main"]:
            return Response(200, f"<h1>{esc(title)}</h1>{main}".encode(), HTML)
        body = page(
            title,
            main,
            active=active,
            who=session.principal.label,
            csrf=session.csrf,
            live=live,
        )
        return Response(200, body, HTML, [("Cache-Control", "no-store")])

    def _error_page(self, req: Request, session: Session, exc: CallError) -> Response:
        status = _HTTP_STATUS.get(exc.code, 500)
        main = Html(f'<p class="error" role="alert">{esc(exc.code.name)}: {esc(exc.message)}</p>')
        return Response(
            status,
            page("Cannot show this", main, who=session.principal.label, csrf=session.csrf),
            HTML,
        )

    # -- login -----------------------------------------------------------------------------

    async def _login(self, req: Request) -> Response:
        next_page = req.query.get("next", ["/"])[0]
        if req.method == "POST":
            form = _form(req)
            next_page = form.get("next", ["/"])[0]
            token = form.get("token", [""])[0].strip()
            host = req.peer.rpartition(":")[0]
            if not self._login_failures.allow(host):
                self._http.refuse(
                    "login", f"over {LOGIN_FAILURES} failed logins a minute from {host}"
                )
                page_body = _login_page("too many failed logins: wait a minute", next_page)
                return Response(429, page_body, HTML, [("Retry-After", "60")])
            try:
                session = self.sessions.login(token)
            except MeshError as exc:
                self._login_failures.failed(host)
                err = from_mesh_error(exc)
                return Response(401, _login_page(err.message, next_page), HTML)
            return _redirect(_local(next_page), [("Set-Cookie", _cookie(session.id))])
        if not self.admin.auth.enabled:
            return _redirect(_local(next_page))
        return Response(200, _login_page("", next_page), HTML, [("Cache-Control", "no-store")])

    # -- the split editor --------------------------------------------------------------------

    async def _set_split(
        self,
        ctx: pages.PageContext,
        namespace: str,
        route: str,
        form: dict[str, list[str]],
        req: Request,
    ) -> Response:
        back = _local(form.get("back", ["/services"])[0])
        where = f"routes/{namespace}/{route}"
        services, subsets, weights = (
            form.get("service", []),
            form.get("subset", []),
            form.get("weight", []),
        )
        error = ""
        destinations = []
        if not (len(services) == len(weights) and len(subsets) in (0, len(services))):
            error = f"{where}: destinations: each needs a service and a weight"
        for i, (service, weight) in enumerate(zip(services, weights, strict=False)):
            if not weight.strip().isdigit() or int(weight) > 2**32 - 1:
                error = f"{where}: destinations[{i}].weight: must be a whole number, got {weight!r}"
                break
            subset = subsets[i] if subsets else ""
            destinations.append(pb.Destination(service=service, subset=subset, weight=int(weight)))
        revision = form.get("revision", ["0"])[0]
        if not error and not revision.isdigit():
            error = f"{where}: revision: must be a whole number, got {revision!r}"
        code = 400
        if not error:
            request = pb.SetSplitRequest(
                namespace=namespace, route=route, destinations=destinations, revision=int(revision)
            )
            try:
                await ctx.call("SetSplit", request)
            except CallError as exc:
                if exc.code == grpc.StatusCode.UNAUTHENTICATED:
                    raise
                code = _HTTP_STATUS.get(exc.code, 500)
                error = exc.message
                if exc.code == grpc.StatusCode.ABORTED:
                    error = f"Changed meanwhile, reload: {exc.message}"
            else:
                notice = f"Saved the split of {namespace}/{route}."
                return _redirect(f"{back}?saved={quote(notice)}")
        # Shown on the page the form came from, beside the route it was about.
        parts = [p for p in back.strip("/").split("/")]
        if len(parts) == 3 and parts[0] == "services":
            try:
                main = await pages.service_page(
                    ctx,
                    unquote(parts[1]),
                    unquote(parts[2]),
                    error=error,
                    error_route=f"{namespace}/{route}",
                )
            except CallError:
                main = Html(f'<p class="error" role="alert">{esc(error)}</p>')
        else:
            main = Html(f'<p class="error" role="alert">{esc(error)}</p>')
        body = page(
            "The split was not saved",
            main,
            active="/services",
            who=ctx.session.principal.label,
            csrf=ctx.session.csrf,
        )
        return Response(code, body, HTML, [("Cache-Control", "no-store")])

    # -- the live feed -----------------------------------------------------------------------

    async def _feed(self, session: Session, req: Request) -> Response | Streamed:
        if self._feeds[session.id] >= MAX_FEEDS_PER_SESSION:
            return Response(429, b"too many live feeds for this session\n")
        types = [
            pb.EventType.Name(int(v))
            for v in req.query.get("type", [])
            if v.isdigit() and int(v) in pb.EventType.values()
        ]
        watch = Watching(self.admin, pb.WatchRequest(types=types), session.token)
        # The response starts (and the browser's EventSource opens) only once the Watch is
        # subscribed: an edit made after the page sees its feed open is never missed.
        failed = await watch.subscribed(timeout=5.0)
        if failed is not None:
            await watch.close()
            return Response(_HTTP_STATUS.get(failed.code, 500), f"{failed.message}\n".encode())
        self._feeds[session.id] += 1
        return Streamed(self._events(session, watch))

    async def _events(self, session: Session, watch: Watching) -> AsyncIterator[bytes]:
        try:
            yield b"retry: 3000\n\n"
            while True:
                event = await watch.next(SSE_KEEPALIVE_S)
                if event is None:
                    yield b": keep-alive\n\n"  # (a comment: proxies keep the connection)
                    continue
                yield f"data: {pages.event_json(event)}\n\n".encode()
        except (CallError, StopAsyncIteration) as exc:
            # Ended by the admin API (fell behind, token removed): the browser reconnects.
            reason = exc.message if isinstance(exc, CallError) else "ended"
            yield f"event: end\ndata: {reason}\n\n".encode()
        finally:
            await watch.close()
            self._feeds[session.id] -= 1
            if self._feeds[session.id] <= 0:
                del self._feeds[session.id]


class FailureWindow:
    """Failures per key (an address) over the last ``window`` seconds, at most ``limit``;
    bounded in keys (the oldest go)."""

    MAX_KEYS = 4096

    def __init__(self, limit: int, window: float, clock: Callable[[], float] = time.monotonic):
        self.limit = limit
        self.window = window
        self._clock = clock
        self._seen: collections.OrderedDict[str, collections.deque[float]] = (
            collections.OrderedDict()
        )

    def allow(self, key: str) -> bool:
        times = self._seen.get(key)
        if times is None:
            return True
        horizon = self._clock() - self.window
        while times and times[0] < horizon:
            times.popleft()
        return len(times) < self.limit

    def failed(self, key: str) -> None:
        times = self._seen.setdefault(key, collections.deque(maxlen=self.limit))
        times.append(self._clock())
        self._seen.move_to_end(key)
        while len(self._seen) > self.MAX_KEYS:
            self._seen.popitem(last=False)


def _form(req: Request) -> dict[str, list[str]]:
    kind = req.headers.get("content-type", "").split(";")[0].strip()
    if kind != "application/x-www-form-urlencoded":
        return {}
    try:
        return parse_qs(req.body.decode(), keep_blank_values=True, max_num_fields=200)
    except (UnicodeDecodeError, ValueError):
        return {}


_LOCAL_PATH = re.compile(r"/(?![/\\])[A-Za-z0-9/_.~%?=&+:@!$'()*,;-]*")


def _local(target: str) -> str:
    """``target`` when it is a path of this site in plain URL characters, else ``/``: no
    open redirect (``//host``, ``/\\host``, a tab a browser drops) and nothing that could
    end a header line."""
    return target if _LOCAL_PATH.fullmatch(target) else "/"


def _redirect(to: str, headers: list[tuple[str, str]] | None = None) -> Response:
    return Response(303, b"", headers=[("Location", to), *(headers or [])])


def _cookie(value: str, *, expire: bool = False) -> str:
    tail = "; Max-Age=0" if expire else ""
    return f"{COOKIE}={value}; Path=/; HttpOnly; SameSite=Strict{tail}"


def _login_page(error: str, next_page: str) -> bytes:
    alert = f'<p class="error" role="alert" id="login-error">{esc(error)}</p>' if error else ""
    main = Html(
        f'{alert}<form method="post" action="/login">'
        f'<input type="hidden" name="next" value="{esc(_local(next_page))}">'
        '<p><label for="token">Admin API token</label><br>'
        '<input id="token" name="token" type="password" autocomplete="current-password" '
        'required autofocus size="40"></p>'
        '<p><button type="submit">Log in</button></p></form>'
        '<p class="muted">The token of <code>meshd --tokens</code>: the console shows and '
        "changes what the admin API lets that token read and write.</p>"
    )
    return page("Log in", main)
