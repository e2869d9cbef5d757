"""The client's copies of the servers' catalogues, fetched when a server announces a new one.

A server announces its catalogue's generation in heartbeats, mDNS records and status answers;
the client fetches ``GET /ollana/v1/catalog`` only when that generation differs from the copy it
holds (or it holds none), one fetch per server at a time. Role both's own server is read in
process.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable, Coroutine
from typing import Any

import aiohttp
import structlog

from ollana.discovery.peers import Peer, PeerTable
from ollana.fleet.catalog import CATALOG_PATH, MAX_DOCUMENT, Catalog
from ollana.fleet.view import FleetView
from ollana.roles.local import LocalServer

log = structlog.get_logger(__name__)

Spawn = Callable[[Coroutine[Any, Any, None]], "asyncio.Task[None] | None"]


class CatalogFetcher:
    def __init__(
        self,
        view: FleetView,
        table: PeerTable,
        session: aiohttp.ClientSession,
        timeout: float,
        context: Callable[[Peer], ssl.SSLContext | None] | None,
        local: LocalServer | None,
    ) -> None:
        self._view = view
        self._table = table
        self._session = session
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        # Trust mode devices: the context pinned to a paired server (None: not paired, no fetch).
        self._context = context
        self._local = local
        self._fetching: dict[str, asyncio.Task[None]] = {}

    def announced(self, peer: Peer | None, generation: int | None, spawn: Spawn) -> None:
        """A server said which catalogue it has: fetch it (in a task) if it is not the one held."""
        if peer is None or peer.key in self._fetching or not self._view.announced(peer.key, generation):
            return
        key = peer.key

        async def fetch() -> None:
            try:
                await self.fetch(peer)
            finally:
                self._fetching.pop(key, None)

        task = spawn(fetch())
        if task is not None:
            self._fetching[key] = task

    async def fetch(self, peer: Peer) -> None:
        local = self._local
        if local is not None and peer.key == local.key:
            self._view.fetched(peer.key, await local.keeper.current(), self._view.own_now(peer.key))
            return
        tls = self._context(peer) if self._context is not None else None
        if self._context is not None and tls is None:
            return
        try:
            async with self._session.get(
                peer.url + CATALOG_PATH, timeout=self._timeout, ssl=tls if tls is not None else True,
            ) as resp:
                if resp.status == 404:
                    return  # an older ollana: no catalogue; its requests go the home way
                if resp.status != 200:
                    raise ValueError(f"status {resp.status}")
                if (resp.content_length or 0) > MAX_DOCUMENT:
                    raise ValueError("catalogue too large")
                catalog = Catalog.from_document(await resp.json(content_type=None))
        except (TimeoutError, aiohttp.ClientError, ValueError, OSError) as exc:
            log.debug("catalog_fetch_failed", peer=peer.key, error=str(exc) or type(exc).__name__)
            return
        if self._table.get(peer.key) is None:
            return  # gone while we asked
        if self._view.fetched(peer.key, catalog, self._view.own_now(peer.key)):
            log.debug("catalog_fetched", peer=peer.key, generation=catalog.generation,
                      models=len(catalog.models), loaded=len(catalog.loaded))
