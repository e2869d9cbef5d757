"""20 servers and 20 clients on one lab LAN (issue 8's scale figures): every client lists all 20
servers healthy soon after the last client starts, and an idle server's discovery traffic stays
within 2 packets/s.

Heartbeats at ollana's default interval (2 s), so the packet rate is the one a real LAN sees. The
machine is small (2 cores, ~1.3 s of CPU per ollana start): processes are started a phase at a
time (all fakes, then all servers, then all clients), each phase waited for as a whole, never one
process after another. Packets are counted by iptables/ip6tables rules in each server's namespace
(rules without a target: pure counters), read before and after a fixed window.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final

import pytest

from tests.lab.netns import Host, Lab
from tests.lab.ollanalan import FAKE_READY, SERVING, event_time, start_fake, start_ollana

pytestmark = pytest.mark.lab

SERVERS: Final = 20
CLIENTS: Final = 20
HEARTBEAT: Final = 2.0  # ollana's default: the interval the issue's packet rate is about
WINDOW: Final = 20.0  # seconds of counting an idle server's packets
DISCOVERY_PORT: Final = 11436
MDNS_PORT: Final = 5353
# The issue's figures, and the bounds asserted on this shared, busy 2-core box.
ISSUE_SEEN_S: Final = 3.0
SEEN_BOUND_S: Final = 30.0
ISSUE_RATE: Final = 2.0
RATE_BOUND: Final = 2.2
START_TIMEOUT: Final = 120.0

# Polls one client's status from inside its host, with the standard library only (``python -S``
# starts in ~0.1 s, ollana in ~1.3 s): prints READY, then the first time (time.time(), taken when
# the answer arrived) that the status lists exactly ``count`` peers, all healthy, and what it said.
POLLER: Final = """\
import http.client, json, sys, time
count, timeout, period = int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3])
print("READY", flush=True)
deadline = time.monotonic() + timeout
conn, last = None, ""
while True:
    try:
        if conn is None:
            conn = http.client.HTTPConnection("127.0.0.1", 11434, timeout=5)
        conn.request("GET", "/ollana/v1/status")
        body = json.loads(conn.getresponse().read())
        at = time.time()
        peers = body["peers"]
        last = [(p["address"], p["healthy"], p["sources"]) for p in peers]
        if len(peers) == count and all(p["healthy"] for p in peers):
            print(json.dumps({"ok": True, "at": at, "peers": last}), flush=True)
            sys.exit(0)
    except (OSError, ValueError, KeyError, TypeError, http.client.HTTPException) as exc:
        last = repr(exc)
        if conn is not None:
            conn.close()
        conn = None
    if time.monotonic() > deadline:
        print(json.dumps({"ok": False, "at": time.time(), "last": last}), flush=True)
        sys.exit(1)
    time.sleep(period)
