"""What routing by model costs a client per request, in process: no sockets, no event loop I/O.

    python -m tests.bench.routecost [--iterations N] [--json]

Times, over many iterations, exactly what the client does per request to route it by model
(ollana/proxy/handler.py, ollana/roles/client_route.py): ``classify`` the method and path,
``read_body`` for the model (the whole body, as kept for replay with more than one server),
``FleetView.decide`` over three servers with ten models each, and ``begin``/``end``. Then the
same inside the real ``ClientRoute`` (peer table, targets, the debug line dropped at level
info), against a request without a model (``GET /api/version``) for the difference.

CPU time is ``time.process_time_ns`` (this process only: time spent descheduled on a busy
machine does not count); each figure is the median of several repeats. Run by bench.py in a
child process of its own, before any server starts.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import io
import json
import math
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

if __package__ in (None, ""):  # run as a script: make `ollana` and `tests.bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from multidict import CIMultiDict, CIMultiDictProxy

from ollana import log as ollana_log
from ollana.config import Endpoint, LogFormat
from ollana.discovery.peers import Peer, PeerTable, Source
from ollana.fleet.asks import Ask, classify, read_body
from ollana.fleet.catalog import Catalog
from ollana.fleet.names import model_key
from ollana.fleet.view import FleetView
from ollana.roles import client_route as client_route_module
from ollana.roles.client_route import ClientRoute

REPEATS: Final = 5
MODEL: Final = "qwen2.5-coder:7b"  # on A (present) and B (loaded); C does not have it
TARGET_SIZES: Final = {"2 KB": 2_000, "20 KB": 20_000}


# -- a realistic fleet: three servers, ten models each -----------------------------------------


def tags_entry(name: str, i: int) -> dict[str, Any]:
    """One /api/tags entry as Ollama writes it."""
    return {
        "name": name,
        "model": name,
        "modified_at": f"2025-05-{1 + i % 28:02d}T09:{i % 60:02d}:12.345678901+02:00",
        "size": 1_000_000_000 + 7_919 * i,
        "digest": f"{i:02x}" * 32,
        "details": {
            "parent_model": "",
            "format": "gguf",
            "family": "llama",
            "families": ["llama"],
            "parameter_size": "7.6B",
            "quantization_level": "Q4_K_M",
        },
    }


def ps_entry(name: str, i: int) -> dict[str, Any]:
    return {
        **tags_entry(name, i),
        "expires_at": "2025-06-01T10:05:00.123456789+02:00",
        "size_vram": 5_000_000_000,
        "context_length": 4096,
    }


FLEET: Final = {
    # key: (rtt ms, capacity, models, loaded, in flight)
    "A": (
        0.3, 1,
        ["llama3.2:3b", "llama3.2:1b", MODEL, "mistral:7b", "gemma3:4b", "phi4:14b",
         "nomic-embed-text:latest", "deepseek-r1:8b", "llava:7b", "qwen3:8b"],
        ["llama3.2:3b"], {"llama3.2:3b": 1},
    ),
    "B": (
        0.9, 2,
        [MODEL, "qwen3:8b", "qwen3:14b", "llama3.1:8b", "mxbai-embed-large:latest",
         "codellama:7b", "granite3.3:8b", "gemma3:12b", "phi3:mini", "starcoder2:7b"],
        [MODEL, "qwen3:8b"], {"qwen3:8b": 1},
    ),
    "C": (
        0.5, 1,
        ["nomic-embed-text:latest", "llama3.2:3b", "mistral-nemo:12b", "smollm2:1.7b",
         "tinyllama:latest", "orca-mini:3b", "qwen2.5:0.5b", "all-minilm:latest",
         "bge-m3:latest", "snowflake-arctic-embed:latest"],
        [], {},
    ),
}


def catalog(key: str) -> Catalog:
    _rtt, capacity, models, loaded, inflight = FLEET[key]
    return Catalog(
        models=tuple(tags_entry(m, i) for i, m in enumerate(models)),
        loaded=tuple(ps_entry(m, i) for i, m in enumerate(loaded)),
        openai=tuple(
            {"id": m, "object": "model", "created": 1748761200, "owned_by": "library"}
            for m in models
        ),
        inflight={model_key(m): n for m, n in inflight.items()},
        capacity=capacity,
    )


def fleet_view() -> FleetView:
    view = FleetView()
    for key in FLEET:
        view.fetched(key, catalog(key), {})
    return view


def peers() -> list[Peer]:
    """The servers in home order (by RTT), as ClientRoute.usable() hands them to decide."""
    out = [
        Peer(key, Endpoint("127.0.0.1", 11435 + i), Source.STATIC, 0.0, 0.0, math.inf,
             rtt_ms=FLEET[key][0])
        for i, key in enumerate(FLEET)
    ]
    return sorted(out, key=lambda p: p.rtt_ms or 0.0)


# -- request bodies as the two usual clients write them ------------------------------------------


def messages(size: int) -> list[dict[str, str]]:
    """A conversation of about ``size`` bytes of JSON: a system prompt, then turns of a few
    hundred characters each (many small strings, as a chat history is)."""
    words = (
        "the quick brown fox jumps over a lazy dog while the compiler reports an error "
        "in line 42 because the variable was never initialised before use; "
    )
    out = [{"role": "system", "content": "You are a helpful assistant. Answer briefly."}]
    turn = 0
    while len(json.dumps(out)) < size - 200:
        role = "user" if turn % 2 == 0 else "assistant"
        text = (words * 3)[(turn * 17) % 40 :][: 240 + (turn * 37) % 160]
        out.append({"role": role, "content": f"{turn}: {text}"})
        turn += 1
    return out


def ollama_python_body(size: int) -> bytes:
    """ollama-python's Client.chat: a pydantic model dumped in field order, "model" first,
    serialised by httpx (compact separators, UTF-8)."""
    doc = {"model": MODEL, "messages": messages(size), "stream": False,
           "options": {"temperature": 0.2, "num_ctx": 8192}, "keep_alive": "10m"}
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()


def openai_sdk_body(size: int) -> bytes:
    """The OpenAI Python SDK's chat.completions.create: its body dict lists "messages" before
    "model" (keyword order of create()), serialised by httpx."""
    doc = {"messages": messages(size), "model": MODEL, "stream": False, "temperature": 0.2}
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()


@dataclass(frozen=True, slots=True)
class Case:
    name: str
    method: str
    path: str
    body: bytes
    model_first: bool


def cases() -> list[Case]:
    out = []
    for label, size in TARGET_SIZES.items():
        out.append(Case(f"ollama-python /api/chat {label}", "POST", "/api/chat",
                        ollama_python_body(size), True))
    for label, size in TARGET_SIZES.items():
        out.append(Case(f"OpenAI SDK /v1/chat/completions {label}", "POST",
                        "/v1/chat/completions", openai_sdk_body(size), False))
    return out


# -- timing ----------------------------------------------------------------------------------------


@dataclass(slots=True)
class Timed:
    """One loop to time: ``fn(count)`` runs ``count`` requests' worth of work."""

    fn: Callable[[int], None]
    iterations: int
    runs: list[float] = field(default_factory=list)  # CPU µs per call, one per repeat

    def summary(self) -> dict[str, float]:
        return {
            "median": statistics.median(self.runs),
            "min": min(self.runs),
            "max": max(self.runs),
        }


