"""How long a connection may take and how many a listener keeps: the limits and the decisions,
pure (time passed in). The guard in ``connguard.py`` applies them to sockets."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from enum import Enum
from typing import Final

# Descriptors kept back for everything that is not a client connection: the log file, the
# discovery sockets, the state files, the listeners themselves.
FD_RESERVE: Final = 64


@dataclass(frozen=True, slots=True)
class ConnLimits:
    """Deadlines and caps of one listener, in one value so tests can shrink them."""

    # From accepting a connection (or from the first byte after a keep-alive pause) until its
    # request head is complete, the TLS handshake included: a slowloris gets no more. Go's
    # servers are usually given about this much (ReadHeaderTimeout); a real client sends its
    # head in one write.
    head_timeout: float = 10.0
    # An idle keep-alive connection is closed after this. Longer than the 60 s for which
    # clients keep idle connections (ollana's own upstream pool, Go's and Python's clients
    # keep them 60-90 s), so a client's reuse rarely races our close; far below aiohttp's hour.
    idle_timeout: float = 75.0
    # A request body that stops arriving for this long (while ollana is ready to read it) is
    # answered 408. A body that keeps moving, a multi-GB blob upload, is never cut, and once the
    # body is complete nothing is timed: a generation may stream its answer for hours.
    body_timeout: float = 30.0
    # Connections from one address. A client node multiplexes all its apps over its pool to a
    # server: Ollama queues up to 512 requests (OLLAMA_MAX_QUEUE), so a busy client may hold
    # hundreds. None: no per-source cap.
    per_source: int | None = 512
    # On a loopback listener every local app and any local attacker share 127.0.0.1, so a cap
    # per source would be the total cap: only the total applies there unless this is set (tests).
    cap_loopback_sources: bool = False
    # Connections of one listener in all; lowered further to fit the descriptor limit.
    total: int = 4096


class Phase(Enum):
    HEAD = "head"  # waiting for a request head to complete (or for the TLS handshake)
    HANDLING = "handling"  # a request is being handled; its body may still be arriving
    IDLE = "idle"  # between requests (aiohttp's keep-alive timer closes it after idle_timeout)


class Verdict(Enum):
    HEAD_TIMEOUT = "head_timeout"
    BODY_TIMEOUT = "body_timeout"


class Refusal(Enum):
    PER_SOURCE = "per_source"
    TOTAL = "total"


def effective_total(wanted: int, nofile: int) -> int:
    """The total cap a listener can keep with ``nofile`` descriptors: every proxied connection
    may need an upstream one too, and role both runs two listeners, so a quarter of what is left
    after the reserve each (at least 16, whatever the limit)."""
    return min(wanted, max(16, (nofile - FD_RESERVE) // 4))


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.split("%", 1)[0]).is_loopback
    except ValueError:
        return host == "localhost"


def check(
    phase: Phase,
    now: float,
    limits: ConnLimits,
    *,
    head_since: float,
    last_byte: float,
    body_open: bool,
    reading_paused: bool,
) -> tuple[Verdict | None, float | None]:
    """Whether a connection in ``phase`` is overdue at ``now``, else when to look again (None:
    nothing to time now; aiohttp's keep-alive timer owns the idle phase)."""
    if phase is Phase.HEAD:
        due = head_since + limits.head_timeout
        return (Verdict.HEAD_TIMEOUT, None) if now >= due else (None, due)
    if phase is Phase.HANDLING and body_open and not reading_paused:
        # Paused: ollana stopped reading (its upstream is slow to take the body), not the client.
        due = last_byte + limits.body_timeout
        return (Verdict.BODY_TIMEOUT, None) if now >= due else (None, due)
    return None, None


class ConnCounts:
    """Open connections of one listener, per source address and in total."""

    def __init__(self, limits: ConnLimits, *, total: int, loopback_listener: bool) -> None:
        self._total = total
        per_source = limits.per_source
        if loopback_listener and not limits.cap_loopback_sources:
            per_source = None
        elif per_source is not None:
            # One source never takes more than half of what the descriptors allow: with a low
            # limit (ulimit -n 200 gives a total of 34) others still get in.
            per_source = min(per_source, max(1, total // 2))
        self._per_source = per_source
        self._open: dict[str, int] = {}
        self.count = 0

    def admit(self, source: str) -> Refusal | None:
        """Count a new connection from ``source``, or say why it is refused (then not counted)."""
        if self.count >= self._total:
            return Refusal.TOTAL
        held = self._open.get(source, 0)
        if self._per_source is not None and held >= self._per_source:
            return Refusal.PER_SOURCE
        self._open[source] = held + 1
        self.count += 1
        return None

    def release(self, source: str) -> None:
        held = self._open.get(source, 0)
        if held <= 1:
            self._open.pop(source, None)  # the table holds only sources with open connections
        else:
            self._open[source] = held - 1
        self.count = max(0, self.count - 1)

    def held(self, source: str) -> int:
        return self._open.get(source, 0)
