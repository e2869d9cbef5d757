"""Load generators: hey for concurrent small requests, and small purpose-built clients for
sequential latency, streaming arrival times and a large upload. All of them talk to 127.0.0.1
only, and every loop is bounded both in count and in time.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import random
import re
import shutil
import socket
import statistics
import subprocess
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any, Final

import aiohttp

from tests.bench.procs import HOST, BenchError

HEY: Final = shutil.which("hey")
MIB: Final = 1024 * 1024


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty list."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), math.ceil(q / 100 * len(ordered))))
    return ordered[rank - 1]


# -- concurrent small requests: hey --------------------------------------------------------------


@dataclass(slots=True)
class HeyResult:
    command: str
    requests: int
    seconds: float  # hey's own "Total"
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int
    statuses: dict[str, int]


def combine_hey(rounds: list[HeyResult]) -> dict[str, Any]:
    """Rounds of one topology: throughput over all of them, latency percentiles averaged."""
    requests = sum(r.requests for r in rounds)
    return {
        "rounds": len(rounds),
        "requests": requests,
        "rps": requests / sum(r.seconds for r in rounds),
        "p50_ms": statistics.fmean(r.p50_ms for r in rounds),
        "p99_ms": statistics.fmean(r.p99_ms for r in rounds),
        "errors": sum(r.errors for r in rounds),
        "command": rounds[0].command,
        "per_round": [asdict(r) for r in rounds],
    }


_HEY_RPS = re.compile(r"Requests/sec:\s+([\d.]+)")
_HEY_TOTAL = re.compile(r"Total:\s+([\d.]+) secs")
_HEY_PCT = re.compile(r"^\s+(\d+)% in ([\d.]+) secs", re.MULTILINE)
_HEY_STATUS = re.compile(r"^\s+\[(\d+)\]\s+(\d+) responses", re.MULTILINE)
_HEY_ERROR = re.compile(r"^\s+\[(\d+)\]\s+(.+)$", re.MULTILINE)


def run_hey(
    port: int,
    path: str,
    *,
    concurrency: int,
    seconds: float,
    post_file: str | None = None,
    headers: tuple[str, ...] = (),
) -> HeyResult:
    """``post_file``: POST that file's bytes as a JSON body (else GET); ``headers``: more
    request headers, "Name: value"."""
    if HEY is None:
        raise BenchError("hey is not installed (apt-get install hey)")
    url = f"http://{HOST}:{port}{path}"
    # -cpus 1: the load generator keeps to one of the two cores, the proxies get the other.
    argv = [HEY, "-z", f"{seconds:g}s", "-c", str(concurrency), "-cpus", "1", "-t", "10"]
    if post_file is not None:
        argv += ["-m", "POST", "-T", "application/json", "-D", post_file]
    for header in headers:
        argv += ["-H", header]
    argv.append(url)
    try:
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=seconds + 30, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise BenchError(f"hey did not finish in {seconds + 30:g} s: {' '.join(argv)}") from exc
    out = done.stdout
    rps = _HEY_RPS.search(out)
    if done.returncode != 0 or rps is None:
        raise BenchError(
            f"hey failed ({done.returncode}): {' '.join(argv)}\n{out[-2000:]}{done.stderr[-2000:]}"
        )
    pct = {int(p): float(s) * 1000 for p, s in _HEY_PCT.findall(out)}
    statuses: dict[str, int] = {}
    errors = 0
    status_part, _, error_part = out.partition("Error distribution:")
    for code, count in _HEY_STATUS.findall(status_part):
        statuses[code] = int(count)
    for count, _msg in _HEY_ERROR.findall(error_part):
        errors += int(count)
    total = sum(statuses.values())
    bad = total - statuses.get("200", 0) + errors
    if total == 0 or bad > max(0, total // 100):
        raise BenchError(f"hey: {bad} failed requests of {total + errors} to {url}:\n{out[-1500:]}")
    took = _HEY_TOTAL.search(out)
    seconds_taken = float(took.group(1)) if took else total / float(rps.group(1))
    return HeyResult(
        " ".join(argv),
        total,
        seconds_taken,
        float(rps.group(1)),
        pct.get(50, float("nan")),
        pct.get(99, float("nan")),
        errors,
        statuses,
    )


# -- sequential latency: one keep-alive connection, one request at a time ----------------------------


@dataclass(slots=True)
class SeqResult:
    requests: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    p95_ms: float


class RawHttp:
    """A minimal HTTP/1.1 keep-alive client: enough for GET with Content-Length or chunked answers,
    and cheap enough that its own cost is small next to a proxy hop's."""

    def __init__(self, port: int, timeout: float = 10.0) -> None:
        self.sock = socket.create_connection((HOST, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.file = self.sock.makefile("rb")
        self.host = f"{HOST}:{port}"

    def close(self) -> None:
        self.file.close()
        self.sock.close()

    def get(self, path: str) -> tuple[int, bytes]:
        self.sock.sendall(
            f"GET {path} HTTP/1.1\r\nHost: {self.host}\r\nAccept: */*\r\n\r\n".encode()
        )
        return self.read_response()

    def read_response(self) -> tuple[int, bytes]:
        status_line = self.file.readline()
        if not status_line:
            raise BenchError("connection closed before a response")
        status = int(status_line.split()[1])
        length: int | None = None
        chunked = False
        while True:
            line = self.file.readline()
            if line in (b"\r\n", b"\n", b""):
                break
            name, _, value = line.decode("latin-1").partition(":")
            name = name.strip().lower()
            if name == "content-length":
                length = int(value.strip())
            elif name == "transfer-encoding" and "chunked" in value.lower():
                chunked = True
        if chunked:
            parts = []
            while True:
                size = int(self.file.readline().split(b";")[0], 16)
                if size == 0:
                    while self.file.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    break
                parts.append(self.file.read(size))
                self.file.readline()
            return status, b"".join(parts)
        return status, self.file.read(length or 0)


def seq_result(samples: list[float]) -> SeqResult:
    return SeqResult(
        len(samples),
        percentile(samples, 50),
        percentile(samples, 90),
        percentile(samples, 99),
        statistics.fmean(samples),
        percentile(samples, 95),
    )


def run_sequential(
    port: int, path: str, *, count: int, seconds: float, warmup: int = 200
) -> list[float]:
    """Latencies in ms of up to ``count`` requests, one at a time, stopping after ``seconds``."""
    client = RawHttp(port)
    try:
        for _ in range(warmup):
            status, _ = client.get(path)
            if status != 200:
                raise BenchError(f"GET {path} on port {port}: status {status}")
        samples: list[float] = []
        deadline = time.perf_counter() + seconds
        clock = time.perf_counter_ns
        for _ in range(count):
            t0 = clock()
            status, _ = client.get(path)
            samples.append((clock() - t0) / 1e6)
            if status != 200:
                raise BenchError(f"GET {path} on port {port}: status {status}")
            if time.perf_counter() > deadline:
                break
    finally:
        client.close()
    return samples


# -- streaming: arrival time of every NDJSON line ---------------------------------------------------


@dataclass(slots=True)
class StreamRun:
    ttfc_ms: float  # request sent -> first complete line
    total_ms: float  # request sent -> end of stream
    lines: int
    arrivals_ms: list[float]  # per line, since the request was sent
    lag_ms: list[float]  # per line: arrival wall clock minus the line's own created_at


@dataclass(slots=True)
class StreamResult:
    runs: int
    lines_per_run: int
    ttfc_p50_ms: float
    total_p50_ms: float
    lag_p50_ms: float | None  # median of (arrival - created_at) over all lines of all runs
    lag_p99_ms: float | None
    arrivals_mean_ms: list[float] = field(default_factory=list)  # per line index, mean over runs
    raw: list[dict[str, Any]] = field(default_factory=list)


def parse_go_time(text: str) -> int | None:
    """RFC 3339 with up to nanoseconds (Go's time.Time JSON) -> ns since the epoch."""
    m = re.fullmatch(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d{1,9}))?(Z|[+-]\d\d:\d\d)", text)
    if m is None:
        return None
    base = datetime.fromisoformat(m.group(1) + ("+00:00" if m.group(3) == "Z" else m.group(3)))
    frac = int((m.group(2) or "0").ljust(9, "0"))
    return int(base.timestamp()) * 1_000_000_000 + frac


async def _one_stream(
    session: aiohttp.ClientSession, url: str, body: dict[str, Any], limit: float
) -> StreamRun:
    arrivals: list[float] = []
    lag: list[float] = []
    buf = b""
    t0 = time.perf_counter()
    async with asyncio.timeout(limit):
        async with session.post(url, json=body) as resp:
            if resp.status != 200:
                raise BenchError(f"POST {url}: status {resp.status}: {(await resp.read())[:300]!r}")
            async for data in resp.content.iter_any():
                now_perf, now_wall = time.perf_counter(), time.time_ns()
                buf += data
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    if not line.strip():
                        continue
                    arrivals.append((now_perf - t0) * 1000)
                    obj = json.loads(line)
                    if "error" in obj:
                        raise BenchError(f"POST {url}: stream error line: {obj['error']}")
                    created = parse_go_time(str(obj.get("created_at", "")))
                    if created is not None:
                        lag.append((now_wall - created) / 1e6)
    total = (time.perf_counter() - t0) * 1000
    if buf.strip():
        raise BenchError(f"POST {url}: stream ended inside a line: {buf[:200]!r}")
    if not arrivals:
        raise BenchError(f"POST {url}: empty stream")
    return StreamRun(arrivals[0], total, len(arrivals), arrivals, lag)


async def _streams(
    ports: dict[str, int], model: str, runs: int, limit: float
) -> tuple[dict[str, list[StreamRun]], dict[str, str]]:
    """``runs`` streams per topology, interleaved (a, b, c, a, b, c, ...) so that a change in the
    machine's load does not land on one topology only. One keep-alive connection per topology.
    A topology that fails leaves the rotation with its error; the others go on."""
    body = {"model": model, "prompt": "Why is the sky blue?", "stream": True}
    sessions = {
        name: aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=1),
            trust_env=False,
            timeout=aiohttp.ClientTimeout(total=None),
        )
        for name in ports
    }
    out: dict[str, list[StreamRun]] = {name: [] for name in ports}
    errors: dict[str, str] = {}
    try:
        for round_ in range(runs + 1):  # round 0 is a warm-up: connections, first-request paths
            for name, port in ports.items():
                if name in errors:
                    continue
                url = f"http://{HOST}:{port}/api/generate"
                try:
                    run = await _one_stream(sessions[name], url, body, limit)
                except (TimeoutError, aiohttp.ClientError, ValueError, BenchError) as exc:
                    errors[name] = f"POST {url}: {type(exc).__name__}: {exc}"
                    continue
                if round_:
                    out[name].append(run)
    finally:
        for session in sessions.values():
            await session.close()
    return {name: runs_ for name, runs_ in out.items() if name not in errors}, errors


