"""Whether each upstream request got a new connection or reused a pooled one (aiohttp tracing).

Counted always; logged at ``debug`` (the level is checked first: this runs on every request).
Only where the request went is logged, never what it carried.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from types import SimpleNamespace

import aiohttp
import structlog

log = structlog.get_logger(__name__)


def connection_trace(count: Callable[[bool], None]) -> aiohttp.TraceConfig:
    """A trace config that calls ``count(reused)`` once per connection an upstream request gets."""
    debug = logging.getLogger(__name__)
    trace = aiohttp.TraceConfig()

    async def started(_s: aiohttp.ClientSession, ctx: SimpleNamespace, params: aiohttp.TraceRequestStartParams) -> None:
        ctx.url = params.url

    def seen(ctx: SimpleNamespace, reused: bool) -> None:
        count(reused)
        if debug.isEnabledFor(logging.DEBUG):
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
    return trace
