"""Listening for HTTP: start a low-level aiohttp server, stop it gracefully."""

from __future__ import annotations

import errno
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from aiohttp import web

from ollana.config import Endpoint
from ollana.errors import StartupError
from ollana.proxy.handler import ProxyHandler


@asynccontextmanager
async def listening(
    handler: ProxyHandler, endpoint: Endpoint, *, grace: float, busy_hint: str
) -> AsyncIterator[Endpoint]:
    """Serve ``handler`` on ``endpoint``; on exit stop accepting, let requests finish for up to
    ``grace`` seconds, then close. Yields the bound endpoint (the real port when 0 was asked)."""
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
    site = web.TCPSite(runner, endpoint.host, endpoint.port, reuse_address=True)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        if exc.errno == errno.EADDRINUSE:
            raise StartupError(f"cannot listen on {endpoint}: the port is already in use; {busy_hint}") from exc
        raise StartupError(f"cannot listen on {endpoint}: {exc.strerror or exc}") from exc
    try:
        port = runner.addresses[0][1] if runner.addresses else endpoint.port
        yield Endpoint(endpoint.host, port)
    finally:
        await runner.cleanup()
