"""The client proxy with static peers (server proxies on loopback): choice, failover, errors."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path

import aiohttp
import ollama
import pytest

from ollana.config import Endpoint, Mode, Trust
from ollana.errors import StartupError
from tests.fakeollama import FakeOllama
from tests.integration.nodes import client_for, config, from_apps, running, server_for


@pytest.fixture
async def two_servers() -> AsyncIterator[list[tuple[FakeOllama, str]]]:
    async with AsyncExitStack() as stack:
        out = []
        for _ in range(2):
            fake = FakeOllama()
            base = await stack.enter_async_context(fake.serve("127.0.0.1", 0))
            proxy = await stack.enter_async_context(server_for(base))
            out.append((fake, proxy))
        yield out


def free_port() -> int:
    """A loopback port nothing listens on (for a while: nobody else binds it in these tests)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def generate_count(fake: FakeOllama) -> int:
    return sum(1 for r in fake.requests if r.path == "/api/generate")


async def test_sticks_to_one_server_and_official_client_works(two_servers: list[tuple[FakeOllama, str]]) -> None:
    async with client_for(*(p for _, p in two_servers)) as client_url:
        client = ollama.AsyncClient(host=client_url)
        for _ in range(5):
            await client.generate(model="llama3.2:1b", prompt="x")
        counts = sorted(generate_count(f) for f, _ in two_servers)
        assert counts == [0, 5]


async def test_fails_over_with_the_body_replayed(two_servers: list[tuple[FakeOllama, str]]) -> None:
    (f1, p1), (f2, p2) = two_servers
    # Point the client at a dead port first, then the healthy servers.
    dead_port = free_port()
    async with client_for(f"http://127.0.0.1:{dead_port}", p1, p2) as client_url:
        client = ollama.AsyncClient(host=client_url)
        for _ in range(3):
            r = await client.chat(model="llama3.2:1b", messages=[{"role": "user", "content": "hello"}])
            assert r.message.content
        async with aiohttp.ClientSession() as s, s.get(client_url + "/ollana/v1/status") as resp:
            st = await resp.json()
        dead_peer = next(p for p in st["peers"] if p["port"] == dead_port)
        assert dead_peer["healthy"] is False
        chats = [r for f in (f1, f2) for r in f.requests if r.path == "/api/chat"]
        assert len(chats) == 3 and all(r.body_size > 0 for r in chats)


async def test_server_whose_ollama_is_down_is_skipped(two_servers: list[tuple[FakeOllama, str]]) -> None:
    (f1, p1), (_f2, _p2) = two_servers
    port = free_port()
    body = {"model": "llama3.2:1b", "prompt": "x", "stream": False}
    async with (
        server_for(f"http://127.0.0.1:{port}") as broken,
        client_for(broken, p1) as client_url,
        aiohttp.ClientSession() as s,
        s.post(client_url + "/api/generate", json=body) as r,
    ):
        assert r.status == 200, await r.text()
    assert generate_count(f1) == 1


async def test_no_server_is_a_fast_json_503() -> None:
    async with running(config(Mode.CLIENT)) as ready, aiohttp.ClientSession() as s:
        async with s.get(f"http://{ready.listen}/api/tags") as r:
            assert r.status == 503
            # Discovery is off here and no server is named: only --peer can help, and it says so.
            assert (await r.json())["error"] == (
                "ollana: no Ollama server: discovery is off (--no-discovery) and no server is named; "
                "pass --peer HOST:PORT (or `ollana peer add HOST`)"
            )
        async with s.get(f"http://{ready.listen}/ollana/v1/status") as r:
            st = await r.json()
            assert st["role"] == "client" and st["peers"] == []


