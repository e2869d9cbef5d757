"""The request handler both roles share, composed with a role-specific ``Route``.

The handler owns the policy every hop has in common (refuse relaying, answer ollana's own
endpoints, failover before the first response byte, one log line per request); the route says
where requests may go and what to answer when nowhere works.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any, Protocol

import aiohttp
import structlog
from aiohttp import web

from ollana.errors import UpstreamUnavailable
from ollana.proxy.answers import NOT_FORWARDED, error, json_response
from ollana.proxy.forward import BodySource, Target, open_upstream, refuse_non_origin_form, relay
from ollana.runtime import upstream_timeout

log = structlog.get_logger(__name__)

OWN_PREFIX = "/ollana/"
STATUS_PATH = "/ollana/v1/status"


class Route(Protocol):
    """Where a role sends requests."""

    async def targets(self) -> list[Target]:
        """Targets in the order to try them (may wait briefly for one to appear)."""

    def begin(self, target: Target) -> None: ...

    def end(self, target: Target, *, ok: bool) -> None:
        """``ok``: the target answered (whatever the status)."""

    def failed(self, target: Target, reason: str) -> None: ...

    def unavailable(self, request: web.BaseRequest, tried: list[str]) -> web.Response:
        """The answer when no target could be reached."""


# The role's status document (GET/HEAD /ollana/v1/status).
StatusDocument = Callable[[], dict[str, Any]]


class ProxyHandler:
    def __init__(
        self,
        session: aiohttp.ClientSession,
        route: Route,
        status: StatusDocument,
        *,
        connect_timeout: float,
        replay_limit: int,
    ) -> None:
        self._session = session
        self._route = route
        self._status = status
        self._timeout = upstream_timeout(connect_timeout)  # built once, not per request
        self._replay_limit = replay_limit
        # Bound once for the node's life (logging is configured by then): the per-request line
        # then skips re-binding a logger on every request.
        self._log = log.bind()

    async def __call__(self, request: web.BaseRequest) -> web.StreamResponse:
        started = time.perf_counter()
        status, target_key, sent, broken = 0, "-", 0, None
        try:
            refusal = refuse_non_origin_form(request)
            if refusal is not None:
                response: web.StreamResponse = error(request, *refusal)
            elif request.path.startswith(OWN_PREFIX):
                response = self._own(request)
            else:
                response, target_key, sent, broken = await self._forward(request)
            status = response.status
            return response
        finally:
            fields = {
                "method": request.method,
                "path": request.path,
                "status": status or "aborted",
                "peer": target_key,
                "bytes": sent,
                "ms": round((time.perf_counter() - started) * 1000, 2),
            }
            if broken:
                self._log.warning("request", broken=broken, **fields)
            elif target_key == "-" and status == 200:
                self._log.debug("request", **fields)  # ollana's own endpoints: health checks are frequent
            else:
                self._log.info("request", **fields)

    def _own(self, request: web.BaseRequest) -> web.Response:
        """ollana's own endpoints, answered here and never forwarded."""
        if request.path.rstrip("/") != STATUS_PATH:
            return error(request, 404, f"no such ollana endpoint: {request.path}")
        if request.method not in ("GET", "HEAD"):
            return error(request, 405, "method not allowed")
        return json_response(200, self._status())

    async def _forward(self, request: web.BaseRequest) -> tuple[web.StreamResponse, str, int, str | None]:
        targets = await self._route.targets()
        if targets and request.version >= (1, 1) and request.headers.get("Expect", "").lower() == "100-continue":
            # The low-level server does not answer Expect itself; without this, curl pauses a
            # second before every large upload. Sent only once there is somewhere to forward to.
            await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        body = BodySource(request, self._replay_limit if len(targets) > 1 else 0)
        try:
            await body.prepare()
        except asyncio.IncompleteReadError as exc:
            reason = f"request body ended after {len(exc.partial)} of {exc.expected} bytes"
            return error(request, 400, reason), "-", 0, reason
        tried: list[str] = []
        for index, target in enumerate(targets):
            last = index == len(targets) - 1
            tried.append(target.key)
            self._route.begin(target)
            ok = False
            try:
                try:
                    upstream = await open_upstream(
                        self._session, request, target, body, timeout=self._timeout
                    )
                except UpstreamUnavailable as exc:
                    self._route.failed(target, str(exc))
                    if body.replayable and not last:
                        log.info("failover", peer=target.key, reason=str(exc))
                        continue
                    return self._route.unavailable(request, tried), target.key, 0, None
                ok = True
                if upstream.headers.get(NOT_FORWARDED) and not last and body.replayable:
                    # The next hop could not reach its Ollama; the request went nowhere yet.
                    upstream.close()
                    self._route.failed(target, f"answered {upstream.status} without forwarding")
                    log.info("failover", peer=target.key, reason=f"status {upstream.status}")
                    continue
                relayed = await relay(request, upstream)
                return relayed.response, target.key, relayed.body_bytes, relayed.broken
            finally:
                self._route.end(target, ok=ok)
        return self._route.unavailable(request, tried), "-", 0, None
