"""Listen for discovery packets for a few seconds (and, only when asked, send one probe).

The doctor's own sockets (``discovery/net.py``'s, one per address family), next to the running
node's: each set SO_REUSEADDR, so each receives every multicast datagram. Listening joins the
groups on each link, as any node does; nothing is sent unless ``probe`` is set.
"""

from __future__ import annotations

import secrets
import select
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from functools import partial

from ollana.discovery import net
from ollana.discovery.links import Link, scoped
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


def listen(
    port: int, groups: dict[int, str], links: Sequence[Link], seconds: float, *, probe: bool = False,
    clock: Callable[[], float] = time.monotonic,
) -> list[HeardFact]:
    """What arrived on the discovery port in ``seconds``, one entry per (source, node, kind).
    ``groups``: the group of each family (4, 6). Raises OSError when no socket can be opened."""
    instance = secrets.token_bytes(INSTANCE_ID_LEN)
    socks: dict[int, socket.socket] = {}
    try:
        for family in sorted({link.family for link in links}):
            socks[family] = net.open_socket(family, port)
            for link in links:
                if link.family == family:
                    _quietly(partial(net.join_group, socks[family], groups[family], link))
        if probe:
            data = encode(Probe(secrets.token_bytes(NODE_ID_LEN), instance, 1))
            for link in links:
                _quietly(partial(net.send, socks[link.family], data, groups[link.family], port, link))
        return _receive(list(socks.values()), seconds, clock, instance, links)
    finally:
        for sock in socks.values():
            sock.close()


def _quietly(action: Callable[[], None]) -> None:
    try:
        action()
    except OSError:
        pass  # a link that just went away: the others still count


def _receive(
    socks: list[socket.socket], seconds: float, clock: Callable[[], float], instance: bytes, links: Sequence[Link],
) -> list[HeardFact]:
    by_index = {(link.family, link.index): link for link in links}
    own = {str(a.ip) for link in links for a in link.addresses}
    heard: dict[tuple[str, str, str], HeardFact] = {}
    deadline = clock() + seconds
    while socks and (left := deadline - clock()) > 0:
        ready, _, _ = select.select(socks, [], [], left)
        for sock in ready:
            got = net.receive(sock, 65535)
            if got is None:
                continue
            link = by_index.get((got.source.version, got.ifindex or -1))
            source = scoped(got.source, link) if link is not None else str(got.source)
            name = link.name if link is not None else None
            try:
                packet = decode(got.data)
            except PacketError:
                _count(heard, HeardFact(source, name, "undecodable", "", 1))
                continue
            if packet.instance_id == instance:
                continue  # our own probe, looped back
            fact = HeardFact(source, name, type(packet).__name__.lower(), packet.node_id.hex(), 1,
                             this_machine=str(got.source) in own)
            if isinstance(packet, Heartbeat):
                device = id_from_bytes(packet.device_id) if packet.device_id else None
                fact = replace(fact, hostname=packet.hostname, port=packet.proxy_port, trust=packet.trust,
                               device_id=device)
            _count(heard, fact)
    return list(heard.values())


def _count(heard: dict[tuple[str, str, str], HeardFact], fact: HeardFact) -> None:
    key = (fact.source, fact.node_id, fact.kind)
    before = heard.get(key)
    if before is not None:
        heard[key] = replace(fact, count=before.count + 1)
    elif len(heard) < MAX_SOURCES:
        heard[key] = fact
