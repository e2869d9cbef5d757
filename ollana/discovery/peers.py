"""The client's table of known servers. Pure state: time is always passed in, nothing does I/O.

Every mutating method returns what changed so the caller can log it; choosing where to send a
request is a pure function of the table and ``now``.
"""

from __future__ import annotations

import enum
import math
from collections import OrderedDict
from collections.abc import Collection, Iterator
from dataclasses import dataclass, field
from typing import Any, Final

from ollana.config import Endpoint
from ollana.discovery import claims
from ollana.discovery.claims import Verdict
from ollana.discovery.links import preference
from ollana.discovery.packet import Goodbye, Heartbeat


class Source(enum.Enum):
    MULTICAST = "multicast"
    MDNS = "mdns"  # DNS-SD, _ollana._tcp.local. (discovery/mdns.py)
    STATIC = "static"  # --peer on the command line
    SAVED = "saved"  # `ollana peer add` (peers.json in the state dir)
    LEARNED = "learned"  # listed by a paired server (GET /ollana/v1/peers), its ID checked here
    LOCAL = "local"  # role both: this machine's own Ollama


# Servers named by an address only: their device is the one their certificate names.
BY_ADDRESS: Final = frozenset({Source.STATIC, Source.SAVED})
# Servers found by what they announce: each is a claim until it answers.
DISCOVERED: Final = frozenset({Source.MULTICAST, Source.MDNS})
# Discovered servers that have not proven themselves yet, kept at most (least recently seen go).
MAX_UNPROVEN: Final = 256


class ChangeKind(enum.Enum):
    ADDED = "added"
    RESTARTED = "restarted"
    MOVED = "moved"
    REMOVED = "removed"
    EXPIRED = "expired"
    HEALTHY = "healthy"
    UNHEALTHY = "unhealthy"


@dataclass(slots=True)
class Peer:
    key: str
    endpoint: Endpoint
    source: Source
    first_seen: float
    last_seen: float
    ttl: float
    instance_id: str = ""
    scheme: str = "http"
    hostname: str = ""
    ollama_version: str = ""
    # devices mode: the device ID (canonical base32) whose certificate the proxy must present.
    # Set from heartbeats once the address was checked, or learned from a static peer's certificate.
    device_id: str | None = None
    trust: str = "open"
    # The server's node ID (hex): a discovered server's key; learned from a static one's status.
    node_id: str = ""
    healthy: bool = True
    rtt_ms: float | None = None
    inflight: int = 0
    last_failure: float = -math.inf
    last_answer: float = -math.inf  # when a check last passed: a slower, older check's failure loses
    # Other addresses the same node was heard on, with when: used if the current one goes quiet.
    addresses: dict[str, float] = field(default_factory=dict)
    # Every path the server is known by now, with when it was last heard there (``source`` is
    # the path that found it first). It leaves the table when no path is left. An mDNS record
    # outlives a server that died without a goodbye: a check it passes counts as hearing it.
    heard: dict[Source, float] = field(default_factory=dict)
    # The last sequence number heard from each address (this instance): replays are dropped.
    seqs: dict[str, int] = field(default_factory=dict)
    # Proven: its address answered as this node (certificate or status). Answered: a health check
    # passed once. Only a proven server is listed, only an answered one gets requests.
    proven: bool = True
    answered: bool = True

    def __post_init__(self) -> None:
        if not self.heard:
            self.heard[self.source] = self.last_seen

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.endpoint}"

    def status(self, now: float) -> dict[str, Any]:
        return {
            "id": self.key,
            "hostname": self.hostname,
            "address": self.endpoint.host,
            "endpoint": str(self.endpoint),  # bracketed when IPv6: [fe80::1%eth0]:11435
            "port": self.endpoint.port,
            "scheme": self.scheme,
            # The main path (multicast before mdns), and every path it is known by.
            "source": next((s for s in Source if s in self.heard), self.source).value,
            "sources": [s.value for s in Source if s in self.heard],
            "healthy": self.healthy,
            "rtt_ms": None if self.rtt_ms is None else round(self.rtt_ms, 3),
            "inflight": self.inflight,
            "ollama_version": self.ollama_version,
            "trust": self.trust,
            "device_id": self.device_id,
            "last_seen_s_ago": round(max(0.0, now - self.last_seen), 3),
        }


