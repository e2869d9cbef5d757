"""The client's view of the fleet: each server's catalogue and what this client has in flight.

State only, no I/O and no clock reads: the client role fetches catalogues and hands them in,
asks ``decide`` where a request goes, and reports requests beginning and ending.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any, Final

from ollana.discovery.peers import Peer
from ollana.fleet import merge
from ollana.fleet.asks import Ask, Kind
from ollana.fleet.catalog import Catalog
from ollana.fleet.names import model_key
from ollana.fleet.routing import Decision, Server, decide

# How long a blob is remembered on the server that received it (the create that uses it
# usually follows within seconds; a large upload may take many minutes).
BLOB_MEMORY: Final = 30 * 60.0
MAX_BLOBS: Final = 4096
_NONE: Final[Mapping[str, int]] = MappingProxyType({})
_NO_BLOBS: Final[Mapping[str, str]] = MappingProxyType({})


@dataclass(slots=True)
class Known:
    """One server's catalogue as last fetched, and this client's counts at that moment."""

    catalog: Catalog
    generation: int
    own_at_fetch: dict[str, int] = field(default_factory=dict)


class FleetView:
    def __init__(self) -> None:
        self._known: dict[str, Known] = {}
        self._own: dict[str, Counter[str]] = {}
        self._sticky: dict[str, str] = {}
        self._blobs: dict[str, tuple[str, float]] = {}
        # Servers where this client changed something since their catalogue was fetched:
        # "models" (pull, create, copy, delete, push) or "loaded" (a model used, maybe loaded).
        self._changed: dict[str, set[str]] = {}

    # -- catalogues ------------------------------------------------------------------------

    def announced(self, key: str, generation: int | None) -> bool:
        """A server said its catalogue's generation; True when it should be fetched."""
        known = self._known.get(key)
        if known is None or known.generation < 0:  # never fetched, or found stale
            return True
        return generation is not None and generation != known.generation

    def fetched(self, key: str, catalog: Catalog, own_at_fetch: dict[str, int]) -> bool:
        """Store a fetched catalogue; True when it differs from the one held."""
        before = self._known.get(key)
        self._known[key] = Known(catalog, catalog.generation, own_at_fetch)
        self._changed.pop(key, None)
        return before is None or before.generation != catalog.generation

    def changed_here(self, key: str, what: str) -> None:
        """This client's request changed ``what`` on server ``key``."""
        self._changed.setdefault(key, set()).add(what)

    def outdated(self, key: str, what: str) -> bool:
        """Whether a list of ``what`` ("models" or "loaded") needs ``key``'s catalogue fetched
        first: this client changed it since (read your own writes)."""
        return what in self._changed.get(key, ())

    def own_now(self, key: str) -> dict[str, int]:
        """This client's requests in flight to ``key`` per model (snapshot for ``fetched``)."""
        return dict(self._own.get(key, {}))

    def holds(self, model: str) -> bool:
        """Whether any server's catalogue lists ``model`` (a model key)."""
        return any(model in k.catalog.present for k in self._known.values())

    def catalog(self, key: str) -> Catalog | None:
        known = self._known.get(key)
        return known.catalog if known is not None else None

    def forget(self, key: str) -> None:
        self._known.pop(key, None)
        self._own.pop(key, None)
        self._changed.pop(key, None)
        for model in [m for m, k in self._sticky.items() if k == key]:
            del self._sticky[model]

    def stale(self, key: str, model: str) -> None:
        """``key`` said it has no ``model`` although its catalogue listed it: believe it until
        the next fetch."""
        known = self._known.get(key)
        if known is None:
            return
        cat = known.catalog
        models = tuple(e for e in cat.models if _key(e) != model)
        loaded = tuple(e for e in cat.loaded if _key(e) != model)
        listed = tuple(e for e in cat.openai if model_key(str(e.get("id", ""))) != model)
        known.catalog = replace(cat, models=models, loaded=loaded, openai=listed)
        known.generation = -1  # refetch at the next announcement, whatever it says
        if self._sticky.get(model) == key:
            del self._sticky[model]

    # -- routing ---------------------------------------------------------------------------

    def decide(self, ask: Ask, peers: Sequence[Peer], home: Sequence[str], now: float) -> Decision:
        known, own = self._known, self._own
        servers = []
        for p in peers:
            k = known.get(p.key)
            servers.append(Server(
                p.key, p.healthy, p.rtt_ms,
                k.catalog if k is not None else None,
                own.get(p.key, _NONE),
                k.own_at_fetch if k is not None else _NONE,
            ))
        blobs = ask.kind is Kind.BLOB or ask.blobs
        affinity = self._affinity(now) if blobs else _NO_BLOBS
        decision = decide(ask, servers, home, sticky=self._sticky, affinity=affinity)
        if decision.stick is not None and ask.model:
            self._sticky[ask.model] = decision.stick
        return decision

    def begin(self, key: str, model: str) -> None:
        if model:
            self._own.setdefault(key, Counter())[model] += 1

    def end(self, key: str, model: str) -> None:
        counts = self._own.get(key)
        if model and counts is not None and counts[model] > 0:
            counts[model] -= 1
            if not counts[model]:
                del counts[model]

    def remember_blob(self, digest: str, key: str, now: float) -> None:
        if len(self._blobs) >= MAX_BLOBS:
            self._affinity(now)  # prune what is old
            while len(self._blobs) >= MAX_BLOBS:
                del self._blobs[next(iter(self._blobs))]
        self._blobs.pop(digest, None)
        self._blobs[digest] = (key, now)

    def _affinity(self, now: float) -> dict[str, str]:
        for digest in [d for d, (_, t) in self._blobs.items() if now - t > BLOB_MEMORY]:
            del self._blobs[digest]
        return {d: k for d, (k, _) in self._blobs.items()}

    # -- the merged lists ------------------------------------------------------------------

    def catalogs(self, keys: Iterable[str]) -> list[Catalog]:
        return [k.catalog for key in keys if (k := self._known.get(key)) is not None]

    def merged(self, what: str, keys: Iterable[str]) -> dict[str, Any]:
        catalogs = self.catalogs(keys)
        if what == "ps":
            return merge.ps(catalogs)
        if what == "models":
            return merge.openai_models(catalogs)
        return merge.tags(catalogs)

    def summary(self, key: str) -> dict[str, Any]:
        """For the status document and ``ollana peers``."""
        known = self._known.get(key)
        own = sum(self._own.get(key, {}).values())
        if known is None:
            return {"catalog": None, "own_inflight": own}
        cat = known.catalog
        return {
            "catalog": known.generation,
            "slots": cat.capacity,
            "inflight": sum(cat.inflight.values()),
            "own_inflight": own,
            "models": [str(e.get("name")) for e in cat.models],
            "loaded": [str(e.get("name")) for e in cat.loaded],
        }


def _key(entry: dict[str, Any]) -> str:
    return model_key(str(entry.get("name", "")))
