"""What one heartbeat may do to a known server's entry. Pure: no sockets, no clock.

Anyone on the link can send a well-formed heartbeat, so a heartbeat is a *claim*. It refreshes
an entry only when it repeats what was already proven: the same instance, from an address that
proved to be that node, with a sequence number that grew. Anything else (a new instance, a new
address or port, another device ID) is believed only once that address answers as that node
(trust devices: its certificate hashes to the known device ID; trust open: its
``/ollana/v1/status`` names that node and instance). Until then the old entry keeps serving.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from ollana.discovery.links import preference
from ollana.discovery.packet import Heartbeat

if TYPE_CHECKING:
    from ollana.discovery.peers import Peer

# A heartbeat's interval, as used for expiry, is clamped to this range (seconds): a forged
# packet announcing a month cannot keep a phantom listed, nor one announcing 1 ms drop a server.
MIN_INTERVAL: Final = 0.2
MAX_INTERVAL: Final = 60.0
_HALF: Final = 1 << 31
_SEQ_MOD: Final = 1 << 32


class Verdict(enum.Enum):
    """What a heartbeat about a known node is (stable tags, for logs)."""

    REFRESH = "refresh"  # repeats what was proven: take it
    REPLAY = "replay"  # a sequence number already seen from that address: drop it
    NEEDS_PROOF = "needs_proof"  # a new address, port or instance: check that address first
    IDENTITY_TAKEN = "identity_taken"  # another device ID while the known one is still heard: drop


@dataclass(frozen=True, slots=True)
class Claim:
    """A heartbeat's claim to check: "node ``key``, instance ``instance_id``, is at address:port"."""

    key: str
    address: str
    port: int
    instance_id: str

    @classmethod
    def of(cls, hb: Heartbeat, address: str) -> Claim:
        return cls(hb.node_id.hex(), address, hb.proxy_port, hb.instance_id.hex())


def clamp_interval(interval_ms: int) -> float:
    """The announced heartbeat interval in seconds, clamped to [MIN_INTERVAL, MAX_INTERVAL]."""
    return min(MAX_INTERVAL, max(MIN_INTERVAL, interval_ms / 1000.0))


def seq_newer(seq: int, last: int | None) -> bool:
    """Whether ``seq`` comes after ``last`` (serial number arithmetic, RFC 1982: it wraps at 2**32)."""
    if last is None:
        return True
    return 0 < (seq - last) % _SEQ_MOD < _HALF


def judge(peer: Peer, hb: Heartbeat, source_ip: str, now: float, device_id: str | None, *, check_seq: bool) -> Verdict:
    """Whether a heartbeat from ``source_ip`` about the known ``peer`` is believed as it is.

    ``device_id``: the device ID the heartbeat announces (trust devices; checked against the
    certificate at ``source_ip`` by the caller before it gets here). ``check_seq``: a multicast
    heartbeat (an mDNS record carries no sequence number).
    """
    if device_id is not None and peer.device_id is not None and device_id != peer.device_id:
        # Another key claims this node ID. It may take the node only once the known device went
        # quiet (a real server that reset its identity and restarted without a goodbye).
        return Verdict.IDENTITY_TAKEN if _fresh(peer, now) else Verdict.NEEDS_PROOF
    if peer.instance_id != hb.instance_id.hex() or peer.endpoint.port != hb.proxy_port:
        return Verdict.NEEDS_PROOF
    if source_ip not in peer.addresses:
        return Verdict.NEEDS_PROOF
    if check_seq and not seq_newer(hb.seq, peer.seqs.get(source_ip)):
        return Verdict.REPLAY
    return Verdict.REFRESH


def _fresh(peer: Peer, now: float) -> bool:
    seen = peer.addresses.get(peer.endpoint.host, -math.inf)
    return now - seen <= peer.ttl


def moves(peer: Peer, source_ip: str, now: float, *, mdns: bool, multicast_heard: bool) -> bool:
    """A proven heartbeat of the same instance and port from another proven address: whether the
    entry moves there (its current address went quiet for a whole TTL while this one speaks, or
    this one is preferred: ``links.preference``, IPv4, then IPv6, link-local last). An mDNS
    record (``mdns``) moves the entry only when no heartbeat is heard (``multicast_heard``)."""
    if source_ip == peer.endpoint.host:
        return False
    if preference(source_ip) < preference(peer.endpoint.host):
        return True
    if mdns:
        return not multicast_heard
    return not _fresh(peer, now)


def rehomes(peer: Peer, hb: Heartbeat, source_ip: str) -> bool:
    """Whether a heartbeat moves an entry that has proven nothing yet (its first check is still
    to come) to ``source_ip``, a preferred address (``links.preference``) of the same instance
    and port: the first check then asks there. It proves nothing (the check does), and the entry
    keeps only that address: one heard before it is believed only once it answers itself."""
    return (not peer.proven and peer.instance_id == hb.instance_id.hex() and peer.endpoint.port == hb.proxy_port
            and preference(source_ip) < preference(peer.endpoint.host))


def asks_again(peer: Peer | None, started: float) -> bool:
    """Whether a discovered server's first check, started at ``started`` and ended unanswered,
    is queued again at once: only if it was heard meanwhile. That heartbeat found the check busy
    and was dropped as a duplicate; it is not lost (a client starting with many servers on a busy
    machine sees its first checks time out together, and would wait for each one's next
    heartbeat). Never more checks than heartbeats: a forged server gets no extra ones."""
    return peer is not None and not peer.proven and peer.last_seen > started


def checked_lately(peer: Peer, now: float, interval: float) -> bool:
    """Whether a round of health checks skips ``peer``: it answered one less than half an
    interval ago (its first check, say: 20 servers found at once are not all asked twice within
    a second, on a LAN where every client just started)."""
    return now - peer.last_answer < interval / 2
