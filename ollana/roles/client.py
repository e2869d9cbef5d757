"""Client role: listen where Ollama clients look (127.0.0.1:11434) and forward to the best server."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import structlog
from aiohttp import web

from ollana.config import Role
from ollana.discovery.packet import Goodbye, Heartbeat, Packet, Probe
from ollana.discovery.service import Discovery
from ollana.httpserver import listening
from ollana.peers import Change, ChangeKind, Peer, PeerTable
from ollana.proxy.answers import error, json_response
from ollana.proxy.forward import Target
from ollana.proxy.handler import ProxyHandler
from ollana.proxy.headers import is_from_ollana
from ollana.runtime import Ready, Runtime

log = structlog.get_logger(__name__)


def log_change(change: Change | None) -> None:
    if change is None:
        return
    p = change.peer
    fields = {"peer": p.key, "hostname": p.hostname or None, "address": str(p.endpoint), "source": p.source.value}
    if change.kind in (ChangeKind.UNHEALTHY, ChangeKind.EXPIRED):
        log.warning(f"peer_{change.kind.value}", **fields)
    else:
        log.info(f"peer_{change.kind.value}", **fields)


def target_of(peer: Peer) -> Target:
    return Target(peer.key, peer.url, str(peer.endpoint))


class ClientRoute:
    """Routes to the peers in the table, waiting a short grace for discovery when none is known."""

    def __init__(self, table: PeerTable, clock: Callable[[], float], grace: float, probe: Callable[[], None]) -> None:
        self._table = table
        self._clock = clock
        self._grace = grace
        self._probe = probe
        self.peer_added = asyncio.Event()

    async def targets(self) -> list[Target]:
        if not len(self._table):
            self._probe()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.peer_added.wait(), self._grace)
        return [target_of(p) for p in self._table.candidates(self._clock())]

    def begin(self, target: Target) -> None:
        self._table.begin(target.key)

    def end(self, target: Target, *, ok: bool) -> None:
        self._table.end(target.key)
        if ok:
            log_change(self._table.mark_healthy(target.key, None, self._clock()))
            self._table.settle(target.key)

    def failed(self, target: Target, reason: str) -> None:
        log.info("peer_request_failed", peer=target.key, reason=reason)
        log_change(self._table.mark_failed(target.key, self._clock()))

    def unavailable(self, request: web.BaseRequest, tried: list[str]) -> web.Response:
        if not tried:
            return error(
                request, 503,
                f"no Ollama server found on the LAN (waited {self._grace:g} s for discovery); "
                "run `ollana serve` on a machine with Ollama, or pass --peer HOST:PORT",
                not_forwarded=True,
            )
        return error(request, 502, f"no Ollama server on the LAN answered (tried {', '.join(tried)})", not_forwarded=True)


class ClientNode:
    def __init__(self, rt: Runtime) -> None:
        self._rt = rt
        self._table = PeerTable(rt.config.timings.missed_heartbeats)
        self._discovery: Discovery | None = None
        self._route = ClientRoute(self._table, rt.clock, rt.config.timings.no_peer_grace, self._probe)
        self._listen = rt.config.listen_for(Role.CLIENT)
        self._check_now = asyncio.Event()
        self._last_probe = -1e9

    async def run(self, shutdown: asyncio.Event, ready: Callable[[Ready], None]) -> None:
        cfg = self._rt.config
        handler = ProxyHandler(
            self._rt.session, self._route, self._status,
            connect_timeout=cfg.timings.connect_timeout, replay_limit=cfg.replay_limit,
        )
        for endpoint in cfg.static_peers:
            self._apply(self._table.add_static(endpoint, self._rt.clock()))
        busy = (
            "an Ollama (or another ollana) is probably already running on this machine; "
            "use `ollana serve --mode server` there, or choose another address with --listen"
        )
        async with listening(handler, self._listen, grace=cfg.timings.grace, busy_hint=busy) as bound:
            self._listen = bound
            if cfg.discovery:
                self._discovery = Discovery(
                    port=cfg.discovery_port, group=cfg.discovery_group, interface_names=cfg.interfaces,
                    instance_id=self._rt.node.instance_id, clock=self._rt.clock, on_packet=self._on_packet,
                )
                await self._discovery.start()
            try:
                self._probe()
                log.info("serving", role="client", listen=str(bound))
                ready(Ready(Role.CLIENT, bound, self._rt.node.node_id.hex()))
                async with asyncio.TaskGroup() as tg:
                    tasks = [tg.create_task(self._expire_loop()), tg.create_task(self._health_loop())]
                    await shutdown.wait()
                    for task in tasks:
                        task.cancel()
            finally:
                if self._discovery is not None:
                    self._discovery.close()
            log.info("stopped", role="client", grace_s=cfg.timings.grace)

    def _apply(self, change: Change | None) -> None:
        log_change(change)
        if change is None:
            return
        if change.kind in (ChangeKind.ADDED, ChangeKind.RESTARTED, ChangeKind.MOVED):
            self._route.peer_added.set()
            self._check_now.set()
        elif not len(self._table):
            self._route.peer_added.clear()

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
            self._apply(self._table.observe(packet, source, now))
        elif isinstance(packet, Goodbye):
            self._apply(self._table.goodbye(packet))

    async def _expire_loop(self) -> None:
        period = self._rt.config.timings.heartbeat_interval / 4
        tick = 0
        while True:
            await asyncio.sleep(period)
            for change in self._table.expire(self._rt.clock()):
                self._apply(change)
            tick += 1
            if self._discovery is not None and tick % 20 == 0:
                self._discovery.refresh_interfaces()

    # -- health ----------------------------------------------------------------------------

    async def _health_loop(self) -> None:
        timeout = aiohttp.ClientTimeout(total=self._rt.config.timings.health_timeout)
        while True:
            self._check_now.clear()
            peers = list(self._table)
            if peers:
                await asyncio.gather(*(self._check(p, timeout) for p in peers))
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._check_now.wait(), self._rt.config.timings.health_interval)

    async def _check(self, peer: Peer, timeout: aiohttp.ClientTimeout) -> None:
        started = time.perf_counter()
        try:
            async with self._rt.session.get(peer.url + "/ollana/v1/status", timeout=timeout) as resp:
                body = await resp.json(content_type=None)
                if resp.status != 200 or not is_from_ollana(resp.headers):
                    raise ValueError(f"status {resp.status}")
            rtt_ms = (time.perf_counter() - started) * 1000
            upstream = body.get("upstream") if isinstance(body, dict) else None
            if not isinstance(upstream, dict) or not upstream.get("healthy"):
                raise ValueError("its Ollama is not answering")
        except (TimeoutError, aiohttp.ClientError, ValueError, OSError) as exc:
            log.debug("peer_check_failed", peer=peer.key, error=str(exc) or type(exc).__name__)
            log_change(self._table.mark_failed(peer.key, self._rt.clock()))
            return
        if isinstance(body, dict):
            peer.hostname = peer.hostname or str(body.get("hostname", ""))
        log_change(self._table.mark_healthy(peer.key, rtt_ms, self._rt.clock()))

    # -- ollana's own endpoints -----------------------------------------------------------

    async def _status(self, request: web.BaseRequest) -> web.StreamResponse:
        if request.path.rstrip("/") != "/ollana/v1/status":
            return error(request, 404, f"no such ollana endpoint: {request.path}")
        if request.method not in ("GET", "HEAD"):
            return error(request, 405, "method not allowed")
        now = self._rt.clock()
        body: dict[str, Any] = self._rt.base_status(Role.CLIENT, self._listen)
        body["current_peer"] = self._table.current
        body["peers"] = [p.status(now) for p in self._table]
        body["interfaces"] = [
            {"name": i.name, "address": i.address} for i in (self._discovery.interfaces if self._discovery else [])
        ]
        return json_response(200, body)
