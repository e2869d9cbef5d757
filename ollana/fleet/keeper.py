"""The server's catalogue of its Ollama, kept current: refreshed before every heartbeat (the
server's announce loop calls ``refresh``), and soon after any request that may have changed it
(a pull, a create, a model loaded or unloaded).

The server proxy sees every request its Ollama serves, so it is the one place that can count
requests in flight per model (Ollama exposes no such count).
"""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import replace
from typing import Any, Final

import aiohttp
import structlog

from ollana.fleet.catalog import Catalog, entries_of
from ollana.proxy.headers import OWN_REQUEST

log = structlog.get_logger(__name__)

# After requests that change things, refresh at most this often.
REFRESH_GAP: Final = 0.25


class CatalogKeeper:
    def __init__(self, session: aiohttp.ClientSession, ollama_url: str, capacity: int, timeout: float) -> None:
        self._session = session
        self._url = ollama_url
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._base = Catalog(capacity=capacity)
        self._inflight: Counter[str] = Counter()
        self._poked = asyncio.Event()
        # A request that may have changed the lists completed since the last refresh: whoever
        # asks for the catalogue now gets a fresh one (an app that pulls, then lists, sees it).
        self._dirty = False
        self.fresh = False  # fetched at least once since Ollama last answered

    @property
    def catalog(self) -> Catalog:
        return replace(self._base, inflight={k: v for k, v in self._inflight.items() if v})

    def begin(self, model: str) -> None:
        self._inflight[model] += 1

    def end(self, model: str, *, changed: bool) -> None:
        if self._inflight[model] > 0:
            self._inflight[model] -= 1
        if not self._inflight[model]:
            del self._inflight[model]
        if changed:
            self.poke()

    def poke(self) -> None:
        self._dirty = True
        self._poked.set()

    async def current(self) -> Catalog:
        """The catalogue, refreshed first if a request may have changed it since."""
        if self._dirty or not self.fresh:
            await self.refresh()
        return self.catalog

    async def refresh(self) -> bool:
        """Read the lists from Ollama; True when they changed. Keeps the old ones on failure."""
        self._dirty = False  # a poke while this runs makes it dirty again
        try:
            # One after another: one pooled connection serves all three.
            tags = await self._get("/api/tags")
            ps = await self._get("/api/ps")
            openai = await self._get("/v1/models")
            models, loaded = entries_of(tags, "models"), entries_of(ps, "models")
            # /v1/models lists nothing on an Ollama older than the OpenAI routes: not an error.
            listed = entries_of(openai, "data", name="id") if isinstance(openai, dict) and openai.get("data") else ()
        except (TimeoutError, aiohttp.ClientError, ValueError, OSError) as exc:
            log.debug("catalog_refresh_failed", upstream=self._url, error=str(exc) or type(exc).__name__)
            self.fresh = False
            return False
        before = self._base.generation
        self._base = replace(self._base, models=models, loaded=loaded, openai=listed)
        self.fresh = True
        changed = self._base.generation != before
        if changed:
            log.debug("catalog_changed", models=len(models), loaded=len(loaded))
        return changed

    async def _get(self, path: str) -> Any:
        async with self._session.get(self._url + path, timeout=self._timeout, headers=OWN_REQUEST) as resp:
            if path == "/v1/models" and resp.status == 404:
                return None
            if resp.status != 200:
                raise ValueError(f"{path} answered {resp.status}")
            return await resp.json(content_type=None)

    async def run(self) -> None:
        """Refresh shortly after each poke."""
        while True:
            await self._poked.wait()
            await asyncio.sleep(REFRESH_GAP)  # a burst of requests costs one refresh, not one each
            self._poked.clear()
            if self._dirty:
                await self.refresh()
