"""Discovery on networks as they are: IPv6-only LANs, interfaces that are recreated, laptops that
move, and packets that do not come from the link (unicast, routed, forged sources)."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any, Final

import pytest

from tests.lab.netns import SUBNET6, Host, Lab
from tests.lab.ollanalan import (
    Lan,
    Node,
    Watcher,
    clientops,
    pair,
    start_fake,
    start_ollana,
    status,
)

pytestmark = pytest.mark.lab

GROUP4: Final = "239.255.11.36"
GROUP6: Final = "ff02::8011:436"
FORGED: Final = 10_000

# Sends heartbeats that look valid (the real codec) along a plan: each step is a destination, an
# optional source address to send from, and a count; every forged heartbeat has its own node ID.
# Then, from this host's own address to the groups, one genuine-looking heartbeat per family
# (the sentinels): once the client lists them, it has read everything sent before them.
SENDER: Final = """\
import json, os, socket, sys, time
from ollana.discovery.packet import Heartbeat, encode
plan, sentinels = json.loads(sys.argv[1]), json.loads(sys.argv[2])
index = socket.if_nametoindex("eth0")

def sock_for(to, source):
    v6 = ":" in to
    s = socket.socket(socket.AF_INET6 if v6 else socket.AF_INET, socket.SOCK_DGRAM)
    if source:
        s.bind((source, 0))
    if v6:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF, index)
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, 1)
        return s, (to, 11436, 0, index if to.startswith("ff") else 0)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
    s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 1)
    return s, (to, 11436)

sent = 0
for step in plan:
    s, dest = sock_for(step["to"], step.get("from"))
    for i in range(step["count"]):
        hb = Heartbeat(node_id=os.urandom(16), instance_id=os.urandom(8), seq=i, proxy_port=11435,
                       interval_ms=60000, hostname="forged")
        s.sendto(encode(hb), dest)
        sent += 1
        if sent % 50 == 0:
            time.sleep(0.001)  # a fast sender, not one that overruns the socket buffer on purpose
for node, to in sentinels:
    s, dest = sock_for(to, None)
    s.sendto(encode(Heartbeat(node_id=bytes.fromhex(node), instance_id=os.urandom(8), seq=1,
                              proxy_port=11435, interval_ms=60000, hostname="sentinel")), dest)
print(json.dumps({"sent": sent}))
"""


def log_events(host: Host, names: Iterable[str] | None, after: float) -> list[dict[str, Any]]:
    """The host's ollana log lines whose event is one of ``names`` (None: any), stamped at or
    after ``after``, each with its time.time() stamp as ``at``."""
    wanted = None if names is None else set(names)
    out = []
    for line in host.read_log(f"ollana-{host.name}").splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if wanted is not None and entry.get("event") not in wanted:
            continue
        at = datetime.fromisoformat(entry["timestamp"]).timestamp()
        if at >= after:
            out.append({**entry, "at": at})
    return out


def wait_until(what: str, check: Callable[[], Any], timeout: float) -> Any:
    """Poll ``check`` until it returns something true; fail with ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {what}")
        time.sleep(0.02)


def back_after(host: Host, peer: str, after: float) -> float | None:
    """When ``peer`` was added again after being dropped, both after ``after`` (None: not yet)."""
    dropped = None
    for e in log_events(host, ("peer_expired", "peer_removed", "peer_added"), after):
        if e.get("peer") != peer:
            continue
        if e["event"] != "peer_added":
            dropped = e["at"]
        elif dropped is not None:
            return float(e["at"])
    return None


def node_id(node: Node) -> str:
    host = node.host
    return str(status(host, 11435, host.ip if host.ipv4 else "127.0.0.1")["node_id"])


def _on_link6(address: str) -> bool:
    """A link-local IPv6 address with its scope, or one of the lab's ULA (fd77::/64)."""
    if address.startswith("fe80::"):
        return address.endswith("%eth0")
    return address.startswith(SUBNET6) and "%" not in address


