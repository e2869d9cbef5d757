"""Forged discovery traffic (issue 9): the pure rules, without sockets."""

from __future__ import annotations

import itertools
import math
import os
from dataclasses import replace
from types import SimpleNamespace
from typing import Any

from ollana.config import Endpoint
from ollana.discovery.claims import (
    MAX_INTERVAL,
    MIN_INTERVAL,
    Claim,
    Verdict,
    clamp_interval,
    seq_newer,
)
from ollana.discovery.packet import Heartbeat
from ollana.discovery.peers import MAX_UNPROVEN, ChangeKind, PeerTable, Source, listed, routable
from ollana.discovery.vetqueue import Lane, Limits, Offer, VetQueue
from ollana.ratelimit import PerKeyAndTotal

_SEQ = itertools.count(1)


def hb(node: int | bytes, inst: int = 1, port: int = 11435, interval_ms: int = 1000, **kw: Any) -> Heartbeat:
    node_id = node if isinstance(node, bytes) else bytes([node]) * 16
    return Heartbeat(node_id, bytes([inst]) * 8, next(_SEQ), port, interval_ms, **kw)


def key(node: int) -> str:
    return (bytes([node]) * 16).hex()


# -- the vetting queue (item 1) -------------------------------------------------------------------


def test_known_rechecks_never_wait_behind_unknown_ones() -> None:
    q: VetQueue[str] = VetQueue(Limits(known_slots=1, unknown_slots=2, max_waiting=100, rate=1000, burst=1000))
    for n in range(50):
        assert q.offer(f"u{n}", f"10.0.0.{n}", Lane.UNKNOWN, 0.0)[0] is Offer.QUEUED
    assert q.offer("paired", "10.0.1.1", Lane.KNOWN, 0.0) == (Offer.QUEUED, None)
    assert q.take() == ("paired", Lane.KNOWN)  # first, though 50 unknown ones came before it
    assert q.take() == ("u0", Lane.UNKNOWN) and q.take() == ("u1", Lane.UNKNOWN)
    assert q.take() is None  # the unknown lane's slots are full...
    assert q.offer("paired2", "10.0.1.2", Lane.KNOWN, 0.0)[0] is Offer.QUEUED
    assert q.take() is None  # ...and the known lane's one slot too
    q.done("paired")
    assert q.take() == ("paired2", Lane.KNOWN)  # unknown checks hung on their timeouts do not block it


def test_unknown_claims_are_rate_limited_per_source_and_in_all() -> None:
    q: VetQueue[str] = VetQueue(Limits(max_waiting=1000, source_gap=1.0, rate=10.0, burst=10.0))
    assert q.offer("a", "10.0.0.1", Lane.UNKNOWN, 0.0)[0] is Offer.QUEUED
    assert q.offer("b", "10.0.0.1", Lane.UNKNOWN, 0.5)[0] is Offer.SOURCE_RATE
    assert q.offer("a", "10.0.0.1", Lane.UNKNOWN, 5.0)[0] is Offer.DUPLICATE
    assert q.offer("c", "10.0.0.1", Lane.UNKNOWN, 1.0)[0] is Offer.QUEUED
    # 100 sources at once: the bucket (10, refilled at 10/s) is full again (refilled at 10/s): 9 more pass, then it refuses.
    got = [q.offer(f"s{n}", f"10.1.0.{n}", Lane.UNKNOWN, 1.0)[0] for n in range(100)]
    assert got.count(Offer.QUEUED) == 9 and got.count(Offer.GLOBAL_RATE) == 91
    assert q.offer("later", "10.2.0.1", Lane.UNKNOWN, 1.5)[0] is Offer.QUEUED  # refilled: 5 tokens
    assert q.dropped["global_rate"] == 91 and q.dropped["source_rate"] == 1


def test_the_unknown_queue_is_bounded_and_drops_the_oldest() -> None:
    q: VetQueue[int] = VetQueue(Limits(unknown_slots=0, max_waiting=3, rate=1000, burst=1000))
    evicted = [q.offer(n, f"10.0.0.{n}", Lane.UNKNOWN, 0.0)[1] for n in range(6)]
    assert evicted == [None, None, None, 0, 1, 2] and len(q) == 3


