"""Connections that never finish (issue 9, item 7), on real loopback sockets with small limits:
the head deadline (TLS handshake included), the idle keep-alive close, a stalled body, a chunked
body turning to garbage, the caps per source and in total; over plain HTTP and over TLS."""

from __future__ import annotations

import asyncio
import functools
import inspect
import json
import ssl
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import uvloop
from aiohttp import web
from structlog.testing import capture_logs

from ollana.config import Endpoint
from ollana.connlimits import ConnLimits
from ollana.httpserver import Listener, listening
from ollana.trust import identity
from ollana.trust.identity import Identity
from ollana.trust.tls import client_context, server_context
from tests.fakeollama import FakeOllama
from tests.integration.nodes import server_for

TIMEOUT = 5.0  # the bound on anything that should take a fraction of a second
SMALL = ConnLimits(head_timeout=0.4, idle_timeout=0.4, body_timeout=0.4, total=64)
GARBAGE_HEAD = b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"


async def app_handler(request: web.BaseRequest) -> web.StreamResponse:
    if request.path == "/stream":  # a long generation: nothing more to read, an answer for a while
        resp = web.StreamResponse()
        await resp.prepare(request)
        for i in range(8):
            await asyncio.sleep(0.15)
            await resp.write(json.dumps({"n": i}).encode() + b"\n")
        await resp.write_eof()
        return resp
    body = await request.read()
    return web.json_response({"bytes": len(body)})


def both_loops(test: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
    """Run an async test on asyncio's loop and on uvloop's (`ollana serve` runs on uvloop,
    whose transports and TLS layer behave differently): a plain test, parametrized."""

    @pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
    @functools.wraps(test)
    def run(*args: Any, loop: str, **kwargs: Any) -> None:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop if loop == "uvloop" else None) as runner:
            runner.run(test(*args, **kwargs))

    sig = inspect.signature(test)
    extra = inspect.Parameter("loop", inspect.Parameter.KEYWORD_ONLY)
    run.__signature__ = sig.replace(parameters=[*sig.parameters.values(), extra])  # type: ignore[attr-defined]
    return run


@pytest.fixture(scope="module")
def ids(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Identity]:
    base = tmp_path_factory.mktemp("ids")
    return {role: identity.load_or_create(base / role, role) for role in ("server", "client")}


@dataclass
class Target:
    listener: Listener
    client_tls: ssl.SSLContext | None

    @property
    def port(self) -> int:
        return self.listener.endpoint.port

    async def connect(
        self, source: str = "127.0.0.1", *, handshake: bool = True
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        tls = self.client_tls if handshake else None
        return await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", self.port, ssl=tls, local_addr=(source, 0),
                                    server_hostname="" if tls else None),
            TIMEOUT,
        )

    async def until_open(self, count: int) -> None:
        await until(lambda: self.listener.open_connections() == count,
                    f"{count} open (now {self.listener.open_connections()})")


@asynccontextmanager
async def serving(ids: dict[str, Identity], tls: bool, limits: ConnLimits) -> AsyncIterator[Target]:
    sctx = server_context(ids["server"], [ids["client"].cert_pem]) if tls else None
    cctx = client_context(ids["client"], ids["server"].cert_pem) if tls else None
    async with listening(app_handler, Endpoint("127.0.0.1", 0), grace=1.0, busy_hint="",
                         ssl_context=sctx, limits=limits) as listener:
        yield Target(listener, cctx)


