"""Which claims get checked, and when: a bounded, fair queue. Pure: no sockets, no clock.

Checking a claim costs a connection (a TLS handshake, a status request) that may hang until its
timeout, so a host that forges heartbeats could keep every check busy. A re-check of a server
that already proved itself (``Lane.KNOWN``) always goes first and has slots of its own. Anything
else passes a per-source rate and a global rate and waits in a bounded queue that drops the
oldest when full, in two lanes with slots of their own: a node's first check (``Lane.NEW``: a
server heard for the first time) and the other claims (``Lane.UNKNOWN``: a further address, a
new instance or device ID of a known node). A client starting on a LAN of dual-stack servers
hears each on two or three addresses at once: their first checks must not wait behind checks
of the servers' other addresses (which may not answer, each then holding a slot for a whole
timeout), nor a flood of forged new nodes keep a real server's new address from being checked.
"""

from __future__ import annotations

import enum
from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Final, Generic, TypeVar

K = TypeVar("K", bound=Hashable)

KNOWN_SLOTS: Final = 8
# First checks: a LAN's servers, each checked once when a client starts (20 at once in the lab's
# 20x20 test, on a loaded machine: each check may take a second there).
NEW_SLOTS: Final = 16
UNKNOWN_SLOTS: Final = 8
MAX_WAITING: Final = 64
# One unknown claim per source address per this many seconds...
SOURCE_GAP: Final = 1.0
# ... and at most this many a second from all sources together (a token bucket of BURST). The
# burst is the queue's size: a client starting on a LAN of 30 dual-stack servers offers about 60
# first checks at once, and an offer refused waits for the server's next heartbeat (2 s).
GLOBAL_RATE: Final = 20.0
BURST: Final = float(MAX_WAITING)
MAX_SOURCES: Final = 4096


class Lane(enum.Enum):
    KNOWN = "known"  # a re-check of what a server already proved
    NEW = "new"  # a node's first check: nothing about it is proven yet
    UNKNOWN = "unknown"  # any other claim: a known node's new address, instance or device ID


# The lanes that pass the rates and share the waiting bound.
_RATED: Final = (Lane.NEW, Lane.UNKNOWN)


class Offer(enum.Enum):
    """What became of an offered claim (stable tags, for logs and counters)."""

    QUEUED = "queued"
    DUPLICATE = "duplicate"  # already waiting or running
    SOURCE_RATE = "source_rate"  # this source had its turn a moment ago
    GLOBAL_RATE = "global_rate"  # too many unknown claims a second from everyone


@dataclass(frozen=True, slots=True)
class Limits:
    known_slots: int = KNOWN_SLOTS
    unknown_slots: int = UNKNOWN_SLOTS
    new_slots: int = NEW_SLOTS
    max_waiting: int = MAX_WAITING
    source_gap: float = SOURCE_GAP
    rate: float = GLOBAL_RATE
    burst: float = BURST


class VetQueue(Generic[K]):
    """Keys of claims to check. ``offer`` what arrives, ``take`` what may start now, ``done``
    when a check ends. Every method is told the time."""

    def __init__(self, limits: Limits = Limits()) -> None:
        self._limits = limits
        self._waiting: dict[Lane, OrderedDict[K, None]] = {lane: OrderedDict() for lane in Lane}
        self._running: dict[K, Lane] = {}
        self._source_at: OrderedDict[str, float] = OrderedDict()
        self._tokens = limits.burst
        self._refilled: float | None = None
        self.dropped: dict[str, int] = {}

    def __len__(self) -> int:
        return sum(len(w) for w in self._waiting.values())

    def running(self, lane: Lane) -> int:
        return sum(1 for held in self._running.values() if held is lane)

    def offer(self, key: K, source: str, lane: Lane, now: float) -> tuple[Offer, K | None]:
        """Queue ``key`` (a claim from ``source``). Returns what became of it, and the key that was
        dropped to make room for it (the oldest unknown one), if any."""
        if key in self._running or any(key in w for w in self._waiting.values()):
            return Offer.DUPLICATE, None
        if lane is Lane.KNOWN:
            self._waiting[lane][key] = None  # bounded by the servers that proved themselves
            return Offer.QUEUED, None
        last = self._source_at.get(source)
        if last is not None and now - last < self._limits.source_gap:
            return self._count(Offer.SOURCE_RATE), None
        self._refill(now)
        if self._tokens < 1.0:
            return self._count(Offer.GLOBAL_RATE), None
        self._tokens -= 1.0
        self._source_at[source] = now
        self._source_at.move_to_end(source)
        if len(self._source_at) > MAX_SOURCES:
            self._source_at.popitem(last=False)
        self._waiting[lane][key] = None
        evicted = None
        if sum(len(self._waiting[rated]) for rated in _RATED) > self._limits.max_waiting:
            # The oldest of the longer lane goes (of the one offered to, if they are as long).
            fuller = max(_RATED, key=lambda rated: (len(self._waiting[rated]), rated is lane))
            evicted, _ = self._waiting[fuller].popitem(last=False)
            self._count(Offer.QUEUED, "evicted")
        return Offer.QUEUED, evicted

    def take(self) -> tuple[K, Lane] | None:
        """The next claim to check now, if a slot is free: known ones first, then first checks."""
        lane = next_lane(
            {lane: len(w) for lane, w in self._waiting.items()},
            {lane: self.running(lane) for lane in Lane},
            self._limits,
        )
        if lane is None:
            return None
        key, _ = self._waiting[lane].popitem(last=False)
        self._running[key] = lane
        return key, lane

    def done(self, key: K) -> None:
        self._running.pop(key, None)

    def _refill(self, now: float) -> None:
        if self._refilled is not None and now > self._refilled:
            self._tokens = min(self._limits.burst, self._tokens + (now - self._refilled) * self._limits.rate)
        self._refilled = now if self._refilled is None else max(self._refilled, now)

    def _count(self, what: Offer, tag: str | None = None) -> Offer:
        name = tag or what.value
        self.dropped[name] = self.dropped.get(name, 0) + 1
        return what


def next_lane(waiting: dict[Lane, int], running: dict[Lane, int], limits: Limits) -> Lane | None:
    """The lane whose oldest claim starts now (None: none may): each lane in slots of its own,
    ``Lane.KNOWN`` first, then first checks, then the other claims."""
    slots = {Lane.KNOWN: limits.known_slots, Lane.NEW: limits.new_slots, Lane.UNKNOWN: limits.unknown_slots}
    for lane in (Lane.KNOWN, Lane.NEW, Lane.UNKNOWN):
        if waiting.get(lane, 0) and running.get(lane, 0) < slots[lane]:
            return lane
    return None
