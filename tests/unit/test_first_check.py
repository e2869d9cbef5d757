"""A discovered server's first check: at its best address, and not undone by a slower, older one.

A client starting on a LAN of dual-stack servers often hears a server's link-local heartbeat
before its IPv4 one. Until the server answers, its entry proves nothing, so it moves to the
preferred address heard (``claims.rehomes``) and keeps only that one: the first check asks
there. Pure: no sockets, no clock.
"""

from __future__ import annotations

import itertools

from ollana.discovery.claims import Verdict, asks_again, checked_lately, rehomes
from ollana.discovery.packet import Heartbeat
from ollana.discovery.peers import ChangeKind, PeerTable, listed, routable

_SEQ = itertools.count(1)
LINK_LOCAL = "fe80::1%eth0"


def hb(node: int, inst: int = 1, port: int = 11435) -> Heartbeat:
    return Heartbeat(bytes([node]) * 16, bytes([inst]) * 8, next(_SEQ), port, 2000)


def key(node: int) -> str:
    return (bytes([node]) * 16).hex()


def test_an_unproven_entry_moves_to_the_preferred_address_and_keeps_only_it() -> None:
    t = PeerTable()
    t.observe(hb(1), LINK_LOCAL, 0.0)
    peer = t.get(key(1))
    assert peer is not None and rehomes(peer, hb(1), "10.0.0.1")
    change = t.observe(hb(1), "10.0.0.1", 0.1)
    assert change is not None and change.kind is ChangeKind.MOVED and not change.peer.proven
    assert peer.endpoint.host == "10.0.0.1" and list(peer.addresses) == ["10.0.0.1"]
    assert not listed(peer) and not routable(peer)  # moving proved nothing
    # The address heard first is no longer believed as it is: it needs its own proof now.
    assert t.judge(hb(1), LINK_LOCAL, 0.2) is Verdict.NEEDS_PROOF
    assert t.observe(hb(1), LINK_LOCAL, 0.2) is None and peer.endpoint.host == "10.0.0.1"
    assert t.judge(hb(1), "10.0.0.1", 0.3) is Verdict.REFRESH


def test_only_to_a_preferred_address_of_the_same_instance_and_port_and_never_once_proven() -> None:
    t = PeerTable()
    t.observe(hb(1), "10.0.0.1", 0.0)
    t.observe(hb(3), LINK_LOCAL, 0.0)
    v4, ll = t.get(key(1)), t.get(key(3))
    assert v4 is not None and ll is not None
    assert not rehomes(v4, hb(1), "fe80::9%eth0") and not rehomes(v4, hb(1), "10.0.0.9")  # no better
    assert rehomes(ll, hb(3), "fd00::3") and rehomes(ll, hb(3), "10.0.0.3")
    assert not rehomes(ll, hb(3, inst=2), "10.0.0.3")  # another instance
    assert not rehomes(ll, hb(3, port=1), "10.0.0.3")  # another port
    t.observe(hb(2), LINK_LOCAL, 0.0)
    t.mark_healthy(key(2), 1.0, 0.1)  # it answered: proven
    proven = t.get(key(2))
    assert proven is not None and not rehomes(proven, hb(2), "10.0.0.2")
    assert t.observe(hb(2), "10.0.0.2", 0.2) is None  # a proven one moves only with proof (claims)


def test_a_check_that_failed_after_a_newer_one_passed_changes_nothing() -> None:
    t = PeerTable()
    t.observe(hb(1), "10.0.0.1", 0.0)
    t.mark_healthy(key(1), 1.0, 2.0)  # a check started at 1.9 passed at 2.0
    assert t.mark_failed(key(1), 2.5, since=0.5) is None  # one started at 0.5 timed out at 2.5
    peer = t.get(key(1))
    assert peer is not None and peer.healthy
    failed = t.mark_failed(key(1), 4.0, since=2.5)  # one started after the answer: it counts
    assert failed is not None and failed.kind is ChangeKind.UNHEALTHY
    assert t.mark_failed(key(1), 4.1) is None  # (already unhealthy) and a request's failure counts


def test_a_first_check_is_asked_again_only_for_a_heartbeat_heard_while_it_ran() -> None:
    t = PeerTable()
    t.observe(hb(1), "10.0.0.1", 0.0)  # its first check starts at 0.1 and times out at 3.1
    peer = t.get(key(1))
    assert not asks_again(peer, 0.1)  # not heard meanwhile: its next heartbeat asks again
    t.observe(hb(1), "10.0.0.1", 2.0)  # heard while the check ran (the offer found it busy)
    assert asks_again(peer, 0.1)
    assert not asks_again(t.get(key(9)), 0.1)  # gone meanwhile
    t.mark_healthy(key(1), 1.0, 3.0)
    assert not asks_again(peer, 0.1)  # proven meanwhile (another check)


def test_a_round_of_health_checks_skips_a_server_that_answered_within_half_an_interval() -> None:
    t = PeerTable()
    t.observe(hb(1), "10.0.0.1", 0.0)
    peer = t.get(key(1))
    assert peer is not None and not checked_lately(peer, 0.5, 2.0)  # never answered
    t.mark_healthy(key(1), 1.0, 1.0)  # its first check passed at 1.0
    assert checked_lately(peer, 1.9, 2.0)  # the round at 1.9 skips it
    assert not checked_lately(peer, 2.0, 2.0)  # the one at 3.9 (or any from 2.0) asks it