def test_ipv6_only_lan_discovery_pairing_tls_streaming(lab: Lab, figure: Callable[..., None]) -> None:
    """No IPv4 address on any LAN interface: discovery, pairing, mutual TLS and the official client
    (streaming included) all go over IPv6: link-local addresses with their scope (heartbeats), or
    the hosts' ULA, which mDNS records name and which is preferred to link-local."""
    servers = []
    for name in ("s1", "s2"):
        host = lab.add_host(name, ipv4=False)
        node = Node(host)
        node.fake = start_fake(host)
        node.proc = start_ollana(host, trust="devices")
        servers.append(node)
    chost = lab.add_host("c", ipv4=False)
    client = Node(chost, proc=start_ollana(chost, trust="devices"))
    lan = Lan(lab, servers, client)
    assert "inet " not in lab.ip_in(chost.ns, "-4", "addr", "show", "dev", "eth0")
    pair(lan)
    assert clientops(chost, "wait-peers", "--count", "2", "--healthy", "--timeout", "10")["ok"]
    out = clientops(chost, "suite", timeout=120)
    assert out["generate_chunks"] > 1 and out["generate_text"]
    assert out["chat_role"] == "assistant" and out["chat_stream_chunks"] > 1
    assert out["blob_digest_ok"] and out["create_status"] == "success"
    assert out["sse_type"].startswith("text/event-stream") and out["sse_done"] == "[DONE]"
    st = status(chost)
    assert st["trust"] == "devices" and len(st["peers"]) == 2
    for peer in st["peers"]:
        # Link-local with its scope, or the ULA; bracketed wherever it is written with a port.
        assert _on_link6(peer["address"]), peer
        assert peer["endpoint"] == f"[{peer['address']}]:11435" and peer["scheme"] == "https"
    assert [i["family"] for i in st["discovery"]["interfaces"]] == ["ipv6"]
    added = [e["address"] for e in log_events(chost, ["peer_added"], 0)]
    assert added and all(a.startswith("[") and a.endswith("]:11435") and _on_link6(a[1:-7]) for a in added), added

    # The client starts again (pairings kept): its first proxied answer, timed from its start.
    assert client.proc is not None
    client.proc.send_signal(signal.SIGTERM)
    client.proc.wait(15)
    watch = Watcher(chost, "wait-ok", "--timeout", "20")
    started = time.time()
    client.proc = start_ollana(chost, trust="devices", wait=False)
    first = watch.result()
    assert first["ok"], first
    lines = log_events(chost, None, started)
    node_start = min(e["at"] for e in lines)  # its first line: the interpreter and imports are done
    serving = next(e["at"] for e in lines if e["event"] == "serving")
    figure("IPv6-only LAN, trust devices: client process start to first proxied answer", first["at"] - started)
    figure("IPv6-only LAN, trust devices: client node start (imports done) to first proxied answer",
           first["at"] - node_start)
    figure("IPv6-only LAN, trust devices: client serving to first proxied answer", first["at"] - serving)
    # The figure is 2 s (reported above). Most of it is Python's start-up and imports (over
    # 1 s of CPU, several seconds on a loaded box, the same for IPv4: test_e2e); the node's own part
    # is separate. Generous bounds on both (issue 10).
    assert first["at"] - node_start <= 5.0, (first, lines)
    assert first["at"] - started <= 10.0, (f"node start to answer {first['at'] - node_start:.3f} s", first)


def test_recreated_interfaces_are_rejoined_within_5s(lab: Lab, figure: Callable[..., None]) -> None:
    """eth0 deleted and created again, same name, MAC and addresses (a new index): on the client,
    the servers learned through it are dropped and are back within 5 s; a server rejoins too."""
    servers = []
    for name in ("s1", "s2"):
        host = lab.add_host(name)
        servers.append(Node(host, fake=start_fake(host), proc=start_ollana(host)))
    chost = lab.add_host("c")
    start_ollana(chost)
    assert clientops(chost, "wait-peers", "--count", "2", "--healthy", "--timeout", "10")["ok"]
    ids = [node_id(n) for n in servers]

    started = time.time()
    chost.recreate_link()
    times = wait_until("both servers dropped and back in the client's table",
                       lambda: all(back_after(chost, i, started) for i in ids) and
                       [back_after(chost, i, started) for i in ids], timeout=20)
    back = max(times) - started
    figure("client's interface deleted and recreated: both servers back in its status (issue: 5 s)", back)
    assert back <= 12.0, back
    assert clientops(chost, "wait-peers", "--count", "2", "--healthy", "--timeout", "5")["ok"]

    # A server's interface: it joins the group again on the new one (it hears the other
    # server's heartbeats there) and announces there; the client keeps or regains it.
    s1 = servers[0].host
    old = {i["family"]: i["index"] for i in status(s1, 11435, s1.ip)["discovery"]["interfaces"]}
    started = time.time()
    s1.recreate_link()

    def rejoined() -> bool:
        links = status(s1, 11435, s1.ip)["discovery"]["interfaces"]
        return sorted(i["family"] for i in links if i["index"] != old[i["family"]] and i["heard"] > 0) == [
            "ipv4", "ipv6"]

    wait_until("the server hears the group on its new interface", rejoined, timeout=20)
    figure("server's interface recreated: the group heard again on the new one (issue: 5 s)", time.time() - started)
    assert time.time() - started <= 12.0
    assert clientops(chost, "wait-peers", "--count", "2", "--healthy", "--timeout", "5")["ok"]


