"""/ollana/v1/metrics, /ollana/v1/dashboard and the status page's files, scraped from real nodes
on loopback after real requests (the official client through a client node and a server node)."""

from __future__ import annotations

import asyncio
import json
import ssl
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import ollama
import pytest
from prometheus_client.parser import text_string_to_metric_families

from ollana.config import Trust
from ollana.trust import identity
from ollana.trust.store import TrustStore
from ollana.trust.tls import HELLO_PATH, client_context, encode_hello
from tests.fakeollama import FakeOllama
from tests.integration.nodes import client_for, server_for

MODEL = "llama3.2:1b"
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sum over the samples of ``name`` whose labels include ``labels``."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= ls)


def labels_of(samples: Samples, name: str, **labels: str) -> list[dict[str, str]]:
    want = set(labels.items())
    return [dict(ls) for (n, ls), _ in samples.items() if n == name and want <= ls]


async def fetch(url: str, tls: ssl.SSLContext | bool = True, **headers: str) -> tuple[int, dict[str, str], bytes]:
    async with aiohttp.ClientSession() as s, s.get(url, ssl=tls, headers=headers) as r:
        return r.status, dict(r.headers), await r.read()


async def scrape(url: str, tls: ssl.SSLContext | bool = True) -> Samples:
    status, headers, body = await fetch(url + "/ollana/v1/metrics", tls)
    assert status == 200, body
    assert headers["Content-Type"].startswith("text/plain"), headers
    return parse(body.decode())


async def catalogued(client_url: str, servers: int = 1, timeout: float = 10.0) -> None:
    """Wait until the client holds every server's catalogue (fetched after its first health
    check; on a busy machine that may take more than one try), so models are known by name."""
    deadline = time.monotonic() + timeout
    while True:
        status, _, body = await fetch(client_url + "/ollana/v1/status")
        peers = json.loads(body)["peers"] if status == 200 else []
        if len(peers) == servers and all(p.get("catalog") is not None for p in peers):
            return
        assert time.monotonic() < deadline, f"catalogues not fetched: {peers}"
        await asyncio.sleep(0.05)


@pytest.fixture
async def fake() -> AsyncIterator[tuple[FakeOllama, str]]:
    f = FakeOllama()
    async with f.serve("127.0.0.1", 0) as base:
        yield f, base


async def test_metrics_count_requests_through_client_and_server(fake: tuple[FakeOllama, str]) -> None:
    _, base = fake
    async with server_for(base) as srv, client_for(srv) as cli:
        await catalogued(cli)
        app = ollama.AsyncClient(host=cli)
        listed = await app.list()  # fetches the server's catalogue: the model is known by name
        assert MODEL in [m.model for m in listed.models]
        for _ in range(3):
            await app.generate(model=MODEL, prompt="a prompt that must never be logged")
        with pytest.raises(ollama.ResponseError):
            await app.generate(model="no-such-model-anywhere:7b", prompt="x")
        await app.generate(model=MODEL, prompt="y", stream=False)

        c = await scrape(cli)
        ok = labels_of(c, "ollana_requests_total", role="client", route="/api/generate", status="200")
        assert len(ok) == 1 and ok[0]["model"] == MODEL, ok
        assert value(c, "ollana_requests_total", role="client", route="/api/generate", status="200") == 4
        server_label = ok[0]["server"]
        assert server_label not in ("none", "other") and "(" in server_label, server_label  # "host (id)"
        # A model no catalogue lists is "other", whatever the app sent.
        assert value(c, "ollana_requests_total", role="client", status="404", model="other") == 1
        assert value(c, "ollana_requests_total", role="client", route="/api/tags", status="200") == 1
        assert value(c, "ollana_request_first_byte_seconds_count", role="client", route="/api/generate") == 5
        assert value(c, "ollana_request_duration_seconds_count", role="client", route="/api/generate",
                     model=MODEL) == 4
        assert value(c, "ollana_response_body_bytes_total", role="client", route="/api/generate") > 0
        assert value(c, "ollana_requests_in_flight", role="client") == 1  # this scrape
        assert value(c, "ollana_routing_decisions_total") == 5
        assert value(c, "ollana_peers", state="healthy", source="static") == 1
        assert value(c, "ollana_node_info", role="client", trust="open") == 1

        s = await scrape(srv)
        assert value(s, "ollana_requests_total", role="server", route="/api/generate", status="200",
                     model=MODEL, server="ollama") == 4
        assert value(s, "ollana_requests_total", role="server", route="/api/generate", status="404") == 1
        assert value(s, "ollana_upstream_up", role="server") == 1
        # Label values come from fixed sets or bounded ones: no raw path, no model outside a catalogue.
        routes = {ls["route"] for ls in labels_of(c, "ollana_requests_total") + labels_of(s, "ollana_requests_total")}
        assert routes <= {"/api/generate", "/api/tags", "/ollana/v1/status", "/ollana/v1/catalog",
                          "/ollana/v1/metrics", "/api/version"}, routes


