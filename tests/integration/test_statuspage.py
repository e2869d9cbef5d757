"""The status page in a real browser: headless Chromium loads /ollana/ from a client node on
loopback (two server nodes behind it, --peer, no discovery) and the rendered DOM names the servers
and their models. Chromium is installed with apt-get when the tests run as root and it is absent
(as tests/run.sh installs the lab's packages); it reaches only 127.0.0.1.

With OLLANA_STATUS_SCREENSHOT=path the screenshot is also written there (docs/status-page.png is
made so: ``OLLANA_STATUS_SCREENSHOT=docs/status-page.png .venv/bin/python -m pytest
tests/integration/test_statuspage.py``).
"""

from __future__ import annotations

import asyncio
import html
import os
import re
import shutil
import subprocess
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path

import aiohttp
import ollama
import pytest

from ollana.config import Trust
from ollana.runtime import Node
from ollana.trust import identity
from ollana.trust.document import PeerKind
from ollana.trust.store import TrustStore
from tests.fakeollama import FakeOllama
from tests.integration.nodes import client_for, server_for
from tests.integration.test_devices import until
from tests.integration.test_metrics import catalogued

BROWSER_TIMEOUT = 90.0  # a cold Chromium on a busy 2-core machine; it usually takes 1-3 s


def chromium() -> str | None:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None and os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], check=False, env=env, capture_output=True)
        subprocess.run(["apt-get", "install", "-y", "-qq", "chromium"], check=False, env=env, capture_output=True)
        found = shutil.which("chromium")
    return found


@pytest.fixture(scope="module")
def browser() -> str:
    path = chromium()
    if path is None:
        pytest.skip("chromium is not installed (and could not be: not root, or no apt-get)")
    return path


async def run_browser(browser: str, profile: Path, *args: str) -> str:
    """Run headless Chromium with everything that talks to the Internet off; names resolve
    to nothing but 127.0.0.1, so the page (and Chromium itself) can reach only loopback."""
    argv = [
        browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--disable-default-apps", "--disable-extensions", "--no-proxy-server",
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
        f"--user-data-dir={profile}", "--virtual-time-budget=5000", *args,
    ]
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), BROWSER_TIMEOUT)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode == 0, err.decode(errors="replace")[-2000:]
    return out.decode()


