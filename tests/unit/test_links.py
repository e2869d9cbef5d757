"""Links as values: their identity, what changed between two scans, packet info, and what the
peer table does with addresses that no longer reach it. No sockets."""

from __future__ import annotations

import ipaddress
import itertools
import socket
import struct

from ollana.config import Endpoint
from ollana.discovery.links import Link, LinkDiff, diff, preference, scoped, unscoped
from ollana.discovery.net import IN6_PKTINFO, IN_PKTINFO, IP_PKTINFO, packet_info
from ollana.discovery.packet import Heartbeat
from ollana.discovery.peers import ChangeKind, PeerTable

A4 = (ipaddress.ip_interface("10.77.0.3/24"),)
A6 = (ipaddress.ip_interface("fd77::3/64"), ipaddress.ip_interface("fe80::3/64"))


def link(name: str = "eth0", index: int = 2, family: int = 4, addrs: tuple[str, ...] | None = None) -> Link:
    addresses = (A4 if family == 4 else A6) if addrs is None else tuple(ipaddress.ip_interface(a) for a in addrs)
    return Link(name, index, family, addresses)


def test_same_scan_no_change() -> None:
    links = [link(), link(family=6)]
    assert not diff(links, list(links))
    assert diff(links, links) == LinkDiff()


def test_added_and_removed() -> None:
    change = diff([link()], [link(family=6)])
    assert change.added == (link(family=6),) and change.removed == (link(),) and not change.readdressed
    assert change.new == (link(family=6),)


def test_recreated_with_the_same_name_and_addresses_is_a_new_link() -> None:
    change = diff([link(index=2)], [link(index=9)])
    assert change.removed == (link(index=2),) and change.added == (link(index=9),)


def test_a_new_address_is_a_readdressed_link() -> None:
    moved = link(addrs=("10.78.0.3/24",))
    change = diff([link()], [moved])
    assert change.readdressed == (moved,) and not change.added and not change.removed
    assert change.new == (moved,)
    # Only the set of addresses counts, not the order the system listed them in.
    two = link(addrs=("10.77.0.3/24", "10.77.1.3/24"))
    assert not diff([two], [link(addrs=("10.77.1.3/24", "10.77.0.3/24"))])


def test_the_address_a_link_sends_from() -> None:
    assert link().address == "10.77.0.3"
    assert link(addrs=("169.254.1.1/16", "10.77.0.3/24")).address == "10.77.0.3"
    assert link(family=6).address == "fe80::3"  # the kernel's source for a link-local group
    assert link(family=6, addrs=("fd77::3/64",)).address == "fd77::3"
    assert link(addrs=()).address == ""


def test_link_local_sources_carry_their_scope() -> None:
    eth6 = link(family=6)
    assert scoped(ipaddress.ip_address("fe80::1"), eth6) == "fe80::1%eth0"
    assert scoped(ipaddress.ip_address("fd77::1"), eth6) == "fd77::1"
    assert scoped(ipaddress.ip_address("10.77.0.1"), link()) == "10.77.0.1"
    assert unscoped("fe80::1%eth0") == ipaddress.ip_address("fe80::1")
    assert str(Endpoint("fe80::1%eth0", 11435)) == "[fe80::1%eth0]:11435"


def test_describe_for_status() -> None:
    assert link(family=6).describe() == {
        "name": "eth0", "index": 2, "family": "ipv6", "address": "fe80::3",
        "addresses": ["fd77::3/64", "fe80::3/64"],
    }


# -- packet info, as recvmsg hands it ------------------------------------------------------------------


def test_packet_info_of_both_families() -> None:
    v4 = IN_PKTINFO.pack(2, socket.inet_aton("10.77.0.3"), socket.inet_aton("239.255.11.36"))
    assert packet_info([(socket.IPPROTO_IP, IP_PKTINFO, v4)]) == (ipaddress.ip_address("239.255.11.36"), 2)
    v6 = IN6_PKTINFO.pack(socket.inet_pton(socket.AF_INET6, "ff02::8011:436"), 7)
    assert packet_info([(socket.IPPROTO_IPV6, socket.IPV6_PKTINFO, v6)]) == (ipaddress.ip_address("ff02::8011:436"), 7)


