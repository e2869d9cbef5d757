"""python -m tests.fakeollama: run the fake in the foreground until SIGTERM or SIGINT.

Prints one line, `fakeollama listening on http://HOST:PORT`, once the socket is bound.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys

from .app import DEFAULT_VERSION, FakeOllama
from .state import Knobs


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tests.fakeollama", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=11434)
    parser.add_argument("--version", default=DEFAULT_VERSION, help="version /api/version reports")
    parser.add_argument(
        "--hostname", default=None, help="name the Host check accepts (default: this machine's)"
    )
    parser.add_argument(
        "--origins", default="", help="extra CORS origins, comma-separated (OLLAMA_ORIGINS)"
    )
    parser.add_argument(
        "--model",
        action="append",
        dest="models",
        help="model to offer (repeatable; default: the built-in two)",
    )
    parser.add_argument("--first-byte-delay", type=float, default=0.0)
    parser.add_argument("--chunk-delay", type=float, default=0.0)
    parser.add_argument("--tokens", type=int, default=Knobs().tokens)
    parser.add_argument("--split-chunks", action="store_true")
    parser.add_argument("--error-after", type=int, default=None)
    parser.add_argument("--die-after", type=int, default=None)
    parser.add_argument("--fail-status", type=int, default=None)
    return parser.parse_args(argv)


async def run(args: argparse.Namespace) -> None:
    knobs = Knobs(
        first_byte_delay=args.first_byte_delay,
        chunk_delay=args.chunk_delay,
        tokens=args.tokens,
        split_chunks=args.split_chunks,
        error_after=args.error_after,
        die_after=args.die_after,
        fail_status=args.fail_status,
    )
    fake = FakeOllama(
        version=args.version,
        models=args.models,
        hostname=args.hostname,
        origins=[o for o in args.origins.split(",") if o],
        knobs=knobs,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with fake.serve(args.host, args.port) as url:
        print(f"fakeollama listening on {url}", flush=True)
        await stop.wait()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    asyncio.run(run(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