@dataclass(frozen=True, slots=True)
class Change:
    kind: ChangeKind
    peer: Peer
    first: bool = False  # a discovered server's first proof: it is really added now (logged so)


class PeerTable:
    def __init__(
        self, missed_heartbeats: int = 3, mdns_grace: float = 6.0, *,
        unproven_ttl: float = math.inf, max_unproven: int = MAX_UNPROVEN,
    ) -> None:
        self._missed = missed_heartbeats
        # An unproven server (it never answered) lasts at most this long after it was last heard,
        # whatever interval its heartbeats announce; at most ``max_unproven`` are kept.
        self._unproven_ttl = unproven_ttl
        self._max_unproven = max_unproven
        self._unproven: OrderedDict[str, None] = OrderedDict()
        self.evicted = 0
        # How long a server found by mDNS stays after it last answered, once its checks fail.
        self._mdns_grace = mdns_grace
        self._peers: dict[str, Peer] = {}
        # The server requests stick to while it stays healthy (blob upload, then create).
        self._current: str | None = None

    def __len__(self) -> int:
        return len(self._peers)

    def __iter__(self) -> Iterator[Peer]:
        return iter(list(self._peers.values()))

    def get(self, key: str) -> Peer | None:
        return self._peers.get(key)

    @property
    def current(self) -> str | None:
        return self._current

    # -- discovery input -------------------------------------------------------------------

    def observe(
        self, hb: Heartbeat, source_ip: str, now: float, device_id: str | None = None, via: Source = Source.MULTICAST,
        *, proven: bool = False,
    ) -> Change | None:
        """A heartbeat from ``source_ip`` (``via`` MDNS: an mDNS record naming it), announcing
        ``device_id``. ``proven``: that address answered as that node (certificate or status); a
        heartbeat about a known node that is no plain refresh changes nothing without it (``claims``)."""
        key = hb.node_id.hex()
        peer = self._peers.get(key)
        if via is Source.MDNS and peer is not None and self._stale(peer, Source.MDNS, now):
            return None  # the record outlived its server: it comes back when it announces anew
        kind, first_proof = None, False
        if peer is None:
            kind = ChangeKind.ADDED
            peer = Peer(
                key=key, endpoint=Endpoint(source_ip, hb.proxy_port), source=via,
                first_seen=now, last_seen=now, ttl=math.inf, node_id=key, healthy=False, proven=proven, answered=False,
            )
            self._admit(peer)
        else:
            verdict = self.judge(hb, source_ip, now, device_id, via)
            rehome = verdict is Verdict.NEEDS_PROOF and not proven and claims.rehomes(peer, hb, source_ip)
            if verdict in (Verdict.REPLAY, Verdict.IDENTITY_TAKEN) or (verdict is Verdict.NEEDS_PROOF and not proven and not rehome):
                return None
            if rehome or peer.instance_id != hb.instance_id.hex() or (device_id or peer.device_id) != peer.device_id:
                # A restarted server deserves a fresh start: forget what the old process did. (An
                # unproven entry keeps only the better address: its first check goes there.)
                kind = ChangeKind.MOVED if rehome else ChangeKind.RESTARTED
                peer.healthy, peer.rtt_ms = peer.answered, None
                peer.addresses.clear()
                peer.seqs.clear()
            elif peer.endpoint.port != hb.proxy_port or claims.moves(
                peer, source_ip, now, mdns=via is Source.MDNS, multicast_heard=Source.MULTICAST in peer.heard,
            ):
                kind = ChangeKind.MOVED
            first_proof = proven and not peer.proven  # by the claim check: added, as if it answered
            peer.proven = peer.proven or proven
        if not peer.proven:
            self._unproven[key] = None  # (re)inserted last: the least recently seen go first
            self._unproven.move_to_end(key)
        peer.last_seen = peer.heard[via] = now
        if via is Source.MULTICAST:
            peer.ttl = self._missed * claims.clamp_interval(hb.interval_ms)
            peer.seqs[source_ip] = hb.seq
        peer.hostname, peer.ollama_version, peer.scheme = hb.hostname, hb.ollama_version, hb.scheme
        peer.device_id, peer.trust = device_id, hb.trust
        peer.addresses[source_ip] = now
        if kind is not None:
            peer.instance_id = hb.instance_id.hex()
            peer.endpoint = Endpoint(source_ip, hb.proxy_port)
            return Change(kind, peer, first_proof)
        return Change(ChangeKind.ADDED, peer, True) if first_proof else None

    def judge(self, hb: Heartbeat, source_ip: str, now: float, device_id: str | None = None,
              via: Source = Source.MULTICAST) -> Verdict | None:
        """What a heartbeat about a known node is (None: the node is new); ``claims.judge``."""
        peer = self._peers.get(hb.node_id.hex())
        return None if peer is None else claims.judge(peer, hb, source_ip, now, device_id, check_seq=via is Source.MULTICAST)

    def _admit(self, peer: Peer) -> None:
        """A new entry; unproven ones are capped, the least recently seen evicted (forged floods)."""
        self._peers[peer.key] = peer
        while len(self._unproven) >= self._max_unproven:
            self._remove(next(iter(self._unproven)), ChangeKind.EXPIRED)  # the oldest
            self.evicted += 1

    def unproven(self) -> int:  # discovered servers not proven yet (not listed, not used)
        return len(self._unproven)

    def goodbye(self, bye: Goodbye) -> Change | None:
        key = bye.node_id.hex()
        peer = self._peers.get(key)
        # A late goodbye from a previous instance must not remove its restarted successor.
        if peer is None or peer.instance_id != bye.instance_id.hex():
            return None
        return self._remove(key, ChangeKind.REMOVED)

    def withdraw(self, key: str, via: Source) -> Change | None:
        """One path no longer knows the server (an mDNS goodbye); it leaves with its last path."""
        peer = self._peers.get(key)
        if peer is None or via not in peer.heard:
            return None
        del peer.heard[via]
        return None if peer.heard else self._remove(key, ChangeKind.REMOVED)

    def heard_by(self, key: str, via: Source) -> bool:
        return (peer := self._peers.get(key)) is not None and via in peer.heard

    def forget_addresses(self, gone: Collection[str], now: float) -> list[Change]:
        """Addresses that no longer reach us (heard only on a link that vanished or changed
        network): a discovered server moves to its best other fresh address, or is dropped."""
        changes: list[Change] = []
        for peer in list(self._peers.values()):
            if peer.source is not Source.MULTICAST or not gone:
                continue
            for addr in gone:
                peer.addresses.pop(addr, None)
            if peer.endpoint.host not in gone:
                continue
            fresh = {a: seen for a, seen in peer.addresses.items() if now - seen <= peer.ttl}
            if fresh:
                best = min(fresh, key=lambda a: (preference(a), -fresh[a]))
                peer.endpoint = Endpoint(best, peer.endpoint.port)
                changes.append(Change(ChangeKind.MOVED, peer))
            elif (change := self._remove(peer.key, ChangeKind.EXPIRED)) is not None:
                changes.append(change)
        return changes

    def add_static(
        self, endpoint: Endpoint, now: float, *, scheme: str = "http", trust: str = "open",
        key: str | None = None, source: Source = Source.STATIC, hostname: str = "",
    ) -> Change | None:
        key = key or f"static:{endpoint}"
        if key in self._peers:
            return None
        peer = Peer(key, endpoint, source, now, now, ttl=math.inf, scheme=scheme, trust=trust, hostname=hostname)
        self._peers[key] = peer
        return Change(ChangeKind.ADDED, peer)

    def expire(self, now: float) -> list[Change]:
        gone = []
        for peer in self._peers.values():
            for path in [s for s in peer.heard if self._stale(peer, s, now)]:
                del peer.heard[path]
            if not peer.heard:
                gone.append(peer.key)
        changes = [self._remove(key, ChangeKind.EXPIRED) for key in gone]
        for peer in self._peers.values():
            stale = [a for a, seen in peer.addresses.items() if now - seen > peer.ttl]
            for addr in stale:
                del peer.addresses[addr]
        return [c for c in changes if c is not None]

    def forget(self, key: str) -> Change | None:
        """Drop a peer for good (a static one that turned out to be this node)."""
        return self._remove(key, ChangeKind.REMOVED)

    def _stale(self, peer: Peer, path: Source, now: float) -> bool:
        if not peer.proven and peer.source in DISCOVERED and now - peer.last_seen > self._unproven_ttl:
            return True
        if path is Source.MDNS:  # no refresh to wait for: the record lasts while the server answers
            # (one that never answered yet is judged by the unproven TTL instead)
            return peer.answered and not peer.healthy and now - peer.heard.get(path, -math.inf) > self._mdns_grace
        if path is Source.MULTICAST:
            return now - peer.heard[path] > peer.ttl
        return now - peer.last_seen > peer.ttl

    def _remove(self, key: str, kind: ChangeKind) -> Change | None:
        self._unproven.pop(key, None)
        if (peer := self._peers.pop(key, None)) is None:
            return None
        self._current = None if self._current == key else self._current
        return Change(kind, peer)

    # -- health input ----------------------------------------------------------------------

    def mark_failed(self, key: str, now: float, *, answered: bool = False, pinned: bool = False,
                    since: float = math.inf) -> Change | None:
        """A check or request failed; ``answered``: the server did answer (a 403, a bad status),
        so it is there, whatever its record says; ``pinned``: over a connection pinned to its
        certificate, so it is that device (a last resort for requests from now on); ``since``:
        when it started (a check that passed meanwhile is newer news)."""
        peer = self._peers.get(key)
        if peer is None or peer.last_answer > since:
            return None
        if answered and pinned:
            peer.answered = peer.proven = True
            self._unproven.pop(key, None)
        if answered and Source.MDNS in peer.heard:
            peer.heard[Source.MDNS] = now
        peer.last_failure = now
        if self._current == key:
            self._current = None
        if peer.healthy:
            peer.healthy = False
            return Change(ChangeKind.UNHEALTHY, peer)
        return None

    def mark_healthy(self, key: str, rtt_ms: float | None, now: float) -> Change | None:
        peer = self._peers.get(key)
        if peer is None:
            return None
        first, peer.answered, peer.proven, peer.last_answer = not peer.proven, True, True, now
        self._unproven.pop(key, None)
        if rtt_ms is not None:
            # Smooth like TCP's SRTT so one slow answer does not reorder servers.
            peer.rtt_ms = rtt_ms if peer.rtt_ms is None else 0.8 * peer.rtt_ms + 0.2 * rtt_ms
        if peer.source is not Source.MULTICAST:
            peer.last_seen = now
        if Source.MDNS in peer.heard:
            # It answers: its record is not one it left behind, and the address (perhaps the
            # record's, preferred to the heartbeats') works.
            peer.heard[Source.MDNS] = peer.addresses[peer.endpoint.host] = now
        if not peer.healthy:
            peer.healthy = True  # (a discovered server's first answer: it is really added now)
            return Change(ChangeKind.ADDED if first else ChangeKind.HEALTHY, peer)
        return None

    def begin(self, key: str) -> None:
        if (peer := self._peers.get(key)) is not None:
            peer.inflight += 1

    def end(self, key: str) -> None:
        if (peer := self._peers.get(key)) is not None and peer.inflight > 0:
            peer.inflight -= 1

    def settle(self, key: str) -> None:
        """A request succeeded on this peer: keep sending there while it stays healthy."""
        if key in self._peers:
            self._current = key

    # -- choice ----------------------------------------------------------------------------

    def candidates(self, now: float) -> list[Peer]:
        return candidates(list(self._peers.values()), self._current, now)


