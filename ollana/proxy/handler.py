"""The request handler both roles share, composed with a role-specific ``Route``.

The handler owns the policy every hop has in common (refuse relaying, answer ollana's own
endpoints, failover before the first response byte, one log line per request); the route says
where requests may go and what to answer when nowhere works.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol

import aiohttp
import structlog
from aiohttp import web

from ollana.errors import UpstreamUnavailable
from ollana.fleet.asks import Ask, classify, read_body
from ollana.fleet.catalog import SERVER_HEADER
from ollana.observe.metrics import RequestObserver, Trip
from ollana.proxy.answers import NOT_FORWARDED, error, json_response
from ollana.proxy.forward import (
    SMALL_BODY,
    BodySource,
    Target,
    cut_reason,
    declared_length,
    open_upstream,
    read_small,
    refuse_non_origin_form,
    relay,
    small_response,
)
from ollana.proxy.headers import passed
from ollana.runtime import upstream_timeout

log = structlog.get_logger(__name__)

OWN_PREFIX = "/ollana/"
STATUS_PATH = "/ollana/v1/status"


class Route(Protocol):
    """Where a role sends requests."""

    @property
    def replays(self) -> bool:
        """Whether bodies are kept (up to the replay limit) to try another target."""

    async def answer(self, request: web.BaseRequest, ask: Ask) -> web.StreamResponse | None:
        """An answer without forwarding (the client's merged lists; no server at all), or None.
        May wait briefly for a server to appear."""

    def targets(self, request: web.BaseRequest, ask: Ask) -> list[Target] | web.StreamResponse:
        """Targets in the order to try them, or the answer when the request cannot be routed."""

    def begin(self, target: Target, ask: Ask) -> None: ...

    def end(self, target: Target, ask: Ask, status: int | None) -> None:
        """``status``: what the target answered (None: it could not be reached)."""

    def failed(self, target: Target, reason: str) -> None: ...

    def stale(self, target: Target, ask: Ask) -> None:
        """The target said it has no such model although its catalogue listed it."""

    def unavailable(self, request: web.BaseRequest, tried: list[str]) -> web.Response:
        """The answer when no target could be reached."""


# One of the role's own documents (GET/HEAD /ollana/v1/status, /ollana/v1/catalog), or a
# response of its own (the status page, the metrics).
StatusDocument = Callable[[], dict[str, Any] | Awaitable[dict[str, Any]] | web.Response]


class ProxyHandler:
    def __init__(
        self,
        session: aiohttp.ClientSession,
        route: Route,
        own: Mapping[str, StatusDocument],
        *,
        connect_timeout: float,
        replay_limit: int,
        mark: tuple[str, str] | None = None,
        host_allowed: Callable[[str], bool] | None = None,
        hop: str | None = None,
        observer: RequestObserver | None = None,
    ) -> None:
        self._session = session
        self._route = route
        self._own_documents = own
        self._mark = mark  # a header every forwarded answer carries (the server's name)
        # On loopback, Ollama's Host rule (DNS rebinding guard): what it refuses, refuse.
        self._host_allowed = host_allowed
        self._hop = hop  # this node's Via mark: forwarded requests carry it, loops are refused
        self._timeout = upstream_timeout(connect_timeout)  # built once, not per request
        self._replay_limit = replay_limit
        self._observer = observer  # metrics and the recent requests (None: not observed)
        # Bound once for the node's life (logging is configured by then): the per-request line
        # then skips re-binding a logger on every request.
        self._log = log.bind()

    async def __call__(self, request: web.BaseRequest) -> web.StreamResponse:
        trip = self._observer.begin() if self._observer is not None else Trip(time.perf_counter())
        status, target_key, sent, broken = 0, "-", 0, None
        try:
            refusal = refuse_non_origin_form(request)
            response: web.StreamResponse
            if self._host_allowed is not None and not self._host_allowed(request.headers.get("Host", "")):
                response = web.Response(status=403)  # as Ollama answers it: 403, empty body
            elif refusal is not None:
                response = error(request, *refusal)
            elif self._hop is not None and passed(request.headers, self._hop):
                response = error(
                    request, 508,
                    "ollana: this request already passed this node (a forwarding loop: is a --peer "
                    "this node itself, or a client's own address?)",
                    not_forwarded=True,
                )
            elif request.path.startswith(OWN_PREFIX):
                response = await self._own(request)
            else:
                try:
                    response, target_key, sent, broken = await self._forward(request, trip)
                except asyncio.CancelledError as exc:
                    # Cut (a device disabled) before any byte of the answer: say so, in one error.
                    broken = cut_reason(exc)
                    task = asyncio.current_task()
                    if broken is None or task is None:
                        raise
                    task.uncancel()
                    response = error(request, 403, f"ollana: {broken}")
                    response.force_close()
            status = response.status
            return response
        finally:
            fields = {
                "method": request.method,
                "path": request.path,
                "status": status or "aborted",
                "peer": target_key,
                "bytes": sent,
                "ms": round((time.perf_counter() - trip.started) * 1000, 2),
            }
            if self._observer is not None:
                self._observer.done(request.method, request.path, trip, status, sent)
            if broken:
                self._log.warning("request", broken=broken, **fields)
            elif target_key == "-" and status == 200:
                self._log.debug("request", **fields)  # ollana's own endpoints: health checks are frequent
            else:
                self._log.info("request", **fields)

    async def _own(self, request: web.BaseRequest) -> web.Response:
        """ollana's own endpoints, answered here and never forwarded."""
        document = self._own_documents.get(request.path.rstrip("/"))
        if document is None:
            return error(request, 404, f"no such ollana endpoint: {request.path}")
        if request.method not in ("GET", "HEAD"):
            return error(request, 405, "method not allowed")
        body = document()
        if isinstance(body, web.Response):
            return body
        return json_response(200, await body if inspect.isawaitable(body) else body)

    async def _forward(self, request: web.BaseRequest, trip: Trip) -> tuple[web.StreamResponse, str, int, str | None]:
        route = self._route
        ask = classify(request.method, request.path)
        early = await route.answer(request, ask)
        if early is not None:
            return early, "-", 0, None
        if request.version >= (1, 1) and request.headers.get("Expect", "").lower() == "100-continue":
            # The low-level server does not answer Expect itself; without this, curl pauses a
            # second before every large upload. Sent only once there is somewhere to forward to.
            await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        body = BodySource(request, self._replay_limit if route.replays else 0)
        try:
            await body.prepare(peek=ask.body_names_model)
        except asyncio.IncompleteReadError as exc:
            reason = f"request body ended after {len(exc.partial)} of {exc.expected} bytes"
            return error(request, 400, reason), "-", 0, reason
        if ask.body_names_model and "Content-Encoding" not in request.headers:
            ask = read_body(ask, body.head, whole=body.whole)
        trip.model = ask.model
        targets = route.targets(request, ask)
        if not isinstance(targets, list):
            return targets, "-", 0, None
        tried: list[str] = []
        retried = False
        for index, target in enumerate(targets):
            last = index == len(targets) - 1
            tried.append(target.key)
            route.begin(target, ask)
            status: int | None = None
            try:
                try:
                    upstream = await open_upstream(
                        self._session, request, target, body, timeout=self._timeout, hop=self._hop
                    )
                except UpstreamUnavailable as exc:
                    route.failed(target, str(exc))
                    if body.replayable and not last:
                        log.info("failover", peer=target.key, reason=str(exc))
                        continue
                    return route.unavailable(request, tried), target.key, 0, None
                status = upstream.status
                trip.reached(target.key, target.mark, upstream)
                may_retry = not last and body.replayable
                if upstream.headers.get(NOT_FORWARDED):
                    # The next hop could not reach its Ollama; the request went nowhere. That is
                    # a failure of the target, never a sign of its health (``end`` sees None).
                    status = None
                    route.failed(target, f"answered {upstream.status} without forwarding")
                    if may_retry:
                        upstream.close()
                        log.info("failover", peer=target.key, reason=f"status {upstream.status}")
                        continue
                if status == 404 and target.listed and not retried and may_retry:
                    small = await self._small_body(upstream)
                    if small is not None and b"not found" in small:
                        retried = True
                        route.stale(target, ask)
                        log.info("failover", peer=target.key, reason="model not found there (stale catalogue)")
                        continue
                    if small is not None:
                        answer = small_response(upstream, small, self._mark_for(target))
                        return answer.response, target.key, answer.body_bytes, None
                relayed = await relay(request, upstream, self._mark_for(target), target.who)
                return relayed.response, target.key, relayed.body_bytes, relayed.broken
            finally:
                route.end(target, ask, status)
        return route.unavailable(request, tried), "-", 0, None

    def _mark_for(self, target: Target) -> tuple[str, str] | None:
        return (SERVER_HEADER, target.mark) if target.mark is not None else self._mark

    @staticmethod
    async def _small_body(upstream: aiohttp.ClientResponse) -> bytes | None:
        """The body of a small, length-delimited answer, read whole (None: large, or broken)."""
        declared = declared_length(upstream)
        return await read_small(upstream) if declared is not None and declared <= SMALL_BODY else None
