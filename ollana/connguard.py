"""The guard in front of aiohttp's protocol: counts connections per source before any TLS,
runs the TLS handshake, and times the request head and a stalled request body.

aiohttp alone keeps a half-sent request for an hour (its keep-alive timer, 3630 s, is the only
timer before a head completes), has no deadline for a body that stops arriving, and its C
parser leaves the handler waiting forever when a chunked body turns to garbage after the head
(it queues the 400 behind the request instead of failing its body). The guard sits between
the transport and aiohttp's ``RequestHandler``; aiohttp's keep-alive timer stays in charge of
idle connections (``ConnLimits.idle_timeout``).
"""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import Awaitable, Callable
from typing import Any, Final, cast

import structlog
from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from ollana.connlimits import ConnCounts, ConnLimits, Phase, Refusal, Verdict, check
from ollana.conntransport import GuardedTransport
from ollana.ratelimit import RateLimiter

log = structlog.get_logger(__name__)

LOG_PERIOD: Final = 60.0  # one log line per source and kind of event per minute

Handler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]


class Shared:
    """What the guards of one listener share: limits, counts, the log limiter, open guards."""

    def __init__(
        self,
        limits: ConnLimits,
        counts: ConnCounts,
        tls: ssl.SSLContext | None,
        inner: Callable[[], RequestHandler],
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self.limits = limits
        self.counts = counts
        self.tls = tls
        self.inner = inner
        self.loop = loop
        self.limiter = RateLimiter(LOG_PERIOD)
        self.guards: set[Guard] = set()

    def note(self, event: str, source: str, **fields: Any) -> None:
        allowed, suppressed = self.limiter.allow(f"{event} {source}", self.loop.time())
        if allowed:
            log.info(event, source=source, suppressed=suppressed, **fields)

    def abort_all(self) -> None:
        for guard in list(self.guards):
            guard.abort()


class Guard(asyncio.Protocol):
    """One connection: admitted or refused, then timed; everything else goes to aiohttp."""

    def __init__(self, shared: Shared) -> None:
        self._shared = shared
        self._loop = shared.loop
        self._source = ""
        self._admitted = False
        self._raw: asyncio.Transport | None = None
        self._transport: asyncio.Transport | None = None  # the TLS one in TLS mode
        self._inner: RequestHandler | None = None
        self._tls_task: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self._phase = Phase.HEAD
        self._head_since = 0.0
        self._head_bytes = False
        self._next_head_at = 0.0  # when bytes of a pipelined next request came (0: none)
        self._last_byte = 0.0
        self._request: web.BaseRequest | None = None
        # What the TLS layer delivered before start_tls returned to us (a request sent right
        # after the handshake); handed to aiohttp once attached.
        self._early: list[bytes] = []
        self._raw_early: list[bytes] = []
        self._tls_took_over = False
        self.responded = False
        self.reading_paused = False

    # --- transport events -------------------------------------------------------------

    def connection_made(self, base: asyncio.BaseTransport) -> None:
        # (uvloop's transports are not asyncio.Transport subclasses, but have its methods.)
        transport = cast(asyncio.Transport, base)
        shared = self._shared
        if self._raw is not None:
            return  # the TLS layer's call, made by us in _handshake: already counted
        self._raw = transport
        peer = transport.get_extra_info("peername")
        self._source = str(peer[0]) if isinstance(peer, tuple) and peer else "?"
        refusal = shared.counts.admit(self._source)
        if refusal is not None:
            self._refuse(transport, refusal)
            return
        self._admitted = True
        shared.guards.add(self)
        now = self._loop.time()
        self._head_since = self._last_byte = now
        self._arm(now + shared.limits.head_timeout)
        if shared.tls is None:
            self._attach(transport)
        else:
            # Bytes that come before start_tls took the transport (uvloop starts reading right
            # after this call, whatever we ask) are kept for the TLS layer: _hand_over.
            transport.pause_reading()
            # One task per handshake, like aiohttp's task per connection; kept here and
            # cancelled when the connection goes.
            self._tls_task = self._loop.create_task(self._handshake(transport, shared.tls))

    def _refuse(self, transport: asyncio.Transport, refusal: Refusal) -> None:
        counts = self._shared.counts
        self._shared.note("connection_refused", self._source, cap=refusal.value,
                          open_from_source=counts.held(self._source), open_total=counts.count)
        transport.abort()

    async def _handshake(self, raw: asyncio.Transport, ctx: ssl.SSLContext) -> None:
        # Runs after start_tls set its TLS protocol on the transport, before that protocol
        # starts its handshake (both loops queue that after this).
        self._loop.call_soon(self._hand_over, raw)
        try:
            tls = await self._loop.start_tls(
                raw, self, ctx, server_side=True, ssl_handshake_timeout=self._shared.limits.head_timeout
            )
        except (OSError, ssl.SSLError, ConnectionError, TimeoutError) as exc:
            # start_tls closed the connection, and the TLS layer tells its app protocol (us)
            # nothing of a connection lost during the handshake: release it here.
            log.debug("tls_handshake_failed", source=self._source, error=str(exc) or type(exc).__name__)
            self.connection_lost(exc)
            return
        if tls is None or tls.is_closing():
            # Lost during the handshake without an error (aborted): asyncio returns no
            # transport, uvloop a closed one.
            self.connection_lost(None)
        elif self._admitted and self._transport is None:
            self._attach(tls)

    def _hand_over(self, raw: asyncio.Transport) -> None:
        """Give the TLS layer the bytes we read for it (a ClientHello) before it took over; it
        keeps them for its handshake (BufferedProtocol's public calls)."""
        self._tls_took_over = True
        pending, self._raw_early = self._raw_early, []
        proto = raw.get_protocol()
        # (uvloop's TLS protocol is no asyncio.BufferedProtocol subclass; it has its methods.)
        if proto is self or not hasattr(proto, "buffer_updated"):
            return
        tls_layer = cast(asyncio.BufferedProtocol, proto)
        for data in pending:
            view = memoryview(data)
            while view:
                buf = memoryview(tls_layer.get_buffer(len(view)))
                n = min(len(buf), len(view))
                buf[:n] = view[:n]
                tls_layer.buffer_updated(n)
                view = view[n:]

    def _attach(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        self._inner = inner = self._shared.inner()
        inner.connection_made(GuardedTransport(transport, self))
        early, self._early = self._early, []
        for data in early:
            self.data_received(data)

    def data_received(self, data: bytes) -> None:
        inner = self._inner
        if inner is None:
            if not self._admitted:
                return
            if self._tls_took_over:  # from the TLS layer: a request sent right after the handshake
                self._early.append(data)
            else:  # from the socket, meant for the TLS layer
                self._raw_early.append(data)
                if self._raw is not None:
                    self._raw.pause_reading()  # start_tls resumes it for its TLS layer
            return
        self._last_byte = now = self._loop.time()
        phase = self._phase
        request = self._request
        if phase is Phase.IDLE:
            self._phase = Phase.HEAD
            self._head_since = now
            self._head_bytes = True
            self._arm(now + self._shared.limits.head_timeout)
        elif phase is Phase.HEAD:
            self._head_bytes = True
        elif request is not None and not self._next_head_at and request.content.is_eof():
            # This request's body is complete: these bytes begin the next request (pipelined),
            # whose head deadline runs from now. (Bytes of a next head that came in one read
            # with this request's end are not seen here: that head waits the idle timeout.)
            self._next_head_at = now
        inner.data_received(data)
        if (
            request is not None
            and not request.content.is_eof()
            and getattr(inner, "_messages", None)
        ):
            # A new message queued before this body ended: the parser gave up on the body
            # (the C parser queues its 400 instead of failing the body the handler reads).
            self._answer(400, "malformed request body")

    def eof_received(self) -> bool | None:
        if self._inner is not None:
            self._inner.eof_received()
        return None  # as aiohttp: the transport closes on a half-close

    def pause_writing(self) -> None:
        if self._inner is not None:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._inner is not None:
            self._inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self._admitted:
            return
        self._admitted = False
        shared = self._shared
        shared.counts.release(self._source)
        shared.guards.discard(self)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._tls_task is not None and not self._tls_task.done():
            self._tls_task.cancel()
        self._tls_task = None
        inner, self._inner = self._inner, None
        self._request = None
        if inner is not None:
            inner.connection_lost(exc)

    def abort(self) -> None:
        transport = self._transport or self._raw
        if transport is not None:
            transport.abort()

    # --- requests (called by the handler wrapper) ---------------------------------------

    def request_started(self, request: web.BaseRequest) -> None:
        self._phase = Phase.HANDLING
        self._request = request
        self.responded = False
        self._next_head_at = 0.0
        if not request.content.is_eof():
            self._arm(self._last_byte + self._shared.limits.body_timeout)

    def request_ended(self) -> None:
        self._request = None
        if self._next_head_at:  # part of the next request came already: its head is timed
            self._phase = Phase.HEAD
            self._head_since = self._next_head_at
            self._head_bytes = True
            self._arm(self._next_head_at + self._shared.limits.head_timeout)
        else:
            self._phase = Phase.IDLE
            self._head_bytes = False

    def resumed(self) -> None:
        self.reading_paused = False
        if self._phase is Phase.HANDLING:
            # The quiet time while ollana was not reading is not the client's.
            self._last_byte = now = self._loop.time()
            self._arm(now + self._shared.limits.body_timeout)

    # --- deadlines ----------------------------------------------------------------------

    def _arm(self, when: float) -> None:
        timer = self._timer
        if timer is not None:
            if self._timer_at <= when:
                return  # fires earlier and then looks again
            timer.cancel()
        self._timer_at = when
        self._timer = self._loop.call_at(when, self._check)

    def _check(self) -> None:
        self._timer = None
        if not self._admitted:
            return
        request = self._request
        verdict, later = check(
            self._phase,
            self._loop.time(),
            self._shared.limits,
            head_since=self._head_since,
            last_byte=self._last_byte,
            body_open=request is not None and not request.content.is_eof(),
            reading_paused=self.reading_paused,
        )
        if verdict is Verdict.HEAD_TIMEOUT:
            self._shared.note("connection_timeout", self._source, phase="head")
            if self._head_bytes and self._transport is not None:
                self._answer(408, "request head not received in time")
            else:
                self.abort()  # nothing asked (or the TLS handshake never finished): just go
                if self._transport is None:
                    self.connection_lost(None)  # the TLS layer tells us nothing of it
        elif verdict is Verdict.BODY_TIMEOUT:
            self._shared.note("connection_timeout", self._source, phase="body")
            self._answer(408, "request body stopped arriving")
        elif later is not None:
            self._arm(later)

    def _answer(self, status: int, message: str) -> None:
        """Answer with an Ollama-style error unless a response began, then close: closing
        cancels the handler (handler_cancellation), which frees its upstream request."""
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        if not self.responded:
            self.responded = True
            transport.write(_error_bytes(status, message))
        transport.close()


_REASONS: Final = {400: "Bad Request", 408: "Request Timeout"}


def _error_bytes(status: int, message: str) -> bytes:
    body = json.dumps({"error": message}).encode()
    head = (
        f"HTTP/1.1 {status} {_REASONS[status]}\r\n"
        "Content-Type: application/json; charset=utf-8\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    )
    return head.encode() + body


def guarded(handler: Handler) -> Handler:
    """The request handler, telling the connection's guard when a request starts and ends."""

    async def handle(request: web.BaseRequest) -> web.StreamResponse:
        transport = request.transport
        if not isinstance(transport, GuardedTransport):
            return await handler(request)
        guard = transport.watcher
        guard.request_started(request)
        try:
            return await handler(request)
        finally:
            guard.request_ended()

    return handle