def usable(peer: Peer) -> bool:
    """Whether requests go to ``peer`` before the last resorts: it answered its last check."""
    return peer.healthy


def routable(peer: Peer) -> bool:
    """Whether requests may go to ``peer`` at all: a discovered server only once it answered a
    check (a forged heartbeat makes an entry, never a target)."""
    return peer.answered or peer.source not in DISCOVERED


def listed(peer: Peer) -> bool:
    """Whether status lists ``peer``: a discovered server once it proved to be there."""
    return peer.proven or peer.source not in DISCOVERED


def candidates(peers: list[Peer], current: str | None, now: float) -> list[Peer]:
    """Servers in the order to try them.

    The current server first while it is healthy (stability: an upload and the create that uses
    it must land on the same Ollama); then healthy servers by measured RTT (unmeasured last), then
    fewest in-flight requests; unhealthy ones last, least recently failed first, as a last resort
    since a server marked down may have come back before its next health check.
    """
    peers = [p for p in peers if routable(p)]
    healthy = [p for p in peers if usable(p)]
    healthy.sort(key=lambda p: (p.key != current, p.rtt_ms is None, p.rtt_ms or 0.0, p.inflight, p.key))
    unhealthy = sorted((p for p in peers if not usable(p)), key=lambda p: (p.last_failure, p.key))
    return healthy + unhealthy
