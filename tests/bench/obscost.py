"""What observing a request costs (metrics, the recent-requests ring, connection tracing), in process.

    python -m tests.bench.obscost [--iterations N] [--json]

1. The handler's hooks alone, no sockets: ``RequestObserver.begin`` and ``done`` for a proxied
   ``POST /api/chat`` (labels looked up, counters and two histograms updated, the ring filled).
2. aiohttp's connection tracing (``connection_traces``, on when a node starts at debug):
   sequential keep-alive ``GET`` requests to an aiohttp server on 127.0.0.1, through the upstream
   session with and without it (its debug lines written as JSON to memory); the difference is the
   tracing's cost per request (both sides of the socket run in this process).

CPU time is ``time.process_time_ns`` (time spent descheduled on a busy machine does not count);
each figure is the median of several repeats.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Final

if __package__ in (None, ""):  # run as a script: make `ollana` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from aiohttp import web

from ollana import log as ollana_log
from ollana.fleet.names import model_key
from ollana.observe.metrics import Metrics
from ollana.observe.upstream import connection_traces
from ollana.runtime import upstream_session

REPEATS: Final = 5
MODEL: Final = model_key("qwen2.5-coder:7b")


def hooks_ns(iterations: int) -> float:
    metrics = Metrics()
    obs = metrics.observer("client", lambda m: m == MODEL)
    runs = []
    for _ in range(REPEATS):
        start = time.process_time_ns()
        for _ in range(iterations):
            trip = obs.begin()
            trip.model, trip.server, trip.first_byte = MODEL, "gpu-box (ABCDEFG)", trip.started
            obs.done("POST", "/api/chat", trip, 200, 1234)
        runs.append((time.process_time_ns() - start) / iterations)
    return statistics.median(runs)


async def per_request_ns(url: str, requests: int, traced: bool) -> float:
    async with upstream_session(5.0, connection_traces() if traced else None) as session:
        for _ in range(50):  # warm: the connection is open and pooled
            async with session.get(url) as r:
                await r.read()
        start = time.process_time_ns()
        for _ in range(requests):
            async with session.get(url) as r:
                await r.read()
        return (time.process_time_ns() - start) / requests


async def tracing_ns(requests: int) -> tuple[float, float]:
    async def answer(_r: web.Request) -> web.Response:
        return web.json_response({"version": "0.0.0"})

    app = web.Application()
    app.router.add_get("/api/version", answer)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    url = f"http://127.0.0.1:{port}/api/version"
    plain, traced = [], []
    try:
        for _ in range(REPEATS):  # interleaved, so drift lands on both
            plain.append(await per_request_ns(url, requests, traced=False))
            traced.append(await per_request_ns(url, requests, traced=True))
    finally:
        await runner.cleanup()
    return statistics.median(plain), statistics.median(traced)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=50_000)
    parser.add_argument("--requests", type=int, default=2_000)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    print("command:", " ".join([Path(sys.executable).name, "-m", "tests.bench.obscost", *sys.argv[1:]]),
          file=sys.stderr)
    ollana_log.configure(ollana_log.parse_directives("warn,ollana.observe=debug"), stream=io.StringIO())
    hooks = hooks_ns(args.iterations)
    plain, traced = asyncio.run(tracing_ns(args.requests))
    result: dict[str, Any] = {
        "observer_begin_done_us": round(hooks / 1000, 2),
        "request_untraced_us": round(plain / 1000, 1),
        "request_traced_us": round(traced / 1000, 1),
        "tracing_us": round((traced - plain) / 1000, 1),
    }
    if args.json:
        print(json.dumps(result))
        return 0
    print("| what | CPU per request |\n|---|---|")
    print(f"| observer begin + done (POST /api/chat, labels, 2 histograms, ring) | {result['observer_begin_done_us']} µs |")
    print(f"| keep-alive GET through the upstream session, untraced | {result['request_untraced_us']} µs |")
    print(f"| same, with connection tracing | {result['request_traced_us']} µs |")
    print(f"| tracing's share | {result['tracing_us']} µs |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