def run_streams(
    ports: dict[str, int], model: str, *, runs: int, limit_per_run: float = 30.0
) -> tuple[dict[str, StreamResult], dict[str, str]]:
    done, errors = asyncio.run(_streams(ports, model, runs, limit_per_run))
    results: dict[str, StreamResult] = {}
    for name, streams in done.items():
        try:
            results[name] = summarize_streams(name, streams)
        except BenchError as exc:
            errors[name] = str(exc)
    return results, errors


def summarize_streams(name: str, done: list[StreamRun]) -> StreamResult:
    counts = {r.lines for r in done}
    if len(counts) != 1:
        raise BenchError(f"{name}: streams had different line counts: {sorted(counts)}")
    n = counts.pop()
    lags = [x for r in done for x in r.lag_ms]
    # A created_at that does not move with real time (a constant, a fake clock) is no timestamp.
    usable = (
        len(lags) == n * len(done)
        and max(lags) - min(lags) < 1000
        and abs(statistics.median(lags)) < 1000
    )
    return StreamResult(
        runs=len(done),
        lines_per_run=n,
        ttfc_p50_ms=statistics.median(r.ttfc_ms for r in done),
        total_p50_ms=statistics.median(r.total_ms for r in done),
        lag_p50_ms=percentile(lags, 50) if usable else None,
        lag_p99_ms=percentile(lags, 99) if usable else None,
        arrivals_mean_ms=[statistics.fmean(r.arrivals_ms[i] for r in done) for i in range(n)],
        raw=[asdict(r) for r in done],
    )


