"""What the connection guard (ollana/connguard.py) costs per request, in process.

Two listeners on 127.0.0.1 in one process, the same trivial handler: aiohttp's server as ollana
ran it before the guard (``web.Server`` + ``TCPSite``), and ``httpserver.listening`` (guarded). A
client in the same process sends keep-alive ``GET /api/version`` requests over C connections,
one at a time each. The figure is process CPU time per request (``time.process_time_ns``): it
holds the client's cost too, the same in both, so the difference is the guard's; CPU time is
much steadier than throughput on a shared machine. Rounds alternate between the two.

    python -m tests.bench.guardcost [--requests 4000] [--rounds 7] [--connections 8] [--loop asyncio]

On uvloop by default, as `ollana serve` runs.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager

from aiohttp import web

from ollana.config import Endpoint
from ollana.httpserver import listening

REQUEST = b"GET /api/version HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
BODY = b'{"version":"0.33.0"}'


async def handler(request: web.BaseRequest) -> web.StreamResponse:
    return web.Response(body=BODY, content_type="application/json")


@asynccontextmanager
async def unguarded() -> AsyncIterator[int]:
    """The server as httpserver.py started it before the guard."""
    server = web.Server(handler, handler_cancellation=True, auto_decompress=False, access_log=None)
    runner = web.ServerRunner(server, shutdown_timeout=1.0, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, reuse_address=True)
    await site.start()
    try:
        yield runner.addresses[0][1]
    finally:
        await runner.cleanup()


@asynccontextmanager
async def guarded() -> AsyncIterator[int]:
    async with listening(handler, Endpoint("127.0.0.1", 0), grace=1.0, busy_hint="") as listener:
        yield listener.endpoint.port


async def _connection(port: int, count: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        for _ in range(count):
            writer.write(REQUEST)
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(head.split(b"Content-Length: ", 1)[1].split(b"\r\n", 1)[0])
            await reader.readexactly(length)
    finally:
        writer.close()


async def _round(port: int, requests: int, connections: int) -> float:
    """CPU µs per request for one round."""
    per = requests // connections
    await asyncio.gather(*(_connection(port, 20) for _ in range(connections)))  # warm up
    t0 = time.process_time_ns()
    await asyncio.gather(*(_connection(port, per) for _ in range(connections)))
    return (time.process_time_ns() - t0) / 1000 / (per * connections)


async def main(requests: int, rounds: int, connections: int) -> None:
    variants: dict[str, Callable[[], AbstractAsyncContextManager[int]]] = {
        "unguarded (before)": unguarded, "guarded (after)": guarded,
    }
    results: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(rounds):
        for name, serve in variants.items():
            async with serve() as port:
                results[name].append(await _round(port, requests, connections))
    print(f"{requests} requests per round, {connections} keep-alive connections, {rounds} rounds "
          "in turn; process CPU µs per request (client and server in one process): median [min]")
    for name, values in results.items():
        print(f"  {name:20s} {statistics.median(values):7.1f} [{min(values):.1f}]")
    before = statistics.median(results["unguarded (before)"])
    after = statistics.median(results["guarded (after)"])
    print(f"  guard adds {after - before:+.1f} µs per request ({(after / before - 1) * 100:+.1f} %)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=4000)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--loop", choices=["uvloop", "asyncio"], default="uvloop")
    args = parser.parse_args()
    factory = None
    if args.loop == "uvloop":
        import uvloop

        factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(main(args.requests, args.rounds, args.connections))
