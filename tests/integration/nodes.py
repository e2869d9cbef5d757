"""Run ollana nodes in-process on loopback, with discovery off (no multicast leaves the test)."""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path

from ollana import app
from ollana.config import Config, Endpoint, Mode, Timings, Trust
from ollana.runtime import Ready
from tests.fakeollama import FakeOllama, RequestRecord

FAST = Timings(heartbeat_interval=0.2, detect_timeout=0.5, connect_timeout=1.0, no_peer_grace=0.3,
               health_timeout=0.5, grace=2.0)


def config(mode: Mode, **kw: object) -> Config:
    base = Config(
        mode=mode,
        listen=Endpoint("127.0.0.1", 0),
        discovery=False,
        state_dir=Path(tempfile.mkdtemp(prefix="ollana-test-")),
        timings=FAST,
        # The proxy tests are about forwarding; trust mode devices has its own (test_devices.py).
        trust=Trust.OPEN,
    )
    return replace(base, **kw)  # type: ignore[arg-type]


@asynccontextmanager
async def running(cfg: Config) -> AsyncIterator[Ready]:
    """Start a node and yield once it serves; stop it (gracefully) on exit."""
    shutdown = asyncio.Event()
    ready: asyncio.Future[Ready] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(app.run(cfg, shutdown, ready.set_result))
    done, _ = await asyncio.wait({task, ready}, timeout=10, return_when=asyncio.FIRST_COMPLETED)
    if task in done:
        task.result()  # raises the startup error
    if not done:
        task.cancel()
        raise TimeoutError("node did not become ready")
    try:
        yield ready.result()
    finally:
        shutdown.set()
        await asyncio.wait_for(task, 15)


def url(ready: Ready) -> str:
    return f"{ready.scheme}://{ready.listen}"


@asynccontextmanager
async def server_for(ollama_url: str, **kw: object) -> AsyncIterator[str]:
    async with running(config(Mode.SERVER, ollama_url=ollama_url, **kw)) as r:
        yield url(r)


@asynccontextmanager
async def client_for(*servers: str, **kw: object) -> AsyncIterator[str]:
    peers = tuple(Endpoint("127.0.0.1", int(s.rsplit(":", 1)[1])) for s in servers)
    async with running(config(Mode.CLIENT, static_peers=peers, **kw)) as r:
        yield url(r)


def from_apps(fake: FakeOllama) -> list[RequestRecord]:
    """What reached a fake Ollama from apps, leaving out the server's own requests (health
    checks and catalogue refreshes, which say ``User-Agent: ollana/...``)."""
    return [r for r in fake.requests if not (r.header("User-Agent") or "").startswith("ollana/")]
