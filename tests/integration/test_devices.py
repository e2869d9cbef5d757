"""Trust mode devices with in-process nodes on loopback (a static --peer, no discovery).

The LAN versions of these (discovery, the official client, impostors) are in tests/lab/test_trust.py.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from structlog.testing import capture_logs

from ollana.config import Trust
from ollana.trust import identity
from ollana.trust.document import PeerKind
from ollana.trust.store import TrustStore
from ollana.trust.tls import HELLO_PATH, client_context, encode_hello
from tests.fakeollama import FakeOllama
from tests.integration.nodes import client_for, from_apps, server_for

TIMEOUT = 10.0


def forwarded(fake: FakeOllama) -> list[str]:
    return [r.path for r in from_apps(fake)]


async def until(what: str, check: Callable[[], Any], timeout: float = TIMEOUT) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


def pending(state: Path, kind: PeerKind) -> list[str]:
    return [p.device_id for p in TrustStore.load(state).pending() if p.kind is kind]


def allow(state: Path, device_id: str) -> None:
    TrustStore.load(state).allow(device_id[:7], now=time.time())


@pytest.fixture
async def fake() -> AsyncIterator[tuple[FakeOllama, str]]:
    f = FakeOllama()
    async with f.serve("127.0.0.1", 0) as base:
        yield f, base


async def get(url: str, tls: ssl.SSLContext | bool = True) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as s, s.get(url, ssl=tls) as r:
        return r.status, await r.json(content_type=None)


async def test_pairing_then_use_then_disable_cuts_an_open_stream(
    fake: tuple[FakeOllama, str], tmp_path: Path
) -> None:
    f, base = fake
    sdir, cdir = tmp_path / "server", tmp_path / "client"
    async with server_for(base, trust=Trust.DEVICES, state_dir=sdir) as srv:
        assert srv.startswith("https://")
        server_id = identity.load(sdir).device_id
        async with client_for(srv, trust=Trust.DEVICES, state_dir=cdir) as cli:
            client_id = identity.load(cdir).device_id
            # The client learned the server's certificate and introduced itself: each side lists
            # the other as pending, and nothing went to Ollama.
            await until("server pending on the client", lambda: server_id in pending(cdir, PeerKind.SERVER))
            await until("client pending on the server", lambda: client_id in pending(sdir, PeerKind.CLIENT))
            status, body = await get(cli + "/api/version")
            assert status == 503 and "none is paired" in body["error"], body
            assert server_id[:7] in body["error"]
            assert forwarded(f) == []

            # Allowed on the client only: the server refuses it, naming its ID and the command.
            allow(cdir, server_id)
            status, body = await _until_status(cli + "/api/version", 403)
            assert f"ollana device allow {client_id[:7]}" in body["error"], body
            assert forwarded(f) == []

            # Allowed on both sides: it works within 2 s.
            allowed_at = time.monotonic()
            allow(sdir, client_id)
            await _until_status(cli + "/api/version", 200)
            print(f"allowed to usable: {time.monotonic() - allowed_at:.3f} s")
            assert time.monotonic() - allowed_at < 5.0  # (issue: 2 s; the poll is 0.5 s)
            assert forwarded(f) == ["/api/version"]
            listed = {d.device_id: d for d in TrustStore.load(sdir).allowed()}
            assert listed[client_id].enabled

            # An open stream is cut within 2 s of `disable` on the server.
            f.configure(chunk_delay=0.05, tokens=400)
            body = {"model": "llama3.2:1b", "prompt": "x"}
            async with aiohttp.ClientSession() as s, s.post(cli + "/api/generate", json=body) as r:
                assert r.status == 200
                await r.content.readline()
                disabled_at = time.monotonic()
                TrustStore.load(sdir).disable(client_id[:7])
                lines = 1
                with pytest.raises(aiohttp.ClientError):
                    async with asyncio.timeout(5):
                        while line := await r.content.readline():
                            lines += 1
                            if b'"error"' in line:  # how the client proxy ends a broken NDJSON stream
                                raise aiohttp.ClientPayloadError(line.decode())
                cut_after = time.monotonic() - disabled_at
            print(f"disable to stream cut: {cut_after:.3f} s")
            assert cut_after < 5.0, cut_after  # (issue: 2 s; the poll is 0.5 s)
            assert lines < 100
            status, body = await _until_status(cli + "/api/tags", 403)
            assert client_id[:7] in body["error"]


async def _until_status(url: str, want: int) -> tuple[int, Any]:
    got: tuple[int, Any] = (0, None)

    async def once() -> bool:
        nonlocal got
        got = await get(url)
        return got[0] == want

    deadline = time.monotonic() + TIMEOUT
    while not await once():
        assert time.monotonic() < deadline, f"{url}: wanted {want}, last {got}"
        await asyncio.sleep(0.05)
    return got


async def test_unknown_clients_never_reach_ollama(fake: tuple[FakeOllama, str], tmp_path: Path) -> None:
    f, base = fake
    stranger = identity.load_or_create(tmp_path / "stranger", "stranger")
    async with server_for(base, trust=Trust.DEVICES, state_dir=tmp_path / "server") as srv:
        server = identity.load(tmp_path / "server")
        pinned_anon = client_context(stranger, server.cert_pem, present_cert=False)
        # No certificate: only the hello is served.
        for path in ("/api/tags", "/ollana/v1/status", "/api/generate"):
            status, body = await get(srv + path, pinned_anon)
            assert status == 403 and "paired devices" in body["error"], body
        # A certificate the server does not know: refused in the handshake.
        with pytest.raises(aiohttp.ClientError):
            await get(srv + "/api/tags", client_context(stranger, server.cert_pem))
        # The hello makes it pending; then its handshake passes and it gets a 403 naming its ID.
        hello = encode_hello(stranger, "stranger")
        async with aiohttp.ClientSession() as s:
            async with s.post(srv + HELLO_PATH, data=hello, ssl=pinned_anon) as r:
                assert r.status == 202 and (await r.json())["device_id"] == stranger.device_id
            async with s.post(srv + HELLO_PATH, data=b"{not json", ssl=pinned_anon) as r:
                assert r.status == 400
            async with s.post(srv + HELLO_PATH, data=b"x" * 20000, ssl=pinned_anon) as r:
                assert r.status in (400, 413)
            async with s.get(srv + HELLO_PATH, ssl=pinned_anon) as r:
                assert r.status == 405
        assert [p.hostname for p in TrustStore.load(tmp_path / "server").pending()] == ["stranger"]

        async def refused_with_id() -> bool:
            try:
                status, body = await get(srv + "/api/tags", client_context(stranger, server.cert_pem))
            except aiohttp.ClientError:
                return False
            return status == 403 and f"ollana device allow {stranger.short}" in body["error"]

        deadline = time.monotonic() + TIMEOUT
        while not await refused_with_id():
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        # The node itself (its own key, as `ollana status` uses) is let in.
        status, body = await get(srv + "/ollana/v1/status", client_context(server, server.cert_pem))
        assert status == 200 and body["trust"] == "devices" and body["device_id"] == server.device_id
    assert forwarded(f) == []


async def test_a_client_never_uses_a_server_in_the_other_mode(
    fake: tuple[FakeOllama, str], tmp_path: Path
) -> None:
    f, base = fake
    with capture_logs() as logs:
        async with (
            server_for(base, state_dir=tmp_path / "open-server") as open_srv,
            client_for(open_srv, trust=Trust.DEVICES, state_dir=tmp_path / "c1") as cli,
        ):
            status, body = await get(cli + "/api/tags")
            assert status == 503, body
        async with (
            server_for(base, trust=Trust.DEVICES, state_dir=tmp_path / "tls-server") as tls_srv,
            client_for(tls_srv, state_dir=tmp_path / "c2") as cli,
        ):
            status, body = await get(cli + "/api/tags")
            assert status in (502, 503), body
    assert forwarded(f) == []
    said = {e["event"]: e for e in logs if e["log_level"] == "warning"}
    assert "--trust devices" in said["server_unreachable"]["hint"]
    assert said["server_ignored"]["client_trust"] == "open" and "--trust open" in said["server_ignored"]["reason"]



async def test_a_peer_in_trust_open_is_named_in_the_503_without_suggesting_peer(
    fake: tuple[FakeOllama, str], tmp_path: Path
) -> None:
    # The client (trust mode devices, --peer, no discovery) names a server that runs --trust open:
    # the 503 says which server and why, and suggests neither --peer nor waiting for discovery.
    f, base = fake
    async with server_for(base) as plain, client_for(plain, trust=Trust.DEVICES, state_dir=tmp_path) as cli:
        status, body = await get(cli + "/api/version")
    port = plain.rsplit(":", 1)[1]
    assert status == 503, body
    assert body["error"] == (
        f"ollana: no usable Ollama server found; known server: 127.0.0.1:{port} [--peer]: its certificate "
        "could not be read: it is unreachable, or it runs --trust open (plain HTTP), which this client "
        "(trust mode devices) never uses"
    )
    assert forwarded(f) == []
