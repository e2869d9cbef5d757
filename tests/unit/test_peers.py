from __future__ import annotations

import itertools
from dataclasses import replace

from ollana.config import Endpoint
from ollana.discovery.packet import Goodbye, Heartbeat
from ollana.discovery.peers import ChangeKind, PeerTable

_SEQ = itertools.count(1)


def hb(node: int, inst: int = 1, port: int = 11435, interval_ms: int = 1000) -> Heartbeat:
    return Heartbeat(bytes([node]) * 16, bytes([inst]) * 8, next(_SEQ), port, interval_ms, hostname=f"h{node}")


def key(node: int) -> str:
    return (bytes([node]) * 16).hex()


def test_add_refresh_and_expire_after_three_missed_heartbeats() -> None:
    t = PeerTable(missed_heartbeats=3)
    change = t.observe(hb(1), "10.0.0.1", now=0.0)
    assert change is not None and change.kind is ChangeKind.ADDED
    assert t.observe(hb(1), "10.0.0.1", now=1.0) is None
    assert t.expire(now=3.9) == []
    gone = t.expire(now=4.01)
    assert [c.kind for c in gone] == [ChangeKind.EXPIRED] and len(t) == 0


def test_goodbye_removes_at_once_but_not_a_restarted_successor() -> None:
    t = PeerTable()
    t.observe(hb(1, inst=1), "10.0.0.1", 0.0)
    restarted = t.observe(hb(1, inst=2), "10.0.0.1", 0.5, proven=True)
    assert restarted is not None and restarted.kind is ChangeKind.RESTARTED
    assert t.goodbye(Goodbye(bytes([1]) * 16, bytes([1]) * 8, 9)) is None
    removed = t.goodbye(Goodbye(bytes([1]) * 16, bytes([2]) * 8, 9))
    assert removed is not None and removed.kind is ChangeKind.REMOVED and len(t) == 0


def test_choice_prefers_lowest_rtt_then_fewest_inflight() -> None:
    t = PeerTable()
    for n in (1, 2, 3):
        t.observe(hb(n), f"10.0.0.{n}", 0.0)
    t.mark_healthy(key(1), 5.0, 0.0)
    t.mark_healthy(key(2), 1.0, 0.0)
    t.mark_healthy(key(3), 1.0, 0.0)
    t.begin(key(2))
    order = [p.key for p in t.candidates(0.0)]
    assert order == [key(3), key(2), key(1)]


def test_choice_is_stable_while_healthy_and_moves_on_failure() -> None:
    t = PeerTable()
    t.observe(hb(1), "10.0.0.1", 0.0)
    t.mark_healthy(key(1), 3.0, 0.0)
    t.settle(key(1))
    t.observe(hb(2), "10.0.0.2", 0.1)
    t.mark_healthy(key(2), 0.5, 0.1)  # faster, but we stay
    assert t.candidates(0.2)[0].key == key(1)
    change = t.mark_failed(key(1), 0.3)
    assert change is not None and change.kind is ChangeKind.UNHEALTHY
    assert [p.key for p in t.candidates(0.3)] == [key(2), key(1)]  # failed one last, still a last resort
    t.settle(key(2))
    t.mark_healthy(key(1), 0.1, 0.4)
    assert t.candidates(0.5)[0].key == key(2)  # recovery does not steal the current server


def test_restart_forgets_failures() -> None:
    t = PeerTable()
    t.observe(hb(1, inst=1), "10.0.0.1", 0.0)
    t.mark_healthy(key(1), 1.0, 0.05)
    t.mark_failed(key(1), 0.1)
    t.observe(hb(1, inst=2), "10.0.0.1", 0.2, proven=True)
    peer = t.get(key(1))
    assert peer is not None and peer.healthy


def test_port_change_and_address_move() -> None:
    t = PeerTable()
    t.observe(hb(1), "10.0.0.1", 0.0)
    assert t.observe(hb(1, port=9999), "10.0.0.1", 0.4) is None  # a claim, not proven yet
    moved = t.observe(hb(1, port=9999), "10.0.0.1", 0.5, proven=True)
    assert moved is not None and moved.kind is ChangeKind.MOVED
    # Heard (and proven) on a second address while the first is fresh: stay put.
    assert t.observe(hb(1, port=9999), "10.0.1.1", 0.6, proven=True) is None
    assert t.get(key(1)).endpoint == Endpoint("10.0.0.1", 9999)  # type: ignore[union-attr]
    # The first address goes quiet past the TTL: move to the one still heard.
    t.observe(hb(1, port=9999), "10.0.1.1", 2.0)
    t.observe(hb(1, port=9999), "10.0.1.1", 3.0)
    moved = t.observe(hb(1, port=9999), "10.0.1.1", 3.6)
    assert moved is not None and t.get(key(1)).endpoint.host == "10.0.1.1"  # type: ignore[union-attr]


