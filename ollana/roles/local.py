"""The server side of role both, as the client side in the same process sees it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from ollana.config import Endpoint
from ollana.fleet.keeper import CatalogKeeper

# The round-trip time routing sees for the local Ollama: nearer than any LAN server.
LOCAL_RTT_MS: Final = 0.0


@dataclass(frozen=True, slots=True)
class LocalServer:
    key: str
    hostname: str
    label: str  # how answers from it are marked (X-Ollana-Server)
    ollama: Endpoint
    ollama_url: str
    keeper: CatalogKeeper
    up: Callable[[], bool]  # whether the local Ollama answered its last health check