async def until(cond: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


async def read_all(reader: asyncio.StreamReader) -> bytes:
    """Everything until the server closes (a reset counts as closed)."""
    try:
        return await asyncio.wait_for(reader.read(), TIMEOUT)
    except (ConnectionResetError, ssl.SSLError):
        return b""


async def request(target: Target, raw: bytes, source: str = "127.0.0.1") -> tuple[int, dict[str, object]]:
    reader, writer = await target.connect(source)
    try:
        writer.write(raw)
        return parse(await read_all(reader))
    finally:
        writer.close()


def parse(answer: bytes) -> tuple[int, dict[str, object]]:
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 "), answer
    return int(head.split()[1]), json.loads(body)


LEGIT = b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello"

modes = pytest.mark.parametrize("tls", [False, True], ids=["plain", "tls"])


@modes
@both_loops
async def test_silent_connection_is_freed_at_the_head_deadline(ids: dict[str, Identity], tls: bool) -> None:
    async with serving(ids, tls, SMALL) as target:
        # TLS: a TCP connection that never starts its handshake.
        reader, writer = await target.connect(handshake=False)
        started = time.monotonic()
        assert await read_all(reader) == b""  # closed, nothing said
        took = time.monotonic() - started
        print(f"silent connection closed after {took:.3f} s (head_timeout 0.4 s)")
        assert 0.3 < took < 0.4 + TIMEOUT
        writer.close()
        await target.until_open(0)


@both_loops
async def test_tls_handshake_without_a_request_is_freed(ids: dict[str, Identity]) -> None:
    """A finished handshake without a certificate held a connection for an hour before."""
    async with serving(ids, True, SMALL) as target:
        anon = client_context(ids["client"], ids["server"].cert_pem, present_cert=False)
        reader, writer = await asyncio.open_connection("127.0.0.1", target.port, ssl=anon, server_hostname="")
        await target.until_open(1)
        assert await read_all(reader) == b""
        writer.close()
        await target.until_open(0)


@modes
@both_loops
async def test_half_sent_head_gets_408_json(ids: dict[str, Identity], tls: bool) -> None:
    # A head deadline longer than a stall of this busy process: with 0.4 s, a stall between the
    # accept and the read let uvloop run the timer (timers first) before the bytes were read,
    # and the guard rightly dropped a connection that had said nothing yet.
    limits = ConnLimits(head_timeout=2.0, idle_timeout=2.0, body_timeout=0.4, total=64)
    async with serving(ids, tls, limits) as target:
        status, body = await request(target, b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Le")
        assert (status, body) == (408, {"error": "request head not received in time"})
        await target.until_open(0)


@modes
@both_loops
async def test_idle_keep_alive_connection_is_closed(ids: dict[str, Identity], tls: bool) -> None:
    async with serving(ids, tls, SMALL) as target:
        reader, writer = await target.connect()
        writer.write(b"GET /echo HTTP/1.1\r\nHost: x\r\n\r\n")
        head = await asyncio.wait_for(reader.readuntil(b"}"), TIMEOUT)
        assert head.startswith(b"HTTP/1.1 200") and b"Connection: close" not in head
        started = time.monotonic()
        assert await read_all(reader) == b""
        print(f"idle keep-alive connection closed after {time.monotonic() - started:.3f} s (idle_timeout 0.4 s)")
        writer.close()
        await target.until_open(0)


@modes
@both_loops
async def test_slow_head_pipelined_behind_a_request_gets_the_head_deadline(
    ids: dict[str, Identity], tls: bool
) -> None:
    """Not the idle timeout (long here): a head begun while a request is answered is a head,
    timed from its first byte (the answer here streams for 1.2 s, three head deadlines)."""
    limits = ConnLimits(head_timeout=0.4, idle_timeout=60.0, body_timeout=60.0)
    async with serving(ids, tls, limits) as target:
        reader, writer = await target.connect()
        writer.write(b"GET /stream HTTP/1.1\r\nHost: x\r\n\r\n")
        first = await asyncio.wait_for(reader.readuntil(b'{"n": 0}'), TIMEOUT)
        assert first.startswith(b"HTTP/1.1 200"), first
        writer.write(b"GET /echo HTTP/1.1\r\nHost:")
        answer = await read_all(reader)
        streamed, _, second = answer.partition(b"\r\n0\r\n\r\n")  # the end of the chunked answer
        assert b'{"n": 7}' in streamed, answer
        # Closed at the head deadline (read_all waits 5 s, the idle timeout is 60 s); without a
        # 408, since the connection had answered already and ollana does not track where that
        # answer's last byte went.
        assert second == b"", answer
        writer.close()
        await target.until_open(0)


@modes
@both_loops
async def test_stalled_body_gets_408_json(ids: dict[str, Identity], tls: bool) -> None:
    async with serving(ids, tls, SMALL) as target:
        status, body = await request(target, b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc")
        assert (status, body) == (408, {"error": "request body stopped arriving"})
        await target.until_open(0)


@modes
@both_loops
async def test_chunked_body_turning_to_garbage_gets_400_not_a_hang(ids: dict[str, Identity], tls: bool) -> None:
    """The reported aiohttp hang: the garbage comes 0.3 s after the head (with the head it was
    a 400 already). The body deadline is far away here: the 400 must not wait for it."""
    async with serving(ids, tls, ConnLimits(body_timeout=60.0)) as target:
        reader, writer = await target.connect()
        writer.write(GARBAGE_HEAD)
        await asyncio.sleep(0.3)  # the reported timing, not a wait for an outcome
        writer.write(b"zzzz garbage\r\n\r\n")
        started = time.monotonic()
        status, body = parse(await read_all(reader))
        assert (status, body) == (400, {"error": "malformed request body"})
        print(f"garbage body answered 400 after {time.monotonic() - started:.3f} s")
        writer.close()
        await target.until_open(0)


@modes
@both_loops
async def test_upload_that_keeps_sending_and_long_answer_are_not_cut(ids: dict[str, Identity], tls: bool) -> None:
    async with serving(ids, tls, SMALL) as target:
        # A body dribbled for 4 body deadlines, a chunk every 0.1 s.
        reader, writer = await target.connect()
        writer.write(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 16\r\nConnection: close\r\n\r\n")
        for _ in range(16):
            await asyncio.sleep(0.1)
            writer.write(b"x")
        assert parse(await read_all(reader)) == (200, {"bytes": 16})
        writer.close()
        # An answer streamed for 1.2 s (3 deadlines) with nothing more to read.
        reader, writer = await target.connect()
        writer.write(b"GET /stream HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        answer = await read_all(reader)
        assert answer.startswith(b"HTTP/1.1 200") and b'{"n": 7}' in answer, answer
        writer.close()


@modes
@both_loops
async def test_per_source_cap_refuses_with_a_close_and_others_still_get_in(
    ids: dict[str, Identity], tls: bool
) -> None:
    limits = ConnLimits(head_timeout=30.0, per_source=3, cap_loopback_sources=True, total=64)
    async with serving(ids, tls, limits) as target:
        held = [await target.connect(handshake=False) for _ in range(3)]
        await target.until_open(3)
        with capture_logs() as logs:
            for _ in range(3):
                reader, writer = await target.connect(handshake=False)
                assert await read_all(reader) == b""  # refused: closed at once
                writer.close()
        refused = [e for e in logs if e["event"] == "connection_refused"]
        assert len(refused) == 1 and refused[0]["cap"] == "per_source", logs  # once per source a minute
        assert target.listener.open_connections() == 3
        # Another address still gets in, meanwhile.
        assert await request(target, LEGIT, source="127.0.0.2") == (200, {"bytes": 5})
        # A freed slot is usable again.
        held.pop()[1].close()
        await target.until_open(2)
        assert await request(target, LEGIT) == (200, {"bytes": 5})
        for _, writer in held:
            writer.close()


@modes
@both_loops
async def test_total_cap_refuses_with_a_close(ids: dict[str, Identity], tls: bool) -> None:
    limits = ConnLimits(head_timeout=30.0, total=3)
    async with serving(ids, tls, limits) as target:
        held = [await target.connect(source, handshake=False) for source in ("127.0.0.3", "127.0.0.4", "127.0.0.5")]
        await target.until_open(3)
        reader, writer = await target.connect("127.0.0.2", handshake=False)
        assert await read_all(reader) == b""
        writer.close()
        held.pop()[1].close()
        await target.until_open(2)
        assert await request(target, LEGIT, source="127.0.0.2") == (200, {"bytes": 5})
        for _, writer in held:
            writer.close()


@both_loops
async def test_loopback_listener_caps_only_the_total(ids: dict[str, Identity]) -> None:
    """Every local app is 127.0.0.1: a per-source cap there would be the total cap."""
    async with serving(ids, False, ConnLimits(head_timeout=30.0, per_source=2, total=64)) as target:
        held = [await target.connect() for _ in range(4)]
        await target.until_open(4)
        assert await request(target, LEGIT) == (200, {"bytes": 5})
        for _, writer in held:
            writer.close()


@both_loops
async def test_server_proxy_answers_garbage_body_400_and_keeps_serving(tmp_path: Path) -> None:
    """The same through a real server node (in front of the fake Ollama)."""
    async with FakeOllama().serve("127.0.0.1", 0) as base, server_for(
        base, conn_limits=ConnLimits(body_timeout=60.0), state_dir=tmp_path
    ) as srv:
        port = int(srv.rsplit(":", 1)[1])
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(GARBAGE_HEAD.replace(b"/echo", b"/api/chat"))
        await asyncio.sleep(0.3)  # the reported timing
        writer.write(b"zzzz garbage\r\n\r\n")
        status, body = parse(await read_all(reader))
        assert (status, body) == (400, {"error": "malformed request body"})
        writer.close()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /api/version HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert (await read_all(reader)).startswith(b"HTTP/1.1 200")
        writer.close()
