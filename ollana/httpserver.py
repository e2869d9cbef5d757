"""Listening for HTTP: start a low-level aiohttp server behind the connection guard (deadlines
and caps, ``connguard.py``), stop it gracefully."""

from __future__ import annotations

import asyncio
import errno
import resource
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from ollana.config import Endpoint
from ollana.connguard import Guard, Shared, guarded
from ollana.connlimits import ConnCounts, ConnLimits, effective_total, is_loopback
from ollana.errors import PortBusy, StartupError

Handler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]


@dataclass(frozen=True, slots=True)
class Listener:
    """A listening server: where it is bound, and its open connections."""

    endpoint: Endpoint
    _server: web.Server
    _counts: ConnCounts | None = None

    def transports(self) -> list[asyncio.Transport]:
        """The transports of the connections open right now (to close some of them)."""
        return [h.transport for h in self._server.connections if h.transport is not None]

    def open_connections(self) -> int:
        """Connections counted against the caps now (handshakes and half-sent heads included)."""
        return self._counts.count if self._counts is not None else len(self._server.connections)


class _GuardedServer(web.Server):
    """aiohttp's server whose protocol factory puts a guard in front of each connection."""

    shared: Shared | None = None

    def __call__(self) -> Any:  # a Guard, which hands the connection to a RequestHandler
        assert self.shared is not None
        return Guard(self.shared)

    def aiohttp_protocol(self) -> Any:
        return super().__call__()


def _nofile() -> int:
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return soft if soft != resource.RLIM_INFINITY else 1 << 20


@asynccontextmanager
async def listening(
    handler: Handler,
    endpoint: Endpoint,
    *,
    grace: float,
    busy_hint: str,
    ssl_context: ssl.SSLContext | None = None,
    limits: ConnLimits | None = None,
) -> AsyncIterator[Listener]:
    """Serve ``handler`` on ``endpoint`` (over TLS with ``ssl_context``) within ``limits``; on
    exit stop accepting, let requests finish for up to ``grace`` seconds, then close. Yields the
    listener, whose endpoint is the bound one (the real port when 0 was asked)."""
    limits = limits or ConnLimits()
    server = _GuardedServer(
        guarded(handler),
        # A client that goes away cancels its handler, which closes the upstream connection:
        # that is how Ollama learns to stop generating.
        handler_cancellation=True,
        # Bodies pass through byte-exact: never decompress what a client compressed.
        auto_decompress=False,
        access_log=None,
        # Idle keep-alive connections: aiohttp's timer (from the end of a response, and from
        # the accept until the guard's shorter head deadline takes over).
        keepalive_timeout=limits.idle_timeout,
    )
    counts = ConnCounts(limits, total=effective_total(limits.total, _nofile()),
                        loopback_listener=is_loopback(endpoint.host))
    # The guard runs the TLS handshake itself, so that a connection is counted (and timed)
    # from its accept, not from the end of a handshake that may never end.
    shared = server.shared = Shared(limits, counts, ssl_context, server.aiohttp_protocol, asyncio.get_running_loop())
    runner = web.ServerRunner(server, shutdown_timeout=grace, handle_signals=False)
    await runner.setup()
    # 0.0.0.0 means every address, IPv6 ones too, as Ollama (Go) reads it: an IPv6-only LAN
    # reaches the server proxy. (Port 0 would give each family its own port: IPv4 only then.)
    host = None if endpoint.host == "0.0.0.0" and endpoint.port else endpoint.host
    site = web.TCPSite(runner, host, endpoint.port, reuse_address=True)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        if exc.errno == errno.EADDRINUSE:
            raise PortBusy(endpoint, f"cannot listen on {endpoint}: the port is already in use; {busy_hint}") from exc
        raise StartupError(f"cannot listen on {endpoint}: {exc.strerror or exc}") from exc
    try:
        port = runner.addresses[0][1] if runner.addresses else endpoint.port
        yield Listener(Endpoint(endpoint.host, port), server, counts)
    finally:
        try:
            await runner.cleanup()
        finally:
            shared.abort_all()  # what never became a request (handshakes, half-sent heads)
