"""At ``debug``: whether each upstream request got a new connection or reused a pooled one
(aiohttp's request tracing). Only where the request went is logged, never what it carried.

Tracing costs every request CPU even when nothing would be logged (on the development machine:
about 8 µs for aiohttp's machinery alone, 20 µs with these handlers; 110-130 µs with the debug
lines written, ``tests/bench/obscost.py``), so the session is traced only when the node starts
with this logger at ``debug`` (``OLLANA_LOG=debug``, or ``ollana.observe=debug``).
"""

from __future__ import annotations

import logging
from types import SimpleNamespace

import aiohttp
import structlog

log = structlog.get_logger(__name__)


def connection_traces() -> list[aiohttp.TraceConfig]:
    """The trace configs for the upstream session: none unless debug logging is on for this module."""
    if not logging.getLogger(__name__).isEnabledFor(logging.DEBUG):
        return []
    trace = aiohttp.TraceConfig()

    async def started(_s: aiohttp.ClientSession, ctx: SimpleNamespace, params: aiohttp.TraceRequestStartParams) -> None:
        ctx.url = params.url

    def seen(ctx: SimpleNamespace, reused: bool) -> None:
        url = getattr(ctx, "url", None)
        log.debug("upstream_connection", reused=reused,
                  upstream=f"{url.scheme}://{url.host}:{url.port}" if url is not None else None)

    async def created(_s: aiohttp.ClientSession, ctx: SimpleNamespace, _p: aiohttp.TraceConnectionCreateEndParams) -> None:
        seen(ctx, False)

    async def reused(_s: aiohttp.ClientSession, ctx: SimpleNamespace, _p: aiohttp.TraceConnectionReuseconnParams) -> None:
        seen(ctx, True)

    trace.on_request_start.append(started)
    trace.on_connection_create_end.append(created)
    trace.on_connection_reuseconn.append(reused)
    return [trace]