def test_static_peers_never_expire_and_inflight_never_negative() -> None:
    t = PeerTable()
    t.add_static(Endpoint("192.0.2.1", 11435), 0.0)
    assert t.add_static(Endpoint("192.0.2.1", 11435), 0.0) is None
    assert t.expire(1e9) == []
    k = "static:192.0.2.1:11435"
    t.end(k)
    assert t.get(k).inflight == 0  # type: ignore[union-attr]


def test_trust_mode_and_checked_device_id_are_kept_and_shown() -> None:
    t = PeerTable()
    beat = Heartbeat(bytes([1]) * 16, bytes([1]) * 8, 1, 11435, 1000, scheme="https",
                     trust="devices", device_id=bytes(32))
    t.observe(beat, "10.0.0.1", 0.0, device_id="A" * 52)
    peer = t.get(key(1))
    assert peer is not None and peer.url == "https://10.0.0.1:11435"
    assert peer.status(0.0)["trust"] == "devices" and peer.status(0.0)["device_id"] == "A" * 52
    # Another key claiming the node while the known one is heard: dropped, even with its
    # certificate checked. Once the known one went quiet (a server that reset its identity and
    # restarted without a goodbye), the new identity, checked, replaces it.
    assert t.observe(beat, "10.0.0.1", 1.0, device_id="B" * 52, proven=True) is None
    assert peer.device_id == "A" * 52
    change = t.observe(beat, "10.0.0.1", 3.5, device_id="B" * 52, proven=True)
    assert change is not None and change.kind is ChangeKind.RESTARTED and peer.device_id == "B" * 52
    static = t.add_static(Endpoint("10.0.0.9", 11435), 0.0, scheme="https", trust="devices")
    assert static is not None and static.peer.url == "https://10.0.0.9:11435" and static.peer.device_id is None


# -- the heartbeat decision, apart from the table ----------------------------------------------


def test_a_heartbeat_is_judged_from_the_entry_and_the_packet_alone() -> None:
    from ollana.discovery.claims import Verdict, judge, moves
    from ollana.discovery.peers import Peer, Source

    peer = Peer(key(1), Endpoint("10.0.0.1", 11435), Source.MULTICAST, 0.0, 0.0, 3.0,
                instance_id=(bytes([1]) * 8).hex(), addresses={"10.0.0.1": 0.0}, seqs={"10.0.0.1": 5})
    beat = replace(hb(1), seq=6)
    assert judge(peer, beat, "10.0.0.1", 1.0, None, check_seq=True) is Verdict.REFRESH
    assert judge(peer, replace(beat, seq=5), "10.0.0.1", 1.0, None, check_seq=True) is Verdict.REPLAY
    assert judge(peer, replace(beat, seq=5), "10.0.0.1", 1.0, None, check_seq=False) is Verdict.REFRESH  # mDNS
    assert judge(peer, hb(1, inst=2), "10.0.0.1", 1.0, None, check_seq=True) is Verdict.NEEDS_PROOF
    assert judge(peer, hb(1, port=11500), "10.0.0.1", 1.0, None, check_seq=True) is Verdict.NEEDS_PROOF
    assert judge(peer, beat, "10.0.0.2", 1.0, None, check_seq=True) is Verdict.NEEDS_PROOF
    # Heard on a second address while the first still speaks: stays; once the first is quiet
    # for a whole TTL (3 intervals of 1 s), it moves.
    assert not moves(peer, "10.0.0.2", 2.9, mdns=False, multicast_heard=True)
    assert moves(peer, "10.0.0.2", 3.1, mdns=False, multicast_heard=True)
    # The decision changed nothing.
    assert peer.endpoint == Endpoint("10.0.0.1", 11435) and peer.addresses == {"10.0.0.1": 0.0}


def test_a_discovered_servers_first_proof_is_its_addition() -> None:
    # Heard at one address, proven at another (the claim check) before any health check answered:
    # the change that makes it proven says so, whether it also moves the entry or not.
    t = PeerTable()
    t.observe(hb(1), "10.0.0.1", 0.0)
    first = t.observe(hb(1), "fe80::1%eth0", 0.1, proven=True)
    assert first is not None and first.first and first.kind is ChangeKind.ADDED
    assert t.observe(hb(1), "fe80::1%eth0", 0.2, proven=True) is None  # once only
