"""Saved peers on loopback (discovery off): `ollana peer add/remove` reach a running client within
2 s, SIGHUP applies them at once, a restart keeps them; and the server's /ollana/v1/peers."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from ollana import app
from ollana.config import Endpoint, Mode, Trust
from ollana.discovery import saved
from ollana.discovery.known import PEERS_PATH
from ollana.runtime import Ready
from ollana.trust import identity
from ollana.trust.document import PeerKind
from ollana.trust.store import TrustStore
from ollana.trust.tls import HELLO_PATH, client_context, encode_hello
from tests.fakeollama import FakeOllama
from tests.integration.nodes import FAST, config, server_for, url

TIMEOUT = 10.0


async def ollana(state: Path, *args: str) -> tuple[int, str]:
    """The real command, in its own process (this one's event loop serves the nodes)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "ollana", *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, "OLLANA_HOME": str(state)},
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode is not None
    return proc.returncode, out.decode()


@asynccontextmanager
async def client(state: Path, reload: asyncio.Event | None = None, **kw: Any) -> AsyncIterator[str]:
    """A client node (discovery off) on the state dir; ``reload`` stands for SIGHUP."""
    cfg = config(Mode.CLIENT, state_dir=state, **kw)
    shutdown = asyncio.Event()
    ready: asyncio.Future[Ready] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(app.run(cfg, shutdown, ready.set_result, reload=reload))
    done, _ = await asyncio.wait({task, ready}, timeout=10, return_when=asyncio.FIRST_COMPLETED)
    if task in done:
        task.result()
    try:
        yield url(ready.result())
    finally:
        shutdown.set()
        await asyncio.wait_for(task, 15)


async def get(target: str, tls: Any = True) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as s, s.get(target, ssl=tls) as r:
        return r.status, await r.json(content_type=None)


async def until(what: str, check: Callable[[], Any], timeout: float = TIMEOUT) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        got = await check()
        if got:
            return got
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


def peers_at(cli: str) -> Callable[[], Any]:
    async def check() -> list[dict[str, Any]]:
        _, body = await get(cli + "/ollana/v1/status")
        return list(body["peers"])
    return check


def answered(cli: str) -> Callable[[], Any]:
    async def check() -> bool:
        status, _ = await get(cli + "/api/version")
        return status == 200
    return check


@pytest.fixture
async def server() -> AsyncIterator[str]:
    async with FakeOllama().serve("127.0.0.1", 0) as base, server_for(base) as srv:
        yield srv


async def test_peer_add_and_remove_reach_a_running_client_within_2s(
    server: str, tmp_path: Path, figure: Callable[..., None]
) -> None:
    address = server.split("://", 1)[1]
    async with client(tmp_path) as cli:
        assert await peers_at(cli)() == []
        code, out = await ollana(tmp_path, "peer", "add", address)
        added = time.monotonic()  # the command's own start-up (an interpreter) is not counted
        assert code == 0 and f"Saved {address}" in out
        (entry,) = await until("the saved peer in the client's status", peers_at(cli))
        took = time.monotonic() - added
        assert entry["source"] == "saved" and f"{entry['address']}:{entry['port']}" == address
        figure("saved peer applied after `ollana peer add` (issue: 2 s)", took)
        assert took < 5.0, took  # the poll is 0.5 s: generous (issue 10)
        await until("a request through the saved peer", answered(cli))
        code, out = await ollana(tmp_path, "peer", "list", "--node", cli.split("://", 1)[1])
        assert code == 0 and address in out and "healthy" in out, out

        code, out = await ollana(tmp_path, "peer", "remove", address)
        removed = time.monotonic()
        assert code == 0 and f"Removed {address}" in out

        async def gone() -> bool:
            return not await peers_at(cli)()
        await until("the saved peer gone", gone)
        print(f"saved peer removed after `ollana peer remove`: {time.monotonic() - removed:.3f} s")
        assert time.monotonic() - removed < 5.0
        status, body = await get(cli + "/api/version")
        assert status == 503 and "no Ollama server" in body["error"], body


async def test_bad_address_and_unknown_peer_are_one_line_errors(tmp_path: Path) -> None:
    code, out = await ollana(tmp_path, "peer", "add", "http://gpu-box:11435")
    assert code == 2 and out == "ollana: error: invalid address 'http://gpu-box:11435': write HOST or HOST:PORT, not a URL\n"
    code, out = await ollana(tmp_path, "peer", "remove", "gpu-box")
    assert code == 2 and out.startswith("ollana: error: gpu-box:11435 is not a saved peer") and out.count("\n") == 1


@pytest.mark.parametrize("trust", [Trust.OPEN, Trust.DEVICES])
async def test_sighup_applies_at_once_and_a_restart_keeps_them(server: str, tmp_path: Path, trust: Trust) -> None:
    address = server.split("://", 1)[1]
    reload = asyncio.Event()
    slow = replace(FAST, trust_poll=60.0)  # only the reload can apply it within the test
    async with client(tmp_path, reload, timings=slow, trust=trust) as cli:
        saved.add(tmp_path, saved.parse_peer(address), time.time())
        reload.set()
        started = time.monotonic()
        await until("the saved peer after SIGHUP", peers_at(cli), timeout=5)
        # At once, not at the next poll (60 s here): anything well under the poll proves it.
        assert time.monotonic() - started < 5.0
    # A new process: the saved peer is in the table before the node says it serves.
    async with client(tmp_path, trust=trust) as cli:
        (entry,) = await peers_at(cli)()
        assert entry["source"] == "saved"
        if trust is Trust.OPEN:  # (in trust mode devices the two would have to pair first)
            await until("a request through the saved peer", answered(cli))


async def test_a_command_line_peer_wins_over_the_same_saved_one_and_is_never_written(
    server: str, tmp_path: Path
) -> None:
    address = server.split("://", 1)[1]
    endpoint, other = saved.parse_peer(address), Endpoint("127.0.0.1", 9)
    saved.add(tmp_path, endpoint, time.time())
    async with client(tmp_path, static_peers=(endpoint,)) as cli:
        (entry,) = await peers_at(cli)()
        assert entry["source"] == "static"
        # The file drops it and names another: once the other shows (the file was read), the
        # command line's entry is still there.
        saved.remove(tmp_path, endpoint)
        saved.add(tmp_path, other, time.time())

        async def both() -> list[str]:
            got = sorted(p["source"] for p in await peers_at(cli)())
            return got if got == ["saved", "static"] else []
        await until("the other saved peer next to the --peer", both)
    assert [p.endpoint for p in saved.load(tmp_path)] == [other]


async def test_corrupt_peers_file_stops_the_start_naming_it(tmp_path: Path) -> None:
    (tmp_path / saved.PEERS_FILE).write_text("{")
    with pytest.raises(saved.SavedPeersError, match="peers.json is corrupt"):
        async with client(tmp_path):
            pass


async def test_a_saved_peer_in_trust_mode_devices_gets_paired_like_a_peer_option(tmp_path: Path) -> None:
    sdir, cdir = tmp_path / "server", tmp_path / "client"
    async with FakeOllama().serve("127.0.0.1", 0) as base, server_for(base, trust=Trust.DEVICES, state_dir=sdir) as srv:
        saved.add(cdir, saved.parse_peer(srv.split("://", 1)[1]), time.time())
        async with client(cdir, trust=Trust.DEVICES):
            server_id = identity.load(sdir).device_id

            async def both_pending() -> bool:
                on_client = [p.device_id for p in TrustStore.load(cdir).pending() if p.kind is PeerKind.SERVER]
                on_server = [p.device_id for p in TrustStore.load(sdir).pending() if p.kind is PeerKind.CLIENT]
                return server_id in on_client and identity.load(cdir).device_id in on_server
            await until("each side pending on the other", both_pending)


async def test_peers_endpoint_only_for_paired_devices_and_not_in_open_mode(tmp_path: Path) -> None:
    async with FakeOllama().serve("127.0.0.1", 0) as base:
        async with server_for(base) as open_srv:
            status, _ = await get(open_srv + PEERS_PATH)
            assert status == 404
        sdir = tmp_path / "server"
        async with server_for(base, trust=Trust.DEVICES, state_dir=sdir) as srv:
            me = identity.load_or_create(tmp_path / "me", "me")
            server_cert = identity.load(sdir).cert_pem
            anonymous = client_context(me, server_cert, present_cert=False)
            status, _ = await get(srv + PEERS_PATH, anonymous)
            assert status == 403
            async with aiohttp.ClientSession() as s, s.post(
                srv + HELLO_PATH, data=encode_hello(me, "me"), ssl=anonymous
            ) as r:
                assert r.status == 202
            TrustStore.load(sdir).allow(me.short, now=time.time())

            async def listed() -> Any:
                try:
                    status, body = await get(srv + PEERS_PATH, client_context(me, server_cert))
                except aiohttp.ClientError:
                    return None  # the allow list is applied at the next poll
                return body if status == 200 else None
            assert await until("the peers document", listed) == {"servers": []}
