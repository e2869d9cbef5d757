"""A server's catalogue: what its Ollama holds, what is loaded, how busy it is. Pure values.

The server builds it from its Ollama (``/api/tags``, ``/api/ps``, ``/v1/models``) and its own
count of requests in flight; it serves it at ``GET /ollana/v1/catalog`` and announces its
``generation`` in every heartbeat, so a client refetches only when something changed.
The entries of Ollama's lists are kept as Ollama wrote them: the merged lists a client answers
carry exactly Ollama's fields.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from ollana.fleet.names import model_key

CATALOG_PATH: Final = "/ollana/v1/catalog"
# Every answer a server proxy forwards names the server (host name and short device ID); a
# request carrying it at a client is pinned to the server it names.
SERVER_HEADER: Final = "X-Ollana-Server"
# Bounds on what a peer's document may hold (a client parses what a server sends).
MAX_ENTRIES: Final = 4096
MAX_DOCUMENT: Final = 8 * 1024 * 1024

Entry = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Catalog:
    models: tuple[Entry, ...] = ()  # /api/tags entries
    loaded: tuple[Entry, ...] = ()  # /api/ps entries
    openai: tuple[Entry, ...] = ()  # /v1/models entries
    # Requests in flight on this server per model key (all clients' requests, as the server saw
    # them), and its capacity in parallel requests per loaded model (OLLAMA_NUM_PARALLEL).
    inflight: Mapping[str, int] = field(default_factory=dict)
    capacity: int = 1
    # Derived once: the keys of the models present and loaded.
    present: frozenset[str] = field(init=False, repr=False, compare=False)
    resident: frozenset[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "present", frozenset(_keys(self.models)))
        object.__setattr__(self, "resident", frozenset(_keys(self.loaded)))

    def has(self, key: str) -> bool:
        return key in self.present

    def is_loaded(self, key: str) -> bool:
        return key in self.resident

    def busy(self, key: str) -> int:
        """Requests in flight for ``key`` on this server, as it counted them."""
        return self.inflight.get(key, 0)

    @property
    def generation(self) -> int:
        """A short fingerprint (u32) of what routing and the merged lists depend on.

        ``expires_at`` is left out: it moves with every request, and a few seconds' staleness
        of it matters to nobody.
        """
        basis = {
            "m": sorted((str(e.get("name")), str(e.get("digest"))) for e in self.models),
            "l": sorted(str(e.get("name")) for e in self.loaded),
            "i": sorted((k, v) for k, v in self.inflight.items() if v),
            "c": self.capacity,
        }
        return zlib.crc32(json.dumps(basis, separators=(",", ":")).encode())

    def document(self) -> dict[str, Any]:
        return {
            "generation": self.generation,
            "capacity": self.capacity,
            "inflight": {k: v for k, v in self.inflight.items() if v},
            "models": list(self.models),
            "loaded": list(self.loaded),
            "openai": list(self.openai),
        }

    @classmethod
    def from_document(cls, doc: Any) -> Catalog:
        """Parse a peer's document; raises ValueError for anything malformed."""
        if not isinstance(doc, dict):
            raise ValueError("catalog is not a JSON object")
        capacity = doc.get("capacity")
        if not isinstance(capacity, int) or isinstance(capacity, bool) or not 1 <= capacity <= 1024:
            raise ValueError("catalog capacity must be an integer 1-1024")
        inflight = doc.get("inflight", {})
        if not isinstance(inflight, dict) or len(inflight) > MAX_ENTRIES or not all(
            isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool) and v >= 0
            for k, v in inflight.items()
        ):
            raise ValueError("catalog inflight must map model names to counts")
        counts: dict[str, int] = {}
        for name, count in inflight.items():  # names that normalise alike are one model
            counts[model_key(name)] = counts.get(model_key(name), 0) + count
        return cls(
            models=_entries(doc, "models"),
            loaded=_entries(doc, "loaded"),
            openai=_entries(doc, "openai", name="id"),
            inflight=counts,
            capacity=capacity,
        )


def _entries(doc: dict[str, Any], what: str, name: str = "name") -> tuple[Entry, ...]:
    value = doc.get(what, [])
    if not isinstance(value, list) or len(value) > MAX_ENTRIES:
        raise ValueError(f"catalog {what} must be a list of at most {MAX_ENTRIES}")
    for entry in value:
        if not isinstance(entry, dict) or not isinstance(entry.get(name), str) or not entry[name]:
            raise ValueError(f"catalog {what} entries must be objects with a {name!r}")
    return tuple(value)


def _keys(entries: tuple[Entry, ...]) -> list[str]:
    return [model_key(str(e.get("name") or e.get("model") or "")) for e in entries]


def entries_of(body: Any, what: str, name: str = "name") -> tuple[Entry, ...]:
    """The list under ``what`` in one of Ollama's list answers; ValueError if it has none."""
    if not isinstance(body, dict):
        raise ValueError(f"no {what} list in the answer")
    return _entries(body, what, name)
