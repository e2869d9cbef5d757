"""Run inside a lab host (``python -m tests.lab.flood OP ...``): a connection flood, or the
timing of normal requests with the official ollama client. Each prints JSON lines.

``attack``: holds IDLE connections that never send a byte and SLOW slowloris connections that
dribble a request head (one header line a second), reconnecting a slot one second after the
server closed it, until killed. Prints ``READY`` once every slot was tried once, then a JSON
count line every second. TLS targets (``--tls``): the slowloris ones finish a handshake without a
certificate first (allowed: a device may say hello); the idle ones never start one.
``measure``: COUNT requests with the official ollama client to 127.0.0.1:11434 (``show``,
forwarded to a server: the client does not answer it itself), one at a time; prints their ms.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import ssl
import sys
import time
from typing import Any


class Counts:
    def __init__(self) -> None:
        self.open = 0
        self.closed = 0
        self.refused = 0


async def _slot(host: str, port: int, tls: ssl.SSLContext | None, slow: bool, counts: Counts,
                tried: asyncio.Event) -> None:
    while True:
        writer = None
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(host, port, ssl=tls if slow else None,
                                        server_hostname="" if tls and slow else None), 15)
            counts.open += 1
            tried.set()
            if slow:
                writer.write(b"GET /api/version HTTP/1.1\r\nHost: x\r\n")
                while not reader.at_eof():
                    await asyncio.sleep(1.0)
                    writer.write(b"X-Slow: 1\r\n")
                    await writer.drain()
            else:
                await reader.read()  # until the server closes it
            counts.closed += 1
        except (OSError, ssl.SSLError, TimeoutError, asyncio.IncompleteReadError):
            counts.refused += 1
            tried.set()
        finally:
            if writer is not None:
                counts.open -= 1
                writer.close()
        await asyncio.sleep(1.0)


async def attack(host: str, port: int, idle: int, slow: int, use_tls: bool) -> None:
    tls = None
    if use_tls:
        tls = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        tls.check_hostname = False
        tls.verify_mode = ssl.CERT_NONE
    counts = Counts()
    events = [asyncio.Event() for _ in range(idle + slow)]
    tasks = []
    for i, ev in enumerate(events):
        tasks.append(asyncio.create_task(_slot(host, port, tls, i >= idle, counts, ev)))
        if i % 50 == 49:
            await asyncio.sleep(0.05)  # a burst, not one SYN flood the kernel drops half of
    await asyncio.wait_for(asyncio.gather(*(ev.wait() for ev in events)), 60)
    print("READY", flush=True)
    while True:
        print(json.dumps({"open": counts.open, "closed": counts.closed, "refused": counts.refused,
                          "t": time.time()}), flush=True)
        await asyncio.sleep(1.0)


def measure(count: int, model: str) -> dict[str, Any]:
    import ollama

    os.environ.pop("OLLAMA_HOST", None)
    client = ollama.Client(timeout=30)  # the default host, as every app uses it
    for _ in range(5):  # warm up
        client.show(model)
    ms: list[float] = []
    failed: list[str] = []
    for _ in range(count):
        t0 = time.perf_counter()
        try:
            client.show(model)
            ms.append((time.perf_counter() - t0) * 1000)
        except Exception as exc:  # noqa: BLE001 - every failure is counted and reported
            failed.append(f"{type(exc).__name__}: {exc}")
    return {"ms": ms, "failed": failed}


def main() -> None:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="op", required=True)
    a = sub.add_parser("attack")
    a.add_argument("host")
    a.add_argument("port", type=int)
    a.add_argument("--idle", type=int, default=1000)
    a.add_argument("--slow", type=int, default=200)
    a.add_argument("--tls", action="store_true")
    m = sub.add_parser("measure")
    m.add_argument("--count", type=int, default=40)
    m.add_argument("--model", required=True)
    args = parser.parse_args()
    if args.op == "attack":
        asyncio.run(attack(args.host, args.port, args.idle, args.slow, args.tls))
    else:
        print(json.dumps(measure(args.count, args.model)), flush=True)
    sys.exit(0)


if __name__ == "__main__":
    main()
