"""Learned peers, the pure parts: what a server keeps of the servers it heard, the document it
serves, and what a client makes of a listing."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest

from ollana.discovery.known import (
    KnownServer,
    KnownServers,
    parse_document,
    reachable_beyond_link,
    stale_learned,
    to_learn,
)
from ollana.discovery.packet import TRUST_DEVICES, TRUST_OPEN, Goodbye, Heartbeat
from ollana.trust.identity import id_from_bytes


def device(n: int) -> bytes:
    return hashlib.sha256(bytes([n])).digest()


def hb(n: int, *, trust: str = TRUST_DEVICES, port: int = 11435, interval_ms: int = 2000) -> Heartbeat:
    return Heartbeat(
        node_id=bytes([n]) * 16, instance_id=b"i" * 8, seq=1, proxy_port=port, interval_ms=interval_ms,
        scheme="https", hostname=f"box{n}", trust=trust, device_id=device(n) if trust == TRUST_DEVICES else None,
    )


def test_a_server_lists_the_devices_servers_it_heard_and_forgets_them() -> None:
    known = KnownServers()
    known.heard(hb(1), "10.78.0.5", 0.0)
    known.heard(hb(2, trust=TRUST_OPEN), "10.78.0.6", 0.0)  # open mode: nothing a devices client could use
    known.heard(hb(3), "fe80::1%eth0", 0.0)  # link-local: meaningless beyond the link
    known.heard(hb(4), "127.0.0.1", 0.0)
    assert [s.node_id for s, _ in known.listed(1.0)] == [(bytes([1]) * 16).hex()]
    doc = known.document(1.0)
    assert doc == {"servers": [{
        "node_id": (bytes([1]) * 16).hex(), "device_id": id_from_bytes(device(1)), "address": "10.78.0.5",
        "port": 11435, "hostname": "box1", "last_seen_s_ago": 1.0,
    }]}
    # Three intervals without a heartbeat: gone. A goodbye: gone at once.
    assert known.listed(6.1) == []
    known.heard(hb(1), "10.78.0.5", 10.0)
    known.heard(Goodbye(bytes([1]) * 16, b"i" * 8, 2), "10.78.0.5", 10.5)
    assert known.listed(10.5) == []


def test_the_table_is_bounded_keeping_the_most_recently_heard() -> None:
    known = KnownServers(limit=3)
    for n in range(1, 6):
        known.heard(hb(n), f"10.0.0.{n}", float(n))
    known.heard(hb(3), "10.0.0.33", 6.0)  # heard again (at a new address): newest
    assert len(known) == 3
    assert [(s.hostname, s.host) for s, _ in known.listed(6.0)] == [
        ("box4", "10.0.0.4"), ("box5", "10.0.0.5"), ("box3", "10.0.0.33"),
    ]


def test_parse_document_skips_bad_entries_and_bounds_the_rest() -> None:
    good = {"node_id": "ab" * 16, "device_id": id_from_bytes(device(1)), "address": "10.0.0.9", "port": 11435,
            "hostname": "box\x1b[31m"}
    bad: list[Any] = [
        1, {}, {**good, "port": 0}, {**good, "port": True}, {**good, "device_id": "NOPE"},
        {**good, "node_id": "zz"}, {**good, "address": "169.254.1.1"}, {**good, "address": "gpu-box"},
    ]
    servers = parse_document({"servers": [*bad, good]})
    assert servers == [KnownServer("ab" * 16, id_from_bytes(device(1)), "10.0.0.9", 11435, "box[31m")]
    assert len(parse_document({"servers": [good] * 100}, limit=10)) == 10
    for doc in ([], {"servers": {}}, None):
        with pytest.raises(ValueError):
            parse_document(doc)


def test_reachable_beyond_link() -> None:
    assert reachable_beyond_link("10.78.0.5") and reachable_beyond_link("fd77::5")
    for host in ("127.0.0.1", "::1", "169.254.3.4", "fe80::1%eth0", "0.0.0.0", "239.255.11.36", "name"):
        assert not reachable_beyond_link(host)


def test_to_learn_leaves_out_what_the_client_knows_and_itself() -> None:
    me, a, b, c = (id_from_bytes(device(n)) for n in range(4))
    listed = [
        KnownServer("01", me, "10.0.0.1", 1),  # this device
        KnownServer("02", a, "10.0.0.2", 1),  # its node is in the table (multicast)
        KnownServer("03", b, "10.0.0.3", 1),  # its device is in the table (a saved peer)
        KnownServer("04", c, "10.0.0.4", 1),
        KnownServer("04", c, "10.0.0.4", 1),  # listed by two servers: once
    ]
    assert to_learn(listed, {"02"}, {b}, me) == [KnownServer("04", c, "10.0.0.4", 1)]


def test_stale_learned() -> None:
    # Listed recently: stays, whatever its state.
    assert not stale_learned(9.0, 10.0, 3.0, healthy=False, usable=False)
    # Not listed any more: a paired server that answers stays; others go.
    assert not stale_learned(1.0, 10.0, 3.0, healthy=True, usable=True)
    assert stale_learned(1.0, 10.0, 3.0, healthy=False, usable=True)
    assert stale_learned(None, 10.0, 3.0, healthy=True, usable=False)