@pytest.fixture
async def fleet(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[str]:
    """Two servers with their own host names and models (one loaded), and a client using both."""
    async with AsyncExitStack() as stack:
        servers = []
        for name, models, loaded in (
            ("gpu-box", ["llama3.2:1b", "qwen2.5-coder:7b"], ["qwen2.5-coder:7b"]),
            ("mac-studio", ["llama3.2:1b", "nomic-embed-text:latest"], []),
        ):
            fake = FakeOllama(models=models, loaded=loaded)
            base = await stack.enter_async_context(fake.serve("127.0.0.1", 0))
            # A node reads its host name once, as it starts.
            monkeypatch.setattr(Node, "local_hostname", staticmethod(lambda name=name: name))
            servers.append(await stack.enter_async_context(server_for(base)))
        monkeypatch.setattr(Node, "local_hostname", staticmethod(lambda: "laptop"))
        cli = await stack.enter_async_context(client_for(*servers))
        await catalogued(cli, servers=2)
        app = ollama.AsyncClient(host=cli)
        await app.list()
        await app.generate(model="qwen2.5-coder:7b", prompt="a marker prompt never shown")
        await app.chat(model="llama3.2:1b", messages=[{"role": "user", "content": "hi"}])
        yield cli


@pytest.fixture
async def paired_fleet(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> AsyncIterator[tuple[str, str]]:
    """Trust mode devices: gpu-box paired with the client both ways, mac-studio not (pending
    here). Yields the client's URL and mac-studio's short device ID."""
    async with AsyncExitStack() as stack:
        servers = []
        for name, models, loaded in (
            ("gpu-box", ["llama3.2:1b", "qwen2.5-coder:7b"], ["qwen2.5-coder:7b"]),
            ("mac-studio", ["llama3.2:1b", "nomic-embed-text:latest"], []),
        ):
            fake = FakeOllama(models=models, loaded=loaded)
            base = await stack.enter_async_context(fake.serve("127.0.0.1", 0))
            monkeypatch.setattr(Node, "local_hostname", staticmethod(lambda name=name: name))
            servers.append(await stack.enter_async_context(
                server_for(base, trust=Trust.DEVICES, state_dir=tmp_path / name)))
        monkeypatch.setattr(Node, "local_hostname", staticmethod(lambda: "laptop"))
        cdir = tmp_path / "laptop"
        cli = await stack.enter_async_context(client_for(*servers, trust=Trust.DEVICES, state_dir=cdir))
        gpu, mac = identity.load(tmp_path / "gpu-box"), identity.load(tmp_path / "mac-studio")
        me = identity.load(cdir)

        def pending_here() -> set[str]:
            return {d.device_id for d in TrustStore.load(cdir).pending() if d.kind is PeerKind.SERVER}

        await until("both servers pending on the client", lambda: pending_here() == {gpu.device_id, mac.device_id})
        await until("the client pending on gpu-box",
                    lambda: me.device_id in {d.device_id for d in TrustStore.load(tmp_path / "gpu-box").pending()})
        TrustStore.load(cdir).allow(gpu.short, now=time.time())
        TrustStore.load(tmp_path / "gpu-box").allow(me.short, now=time.time())

        async def paired_and_fetched() -> bool:
            async with aiohttp.ClientSession() as session, session.get(cli + "/ollana/v1/status") as r:
                peers = (await r.json())["peers"]
            return any(p["paired"] and p["healthy"] and p.get("catalog") is not None for p in peers)

        deadline = time.monotonic() + 10
        while not await paired_and_fetched():  # once both sides polled their allow lists
            assert time.monotonic() < deadline, "pairing did not take effect"
            await asyncio.sleep(0.05)
        app = ollama.AsyncClient(host=cli)
        await app.generate(model="qwen2.5-coder:7b", prompt="a marker prompt never shown")
        await app.list()
        await app.chat(model="llama3.2:1b", messages=[{"role": "user", "content": "hi"}])
        yield cli, mac.short


def text_of(dom: str, element_id: str) -> str:
    """The text inside the element with ``element_id`` (tags dropped, entities decoded)."""
    match = re.search(rf'<(\w+)[^>]*id="{element_id}"[^>]*>(.*?)</\1>', dom, re.DOTALL)
    assert match is not None, f"no #{element_id} in the page"
    return html.unescape(re.sub(r"<[^>]+>", " ", match.group(2)))


async def test_the_page_renders_servers_and_models(browser: str, fleet: str, tmp_path: Path) -> None:
    dom = await run_browser(browser, tmp_path / "profile", "--dump-dom", fleet + "/ollana/")
    servers = text_of(dom, "servers")
    for name in ("gpu-box", "mac-studio", "llama3.2:1b", "qwen2.5-coder:7b", "nomic-embed-text:latest"):
        assert name in servers, (name, servers)
    assert "● qwen2.5-coder:7b" in servers  # the loaded one is marked
    recent = text_of(dom, "recent")
    assert "/api/generate" in recent and "/api/chat" in recent, recent
    assert "marker prompt" not in dom
    assert "laptop" in text_of(dom, "node-name")

    shot = tmp_path / "status-page.png"
    await run_browser(browser, tmp_path / "profile2", f"--screenshot={shot}", "--window-size=1200,800",
                      "--hide-scrollbars", fleet + "/ollana/")
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


async def test_the_page_shows_pairing_and_the_command_that_allows_a_server(
    browser: str, paired_fleet: tuple[str, str], tmp_path: Path
) -> None:
    cli, mac_short = paired_fleet
    dom = await run_browser(browser, tmp_path / "profile", "--dump-dom", cli + "/ollana/")
    servers = text_of(dom, "servers")
    assert re.search(r"gpu-box\s.*\spaired\s.*healthy.*qwen2\.5-coder:7b", servers, re.DOTALL), servers
    # (A --peer server that refuses this device does not tell its name: it shows by address.)
    assert "not paired" in servers, servers
    pending = text_of(dom, "pending")
    assert "server" in pending and f"ollana device allow {mac_short}" in pending, pending

    shot = tmp_path / "status-page.png"
    await run_browser(browser, tmp_path / "profile2", f"--screenshot={shot}", "--window-size=1200,800",
                      "--hide-scrollbars", cli + "/ollana/")
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    if os.environ.get("OLLANA_STATUS_SCREENSHOT"):
        shutil.copyfile(shot, os.environ["OLLANA_STATUS_SCREENSHOT"])