# -- what a heartbeat may do (items 2, 5, 6) ------------------------------------------------------


def test_interval_clamped_and_sequence_numbers_compared_with_wrap() -> None:
    assert clamp_interval(1_275_068_916) == MAX_INTERVAL == 60.0
    assert clamp_interval(1) == MIN_INTERVAL == 0.2
    assert clamp_interval(2000) == 2.0
    assert seq_newer(5, None) and seq_newer(6, 5) and not seq_newer(5, 5) and not seq_newer(4, 5)
    assert seq_newer(0, 0xFFFFFFFF) and not seq_newer(0xFFFFFFFF, 0)  # wraps at 2**32


def test_a_forged_interval_cannot_keep_a_phantom_listed() -> None:
    t = PeerTable(missed_heartbeats=3)
    t.observe(hb(1, interval_ms=1_275_068_916), "10.0.0.1", 0.0, proven=True)
    assert t.expire(180.0) == []
    assert [c.kind for c in t.expire(180.1)] == [ChangeKind.EXPIRED]


def test_replays_from_the_same_address_are_dropped() -> None:
    t = PeerTable()
    beat = hb(1)
    t.observe(beat, "10.0.0.1", 0.0)
    assert t.judge(beat, "10.0.0.1", 1.0) is Verdict.REPLAY
    assert t.observe(beat, "10.0.0.1", 2.9) is None
    assert [c.kind for c in t.expire(3.1)] == [ChangeKind.EXPIRED]  # the replays refreshed nothing


def test_a_known_node_moves_or_restarts_only_with_proof_and_the_old_entry_keeps_serving() -> None:
    t = PeerTable()
    t.observe(hb(1), "10.0.0.1", 0.0)
    t.mark_healthy(key(1), 1.0, 0.0)
    # Copies of its heartbeat: from another address, with another instance, with another port.
    for beat, addr in ((hb(1), "10.0.0.66"), (hb(1, inst=9), "10.0.0.66"), (hb(1, inst=9), "10.0.0.1"),
                       (hb(1, port=1), "10.0.0.1")):
        assert t.judge(beat, addr, 0.5) is Verdict.NEEDS_PROOF
        assert t.observe(beat, addr, 0.5) is None
    peer = t.get(key(1))
    assert peer is not None and peer.endpoint == Endpoint("10.0.0.1", 11435) and peer.instance_id == "01" * 8
    assert list(peer.addresses) == ["10.0.0.1"] and peer.healthy
    assert t.candidates(0.6)[0].key == key(1)
    # Proven (its address answered as that node and instance): believed.
    change = t.observe(hb(1, inst=2), "10.0.0.2", 1.0, proven=True)
    assert change is not None and change.kind is ChangeKind.RESTARTED and peer.endpoint.host == "10.0.0.2"
    assert Claim.of(hb(1, inst=2), "10.0.0.2") == Claim(key(1), "10.0.0.2", 11435, "02" * 8)


def test_another_key_cannot_take_a_node_that_is_still_heard() -> None:
    t = PeerTable()
    beat = hb(1, scheme="https", trust="devices", device_id=bytes(32))
    t.observe(beat, "10.0.0.1", 0.0, device_id="A" * 52, proven=True)
    forged = replace(beat, seq=beat.seq + 1)
    assert t.judge(forged, "10.0.0.66", 1.0, "F" * 52) is Verdict.IDENTITY_TAKEN
    assert t.observe(forged, "10.0.0.66", 1.0, device_id="F" * 52, proven=True) is None
    peer = t.get(key(1))
    assert peer is not None and peer.device_id == "A" * 52 and peer.endpoint.host == "10.0.0.1"


