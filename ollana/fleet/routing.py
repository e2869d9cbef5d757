"""Where a request goes in a fleet of servers: a pure function of what the client knows.

Inputs are values (each server's catalogue, this client's own requests in flight, the model's
current server, blob affinity); the output is the order in which to try servers, plus the model's
server to remember. Nothing here reads a clock, a socket or a table: tests feed values in and
check the order that comes out. The rules are in docs/routing.md.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Final, NamedTuple

from ollana.fleet.asks import Ask, Kind
from ollana.fleet.catalog import Catalog

_EMPTY: Final[Mapping[str, int]] = MappingProxyType({})


class Server(NamedTuple):
    """One usable server as routing sees it. (A tuple: built for every server on every request.)"""

    key: str
    healthy: bool = True
    rtt_ms: float | None = None
    catalog: Catalog | None = None
    # This client's requests in flight to the server per model: now, and when the catalogue
    # was fetched (the catalogue's counts already include those).
    own: Mapping[str, int] = _EMPTY
    own_at_fetch: Mapping[str, int] = _EMPTY

    def load(self, model: str) -> int:
        """Requests for ``model`` running or queued there, counting this client's at once."""
        reported = self.catalog.inflight.get(model, 0) if self.catalog is not None else 0
        others = max(0, reported - self.own_at_fetch.get(model, 0))
        return others + self.own.get(model, 0)

    def free(self, model: str) -> int:
        """Free slots for ``model``; negative: the length of the queue a request would join."""
        capacity = self.catalog.capacity if self.catalog is not None else 1
        return capacity - self.load(model)

    def holds(self, model: str) -> bool:
        return self.catalog is not None and model in self.catalog.present

    def has_loaded(self, model: str) -> bool:
        return self.catalog is not None and model in self.catalog.resident


class Decision(NamedTuple):
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
    -> the server that model has been going to. ``affinity``: blob digest -> the server that has
    it (only read for blob uploads and creates).
    """
    if ask.kind is Kind.BLOB or ask.blobs:
        known = {s.key for s in servers}
        for digest in (ask.digest,) if ask.kind is Kind.BLOB else ask.blobs:
            where = affinity.get(digest)
            if where is not None and where in known:
                return Decision(_first(where, home), why="blob")
        if ask.kind is Kind.BLOB:
            return Decision(tuple(home))
    model = ask.model
    if not model:
        return Decision(tuple(home))
    holders = [s for s in servers if s.catalog is not None and model in s.catalog.present]
    if not holders:
        # Nobody has it: the home server answers as one Ollama would (404, or a pull).
        return Decision(tuple(home), why="no holder")
    held = frozenset(s.key for s in holders)
    down = tuple(s.key for s in holders if not s.healthy)
    current = sticky.get(model)
    rank = {key: i for i, key in enumerate(home)}
    # One row per healthy holder, computed once: (not loaded, free slots, nearness, rank, key).
    rows = [
        (model not in s.catalog.resident, s.free(model), s.rtt_ms is None, s.rtt_ms or 0.0, rank.get(s.key, 0), s.key)
        for s in holders
        if s.healthy and s.catalog is not None
    ]
    if ask.kind is not Kind.INFER:
        # Reading or managing a model: the server it runs on, else a loaded copy, else nearest.
        rows.sort(key=lambda r: (r[5] != current, r[0], r[2], r[3], r[4]))
        return Decision(tuple(r[5] for r in rows) + down, held, why="holder")
    stay = next((r for r in rows if r[5] == current and r[1] > 0), None)
    free = [r for r in rows if r[1] > 0 and r is not stay]
    # Loaded before merely present (no load time), then more free slots, then nearer.
    free.sort(key=lambda r: (r[0], -r[1], r[2], r[3], r[4]))
    full = [r for r in rows if r[1] <= 0 and r is not stay]
    # Every holder busy: the shortest queue, a loaded copy first when queues are equal.
    full.sort(key=lambda r: (-r[1], r[0], r[2], r[3], r[4]))
    order = ([stay] if stay is not None else []) + free + full
    if stay is not None:
        why = "current"
    elif free:
        why = "free slot" if free[0][0] else "loaded"
    else:
        why = "queue"
    stick = None
    if order and not any(r[5] == current for r in rows):
        stick = order[0][5]  # the model's first (or new) server: keep it there from now on
    return Decision(tuple(r[5] for r in order) + down, held, stick, why)


def _first(key: str, home: Sequence[str]) -> tuple[str, ...]:
    return (key, *(k for k in home if k != key))