async def test_busy_port_is_a_clear_startup_error() -> None:
    # Something that is not an Ollama holds the port (it accepts, never answers): name the port only.
    blocker = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = blocker.sockets[0].getsockname()[1]
    try:
        with pytest.raises(StartupError) as info:
            async with running(config(Mode.CLIENT, listen=Endpoint("127.0.0.1", port))):
                pass
        said = str(info.value)
        assert said == (f"cannot listen on 127.0.0.1:{port}: 127.0.0.1:{port} is already in use by another program; "
                        "choose another address with --listen")
        assert "Ollama" not in said and "ollana" not in said
    finally:
        blocker.close()


async def test_busy_port_blames_ollama_only_when_an_ollama_answers_there(tmp_path: Path) -> None:
    fake = FakeOllama()
    async with fake.serve("127.0.0.1", 0) as base:
        port = int(base.rsplit(":", 1)[1])
        with pytest.raises(StartupError) as info:
            async with running(config(Mode.CLIENT, listen=Endpoint("127.0.0.1", port))):
                pass
        said = str(info.value)
        assert said.startswith(f"cannot listen on 127.0.0.1:{port}: an Ollama ")
        assert "already listens there" in said and "ollana serve --mode server" in said
        with pytest.raises(StartupError) as info:
            async with running(config(Mode.SERVER, ollama_url=base, listen=Endpoint("127.0.0.1", port))):
                pass
        assert "an Ollama" in str(info.value) and "--mode server" not in str(info.value)
        # Another ollana (its answers carry ollana's Via mark) is named as such.
        async with server_for(base) as proxy:
            taken = Endpoint("127.0.0.1", int(proxy.rsplit(":", 1)[1]))
            with pytest.raises(StartupError) as info:
                async with running(config(Mode.CLIENT, listen=taken)):
                    pass
            assert f"cannot listen on {taken}: another ollana already listens there" in str(info.value)
        # ... also when it serves TLS only (trust mode devices): its 403 carries the mark.
        async with server_for(base, trust=Trust.DEVICES, state_dir=tmp_path) as proxy:
            taken = Endpoint("127.0.0.1", int(proxy.rsplit(":", 1)[1]))
            with pytest.raises(StartupError) as info:
                async with running(config(Mode.SERVER, ollama_url=base, listen=taken)):
                    pass
            assert f"cannot listen on {taken}: another ollana already listens there" in str(info.value)


async def test_truncated_request_body_is_never_forwarded(two_servers: list[tuple[FakeOllama, str]]) -> None:
    (f1, p1), (f2, p2) = two_servers
    async with client_for(p1, p2) as client_url:
        port = int(client_url.rsplit(":", 1)[1])
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"POST /api/chat HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"model\":")
        await writer.drain()
        writer.write_eof()
        answer = await asyncio.wait_for(reader.read(), 5)
        writer.close()
    # The client closed its side mid-body: aiohttp takes that as a disconnect (nobody to answer);
    # when a body ends early otherwise, the answer is a 400. Either way nothing is forwarded.
    assert answer == b"" or (answer.startswith(b"HTTP/1.1 400") and b"request body ended" in answer)
    assert not any(r.path == "/api/chat" for f in (f1, f2) for r in f.requests)


async def test_a_server_that_could_not_forward_stays_unhealthy_after_failover(
    two_servers: list[tuple[FakeOllama, str]],
) -> None:
    """Its 503 "not forwarded" answer is a failure, not a sign of health (was: marked healthy again
    by the end of the same request)."""
    (_f1, p1), (_f2, _p2) = two_servers
    port = free_port()
    # Ollama on that port is down: its server answers every request 503, not forwarded.
    async with (
        server_for(f"http://127.0.0.1:{port}") as broken,
        client_for(broken, p1) as client_url,
        aiohttp.ClientSession() as s,
    ):
        key = f"static:{broken.split('://')[1]}"
        # Pinned there: its 503 reaches the app, and marks it down rather than healthy.
        async with s.get(client_url + "/api/version", headers={"X-Ollana-Server": key}) as r:
            assert r.status == 503
        async with s.get(client_url + "/ollana/v1/status") as r:
            pinned = next(p for p in (await r.json())["peers"] if p["id"] == key)
        # Unpinned: tried (last resort or first), failed over, still down.
        async with s.get(client_url + "/api/version") as r:
            assert r.status == 200
        async with s.get(client_url + "/ollana/v1/status") as r:
            after = next(p for p in (await r.json())["peers"] if p["id"] == key)
    assert pinned["healthy"] is False and after["healthy"] is False


