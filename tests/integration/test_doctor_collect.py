"""`ollana doctor`'s collection on loopback: who holds a port (nothing, an Ollama, an ollana client,
a TLS server asked with its own key or not), and the local Ollama."""

from __future__ import annotations

import asyncio
from pathlib import Path

from ollana.config import Endpoint, Mode, Trust
from ollana.doctor.collect import identify, ollama_fact
from ollana.doctor.facts import Holder
from ollana.trust import identity
from tests.fakeollama import FakeOllama
from tests.integration.nodes import config, running, server_for


def endpoint(url: str) -> Endpoint:
    host, _, port = url.split("://", 1)[1].rpartition(":")
    return Endpoint(host, int(port))


async def test_who_holds_a_port(tmp_path: Path) -> None:
    async with FakeOllama().serve("127.0.0.1", 0) as base:
        fact, status = await asyncio.to_thread(identify, endpoint(base), None)
        assert fact.holder is Holder.OLLAMA and fact.detail.startswith("Ollama ") and status is None
        got = await asyncio.to_thread(ollama_fact, base, None)
        assert got.version is not None and got.error is None

        async with running(config(Mode.CLIENT, static_peers=(endpoint(base),))) as r:
            fact, status = await asyncio.to_thread(identify, r.listen, None)
            assert fact.holder is Holder.OLLANA and fact.role == "client" and status is not None
            got = await asyncio.to_thread(ollama_fact, f"http://{r.listen}", None)
            assert got.version is None and got.error == "an ollana answers there, not an Ollama"

        sdir = tmp_path / "server"
        async with server_for(base, trust=Trust.DEVICES, state_dir=sdir) as srv:
            stranger = identity.load_or_create(tmp_path / "other", "other")
            fact, status = await asyncio.to_thread(identify, endpoint(srv), stranger)
            assert fact.holder is Holder.OLLANA and status is None and "another state dir" in fact.detail
            fact, status = await asyncio.to_thread(identify, endpoint(srv), identity.load(sdir))
            assert fact.holder is Holder.OLLANA and fact.role == "server"
            assert status is not None and status["trust"] == "devices"

    fact, status = await asyncio.to_thread(identify, endpoint(base), None)  # closed now
    assert fact.holder is Holder.FREE and status is None


async def test_something_else_on_the_port() -> None:
    async def ssh_like(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"SSH-2.0-OpenSSH_9.6\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(ssh_like, "127.0.0.1", 0)
    async with server:
        port = server.sockets[0].getsockname()[1]
        fact, status = await asyncio.to_thread(identify, Endpoint("127.0.0.1", port), None)
    assert fact.holder is Holder.OTHER and status is None, fact
