"""Streaming one request to one upstream and its response back: the bytes-moving core.

Bodies are never buffered beyond a small replay bound, never decompressed and never re-framed:
each chunk the upstream writes is written to the client as soon as it arrives.
"""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Final, NamedTuple

import aiohttp
import structlog
import yarl
from aiohttp import web

from ollana.errors import UpstreamUnavailable
from ollana.proxy.headers import request_headers, response_headers

log = structlog.get_logger(__name__)

NDJSON: Final = "application/x-ndjson"
_NO_BODY_STATUSES: Final = frozenset({204, 304})
# A request cut on purpose (a device disabled) is cancelled with this mark before its reason:
# its stream then ends with an error line saying why, rather than breaking off.
_CUT: Final = "ollana-cut: "
# A response with a declared length up to this size is one JSON document nobody can use in part:
# read it whole and answer in one write (headers and body) instead of three.
SMALL_BODY: Final = 64 * 1024


class Target(NamedTuple):
    """Where a request goes: an upstream base URL, the Host it expects, and a key for bookkeeping.

    (A tuple: the client builds one per candidate server on every request.)
    """

    key: str
    base_url: str
    host_header: str
    # For an https upstream: the context that pins the peer's certificate (trust mode devices).
    tls: ssl.SSLContext | None = None
    # Its catalogue lists the model the request names: a 404 "not found" from it means the
    # catalogue was stale, and the request may be tried on another server.
    listed: bool = False
    # How answers from this target are marked (X-Ollana-Server), when the hop does not say it.
    mark: str | None = None
    # How messages name it to people ("gpu-box went away mid-stream"); default: its URL.
    name: str = ""

    @property
    def who(self) -> str:
        return self.name or f"the Ollama at {self.base_url}"

    def url_for(self, raw_path: str) -> yarl.URL:
        # raw_path keeps the client's exact percent-encoding and query string.
        return yarl.URL(self.base_url + raw_path, encoded=True)


class BodySource:
    """The request body as upstream requests read it.

    Bodies up to ``replay_limit`` bytes with a known length are read once and kept, so a request
    whose server failed before answering can be sent to another one. Larger bodies stream; they
    can be replayed only while not a byte of them has been sent. ``peek`` reads the first chunk
    of a streamed body ahead (where a request names its model), holding no more than that.
    """

    def __init__(self, request: web.BaseRequest, replay_limit: int) -> None:
        self._request = request
        self._limit = replay_limit
        self._buffer: bytes | None = None
        self._head = b""
        self._consumed = False

    async def prepare(self, *, peek: bool = False) -> None:
        length = self._request.content_length
        if not self._request.body_exists:
            self._buffer = b""
        elif length is not None and length <= self._limit:
            self._buffer = await self._request.content.readexactly(length)
        elif peek:
            self._head = await self._request.content.readany()

    @property
    def whole(self) -> bool:
        return self._buffer is not None

    @property
    def head(self) -> bytes:
        """The whole body when kept, else what was peeked (maybe nothing)."""
        return self._buffer if self._buffer is not None else self._head

    @property
    def replayable(self) -> bool:
        return self._buffer is not None or not self._consumed

    def data(self) -> bytes | AsyncIterator[bytes] | None:
        if self._buffer is not None:
            return self._buffer if self._buffer else None
        return self._stream()

    async def _stream(self) -> AsyncIterator[bytes]:
        if self._head:
            self._consumed = True
            yield self._head
        async for chunk in self._request.content.iter_any():
            self._consumed = True
            yield chunk


def cut(task: asyncio.Task[Any], reason: str) -> None:
    """End a request in flight on purpose; ``reason`` is what its caller is told."""
    task.cancel(_CUT + reason)


def cut_reason(exc: asyncio.CancelledError) -> str | None:
    """The reason of a cut; None for any other cancellation (a client gone, shutdown)."""
    msg = exc.args[0] if exc.args else None
    return msg[len(_CUT):] if isinstance(msg, str) and msg.startswith(_CUT) else None


def refuse_non_origin_form(request: web.BaseRequest) -> tuple[int, str] | None:
    """ollana is a reverse proxy, not an open relay: only origin-form targets (``/path``)."""
    if request.method == "CONNECT":
        return 405, "CONNECT is not supported: ollana is not a forward proxy"
    if not request.raw_path.startswith("/"):
        return 400, "absolute-form and asterisk-form request targets are refused: ollana only forwards to its own upstream"
    return None


async def open_upstream(
    session: aiohttp.ClientSession,
    request: web.BaseRequest,
    target: Target,
    body: BodySource,
    *,
    timeout: aiohttp.ClientTimeout,
    hop: str | None = None,
) -> aiohttp.ClientResponse:
    """Send the request; return once the upstream's status line and headers arrived.

    Raises ``UpstreamUnavailable`` when no response came (connection refused, reset or timed
    out before any response byte). ``timeout`` is ``runtime.upstream_timeout``: no read timeout.
    """
    try:
        return await session.request(
            request.method,
            target.url_for(request.raw_path),
            headers=request_headers(request.headers, target.host_header, hop),
            data=body.data(),
            allow_redirects=False,
            timeout=timeout,
            ssl=target.tls if target.tls is not None else True,
        )
    except (TimeoutError, aiohttp.ClientConnectionError, OSError) as exc:
        reason = str(exc) or type(exc).__name__
        raise UpstreamUnavailable(f"{target.base_url}: {reason}") from exc


