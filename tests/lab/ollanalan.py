"""Helpers to put fake Ollamas and ollana nodes on lab hosts."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from tests.lab.netns import Host, Lab

# Short enough that expiry-based tests stay fast, long enough to be robust on a busy CI box.
INTERVAL = 0.5


@dataclass
class Node:
    host: Host
    proc: subprocess.Popen[bytes] | None = None
    fake: subprocess.Popen[bytes] | None = None
    extra: list[str] = field(default_factory=list)

    @property
    def log_name(self) -> str:
        return f"ollana-{self.host.name}"


FAKE_READY = r"fakeollama listening on"
SERVING = r'"event": "serving"'
# Start-up (Python, imports, keys) takes about a second; while 40 lab hosts start next door it
# took up to 19 s. A wait for a process to come up returns as soon as it does.
START_TIMEOUT = 60.0


def start_fake(host: Host, *args: str, port: int = 11434, wait: bool = True) -> subprocess.Popen[bytes]:
    """``wait=False``: return at once; wait for ``FAKE_READY`` in its log later (many at a time)."""
    proc = host.popen(
        [sys.executable, "-m", "tests.fakeollama", "--host", "127.0.0.1", "--port", str(port), *args],
        log_name=f"fake-{host.name}",
    )
    if wait:
        host.wait_for_line(proc, FAKE_READY, timeout=START_TIMEOUT)
    return proc


def ollana_argv(*args: str, trust: str = "open", interval: float = INTERVAL) -> list[str]:
    """`ollana serve` for the lab. Trust mode open unless asked: the discovery and failover tests
    are about the LAN; tests/lab/test_trust.py (and the official-client suite) pair devices.
    ``interval``: the heartbeat interval (the lab's short one unless asked)."""
    return [sys.executable, "-m", "ollana", "serve", "--heartbeat-interval", str(interval), "--trust", trust, *args]


def start_ollana(
    host: Host, *args: str, env: dict[str, str] | None = None, wait: bool = True, trust: str = "open",
    interval: float = INTERVAL,
) -> subprocess.Popen[bytes]:
    full_env = {"OLLANA_LOG": "debug", "OLLANA_HOME": str(host.dir / "state")}
    full_env.update(env or {})
    argv = ollana_argv("--log-format", "json", *args, trust=trust, interval=interval)
    proc = host.popen(argv, env=full_env, log_name=f"ollana-{host.name}")
    if wait:
        host.wait_for_line(proc, SERVING, timeout=START_TIMEOUT)
    return proc


def clientops(host: Host, *args: str, timeout: float = 60) -> dict[str, Any]:
    res = host.run([sys.executable, "-m", "tests.lab.clientops", *args], timeout=timeout)
    return json.loads(res.stdout.strip().splitlines()[-1])


def event_time(host: Host, event: str, *, after: float, timeout: float = 10) -> float:
    """When (time.time()) the host's ollana logged ``event``, waiting for it if need be."""
    deadline = time.monotonic() + timeout
    while True:
        for line in host.read_log(f"ollana-{host.name}").splitlines():
            if f'"event": "{event}"' not in line:
                continue
            stamp = json.loads(line)["timestamp"]
            at = datetime.fromisoformat(stamp).timestamp()
            if at >= after:
                return at
        if time.monotonic() > deadline:
            raise AssertionError(f"{host.name}: no {event} logged after {after}")
        time.sleep(0.02)


class Watcher:
    """A clientops poller started *before* the event it times: its start-up is not measured."""

    def __init__(self, host: Host, *args: str) -> None:
        self._host = host
        self._name = f"watch-{time.monotonic_ns()}"
        self._proc = host.popen([sys.executable, "-m", "tests.lab.clientops", *args], log_name=self._name)
        host.wait_for_line(self._proc, r"^READY$", timeout=20)

    def result(self, timeout: float = 30) -> dict[str, Any]:
        self._proc.wait(timeout)
        lines = self._host.read_log(self._name).strip().splitlines()
        return json.loads(lines[-1])


def app_get(host: Host, path: str = "/api/tags") -> dict[str, Any]:
    """What an Ollama app on ``host`` gets from 127.0.0.1:11434: its status and JSON body."""
    res = host.python(
        "import httpx,json;"
        f"r=httpx.get('http://127.0.0.1:11434{path}',timeout=15);"
        "print(json.dumps({'status':r.status_code,'body':r.json()}))"
    )
    return dict(json.loads(res.stdout))


def status(host: Host, port: int = 11434, addr: str = "127.0.0.1") -> dict[str, Any]:
    code = (
        "import httpx,sys;"
        f"print(httpx.get('http://{addr}:{port}/ollana/v1/status', timeout=5).text)"
    )
    return json.loads(host.python(code).stdout)


def stop(host: Host, proc: subprocess.Popen[bytes], sig: signal.Signals = signal.SIGTERM) -> float:
    """Signal a process, return the time.time() at which it was signalled."""
    at = time.time()
    proc.send_signal(sig)
    return at


@dataclass
class Lan:
    lab: Lab
    servers: list[Node]
    client: Node


def build(
    lab: Lab, servers: int = 2, *, start_client: bool = True, trust: str = "open",
    fake_args: Sequence[Sequence[str]] = (),
) -> Lan:
    """``fake_args``: the fake Ollama's arguments per server (``--model``, ``--loaded``...), in
    server order; servers without an entry get the fake's defaults."""
    nodes = []
    for i in range(servers):
        host = lab.add_host(f"s{i + 1}")
        node = Node(host)
        node.fake = start_fake(host, *(fake_args[i] if i < len(fake_args) else ()))
        node.proc = start_ollana(host, trust=trust)
        nodes.append(node)
    chost = lab.add_host("c")
    client = Node(chost)
    if start_client:
        client.proc = start_ollana(chost, trust=trust)
    return Lan(lab, nodes, client)


# -- pairing (trust mode devices), with the real commands ----------------------------------------


def device(host: Host, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """`ollana device ARGS` on a host, with the state dir its ollana uses."""
    return host.run([sys.executable, "-m", "ollana", "device", *args], check=check,
                    env={"OLLANA_HOME": str(host.dir / "state")})


def device_json(host: Host, *args: str) -> Any:
    return json.loads(device(host, *args, "--json").stdout)


def device_id(host: Host) -> str:
    return str(device_json(host, "show")["device_id"])


def wait_pending(host: Host, device: str, timeout: float = 10) -> dict[str, Any]:
    """Wait until ``device`` (a full ID) shows in the host's `ollana device pending`."""
    deadline = time.monotonic() + timeout
    while True:
        found = [p for p in device_json(host, "pending") if p["device_id"] == device]
        if found:
            return found[0]
        if time.monotonic() > deadline:
            raise AssertionError(f"{host.name}: {device} never showed in `ollana device pending`")
        time.sleep(0.1)


def pair(lan: Lan) -> float:
    """Pair the client with every server: `pending` then `allow` on each side, by short ID.
    Returns when (time.time()) the last `allow` returned."""
    client_id = device_id(lan.client.host)
    done = time.time()
    for server in lan.servers:
        server_id = device_id(server.host)
        wait_pending(lan.client.host, server_id)
        wait_pending(server.host, client_id)
        device(lan.client.host, "allow", server_id[:7])
        device(server.host, "allow", client_id[:7])
        done = time.time()
    return done
