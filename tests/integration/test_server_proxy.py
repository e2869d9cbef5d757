"""The server proxy against the fake Ollama, on real loopback sockets."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import json
import time
from collections.abc import AsyncIterator

import aiohttp
import ollama
import pytest

from ollana.app import local_ollama_version
from tests.fakeollama import FakeOllama
from tests.integration.nodes import from_apps, server_for


@pytest.fixture
async def fake() -> AsyncIterator[tuple[FakeOllama, str]]:
    f = FakeOllama()
    async with f.serve("127.0.0.1", 0) as base:
        yield f, base


@pytest.fixture
async def proxied(fake: tuple[FakeOllama, str]) -> AsyncIterator[tuple[FakeOllama, str, str]]:
    f, base = fake
    async with server_for(base) as proxy:
        yield f, base, proxy


async def raw(port: int, data: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    await writer.drain()
    out = await asyncio.wait_for(reader.read(65536), 5)
    writer.close()
    return out


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


async def test_official_client_through_the_server_proxy(proxied: tuple[FakeOllama, str, str]) -> None:
    _f, _, proxy = proxied
    client = ollama.AsyncClient(host=proxy)
    models = (await client.list()).models
    assert models
    parts = [c.response async for c in await client.generate(model=models[0].model, prompt="x", stream=True)]
    assert len(parts) > 1
    with pytest.raises(ollama.ResponseError) as info:
        await client.show("missing:latest")
    assert info.value.status_code == 404


async def test_host_rewritten_hop_by_hop_dropped_rest_passes(proxied: tuple[FakeOllama, str, str]) -> None:
    f, base, proxy = proxied
    headers = {
        "Host": "box.lan:11435",  # Ollama on loopback answers 403 to this Host
        "User-Agent": "ollama-python/0.6.3 (x86_64 linux) Python/3.11",
        "Authorization": "Bearer secret",
        "Connection": "keep-alive, X-Hop",
        "X-Hop": "must-not-pass",
        "X-Custom": "kept",
    }
    async with aiohttp.ClientSession() as s, s.get(proxy + "/api/tags", headers=headers) as r:
        assert r.status == 200
        assert "ollana" in r.headers.get("Via", "")
        await r.read()
    rec = from_apps(f)[-1]
    assert rec.header("Host") == base.split("://")[1]
    assert rec.header("User-Agent") == headers["User-Agent"]
    assert rec.header("Authorization") == "Bearer secret"
    assert rec.header("X-Custom") == "kept"
    assert rec.header("X-Hop") is None


async def test_compressed_body_passes_byte_exact(proxied: tuple[FakeOllama, str, str]) -> None:
    f, _, proxy = proxied
    body = gzip.compress(json.dumps({"model": "llama3.2:1b"}).encode())
    async with (
        aiohttp.ClientSession(auto_decompress=False) as s,
        s.post(proxy + "/api/show", data=body, headers={"Content-Encoding": "gzip"}) as r,
    ):
        await r.read()
    rec = from_apps(f)[-1]
    assert rec.header("Content-Encoding") == "gzip"
    assert rec.body_sha256 == hashlib.sha256(body).hexdigest() and rec.body_size == len(body)


async def test_streams_chunk_by_chunk_even_split_mid_line(proxied: tuple[FakeOllama, str, str]) -> None:
    f, _base, proxy = proxied
    f.configure(chunk_delay=0.05, tokens=6, split_chunks=True)
    arrivals: list[float] = []
    data = b""
    async with aiohttp.ClientSession() as s:
        t0 = time.perf_counter()
        async with s.post(proxy + "/api/generate", json={"model": "llama3.2:1b", "prompt": "hi"}) as r:
            assert r.headers["Content-Type"].startswith("application/x-ndjson")
            assert "Content-Length" not in r.headers
            async for chunk in r.content.iter_any():
                arrivals.append(time.perf_counter() - t0)
                data += chunk
    lines = [json.loads(line) for line in data.splitlines()]
    assert len(lines) == 7 and lines[-1]["done"] is True
    # Not buffered: the first bytes came long before the last.
    assert arrivals[0] < arrivals[-1] - 0.15


async def test_sequential_requests_reuse_upstream_connections(proxied: tuple[FakeOllama, str, str]) -> None:
    f, _, proxy = proxied
    async with aiohttp.ClientSession() as s:
        for _ in range(30):
            async with s.get(proxy + "/api/version") as r:
                await r.read()
        for _ in range(10):
            async with s.post(proxy + "/api/chat", json={"model": "llama3.2:1b", "messages": [{"role": "user", "content": "x"}]}) as r:
                await r.read()
    # Pooled connections are shared by everything the server asks its Ollama: at most one each
    # for these requests, its health check and its catalogue refresh, never one per request.
    assert len({r.connection for r in from_apps(f)}) <= 3


async def test_head_delete_with_body_and_unknown_path(proxied: tuple[FakeOllama, str, str]) -> None:
    f, _, proxy = proxied
    async with aiohttp.ClientSession() as s:
        async with s.head(proxy + "/") as r:
            assert r.status == 200
        async with s.delete(proxy + "/api/delete", json={"model": "llama3.2:1b"}) as r:
            assert r.status == 200 and await r.read() == b""
        async with s.delete(proxy + "/api/delete", json={"model": "llama3.2:1b"}) as r:
            assert r.status == 404 and "not found" in (await r.json())["error"]
        async with s.get(proxy + "/no/such/path?x=1") as r:
            assert r.status == 404 and await r.text() == "404 page not found"
    assert from_apps(f)[-1].query_string == "x=1"


async def test_large_chunked_upload_streams(proxied: tuple[FakeOllama, str, str]) -> None:
    f, _, proxy = proxied
    block = bytes(range(256)) * 4096  # 1 MiB
    digest = hashlib.sha256(block * 24).hexdigest()

    async def body() -> AsyncIterator[bytes]:
        for _ in range(24):
            yield block

    async with aiohttp.ClientSession() as s:
        async with s.post(proxy + f"/api/blobs/sha256:{digest}", data=body()) as r:
            assert r.status == 201
        # Expect: 100-continue is honoured (curl sends it for large uploads).
        async with s.post(proxy + f"/api/blobs/sha256:{'0' * 64}", data=b"abc", expect100=True) as r:
            assert r.status == 400
    assert from_apps(f)[-2].body_size == 24 * len(block)


async def test_client_disconnect_aborts_the_upstream_request(proxied: tuple[FakeOllama, str, str]) -> None:
    f, _, proxy = proxied
    f.configure(first_byte_delay=30)  # a model that takes long to load
    async with aiohttp.ClientSession() as s:
        task = asyncio.create_task(s.post(proxy + "/api/generate", json={"model": "llama3.2:1b", "prompt": "x"}))
        await f.wait_for(lambda rs: any(r.path == "/api/generate" for r in rs))
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    rec = await f.wait_for_disconnect(timeout=5)
    assert rec.path == "/api/generate"


async def test_upstream_dying_mid_stream_is_never_silent(proxied: tuple[FakeOllama, str, str]) -> None:
    f, base, proxy = proxied
    f.configure(die_after=2, tokens=6)
    client = ollama.AsyncClient(host=proxy)
    with pytest.raises(ollama.ResponseError) as info:
        async for _ in await client.generate(model="llama3.2:1b", prompt="x", stream=True):
            pass
    # What happened, in words; aiohttp's own text ("TransferEncodingError...") stays in the log.
    assert info.value.error == f"ollana: the Ollama at {base} went away mid-stream"


async def test_error_line_after_first_chunk_passes_through(proxied: tuple[FakeOllama, str, str]) -> None:
    f, _, proxy = proxied
    f.configure(error_after=2)
    client = ollama.AsyncClient(host=proxy)
    with pytest.raises(ollama.ResponseError) as info:
        async for _ in await client.chat(model="llama3.2:1b", messages=[{"role": "user", "content": "x"}], stream=True):
            pass
    assert "unexpected EOF" in str(info.value)


async def test_open_relay_refused(proxied: tuple[FakeOllama, str, str]) -> None:
    f, _, proxy = proxied
    port = port_of(proxy)
    before = len(from_apps(f))
    absolute = await raw(port, b"GET http://example.com/api/tags HTTP/1.1\r\nHost: example.com\r\n\r\n")
    assert absolute.startswith(b"HTTP/1.1 400") and b'"error"' in absolute
    connect = await raw(port, b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n")
    assert connect.startswith(b"HTTP/1.1 405") and b'"error"' in connect
    assert len(from_apps(f)) == before


async def test_upstream_down_gives_json_error_fast() -> None:
    # A port with nothing listening: grab one and close it.
    probe = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = probe.sockets[0].getsockname()[1]
    probe.close()
    await probe.wait_closed()
    async with server_for(f"http://127.0.0.1:{port}") as proxy, aiohttp.ClientSession() as s:
        t0 = time.perf_counter()
        async with s.post(proxy + "/api/generate", json={}) as r:
            body = await r.json()
            assert r.status in (502, 503)
            assert f"127.0.0.1:{port}" in body["error"]
        async with s.post(proxy + "/v1/chat/completions", json={}) as r:
            body = await r.json()
            assert r.status in (502, 503) and "message" in body["error"]  # OpenAI's shape on /v1
        assert time.perf_counter() - t0 < 2
        async with s.get(proxy + "/ollana/v1/status") as r:
            st = await r.json()
            assert st["role"] == "server" and st["upstream"]["healthy"] is False


async def test_role_detection_never_takes_an_ollana_for_an_ollama(proxied: tuple[FakeOllama, str, str]) -> None:
    _, base, proxy = proxied
    async with aiohttp.ClientSession() as s:
        assert await local_ollama_version(s, base, 1.0) == "0.33.0"
        assert await local_ollama_version(s, proxy, 1.0) is None


async def test_status_and_unknown_own_endpoint(proxied: tuple[FakeOllama, str, str]) -> None:
    _, _base, proxy = proxied
    async with aiohttp.ClientSession() as s:
        async with s.get(proxy + "/ollana/v1/status") as r:
            st = await r.json()
        assert st["role"] == "server" and st["upstream"]["healthy"] is True
        assert st["upstream"]["version"] == "0.33.0" and st["uptime_s"] >= 0
        async with s.get(proxy + "/ollana/v1/nope") as r:
            assert r.status == 404 and "error" in await r.json()


async def test_server_mode_starts_before_ollama_and_picks_it_up() -> None:
    probe = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = probe.sockets[0].getsockname()[1]
    probe.close()
    await probe.wait_closed()
    async with server_for(f"http://127.0.0.1:{port}") as proxy, aiohttp.ClientSession() as s:
        async with s.get(proxy + "/api/tags") as r:
            assert r.status == 503  # boot order: Ollama is not up yet
        fake = FakeOllama()
        async with fake.serve("127.0.0.1", port):
            deadline = time.monotonic() + 3
            while True:  # the health check runs every heartbeat interval (0.2 s here)
                async with s.get(proxy + "/ollana/v1/status") as r:
                    if (await r.json())["upstream"]["healthy"]:
                        break
                assert time.monotonic() < deadline, "the server never noticed Ollama"
                await asyncio.sleep(0.05)
            async with s.get(proxy + "/api/tags") as r:
                assert r.status == 200


async def test_a_peer_that_never_completes_tls_does_not_hang_a_request() -> None:
    import ssl

    from aiohttp.test_utils import make_mocked_request

    from ollana.errors import UpstreamUnavailable
    from ollana.proxy.forward import BodySource, Target, open_upstream
    from ollana.runtime import upstream_timeout

    silent = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)  # accepts, says nothing
    port = silent.sockets[0].getsockname()[1]
    ctx = ssl.create_default_context()
    target = Target("silent", f"https://127.0.0.1:{port}", f"127.0.0.1:{port}", tls=ctx)
    request = make_mocked_request("GET", "/api/tags")
    body = BodySource(request, 0)
    await body.prepare()
    try:
        async with aiohttp.ClientSession() as s:
            t0 = time.perf_counter()
            with pytest.raises(UpstreamUnavailable):
                await open_upstream(s, request, target, body, timeout=upstream_timeout(0.5))
            assert time.perf_counter() - t0 < 3
    finally:
        silent.close()
