"""The links discovery runs on, as values, and what changed between two scans of them. Pure.

A *link* is one interface in one address family (IPv4 or IPv6): discovery joins that family's
group on it, sends its packets there, and accepts packets that arrived on it (``accept.py``).
``net.py`` reads the system into these values; nothing here touches a socket or the clock.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface

# (family, name, index). The index is part of the identity: an interface deleted and recreated
# under the same name (and with the same addresses) is a new interface to the kernel, which
# dropped the group memberships of the old one. Only a changed key says "join again".
LinkKey = tuple[int, str, int]


@dataclass(frozen=True, slots=True)
class Link:
    name: str
    index: int
    family: int  # 4 or 6
    # Every address of the family on the interface, with its prefix (what "on the link" means).
    addresses: tuple[IPInterface, ...]

    @property
    def key(self) -> LinkKey:
        return (self.family, self.name, self.index)

    @property
    def address(self) -> str:
        """Where this node's packets on the link come from: for IPv4 the first address that is not
        link-local (169.254/16); for IPv6 the link-local one, which the kernel picks as the source
        for a link-local group. Without a scope: it goes on the wire (the heartbeat's address)."""
        if not self.addresses:
            return ""
        if self.family == 4:
            chosen = next((a for a in self.addresses if not a.ip.is_link_local), self.addresses[0])
        else:
            chosen = next((a for a in self.addresses if a.ip.is_link_local), self.addresses[0])
        return str(chosen.ip)

    def describe(self) -> dict[str, object]:
        """For status documents and logs."""
        return {
            "name": self.name, "index": self.index, "family": f"ipv{self.family}",
            "address": self.address, "addresses": [str(a) for a in self.addresses],
        }


def scoped(source: IPAddress, link: Link) -> str:
    """How to reach ``source``, heard on ``link``: an IPv6 link-local address means nothing without
    its link, so it carries the interface's name as its scope (``fe80::1%eth0``)."""
    if source.version == 6 and source.is_link_local:
        return f"{source}%{link.name}"
    return str(source)


def preference(address: str) -> int:
    """How much to prefer reaching a dual-stack server at ``address`` (lower first): IPv4, then
    IPv6 with a prefix (ULA, global), then IPv6 link-local (it needs its scope wherever it is
    written). Anything else (a host name) last."""
    try:
        ip = unscoped(address)
    except ValueError:
        return 3
    if ip.version == 4:
        return 0
    return 2 if ip.is_link_local else 1


def unscoped(source: str) -> IPAddress:
    """The address of a string ``scoped`` made. Raises ValueError for anything else."""
    return ipaddress.ip_address(source.partition("%")[0])


@dataclass(frozen=True, slots=True)
class LinkDiff:
    """What a new scan changed: links to join, to leave, and to join again (same key, new addresses)."""

    added: tuple[Link, ...] = ()
    removed: tuple[Link, ...] = ()
    readdressed: tuple[Link, ...] = ()

    @property
    def new(self) -> tuple[Link, ...]:
        """Links a node has not announced itself on yet: where to send a heartbeat or probe now."""
        return self.added + self.readdressed

    def __bool__(self) -> bool:
        return bool(self.added or self.removed or self.readdressed)


def diff(old: Iterable[Link], new: Iterable[Link]) -> LinkDiff:
    before = {link.key: link for link in old}
    after = {link.key: link for link in new}
    return LinkDiff(
        added=tuple(link for key, link in after.items() if key not in before),
        removed=tuple(link for key, link in before.items() if key not in after),
        readdressed=tuple(
            link for key, link in after.items()
            if key in before and set(before[key].addresses) != set(link.addresses)
        ),
    )


@dataclass(frozen=True, slots=True)
class LinkChange:
    """What the role hears after a scan changed the links."""

    # Links that appeared or got new addresses: announce (server) or probe (client) there now.
    new: tuple[Link, ...]
    # Sources (as handed to the role with their packets) that were heard only on links that are
    # gone, or on which they are no longer on-link: servers learned through them are unreachable.
    stranded: frozenset[str]
