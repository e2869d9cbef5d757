"""Learned peers: the servers a server has heard, told to its paired clients. Pure, no I/O.

A server keeps a small bounded table of the other servers whose heartbeats it hears (node ID,
device ID, address, port) and serves it at ``GET /ollana/v1/peers``, behind its gate: only paired
devices, over mutual TLS, ever read it (trust mode ``devices`` only; in ``open`` mode there is no
such endpoint). A client asks each paired server and tries those addresses too, which reaches
servers beyond a router or a VPN where no multicast passes. What a server lists is a hint, never
proof: the client believes an entry only once the certificate at that address hashes to the
device ID the entry claims, and uses it only if that device is paired with it.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Final

from ollana.discovery.claims import clamp_interval
from ollana.discovery.packet import TRUST_DEVICES, Goodbye, Heartbeat
from ollana.trust.identity import InvalidDeviceId, id_from_bytes, parse_device_id

PEERS_PATH: Final = "/ollana/v1/peers"
MAX_KNOWN: Final = 64
# An entry stays listed this many heartbeat intervals after the last one heard.
MISSED: Final = 3


@dataclass(frozen=True, slots=True)
class KnownServer:
    node_id: str  # hex
    device_id: str  # canonical base32
    host: str
    port: int
    hostname: str = ""

    def document(self, last_seen_s_ago: float | None = None) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "node_id": self.node_id, "device_id": self.device_id, "address": self.host,
            "port": self.port, "hostname": self.hostname,
        }
        if last_seen_s_ago is not None:
            doc["last_seen_s_ago"] = round(last_seen_s_ago, 3)
        return doc


def reachable_beyond_link(host: str) -> bool:
    """Whether another host, perhaps on another subnet, could reach ``host``: not a loopback,
    link-local, unspecified or multicast address."""
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    return not (ip.is_loopback or ip.is_link_local or ip.is_unspecified or ip.is_multicast)


class KnownServers:
    """The servers this server heard, most recently heard kept when the table is full."""

    def __init__(self, limit: int = MAX_KNOWN) -> None:
        self._limit = limit
        # node ID -> (server, last heard, how long it stays listed)
        self._heard: dict[str, tuple[KnownServer, float, float]] = {}

    def __len__(self) -> int:
        return len(self._heard)

    def heard(self, packet: Heartbeat | Goodbye, source: str, now: float) -> None:
        node = packet.node_id.hex()
        if isinstance(packet, Goodbye):
            self._heard.pop(node, None)
            return
        if packet.trust != TRUST_DEVICES or packet.device_id is None or not reachable_beyond_link(source):
            return  # only what a paired client in trust mode devices could check and use
        server = KnownServer(node, id_from_bytes(packet.device_id), source, packet.proxy_port, packet.hostname)
        self._heard.pop(node, None)  # re-inserted last: the dict's order is the order heard
        # (clamped: a forged interval of weeks must not keep an entry listed for weeks)
        self._heard[node] = (server, now, MISSED * clamp_interval(packet.interval_ms))
        while len(self._heard) > self._limit:
            del self._heard[next(iter(self._heard))]

    def listed(self, now: float) -> list[tuple[KnownServer, float]]:
        """The servers heard recently, with how long ago; forgets the others."""
        stale = [node for node, (_s, seen, ttl) in self._heard.items() if now - seen > ttl]
        for node in stale:
            del self._heard[node]
        return [(s, now - seen) for s, seen, _ttl in self._heard.values()]

    def document(self, now: float) -> dict[str, Any]:
        return {"servers": [s.document(ago) for s, ago in self.listed(now)]}


def parse_document(doc: Any, limit: int = MAX_KNOWN) -> list[KnownServer]:
    """The entries of a server's ``/ollana/v1/peers`` answer; bad entries are skipped, a document
    that is not one is a ValueError. At most ``limit`` entries are read."""
    servers = doc.get("servers") if isinstance(doc, dict) else None
    if not isinstance(servers, list):
        raise ValueError("not a peers document")
    out: list[KnownServer] = []
    for entry in servers[:limit]:
        server = _entry(entry)
        if server is not None:
            out.append(server)
    return out


def _entry(entry: Any) -> KnownServer | None:
    if not isinstance(entry, dict):
        return None
    node, device, host, port = (entry.get(k) for k in ("node_id", "device_id", "address", "port"))
    hostname = entry.get("hostname")
    if not (isinstance(node, str) and isinstance(device, str) and isinstance(host, str)):
        return None
    if not isinstance(port, int) or isinstance(port, bool) or not 0 < port < 65536:
        return None
    try:
        bytes.fromhex(node)
        device_id = parse_device_id(device)
    except (ValueError, InvalidDeviceId):
        return None
    if not node or len(node) > 64 or not reachable_beyond_link(host):
        return None
    label = "".join(c for c in hostname if c.isprintable())[:253] if isinstance(hostname, str) else ""
    return KnownServer(node.lower(), device_id, host, port, label)


def to_learn(
    listed: Iterable[KnownServer], known_nodes: set[str], known_devices: set[str], own_device: str
) -> list[KnownServer]:
    """Which listed servers are new to this client: not this device, not a node or a device it
    has in its table already (by any path), each once."""
    out: list[KnownServer] = []
    seen: set[str] = set()
    for s in listed:
        if s.device_id == own_device or s.node_id in known_nodes or s.device_id in known_devices:
            continue
        if s.node_id in seen:
            continue
        seen.add(s.node_id)
        out.append(s)
    return out


def stale_learned(listed_at: float | None, now: float, ttl: float, *, healthy: bool, usable: bool) -> bool:
    """Whether a learned server leaves the table: no paired server listed it for ``ttl`` seconds,
    and it is not a paired server answering its health checks (it stays while it works)."""
    if listed_at is not None and now - listed_at <= ttl:
        return False
    return not (usable and healthy)
