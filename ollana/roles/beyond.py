"""The client's servers beyond the link: saved peers (``peers.json``) and learned peers.

Saved peers are the servers ``ollana peer add`` wrote down; the client keeps its table in line with
the file (polled with the trust store, at once on SIGHUP). Learned peers, in trust mode devices,
are the servers a paired server has heard (``GET /ollana/v1/peers``, see ``discovery/known.py``):
each is believed only once the certificate at its address hashes to the device ID it claims, and
used only if that device is paired here, exactly like a heartbeat's claim.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Iterable
from typing import Any, Final

import aiohttp
import structlog

from ollana.config import Endpoint
from ollana.discovery.known import (
    MAX_KNOWN,
    PEERS_PATH,
    KnownServer,
    parse_document,
    stale_learned,
    to_learn,
)
from ollana.discovery.peers import Change, ChangeKind, PeerTable, Source
from ollana.discovery.saved import SavedPeersFile
from ollana.runtime import Runtime
from ollana.trust.vetting import ServerVetting
from ollana.waits import wait_set

log = structlog.get_logger(__name__)

Apply = Callable[[Change | None], None]

# Addresses of saved and command-line peers share one key space: one server named twice is one entry.
STATIC_KEY: Final = "static:"
# Learned servers checked at once at most (each check is one TLS handshake).
MAX_CHECKS: Final = 16


def saved_changes(
    wanted: Iterable[Endpoint], in_table: set[Endpoint], command_line: set[Endpoint]
) -> tuple[list[Endpoint], list[Endpoint]]:
    """What makes the table hold the saved peers ``wanted``: (to add, to drop). A server named on
    the command line (``--peer``) is the command line's: never added or dropped for the file."""
    wanted = [e for e in wanted if e not in command_line]
    return [e for e in wanted if e not in in_table], sorted(in_table - set(wanted), key=str)


class SavedSync:
    """Saved peers in the client's table, next to the command line's."""

    def __init__(self, rt: Runtime, table: PeerTable, apply: Apply) -> None:
        cfg = rt.config
        self._rt = rt
        self._table = table
        self._apply = apply
        self._file = SavedPeersFile.load(cfg.state_dir)  # a corrupt file stops the start (exit 2)
        self._command_line = set(cfg.static_peers)
        self._scheme = "https" if rt.devices is not None else "http"
        self._in_table: set[Endpoint] = set()

    def sync(self) -> None:
        """Bring the table in line with the file as last read."""
        add, drop = saved_changes(self._file.peers, self._in_table, self._command_line)
        now = self._rt.clock()
        for endpoint in drop:
            self._in_table.discard(endpoint)
            self._apply(self._table.forget(STATIC_KEY + str(endpoint)))
        for endpoint in add:
            self._in_table.add(endpoint)
            self._apply(self._table.add_static(
                endpoint, now, scheme=self._scheme, trust=self._rt.config.trust.value,
                key=STATIC_KEY + str(endpoint), source=Source.SAVED,
            ))

    def poll(self) -> None:
        if self._file.poll():
            log.info("saved_peers_changed", peers=[str(e) for e in self._file.peers])
            self.sync()

    async def watch(self, period: float, wake: asyncio.Event) -> None:
        """Trust mode open has no trust store poll to ride on: poll every ``period`` seconds, or
        at once when ``wake`` is set (SIGHUP)."""
        while True:
            await wait_set(wake, period)
            wake.clear()
            self.poll()


