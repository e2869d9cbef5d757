"""Listening for HTTP: start a low-level aiohttp server, stop it gracefully."""

from __future__ import annotations

import asyncio
import errno
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

from aiohttp import web

from ollana.config import Endpoint
from ollana.errors import PortBusy, StartupError

Handler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]


@dataclass(frozen=True, slots=True)
class Listener:
    """A listening server: where it is bound, and its open connections."""

    endpoint: Endpoint
    _server: web.Server

    def transports(self) -> list[asyncio.Transport]:
        """The transports of the connections open right now (to close some of them)."""
        return [h.transport for h in self._server.connections if h.transport is not None]


@asynccontextmanager
async def listening(
    handler: Handler,
    endpoint: Endpoint,
    *,
    grace: float,
    busy_hint: str,
    ssl_context: ssl.SSLContext | None = None,
) -> AsyncIterator[Listener]:
    """Serve ``handler`` on ``endpoint`` (over TLS with ``ssl_context``); on exit stop accepting,
    let requests finish for up to ``grace`` seconds, then close. Yields the listener, whose
    endpoint is the bound one (the real port when 0 was asked)."""
    server = web.Server(
        handler,
        # A client that goes away cancels its handler, which closes the upstream connection:
        # that is how Ollama learns to stop generating.
        handler_cancellation=True,
        # Bodies pass through byte-exact: never decompress what a client compressed.
        auto_decompress=False,
        access_log=None,
    )
    runner = web.ServerRunner(server, shutdown_timeout=grace, handle_signals=False)
    await runner.setup()
    # 0.0.0.0 means every address, IPv6 ones too, as Ollama (Go) reads it: an IPv6-only LAN
    # reaches the server proxy. (Port 0 would give each family its own port: IPv4 only then.)
    host = None if endpoint.host == "0.0.0.0" and endpoint.port else endpoint.host
    site = web.TCPSite(runner, host, endpoint.port, reuse_address=True, ssl_context=ssl_context)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        if exc.errno == errno.EADDRINUSE:
            raise PortBusy(endpoint, f"cannot listen on {endpoint}: the port is already in use; {busy_hint}") from exc
        raise StartupError(f"cannot listen on {endpoint}: {exc.strerror or exc}") from exc
    try:
        port = runner.addresses[0][1] if runner.addresses else endpoint.port
        yield Listener(Endpoint(endpoint.host, port), server)
    finally:
        await runner.cleanup()