def test_a_laptop_moving_to_another_network_finds_its_servers_within_5s(
    lab: Lab, figure: Callable[..., None]
) -> None:
    here = lab.add_host("s1")
    there = lab.add_host("s3", network=1)
    for host in (here, there):
        start_fake(host)
        start_ollana(host)
    laptop = lab.add_host("c")
    start_ollana(laptop)
    assert clientops(laptop, "wait-peers", "--count", "1", "--healthy", "--timeout", "10")["ok"]
    here_id = node_id(Node(here))
    there_id = str(status(there, 11435, there.ip)["node_id"])

    moved = time.time()
    laptop.move_to(1)
    found = wait_until("the new network's server is added", lambda: [
        e["at"] for e in log_events(laptop, ["peer_added"], moved) if e["peer"] == there_id], timeout=20)[0]
    figure("laptop moved to another network: its server found (issue: 5 s)", found - moved)
    assert found - moved <= 12.0
    # The old network's server goes (its IPv4 address at once, its link-local one by expiry).
    wait_until("the old network's server is dropped", lambda: [
        e for e in log_events(laptop, ["peer_expired", "peer_removed"], moved) if e["peer"] == here_id], timeout=10)
    assert clientops(laptop, "wait-ok", "--path", "/api/version", "--timeout", "5")["ok"]


def test_10000_unicast_routed_or_forged_heartbeats_add_no_peer(lab: Lab, figure: Callable[..., None]) -> None:
    """The issue's attack and its variants, 10,000 heartbeats in all, against an open-mode client:
    unicast to it from the link and from a routed subnet, broadcast, and sent to the groups from
    source addresses that are not on the link. None may add a peer."""
    server = lab.add_host("s1")
    start_fake(server)
    start_ollana(server)
    c = lab.add_host("c")
    start_ollana(c)
    assert clientops(c, "wait-peers", "--count", "1", "--healthy", "--timeout", "10")["ok"]
    lab.add_router("rt")
    routed = lab.add_host("r", network=1)
    x = lab.add_host("x")
    # Source addresses of no subnet of the LAN, on x's own interface, so its kernel sends from them.
    lab.ip_in(x.ns, "addr", "add", "10.99.0.7/32", "dev", "eth0")
    lab.ip_in(x.ns, "addr", "add", "fd99::7/128", "dev", "eth0", "nodad")

    each = FORGED // 8
    from_routed = [
        {"to": c.ip, "count": each},  # the attack: unicast from an off-link address
        {"to": c.ip6, "count": each},
    ]
    from_link = [
        {"to": c.ip, "count": each},  # unicast from the link
        {"to": c.ip6, "count": each},
        {"to": "10.77.0.255", "count": each},  # broadcast
        {"to": "255.255.255.255", "count": each},
        {"to": GROUP4, "from": "10.99.0.7", "count": each},  # the group, from off the subnet
        {"to": GROUP6, "from": "fd99::7", "count": FORGED - 7 * each},  # the group, another prefix
    ]
    sentinels = [["5e" * 16, GROUP4], ["6e" * 16, GROUP6]]
    sent = routed.python(SENDER, args=[json.dumps(from_routed), "[]"], timeout=120)
    total = json.loads(sent.stdout)["sent"]
    sent = x.python(SENDER, args=[json.dumps(from_link), json.dumps(sentinels)], timeout=120)
    total += json.loads(sent.stdout)["sent"]
    assert total == FORGED

    # The sentinels were sent last, each on the socket its family's forgeries came in on: once
    # the client received both (its debug line per accepted packet), it judged everything before.
    # (They are accepted, but never listed: nothing answers for them, issue 9 item 6.)
    def received() -> dict[str, Any] | None:
        log = c.read_log("ollana-c")
        both = all(f'"node": "{n * 16}"' in log for n in ("5e", "6e"))
        return status(c) if both else None

    st = wait_until("the sentinels are received", received, timeout=15)
    peers = {p["id"]: p for p in st["peers"]}
    forged = [p for p in peers.values() if p["hostname"] == "forged"]
    assert not forged, forged
    assert set(peers) == {node_id(Node(server))}, peers
    assert st["unproven_peers"] <= 2  # the sentinels at most: no forgery reached the table
    dropped = st["discovery"]["dropped"]
    figure("forged heartbeats sent (unicast, routed, broadcast, off-link sources)", total, "")
    figure("of them, peers added", len(forged), "")
    figure("of them, dropped as not sent to the group", dropped.get("not_to_group", 0), "")
    figure("of them, dropped as from a source off the link", dropped.get("off_link", 0), "")
    # They reached the rule (the rest, if any, overflowed the socket buffer before it).
    assert dropped.get("not_to_group", 0) + dropped.get("off_link", 0) >= FORGED // 2, dropped
    assert "packet_dropped" in c.read_log("ollana-c")
    # The client is alive and still answers through the genuine server.
    assert clientops(c, "wait-ok", "--path", "/api/version", "--timeout", "5")["ok"]
