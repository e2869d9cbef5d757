"""Role both: a machine that runs Ollama (on another port) and whose own apps use the fleet.

The server proxy shares the local Ollama on the LAN as usual; the client listener takes
127.0.0.1:11434, where the machine's apps look, and sees the local Ollama as one more server
with no network between: it goes to it directly (no TLS to itself, no pairing with itself),
and the server's catalogue keeper counts those requests too, so other clients see the load.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import replace

from ollana.config import Role
from ollana.roles.client import ClientNode
from ollana.roles.server import ServerNode
from ollana.runtime import Ready, Runtime


async def run_both(rt: Runtime, shutdown: asyncio.Event, ready: Callable[[Ready], None]) -> None:
    """Run the server proxy and the client listener until ``shutdown``; ``ready`` is told once
    both serve (the client's address: where this machine's apps go)."""
    cfg = rt.config
    server = ServerNode(replace(rt, config=replace(cfg, listen=cfg.lan_listen)))
    client = ClientNode(rt, local=server.local())
    server_ready = asyncio.Event()

    def client_ready(r: Ready) -> None:
        ready(Ready(Role.BOTH, r.listen, r.node_id))

    try:
        async with asyncio.TaskGroup() as tg:
            serving = tg.create_task(server.run(shutdown, lambda _r: server_ready.set()))
            # The client starts once the server side has checked its Ollama: the local server is
            # then a healthy peer from the client's first request on.
            waiting = tg.create_task(server_ready.wait())
            await asyncio.wait({serving, waiting}, return_when=asyncio.FIRST_COMPLETED)
            if server_ready.is_set():
                tg.create_task(client.run(shutdown, client_ready))
            else:
                waiting.cancel()
    except BaseExceptionGroup as group:
        # One side could not start (port busy...): report its error as a single node would.
        raise group.exceptions[0] from None
