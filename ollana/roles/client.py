"""Client role: listen where Ollama clients look (127.0.0.1:11434) and forward to the best server."""

from __future__ import annotations

import asyncio
import math
import ssl
import time
from collections.abc import Callable, Coroutine
from functools import partial
from typing import Any

import aiohttp
import structlog

from ollana.config import Role, Trust
from ollana.discovery.claims import checked_lately
from ollana.discovery.links import LinkChange
from ollana.discovery.mdns_io import MdnsBrowser
from ollana.discovery.packet import Goodbye, Heartbeat, Packet, Probe
from ollana.discovery.peers import (
    BY_ADDRESS,
    DISCOVERED,
    Change,
    ChangeKind,
    Peer,
    PeerTable,
    Source,
    listed,
    routable,
)
from ollana.discovery.service import Discovery, discovery_status, interfaces_status
from ollana.errors import UpstreamUnavailable
from ollana.fleet.view import FleetView
from ollana.httpserver import listening
from ollana.observe.dashboard import client_servers
from ollana.observe.pages import status_pages
from ollana.proxy import hostcheck
from ollana.proxy.handler import STATUS_PATH, ProxyHandler
from ollana.proxy.headers import hop_mark, is_from_ollana
from ollana.ratelimit import RateLimiter
from ollana.roles.beyond import Beyond
from ollana.roles.client_catalogs import CatalogFetcher
from ollana.roles.client_heard import Intake
from ollana.roles.client_route import ClientRoute, log_change
from ollana.roles.local import LOCAL_RTT_MS, LocalServer
from ollana.runtime import Ready, Runtime
from ollana.trust.tls import PeerIdentityMismatch, check_peer, fetch_peer_cert
from ollana.trust.vetting import ServerVetting
from ollana.waits import wait_set

log = structlog.get_logger(__name__)


class OtherNode(Exception):
    """A discovered server's address answers as another node."""


