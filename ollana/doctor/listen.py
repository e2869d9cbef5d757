"""Listen for discovery packets for a few seconds (and, only when asked, send one probe).

The doctor's own socket, next to the running node's (both set SO_REUSEADDR, so each receives every
multicast datagram). Listening joins the group on each interface, as any node does; nothing is sent
unless ``probe`` is set.
"""

from __future__ import annotations

import ipaddress
import secrets
import select
import socket
import struct
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from ollana.discovery.packet import (
    INSTANCE_ID_LEN,
    NODE_ID_LEN,
    Heartbeat,
    PacketError,
    Probe,
    decode,
    encode,
)
from ollana.doctor.facts import HeardFact
from ollana.trust.identity import id_from_bytes

MAX_SOURCES = 256


@dataclass(frozen=True, slots=True)
class Link:
    """An interface to listen on: its name and IPv4 addresses with prefix ("10.0.0.5/24")."""

    name: str
    ipv4: tuple[str, ...]


def interface_of(source: str, links: Sequence[Link]) -> str | None:
    """The interface whose subnet holds ``source`` (None: none does). Pure."""
    try:
        ip = ipaddress.ip_address(source)
    except ValueError:
        return None
    for link in links:
        for cidr in link.ipv4:
            if ip in ipaddress.ip_interface(cidr).network:
                return link.name
    return None


def listen(
    port: int, group: str, links: Sequence[Link], seconds: float, *, probe: bool = False,
    clock: Callable[[], float] = time.monotonic,
) -> list[HeardFact]:
    """What arrived on the discovery port in ``seconds``, one entry per (source, node, kind).
    Raises OSError when the port cannot be opened."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
    instance = secrets.token_bytes(INSTANCE_ID_LEN)
    own = {cidr.split("/")[0] for link in links for cidr in link.ipv4}
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if hasattr(socket, "SO_REUSEPORT"):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 1)
        sock.bind(("", port))
        for address in own:
            mreq = struct.pack("4s4s", socket.inet_aton(group), socket.inet_aton(address))
            try:
                sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreq)
            except OSError:
                pass  # already a member there, or the address just went away
        if probe:
            data = encode(Probe(secrets.token_bytes(NODE_ID_LEN), instance, 1))
            for address in own:
                sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(address))
                sock.sendto(data, (group, port))
        return _receive(sock, seconds, clock, instance, own, links)
    finally:
        sock.close()


def _receive(
    sock: socket.socket, seconds: float, clock: Callable[[], float], instance: bytes, own: set[str],
    links: Sequence[Link],
) -> list[HeardFact]:
    heard: dict[tuple[str, str, str], HeardFact] = {}
    deadline = clock() + seconds
    while (left := deadline - clock()) > 0:
        ready, _, _ = select.select([sock], [], [], left)
        if not ready:
            break
        data, addr = sock.recvfrom(65535)
        source = str(addr[0])
        try:
            packet = decode(data)
        except PacketError:
            _count(heard, HeardFact(source, interface_of(source, links), "undecodable", "", 1))
            continue
        if packet.instance_id == instance:
            continue  # our own probe, looped back
        fact = HeardFact(
            source, interface_of(source, links), type(packet).__name__.lower(), packet.node_id.hex(), 1,
            this_machine=source in own,
        )
        if isinstance(packet, Heartbeat):
            device = id_from_bytes(packet.device_id) if packet.device_id else None
            fact = replace(fact, hostname=packet.hostname, port=packet.proxy_port, trust=packet.trust, device_id=device)
        _count(heard, fact)
    return list(heard.values())


def _count(heard: dict[tuple[str, str, str], HeardFact], fact: HeardFact) -> None:
    key = (fact.source, fact.node_id, fact.kind)
    before = heard.get(key)
    if before is not None:
        heard[key] = replace(fact, count=before.count + 1)
    elif len(heard) < MAX_SOURCES:
        heard[key] = fact