async def test_unknown_paths_and_models_stay_bounded(fake: tuple[FakeOllama, str]) -> None:
    _, base = fake
    async with server_for(base) as srv:
        async with aiohttp.ClientSession() as s:
            for i in range(20):
                async with s.post(f"{srv}/api/generate/{i}", json={"model": f"invented-{i}"}) as r:
                    await r.read()
                async with s.post(f"{srv}/api/chat", json={"model": f"invented-{i}", "messages": []}) as r:
                    await r.read()
        m = await scrape(srv)
        labels = labels_of(m, "ollana_requests_total", role="server")
        assert {ls["route"] for ls in labels} <= {"other", "/api/chat", "/ollana/v1/metrics"}, labels
        assert {ls["model"] for ls in labels} <= {"other", "none"}, labels
        assert value(m, "ollana_requests_total", role="server", route="other") == 20


async def test_client_listener_serves_the_page_and_its_document(fake: tuple[FakeOllama, str]) -> None:
    _, base = fake
    async with server_for(base) as srv, client_for(srv) as cli:
        await catalogued(cli)
        await ollama.AsyncClient(host=cli).generate(model=MODEL, prompt="secret-marker-prompt")
        status, headers, body = await fetch(cli + "/ollana/")
        assert status == 200 and headers["Content-Type"].startswith("text/html"), headers
        csp = headers["Content-Security-Policy"]
        assert "script-src 'self'" in csp and "'unsafe-inline'" not in csp and "default-src 'none'" in csp
        assert headers["X-Content-Type-Options"] == "nosniff"
        assert b"<script" in body and b'src="/ollana/static/app.js"' in body
        for asset, kind in (("app.js", "text/javascript"), ("style.css", "text/css")):
            status, headers, body = await fetch(f"{cli}/ollana/static/{asset}")
            assert status == 200 and headers["Content-Type"].startswith(kind) and body, asset
        status, headers, body = await fetch(cli + "/ollana/v1/dashboard")
        assert status == 200 and headers["Cache-Control"] == "no-store", headers
        doc: dict[str, Any] = json.loads(body)
        [server] = doc["servers"]
        assert MODEL in server["models"] and server["healthy"] and server["trust"] == "open", server
        assert server["address"] == srv.split("://", 1)[1]
        recent = doc["recent"][0]
        assert (recent["method"], recent["path"], recent["model"], recent["status"]) == (
            "POST", "/api/generate", MODEL, 200)
        assert b"secret-marker-prompt" not in body  # never a body
        assert doc["pending"] == []
        # The loopback Host rule (DNS rebinding) covers the page too.
        status, _, _ = await fetch(cli + "/ollana/", Host="attacker.example")
        assert status == 403


async def test_server_port_serves_metrics_and_page_only_to_paired_devices(
    fake: tuple[FakeOllama, str], tmp_path: Path
) -> None:
    _, base = fake
    sdir = tmp_path / "server"
    async with server_for(base, trust=Trust.DEVICES, state_dir=sdir) as srv:
        server = identity.load(sdir)
        device = identity.load_or_create(tmp_path / "device", "scraper")
        anonymous = client_context(device, server.cert_pem, present_cert=False)
        for path in ("/ollana/v1/metrics", "/ollana/", "/ollana/v1/dashboard"):
            status, _, body = await fetch(srv + path, anonymous)
            assert status == 403 and b"paired devices" in body, (path, body)
        async with aiohttp.ClientSession() as s, s.post(
            srv + HELLO_PATH, data=encode_hello(device, "scraper"), ssl=anonymous
        ) as r:
            assert r.status == 202
        # Pending, not allowed: its handshake passes (once the anchors are rebuilt), the gate refuses.
        with_cert = client_context(device, server.cert_pem)
        deadline = time.monotonic() + 5
        while True:
            try:
                status, _, body = await fetch(srv + "/ollana/v1/metrics", with_cert)
                break
            except aiohttp.ClientError:
                assert time.monotonic() < deadline, "the pending device's handshake never passed"
                await asyncio.sleep(0.05)
        assert status == 403 and device.short.encode() in body, body
        # The page lists it as pending, with the command that allows it (seen by the node itself).
        status, _, body = await fetch(srv + "/ollana/v1/dashboard", client_context(server, server.cert_pem))
        doc = json.loads(body)
        assert status == 200 and doc["pending"][0]["command"] == f"ollana device allow {device.short}", doc
        TrustStore.load(sdir).allow(device.short, now=time.time())
        deadline = time.monotonic() + 5
        while (status := (await fetch(srv + "/ollana/v1/metrics", with_cert))[0]) != 200:
            assert time.monotonic() < deadline, status
            await asyncio.sleep(0.05)
        m = await scrape(srv, with_cert)
        assert value(m, "ollana_trust_refusals_total", reason="no_device_certificate") == 3
        assert value(m, "ollana_trust_refusals_total", reason="device_not_allowed") >= 1
        assert value(m, "ollana_node_info", role="server", trust="devices") == 1
