"""What ``OLLANA_LOG=debug`` and ``trace`` show on a real LAN (issue 10 item 5): each discovery
packet sent and received (type, node, source, interface), each peer state change with its reason,
the TLS vetting steps, each routing decision and upstream connection reuse; at ``trace`` the
packet bytes. Never a prompt or an answer, at any level (the client runs at ``trace``)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.lab.netns import Host, Lab
from tests.lab.ollanalan import Lan, Node, clientops, pair, start_fake, start_ollana

pytestmark = pytest.mark.lab

MARKER = "debug-log-marker-prompt-7f3a1c"

_GENERATE = """
import sys, ollama
app = ollama.Client(host="http://127.0.0.1:11434")
for _ in range(2):
    app.generate(model="llama3.2:1b", prompt=sys.argv[1])
print("ok")
"""


def events(host: Host) -> list[dict[str, Any]]:
    out = []
    for line in host.read_log(f"ollana-{host.name}").splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


def named(entries: list[dict[str, Any]], event: str) -> list[dict[str, Any]]:
    return [e for e in entries if e.get("event") == event]


def test_debug_and_trace_say_what_happens_and_never_a_prompt(lab: Lab) -> None:
    shost = lab.add_host("s1")
    server = Node(shost, fake=start_fake(shost))
    server.proc = start_ollana(shost, trust="devices")  # the lab's default level: debug
    chost = lab.add_host("c")
    client = Node(chost, proc=start_ollana(chost, trust="devices", env={"OLLANA_LOG": "trace"}))
    pair(Lan(lab, [server], client))
    assert clientops(chost, "wait-peers", "--count", "1", "--healthy", "--timeout", "20")["ok"]
    assert chost.python(_GENERATE, [MARKER]).stdout.strip() == "ok"

    c, s = events(chost), events(shost)
    # Discovery packets, both ways, with type, node, source / destination and interface.
    heard = named(c, "packet_received")
    assert any(e["type"] == "heartbeat" and e["source"].startswith(shost.ip) and e["interface"] == "eth0"
               for e in heard), heard[:5]
    assert all({"type", "node", "interface"} <= e.keys() for e in heard)
    assert any(e["type"] == "probe" for e in named(c, "packet_sent"))
    assert any(e["type"] == "heartbeat" for e in named(s, "packet_sent"))
    # trace: the bytes of each packet, in hex.
    assert all(bytes.fromhex(e["hex"]) for e in named(c, "packet_received_bytes")[:20])
    assert named(c, "packet_received_bytes"), "no packet bytes at trace"
    assert not named(s, "packet_received_bytes"), "bytes are trace only; the server runs at debug"
    # Peer state changes, each with its reason.
    added = named(c, "peer_added")
    assert added and all(e["reason"] for e in added), added
    # TLS vetting: the server's certificate checked against the device ID it announced.
    assert named(c, "vetting_started") and named(c, "vetting_done"), "no vetting steps"
    # Routing decisions and upstream connection reuse.
    routed = [e for e in named(c, "routed") if e.get("path") == "/api/generate"]
    assert len(routed) == 2 and all(e["chosen"] and "candidates" in e for e in routed), routed
    reuse = named(c, "upstream_connection")
    assert reuse and any(e["reused"] for e in reuse), reuse[-5:]
    # Never a prompt or an answer, on either side.
    for host in (chost, shost):
        assert MARKER not in host.read_log(f"ollana-{host.name}"), f"{host.name} logged the prompt"