"""

# Counting rules in a server's OUTPUT chain, IPv4 and IPv6 alike, in this order: discovery
# (heartbeats and probe answers to the group's port), mDNS to the mDNS port (multicast, and
# unicast to a querier's 5353), mDNS replies to a one-shot querier's own port.
RULES: Final = (
    ("discovery", f"-p udp --dport {DISCOVERY_PORT}"),
    ("mdns", f"-p udp --dport {MDNS_PORT}"),
    ("mdns", f"-p udp --sport {MDNS_PORT} ! --dport {MDNS_PORT}"),
)
TOOLS: Final = ("iptables", "ip6tables")


@dataclass
class Counts:
    at: float
    packets: Counter[str]  # by "discovery/ipv4", "mdns/ipv6"...


def install_counters(host: Host) -> None:
    script = "\n".join(f"{tool} -w -A OUTPUT {rule}" for tool in TOOLS for _, rule in RULES)
    host.run(["sh", "-e", "-c", script], timeout=30)


def read_counters(host: Host) -> Counts:
    script = "\n".join(f"{tool} -w -vnxL OUTPUT\necho @@" for tool in TOOLS)
    before = time.time()
    out = host.run(["sh", "-e", "-c", script], timeout=30).stdout
    at = (before + time.time()) / 2
    packets: Counter[str] = Counter()
    tables = out.split("@@")[: len(TOOLS)]
    for family, table in zip(("ipv4", "ipv6"), tables, strict=True):
        rows = [line.split() for line in table.splitlines() if re.match(r"^\s*\d+\s+\d+\s", line)]
        assert len(rows) == len(RULES), f"{host.name}: unexpected {family} OUTPUT chain:\n{table}"
        for (kind, _), row in zip(RULES, rows, strict=True):
            packets[f"{kind}/{family}"] += int(row[0])
    return Counts(at, packets)


def rates(first: Counts, second: Counts) -> dict[str, float]:
    span = second.at - first.at
    out = {key: (second.packets[key] - first.packets[key]) / span for key in second.packets}
    for kind in ("discovery", "mdns"):
        out[kind] = out[f"{kind}/ipv4"] + out[f"{kind}/ipv6"]
    out["total"] = out["discovery"] + out["mdns"]
    return out


def wait_all(procs: Sequence[tuple[Host, subprocess.Popen[bytes]]], pattern: str, timeout: float) -> None:
    """Wait until every process has printed ``pattern``, under one deadline (they run at once)."""
    deadline = time.monotonic() + timeout
    for host, proc in procs:
        host.wait_for_line(proc, pattern, timeout=max(0.1, deadline - time.monotonic()))


@dataclass
class Poller:
    host: Host
    proc: subprocess.Popen[bytes]
    log: str

    @classmethod
    def start(cls, host: Host, timeout: float, period: float = 0.1) -> Poller:
        log = f"poll-{time.monotonic_ns()}"
        argv = [sys.executable, "-S", "-c", POLLER, str(SERVERS), str(timeout), str(period)]
        return cls(host, host.popen(argv, log_name=log), log)

    def result(self, timeout: float) -> dict[str, Any]:
        self.proc.wait(timeout)
        lines = self.host.read_log(self.log).strip().splitlines()
        return dict(json.loads(lines[-1]), host=self.host.name)


def link_local(lab: Lab, host: Host) -> list[str]:
    out = lab.ip_in(host.ns, "-6", "-br", "addr", "show", "dev", "eth0", "scope", "link")
    return [tok.split("/")[0] for tok in out.split() if tok.startswith("fe80:")]


@pytest.mark.timeout(420)
def test_20_servers_and_20_clients_discover_each_other_and_idle_servers_stay_quiet(
    lab: Lab, figure: Callable[..., None]
) -> None:
    assert set(TOOLS) <= set(lab.firewall_tools()), "counting packets needs iptables and ip6tables"
    t_begin = time.monotonic()

    # Server hosts: counters first (so they count from the start), then a fake Ollama on each,
    # left to start while the client hosts are made.
    servers = [lab.add_host(f"s{i + 1}") for i in range(SERVERS)]
    for host in servers:
        install_counters(host)
    fakes = [(host, start_fake(host, wait=False)) for host in servers]
    clients = [lab.add_host(f"c{i + 1}") for i in range(CLIENTS)]
    wait_all(fakes, FAKE_READY, START_TIMEOUT)

    # Every server at once, then every server serving.
    from_start = [read_counters(host) for host in servers]
    server_procs = [(host, start_ollana(host, wait=False, interval=HEARTBEAT)) for host in servers]
    wait_all(server_procs, SERVING, START_TIMEOUT)
    t_servers = time.monotonic()

    # A poller per client, up before its client (its own start-up is not timed), then every
    # client at once.
    pollers = [Poller.start(host, timeout=START_TIMEOUT + 60) for host in clients]
    wait_all([(p.host, p.proc) for p in pollers], r"^READY$", 60)
    started: dict[str, float] = {}
    client_procs = []
    for host in clients:
        started[host.name] = time.time()
        client_procs.append((host, start_ollana(host, wait=False, interval=HEARTBEAT)))
    wait_all(client_procs, SERVING, START_TIMEOUT)
    serving = {host.name: event_time(host, "serving", after=started[host.name]) for host in clients}
    seen = [p.result(timeout=START_TIMEOUT + 90) for p in pollers]
    missing = [r for r in seen if not r["ok"]]
    assert not missing, f"clients that never listed all {SERVERS} servers healthy: {missing}"
    # Each client lists the 20 servers (by IPv4, the IPv6 ULA or the link-local address).
    addresses = {a: h.name for h in servers for a in (h.ip, h.ip6, *link_local(lab, h))}
    for r in seen:
        names = sorted({addresses.get(a.split("%")[0], a) for a, _, _ in r["peers"]})
        assert names == sorted(h.name for h in servers), f"{r['host']} lists {r['peers']}"

    all_seen = max(r["at"] for r in seen)
    last_serving = max(serving.values())
    last_started = max(started.values())
    first_started = min(started.values())
    paths = Counter(tuple(sources) for r in seen for _, _, sources in r["peers"])
    figure(f"{SERVERS}x{CLIENTS}: last client serving to every client listing all {SERVERS} servers "
           f"healthy (issue: {ISSUE_SEEN_S} s)", all_seen - last_serving)
    figure(f"{SERVERS}x{CLIENTS}: last client process start to every client listing all {SERVERS} "
           "servers healthy", all_seen - last_started)
    figure(f"{SERVERS}x{CLIENTS}: {CLIENTS} client processes started at once: first start to last "
           "serving", last_serving - first_started)
    for sources, n in sorted(paths.items()):
        figure(f"{SERVERS}x{CLIENTS}, when all were listed: servers listed (of {SERVERS * CLIENTS}) by path "
               f"{'+'.join(sources)}", n, "")
    assert all_seen - last_serving < SEEN_BOUND_S, seen
    assert all_seen - last_started < 2 * SEEN_BOUND_S, seen

    # Everything settled: count what each idle server sends over a fixed window.
    begin = [read_counters(host) for host in servers]
    time.sleep(WINDOW)  # a measurement window, not a wait for anything
    end = [read_counters(host) for host in servers]
    window = [rates(a, b) for a, b in zip(begin, end, strict=True)]
    since_start = [rates(a, b) for a, b in zip(from_start, begin, strict=True)]
    one = window[0]  # s1: the one idle server the issue's figure is about
    figure(f"idle server s1, {WINDOW:.0f} s window: discovery heartbeats sent (UDP {DISCOVERY_PORT}, "
           f"IPv4 {one['discovery/ipv4']:.2f} + IPv6 {one['discovery/ipv6']:.2f}; issue: <= {ISSUE_RATE})",
           one["discovery"], "packets/s")
    figure(f"idle server s1, {WINDOW:.0f} s window: mDNS sent (UDP {MDNS_PORT}, IPv4 "
           f"{one['mdns/ipv4']:.2f} + IPv6 {one['mdns/ipv6']:.2f})", one["mdns"], "packets/s")
    figure(f"idle server s1, {WINDOW:.0f} s window: discovery + mDNS", one["total"], "packets/s")
    figure(f"all {SERVERS} servers, {WINDOW:.0f} s window: highest discovery rate",
           max(w["discovery"] for w in window), "packets/s")
    figure(f"all {SERVERS} servers, {WINDOW:.0f} s window: highest mDNS rate",
           max(w["mdns"] for w in window), "packets/s")
    figure(f"all {SERVERS} servers, {WINDOW:.0f} s window: highest discovery + mDNS rate",
           max(w["total"] for w in window), "packets/s")
    first = since_start[0]
    figure(f"server s1, from its start to the window ({begin[0].at - from_start[0].at:.0f} s): discovery "
           f"(IPv4 {first['discovery/ipv4']:.2f} + IPv6 {first['discovery/ipv6']:.2f})", first["discovery"], "packets/s")
    figure(f"server s1, from its start to the window: mDNS (IPv4 {first['mdns/ipv4']:.2f} + IPv6 "
           f"{first['mdns/ipv6']:.2f})", first["mdns"], "packets/s")
    figure(f"all {SERVERS} servers, from their start to the window: highest discovery rate",
           max(s["discovery"] for s in since_start), "packets/s")
    figure(f"all {SERVERS} servers, from their start to the window: highest mDNS rate",
           max(s["mdns"] for s in since_start), "packets/s")
    # Heartbeats every 2 s on each family: 1 packet/s; nothing probes during the window.
    assert 0 < one["discovery"] <= RATE_BOUND, one
    loud = [(h.name, w) for h, w in zip(servers, window, strict=True) if w["discovery"] > RATE_BOUND]
    assert not loud, loud

    # Still settled after the window: every client lists the same 20 servers, all healthy.
    after = [Poller.start(host, timeout=30) for host in clients]
    settled = [p.result(timeout=60) for p in after]
    assert all(r["ok"] for r in settled), [r for r in settled if not r["ok"]]
    paths = Counter(tuple(sources) for r in settled for _, _, sources in r["peers"])
    for sources, n in sorted(paths.items()):
        figure(f"{SERVERS}x{CLIENTS}, after the window: servers listed (of {SERVERS * CLIENTS}) by path "
               f"{'+'.join(sources)}", n, "")
    assert all(proc.poll() is None for _, proc in server_procs + client_procs)
    figure(f"{SERVERS}x{CLIENTS}: servers serving after (from the lab's start)", t_servers - t_begin)
    figure(f"{SERVERS}x{CLIENTS}: whole test body", time.monotonic() - t_begin)
