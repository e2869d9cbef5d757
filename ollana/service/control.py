"""``ollana stop`` and ``ollana status``: a running ollana, reached through its pid file only.

Neither ever looks a process up by name: ``stop`` signals the process holding the pid file's
lock, and ``status`` asks the node at the address its state file records.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import ssl
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Final

from ollana.config import Endpoint
from ollana.errors import print_error
from ollana.service.pidfile import Liveness, is_held, parse_pid, read_fd, read_pid_file, read_state
from ollana.service.record import RuntimeRecord, live
from ollana.trust.tls import client_tls

# ``stop`` waits the daemon's grace period plus this margin for it to exit.
STOP_MARGIN: Final = 5.0
DEFAULT_GRACE: Final = 10.0
STATUS_TIMEOUT: Final = 2.0
# LSB init-script status codes for ``status``; ``stop`` exits 0 or 1 (4 when not allowed).
EXIT_OK: Final = 0
EXIT_FAILED: Final = 1
EXIT_DEAD: Final = 1
EXIT_NOT_RUNNING: Final = 3
EXIT_UNKNOWN: Final = 4


def stop(pid_file: Path, *, timeout: float | None = None, poll: float = 0.05) -> int:
    """``ollana stop``: SIGTERM the ollana holding ``pid_file``; wait for it to exit.

    Waits the daemon's grace period plus a margin (or ``timeout``), then reports failure rather
    than pretending. Signals only the process that holds the pid file's lock; removes nothing.
    """
    try:
        fd = os.open(pid_file, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        print(f"ollana is not running (no pid file {pid_file})")
        return EXIT_OK
    except OSError as exc:
        print_error(f"cannot read the pid file {pid_file}: {exc.strerror}")
        return EXIT_UNKNOWN
    try:
        if not is_held(fd):
            pid = parse_pid(read_fd(fd))
            if pid is None:
                print(not_a_pid(pid_file))
            else:
                print(f"ollana is not running (the pid file {pid_file} is stale: pid {pid} no longer runs)")
            return EXIT_OK
        pid = _wait_for_pid(fd)
        if pid is None:
            print_error(f"the pid file {pid_file} is locked but names no pid")
            return EXIT_FAILED
        state = read_state(pid_file) or {}
        grace = float(state.get("grace_s") or DEFAULT_GRACE)
        limit = timeout if timeout is not None else grace + STOP_MARGIN
        # The lock is released when the process is gone (the kernel closes its files).
        return _terminate(pid, limit, lambda: is_held(fd), poll, " (see its log)")
    finally:
        os.close(fd)


def _wait_for_pid(fd: int, patience: float = 1.0) -> int | None:
    # A daemon that just locked its pid file writes its pid an instant later.
    deadline = time.monotonic() + patience
    while True:
        pid = parse_pid(read_fd(fd))
        if pid is not None or time.monotonic() >= deadline:
            return pid
        time.sleep(0.02)


Fetch = Callable[[Endpoint], dict[str, Any]]


def fetch_status(endpoint: Endpoint, tls: ssl.SSLContext | None = None) -> dict[str, Any]:
    """GET /ollana/v1/status from the node (never through an HTTP proxy); over TLS with ``tls``."""
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(endpoint.host, endpoint.host)
    conn: http.client.HTTPConnection = (
        http.client.HTTPSConnection(host, endpoint.port, timeout=STATUS_TIMEOUT, context=tls)
        if tls is not None
        else http.client.HTTPConnection(host, endpoint.port, timeout=STATUS_TIMEOUT)
    )
    try:
        conn.request("GET", "/ollana/v1/status", headers={"Accept": "application/json"})
        resp = conn.getresponse()
        body = resp.read()
    finally:
        conn.close()
    if resp.status != 200:
        raise OSError(f"HTTP {resp.status}: {_error_of(body)}")
    data = json.loads(body)
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    return data


def _error_of(body: bytes) -> str:
    try:
        doc = json.loads(body)
    except ValueError:
        return body[:200].decode("utf-8", "replace")
    return str(doc.get("error", doc)) if isinstance(doc, dict) else str(doc)


def own_tls(state: Mapping[str, Any]) -> ssl.SSLContext:
    """A TLS server node (trust mode devices) is reached with its own certificate and key, pinned
    to that certificate: only who can read the node's key can ask it."""
    cert, key = str(state.get("cert_file") or ""), str(state.get("key_file") or "")
    with open(cert, encoding="ascii") as f:
        pin = f.read()
    return client_tls(pin, (cert, key))


def not_a_pid(pid_file: Path) -> str:
    """A pid file nobody holds that names no pid (empty, or garbage): no ollana wrote it as it is."""
    return f"ollana is not running; the pid file {pid_file} does not hold a pid (garbage): remove it"


