"""Role both: a machine with Ollama on another port shares it and uses the whole fleet."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack

import aiohttp
import ollama
import pytest

from ollana.config import Endpoint, Mode
from tests.fakeollama import FakeOllama
from tests.integration.nodes import config, from_apps, running, server_for, url


@pytest.fixture
async def fleet() -> AsyncIterator[tuple[FakeOllama, FakeOllama, str]]:
    """A remote server (with "remote-model") and a both-node (with "local-model"); yields the
    two fakes and the both-node's client address."""
    async with AsyncExitStack() as stack:
        remote_fake = FakeOllama(models=["remote-model:1b"])
        local_fake = FakeOllama(models=["local-model:1b"])
        remote_base = await stack.enter_async_context(remote_fake.serve("127.0.0.1", 0))
        local_base = await stack.enter_async_context(local_fake.serve("127.0.0.1", 0))
        remote = await stack.enter_async_context(server_for(remote_base))
        port = int(remote.rsplit(":", 1)[1])
        both = await stack.enter_async_context(running(config(
            Mode.BOTH, ollama_url=local_base, lan_listen=Endpoint("127.0.0.1", 0),
            static_peers=(Endpoint("127.0.0.1", port),),
        )))
        assert both.role.value == "both"
        yield local_fake, remote_fake, url(both)


async def test_apps_see_both_machines_and_local_models_stay_local(fleet: tuple[FakeOllama, FakeOllama, str]) -> None:
    local_fake, remote_fake, client_url = fleet
    client = ollama.AsyncClient(host=client_url)
    names = {m.model for m in (await client.list()).models}
    assert names == {"local-model:1b", "remote-model:1b"}
    for _ in range(3):
        assert (await client.generate(model="local-model:1b", prompt="x")).response
        assert (await client.generate(model="remote-model:1b", prompt="x")).response
    assert [r.path for r in from_apps(local_fake) if r.path == "/api/generate"] == ["/api/generate"] * 3
    assert [r.path for r in from_apps(remote_fake) if r.path == "/api/generate"] == ["/api/generate"] * 3
    async with aiohttp.ClientSession() as s:
        async with s.post(client_url + "/api/show", json={"model": "local-model:1b"}) as r:
            assert r.status == 200
            local_mark = r.headers.get("X-Ollana-Server", "")
        async with s.post(client_url + "/api/show", json={"model": "remote-model:1b"}) as r:
            assert r.status == 200
            remote_mark = r.headers.get("X-Ollana-Server", "")
        async with s.get(client_url + "/ollana/v1/status") as r:
            status = await r.json()
    assert local_mark and remote_mark and local_mark != remote_mark
    assert status["role"] == "both"
    local_peer = next(p for p in status["peers"] if p["source"] == "local")
    assert local_peer["rtt_ms"] == 0.0 and "local-model:1b" in local_peer["models"]


async def test_the_local_ollama_counts_as_busy_for_other_clients(fleet: tuple[FakeOllama, FakeOllama, str]) -> None:
    """The server side's catalogue counts the local apps' requests, so LAN clients see the load."""
    local_fake, _, client_url = fleet
    local_fake.configure(hold=True)
    async with aiohttp.ClientSession() as s:
        body = {"model": "local-model:1b", "prompt": "x", "stream": False}
        task = asyncio.create_task(s.post(client_url + "/api/generate", json=body))
        await local_fake.wait_for_running(running=1)
        # The both-node's own status shows the request in flight on its local server.
        async with s.get(client_url + "/ollana/v1/status") as r:
            status = await r.json()
        local_peer = next(p for p in status["peers"] if p["source"] == "local")
        assert local_peer["own_inflight"] == 1
        local_fake.configure(hold=False)
        resp = await task
        assert resp.status == 200
        resp.release()