# -- upload: a large generated body, streamed with Content-Length -----------------------------------


@dataclass(frozen=True, slots=True)
class Payload:
    """``blocks`` repeats of one pseudo-random 1 MiB block: generated on the fly, never on disk."""

    block: bytes
    blocks: int
    digest: str

    @property
    def size(self) -> int:
        return len(self.block) * self.blocks

    @classmethod
    def make(cls, mib: int, seed: int = 20240611) -> Payload:
        block = random.Random(seed).randbytes(MIB)
        h = hashlib.sha256()
        for _ in range(mib):
            h.update(block)
        return cls(block, mib, h.hexdigest())


@dataclass(slots=True)
class UploadResult:
    bytes: int
    seconds: float
    mb_per_s: float  # 10^6 bytes per second
    status: int
    response: str


def run_upload(port: int, payload: Payload, *, limit: float) -> UploadResult:
    """POST the payload to /api/blobs/sha256:<digest>; time from the first byte sent to the answer."""
    path = f"/api/blobs/sha256:{payload.digest}"
    sock = socket.create_connection((HOST, port), timeout=min(limit, 60.0))
    try:
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\nContent-Type: application/octet-stream\r\n"
            f"Content-Length: {payload.size}\r\nConnection: close\r\n\r\n"
        ).encode()
        view = memoryview(payload.block)
        t0 = time.perf_counter()
        deadline = t0 + limit
        sock.sendall(head)
        try:
            for _ in range(payload.blocks):
                sock.sendall(view)
                if time.perf_counter() > deadline:
                    raise BenchError(f"upload to port {port} exceeded {limit:g} s")
        except (BrokenPipeError, ConnectionResetError):
            pass  # answered early (an error): the status below says why
        reader = RawHttp.__new__(RawHttp)
        reader.sock, reader.file = sock, sock.makefile("rb")
        status, body = reader.read_response()
        seconds = time.perf_counter() - t0
        reader.file.close()
    finally:
        sock.close()
    if status != 201:  # 200 would mean the fake already had the blob and skipped the body
        raise BenchError(f"POST {path} on port {port}: status {status}: {body[:300]!r}")
    return UploadResult(
        payload.size, seconds, payload.size / seconds / 1e6, status, body[:200].decode("latin-1")
    )