async def test_a_rebinding_host_is_refused_like_ollama_does(two_servers: list[tuple[FakeOllama, str]]) -> None:
    (f1, p1), (f2, p2) = two_servers
    async with client_for(p1, p2) as client_url, aiohttp.ClientSession() as s:
        for path in ("/api/tags", "/ollana/v1/status", "/api/version"):
            async with s.get(client_url + path, headers={"Host": "rebind.attacker.example:11434"}) as r:
                assert r.status == 403 and await r.read() == b""
        async with s.get(client_url + "/api/version", headers={"Host": "localhost:11434"}) as r:
            assert r.status == 200
    # Only the allowed request reached an Ollama.
    assert [r.path for f in (f1, f2) for r in from_apps(f) if r.path == "/api/version"] == ["/api/version"]


async def test_a_peer_that_is_this_node_is_a_508_then_dropped() -> None:
    """--peer naming the client's own listener: the request comes back and is refused as a loop
    (it made 142 nested requests before), and the peer is dropped with a warning."""
    port = free_port()
    cfg = config(Mode.CLIENT, listen=Endpoint("127.0.0.1", port), static_peers=(Endpoint("127.0.0.1", port),))
    async with running(cfg) as ready, aiohttp.ClientSession() as s:
        url = f"http://{ready.listen}"
        async with s.get(url + "/api/version") as r:
            assert r.status in (502, 503, 508), await r.text()
            assert "error" in await r.json()
        for _ in range(200):  # the next health check drops it
            async with s.get(url + "/ollana/v1/status") as r:
                if not (await r.json())["peers"]:
                    break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("the self peer was never dropped")


async def test_a_server_gone_mid_stream_is_named_not_aiohttps_text() -> None:
    # A "server" that starts an NDJSON stream, sends two lines and drops the connection (a machine
    # switched off mid-answer): the app's stream ends with an error line saying so.
    async def half_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        line = b'{"model":"llama3.2:1b","response":"a","done":false}\n'
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\nTransfer-Encoding: chunked\r\n\r\n")
        writer.write(b"%x\r\n%s\r\n" % (len(line), line) * 2)
        await writer.drain()
        writer.transport.abort()

    dying = await asyncio.start_server(half_answer, "127.0.0.1", 0)
    port = dying.sockets[0].getsockname()[1]
    try:
        async with client_for(f"http://127.0.0.1:{port}") as client_url:
            client = ollama.AsyncClient(host=client_url)
            got = []
            with pytest.raises(ollama.ResponseError) as info:
                async for part in await client.generate(model="llama3.2:1b", prompt="x", stream=True):
                    got.append(part.response)
            assert got == ["a", "a"]
            assert info.value.error == f"ollana: 127.0.0.1:{port} went away mid-stream"
    finally:
        dying.close()


async def test_every_server_failing_is_a_502_naming_each_and_why() -> None:
    dead = [free_port(), free_port()]
    async with client_for(*(f"http://127.0.0.1:{p}" for p in dead)) as client_url, aiohttp.ClientSession() as s:
        r = await s.post(client_url + "/api/generate", json={"model": "m", "prompt": "x"})
        assert r.status == 502
        said = (await r.json())["error"]
    assert said.startswith("ollana: no Ollama server on the LAN answered; tried ")
    for port in dead:
        assert f"127.0.0.1:{port} [--peer]: unreachable: connection refused (nothing listens there)" in said
    assert "Connect call failed" not in said
