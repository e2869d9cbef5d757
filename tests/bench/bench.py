"""ollana's benchmark: proxy overhead against a direct connection and an nginx hop, in one run.

    python tests/bench/bench.py [--quick]

Everything runs on 127.0.0.1; every ollana started has --no-discovery. See tests/bench/README.md
for what each figure means. Exit status: 0 when every topology ran (a missed target is reported
as MISSED, not as a failure), 1 when a topology could not run, 130 on Ctrl-C.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import resource
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Final, TypeVar

if __package__ in (None, ""):  # run as a script: make `tests.bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.bench import load, report, routecost
from tests.bench.procs import (
    HOST,
    REPO,
    BenchError,
    Procs,
    RssSampler,
    cpu_seconds,
    free_port,
    http_get,
    rss_kib,
)

T = TypeVar("T")

RESULTS: Final = Path(__file__).with_name("results")
STREAM_KNOBS: Final = {"chunk_delay": 0.02, "tokens": 50}
QUIET_LOG: Final = {"OLLANA_LOG": "warn"}
FLEET_TOKENS: Final = 8  # words in the fake's chat answer: a small response
SERVER_HEADER: Final = "X-Ollana-Server"  # on every answer a server forwarded
ROUTED: Final = report.CHAT_ROUTED
UNREAD: Final = report.CHAT_UNREAD
VERSION: Final = report.VERSION
IDLE_BUSY_PCT: Final = 15.0
NOISY_OTHERS_PCT: Final = 10.0


@dataclass(frozen=True, slots=True)
class Plan:
    seconds: float  # hey duration per topology, split over `rounds`
    rounds: int  # topologies are measured in turn, this many times, so load drift hits all alike
    concurrency: int
    seq_count: (
        int  # sequential requests per topology (bounded by seq_seconds too), split over rounds
    )
    seq_seconds: float
    stream_runs: int  # streams per topology, interleaved across topologies
    upload_mib: int
    upload_rounds: int
    upload_limit: float  # seconds per upload before giving up
    route_iterations: int  # in-process routing cost: requests per case (routecost.py)
    fleet_seconds: float  # hey per request kind (chat read, unread, version), over fleet_rounds
    fleet_rounds: int
    tags_count: int  # sequential GET /api/tags per topology (bounded by tags_seconds too)
    tags_seconds: float


QUICK: Final = Plan(
    seconds=2,
    rounds=1,
    concurrency=16,
    seq_count=2000,
    seq_seconds=1.5,
    stream_runs=3,
    upload_mib=256,
    upload_rounds=1,
    upload_limit=60,
    route_iterations=20_000,
    fleet_seconds=3,
    fleet_rounds=3,
    tags_count=1500,
    tags_seconds=1.5,
)
FULL: Final = Plan(
    seconds=5,
    rounds=2,
    concurrency=16,
    seq_count=6000,
    seq_seconds=3.0,
    stream_runs=8,
    upload_mib=1024,
    upload_rounds=2,
    upload_limit=180,
    route_iterations=20_000,
    fleet_seconds=8,
    fleet_rounds=4,
    tags_count=4000,
    tags_seconds=3.0,
)


class Bench:
    def __init__(self, plan: Plan, procs: Procs, log: Callable[[str], None]) -> None:
        self.plan = plan
        self.procs = procs
        self.say = log
        self.results: dict[str, Any] = {
            "small": {}, "stream": {}, "upload": {}, "idle_rss_mib": {}, "fleet": {}
        }
        self.failures: list[str] = []
        self.commands: dict[str, str] = {}

    def attempt(self, what: str, fn: Callable[[], T]) -> T | None:
        try:
            return fn()
        except BenchError as exc:
            self.failures.append(f"{what}: {exc}")
            self.say(f"  FAILED {what}: {exc}")
        except Exception as exc:  # noqa: BLE001 -- a bench bug or odd answer: report it, go on
            self.failures.append(f"{what}: {type(exc).__name__}: {exc}")
            self.say(f"  FAILED {what}:\n{traceback.format_exc()}")
        return None

    def _record(self, proc_name: str) -> None:
        for proc in self.procs.procs:
            if proc.name == proc_name:
                self.commands[proc_name] = shlex.join(proc.argv)

    # -- small requests -----------------------------------------------------------------------

    def small(self) -> None:
        p = self.plan
        self.say(
            f"small requests: GET /api/version, hey -c {p.concurrency} for {p.seconds:g} s, "
            f"then up to {p.seq_count} sequential requests"
        )
        up, ng, srv, cli, quiet, srv_tls, cli_tls = (free_port() for _ in range(7))
        self.procs.nginx("nginx-static-upstream", up)
        self._record("nginx-static-upstream")
        topologies: list[tuple[str, int]] = [("direct", up)]
        if self.attempt("start nginx hop", lambda: self.procs.nginx("nginx-hop", ng, up)):
            self._record("nginx-hop")
            topologies.append(("nginx 1 hop", ng))
        server = self.attempt(
            "start ollana server", lambda: self.procs.ollana_server("ollana-server", srv, up, {})
        )
        if server:
            self._record("ollana-server")
            self.results["idle_rss_mib"]["server"] = rss_kib(server.pid)[0] / 1024
            topologies.append(("ollana 1 hop", srv))
            client = self.attempt(
                "start ollana client",
                lambda: self.procs.ollana_client("ollana-client", cli, srv, {}),
            )
            if client:
                self._record("ollana-client")
                self.results["idle_rss_mib"]["client"] = rss_kib(client.pid)[0] / 1024
                topologies.append(("ollana chain", cli))
        if self.attempt("start TLS chain", lambda: self.tls_chain(srv_tls, cli_tls, up)):
            topologies.append(("ollana chain, TLS", cli_tls))
        if self.attempt(
            "start quiet ollana server",
            lambda: self.procs.ollana_server("ollana-server-quiet", quiet, up, QUIET_LOG),
        ):
            self._record("ollana-server-quiet")
            topologies.append(("ollana 1 hop, OLLANA_LOG=warn", quiet))
        hey: dict[str, list[load.HeyResult]] = {name: [] for name, _ in topologies}
        seq: dict[str, list[float]] = {name: [] for name, _ in topologies}
        # CPU the ollana processes spend per proxied request: steadier than req/s on a busy box.
        cpu: dict[str, float] = {name: 0.0 for name, _ in topologies}
        ollanas = [
            proc.pid
            for proc in self.procs.procs
            if proc.name.startswith("ollana") and proc.popen.poll() is None  # (a failed one exited)
        ]
        broken: set[str] = set()
        for _round in range(p.rounds):
            for name, port in topologies:
                if name in broken:
                    continue
                before = sum(cpu_seconds(pid) for pid in ollanas)
                got = self.attempt(
                    f"small requests, {name}",
                    functools.partial(
                        load.run_hey,
                        port,
                        "/api/version",
                        concurrency=p.concurrency,
                        seconds=p.seconds / p.rounds,
                    ),
                )
                if got is None:
                    broken.add(name)
                else:
                    hey[name].append(got)
                    cpu[name] += sum(cpu_seconds(pid) for pid in ollanas) - before
        for _round in range(p.rounds):
            for name, port in topologies:
                if name in broken:
                    continue
                samples = self.attempt(
                    f"sequential requests, {name}",
                    functools.partial(
                        load.run_sequential,
                        port,
                        "/api/version",
                        count=p.seq_count // p.rounds,
                        seconds=p.seq_seconds / p.rounds,
                    ),
                )
                if samples is None:
                    broken.add(name)
                else:
                    seq[name] += samples
        for name, _ in topologies:
            if name in broken:
                continue
            h, q = load.combine_hey(hey[name]), asdict(load.seq_result(seq[name]))
            requests = sum(r.requests for r in hey[name])
            through_ollana = name.startswith("ollana")
            h["ollana_cpu_us_per_request"] = cpu[name] / requests * 1e6 if requests and through_ollana else None
            self.results["small"][name] = {"hey": h, "seq": q}
            self.say(
                f"  {name:30} {h['rps']:9.0f} req/s  p50 {h['p50_ms']:.2f} ms  p99 {h['p99_ms']:.2f} ms"
                f" | sequential p50 {q['p50_ms']:.3f} ms  p99 {q['p99_ms']:.3f} ms"
            )
        if server:
            self.results["rss_after_small_mib"] = {
                proc.name: rss_kib(proc.pid)[0] / 1024
                for proc in self.procs.procs
                if proc.name.startswith("ollana")
            }
        for proc in list(self.procs.procs):  # free the cores for what follows
            self.procs.stop(proc)

    def tls_chain(self, srv: int, cli: int, up: int) -> bool:
        """The full chain in trust mode devices: a paired client and server, mutual TLS between
        them (the client's own port stays plain HTTP on loopback, where Ollama apps connect)."""
        server = self.procs.ollana_server("ollana-server-tls", srv, up, {}, trust="devices")
        client = self.procs.ollana_client(
            "ollana-client-tls", cli, srv, {}, trust="devices", wait=False
        )
        # `ollana device show` (in pair) next to a serve still creating its identity can make
        # the serve read a key without its certificate and exit: let the serve create it first.
        state = self.procs.state_dir("ollana-client-tls")
        self.procs.wait_until(
            client,
            "the client's device identity",
            lambda: (state / "device.key").exists() and (state / "device.crt").exists(),
        )
        self.procs.pair(server, client)
        self.procs.wait_client_healthy(client, cli)
        self._record("ollana-server-tls")
        self._record("ollana-client-tls")
        return True

    # -- streaming and upload, against the fake Ollama -------------------------------------------

    def with_fake(self) -> None:
        fake_port, ng, srv, cli = (free_port() for _ in range(4))
        fake = self.attempt(
            "start fake Ollama", lambda: self.procs.fake_ollama("fakeollama", fake_port)
        )
        if not fake:
            self.failures.append("streaming and upload: not run (no fake Ollama)")
            return
        self._record("fakeollama")
        topologies: list[tuple[str, int]] = [("direct", fake_port)]
        if self.attempt(
            "start nginx hop (fake)", lambda: self.procs.nginx("nginx-hop-fake", ng, fake_port)
        ):
            self._record("nginx-hop-fake")
            topologies.append(("nginx 1 hop", ng))
        ollanas: dict[str, int] = {}
        server = self.attempt(
            "start ollana server (fake)",
            lambda: self.procs.ollana_server("ollana-server-fake", srv, fake_port, {}),
        )
        if server:
            self._record("ollana-server-fake")
            ollanas["server"] = server.pid
            topologies.append(("ollana 1 hop", srv))
            client = self.attempt(
                "start ollana client (fake)",
                lambda: self.procs.ollana_client("ollana-client-fake", cli, srv, {}),
            )
            if client:
                self._record("ollana-client-fake")
                ollanas["client"] = client.pid
                topologies.append(("ollana chain", cli))
        self.attempt("stream", lambda: self.streams(fake_port, topologies))
        self.attempt("upload", lambda: self.uploads(topologies, ollanas))

    def streams(self, fake_port: int, topologies: list[tuple[str, int]]) -> None:
        p = self.plan
        post_json(fake_port, "/_fake/config", STREAM_KNOBS)
        model = first_model(fake_port)
        self.results["stream_setup"] = {
            "knobs": STREAM_KNOBS,
            "model": model,
            "runs": p.stream_runs,
        }
        self.say(
            f"streaming: POST /api/generate model={model} {STREAM_KNOBS}, "
            f"{p.stream_runs} streams per topology, interleaved"
        )
        try:
            results, errors = load.run_streams(dict(topologies), model, runs=p.stream_runs)
        finally:
            post_json(fake_port, "/_fake/config", {"chunk_delay": 0.0})
        for name, error in errors.items():
            self.failures.append(f"stream, {name}: {error}")
            self.say(f"  FAILED stream, {name}: {error}")
        for name, _ in topologies:
            got = results.get(name)
            if got is None:
                continue
            self.results["stream"][name] = asdict(got)
            lag = "n/a" if got.lag_p50_ms is None else f"{got.lag_p50_ms:.2f} ms"
            self.say(
                f"  {name:30} first line {got.ttfc_p50_ms:.2f} ms  line lag p50 {lag}  "
                f"whole stream {got.total_p50_ms:.0f} ms ({got.lines_per_run} lines)"
            )

    def uploads(self, topologies: list[tuple[str, int]], ollanas: dict[str, int]) -> None:
        p = self.plan
        self.say(
            f"upload: POST /api/blobs/sha256:<digest>, {p.upload_mib} MiB generated on the fly, "
            f"{p.upload_rounds} round(s)"
        )
        runs: dict[str, list[dict[str, Any]]] = {name: [] for name, _ in topologies}
        broken: set[str] = set()
        seed = 1000
        for _round in range(p.upload_rounds):
            for name, port in topologies:
                if name in broken:
                    continue
                # A new digest every time: a blob the fake already holds is answered without the body.
                seed += 1
                payload = load.Payload.make(p.upload_mib, seed=seed)
                watch = {
                    role: pid
                    for role, pid in ollanas.items()
                    if (role == "server" and name.startswith("ollana"))
                    or (role == "client" and name == "ollana chain")
                }

                def run(
                    port: int = port, payload: load.Payload = payload, watch: dict[str, int] = watch
                ) -> dict[str, Any]:
                    with RssSampler(watch, period=0.05) as rss:
                        up = load.run_upload(port, payload, limit=p.upload_limit)
                    return {
                        **asdict(up),
                        "digest": payload.digest,
                        "rss_start_mib": {k: v / 1024 for k, v in rss.start_kib.items()},
                        "rss_peak_mib": {k: v / 1024 for k, v in rss.peak_kib.items()},
                        "rss_growth_mib": {
                            k: (rss.peak_kib[k] - rss.start_kib[k]) / 1024 for k in watch
                        },
                        "rss_samples": rss.samples,
                    }

                got = self.attempt(f"upload, {name}", run)
                if got is None:
                    broken.add(name)
                else:
                    runs[name].append(got)
        for name, _ in topologies:
            if name in broken or not runs[name]:
                continue
            done = runs[name]
            total_bytes = sum(r["bytes"] for r in done)
            total_s = sum(r["seconds"] for r in done)
            roles = done[0]["rss_growth_mib"].keys()
            summary = {
                "rounds": len(done),
                "bytes": total_bytes,
                "seconds": total_s,
                "mb_per_s": total_bytes / total_s / 1e6,
                "rss_start_mib": {k: min(r["rss_start_mib"][k] for r in done) for k in roles},
                "rss_peak_mib": {k: max(r["rss_peak_mib"][k] for r in done) for k in roles},
                "rss_growth_mib": {k: max(r["rss_growth_mib"][k] for r in done) for k in roles},
                "per_round": done,
            }
            self.results["upload"][name] = summary
            growth = ", ".join(f"{k} +{v:.1f} MiB" for k, v in summary["rss_growth_mib"].items())
            times = ", ".join(f"{r['seconds']:.2f}" for r in done)
            self.say(
                f"  {name:30} {summary['mb_per_s']:7.0f} MB/s  ({times} s)"
                f"{'  RSS growth ' + growth if growth else ''}"
            )

    # -- the fleet: what routing by model costs, the merged /api/tags ---------------------------

    def fleet(self) -> None:
        self.attempt("routing cost in process", self.route_cost)
        fake_port, srv, cli = (free_port() for _ in range(3))
        # The fake holds one server's catalogue of routecost's fleet (ten models): /api/tags
        # answers are of a realistic size, and routecost's chat body names one of them.
        models = routecost.FLEET["B"][2]
        fake = self.procs.fake_ollama(
            "fakeollama-fleet",
            fake_port,
            ["--tokens", str(FLEET_TOKENS), *(arg for m in models for arg in ("--model", m))],
        )
        self._record("fakeollama-fleet")
        server = self.procs.ollana_server("ollana-server-fleet", srv, fake_port, {})
        self._record("ollana-server-fleet")
        client = self.procs.ollana_client("ollana-client-fleet", cli, srv, {})
        self._record("ollana-client-fleet")
        self.procs.wait_until(
            client,
            "the client to answer GET /api/tags from its merged view",
            lambda: merged_tags_answer(cli, len(models)),
        )
        topologies = [("direct", fake_port), ("ollana 1 hop", srv), ("ollana chain", cli)]
        self.attempt("merged /api/tags", lambda: self.merged_tags(topologies, len(models)))
        self.attempt(
            "routing cost end to end",
            lambda: self.route_cpu(cli, {"client": client.pid, "server": server.pid}),
        )
        for proc in (client, server, fake):
            self.procs.stop(proc)

    def route_cost(self) -> None:
        """tests/bench/routecost.py in a process of its own, before any server of this part runs."""
        p = self.plan
        argv = [
            sys.executable, "-m", "tests.bench.routecost", "--json",
            "--iterations", str(p.route_iterations),
        ]
        self.commands["routecost"] = shlex.join(argv)
        self.say(
            f"fleet: routing cost in process, {p.route_iterations} requests per case "
            "(classify + read_body + FleetView.decide over 3 servers + begin/end)"
        )
        try:
            done = subprocess.run(
                argv, capture_output=True, text=True, timeout=600, cwd=REPO, check=False
            )
        except subprocess.TimeoutExpired as exc:
            raise BenchError("routecost did not finish in 600 s") from exc
        if done.returncode != 0:
            raise BenchError(f"routecost failed ({done.returncode}): {done.stderr[-2000:]}")
        got = json.loads(done.stdout)
        self.results["fleet"]["route_cost"] = got
        for name, case in got["cases"].items():
            parts = ", ".join(f"{k} {v:.1f}" for k, v in case["parts_us"].items())
            self.say(
                f"  {name:42} {case['us_per_request']['median']:6.1f} µs/req ({parts}); "
                f"whole ClientRoute path - version {case['client_route_minus_version_us']:.1f}"
            )

    def merged_tags(self, topologies: list[tuple[str, int]], models: int) -> None:
        p = self.plan
        self.say(
            f"fleet: GET /api/tags ({models} models), up to {p.tags_count} sequential requests "
            "per topology; the chain's client answers from its merged view"
        )
        samples: dict[str, list[float]] = {name: [] for name, _ in topologies}
        for _round in range(p.fleet_rounds):
            for name, port in topologies:
                samples[name] += load.run_sequential(
                    port,
                    "/api/tags",
                    count=p.tags_count // p.fleet_rounds,
                    seconds=p.tags_seconds / p.fleet_rounds,
                    warmup=50,
                )
        out: dict[str, Any] = {}
        for name, port in topologies:
            code, body, headers = http_get(f"http://{HOST}:{port}/api/tags")
            q = asdict(load.seq_result(samples[name]))
            out[name] = {
                **q,
                "status": code,
                "body_bytes": len(body),
                "models": len(json.loads(body).get("models") or []),
                "x_ollana_server": header(headers, SERVER_HEADER),
            }
            self.say(
                f"  {name:30} p50 {q['p50_ms']:.3f} ms  p95 {q['p95_ms']:.3f} ms  "
                f"p99 {q['p99_ms']:.3f} ms  ({q['requests']} requests, {len(body)} bytes)"
            )
        self.results["fleet"]["tags"] = out

    def route_cpu(self, port: int, pids: dict[str, int]) -> None:
        """CPU per request of the chain's client (and server), in alternating rounds of hey
        against the client: a chat naming a model; the same chat with ``Content-Encoding:
        identity``, whose body the client does not read (so it routes it as a request without a
        model: the same server, the same bytes relayed); GET /api/version."""
        p = self.plan
        body = routecost.ollama_python_body(2_000)
        body_file = str(self.procs.workdir / "chat-body.json")
        Path(body_file).write_bytes(body)
        kinds: dict[str, tuple[str, str | None, tuple[str, ...]]] = {
            ROUTED: ("/api/chat", body_file, ()),
            UNREAD: ("/api/chat", body_file, ("Content-Encoding: identity",)),
            VERSION: ("/api/version", None, ()),
        }
        self.say(
            f"fleet: CPU per request of the chain's client, hey -c {p.concurrency}, "
            f"{p.fleet_seconds:g} s per kind in {p.fleet_rounds} alternating rounds; "
            f"chat: {len(body)} B ollama-python body, model {routecost.MODEL}, stream false"
        )
        cpu = {kind: dict.fromkeys(pids, 0.0) for kind in kinds}
        runs: dict[str, list[load.HeyResult]] = {kind: [] for kind in kinds}
        for _round in range(p.fleet_rounds):
            for kind, (path, post_file, headers) in kinds.items():
                before = {role: cpu_seconds(pid) for role, pid in pids.items()}
                runs[kind].append(
                    load.run_hey(
                        port,
                        path,
                        concurrency=p.concurrency,
                        seconds=p.fleet_seconds / p.fleet_rounds,
                        post_file=post_file,
                        headers=headers,
                    )
                )
                for role, pid in pids.items():
                    cpu[kind][role] += cpu_seconds(pid) - before[role]
        out: dict[str, Any] = {"body_bytes": len(body), "model": routecost.MODEL, "kinds": {}}
        for kind in kinds:
            h = load.combine_hey(runs[kind])
            us = {role: cpu[kind][role] / h["requests"] * 1e6 for role in pids}
            out["kinds"][kind] = {"hey": h, "cpu_us_per_request": us}
            self.say(
                f"  {kind:48} {h['rps']:5.0f} req/s  client {us['client']:5.0f} µs/req  "
                f"server {us['server']:5.0f} µs/req"
            )
        self.results["fleet"]["cpu"] = out


def post_json(port: int, path: str, value: Any) -> Any:
    req = urllib.request.Request(
        f"http://{HOST}:{port}{path}",
        data=json.dumps(value).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(req, timeout=5) as resp:
        return json.loads(resp.read() or b"null")


def merged_tags_answer(port: int, models: int) -> bool:
    """Whether the client answers GET /api/tags itself (no X-Ollana-Server: not forwarded)
    with every model of the fake's catalogue."""
    code, body, headers = http_get(f"http://{HOST}:{port}/api/tags")
    listed = json.loads(body).get("models") or [] if code == 200 else []
    return header(headers, SERVER_HEADER) is None and len(listed) == models


def header(headers: Mapping[str, str], name: str) -> str | None:
    return next((v for k, v in headers.items() if k.lower() == name.lower()), None)


def first_model(port: int) -> str:
    code, body, _ = http_get(f"http://{HOST}:{port}/api/tags")
    models = json.loads(body).get("models") or [] if code == 200 else []
    if not models:
        raise BenchError(f"the fake lists no models (GET /api/tags: {code} {body[:200]!r})")
    return str(models[0]["name"])


def cpu_busy(seconds: float = 1.0) -> float:
    """How busy the CPUs are (0-100 %) over ``seconds``, before the bench starts anything."""

    def sample() -> tuple[int, int]:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
        return idle, sum(fields)

    idle0, total0 = sample()
    time.sleep(seconds)
    idle1, total1 = sample()
    return 100.0 * (1 - (idle1 - idle0) / max(1, total1 - total0))


def machine_busy_seconds() -> float:
    """CPU seconds all CPUs have spent busy since boot (user, nice, system, irq, softirq)."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    return sum(fields[i] for i in (0, 1, 2, 5, 6) if i < len(fields)) / os.sysconf("SC_CLK_TCK")


def own_busy_seconds() -> float:
    """CPU seconds of this process and of every child it has waited for (hey, the servers)."""
    me, kids = (
        resource.getrusage(resource.RUSAGE_SELF),
        resource.getrusage(resource.RUSAGE_CHILDREN),
    )
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def environment() -> dict[str, Any]:
    def version(argv: list[str]) -> str:
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
            return (done.stdout + done.stderr).strip().splitlines()[0]
        except (OSError, IndexError, subprocess.TimeoutExpired):
            return "?"

    import aiohttp

    import ollana

    return {
        "python": platform.python_version(),
        "aiohttp": aiohttp.__version__,
        "ollana": ollana.__version__,
        "nginx": version(["nginx", "-v"]),
        "hey": load.HEY or "missing",
        "cpus": os.cpu_count(),
        "kernel": platform.release(),
        "git": version(["git", "-C", str(REPO), "describe", "--always", "--dirty"]),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="shorter runs, a 256 MiB upload (about 1-2 minutes)"
    )
    parser.add_argument("--only", choices=["small", "fake", "fleet"], help="run one part only")
    parser.add_argument(
        "--keep", action="store_true", help="keep the temp dir (process logs, nginx configs)"
    )
    parser.add_argument(
        "--wait-idle",
        type=float,
        default=0,
        metavar="SECONDS",
        help="first wait up to this long for the CPUs to be under 15 %% busy (shared machines)",
    )
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else FULL
    command = shlex.join([sys.executable, *sys.argv])
    print(f"command: {command}", flush=True)

    def on_term(_signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGHUP, on_term)

    busy = cpu_busy()
    waited_until = time.monotonic() + args.wait_idle
    while busy > IDLE_BUSY_PCT and time.monotonic() < waited_until:
        print(f"CPU {busy:.0f} % busy: waiting for the machine to go idle", flush=True)
        busy = cpu_busy(5.0)
    print(
        f"CPU busy before start: {busy:.0f} % (load average {os.getloadavg()[0]:.2f})"
        + ("  -- other work is running: expect noisy figures" if busy > IDLE_BUSY_PCT else ""),
        flush=True,
    )
    started = time.time()
    machine0, own0 = machine_busy_seconds(), own_busy_seconds()
    workdir = Path(tempfile.mkdtemp(prefix="ollana-bench-"))
    procs = Procs(workdir)
    bench = Bench(plan, procs, lambda line: print(line, flush=True))
    try:
        if args.only in (None, "small"):
            bench.attempt("small requests", bench.small)
            procs.close()
        if args.only in (None, "fake"):
            bench.attempt("streaming and upload", bench.with_fake)
            procs.close()
        if args.only in (None, "fleet"):
            bench.attempt("fleet", bench.fleet)
    except KeyboardInterrupt:
        print("interrupted: stopping every process this run started", file=sys.stderr)
        return 130
    finally:
        procs.close()
        if args.keep:
            print(f"logs and configs kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)

    # Whatever else ran on the machine meanwhile (another test suite) competed for the cores.
    elapsed = time.time() - started
    others = max(0.0, (machine_busy_seconds() - machine0) - (own_busy_seconds() - own0))
    others_pct = 100 * others / (elapsed * (os.cpu_count() or 1))
    print(
        f"CPU used by other processes during the run: {others:.1f} core-seconds "
        f"({others_pct:.0f} % of the machine)"
        + ("  -- expect noisy figures" if others_pct > NOISY_OTHERS_PCT else ""),
        flush=True,
    )
    doc: dict[str, Any] = {
        "command": command,
        "mode": ("quick" if args.quick else "full") + (f"-only-{args.only}" if args.only else ""),
        "plan": asdict(plan),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "elapsed_s": round(elapsed, 1),
        "environment": {
            **environment(),
            "cpu_busy_before_pct": round(busy, 1),
            "cpu_others_during_pct": round(others_pct, 1),
        },
        "processes": bench.commands,
        "results": bench.results,
        "failures": bench.failures,
    }
    doc["figures"] = report.figures(bench.results)
    RESULTS.mkdir(exist_ok=True)
    out = (
        RESULTS
        / f"bench-{time.strftime('%Y%m%d-%H%M%S', time.localtime(started))}-{doc['mode']}.json"
    )
    out.write_text(json.dumps(doc, indent=2) + "\n")
    print()
    print(report.markdown(doc))
    print(f"JSON: {out}")
    if bench.failures:
        print(
            f"\nFAILED: {len(bench.failures)} part(s) of the run could not be measured:",
            file=sys.stderr,
        )
        for failure in bench.failures:
            print(f"  - {failure.splitlines()[0]}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
