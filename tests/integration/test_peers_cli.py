"""`ollana peers` reads the local client's view of the fleet."""

from __future__ import annotations

import asyncio
import json
import sys
from contextlib import AsyncExitStack

from click.testing import CliRunner

from ollana.cli.peers import peers, render
from tests.fakeollama import FakeOllama
from tests.integration.nodes import client_for, server_for


async def ollana(*args: str) -> str:
    """The real command, in its own process (this one's event loop serves the nodes)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "ollana", *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err.decode()
    return out.decode()


async def test_peers_lists_servers_with_models_and_slots() -> None:
    async with AsyncExitStack() as stack:
        proxies = []
        for models in (["alpha:1b"], ["beta:1b", "gamma:1b"]):
            base = await stack.enter_async_context(FakeOllama(models=models).serve("127.0.0.1", 0))
            proxies.append(await stack.enter_async_context(server_for(base)))
        client = await stack.enter_async_context(client_for(*proxies))
        node = client.split("://", 1)[1]
        # The client learns catalogues within a health interval of start: wait on what it shows.
        for _ in range(100):
            listed = json.loads(await ollana("peers", "--node", node, "--json"))
            if all(p.get("catalog") is not None for p in listed) and len(listed) == 2:
                break
            await asyncio.sleep(0.05)
        assert sorted(m for p in listed for m in p["models"]) == ["alpha:1b", "beta:1b", "gamma:1b"]
        assert all(p["slots"] == 1 and p["healthy"] for p in listed)
        table = await ollana("peers", "--node", node)
        assert table.splitlines()[0].split()[:5] == ["SERVER", "ADDRESS", "FOUND", "BY", "TRUST"]
        assert "alpha:1b" in table and "beta:1b, gamma:1b" in table and "0/1" in table


def test_peers_without_a_client_says_what_to_do() -> None:
    result = CliRunner().invoke(peers, ["--node", "127.0.0.1:1"])
    assert result.exit_code == 1
    assert "no ollana client answers at 127.0.0.1:1" in (result.output + (result.stderr if result.stderr_bytes else ""))


def test_render_empty_and_unknown_catalogue() -> None:
    assert "no servers known yet" in render([])
    row = render([{"id": "ab" * 16, "address": "fe80::1", "port": 11435, "trust": "open", "healthy": False,
                   "catalog": None}]).splitlines()[1]
    assert "[fe80::1]:11435" in row and "down" in row and "?" in row
