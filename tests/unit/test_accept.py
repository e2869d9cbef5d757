"""Only the link may speak: the acceptance rule and what a changed link strands. No sockets."""

from __future__ import annotations

import ipaddress

import pytest

from ollana.config import DISCOVERY_DEFAULT_GROUP, DISCOVERY_DEFAULT_GROUP6, parse_group
from ollana.discovery.accept import Drop, accept, on_link, reachable
from ollana.discovery.links import IPAddress, Link
from ollana.errors import ConfigError

G4 = ipaddress.ip_address(DISCOVERY_DEFAULT_GROUP)
G6 = ipaddress.ip_address(DISCOVERY_DEFAULT_GROUP6)
ETH4 = Link("eth0", 2, 4, (ipaddress.ip_interface("10.77.0.3/24"), ipaddress.ip_interface("192.168.9.3/25")))
ETH6 = Link("eth0", 2, 6, (ipaddress.ip_interface("fd77::3/64"), ipaddress.ip_interface("fe80::3/64")))


def ip(text: str) -> IPAddress:
    return ipaddress.ip_address(text)


@pytest.mark.parametrize("source", ["10.77.0.1", "10.77.0.254", "10.77.0.3", "192.168.9.100"])
def test_ipv4_from_the_subnet_to_the_group_is_accepted(source: str) -> None:
    assert accept(G4, ip(source), ETH4, G4) is None


@pytest.mark.parametrize("source", ["fe80::1", "fe80::abcd:1234:5678:9abc", "fd77::1", "fd77::ffff:1"])
def test_ipv6_link_local_or_same_prefix_to_the_group_is_accepted(source: str) -> None:
    assert accept(G6, ip(source), ETH6, G6) is None


@pytest.mark.parametrize(("destination", "link", "group"), [
    ("10.77.0.3", ETH4, G4),  # unicast to this node
    ("10.77.0.255", ETH4, G4),  # subnet broadcast
    ("255.255.255.255", ETH4, G4),  # limited broadcast
    ("224.0.0.251", ETH4, G4),  # another group (mDNS) on the same port
    ("fd77::3", ETH6, G6),  # unicast, global
    ("fe80::3", ETH6, G6),  # unicast, link-local
    ("ff02::1", ETH6, G6),  # all-nodes
])
def test_anything_not_sent_to_the_group_is_dropped(destination: str, link: Link, group: IPAddress) -> None:
    source = "10.77.0.1" if link.family == 4 else "fe80::1"
    assert accept(ip(destination), ip(source), link, group) is Drop.NOT_TO_GROUP


@pytest.mark.parametrize(("source", "link", "group"), [
    ("10.78.0.1", ETH4, G4),  # another subnet (routed, or forged)
    ("192.168.9.200", ETH4, G4),  # just outside the /25
    ("8.8.8.8", ETH4, G4),
    ("10.77.0.0", ETH4, G4),  # the subnet's network address
    ("10.77.0.255", ETH4, G4),  # its broadcast address
    ("0.0.0.0", ETH4, G4),
    ("127.0.0.1", ETH4, G4),
    ("239.255.11.36", ETH4, G4),  # a multicast source is never genuine
    ("fd78::1", ETH6, G6),  # another prefix
    ("2001:db8::1", ETH6, G6),
    ("::1", ETH6, G6),
    ("::", ETH6, G6),
    ("ff02::1", ETH6, G6),
])
def test_a_source_off_the_link_is_dropped(source: str, link: Link, group: IPAddress) -> None:
    assert accept(group, ip(source), link, group) is Drop.OFF_LINK


def test_no_packet_info_or_another_interface_is_dropped() -> None:
    assert accept(None, ip("10.77.0.1"), ETH4, G4) is Drop.NO_PKTINFO
    assert accept(G4, ip("10.77.0.1"), None, G4) is Drop.OTHER_INTERFACE
    # Both faults: no packet info is what is said (nothing is known about the interface either).
    assert accept(None, ip("10.77.0.1"), None, G4) is Drop.NO_PKTINFO


def test_unicast_from_off_the_link_is_not_to_the_group_first() -> None:
    # The attack: a unicast heartbeat from a routed address. Either reason drops it;
    # the destination is judged first.
    assert accept(ip("10.77.0.3"), ip("10.78.0.9"), ETH4, G4) is Drop.NOT_TO_GROUP


def test_a_source_of_the_other_family_is_never_on_the_link() -> None:
    assert not on_link(ip("fe80::1"), ETH4)
    assert not on_link(ip("10.77.0.1"), ETH6)


