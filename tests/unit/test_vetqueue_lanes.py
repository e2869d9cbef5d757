"""The check queue's lanes: a node's first check in slots of its own, other claims in theirs.

A client starting on a LAN of dual-stack servers hears each one on two or three addresses at
once; every server's first check must start without waiting behind the checks of the servers'
other addresses (which may not answer, each then holding a slot for a whole timeout), and a
flood of forged new nodes must not keep a known node's new address from being checked. Pure:
no sockets, no clock.
"""

from __future__ import annotations

from ollana.discovery.vetqueue import Lane, Limits, Offer, VetQueue, next_lane

LIMITS = Limits(known_slots=2, new_slots=4, unknown_slots=2, max_waiting=64, rate=1000, burst=1000)


def test_first_checks_do_not_wait_behind_other_addresses_heard_at_the_same_time() -> None:
    q: VetQueue[str] = VetQueue(LIMITS)
    for n in range(10):  # each server heard on its link-local address, then on IPv4 (its first check)
        assert q.offer(f"proof{n}", f"fe80::{n}", Lane.UNKNOWN, 0.0)[0] is Offer.QUEUED
        assert q.offer(f"first{n}", f"10.0.0.{n}", Lane.NEW, 0.0)[0] is Offer.QUEUED
    started = [q.take() for _ in range(7)]
    assert started == [(f"first{n}", Lane.NEW) for n in range(4)] + [("proof0", Lane.UNKNOWN),
                                                                      ("proof1", Lane.UNKNOWN), None]
    q.done("proof0")  # (timed out)
    assert q.take() == ("proof2", Lane.UNKNOWN)
    q.done("first0")
    assert q.take() == ("first4", Lane.NEW)


def test_a_flood_of_forged_new_nodes_never_starves_a_known_nodes_new_address() -> None:
    q: VetQueue[str] = VetQueue(LIMITS)
    for n in range(60):  # forged node IDs from 60 addresses, each check hanging until its timeout
        q.offer(f"forged{n}", f"10.9.0.{n}", Lane.NEW, 0.0)
    assert all(q.take() is not None for _ in range(4)) and q.take() is None
    assert q.offer("restart", "10.0.0.1", Lane.UNKNOWN, 0.0)[0] is Offer.QUEUED
    assert q.take() == ("restart", Lane.UNKNOWN)  # at once: its own slots
    assert q.offer("paired", "10.0.0.2", Lane.KNOWN, 0.0)[0] is Offer.QUEUED
    assert q.take() == ("paired", Lane.KNOWN)


def test_new_checks_pass_the_same_rates_and_bound_as_other_claims() -> None:
    q: VetQueue[str] = VetQueue(Limits(new_slots=0, unknown_slots=0, max_waiting=4, source_gap=1.0,
                                       rate=10.0, burst=3.0))
    assert q.offer("a", "10.0.0.1", Lane.NEW, 0.0)[0] is Offer.QUEUED
    assert q.offer("b", "10.0.0.1", Lane.UNKNOWN, 0.0)[0] is Offer.SOURCE_RATE  # one source, both lanes
    assert q.offer("c", "10.0.0.2", Lane.UNKNOWN, 0.0)[0] is Offer.QUEUED
    assert q.offer("d", "10.0.0.3", Lane.NEW, 0.0)[0] is Offer.QUEUED
    assert q.offer("e", "10.0.0.4", Lane.NEW, 0.0)[0] is Offer.GLOBAL_RATE  # one bucket for both lanes
    got = [q.offer(f"n{n}", f"10.1.0.{n}", Lane.NEW, 10.0 + n) for n in range(3)]
    # Bounded together (4): the oldest of the longer lane goes.
    assert [evicted for _, evicted in got] == [None, "a", "d"] and len(q) == 4


def test_next_lane_is_a_pure_function_of_counts() -> None:
    w = {Lane.KNOWN: 1, Lane.NEW: 5, Lane.UNKNOWN: 5}
    assert next_lane(w, {}, LIMITS) is Lane.KNOWN
    assert next_lane(w, {Lane.KNOWN: 2, Lane.NEW: 3}, LIMITS) is Lane.NEW
    assert next_lane(w, {Lane.KNOWN: 2, Lane.NEW: 4}, LIMITS) is Lane.UNKNOWN
    assert next_lane(w, {Lane.KNOWN: 2, Lane.NEW: 4, Lane.UNKNOWN: 2}, LIMITS) is None
    assert next_lane({Lane.UNKNOWN: 1}, {Lane.NEW: 4, Lane.KNOWN: 2}, LIMITS) is Lane.UNKNOWN
    assert next_lane({}, {}, LIMITS) is None
