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
from typing import Any, Final

import structlog
from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from ollana.connlimits import ConnCounts, ConnLimits, Phase, Refusal, Verdict, check
from ollana.ratelimit import RateLimiter

log = structlog.get_logger(__name__)

LOG_PERIOD: Final = 60.0  # one log line per source and kind of event per minute
_CONTINUE: Final = b"HTTP/1.1 100"

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


class GuardedTransport(asyncio.Transport):
    """The transport aiohttp's protocol writes to: tells the guard whether a response began
    and whether aiohttp paused reading (then a quiet body is not the client's fault)."""

    __slots__ = ("_guard", "_t")

    def __init__(self, transport: asyncio.Transport, guard: Guard) -> None:
        super().__init__()
        self._t = transport
        self._guard = guard

    def write(self, data: bytes | bytearray | memoryview) -> None:
        guard = self._guard
        if not guard.responded and bytes(data[:12]) != _CONTINUE:
            guard.responded = True
        self._t.write(data)

    def writelines(self, list_of_data: Any) -> None:
        self._guard.responded = True
        self._t.writelines(list_of_data)

    def pause_reading(self) -> None:
        self._guard.reading_paused = True
        self._t.pause_reading()

    def resume_reading(self) -> None:
        self._guard.resumed()
        self._t.resume_reading()

    def is_reading(self) -> bool:
        return self._t.is_reading()

    def write_eof(self) -> None:
        self._t.write_eof()

    def can_write_eof(self) -> bool:
        return self._t.can_write_eof()

    def abort(self) -> None:
        self._t.abort()

    def close(self) -> None:
        self._t.close()

    def is_closing(self) -> bool:
        return self._t.is_closing()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._t.get_extra_info(name, default)

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._t.set_write_buffer_limits(high, low)

    def get_write_buffer_size(self) -> int:
        return self._t.get_write_buffer_size()

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self._t.get_write_buffer_limits()

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._t.set_protocol(protocol)

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._t.get_protocol()


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
        self._last_byte = 0.0
        self._request: web.BaseRequest | None = None
        # What the TLS layer delivered before start_tls returned to us (a request sent right
        # after the handshake); handed to aiohttp once attached.
        self._early: list[bytes] = []
        self.responded = False
        self.reading_paused = False

    # --- transport events -------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
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
            # Not one byte before start_tls took the transport (it pauses again itself).
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
        if tls is None:  # lost during the handshake without an error (aborted)
            self.connection_lost(None)
        elif self._admitted and self._transport is None:
            self._attach(tls)

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
            if self._admitted:
                self._early.append(data)
            return
        self._last_byte = now = self._loop.time()
        phase = self._phase
        if phase is Phase.IDLE:
            self._phase = Phase.HEAD
            self._head_since = now
            self._head_bytes = True
            if self._timer is None:
                self._arm(now + self._shared.limits.head_timeout)
        elif phase is Phase.HEAD:
            self._head_bytes = True
        inner.data_received(data)
        request = self._request
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
        if self._timer is None and not request.content.is_eof():
            self._arm(self._last_byte + self._shared.limits.body_timeout)

    def request_ended(self) -> None:
        self._phase = Phase.IDLE
        self._request = None
        self._head_bytes = False

    def resumed(self) -> None:
        self.reading_paused = False
        if self._phase is Phase.HANDLING:
            # The quiet time while ollana was not reading is not the client's.
            self._last_byte = now = self._loop.time()
            if self._timer is None:
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
        guard = transport._guard
        guard.request_started(request)
        try:
            return await handler(request)
        finally:
            guard.request_ended()

    return handle
