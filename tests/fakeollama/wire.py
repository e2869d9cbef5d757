"""HTTP framing the way Ollama's Go stack (net/http + gin) puts it on the wire.

- A response body of at most 2048 bytes gets Content-Length; a larger one is chunked
  (net/http's bufferBeforeChunkingSize).
- Streams are chunked, one write per line; headers go out only once the first line is ready.
- Request bodies are read through one counting, hashing reader, never held whole unless
  the handler asks for the whole (JSON) body.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, Final, NoReturn

from aiohttp import web

from .gojson import dumps
from .state import Knobs, RequestRecord

JSON: Final = "application/json; charset=utf-8"  # gin's c.JSON
BARE_JSON: Final = "application/json"  # waitForStream, errors before a stream's first line
NDJSON: Final = "application/x-ndjson"
TEXT: Final = "text/plain; charset=utf-8"  # gin's c.String
GIN_PLAIN: Final = "text/plain"  # gin's own 404/405 pages
SSE: Final = "text/event-stream"
GO_BUFFER: Final = 2048
_CONTINUE: Final = b"HTTP/1.1 100 Continue\r\n\r\n"
_ABORT_GRACE: Final = 1.0


def body_response(status: int, body: bytes, content_type: str | None) -> web.Response:
    """A complete response framed like net/http frames a handler's single write."""
    headers = {"Content-Type": content_type} if content_type else {}
    resp = web.Response(status=status, body=body or None, headers=headers)
    if len(body) > GO_BUFFER:
        resp.enable_chunked_encoding()
    return resp


def json_response(status: int, value: Any, content_type: str = JSON) -> web.Response:
    return body_response(status, dumps(value), content_type)


def error_response(status: int, message: str, content_type: str = JSON) -> web.Response:
    return json_response(status, {"error": message}, content_type)


def empty_response(status: int = 200) -> web.Response:
    """gin's c.Status(code): no body, no Content-Type, Content-Length: 0."""
    return web.Response(status=status)


class RequestBody:
    """The one reader of a request body: counts and hashes into the record as it goes.

    Like net/http it answers `Expect: 100-continue` only when the body is first read.
    """

    def __init__(self, request: web.Request, record: RequestRecord | None) -> None:
        self._request = request
        self._record = record
        self.continue_sent = False
        self.consumed = 0

    @property
    def expects_continue(self) -> bool:
        return self._request.headers.get("Expect", "").lower() == "100-continue"

    @property
    def at_eof(self) -> bool:
        return self._request.content.at_eof()

    async def _before_read(self) -> None:
        if self.expects_continue and not self.continue_sent and not self.at_eof:
            self.continue_sent = True
            await self._request.writer.write(_CONTINUE)
            self._request.writer.output_size = 0

    async def chunks(self) -> AsyncIterator[bytes]:
        await self._before_read()
        while True:
            chunk = await self._request.content.readany()
            if not chunk:
                return
            self._count(chunk)
            yield chunk

    async def read(self) -> bytes:
        parts = [chunk async for chunk in self.chunks()]
        return b"".join(parts)

    async def discard(self, limit: int) -> bool:
        """Read and drop up to `limit` bytes; True if the body ended within them."""
        await self._before_read()
        seen = 0
        while seen < limit:
            chunk = await self._request.content.readany()
            if not chunk:
                return True
            seen += len(chunk)
            self._count(chunk)
        return self.at_eof

    def _count(self, chunk: bytes) -> None:
        self.consumed += len(chunk)
        if self._record is not None:
            self._record.feed(chunk)


async def abort_connection(request: web.Request, record: RequestRecord | None) -> None:
    """Cut the TCP connection now, as a crashing server would; never returns normally."""
    if record is not None:
        record.aborted = True
    transport = request.transport
    if transport is not None:
        transport.abort()
    # With handler_cancellation aiohttp cancels us on connection_lost, one loop turn away.
    await asyncio.sleep(_ABORT_GRACE)
    raise ConnectionResetError("fakeollama aborted the connection")