def status(pid_file: Path, *, fetch: Fetch | None = None) -> int:
    """``ollana status``: print whether ollana runs and what it does; return an LSB status code."""
    try:
        st = read_pid_file(pid_file)
    except OSError as exc:
        print_error(f"cannot read the pid file {pid_file}: {exc.strerror}")
        return EXIT_UNKNOWN
    if st.liveness is Liveness.NOT_RUNNING:
        print(f"ollana is not running (no pid file {pid_file})")
        return EXIT_NOT_RUNNING
    if st.liveness is Liveness.DEAD:
        if st.pid is None:
            print(not_a_pid(pid_file))
        else:
            print(f"ollana is not running, but its pid file {pid_file} remains (pid {st.pid} is gone)")
        return EXIT_DEAD
    state = read_state(pid_file)
    print(f"ollana is running: pid {st.pid}")
    if state is None or state.get("pid") != st.pid:
        print("  state:    starting (not serving yet)")
        print(f"  pid file: {pid_file}")
        return EXIT_OK
    listen = Endpoint(str(state.get("listen_host", "127.0.0.1")), int(state.get("listen_port", 0)))
    if fetch is None:
        fetch = _fetch_for(state)
    for line in describe_node(state, listen, fetch):
        print("  " + line)
    print(f"  pid file: {pid_file}")
    if state.get("log_file"):
        print(f"  log file: {state['log_file']}")
    _print_places(state)
    return EXIT_OK


def _print_places(state: Mapping[str, Any]) -> None:
    if state.get("state_dir"):
        print(f"  state:    {state['state_dir']}")
    if state.get("control_socket"):
        print(f"  control:  {state['control_socket']}")


def status_of(rec: RuntimeRecord, *, fetch: Fetch | None = None) -> int:
    """``ollana status`` of a node without a pid file (started in the foreground), found by its
    runtime record."""
    print(f"ollana is running: pid {rec.pid}, in the foreground (`ollana serve`, no pid file)")
    state = rec.document()
    listen = Endpoint(rec.listen_host, rec.listen_port)
    for line in describe_node(state, listen, fetch or _fetch_for(state)):
        print("  " + line)
    print(f"  log:      {rec.log_file or 'standard error of the terminal that started it'}")
    _print_places(state)
    print(f"  record:   {rec.path}")
    return EXIT_OK


def stop_record(rec: RuntimeRecord, *, timeout: float | None = None, poll: float = 0.05,
                alive: Callable[[RuntimeRecord], bool] = live) -> int:
    """``ollana stop`` of a node without a pid file: SIGTERM the pid its live record names (the
    record's process start time rules out a reused pid), then wait for it to exit."""
    limit = timeout if timeout is not None else rec.grace_s + STOP_MARGIN
    return _terminate(rec.pid, limit, lambda: alive(rec), poll)


def _terminate(pid: int, limit: float, running: Callable[[], bool], poll: float, hint: str = "") -> int:
    """SIGTERM ``pid``, then wait up to ``limit`` seconds while ``running()`` says it still runs."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        pass  # it is exiting already: wait below
    except PermissionError:
        print_error(f"not allowed to stop ollana (pid {pid}): it runs as another user; try with sudo")
        return EXIT_UNKNOWN
    started = time.monotonic()
    while running():
        if time.monotonic() - started >= limit:
            print_error(f"ollana (pid {pid}) is still running {limit:g} s after SIGTERM; it did not stop{hint}")
            return EXIT_FAILED
        time.sleep(poll)
    print(f"ollana stopped (pid {pid}, {time.monotonic() - started:.1f} s)")
    return EXIT_OK


def _fetch_for(state: Mapping[str, Any]) -> Fetch:
    if state.get("scheme") != "https":
        return fetch_status

    def fetch(endpoint: Endpoint) -> dict[str, Any]:
        try:
            tls = own_tls(state)
        except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError; a non-ASCII file, ValueError
            why = getattr(exc, "strerror", None) or exc
            raise OSError(f"cannot use the node's key to ask it over TLS: {why}") from exc
        return fetch_status(endpoint, tls)

    return fetch


def describe_node(state: Mapping[str, Any], listen: Endpoint, fetch: Fetch) -> list[str]:
    try:
        node = fetch(listen)
    except (OSError, ValueError, http.client.HTTPException) as exc:
        return [
            f"role:     {state.get('role', '?')}",
            f"listen:   {listen}",
            f"endpoint: not answering ({exc or type(exc).__name__})",
        ]
    lines = [
        f"role:     {node.get('role', '?')}",
        f"listen:   {node.get('listen', listen)}",
        f"uptime:   {format_duration(float(node.get('uptime_s') or 0))}",
    ]
    if node.get("trust"):
        device = f" (this device: {str(node['device_id'])[:7]})" if node.get("device_id") else ""
        lines.append(f"trust:    {node['trust']}{device}")
    upstream = node.get("upstream")
    if isinstance(upstream, dict):
        health = "up" if upstream.get("healthy") else f"down ({upstream.get('error') or 'not answering'})"
        version = f", version {upstream['version']}" if upstream.get("version") else ""
        lines.append(f"ollama:   {upstream.get('url', '?')} ({health}{version})")
    peers = node.get("peers")
    if isinstance(peers, list):
        healthy = sum(1 for p in peers if isinstance(p, dict) and p.get("healthy"))
        lines.append(f"peers:    {len(peers)} ({healthy} healthy)")
    else:
        lines.append("peers:    - (a server does not track peers)")
    return lines


def format_duration(seconds: float) -> str:
    s = int(seconds)
    days, s = divmod(s, 86400)
    hours, s = divmod(s, 3600)
    minutes, s = divmod(s, 60)
    if days:
        return f"{days}d {hours:02d}h {minutes:02d}m"
    if hours:
        return f"{hours}h {minutes:02d}m {s:02d}s"
    if minutes:
        return f"{minutes}m {s:02d}s"
    return f"{seconds:.1f}s" if seconds < 10 else f"{s}s"
