"""Where a request goes in a fleet of servers: a pure function of what the client knows.

Inputs are values (each server's catalogue, this client's own requests in flight, the model's
current server, blob affinity); the output is the order in which to try servers, plus the model's
server to remember. Nothing here reads a clock, a socket or a table: tests feed values in and
check the order that comes out. The rules are in docs/routing.md.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from ollana.fleet.asks import Ask, Kind
from ollana.fleet.catalog import Catalog


@dataclass(frozen=True, slots=True)
class Server:
    """One usable server as routing sees it."""

    key: str
    healthy: bool = True
    rtt_ms: float | None = None
    catalog: Catalog | None = None
    # This client's requests in flight to the server per model: now, and when the catalogue
    # was fetched (the catalogue's counts already include those).
    own: Mapping[str, int] = field(default_factory=dict)
    own_at_fetch: Mapping[str, int] = field(default_factory=dict)

    def load(self, model: str) -> int:
        """Requests for ``model`` running or queued there, counting this client's at once."""
        reported = self.catalog.busy(model) if self.catalog is not None else 0
        others = max(0, reported - self.own_at_fetch.get(model, 0))
        return others + self.own.get(model, 0)

    def free(self, model: str) -> int:
        """Free slots for ``model``; negative: the length of the queue a request would join."""
        capacity = self.catalog.capacity if self.catalog is not None else 1
        return capacity - self.load(model)

    def holds(self, model: str) -> bool:
        return self.catalog is not None and self.catalog.has(model)

    def has_loaded(self, model: str) -> bool:
        return self.catalog is not None and self.catalog.is_loaded(model)


@dataclass(frozen=True, slots=True)
class Decision:
    order: tuple[str, ...]  # server keys, in the order to try them
    # Servers whose catalogue lists the model: a 404 "not found" from one of them means its
    # catalogue was stale, and the request is tried once more on another.
    holders: frozenset[str] = frozenset()
    stick: str | None = None  # the model's server from now on (None: keep what it was)
    why: str = "home"


def decide(
    ask: Ask,
    servers: Sequence[Server],
    home: Sequence[str],
    *,
    sticky: Mapping[str, str],
    affinity: Mapping[str, str],
) -> Decision:
    """The order to try ``servers`` for ``ask``.

    ``home``: every usable server's key in the order a request without a model takes (the
    current server first while healthy, then by RTT; unhealthy ones last). ``sticky``: model key
    -> the server that model has been going to. ``affinity``: blob digest -> the server that has it.
    """
    known = {s.key for s in servers}
    if ask.kind is Kind.BLOB or ask.blobs:
        digests = (ask.digest,) if ask.kind is Kind.BLOB else ask.blobs
        for digest in digests:
            where = affinity.get(digest)
            if where in known:
                assert where is not None
                return Decision(_first(where, home), why="blob")
        if ask.kind is Kind.BLOB:
            return Decision(tuple(home), why="home")
    if not ask.model:
        return Decision(tuple(home), why="home")
    holders = [s for s in servers if s.holds(ask.model)]
    if not holders:
        # Nobody has it: the home server answers as one Ollama would (404, or a pull).
        return Decision(tuple(home), why="no holder")
    held = frozenset(s.key for s in holders)
    healthy = [s for s in holders if s.healthy]
    down = [s.key for s in holders if not s.healthy]
    current = sticky.get(ask.model)
    rank = {key: i for i, key in enumerate(home)}
    if ask.kind is not Kind.INFER:
        # Reading or managing a model: the server it runs on, else a loaded copy, else nearest.
        healthy.sort(key=lambda s: (s.key != current, not s.has_loaded(ask.model), _near(s), rank.get(s.key, 0)))
        return Decision(tuple(s.key for s in healthy) + tuple(down), held, why="holder")
    model = ask.model
    order: list[Server] = []
    why = "queue"
    stay = next((s for s in healthy if s.key == current and s.free(model) > 0), None)
    if stay is not None:
        order.append(stay)
        why = "current"
    free = [s for s in healthy if s.free(model) > 0 and s is not stay]
    # Loaded before merely present (no load time), then more free slots, then nearer.
    free.sort(key=lambda s: (not s.has_loaded(model), -s.free(model), _near(s), rank.get(s.key, 0)))
    full = [s for s in healthy if s.free(model) <= 0 and s is not stay]
    # Every holder busy: the shortest queue, a loaded copy first when queues are equal.
    full.sort(key=lambda s: (-s.free(model), not s.has_loaded(model), _near(s), rank.get(s.key, 0)))
    if stay is None and free:
        why = "loaded" if free[0].has_loaded(model) else "free slot"
    order += free + full
    stick = None
    current_usable = any(s.key == current for s in healthy)
    if order and not current_usable:
        stick = order[0].key  # the model's first (or new) server: keep it there from now on
    return Decision(tuple(s.key for s in order) + tuple(down), held, stick, why)


def _near(server: Server) -> tuple[bool, float]:
    return (server.rtt_ms is None, server.rtt_ms or 0.0)


def _first(key: str, home: Sequence[str]) -> tuple[str, ...]:
    return (key, *(k for k in home if k != key))