@dataclass(frozen=True, slots=True)
class Failure:
    """An Ollama error as (status, text): a response before the first line, a line after it."""

    status: int
    message: str

    def response(self, content_type: str = JSON) -> web.Response:
        return error_response(self.status, self.message, content_type)


class StreamStopped(Exception):
    """The stream ended early; `response` is what the handler returns."""

    def __init__(self, response: web.StreamResponse) -> None:
        super().__init__("stream stopped")
        self.response = response


class LineStream:
    """Writes a stream line by line with the knobs applied (delay, split, error, die)."""

    def __init__(
        self,
        request: web.Request,
        knobs: Knobs,
        record: RequestRecord | None,
        content_type: str,
        error_line: Callable[[str], bytes],
        early_error: Callable[[Failure], web.Response],
    ) -> None:
        self._request = request
        self._knobs = knobs
        self._record = record
        self._content_type = content_type
        self._error_line = error_line
        self._early_error = early_error
        self._resp: web.StreamResponse | None = None
        self.lines = 0

    async def _start(self) -> web.StreamResponse:
        if self._resp is None:
            self._resp = web.StreamResponse(headers={"Content-Type": self._content_type})
            self._resp.enable_chunked_encoding()
            await self._resp.prepare(self._request)
        return self._resp

    async def _write(self, data: bytes) -> None:
        resp = await self._start()
        if self._knobs.split_chunks and len(data) > 1:
            mid = len(data) // 2
            await resp.write(data[:mid])
            await asyncio.sleep(self._knobs.split_delay)
            data = data[mid:]
        await resp.write(data)

    async def fail(self, failure: Failure) -> NoReturn:
        """streamResponse's error case: a real status if nothing went out yet, else a last line."""
        if self._resp is None:
            raise StreamStopped(self._early_error(failure))
        await self._write(self._error_line(failure.message))
        raise StreamStopped(await self.finish())

    async def send(self, line: bytes | Failure) -> None:
        knobs = self._knobs
        if self.lines and knobs.chunk_delay:
            await asyncio.sleep(knobs.chunk_delay)
        if knobs.die_after is not None and self.lines >= knobs.die_after:
            await abort_connection(self._request, self._record)
        if knobs.error_after is not None and self.lines >= knobs.error_after:
            await self.fail(Failure(500, knobs.error_message))
        if isinstance(line, Failure):
            await self.fail(line)
        await self._write(line)
        self.lines += 1

    async def finish(self) -> web.StreamResponse:
        resp = await self._start()  # a stream with no lines at all is still a chunked 200
        await resp.write_eof()
        return resp


async def run_stream(
    stream: LineStream, lines: AsyncIterator[bytes | Failure]
) -> web.StreamResponse:
    try:
        async for line in lines:
            await stream.send(line)
    except StreamStopped as stop:
        return stop.response
    return await stream.finish()


async def run_whole(
    request: web.Request,
    knobs: Knobs,
    record: RequestRecord | None,
    lines: AsyncIterator[bytes | Failure],
) -> bytes | Failure:
    """A stream:false answer: consume every line, then keep the last one (waitForStream).

    The knobs act as they would on the stream: error_after becomes a 500, die_after a cut.
    """
    last, count = b"", 0
    async for line in lines:
        if knobs.die_after is not None and count >= knobs.die_after:
            await abort_connection(request, record)
        if knobs.error_after is not None and count >= knobs.error_after:
            return Failure(500, knobs.error_message)
        if isinstance(line, Failure):
            return line
        last, count = line, count + 1
    return last.rstrip(b"\n")


def ndjson_error_line(message: str) -> bytes:
    # json.NewEncoder(w).Encode(gin.H{"error": e}) adds the newline itself.
    return dumps({"error": message}) + b"\n"


def ndjson_early_error(failure: Failure) -> web.Response:
    return failure.response(BARE_JSON)


def ndjson_stream(request: web.Request, knobs: Knobs, record: RequestRecord | None) -> LineStream:
    return LineStream(request, knobs, record, NDJSON, ndjson_error_line, ndjson_early_error)
