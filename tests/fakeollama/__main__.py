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
    parser.add_argument(
        "--loaded",
        action="append",
        default=[],
        metavar="MODEL",
        help="model already loaded at start, for Ollama's default 5 minutes (repeatable)",
    )
    parser.add_argument("--first-byte-delay", type=float, default=0.0)
    parser.add_argument(
        "--load-delay", type=float, default=0.0, help="seconds to load a model not loaded yet"
    )
    parser.add_argument(
        "--num-parallel",
        type=int,
        default=0,
        help="requests one model serves at once, others queue (OLLAMA_NUM_PARALLEL; 0: no limit)",
    )
    parser.add_argument(
        "--generation-time", type=float, default=0.0, help="seconds one generation takes"
    )
    parser.add_argument("--chunk-delay", type=float, default=0.0)
    parser.add_argument("--tokens", type=int, default=Knobs().tokens)
    parser.add_argument("--split-chunks", action="store_true")
    parser.add_argument("--error-after", type=int, default=None)
    parser.add_argument("--die-after", type=int, default=None)
    parser.add_argument("--fail-status", type=int, default=None)
    return parser.parse_args(argv)


def build(args: argparse.Namespace) -> FakeOllama:
    """The fake the flags describe; ValueError for a bad knob value or an unknown --loaded."""
    knobs = Knobs()
    knobs.update(  # checked as /_fake/config checks them
        {
            "first_byte_delay": args.first_byte_delay,
            "load_delay": args.load_delay,
            "num_parallel": args.num_parallel,
            "chunk_delay": args.chunk_delay,
            "generation_time": args.generation_time,
            "tokens": args.tokens,
            "split_chunks": args.split_chunks,
            "error_after": args.error_after,
            "die_after": args.die_after,
            "fail_status": args.fail_status,
        }
    )
    return FakeOllama(
        version=args.version,
        models=args.models,
        hostname=args.hostname,
        origins=[o for o in args.origins.split(",") if o],
        knobs=knobs,
        loaded=args.loaded,
    )


async def run(fake: FakeOllama, host: str, port: int) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with fake.serve(host, port) as url:
        print(f"fakeollama listening on {url}", flush=True)
        await stop.wait()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        fake = build(args)
    except ValueError as exc:
        print(f"fakeollama: {exc}", file=sys.stderr)
        return 2
    asyncio.run(run(fake, args.host, args.port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
