"""Server role: reverse-proxy the local Ollama on the LAN and announce it while it answers."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, Final

import aiohttp
import structlog
from aiohttp import web

from ollana import __version__
from ollana.config import OLLAMA_DEFAULT_PORT, Role, parse_endpoint
from ollana.discovery.known import PEERS_PATH, KnownServers
from ollana.discovery.links import Link, LinkChange
from ollana.discovery.mdns import ServiceRecord, ollama_record, ollana_record
from ollana.discovery.mdns_io import MdnsAdvertiser
from ollana.discovery.packet import (
    TRUST_DEVICES,
    TRUST_OPEN,
    Goodbye,
    Heartbeat,
    Packet,
    Probe,
    clip,
)
from ollana.discovery.service import Discovery, discovery_status, interfaces_status
from ollana.fleet.asks import Ask, Kind
from ollana.fleet.catalog import CATALOG_PATH, SERVER_HEADER
from ollana.fleet.keeper import CatalogKeeper
from ollana.httpserver import Listener, listening
from ollana.observe.dashboard import server_entry
from ollana.observe.pages import status_pages
from ollana.proxy.answers import error
from ollana.proxy.forward import Target
from ollana.proxy.handler import STATUS_PATH, ProxyHandler
from ollana.proxy.headers import OWN_REQUEST, hop_mark, is_from_ollana
from ollana.roles.local import LocalServer
from ollana.runtime import Ready, Runtime
from ollana.trust.gate import Gate
from ollana.trust.identity import id_to_bytes, short
from ollana.waits import wait_set

log = structlog.get_logger(__name__)

# Probes are answered at once, but at most this often, so a probe flood cannot make us flood.
PROBE_ANSWER_GAP: Final = 0.2
GOODBYE_REPEATS: Final = 2


def answers_probe(*, announcing: bool, now: float, last_answer: float) -> bool:
    """Whether a probe gets a heartbeat now: only while this server announces itself (its
    Ollama answered, no goodbye said; a heartbeat after the goodbye would list a stopping server
    again), and at most every PROBE_ANSWER_GAP."""
    return announcing and now - last_answer >= PROBE_ANSWER_GAP


class OllamaHealth:
    """Whether the local Ollama answers, checked with ``GET /api/version``."""

    def __init__(self, session: aiohttp.ClientSession, base_url: str, timeout: float) -> None:
        self._session = session
        self._url = base_url + "/api/version"
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self.up = False
        self.version = ""
        self.last_error = "not checked yet"
        self.poked = asyncio.Event()

    async def check(self) -> bool:
        """Check once; returns True when the up/down state changed."""
        was = self.up
        try:
            async with self._session.get(self._url, timeout=self._timeout, headers=OWN_REQUEST) as resp:
                if resp.status != 200 or is_from_ollana(resp.headers):
                    raise ValueError(f"status {resp.status}" if resp.status != 200 else "that is an ollana, not an Ollama")
                body = await resp.json(content_type=None)
                self.version = str(body.get("version", "")) if isinstance(body, dict) else ""
            self.up, self.last_error = True, ""
        except (TimeoutError, aiohttp.ClientError, ValueError, OSError) as exc:
            self.up, self.last_error = False, str(exc) or type(exc).__name__
        return self.up != was


class ServerRoute:
    """Every request goes to the local Ollama; requests in flight are counted per model."""

    replays = False

    def __init__(self, target: Target, health: OllamaHealth, keeper: CatalogKeeper) -> None:
        self.target = target
        self._health = health
        self._keeper = keeper

    async def answer(self, request: web.BaseRequest, ask: Ask) -> web.StreamResponse | None:
        return None

    def targets(self, request: web.BaseRequest, ask: Ask) -> list[Target]:
        return [self.target]

    def begin(self, target: Target, ask: Ask) -> None:
        if ask.kind is Kind.INFER:
            self._keeper.begin(ask.model)

    def end(self, target: Target, ask: Ask, status: int | None) -> None:
        # Using a model may load or unload one; managing one changes the list.
        changes = ask.kind in (Kind.INFER, Kind.MANAGE) and status is not None
        if ask.kind is Kind.INFER:
            self._keeper.end(ask.model, changed=changes)
        elif changes:
            self._keeper.poke()

    def failed(self, target: Target, reason: str) -> None:
        log.warning("upstream_unreachable", upstream=target.base_url, reason=reason)
        self._health.poked.set()

    def stale(self, target: Target, ask: Ask) -> None:
        pass

    def unavailable(self, request: web.BaseRequest, tried: list[str]) -> web.Response:
        url = self.target.base_url
        if not self._health.up:
            return error(request, 503, f"ollana: the Ollama at {url} is not answering ({self._health.last_error}); try again later", not_forwarded=True)
        return error(request, 502, f"ollana: cannot reach the Ollama at {url}", not_forwarded=True)


class ServerNode:
    def __init__(self, rt: Runtime) -> None:
        self._rt = rt
        cfg = rt.config
        self._health = OllamaHealth(rt.session, cfg.ollama_url, cfg.timings.health_timeout)
        upstream_host = cfg.ollama_url.split("://", 1)[1].split("/", 1)[0]
        self._keeper = CatalogKeeper(rt.session, cfg.ollama_url, cfg.parallel, cfg.timings.health_timeout)
        self._route = ServerRoute(Target("ollama", cfg.ollama_url, upstream_host), self._health, self._keeper)
        self._discovery: Discovery | None = None
        self._listen = cfg.listen_for(Role.SERVER)
        self._announcing = False
        self._last_probe_answer = -1e9
        self._gate: Gate | None = None
        self._listener: Listener | None = None
        self._mdns: MdnsAdvertiser | None = None
        devices = rt.devices
        self._device_id = id_to_bytes(devices.device_id) if devices is not None else None
        # Trust mode devices: the other servers heard, told to paired clients (learned peers).
        self._known = KnownServers() if devices is not None else None

    async def run(self, shutdown: asyncio.Event, ready: Callable[[Ready], None]) -> None:
        cfg, metrics = self._rt.config, self._rt.metrics
        pages = status_pages(metrics, "server", self._status, self._own_ollama, self._rt.devices)
        handler = ProxyHandler(
            self._rt.session, self._route, {STATUS_PATH: self._status, CATALOG_PATH: self._catalog,
                                            **({PEERS_PATH: self._peers} if self._known is not None else {}),
                                            **pages},
            connect_timeout=cfg.timings.connect_timeout, replay_limit=0, mark=(SERVER_HEADER, self.label),
            hop=hop_mark(self._rt.node.node_id.hex()),
            observer=metrics.observer("server", lambda model: self._keeper.catalog.has(model)),
        )
        served: Callable[[web.BaseRequest], Any] = handler
        if self._rt.devices is not None:
            self._gate = Gate(self._rt.devices, handler, self._rt.node.hostname, on_refusal=metrics.refused)
            served = self._gate
        await self._health.check()
        log.info("ollama_checked", upstream=cfg.ollama_url, up=self._health.up, version=self._health.version or None)
        busy = f"another program (perhaps another ollana) uses port {self._listen.port}; choose another with --listen"
        tls = self._gate.tls.context if self._gate is not None else None
        async with listening(served, self._listen, grace=cfg.timings.grace, busy_hint=busy, ssl_context=tls, limits=cfg.conn_limits) as listener:
            self._listener = listener
            bound = self._listen = listener.endpoint
            self._discovery = await Discovery.started(
                cfg, self._rt.node.instance_id, self._rt.clock, self._on_packet, self._on_links
            )
            if self._discovery is not None:  # mDNS next to the heartbeats
                self._mdns = MdnsAdvertiser(self._discovery, self._rt, self._mdns_records)
            try:
                log.info("serving", role="server", listen=str(bound), upstream=cfg.ollama_url,
                         trust=cfg.trust.value, scheme=self._scheme)
                me = self._rt.devices.identity if self._rt.devices is not None else None
                ready(Ready(
                    Role.SERVER, bound, self._rt.node.node_id.hex(), self._scheme,
                    cert_file=str(me.cert_path) if me else None, key_file=str(me.key_path) if me else None,
                ))
                async with asyncio.TaskGroup() as tg:
                    tasks = [tg.create_task(self._announce_loop()), tg.create_task(self._keeper.run())]
                    if self._rt.devices is not None:
                        tasks.append(tg.create_task(self._rt.devices.watch(cfg.timings.trust_poll, self._trust_tick, self._rt.reload)))
                    if self._mdns is not None:
                        tasks.append(tg.create_task(self._mdns.run()))  # withdraws its records when cancelled
                    await shutdown.wait()
                    self._say_goodbye()  # first: clients drop this server at once, not after mDNS's goodbyes
                    for task in tasks:
                        task.cancel()
                self._say_goodbye()
            finally:
                if self._discovery is not None:
                    self._discovery.close()
            log.info("stopped", role="server", grace_s=cfg.timings.grace)

    def local(self) -> LocalServer:
        """This server as the client side of role both sees it."""
        cfg = self._rt.config
        return LocalServer(
            key=self._rt.node.node_id.hex(), hostname=self._rt.node.hostname, label=self.label,
            ollama=parse_endpoint(self._route.target.host_header, default_port=OLLAMA_DEFAULT_PORT),
            ollama_url=cfg.ollama_url, keeper=self._keeper, up=lambda: self._health.up,
        )

    @property
    def label(self) -> str:
        """How this server names itself to people: host name and short device (or node) ID."""
        devices = self._rt.devices
        ident = short(devices.device_id) if devices is not None else self._rt.node.node_id.hex()[:7]
        return f"{self._rt.node.hostname} ({ident})"

    @property
    def _scheme(self) -> str:
        return "https" if self._rt.devices is not None else "http"

    # -- trust -----------------------------------------------------------------------------

    def _trust_tick(self, allowed_changed: bool) -> None:
        # Pending clients (from hellos) become trust anchors at the next tick, not per hello.
        if self._gate is not None:
            self._gate.refresh(self._listener, allowed_changed=allowed_changed)

    # -- discovery -------------------------------------------------------------------------

    def _heartbeat(self, iface: Link) -> Heartbeat:
        assert self._discovery is not None
        return Heartbeat(
            node_id=self._rt.node.node_id,
            instance_id=self._rt.node.instance_id,
            seq=self._discovery.next_seq(),
            proxy_port=self._listen.port,
            interval_ms=int(self._rt.config.timings.heartbeat_interval * 1000),
            scheme=self._scheme,
            hostname=clip(self._rt.node.hostname),
            ollama_version=clip(self._health.version),
            ollana_version=__version__,
            address=iface.address,
            trust=TRUST_OPEN if self._device_id is None else TRUST_DEVICES,
            device_id=self._device_id,
            catalog_gen=self._keeper.catalog.generation if self._keeper.fresh else None,
        )

    def _say_goodbye(self) -> None:
        disc = self._discovery
        if disc is None or not self._announcing:
            return
        self._announcing = False
        node = self._rt.node
        # Sent twice: a single lost datagram should not leave clients waiting for expiry.
        for _ in range(GOODBYE_REPEATS):
            disc.send(lambda _iface: Goodbye(node.node_id, node.instance_id, disc.next_seq()))
        log.info("goodbye_sent")

    def _mdns_records(self) -> list[ServiceRecord]:
        """What this server registers by mDNS: nothing while it does not announce (as heartbeats)."""
        if not self._announcing:
            return []
        node, devices, port, version = self._rt.node, self._rt.devices, self._listen.port, self._health.version
        mine = ollana_record(
            hostname=node.hostname, node_id=node.node_id, instance_id=node.instance_id, port=port,
            scheme=self._scheme, trust=self._rt.config.trust.value, ollama_version=version,
            device_id=devices.device_id if devices is not None else None,
            catalog_gen=self._keeper.catalog.generation if self._keeper.fresh else None,
        )
        if not self._rt.config.advertise_ollama or devices is not None:
            return [mine]
        return [mine, ollama_record(hostname=node.hostname, server=mine.server, port=port, ollama_version=version)]

    def _on_packet(self, packet: Packet, source: str, now: float) -> None:
        if self._known is not None and isinstance(packet, (Heartbeat, Goodbye)):
            self._known.heard(packet, source, now)
        if not isinstance(packet, Probe) or self._discovery is None:
            return
        if not answers_probe(announcing=self._announcing and self._health.up, now=now,
                             last_answer=self._last_probe_answer):
            return
        self._last_probe_answer = now
        log.debug("probe_answered", source=source)
        self._discovery.send(self._heartbeat)

    def _on_links(self, change: LinkChange) -> None:
        # A link that appeared, or came back recreated or readdressed: announce there at once.
        if change.new and self._discovery is not None and self._announcing:
            self._discovery.send(self._heartbeat, only=change.new)

    async def _announce_loop(self) -> None:
        timings = self._rt.config.timings
        while True:
            changed = await self._health.check()
            if self._health.up:
                # Every interval, so a model pulled on this box directly (not through ollana)
                # reaches clients with the next heartbeat.
                await self._keeper.refresh()
            if changed:
                log.info("ollama_up" if self._health.up else "ollama_down",
                         upstream=self._rt.config.ollama_url, version=self._health.version or None,
                         error=self._health.last_error or None)
            if self._discovery is not None:
                if self._health.up:
                    self._announcing = True
                    self._discovery.send(self._heartbeat)
                elif changed:
                    self._say_goodbye()
            if self._mdns is not None:
                self._mdns.poke()  # registered while announcing, withdrawn with the goodbye
            self._health.poked.clear()
            await wait_set(self._health.poked, timings.heartbeat_interval)

    # -- ollana's own endpoints -----------------------------------------------------------

    def _peers(self) -> dict[str, Any]:
        assert self._known is not None
        return self._known.document(self._rt.clock())

    async def _catalog(self) -> dict[str, Any]:
        return (await self._keeper.current()).document()

    def _own_ollama(self, status: dict[str, Any]) -> list[dict[str, Any]]:
        """The status page's one server row: the Ollama this server shares."""
        catalog = self._keeper.catalog
        return [server_entry(
            name=self.label, address=self._rt.config.ollama_url, trust="this server",
            healthy=self._health.up, rtt_ms=None, inflight=sum(catalog.inflight.values()), slots=catalog.capacity,
            models=[str(e.get("name")) for e in catalog.models] if self._keeper.fresh else None,
            loaded=[str(e.get("name")) for e in catalog.loaded], source="local", current=True,
        )]

    def _status(self) -> dict[str, Any]:
        body: dict[str, Any] = self._rt.base_status(Role.SERVER, self._listen)
        body["upstream"] = {
            "url": self._rt.config.ollama_url,
            "healthy": self._health.up,
            "version": self._health.version,
            "error": self._health.last_error or None,
        }
        body["announcing"] = self._announcing
        body["label"] = self.label
        catalog = self._keeper.catalog
        body["catalog"] = {
            "generation": catalog.generation if self._keeper.fresh else None,
            "slots": catalog.capacity,
            "inflight": sum(catalog.inflight.values()),
            "models": len(catalog.models),
            "loaded": len(catalog.loaded),
        }
        body["interfaces"] = interfaces_status(self._discovery)
        body["discovery"] = discovery_status(self._discovery)
        return body