class ClientNode:
    def __init__(self, rt: Runtime, local: LocalServer | None = None) -> None:
        self._rt = rt
        self._local = local
        self._table = PeerTable(rt.config.timings.missed_heartbeats, mdns_grace=rt.config.timings.peer_ttl,
                                unproven_ttl=rt.config.timings.peer_ttl)
        self._discovery: Discovery | None = None
        self._vetting: ServerVetting | None = None
        if rt.devices is not None:
            self._vetting = ServerVetting(
                rt.devices, rt.session, hostname=rt.node.hostname,
                timeout=rt.config.timings.health_timeout, clock=rt.clock, on_outcome=rt.metrics.vetted,
            )
        self._view = FleetView()
        self._catalogs = CatalogFetcher(
            self._view, self._table, rt.session, rt.config.timings.health_timeout,
            self._vetting.context if self._vetting is not None else None, local,
        )
        self._route = ClientRoute(self._table, self._view, rt.clock, rt.config.timings.no_peer_grace,
                                  self._probe, self._catalogs.fetch, self._announced, self._vetting, local,
                                  routed=rt.metrics.routed, discovery=rt.config.discovery)
        self._listen = rt.config.listen_for(Role.CLIENT)
        self._check_now = asyncio.Event()
        # Peers to check at the next early wake-up (new, restarted, moved); None: every peer.
        self._due: set[str] | None = None
        self._last_probe = -1e9
        self._tg: asyncio.TaskGroup | None = None
        self._beyond: Beyond | None = None
        # Servers in the other trust mode: said once per node, never used.
        self._mismatch = RateLimiter(math.inf)
        first = aiohttp.ClientTimeout(total=rt.config.timings.first_check_timeout)
        self._intake = Intake(
            self._table, self._vetting, trust=rt.config.trust.value, session=rt.session,
            timeout=rt.config.timings.health_timeout, clock=rt.clock, apply=self._apply,
            announced=self._announced, first_check=lambda peer: self._check(peer, first),
            other_mode=self._route.other_mode,
        )
        # Forged floods make unproven servers come and go: their lines are rate-limited.
        self._unproven_log = RateLimiter(period=1.0)

    async def run(self, shutdown: asyncio.Event, ready: Callable[[Ready], None]) -> None:
        cfg = self._rt.config
        guard = None
        if hostcheck.is_loopback(self._listen.host):
            hostname, addresses = hostcheck.own_hostname(), hostcheck.own_addresses()
            guard = partial(hostcheck.allowed, own_hostname=hostname, own_addresses=addresses)
        pages = status_pages(self._rt.metrics, "client", self._status, client_servers, self._rt.devices)
        handler = ProxyHandler(
            self._rt.session, self._route, {STATUS_PATH: self._status, **pages},
            connect_timeout=cfg.timings.connect_timeout, replay_limit=cfg.replay_limit,
            host_allowed=guard, hop=hop_mark(self._rt.node.node_id.hex()),
            observer=self._rt.metrics.observer("client", self._view.holds),
        )
        devices_mode = cfg.trust is Trust.DEVICES
        local = self._local
        if local is not None:
            self._apply(self._table.add_static(
                local.ollama, self._rt.clock(), key=local.key, source=Source.LOCAL, hostname=local.label,
            ))
        for endpoint in cfg.static_peers:
            self._apply(self._table.add_static(
                endpoint, self._rt.clock(), scheme="https" if devices_mode else "http", trust=cfg.trust.value,
            ))
        beyond = self._beyond = Beyond(self._rt, self._table, self._vetting, self._apply)  # saved, learned peers
        beyond.start()
        busy = (
            "an Ollama (or another ollana) is probably already running on this machine; "
            "use `ollana serve --mode server` there, or choose another address with --listen"
        )
        async with listening(handler, self._listen, grace=cfg.timings.grace, busy_hint=busy, limits=cfg.conn_limits) as listener:
            bound = self._listen = listener.endpoint
            self._discovery = await Discovery.started(
                cfg, self._rt.node.instance_id, self._rt.clock, self._on_packet, self._on_links
            )
            found = partial(self._intake.heartbeat, via=Source.MDNS)  # mDNS next to heartbeats, into one table
            mdns = MdnsBrowser(self._discovery, self._rt, self._table, self._apply, found) if self._discovery is not None else None
            try:
                async with asyncio.TaskGroup() as tg:
                    self._tg = tg  # checks of heartbeats run in it: the probe goes out once it exists
                    tasks = [tg.create_task(self._expire_loop()), tg.create_task(self._health_loop()),
                             tg.create_task(self._intake.run(self._spawn))]
                    if self._rt.devices is not None:
                        tasks.append(tg.create_task(self._rt.devices.watch(cfg.timings.trust_poll, self._trust_tick, self._rt.reload)))
                    tasks += [tg.create_task(loop) for loop in beyond.loops()]
                    tasks += [tg.create_task(mdns.run())] if mdns is not None else []
                    self._probe()
                    log.info("serving", role="client", listen=str(bound), trust=cfg.trust.value)
                    ready(Ready(Role.CLIENT, bound, self._rt.node.node_id.hex()))
                    await shutdown.wait()
                    self._tg = None  # no new checks while the group winds down
                    for task in tasks:
                        task.cancel()
            finally:
                self._tg = None
                if self._discovery is not None:
                    self._discovery.close()
            log.info("stopped", role="client", grace_s=cfg.timings.grace)

    def _apply(self, change: Change | None) -> None:
        if change is None:
            return
        if change.peer.proven:
            log_change(change)
            # What left is named in the 503. Not an unproven entry's coming and going: a late
            # heartbeat after a goodbye must not turn "said goodbye" into "heartbeats stopped".
            self._route.note(change)
        else:
            self._unproven_change(change)
        if change.kind in (ChangeKind.ADDED, ChangeKind.RESTARTED, ChangeKind.MOVED):
            if not change.peer.proven:
                self._intake.check_first(change.peer, self._rt.clock())
                return
            if routable(change.peer):
                self._route.peer_added.set()
            if change.peer.healthy and change.kind is ChangeKind.ADDED:
                return  # added by its first answer: just checked
            self._check_soon(change.peer.key)
            if change.kind is ChangeKind.RESTARTED:
                self._view.forget(change.peer.key)  # a new process: its old counts mean nothing
        elif change.kind in (ChangeKind.REMOVED, ChangeKind.EXPIRED):
            self._view.forget(change.peer.key)
            if not len(self._table):
                self._route.peer_added.clear()
        elif change.kind is ChangeKind.HEALTHY:
            self._route.peer_added.set()  # a server that answered: requests waiting may go

    def _unproven_change(self, change: Change) -> None:
        """A server that never answered came or went: a debug line, at most one a second."""
        allowed, suppressed = self._unproven_log.allow(change.kind.value, self._rt.clock())
        if allowed:
            p = change.peer
            log.debug(f"peer_unproven_{change.kind.value}", peer=p.key, address=str(p.endpoint),
                      source=p.source.value, suppressed=suppressed, unproven=self._table.unproven())

    # -- catalogues ------------------------------------------------------------------------

    def _announced(self, peer: Peer | None, generation: int | None = None) -> None:
        """A server said which catalogue it has: fetch it if it is not the one held. Not from a
        server that has not proven itself yet: a forged heartbeat must not make us fetch (its
        first check that passes asks for the catalogue)."""
        if peer is not None and listed(peer) and self._route_policy_usable(peer):
            self._catalogs.announced(peer, generation, self._spawn)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None] | None:
        """A task in the node's group, or None (and the coroutine closed) once it winds down."""
        if self._tg is None:
            coro.close()
            return None
        return self._tg.create_task(coro)

    # -- discovery -------------------------------------------------------------------------

    def _probe(self) -> None:
        disc = self._discovery
        now = self._rt.clock()
        if disc is None or now - self._last_probe < 0.5:
            return
        self._last_probe = now
        node = self._rt.node
        disc.send(lambda _iface: Probe(node.node_id, node.instance_id, disc.next_seq()))

    def _on_packet(self, packet: Packet, source: str, now: float) -> None:
        if isinstance(packet, Heartbeat):
            self._intake.heartbeat(packet, source, now)
        elif isinstance(packet, Goodbye):
            self._apply(self._table.goodbye(packet))

    def _on_links(self, change: LinkChange) -> None:
        # Servers heard only through a link that vanished (or no longer reaches them) are gone;
        # on a new link (or a new network), ask its servers to announce themselves now.
        for gone in self._table.forget_addresses(change.stranded, self._rt.clock()):
            self._apply(gone)
        if change.new:
            self._probe()

    # -- trust -----------------------------------------------------------------------------

    def _trust_tick(self, allowed_changed: bool) -> None:
        if self._beyond is not None:
            self._beyond.poll()  # peers.json rides on the trust store's poll (and SIGHUP)
        if not allowed_changed or self._vetting is None:
            return
        gone = self._vetting.forget_disallowed()
        for peer in self._table:
            if peer.device_id in gone:
                cut = self._route.cut(peer.key)
                log.warning("server_cut_off", peer=peer.key, hostname=peer.hostname or None,
                            address=str(peer.endpoint), requests=cut, reason="disabled on this device")
        self._check_soon(None)  # newly allowed servers: usable at once

    async def _expire_loop(self) -> None:
        period = self._rt.config.timings.heartbeat_interval / 4
        while True:
            await asyncio.sleep(period)
            for change in self._table.expire(self._rt.clock()):
                self._apply(change)

    # -- health ----------------------------------------------------------------------------

    def _check_soon(self, key: str | None) -> None:
        """Check ``key`` (None: every peer) now rather than at the next round."""
        if key is None:
            self._due = None
        elif self._due is not None:
            self._due.add(key)
        self._check_now.set()

    async def _health_loop(self) -> None:
        timeout = aiohttp.ClientTimeout(total=self._rt.config.timings.health_timeout)
        interval = self._rt.config.timings.health_interval
        last_round = -math.inf
        while True:
            self._check_now.clear()
            due, self._due = self._due, set()
            now = self._rt.clock()
            every = due is None  # (asked for: every peer now)
            if every or now - last_round >= interval:
                last_round = now  # a full round, every interval: every peer but those just checked
            # An early wake-up checks only the peers that caused it: 20 servers found one after
            # another cost 20 checks, not 20 rounds of all of them.
            peers = [p for p in self._table if listed(p) and (every or p.key in (due or ()) or (
                last_round == now and not checked_lately(p, now, interval)))]
            if peers:
                results = await asyncio.gather(*(self._check(p, timeout) for p in peers), return_exceptions=True)
                for peer, result in zip(peers, results, strict=True):
                    if isinstance(result, Exception):  # a peer's answers must never stop the checks
                        log.error("peer_check_crashed", peer=peer.key, error=repr(result))
            await wait_set(self._check_now, last_round + interval - self._rt.clock())

    async def _check(self, peer: Peer, timeout: aiohttp.ClientTimeout) -> None:
        local = self._local
        if local is not None and peer.key == local.key:
            now = self._rt.clock()
            if local.up():
                log_change(self._table.mark_healthy(peer.key, LOCAL_RTT_MS, now))
                await self._catalogs.fetch(peer)
            else:
                log_change(self._table.mark_failed(peer.key, now))
            return
        vetting = self._vetting
        tls: ssl.SSLContext | None = None
        if vetting is not None:
            if peer.source in BY_ADDRESS and not vetting.usable(peer):
                await vetting.learn(peer)  # a static peer's device is the one its certificate names
            tls = vetting.context(peer)
            if tls is None:
                return  # not paired: never asked anything but the hello
        started, since, asked = time.perf_counter(), self._rt.clock(), peer.endpoint
        try:
            async with self._rt.session.get(
                peer.url + "/ollana/v1/status", timeout=timeout, ssl=tls if tls is not None else True,
            ) as resp:
                if vetting is not None and peer.device_id is not None and resp.connection is not None:
                    transport = resp.connection.transport
                    check_peer(transport.get_extra_info("ssl_object") if transport else None, peer.device_id)
                body = await resp.json(content_type=None)
                if vetting is not None:
                    vetting.answered(peer, resp.status)
                if resp.status != 200 or not is_from_ollana(resp.headers):
                    raise ValueError(f"status {resp.status}")
            rtt_ms = (time.perf_counter() - started) * 1000
            if isinstance(body, dict) and body.get("node_id") == self._rt.node.node_id.hex():
                # A --peer that is this very node (its own address): every request would loop.
                log.warning("peer_is_this_node", peer=peer.key, address=str(peer.endpoint),
                            hint="remove this --peer: it names this machine's own ollana")
                self._apply(self._table.forget(peer.key))
                return
            if peer.source in DISCOVERED and isinstance(body, dict) and body.get("node_id") != peer.key:
                raise OtherNode(f"it answers as node {body.get('node_id')!r}")  # a forged heartbeat named this address
            upstream = body.get("upstream") if isinstance(body, dict) else None
            if not isinstance(upstream, dict) or not upstream.get("healthy"):
                raise ValueError("its Ollama is not answering")
        except (TimeoutError, aiohttp.ClientError, ValueError, OSError, PeerIdentityMismatch, OtherNode) as exc:
            log.debug("peer_check_failed", peer=peer.key, error=str(exc) or type(exc).__name__)
            answered = isinstance(exc, ValueError)  # (a 403 over the pinned context: it is that device)
            log_change(self._table.mark_failed(peer.key, self._rt.clock(), answered=answered, pinned=tls is not None,
                                               since=since))
            if vetting is not None and peer.device_id is not None:
                await self._after_failed_check(vetting, peer, exc)
            elif vetting is None and peer.source in BY_ADDRESS:
                await self._tell_if_tls(peer)
            return
        if not peer.proven and peer.endpoint != asked:
            return  # moved to a better address meanwhile (claims.rehomes): that one must answer itself
        if tls is not None and peer.device_id is not None and self._rt.devices is not None:
            # LAST SEEN of `ollana device list` on a client: when this paired server last answered.
            self._rt.devices.store.touch_last_seen(peer.device_id, self._rt.devices.wall())
        if isinstance(body, dict):
            peer.hostname = peer.hostname or str(body.get("hostname", ""))
            peer.node_id = peer.node_id or str(body.get("node_id", ""))
        self._apply(self._table.mark_healthy(peer.key, rtt_ms, self._rt.clock()))  # (wakes waiting requests)
        catalog = body.get("catalog") if isinstance(body, dict) else None
        generation = catalog.get("generation") if isinstance(catalog, dict) else None
        if isinstance(generation, int) or self._view.catalog(peer.key) is None:
            self._announced(peer, generation if isinstance(generation, int) else None)

    # -- ollana's own endpoints -----------------------------------------------------------

    def _status(self) -> dict[str, Any]:
        now = self._rt.clock()
        role = Role.BOTH if self._local is not None else Role.CLIENT
        body: dict[str, Any] = self._rt.base_status(role, self._listen)
        body["current_peer"] = self._table.current
        usable = self._route_policy_usable
        body["peers"] = [{**p.status(now), "paired": usable(p), **self._view.summary(p.key)}
                         for p in self._table if listed(p)]
        body["unproven_peers"] = self._table.unproven()  # heard, never answered: not listed, not used
        body["interfaces"] = interfaces_status(self._discovery)
        body["discovery"] = discovery_status(self._discovery)
        return body

    async def _after_failed_check(self, vetting: ServerVetting, peer: Peer, exc: BaseException) -> None:
        if isinstance(exc, (aiohttp.ClientConnectorCertificateError, PeerIdentityMismatch)):
            # The pinned context refused the certificate at that address: not the paired server.
            assert peer.device_id is not None
            vetting.impostor(peer.endpoint.host, peer.endpoint.port, peer.device_id, None)
            if peer.source in BY_ADDRESS:
                peer.device_id = None  # learn again what is there now (it may have a new identity)
            return
        if vetting.refusing(peer) or not isinstance(exc, ValueError):
            # Refused with a 403 or in the handshake: the server may have forgotten us (or never
            # heard our hello). Introduce ourselves again (at most every 30 s).
            await vetting.hello_again(peer)

    async def _tell_if_tls(self, peer: Peer) -> None:
        """Trust mode open, a --peer that does not answer plain HTTP: if it speaks TLS, say why."""
        allowed, _ = self._mismatch.allow(peer.key, self._rt.clock())
        if not allowed:
            return
        try:
            await fetch_peer_cert(peer.endpoint.host, peer.endpoint.port, self._rt.config.timings.health_timeout)
        except UpstreamUnavailable:
            self._mismatch.forget(peer.key)  # not TLS either (down?): ask again later
            return
        log.warning("server_ignored", peer=peer.key, address=str(peer.endpoint), server_trust="devices",
                    client_trust="open", reason="the server speaks TLS and serves only paired devices (trust "
                    "mode devices) and this client runs --trust open; run the client without --trust open "
                    "and pair the two")

    def _route_policy_usable(self, peer: Peer) -> bool:
        return self._vetting.usable(peer) if self._vetting is not None else True