def test_unproven_servers_are_capped_unlisted_unroutable_and_short_lived() -> None:
    t = PeerTable(unproven_ttl=1.5)
    t.observe(hb(1), "10.0.0.1", 0.0)
    t.mark_healthy(key(1), 1.0, 0.0)  # a real server: answered its first check
    for n in range(MAX_UNPROVEN + 100):
        t.observe(hb(os.urandom(16), interval_ms=1_000_000), f"10.0.{n // 250}.{n % 250 + 2}", 0.001 * n)
    assert t.unproven() == MAX_UNPROVEN and len(t) == MAX_UNPROVEN + 1 and t.evicted == 100
    phantoms = [p for p in t if p.key != key(1)]
    assert not any(listed(p) or routable(p) or p.healthy for p in phantoms)
    assert [p.key for p in t.candidates(1.0)] == [key(1)]
    # They expire by the client's own TTL whatever their heartbeats announce; the real one stays.
    gone = t.expire(0.001 * (MAX_UNPROVEN + 100) + 1.6)
    assert len(gone) == MAX_UNPROVEN and [p.key for p in t] == [key(1)] and t.unproven() == 0


def test_a_server_is_usable_only_after_it_answered_a_check() -> None:
    t = PeerTable()
    added = t.observe(hb(1), "10.0.0.1", 0.0)
    assert added is not None and not routable(added.peer) and not added.peer.healthy
    assert t.candidates(0.0) == [] and t.mark_failed(key(1), 0.1) is None  # no warning for a phantom
    healthy = t.mark_healthy(key(1), 1.0, 0.2)  # its first answer: added for real now
    assert healthy is not None and healthy.kind is ChangeKind.ADDED and routable(healthy.peer)
    assert listed(healthy.peer) and t.unproven() == 0
    t.mark_failed(key(1), 0.3)
    back = t.mark_healthy(key(1), 1.0, 0.4)
    assert back is not None and back.kind is ChangeKind.HEALTHY
    static = t.add_static(Endpoint("192.0.2.1", 11435), 0.0)
    assert static is not None and routable(static.peer) and static.peer.source is Source.STATIC


# -- logs and texts stay bounded (items 3, 4) -----------------------------------------------------


def test_pending_lines_once_per_device_and_once_a_second_in_all() -> None:
    limit = PerKeyAndTotal(period=60.0, gap=1.0)
    said = [limit.allow(f"dev{n % 70}", n / 700)[0] for n in range(700)]  # 700 hellos, 70 certs, 1 s
    assert said.count(True) == 1
    assert limit.allow("dev999", 1.01) == (True, 69)  # the next line says how many it stands for
    assert limit.allow("dev999", 2.5) == (False, 0)  # that device: once a minute


def test_the_503_text_names_a_bounded_number_of_servers() -> None:
    from ollana.discovery.peers import Peer
    from ollana.trust.vetting import HINT_NAMES, ServerVetting

    devices = SimpleNamespace(store=SimpleNamespace(is_allowed=lambda _d: False), identity=SimpleNamespace(short="ME"))
    vetting = ServerVetting.__new__(ServerVetting)
    vetting._devices = devices  # type: ignore[assignment]
    peers = [Peer(f"k{n}", Endpoint(f"10.0.{n // 250}.{n % 250}", 11435), Source.MULTICAST, 0.0, 0.0, math.inf,
                  hostname="h" * 255, device_id="A" * 52) for n in range(12_000)]
    hint = vetting.unpaired_hint(peers)
    assert hint is not None and len(hint.encode()) < 4096
    assert hint.count("h" * 255) == HINT_NAMES and f"and {12_000 - HINT_NAMES} more" in hint


def test_a_refusal_over_the_pinned_context_makes_a_server_a_last_resort() -> None:
    # Trust devices: a paired server that has not allowed this client yet answers 403 over a
    # connection pinned to its certificate: it is that device, routable (unhealthy) from then on;
    # an answer over plain HTTP proves nothing.
    t = PeerTable()
    t.observe(hb(1), "10.0.0.1", 0.0)
    t.observe(hb(2), "10.0.0.2", 0.0)
    t.mark_failed(key(1), 0.1, answered=True, pinned=True)
    t.mark_failed(key(2), 0.1, answered=True)
    assert [p.key for p in t.candidates(0.2)] == [key(1)] and t.unproven() == 1


def test_a_servers_table_of_heard_servers_clamps_the_interval_too() -> None:
    from ollana.discovery.known import KnownServers

    known = KnownServers()
    known.heard(hb(1, interval_ms=2**32 - 1, scheme="https", trust="devices", device_id=bytes(32)), "10.0.0.1", 0.0)
    assert len(known.listed(180.0)) == 1 and known.listed(180.1) == []
