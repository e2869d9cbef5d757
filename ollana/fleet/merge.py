"""The fleet's lists as one Ollama would answer them: the union of the servers' catalogues.

Pure. Each model appears once (the first server listing it wins, in the order given: the home
server first); entries keep exactly the fields Ollama wrote; the order is Ollama's (``/api/tags``
newest first, ``/api/ps`` by expiry, latest first).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any

from ollana.fleet.catalog import Catalog, Entry
from ollana.fleet.names import model_key


def _union(lists: Iterable[tuple[Entry, ...]], name: str = "name") -> list[Entry]:
    seen: set[str] = set()
    out: list[Entry] = []
    for entries in lists:
        for entry in entries:
            key = model_key(str(entry.get(name, "")))
            if key not in seen:
                seen.add(key)
                out.append(entry)
    return out


def _newest_first(entries: list[Entry], field: str, parse: Callable[[Any], float]) -> list[Entry]:
    return sorted(entries, key=lambda e: parse(e.get(field)), reverse=True)


def go_time(value: Any) -> float:
    """Seconds since the epoch of one of Go's RFC 3339 times (nanoseconds dropped); 0 if unreadable."""
    if not isinstance(value, str):
        return 0.0
    text = value.replace("Z", "+00:00")
    head, dot, rest = text.partition(".")
    if dot:  # Go writes up to 9 fraction digits; Python reads up to 6
        digits = len(rest) - len(rest.lstrip("0123456789"))
        text = f"{head}.{rest[:min(digits, 6)]}{rest[digits:]}"
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        return 0.0


def tags(catalogs: Iterable[Catalog]) -> dict[str, Any]:
    models = _union(c.models for c in catalogs)
    return {"models": _newest_first(models, "modified_at", go_time)}


def ps(catalogs: Iterable[Catalog]) -> dict[str, Any]:
    models = _union(c.loaded for c in catalogs)
    return {"models": _newest_first(models, "expires_at", go_time)}


def openai_models(catalogs: Iterable[Catalog]) -> dict[str, Any]:
    data = _union((c.openai for c in catalogs), name="id")
    data.sort(key=lambda e: int(e["created"]) if isinstance(e.get("created"), int) else 0, reverse=True)
    return {"object": "list", "data": data}