class Learning:
    """Asks every paired, healthy server which servers it heard; vets and adds the new ones."""

    def __init__(self, rt: Runtime, table: PeerTable, vetting: ServerVetting, apply: Apply) -> None:
        assert rt.devices is not None
        self._rt = rt
        self._table = table
        self._vetting = vetting
        self._apply = apply
        self._own = rt.devices.device_id
        self.period = max(1.0, 2 * rt.config.timings.heartbeat_interval)
        self._timeout = aiohttp.ClientTimeout(total=rt.config.timings.health_timeout)
        # node ID -> when a paired server last listed it
        self._listed_at: dict[str, float] = {}

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.period)
            await self.round()

    async def round(self) -> None:
        askable = [p for p in self._table if p.source is not Source.LOCAL and p.healthy and self._vetting.usable(p)]
        answers = await asyncio.gather(*(self._ask(p.key) for p in askable))
        now = self._rt.clock()
        listed = [s for servers in answers for s in servers]
        for s in listed:
            self._listed_at[s.node_id] = now
        new = to_learn(listed, *self._known(), self._own)
        moved = self._moved(listed)
        await asyncio.gather(*(self._vet(s) for s in [*new, *moved][:MAX_CHECKS]))
        self._expire(now)

    def _known(self) -> tuple[set[str], set[str]]:
        peers = list(self._table)
        nodes = {p.key for p in peers} | {p.node_id for p in peers if p.node_id}
        return nodes, {p.device_id for p in peers if p.device_id}

    def _moved(self, listed: list[KnownServer]) -> list[KnownServer]:
        """Learned servers listed at another address than the one in the table."""
        out = []
        for s in listed:
            peer = self._table.get(s.node_id)
            if peer is not None and peer.source is Source.LEARNED and peer.endpoint != Endpoint(s.host, s.port):
                out.append(s)
        return out

    async def _ask(self, key: str) -> list[KnownServer]:
        peer = self._table.get(key)
        tls = self._vetting.context(peer) if peer is not None else None
        if peer is None or tls is None:
            return []
        try:
            async with self._rt.session.get(peer.url + PEERS_PATH, timeout=self._timeout, ssl=tls) as resp:
                if resp.status == 404:
                    return []  # an older ollana, or one in trust mode open
                if resp.status != 200:
                    raise ValueError(f"status {resp.status}")
                return parse_document(await resp.json(content_type=None), MAX_KNOWN)
        except (TimeoutError, aiohttp.ClientError, ValueError, OSError) as exc:
            log.debug("peers_fetch_failed", peer=key, error=str(exc) or type(exc).__name__)
            return []

    async def _vet(self, s: KnownServer) -> None:
        verdict = self._vetting.verdict(s.host, s.port, s.device_id)
        if verdict is None:
            if not self._vetting.may_check(s.host, s.port, s.device_id):
                return
            try:
                verdict = await self._vetting.check(s.host, s.port, s.device_id, s.hostname)
            except Exception:  # whatever a remote host sends, the node must go on
                log.exception("server_check_crashed", address=f"{Endpoint(s.host, s.port)}")
                return
        if verdict:
            self._take(s)

    def _take(self, s: KnownServer) -> None:
        """A listed server whose certificate proved its ID: into the table (or to its new address)."""
        endpoint = Endpoint(s.host, s.port)
        peer = self._table.get(s.node_id)
        if peer is not None:
            if peer.source is Source.LEARNED and peer.endpoint != endpoint and peer.device_id == s.device_id:
                peer.endpoint = endpoint
                self._apply(Change(ChangeKind.MOVED, peer))
            return
        if s.device_id in self._known()[1]:
            return  # known by another path meanwhile
        change = self._table.add_static(
            endpoint, self._rt.clock(), scheme="https", trust="devices", key=s.node_id,
            source=Source.LEARNED, hostname=s.hostname,
        )
        if change is not None:
            change.peer.device_id, change.peer.node_id = s.device_id, s.node_id
            log.info("server_learned", peer=s.node_id, hostname=s.hostname or None, address=str(endpoint),
                     paired=self._vetting.usable(change.peer))
        self._apply(change)

    def _expire(self, now: float) -> None:
        ttl = 3 * self.period
        for peer in self._table:
            if peer.source is Source.LEARNED and stale_learned(
                self._listed_at.get(peer.key), now, ttl, healthy=peer.healthy, usable=self._vetting.usable(peer),
            ):
                self._apply(self._table.forget(peer.key))
        in_table = {p.key for p in self._table}
        for node in [n for n, at in self._listed_at.items() if n not in in_table and now - at > ttl]:
            del self._listed_at[node]


class Beyond:
    """Both, as the client wires them: saved peers always, learned ones in trust mode devices."""

    def __init__(self, rt: Runtime, table: PeerTable, vetting: ServerVetting | None, apply: Apply) -> None:
        self._rt = rt
        self.saved = SavedSync(rt, table, apply)
        self.learning = Learning(rt, table, vetting, apply) if vetting is not None else None

    def start(self) -> None:
        self.saved.sync()

    def loops(self) -> list[Coroutine[Any, Any, None]]:
        """What runs in the client's task group. In trust mode devices the file is polled with the
        trust store (``poll`` from its tick), which SIGHUP already wakes."""
        loops: list[Coroutine[Any, Any, None]] = []
        if self.learning is not None:
            loops.append(self.learning.run())
        if self._rt.devices is None:
            loops.append(self.saved.watch(self._rt.config.timings.trust_poll, self._rt.reload))
        return loops

    def poll(self) -> None:
        self.saved.poll()
