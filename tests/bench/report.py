"""Turning a run's raw results into derived figures (ratios, added latency, targets) and markdown."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

OK: Final = "ok"
MISSED: Final = "MISSED"


@dataclass(frozen=True, slots=True)
class Target:
    text: str
    at_least: float | None = None
    at_most: float | None = None  # exclusive when strict
    strict: bool = False

    def verdict(self, value: float | None) -> str:
        if value is None:
            return "n/a"
        if self.at_least is not None and value < self.at_least:
            return MISSED
        if self.at_most is not None and (
            value >= self.at_most if self.strict else value > self.at_most
        ):
            return MISSED
        return OK


THROUGHPUT_RATIO: Final = Target(">= 0.3", at_least=0.3)
TLS_RATIO: Final = Target(">= 0.8", at_least=0.8)
ADDED_P50_PER_HOP: Final = Target("<= 0.5 ms", at_most=0.5)
ADDED_PER_CHUNK_CHAIN: Final = Target("< 5 ms", at_most=5.0, strict=True)
RSS_GROWTH: Final = Target("< 50 MiB", at_most=50.0, strict=True)
ROUTING_CPU: Final = Target("<= 30 µs", at_most=30.0)
MERGED_TAGS_P50: Final = Target("<= 5 ms", at_most=5.0)
# The request kinds of the fleet's end-to-end CPU figure (bench.py: route_cpu).
CHAT_ROUTED: Final = "POST /api/chat (model read, routed)"
CHAT_UNREAD: Final = "POST /api/chat, Content-Encoding: identity"
VERSION: Final = "GET /api/version"


def _get(d: dict[str, Any], *keys: str) -> Any:
    for key in keys:
        if not isinstance(d, dict) or key not in d:
            return None
        d = d[key]
    return d


def _num_at(d: dict[str, Any], *keys: str) -> float | None:
    value = _get(d, *keys)
    return float(value) if isinstance(value, (int, float)) else None


def _sub(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def _div(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else a / b


def _figure(
    name: str, value: float | None, unit: str, target: Target | None = None, note: str = ""
) -> dict[str, Any]:
    return {
        "name": name,
        "value": value,
        "unit": unit,
        "target": target.text if target else None,
        "verdict": target.verdict(value) if target else None,
        "note": note,
    }


def figures(results: dict[str, Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    small = results.get("small", {})
    if small:  # (a run with --only fake or --only fleet has none)
        out += small_figures(small)
    stream = results.get("stream", {})
    for topo in ("nginx 1 hop", "ollana 1 hop", "ollana chain"):
        if topo not in stream:
            continue
        out.append(
            _figure(
                f"added time to first line, {topo}",
                _sub(_get(stream, topo, "ttfc_p50_ms"), _get(stream, "direct", "ttfc_p50_ms")),
                "ms",
            )
        )
        out.append(
            _figure(
                f"added per-line latency p50, {topo}",
                _sub(_get(stream, topo, "lag_p50_ms"), _get(stream, "direct", "lag_p50_ms")),
                "ms",
                ADDED_PER_CHUNK_CHAIN if topo == "ollana chain" else None,
                "arrival minus the line's created_at, against direct",
            )
        )

    upload = results.get("upload", {})
    for topo in ("nginx 1 hop", "ollana 1 hop", "ollana chain"):
        if topo in upload:
            out.append(
                _figure(
                    f"upload throughput {topo} / direct",
                    _div(_get(upload, topo, "mb_per_s"), _get(upload, "direct", "mb_per_s")),
                    "x",
                )
            )
    for topo in ("ollana 1 hop", "ollana chain"):
        for role, growth in (_get(upload, topo, "rss_growth_mib") or {}).items():
            out.append(
                _figure(
                    f"ollana {role} RSS growth during upload, {topo}", growth, "MiB", RSS_GROWTH
                )
            )
    out += fleet_figures(results.get("fleet", {}))
    return out


def fleet_figures(fleet: dict[str, Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for name, case in (_get(fleet, "route_cost", "cases") or {}).items():
        out.append(
            _figure(
                f"routing CPU per request, in process, {name}",
                _num_at(case, "us_per_request", "median"),
                "µs",
                ROUTING_CPU,
                "classify + read_body + FleetView.decide (3 servers) + begin/end; median of "
                "repeats",
            )
        )
    kinds = _get(fleet, "cpu", "kinds") or {}

    def client_us(kind: str) -> float | None:
        return _num_at(kinds, kind, "cpu_us_per_request", "client")

    if kinds:
        out.append(
            _figure(
                "routing CPU per request, end to end: chain client, chat read - chat unread",
                _sub(client_us(CHAT_ROUTED), client_us(CHAT_UNREAD)),
                "µs",
                note="noisy (/proc CPU ticks, hey -c 16); same body and answer, model not read",
            )
        )
        out.append(
            _figure(
                "routing CPU per request, end to end: chain client, chat - version",
                _sub(client_us(CHAT_ROUTED), client_us(VERSION)),
                "µs",
                note="noisy; also relaying the 2 KB body and the larger answer: an upper bound",
            )
        )
    tags = fleet.get("tags", {})

    def p50(topo: str) -> float | None:
        return _num_at(tags, topo, "p50_ms")

    if tags:
        out.append(
            _figure(
                "merged GET /api/tags p50, through the client (chain)",
                p50("ollana chain"),
                "ms",
                MERGED_TAGS_P50,
                "sequential, one keep-alive connection",
            )
        )
        out.append(
            _figure(
                "merged GET /api/tags p50, chain / direct to the fake",
                _div(p50("ollana chain"), p50("direct")),
                "x",
            )
        )
        out.append(
            _figure(
                "merged GET /api/tags p50, chain / ollana 1 hop",
                _div(p50("ollana chain"), p50("ollana 1 hop")),
                "x",
            )
        )
    return out


def small_figures(small: dict[str, Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []

    def rps(topo: str) -> float | None:
        return _num_at(small, topo, "hey", "rps")

    def seq50(topo: str) -> float | None:
        return _num_at(small, topo, "seq", "p50_ms")

    def hey50(topo: str) -> float | None:
        return _num_at(small, topo, "hey", "p50_ms")

    out.append(
        _figure(
            "throughput ollana 1 hop / nginx 1 hop",
            _div(rps("ollana 1 hop"), rps("nginx 1 hop")),
            "x",
            THROUGHPUT_RATIO,
            "GET /api/version, hey -c 16",
        )
    )
    out.append(
        _figure(
            "throughput ollana chain / nginx 1 hop",
            _div(rps("ollana chain"), rps("nginx 1 hop")),
            "x",
        )
    )
    out.append(
        _figure(
            "throughput ollana chain, TLS / ollana chain (open)",
            _div(rps("ollana chain, TLS"), rps("ollana chain")),
            "x",
            TLS_RATIO,
            "trust mode devices vs open, hey -c 16 with keep-alive",
        )
    )
    out.append(
        _figure(
            "p50 ollana chain (open) / ollana chain, TLS, hey -c 16",
            _div(hey50("ollana chain"), hey50("ollana chain, TLS")),
            "x",
            note="latency as a ratio >= 1 is better: open p50 over TLS p50",
        )
    )
    out.append(
        _figure(
            "seq p50 ollana chain (open) / ollana chain, TLS",
            _div(seq50("ollana chain"), seq50("ollana chain, TLS")),
            "x",
            TLS_RATIO,
            "one keep-alive connection, one request at a time",
        )
    )
    out.append(
        _figure(
            "added p50 by TLS (chain TLS - chain open), sequential",
            _sub(seq50("ollana chain, TLS"), seq50("ollana chain")),
            "ms",
        )
    )
    out.append(
        _figure(
            "throughput ollana 1 hop (OLLANA_LOG=warn) / nginx 1 hop",
            _div(rps("ollana 1 hop, OLLANA_LOG=warn"), rps("nginx 1 hop")),
            "x",
            note="same, without the per-request info log line",
        )
    )
    out.append(
        _figure(
            "added p50, ollana server hop (1 hop - direct), sequential",
            _sub(seq50("ollana 1 hop"), seq50("direct")),
            "ms",
            ADDED_P50_PER_HOP,
            "one keep-alive connection, one request at a time",
        )
    )
    out.append(
        _figure(
            "added p50, ollana client hop (chain - 1 hop), sequential",
            _sub(seq50("ollana chain"), seq50("ollana 1 hop")),
            "ms",
            ADDED_P50_PER_HOP,
        )
    )
    out.append(
        _figure(
            "added p50, nginx hop (1 hop - direct), sequential",
            _sub(seq50("nginx 1 hop"), seq50("direct")),
            "ms",
        )
    )
    out.append(
        _figure(
            "added p50 per hop, ollana, hey -c 16",
            _sub(hey50("ollana 1 hop"), hey50("direct")),
            "ms",
            note="under saturation: mostly queueing (concurrency / throughput)",
        )
    )
    out.append(
        _figure(
            "added p50 per hop, nginx, hey -c 16", _sub(hey50("nginx 1 hop"), hey50("direct")), "ms"
        )
    )
    return out


# -- markdown ------------------------------------------------------------------------------------------


def _num(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def markdown(doc: dict[str, Any]) -> str:
    res = doc["results"]
    env = doc["environment"]
    plan = doc["plan"]
    parts = [
        f"## ollana benchmark ({doc['mode']}, {doc['started']}, {doc['elapsed_s']} s)",
        "",
        f"`{doc['command']}`",
        "",
        (
            f"ollana {env['ollana']} (git {env['git']}), Python {env['python']}, "
            f"aiohttp {env['aiohttp']}, {env['nginx']}, {env['cpus']} CPUs, kernel {env['kernel']}. "
            f"All on 127.0.0.1. CPU busy before the run: {env.get('cpu_busy_before_pct', '?')} %; "
            f"CPU used by other processes during it: {env.get('cpu_others_during_pct', '?')} % "
            "of the machine."
        ),
    ]
    small = res.get("small", {})
    if small:
        parts += [
            "",
            "### Small requests: GET /api/version (upstream: a static nginx `return 200`, not Ollama)",
            "",
            (
                f"hey -c {plan['concurrency']} -cpus 1, {plan['seconds']:g} s per topology in "
                f"{plan['rounds']} round(s) taken in turn; sequential: one keep-alive connection, "
                f"up to {plan['seq_count']} requests one at a time."
            ),
            "",
            _table(
                [
                    "topology",
                    "req/s (c=16)",
                    "p50 ms",
                    "p99 ms",
                    "seq p50 ms",
                    "seq p99 ms",
                    "seq req/s",
                    "ollana CPU µs/req",
                ],
                [
                    [
                        name,
                        _num(r["hey"]["rps"], 0),
                        _num(r["hey"]["p50_ms"], 1),
                        _num(r["hey"]["p99_ms"], 1),
                        _num(r["seq"]["p50_ms"], 3),
                        _num(r["seq"]["p99_ms"], 3),
                        _num(1000 / r["seq"]["mean_ms"], 0),
                        _num(r["hey"].get("ollana_cpu_us_per_request"), 0),
                    ]
                    for name, r in small.items()
                ],
            ),
        ]
    stream = res.get("stream", {})
    if stream:
        setup = res.get("stream_setup", {})
        direct = stream.get("direct", {})
        parts += [
            "",
            (
                f"### Streaming: POST /api/generate against the fake Ollama ({setup.get('knobs')}, "
                f"{setup.get('runs')} streams per topology)"
            ),
            "",
            _table(
                [
                    "topology",
                    "lines",
                    "first line p50 ms",
                    "added ms",
                    "line lag p50 ms",
                    "added ms",
                    "line lag p99 ms",
                    "whole stream ms",
                ],
                [
                    [
                        name,
                        str(r["lines_per_run"]),
                        _num(r["ttfc_p50_ms"]),
                        _num(_sub(r["ttfc_p50_ms"], direct.get("ttfc_p50_ms")))
                        if name != "direct"
                        else "",
                        _num(r["lag_p50_ms"]),
                        _num(_sub(r["lag_p50_ms"], direct.get("lag_p50_ms")))
                        if name != "direct"
                        else "",
                        _num(r["lag_p99_ms"]),
                        _num(r["total_p50_ms"], 0),
                    ]
                    for name, r in stream.items()
                ],
            ),
            "",
            (
                "Line lag = arrival at the client minus the line's own `created_at`; the fake stamps "
                "a line before its 20 ms pause, so the direct lag is about 20 ms and only the added "
                "columns matter."
            ),
        ]
    upload = res.get("upload", {})
    if upload:
        parts += [
            "",
            (
                f"### Upload: POST /api/blobs/sha256:<digest> of {plan['upload_mib']} MiB "
                f"to the fake Ollama ({plan['upload_rounds']} round(s))"
            ),
            "",
            _table(
                ["topology", "MB/s", "seconds", "ollana RSS start -> peak (MiB)", "growth MiB"],
                [
                    [
                        name,
                        _num(r["mb_per_s"], 0),
                        _num(r["seconds"]),
                        ", ".join(
                            f"{k} {r['rss_start_mib'][k]:.1f} -> {r['rss_peak_mib'][k]:.1f}"
                            for k in r["rss_growth_mib"]
                        )
                        or "",
                        ", ".join(f"{k} +{v:.1f}" for k, v in r["rss_growth_mib"].items()) or "",
                    ]
                    for name, r in upload.items()
                ],
            ),
        ]
    parts += fleet_markdown(res.get("fleet", {}), plan)
    idle = res.get("idle_rss_mib", {})
    if idle:
        parts += [
            "",
            "### Idle RSS after start-up",
            "",
            _table(["process", "RSS MiB"], [[f"ollana {k}", _num(v, 1)] for k, v in idle.items()]),
        ]
    figs = doc.get("figures", [])
    if figs:
        parts += [
            "",
            "### Figures and targets",
            "",
            _table(
                ["figure", "value", "target", "verdict"],
                [
                    [
                        f["name"],
                        f"{_num(f['value'])} {f['unit']}",
                        f["target"] or "",
                        f["verdict"] or "",
                    ]
                    for f in figs
                ],
            ),
        ]
    if doc.get("processes"):
        parts += ["", "### Processes started", ""] + [
            f"- {name}: `{cmd}`" for name, cmd in doc["processes"].items()
        ]
    if doc.get("failures"):
        parts += ["", "### Failures", ""] + [f"- {f.splitlines()[0]}" for f in doc["failures"]]
    return "\n".join(parts)


def fleet_markdown(fleet: dict[str, Any], plan: dict[str, Any]) -> list[str]:
    parts: list[str] = []
    cost = fleet.get("route_cost")
    if cost:
        parts += [
            "",
            (
                f"### Fleet: routing by model, CPU per request in process "
                f"({cost['iterations']} requests per case, median of {cost['repeats']} repeats)"
            ),
            "",
            (
                f"`tests/bench/routecost.py`, no sockets: {cost['servers']} servers of "
                f"{max(cost['models_per_server'].values())} models each, model "
                f"`{cost['model']}` (on two, loaded on one). µs of process CPU time; the parts "
                f"and the ClientRoute path over {cost['iterations_parts']} requests."
            ),
            "",
            _table(
                [
                    "request body",
                    "bytes",
                    "model first",
                    "routing µs/req (min)",
                    "classify",
                    "read_body",
                    "decide + begin/end",
                    "ClientRoute path µs",
                    "path - version µs",
                ],
                [
                    [
                        name,
                        str(c["body_bytes"]),
                        "yes" if c["model_first"] else "no",
                        f"{_num(c['us_per_request']['median'], 1)} ({_num(c['us_per_request']['min'], 1)})",
                        _num(c["parts_us"]["classify"], 1),
                        _num(c["parts_us"]["read_body"], 1),
                        _num(c["parts_us"]["decide_begin_end"], 1),
                        _num(c["client_route_us"]["median"], 1),
                        _num(c["client_route_minus_version_us"], 1),
                    ]
                    for name, c in cost["cases"].items()
                ],
            ),
            "",
            (
                "ClientRoute path = classify, read_body, `ClientRoute.targets` (usable servers, "
                "decide, its debug line, the targets), begin, end, in an event loop task; for "
                f"GET /api/version (no model) it is {_num(cost['client_route_version_us']['median'], 1)} µs, "
                f"and the debug line alone (dropped at level info) "
                f"{_num(cost['debug_line_us']['median'], 1)} µs. Machine speed reference: "
                f"`sum(range(1000))` took {_num(cost['reference_sum_range_1000_us']['median'], 1)} µs."
            ),
        ]
    cpu = fleet.get("cpu")
    if cpu:
        kinds = cpu["kinds"]
        parts += [
            "",
            (
                f"### Fleet: CPU per request of the chain's processes, hey -c {plan['concurrency']} "
                f"against the client ({plan['fleet_seconds']:g} s per kind, "
                f"{plan['fleet_rounds']} alternating rounds)"
            ),
            "",
            _table(
                ["request", "req/s", "p50 ms", "client CPU µs/req", "server CPU µs/req"],
                [
                    [
                        kind,
                        _num(k["hey"]["rps"], 0),
                        _num(k["hey"]["p50_ms"], 1),
                        _num(k["cpu_us_per_request"].get("client"), 0),
                        _num(k["cpu_us_per_request"].get("server"), 0),
                    ]
                    for kind, k in kinds.items()
                ],
            ),
            "",
            (
                f"chat: a {cpu['body_bytes']} B ollama-python body naming `{cpu['model']}`, "
                "stream false, a small answer. With `Content-Encoding: identity` the client does "
                "not read the body: it routes the chat as a request without a model, to the same "
                "server, relaying the same bytes, so chat read - chat unread is what routing by "
                "model adds end to end (one server here: decide has one candidate). Chat - "
                "version also holds relaying the body and the larger answer. Both are "
                "differences of /proc tick counts (10 ms) over a few thousand requests: noisy."
            ),
        ]
    tags = fleet.get("tags")
    if tags:
        parts += [
            "",
            "### Fleet: GET /api/tags, sequential, one keep-alive connection",
            "",
            _table(
                ["topology", "answered by", "models", "bytes", "p50 ms", "p95 ms", "p99 ms", "requests"],
                [
                    [
                        name,
                        "the client (merged view)"
                        if name == "ollana chain" and not t.get("x_ollana_server")
                        else ("the fake" if name == "direct" else f"{t.get('x_ollana_server')}"),
                        str(t["models"]),
                        str(t["body_bytes"]),
                        _num(t["p50_ms"], 3),
                        _num(t["p95_ms"], 3),
                        _num(t["p99_ms"], 3),
                        str(t["requests"]),
                    ]
                    for name, t in tags.items()
                ],
            ),
        ]
    return parts
