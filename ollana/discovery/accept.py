"""Only the link may speak: which discovery datagrams are accepted. Pure: no sockets, no clock.

A datagram is accepted only when it was sent to the discovery group (not unicast or broadcast
to this node) and comes from a source on the link it arrived on: an address of one of the
receiving interface's IPv4 subnets, or for IPv6 a link-local address or one in one of the
interface's prefixes. The service reads the destination and the receiving interface from the
kernel (``IP_PKTINFO`` / ``IPV6_PKTINFO``) and asks :func:`accept` before decoding anything.
Servers named with ``--peer`` never come through here: TLS checks those.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping

from ollana.discovery.links import IPAddress, Link, LinkKey, unscoped


class Drop(enum.Enum):
    """Why a datagram was not accepted (stable tags, for logs and counters)."""

    # The kernel did not say where the datagram was sent or on which interface it arrived.
    NO_PKTINFO = "no_pktinfo"
    # It arrived on an interface discovery does not run on (loopback, an --interface left out).
    OTHER_INTERFACE = "other_interface"
    # Sent to one of this node's addresses (unicast) or to a broadcast address, not to the group.
    NOT_TO_GROUP = "not_to_group"
    # Its source is not on the link it arrived on: routed here, or forged.
    OFF_LINK = "off_link"


def on_link(source: IPAddress, link: Link) -> bool:
    """Whether ``source`` is a neighbour on ``link``, judged by the link's addresses."""
    if source.version != link.family:
        return False
    if source.is_multicast or source.is_unspecified or source.is_loopback:
        return False
    if source.version == 6 and source.is_link_local:
        # fe80::/10 is never forwarded by a router: a link-local source came over this link.
        return True
    for iface in link.addresses:
        if iface.ip.version == 6 and iface.ip.is_link_local:
            continue  # fe80::/64 on every link: handled above, and says nothing about a prefix
        net = iface.network
        if source not in net:
            continue
        # A subnet's own network or broadcast address is no host's source.
        return not (source.version == 4 and net.prefixlen < 31
                    and source in (net.network_address, net.broadcast_address))
    return False


def accept(destination: IPAddress | None, source: IPAddress, link: Link | None, group: IPAddress) -> Drop | None:
    """None to accept a datagram sent from ``source`` to ``destination`` that arrived on ``link``
    (None: not a link discovery runs on), else why it is dropped."""
    if destination is None:
        return Drop.NO_PKTINFO
    if link is None:
        return Drop.OTHER_INTERFACE
    if destination != group:
        return Drop.NOT_TO_GROUP
    if not on_link(source, link):
        return Drop.OFF_LINK
    return None


def reachable(
    heard: Mapping[str, frozenset[LinkKey]], links: Iterable[Link]
) -> tuple[dict[str, frozenset[LinkKey]], frozenset[str]]:
    """After the links changed: on which links each source heard so far can still speak, and
    which sources can speak on none (they were heard only on links that are gone, or whose new
    addresses no longer put them on the link). ``heard`` maps a source, as :func:`links.scoped`
    wrote it, to the keys of the links it was heard on."""
    by_key = {link.key: link for link in links}
    kept: dict[str, frozenset[LinkKey]] = {}
    stranded: set[str] = set()
    for source, keys in heard.items():
        address = unscoped(source)
        still = frozenset(k for k in keys if k in by_key and on_link(address, by_key[k]))
        if still:
            kept[source] = still
        else:
            stranded.add(source)
    return kept, frozenset(stranded)
