"""The layers a request crosses before an Ollama handler, outermost first.

record      -- every request is recorded; net/http's handling of an unread body is applied
servemux    -- net/http: missing Host is a 400; non-canonical paths get a 301
trailing    -- gin: "/route/" redirects to "/route" (before gin's middlewares run)
cors        -- gin-contrib/cors
hosts       -- allowedHostsMiddleware
router      -- gin's plain-text 404 and 405
fail        -- the fail_status knob
slots       -- frees the request's parallel slot however its handler ends (sched.py)
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Final

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware
from aiohttp.web_exceptions import HTTPMethodNotAllowed

from . import hosts, wire
from .control import PREFIX
from .keys import BODY, RECORD, SLOT
from .state import RequestRecord

if TYPE_CHECKING:
    from .app import FakeOllama

CORS_HEADERS: Final = web.RequestKey("fakeollama_cors", tuple)
MAX_POST_HANDLER_READ: Final = 256 << 10  # net/http maxPostHandlerReadBytes
RST_AVOIDANCE_DELAY: Final = 0.5  # net/http rstAvoidanceDelay
_FAIL_TEXT: Final = {
    499: "request canceled",
    503: "server busy, please try again.  maximum pending requests exceeded",
}


def _exempt(request: web.Request) -> bool:
    return request.path.startswith(PREFIX)


def go_clean_path(path: str) -> str:
    """net/http cleanPath: path.Clean, keeping one trailing slash."""
    parts: list[str] = []
    for seg in path.split("/"):
        if seg in ("", "."):
            continue
        if seg == "..":
            if parts:
                parts.pop()
            continue
        parts.append(seg)
    clean = "/" + "/".join(parts)
    if path.endswith("/") and clean != "/":
        clean += "/"
    return clean


def redirect(request: web.Request, location: str, status: int) -> web.Response:
    """http.Redirect: an HTML body for GET only, a Content-Type for GET and HEAD."""
    reason = {301: "Moved Permanently", 307: "Temporary Redirect"}[status]
    body = f'<a href="{location}">{reason}</a>.\n\n'.encode() if request.method == "GET" else b""
    ctype = "text/html; charset=utf-8" if request.method in ("GET", "HEAD") else None
    resp = wire.body_response(status, body, ctype)
    resp.headers["Location"] = location
    return resp


def _raw_target(request: web.Request) -> tuple[str, str]:
    path, _, query = request.raw_path.partition("?")
    return path, query


async def settle_unread_body(request: web.Request, resp: web.StreamResponse) -> bool:
    """What net/http does with a body the handler left unread, before writing headers.

    Up to 256 KiB are read and dropped to keep the connection; past that the reply carries
    `Connection: close`. Returns True when the connection must then be closed gently.
    """
    body = request.get(BODY)
    if body is None or not request.body_exists or body.at_eof:
        return False
    if body.expects_continue and not body.continue_sent:
        resp.force_close()  # 100 Continue was never sent: the body is not coming
        return False
    length = request.content_length
    if length is not None and length - body.consumed >= MAX_POST_HANDLER_READ:
        too_big = True
    else:
        too_big = not await body.discard(MAX_POST_HANDLER_READ + 1)
    if too_big:
        resp.force_close()
    return too_big


async def close_write_and_wait(request: web.Request) -> None:
    """net/http closeWriteAndWait: FIN first, then a pause before the socket closes."""
    transport = request.transport
    if transport is not None and transport.can_write_eof():
        transport.write_eof()
    await asyncio.sleep(RST_AVOIDANCE_DELAY)


def build(fake: FakeOllama) -> list[Middleware]:
    @web.middleware
    async def record(request: web.Request, handler: Handler) -> web.StreamResponse:
        if _exempt(request):
            return await handler(request)
        raw = request.transport.get_extra_info("peername") if request.transport else None
        peer = (str(raw[0]), int(raw[1])) if raw else ("", 0)
        path, query = _raw_target(request)
        rec = fake.recorder.start(
            method=request.method,
            path=path,
            query_string=query,
            http_version=f"HTTP/{request.version.major}.{request.version.minor}",
            headers=[(k.decode("latin-1"), v.decode("latin-1")) for k, v in request.raw_headers],
            peer=peer,
            connection=fake.recorder.connection_id(request.transport or _Gone(), peer),
        )
        request[RECORD] = rec
        request[BODY] = wire.RequestBody(request, rec)
        try:
            resp = await handler(request)
            linger = False
            if not resp.prepared:
                linger = await settle_unread_body(request, resp)
                await resp.prepare(request)
            await resp.write_eof()
            _finish(rec, completed=True)
            fake.recorder.changed()
            if linger:
                await close_write_and_wait(request)
            return resp
        except (asyncio.CancelledError, ConnectionError):
            # The client went away first (unless the fake cut the line itself).
            _finish(rec, disconnected=not rec.completed and not rec.aborted)
            fake.recorder.changed()
            raise
        except Exception:
            _finish(rec)  # a bug in the fake: aiohttp answers 500 and logs it
            fake.recorder.changed()
            raise

    @web.middleware
    async def servemux(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.version >= (1, 1) and "Host" not in request.headers:
            resp = wire.body_response(
                400, b"400 Bad Request: missing required Host header", wire.TEXT
            )
            resp.force_close()
            return resp
        clean = go_clean_path(request.path)
        if request.method != "CONNECT" and clean != request.path:
            _, query = _raw_target(request)
            return redirect(request, clean + (f"?{query}" if query else ""), 301)
        return await handler(request)

    @web.middleware
    async def trailing(request: web.Request, handler: Handler) -> web.StreamResponse:
        exc = getattr(request.match_info, "http_exception", None)
        path = request.path
        if exc is None or _exempt(request) or path == "/" or not path.endswith("/"):
            return await handler(request)
        probe = await request.app.router.resolve(request.clone(rel_url=path[:-1]))
        if getattr(probe, "http_exception", None) is not None:
            return await handler(request)
        _, query = _raw_target(request)
        status = 301 if request.method == "GET" else 307
        return redirect(request, path[:-1] + (f"?{query}" if query else ""), status)

    @web.middleware
    async def cors(request: web.Request, handler: Handler) -> web.StreamResponse:
        if _exempt(request):
            return await handler(request)
        host = request.headers.get("Host", "")
        decision = fake.cors.decide(request.headers.get("Origin"), host, request.method)
        request[CORS_HEADERS] = decision.headers
        if decision.status is not None:
            return wire.empty_response(decision.status)
        return await handler(request)

    @web.middleware
    async def allowed_hosts(request: web.Request, handler: Handler) -> web.StreamResponse:
        if _exempt(request) or not hosts.check_enabled(fake.listen_hosts):
            return await handler(request)
        verdict = hosts.check_host(request.headers.get("Host", ""), request.method, fake.hostname)
        if verdict is hosts.HostVerdict.FORBIDDEN:
            return wire.empty_response(403)
        if verdict is hosts.HostVerdict.PREFLIGHT:
            return wire.empty_response(204)
        return await handler(request)

    @web.middleware
    async def router(request: web.Request, handler: Handler) -> web.StreamResponse:
        exc = getattr(request.match_info, "http_exception", None)
        if exc is None:
            return await handler(request)
        if isinstance(exc, HTTPMethodNotAllowed):
            return wire.body_response(405, b"405 method not allowed", wire.GIN_PLAIN)
        return wire.body_response(404, b"404 page not found", wire.GIN_PLAIN)

    @web.middleware
    async def fail(request: web.Request, handler: Handler) -> web.StreamResponse:
        status = fake.knobs.fail_status
        if status is None or not request.path.startswith("/api/"):
            return await handler(request)
        text = fake.knobs.fail_message or _FAIL_TEXT.get(status) or "internal server error"
        return wire.error_response(status, text)

    @web.middleware
    async def slots(request: web.Request, handler: Handler) -> web.StreamResponse:
        # Innermost, so a slot is free again before a whole answer is written (as the runner
        # is done by then) and when a disconnect cancels the handler.
        try:
            return await handler(request)
        finally:
            release = request.pop(SLOT, None)
            if release is not None:
                release()

    return [record, servemux, trailing, cors, allowed_hosts, router, fail, slots]


class _Gone:
    """Stands for the transport of a connection already closed when its request is seen."""


def _finish(rec: RequestRecord, completed: bool = False, disconnected: bool = False) -> None:
    rec.completed = rec.completed or completed
    rec.disconnected = rec.disconnected or disconnected
    rec.finished_at = time.time()


async def on_response_prepare(request: web.Request, response: web.StreamResponse) -> None:
    """Last touches on every response's headers: Go sends no Server header, CORS adds its own."""
    response.headers.popall("Server", None)
    for name, value in request.get(CORS_HEADERS, ()):
        response.headers.add(name, value)
    rec = request.get(RECORD)
    if rec is not None:
        rec.status = response.status