@dataclass(slots=True)
class Relayed:
    response: web.StreamResponse
    body_bytes: int = 0
    # Why the body did not complete, if it did not (upstream died, client left).
    broken: str | None = None


def declared_length(upstream: aiohttp.ClientResponse) -> int | None:
    length = upstream.headers.get("Content-Length")
    return int(length) if length is not None and length.isdigit() else None


async def relay(
    request: web.BaseRequest, upstream: aiohttp.ClientResponse, mark: tuple[str, str] | None = None,
    who: str = "the upstream",
) -> Relayed:
    """Stream the upstream response to the client, chunk by chunk, as it arrives.

    A stream the upstream breaks, or that is cut (``cut``), is never passed off as complete: an
    NDJSON stream gets a final ``{"error": ...}`` line saying what happened, as Ollama itself
    ends a failed stream; anything else has its connection aborted so the client sees a
    truncated message rather than a short one. ``mark``: a header to add; ``who``: the
    upstream's name for people.
    """
    declared = declared_length(upstream)
    if declared is not None and declared <= SMALL_BODY and request.method != "HEAD" and upstream.status >= 200:
        body = await read_small(upstream)
        if body is not None:
            return small_response(upstream, body, mark)
    out = web.StreamResponse(status=upstream.status, reason=upstream.reason)
    out.headers.extend(response_headers(upstream.headers))
    if mark is not None:
        out.headers[mark[0]] = mark[1]
    if declared is not None and upstream.status not in _NO_BODY_STATUSES:
        out.content_length = declared
    result = Relayed(out)
    try:
        await out.prepare(request)
        ends_with_newline = True
        async for chunk in upstream.content.iter_any():
            await out.write(chunk)
            result.body_bytes += len(chunk)
            ends_with_newline = chunk.endswith(b"\n")
        await out.write_eof()
        upstream.release()
        return result
    except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError) as exc:
        upstream.close()
        if isinstance(exc, aiohttp.ClientConnectionResetError) or request.transport is None or request.transport.is_closing():
            result.broken = "client disconnected"
            return result
        # (Never aiohttp's text, "TransferEncodingError: 400, message='Not enough data...'": the
        # log line has it, the person reading the app's error wants what happened.)
        log.info("upstream_broke_stream", upstream=who, error=str(exc) or type(exc).__name__)
        result.broken = f"{who} went away mid-stream"
        await _signal_broken(request, upstream, out, result, ends_with_newline)
        return result
    except ConnectionResetError:
        upstream.close()
        result.broken = "client disconnected"
        return result
    except asyncio.CancelledError as exc:
        upstream.close()
        reason = cut_reason(exc)
        task = asyncio.current_task()
        if reason is None or not out.prepared or task is None:
            raise  # not ours to end (client gone, shutdown), or nothing sent yet: the handler answers
        task.uncancel()  # the cut is handled here: the answer ends with the reason
        result.broken = reason
        await _signal_broken(request, upstream, out, result, ends_with_newline)
        return result
    except BaseException:
        # Cancellation (client went away) included: closing, not releasing, the upstream
        # connection is what tells Ollama to stop generating.
        upstream.close()
        raise


async def read_small(upstream: aiohttp.ClientResponse) -> bytes | None:
    """Read a small, length-delimited body whole; None if the upstream broke it (the caller's
    streaming path then reports the break the usual way)."""
    try:
        body = await upstream.read()
    except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError):
        upstream.close()
        return None
    except BaseException:
        upstream.close()
        raise
    upstream.release()
    return body


def small_response(upstream: aiohttp.ClientResponse, body: bytes, mark: tuple[str, str] | None = None) -> Relayed:
    headers = response_headers(upstream.headers)
    if mark is not None:
        headers[mark[0]] = mark[1]
    out = web.Response(status=upstream.status, reason=upstream.reason, body=body, headers=headers)
    return Relayed(out, len(body))


async def _signal_broken(
    request: web.BaseRequest,
    upstream: aiohttp.ClientResponse,
    out: web.StreamResponse,
    result: Relayed,
    ends_with_newline: bool,
) -> None:
    chunked = out.content_length is None
    if chunked and upstream.headers.get("Content-Type", "").startswith(NDJSON):
        line = json.dumps({"error": f"ollana: {result.broken}"}).encode() + b"\n"
        try:
            await out.write(line if ends_with_newline else b"\n" + line)
            await out.write_eof()
            return
        except (ConnectionError, aiohttp.ClientConnectionError):
            pass
    if request.transport is not None:
        request.transport.abort()
