"""Metric label values with bounded cardinality. Pure: no registry, no clock.

A label value that comes from a request or a peer (a path, a model name, a server's name) could
take any value an outsider chooses; each becomes a time series held forever. So paths become
route names from a fixed list, models are named only when a catalogue lists them, and every
open-ended label keeps at most a fixed number of values, then says "other".
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from ollana.fleet.names import DEFAULT_HOST, DEFAULT_NAMESPACE

OTHER: Final = "other"
NONE: Final = "none"

# Ollama's routes (and ollana's own), as they appear in paths; anything else is "other".
_ROUTES: Final = frozenset({
    "/", "/api/version", "/api/tags", "/api/ps", "/api/show", "/api/generate", "/api/chat",
    "/api/embed", "/api/embeddings", "/api/pull", "/api/push", "/api/create", "/api/copy",
    "/api/delete", "/api/me", "/api/signin", "/api/signout",
    "/v1/models", "/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/responses",
    "/v1/messages", "/v1/images/generations",
    "/ollana", "/ollana/v1/status", "/ollana/v1/catalog", "/ollana/v1/peers", "/ollana/v1/hello",
    "/ollana/v1/metrics", "/ollana/v1/dashboard",
})
# Routes with a parameter in the path: the prefix names the route.
_PREFIXES: Final = (
    ("/api/blobs/", "/api/blobs/:digest"),
    ("/v1/models/", "/v1/models/:model"),
    ("/ollana/static/", "/ollana/static"),
)


def route_name(path: str) -> str:
    """The route a request path names, from a fixed set (never the raw path)."""
    trimmed = path.rstrip("/") or "/"
    if trimmed in _ROUTES:
        return trimmed
    for prefix, name in _PREFIXES:
        if path.startswith(prefix) and len(path) > len(prefix):
            return name
    return OTHER


def status_label(status: int) -> str:
    """An HTTP status as a label: the code itself (a bounded set), "aborted" when none was sent."""
    return str(status) if 100 <= status <= 599 else "aborted"


class Bounded:
    """Keeps the first ``limit`` distinct values it is asked about; later new ones are "other".

    Values once admitted keep their own label for the node's life, so a series never changes
    name halfway; an outsider inventing names fills the set once and then only grows "other".
    """

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._seen: set[str] = set()

    def __call__(self, value: str) -> str:
        if not value:
            return NONE
        if value in self._seen:
            return value
        if len(self._seen) >= self._limit:
            return OTHER
        self._seen.add(value)
        return value


def model_label(model: str, listed: Callable[[str], bool], bound: Bounded) -> str:
    """A model (its key) as a label: its name only when a catalogue lists it (and the bound
    allows it), as people write it."""
    if not model:
        return NONE
    return bound(display_name(model)) if listed(model) else OTHER


def display_name(key: str) -> str:
    """A model key as Ollama shows it: ``llama3.2:1b``, ``someone/model:tag``, ``host/ns/model:tag``."""
    for prefix in (f"{DEFAULT_HOST}/{DEFAULT_NAMESPACE}/", f"{DEFAULT_HOST}/"):
        if key.startswith(prefix):
            return key[len(prefix):]
    return key