def test_a_link_local_ipv6_prefix_does_not_admit_other_prefixes() -> None:
    only_ll = Link("wlan0", 3, 6, (ipaddress.ip_interface("fe80::3/64"),))
    assert on_link(ip("fe80::99"), only_ll)
    assert not on_link(ip("fd77::1"), only_ll)


def test_point_to_point_prefixes_admit_both_ends() -> None:
    p2p = Link("tun0", 5, 4, (ipaddress.ip_interface("10.9.9.0/31"),))
    assert on_link(ip("10.9.9.1"), p2p) and on_link(ip("10.9.9.0"), p2p)
    host = Link("tun1", 6, 4, (ipaddress.ip_interface("10.9.9.5/32"),))
    assert on_link(ip("10.9.9.5"), host) and not on_link(ip("10.9.9.6"), host)


# -- what a change of the links strands ------------------------------------------------------------


def test_sources_heard_only_on_a_vanished_link_are_stranded() -> None:
    wlan = Link("wlan0", 3, 4, (ipaddress.ip_interface("10.77.0.8/24"),))
    heard = {"10.77.0.1": frozenset({ETH4.key}), "10.77.0.2": frozenset({ETH4.key, wlan.key}),
             "fe80::1%eth0": frozenset({ETH6.key})}
    kept, stranded = reachable(heard, [wlan, ETH6])
    assert stranded == {"10.77.0.1"}
    assert kept == {"10.77.0.2": frozenset({wlan.key}), "fe80::1%eth0": frozenset({ETH6.key})}


def test_a_recreated_interface_is_a_new_link_even_with_the_same_name_and_addresses() -> None:
    recreated = Link("eth0", 7, 4, ETH4.addresses)
    kept, stranded = reachable({"10.77.0.1": frozenset({ETH4.key})}, [recreated])
    assert stranded == {"10.77.0.1"} and kept == {}


def test_a_readdressed_link_strands_the_sources_of_the_old_network_only() -> None:
    moved4 = Link("eth0", 2, 4, (ipaddress.ip_interface("10.78.0.3/24"),))
    moved6 = Link("eth0", 2, 6, (ipaddress.ip_interface("fd78::3/64"), ipaddress.ip_interface("fe80::3/64")))
    heard = {"10.77.0.1": frozenset({ETH4.key}), "fd77::1": frozenset({ETH6.key}),
             "fe80::1%eth0": frozenset({ETH6.key})}
    kept, stranded = reachable(heard, [moved4, moved6])
    # A link-local neighbour cannot be told apart from one of the new network: it expires by TTL.
    assert stranded == {"10.77.0.1", "fd77::1"}
    assert kept == {"fe80::1%eth0": frozenset({ETH6.key})}


def test_nothing_heard_nothing_stranded() -> None:
    assert reachable({}, []) == ({}, frozenset())


# -- the groups ----------------------------------------------------------------------------------


def test_the_default_groups_are_what_they_claim() -> None:
    assert G4.is_multicast and G4 in ipaddress.ip_network("239.255.0.0/16")
    assert G6 in ipaddress.ip_network("ff02::/16")
    # RFC 3307: group IDs 0x80000000-0xFFFFFFFF are left to dynamic allocation (IANA assigns none).
    assert int.from_bytes(G6.packed[12:], "big") >= 0x80000000
    assert G6 not in ipaddress.ip_network("ff02::1:ff00:0/104")  # not a solicited-node group


@pytest.mark.parametrize(("text", "version", "expected"), [
    ("239.255.11.36", 4, "239.255.11.36"),
    (" 224.0.0.99 ", 4, "224.0.0.99"),
    ("ff02::8011:436", 6, "ff02::8011:436"),
    ("FF12:0::1", 6, "ff12::1"),  # transient flag, link-local scope
])
def test_parse_group_accepts_multicast_of_the_family(text: str, version: int, expected: str) -> None:
    assert parse_group(text, version) == expected


@pytest.mark.parametrize(("text", "version"), [
    ("10.0.0.1", 4), ("ff02::1", 4), ("nonsense", 4), ("239.255.11.36", 6),
    ("fd77::1", 6), ("ff05::1:3", 6), ("ff0e::1", 6),  # site and global scope leave the link
])
def test_parse_group_refuses_the_rest(text: str, version: int) -> None:
    with pytest.raises(ConfigError):
        parse_group(text, version)