def time_all(loops: dict[str, Timed]) -> None:
    """Every loop once per repeat, in turn, so a change in the machine's load lands on all of
    them alike; each loop warmed up first (caches, the regex, first-use paths)."""
    for loop in loops.values():
        loop.fn(min(1000, loop.iterations // REPEATS))
    for _ in range(REPEATS):
        for loop in loops.values():
            per = max(1, loop.iterations // REPEATS)
            t0 = time.process_time_ns()
            loop.fn(per)
            loop.runs.append((time.process_time_ns() - t0) / per / 1000)


def reference(count: int) -> None:
    """A fixed piece of pure Python, to compare the speed of the machines runs were made on."""
    for _ in range(count):
        sum(range(1000))


def fleet_pieces(case: Case, view: FleetView, plist: list[Peer]) -> Callable[[int], None]:
    """classify + read_body (whole body) + FleetView.decide + begin/end: the headline."""
    method, path, body = case.method, case.path, case.body

    def run(count: int) -> None:
        for _ in range(count):
            ask = classify(method, path)
            if ask.body_names_model:
                ask = read_body(ask, body, whole=True)
            decision = view.decide(ask, plist, [p.key for p in plist], 100.0)
            key = decision.order[0]
            view.begin(key, ask.model)
            view.end(key, ask.model)

    return run


def part_classify(case: Case) -> Callable[[int], None]:
    def run(count: int) -> None:
        for _ in range(count):
            classify(case.method, case.path)

    return run


def part_read_body(case: Case) -> Callable[[int], None]:
    ask = classify(case.method, case.path)

    def run(count: int) -> None:
        for _ in range(count):
            read_body(ask, case.body, whole=True)

    return run


def part_decide(ask: Ask, view: FleetView, plist: list[Peer]) -> Callable[[int], None]:
    def run(count: int) -> None:
        for _ in range(count):
            decision = view.decide(ask, plist, [p.key for p in plist], 100.0)
            view.begin(decision.order[0], ask.model)
            view.end(decision.order[0], ask.model)

    return run


class _Request:
    """What ClientRoute.targets reads of a request: its headers."""

    def __init__(self) -> None:
        self.headers = CIMultiDictProxy(CIMultiDict({"Host": "127.0.0.1:11434",
                                                     "Content-Type": "application/json"}))


def client_route() -> ClientRoute:
    table = PeerTable()
    for i, (key, (rtt, *_rest)) in enumerate(FLEET.items()):
        table.add_static(Endpoint("127.0.0.1", 11435 + i), 0.0, key=key)
        table.mark_healthy(key, rtt, 0.0)

    async def fetch_now(_peer: Peer) -> None:
        return None

    return ClientRoute(table, fleet_view(), time.monotonic, 0.0, lambda: None, fetch_now,
                       lambda _peer: None)


def in_route(case: Case | None, route: ClientRoute) -> Callable[[int], None]:
    """The client's whole routing path for one request, in an event loop's task (begin and end
    track the task): classify, read_body, ClientRoute.targets (usable servers, decide, the
    debug line, the targets), begin, end. ``case`` None: GET /api/version, no model."""
    method, path, body = ("GET", "/api/version", b"") if case is None else (
        case.method, case.path, case.body)
    request: Any = _Request()

    async def many(count: int) -> None:
        for _ in range(count):
            ask = classify(method, path)
            if ask.body_names_model:
                ask = read_body(ask, body, whole=True)
            targets = route.targets(request, ask)
            assert isinstance(targets, list)
            route.begin(targets[0], ask)
            route.end(targets[0], ask, 200)

    loop = asyncio.new_event_loop()

    def run(count: int) -> None:
        loop.run_until_complete(many(count))

    return run


def debug_line(count: int) -> None:
    """ClientRoute.targets' ``log.debug("routed", ...)`` for a request with a model, dropped at
    level info (the module's lazy logger binds anew on every call)."""
    say = client_route_module.log.debug
    model, order = model_key(MODEL), ["B", "A"]
    for _ in range(count):
        say("routed", model=model, why="current", order=list(order))


def check(case: Case, view: FleetView, plist: list[Peer]) -> str:
    """The decision the bench times must be a real one: the model read, B chosen (loaded)."""
    ask = read_body(classify(case.method, case.path), case.body, whole=True)
    if ask.model != model_key(MODEL):
        raise SystemExit(f"routecost: {case.name}: read_body found {ask.model!r}")
    decision = view.decide(ask, plist, [p.key for p in plist], 100.0)
    if decision.order[0] != "B":
        raise SystemExit(f"routecost: {case.name}: routed to {decision.order}, not B first")
    return decision.why


def measure(iterations: int) -> dict[str, Any]:
    """``iterations`` requests per case for the headline; a quarter of that for the parts,
    the ClientRoute path and the reference loop."""
    # A real client logs at level info: ClientRoute's per-request debug line is dropped.
    ollana_log.configure(ollana_log.parse_directives("info"), LogFormat.JSON, stream=io.StringIO())
    plist = peers()
    few = max(REPEATS, iterations // 4)
    loops: dict[str, Timed] = {
        "reference": Timed(reference, few),
        "route version": Timed(in_route(None, client_route()), few),
        "debug line": Timed(debug_line, few),
    }
    checked: dict[str, str] = {}
    for case in cases():
        view = fleet_view()
        checked[case.name] = check(case, view, plist)
        ask = read_body(classify(case.method, case.path), case.body, whole=True)
        loops[f"{case.name}|total"] = Timed(fleet_pieces(case, view, plist), iterations)
        loops[f"{case.name}|classify"] = Timed(part_classify(case), few)
        loops[f"{case.name}|read_body"] = Timed(part_read_body(case), few)
        loops[f"{case.name}|decide_begin_end"] = Timed(part_decide(ask, view, plist), few)
        loops[f"{case.name}|route"] = Timed(in_route(case, client_route()), few)
    gc.collect()
    time_all(loops)
    version = loops["route version"].summary()
    out: dict[str, Any] = {
        "iterations": iterations,
        "iterations_parts": few,
        "repeats": REPEATS,
        "python": platform.python_version(),
        "servers": len(FLEET),
        "models_per_server": {k: len(v[2]) for k, v in FLEET.items()},
        "model": MODEL,
        "reference_sum_range_1000_us": loops["reference"].summary(),
        "client_route_version_us": version,
        "debug_line_us": loops["debug line"].summary(),
        "cases": {},
    }
    for case in cases():
        route = loops[f"{case.name}|route"].summary()
        out["cases"][case.name] = {
            "path": case.path,
            "body_bytes": len(case.body),
            "model_first": case.model_first,
            "decision": checked[case.name],
            "us_per_request": loops[f"{case.name}|total"].summary(),
            "parts_us": {
                part: loops[f"{case.name}|{part}"].summary()["median"]
                for part in ("classify", "read_body", "decide_begin_end")
            },
            "client_route_us": route,
            "client_route_minus_version_us": route["median"] - version["median"],
        }
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=20_000)
    parser.add_argument("--json", action="store_true", help="print the result as JSON only")
    args = parser.parse_args(argv)
    result = measure(args.iterations)
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"{args.iterations} iterations, median of {REPEATS} repeats, CPU µs per request")
    for name, c in result["cases"].items():
        parts = ", ".join(f"{k} {v:.1f}" for k, v in c["parts_us"].items())
        print(f"  {name:42} {c['body_bytes']:6} B  {c['us_per_request']['median']:6.1f} µs"
              f"  ({parts})  ClientRoute path {c['client_route_us']['median']:.1f}"
              f" (- version: {c['client_route_minus_version_us']:.1f})")
    print(f"  ClientRoute path, GET /api/version: {result['client_route_version_us']['median']:.1f}")
    print(f"  of which the dropped debug line: {result['debug_line_us']['median']:.1f}")
    print(f"  reference, sum(range(1000)): {result['reference_sum_range_1000_us']['median']:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
