"""The server's gate in trust mode ``devices``: who may use this server, decided per request.

The TLS listener's trust anchors are the allowed certificates (plus pending clients', so a client
that introduced itself completes the handshake and is told, in a JSON 403, its device ID and the
command that allows it). A client without a certificate may only introduce itself with the hello.
Every request is checked against the allow list before anything is forwarded: an unknown client's
request never reaches Ollama. When a device is disabled, its open connections are closed; a request
in flight on one first ends saying so (an error line in a stream, else a 403).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, Final

import structlog
from aiohttp import web

from ollana.httpserver import Listener
from ollana.proxy.answers import error, json_response
from ollana.proxy.forward import cut
from ollana.ratelimit import PerKeyAndTotal, RateLimiter
from ollana.trust.decisions import Refusal, anchors, hello_reply, must_cut, refusal
from ollana.trust.devices import DeviceTrust
from ollana.trust.document import PeerKind
from ollana.trust.identity import grouped, short
from ollana.trust.tls import (
    HELLO_PATH,
    MAX_HELLO_BYTES,
    BadHello,
    ServerTLS,
    parse_hello,
    peer_device_id,
)

log = structlog.get_logger(__name__)

Handler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]

# A refused device is logged once per this many seconds (a client retrying must not flood the log).
REFUSAL_LOG_PERIOD: Final = 30.0
# How long a cut request may take to say why before its connection is aborted anyway.
CUT_PATIENCE: Final = 2.0
PENDING_LOG_PERIOD: Final = 60.0
PENDING_LOG_GAP: Final = 1.0


class Gate:
    """Wraps the proxy handler: authorizes each request, answers the hello."""

    def __init__(
        self, devices: DeviceTrust, inner: Handler, hostname: str,
        on_refusal: Callable[[str], None] = lambda _reason: None,
    ) -> None:
        self._devices = devices
        self._refused = on_refusal  # counts each refusal by its reason (metrics)
        self._inner = inner
        self._hostname = hostname
        self.tls = ServerTLS(devices.identity, self._anchors())
        self._anchors_stale = False
        self._refusals = RateLimiter(REFUSAL_LOG_PERIOD)
        self._bad_hellos = RateLimiter(REFUSAL_LOG_PERIOD)
        # The request each connection is serving (HTTP/1.1: one at a time), to cut it cleanly.
        self._serving: dict[asyncio.BaseTransport, asyncio.Task[Any]] = {}
        # A device made pending: said once a minute per device, once a second in all (a flood of
        # hellos cycling certificates wrote a line per hello).
        self._pending_log = PerKeyAndTotal(PENDING_LOG_PERIOD, PENDING_LOG_GAP)

    def _anchors(self) -> list[str]:
        store = self._devices.store
        return anchors(self._devices.identity.cert_pem, store.allowed(), store.pending())

    async def __call__(self, request: web.BaseRequest) -> web.StreamResponse:
        transport = request.transport
        device_id = peer_device_id(transport.get_extra_info("ssl_object") if transport is not None else None)
        if request.path == HELLO_PATH:
            return await self._hello(request)
        refused = refusal(
            device_id, self._devices.standing(device_id),
            hostname=self._hostname, server_short=self._devices.identity.short,
        )
        if refused is None:
            assert device_id is not None  # admitted devices presented a certificate
            self._devices.store.touch_last_seen(device_id, self._devices.wall())
            return await self._serve(request, device_id)
        return self._refuse(request, device_id, refused)

    async def _serve(self, request: web.BaseRequest, device_id: str) -> web.StreamResponse:
        transport, task = request.transport, asyncio.current_task()
        if transport is None or task is None:
            return await self._inner(request)
        self._serving[transport] = task
        try:
            response = await self._inner(request)
        finally:
            if self._serving.get(transport) is task:
                del self._serving[transport]
        if must_cut(self._devices.standing(device_id)):
            response.force_close()  # disabled meanwhile: this answer is the connection's last
        return response

    # -- refusals ----------------------------------------------------------------------------

    def _refuse(self, request: web.BaseRequest, device_id: str | None, refused: Refusal) -> web.Response:
        self._refused(refused.reason)
        allowed, suppressed = self._refusals.allow(f"{request.remote}/{device_id}", self._devices.wall())
        if allowed:
            log.warning(
                "request_refused", device_id=grouped(device_id) if device_id else None,
                address=request.remote, method=request.method, path=request.path,
                reason=refused.reason, suppressed=suppressed or None,
            )
        return error(request, 403, refused.message, not_forwarded=True)

    # -- the hello ---------------------------------------------------------------------------

    async def _hello(self, request: web.BaseRequest) -> web.Response:
        if request.method != "POST":
            return error(request, 405, "ollana: the hello is a POST", not_forwarded=True)
        if request.content_length is not None and request.content_length > MAX_HELLO_BYTES:
            return error(request, 413, f"ollana: a hello is at most {MAX_HELLO_BYTES} bytes", not_forwarded=True)
        body = bytearray()
        while len(body) <= MAX_HELLO_BYTES:
            chunk = await request.content.read(MAX_HELLO_BYTES + 1 - len(body))
            if not chunk:
                break
            body += chunk
        try:
            hello = parse_hello(bytes(body))
        except BadHello as exc:
            self._refused("bad hello")
            allowed, _ = self._bad_hellos.allow(str(request.remote), self._devices.wall())
            if allowed:
                log.info("hello_refused", address=request.remote, reason=str(exc))
            return error(request, 400, f"ollana: {exc}", not_forwarded=True)
        reply = hello_reply(
            hello.device_id, self._devices.standing(hello.device_id),
            server_id=self._devices.device_id, hostname=self._hostname,
        )
        if reply.record_pending and self._devices.store.record_pending(
            hello.device_id, hello.cert_pem, hello.hostname, str(request.remote or ""), PeerKind.CLIENT,
            self._devices.wall(),
        ):
            self._anchors_stale = True  # applied by the next poll: at most two rebuilds a second
            allowed, suppressed = self._pending_log.allow(hello.device_id, self._devices.wall())
            if allowed:
                log.info(
                    "device_pending", kind="client", device_id=grouped(hello.device_id),
                    hostname=hello.hostname, address=request.remote,
                    hint=f"ollana device allow {short(hello.device_id)}", suppressed=suppressed,
                )
        return json_response(reply.status, reply.body)

    # -- changes -----------------------------------------------------------------------------

    def refresh(self, listener: Listener | None, *, allowed_changed: bool) -> None:
        """After a poll: new anchors if needed; close connections of devices no longer allowed."""
        if allowed_changed or self._anchors_stale:
            self._anchors_stale = False
            self.tls.update(self._anchors())
        if not allowed_changed or listener is None:
            return
        counts: dict[str, int] = {}
        for transport in listener.transports():
            device_id = peer_device_id(transport.get_extra_info("ssl_object"))
            if device_id is not None and must_cut(self._devices.standing(device_id)):
                task = self._serving.get(transport)
                if task is None:
                    transport.abort()  # idle: nothing to say
                else:
                    # Cutting its request closes the request to Ollama; the answer ends with the
                    # reason, and the connection closes after it.
                    cut(task, f"this device was disabled on {self._hostname}")
                    # Whatever the request was doing, the connection is gone soon regardless.
                    asyncio.get_running_loop().call_later(CUT_PATIENCE, transport.abort)
                counts[device_id] = counts.get(device_id, 0) + 1
        for device_id, count in counts.items():
            log.warning("device_cut_off", device_id=grouped(device_id), connections=count)

