"""The server's gate in trust mode ``devices``: who may use this server, decided per request.

The TLS listener's trust anchors are the allowed certificates (plus pending clients', so a client
that introduced itself completes the handshake and is told, in a JSON 403, its device ID and the
command that allows it). A client without a certificate may only introduce itself with the hello.
Every request is checked against the allow list before anything is forwarded: an unknown client's
request never reaches Ollama. When a device is disabled, its open connections are closed.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Final

import structlog
from aiohttp import web

from ollana.httpserver import Listener
from ollana.proxy.answers import error, json_response
from ollana.ratelimit import RateLimiter
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


class Gate:
    """Wraps the proxy handler: authorizes each request, answers the hello."""

    def __init__(self, devices: DeviceTrust, inner: Handler, hostname: str) -> None:
        self._devices = devices
        self._inner = inner
        self._hostname = hostname
        self.tls = ServerTLS(devices.identity, self._anchors())
        self._anchors_stale = False
        self._refusals = RateLimiter(REFUSAL_LOG_PERIOD)
        self._bad_hellos = RateLimiter(REFUSAL_LOG_PERIOD)

    def _anchors(self) -> list[str]:
        # Disabled and pending clients complete the handshake too, so the per-request check can tell
        # them why they are refused (and their device ID); their requests never go further.
        store = self._devices.store
        known = [d.cert_pem for d in store.allowed()]
        pending = [p.cert_pem for p in store.pending() if p.kind is PeerKind.CLIENT]
        return [self._devices.identity.cert_pem, *known, *pending]

    async def __call__(self, request: web.BaseRequest) -> web.StreamResponse:
        transport = request.transport
        device_id = peer_device_id(transport.get_extra_info("ssl_object") if transport is not None else None)
        if request.path == HELLO_PATH:
            return await self._hello(request)
        if device_id is not None and self._devices.is_allowed(device_id):
            self._devices.store.touch_last_seen(device_id, self._devices.wall())
            return await self._inner(request)
        return self._refuse(request, device_id)

    # -- refusals ----------------------------------------------------------------------------

    def _refuse(self, request: web.BaseRequest, device_id: str | None) -> web.Response:
        me = self._devices.identity
        if device_id is None:
            message = (
                f"ollana: the server on {self._hostname} serves only paired devices (trust mode devices) "
                "and this connection presented no device certificate; run `ollana serve` on your machine "
                "(it introduces itself), then pair: on each machine `ollana device pending` and "
                f"`ollana device allow ID` (this server is {me.short})"
            )
        else:
            known = any(d.device_id == device_id for d in self._devices.store.allowed())
            message = (
                f"ollana: this device ({grouped(device_id)}) is "
                f"{'disabled' if known else 'not allowed'} on the server on "
                f"{self._hostname}; there, run `ollana device allow {short(device_id)}`"
            )
        allowed, suppressed = self._refusals.allow(f"{request.remote}/{device_id}", self._devices.wall())
        if allowed:
            log.warning(
                "request_refused", device_id=grouped(device_id) if device_id else None,
                address=request.remote, method=request.method, path=request.path,
                reason="device not allowed" if device_id else "no device certificate",
                suppressed=suppressed or None,
            )
        return error(request, 403, message, not_forwarded=True)

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
            allowed, _ = self._bad_hellos.allow(str(request.remote), self._devices.wall())
            if allowed:
                log.info("hello_refused", address=request.remote, reason=str(exc))
            return error(request, 400, f"ollana: {exc}", not_forwarded=True)
        me = self._devices.identity
        if self._devices.is_allowed(hello.device_id):
            return json_response(200, {"status": "allowed", "device_id": hello.device_id, "server_device_id": me.device_id})
        store = self._devices.store
        new = store.record_pending(
            hello.device_id, hello.cert_pem, hello.hostname, str(request.remote or ""), PeerKind.CLIENT, self._devices.wall(),
        )
        if new:
            self._anchors_stale = True  # applied by the next poll: at most two rebuilds a second
            log.info(
                "device_pending", kind="client", device_id=grouped(hello.device_id),
                hostname=hello.hostname, address=request.remote,
                hint=f"ollana device allow {short(hello.device_id)}",
            )
        return json_response(202, {
            "status": "pending",
            "device_id": hello.device_id,
            "server_device_id": me.device_id,
            "hint": f"on {self._hostname} run `ollana device allow {short(hello.device_id)}`",
        })

    # -- changes -----------------------------------------------------------------------------

    def refresh(self, listener: Listener | None, *, allowed_changed: bool) -> None:
        """After a poll: new anchors if needed; close connections of devices no longer allowed."""
        if allowed_changed or self._anchors_stale:
            self._anchors_stale = False
            self.tls.update(self._anchors())
        if not allowed_changed or listener is None:
            return
        cut: dict[str, int] = {}
        for transport in listener.transports():
            device_id = peer_device_id(transport.get_extra_info("ssl_object"))
            if device_id is not None and not self._devices.is_allowed(device_id):
                # Aborting the connection cancels its handler, which closes the request to Ollama.
                transport.abort()
                cut[device_id] = cut.get(device_id, 0) + 1
        for device_id, count in cut.items():
            log.warning("device_cut_off", device_id=grouped(device_id), connections=count)