def test_packet_info_missing_or_short_is_none() -> None:
    assert packet_info([]) == (None, None)
    assert packet_info([(socket.IPPROTO_IP, IP_PKTINFO, b"\x00" * 4)]) == (None, None)
    other = struct.pack("@i", 64)  # e.g. a hop limit
    assert packet_info([(socket.IPPROTO_IPV6, socket.IPV6_HOPLIMIT, other)]) == (None, None)


# -- the peer table forgets addresses that no longer reach it --------------------------------------


_SEQ = itertools.count(1)


def hb(node: int) -> Heartbeat:
    # Each heartbeat a new sequence number, as a server sends them (a repeated one is a replay).
    return Heartbeat(node_id=bytes([node]) * 16, instance_id=b"i" * 8, seq=next(_SEQ), proxy_port=11435,
                     interval_ms=1000)


def test_a_server_heard_only_through_a_vanished_link_is_dropped() -> None:
    table = PeerTable()
    table.observe(hb(1), "fe80::1%eth0", 0.0)
    table.observe(hb(2), "10.77.0.2", 0.0)
    changes = table.forget_addresses({"fe80::1%eth0"}, 1.0)
    assert [(c.kind, c.peer.key) for c in changes] == [(ChangeKind.EXPIRED, (bytes([1]) * 16).hex())]
    assert [p.endpoint.host for p in table] == ["10.77.0.2"]


def test_a_server_with_another_fresh_address_moves_there() -> None:
    table = PeerTable()
    table.observe(hb(1), "10.77.0.1", 0.0)
    table.observe(hb(1), "fe80::1%eth1", 0.5, proven=True)
    table.observe(hb(1), "fe80::1%eth2", 0.2, proven=True)
    changes = table.forget_addresses({"10.77.0.1"}, 1.0)
    assert [c.kind for c in changes] == [ChangeKind.MOVED]
    peer = next(iter(table))
    assert peer.endpoint == Endpoint("fe80::1%eth1", 11435)  # of equally good ones, the freshest
    assert "10.77.0.1" not in peer.addresses


def test_a_stale_other_address_does_not_keep_a_server() -> None:
    table = PeerTable()
    table.observe(hb(1), "10.77.0.1", 0.0)
    table.observe(hb(1), "10.77.0.1", 5.0)
    next(iter(table)).addresses["10.88.0.1"] = 0.0  # last heard 5 s ago, TTL 3 s
    changes = table.forget_addresses({"10.77.0.1"}, 5.0)
    assert [c.kind for c in changes] == [ChangeKind.EXPIRED] and not len(table)


def test_static_servers_and_unrelated_addresses_are_left_alone() -> None:
    table = PeerTable()
    table.add_static(Endpoint("10.77.0.1", 11435), 0.0)
    table.observe(hb(2), "10.77.0.2", 0.0)
    assert table.forget_addresses({"10.77.0.1", "10.77.0.9"}, 1.0) == []
    assert table.forget_addresses(set(), 1.0) == []
    assert len(table) == 2


def test_a_dual_stack_server_is_reached_over_ipv4_first() -> None:
    table = PeerTable()
    table.observe(hb(1), "fe80::1%eth0", 0.0)  # the IPv6 heartbeat came first
    assert table.observe(hb(1), "fd77::1", 0.1, proven=True) is not None  # a prefix before link-local
    change = table.observe(hb(1), "10.77.0.1", 0.2, proven=True)
    assert change is not None and change.kind is ChangeKind.MOVED
    assert next(iter(table)).endpoint == Endpoint("10.77.0.1", 11435)
    # IPv6 heartbeats go on refreshing the entry without moving it back.
    assert table.observe(hb(1), "fe80::1%eth0", 0.3) is None
    assert table.observe(hb(1), "fd77::1", 0.3) is None
    # The IPv4 address vanishes with its link: the best other fresh one takes over.
    table.forget_addresses({"10.77.0.1"}, 0.4)
    assert next(iter(table)).endpoint == Endpoint("fd77::1", 11435)


def test_address_preference() -> None:
    assert [preference(a) for a in ("10.0.0.1", "fd77::1", "2001:db8::1", "fe80::1%eth0", "gpu-box.lan")] == [
        0, 1, 1, 2, 3]
