"""mDNS / DNS-SD on the wire, with python-zeroconf: a server registers its records, a client
browses them. The records themselves (building, parsing, when to update) are ``mdns.py``.

Both run on the links discovery uses (``Discovery.interfaces``), follow them when they change,
and are owned by the role's TaskGroup: ``run()`` opens zeroconf, works until cancelled, then
withdraws (goodbye packets) and closes within ``CLOSE_TIMEOUT``. A zeroconf failure at start is
a warning: discovery by heartbeats goes on without it.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Protocol

import structlog
import zeroconf
from zeroconf import IPVersion, ServiceStateChange, current_time_millis
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

from ollana.discovery.links import Link
from ollana.discovery.mdns import (
    SERVICE_TYPE,
    Network,
    Resolved,
    ServiceRecord,
    Sighting,
    Step,
    next_step,
    parse,
)
from ollana.discovery.packet import Heartbeat
from ollana.discovery.peers import Change, PeerTable, Source
from ollana.ratelimit import RateLimiter
from ollana.waits import wait_set

if TYPE_CHECKING:
    from ollana.runtime import Runtime

log = structlog.get_logger(__name__)


class Links(Protocol):
    """Where the links discovery runs on are read (``Discovery``)."""

    @property
    def interfaces(self) -> Sequence[Link]: ...

# Unregistering sends goodbyes 125 ms apart; a node never waits longer than this for them.
CLOSE_TIMEOUT: Final = 1.0
RESOLVE_MS: Final = 1500
MAX_RESOLVING: Final = 32
# Errors zeroconf raises for a network it cannot use (no multicast, a vanished interface).
_FAILURES: Final = (OSError, zeroconf.Error, RuntimeError, ValueError)


@dataclass(frozen=True, slots=True)
class _Plan:
    """What zeroconf is opened with, from the links: compared to tell when to reopen."""

    interfaces: tuple[str | int, ...]  # IPv4 addresses, IPv6 interface indexes
    addresses: tuple[str, ...]  # what the address records announce
    networks: tuple[Network, ...]  # what "on the link" means for an address a record names

    @classmethod
    def of(cls, links: Iterable[Link]) -> _Plan:
        interfaces: list[str | int] = []
        addresses: list[str] = []
        networks: list[Network] = []
        for link in links:
            usable = [a for a in link.addresses if link.family == 6 or not a.ip.is_link_local]
            if link.family == 4 and usable:
                interfaces.append(str(usable[0].ip))
            elif link.family == 6:
                interfaces.append(link.index)  # zeroconf joins IPv6 groups by interface index
            addresses += [str(a.ip) for a in usable]
            networks += [a.network for a in usable if not a.ip.is_link_local]
        return cls(tuple(interfaces), tuple(dict.fromkeys(addresses)), tuple(dict.fromkeys(networks)))


class _Zeroconf:
    """The AsyncZeroconf of one node role: opened on the links, reopened when they change."""

    def __init__(self, links: Links) -> None:
        self._links = links
        self.plan = _Plan((), (), ())
        self.zc: AsyncZeroconf | None = None
        self._failed = False

    async def ensure(self, before_close: Callable[[], Awaitable[None]] | None = None) -> bool:
        """Open (again, if the links changed); True when a new zeroconf replaced what was there.
        ``before_close``: what must stop using the old one first (a browser)."""
        plan = _Plan.of(self._links.interfaces)
        if (self.zc is not None or self._failed) and plan == self.plan:
            return False
        if self.zc is not None and before_close is not None:
            await before_close()
        await self.close()
        self.plan = plan
        if not plan.interfaces:
            return False
        self.zc = self._open(plan)
        self._failed = self.zc is None
        if self.zc is not None:
            log.info("mdns_started", interfaces=list(plan.interfaces), addresses=list(plan.addresses))
        return self.zc is not None

    @staticmethod
    def _open(plan: _Plan) -> AsyncZeroconf | None:
        v4 = [i for i in plan.interfaces if isinstance(i, str)]
        error: BaseException | None = None
        for interfaces in ([*plan.interfaces], v4):  # without IPv6 if it cannot be used
            if not interfaces:
                continue
            version = IPVersion.V4Only if all(isinstance(i, str) for i in interfaces) else None
            try:
                return AsyncZeroconf(interfaces=interfaces, ip_version=version)
            except _FAILURES as exc:
                error = exc
        log.warning("mdns_unavailable", error=str(error) or type(error).__name__,
                    hint="servers are still found by heartbeats (UDP 11436); mDNS needs UDP 5353")
        return None

    async def close(self) -> None:
        """Withdraw every registration (goodbyes) and close, within CLOSE_TIMEOUT."""
        azc, self.zc = self.zc, None
        if azc is None:
            return
        try:
            async with asyncio.timeout(CLOSE_TIMEOUT):
                await azc.async_close()
        except TimeoutError:
            log.warning("mdns_close_timeout", timeout_s=CLOSE_TIMEOUT)
        except _FAILURES as exc:
            log.debug("mdns_close_failed", error=str(exc) or type(exc).__name__)
        finally:
            if not azc.zeroconf.done:
                azc.zeroconf.close()


def _named_scope(address: str) -> str:
    """zeroconf scopes a link-local address by interface index (``fe80::1%2``); ollana writes the
    interface's name (``fe80::1%eth0``), as heartbeats do."""
    ip, sep, scope = address.partition("%")
    if not sep or not scope.isdigit():
        return address
    try:
        return f"{ip}%{socket.if_indextoname(int(scope))}"
    except OSError:
        return address


def _info(record: ServiceRecord, addresses: Sequence[str], name: str | None = None) -> AsyncServiceInfo:
    return AsyncServiceInfo(
        record.type, name or record.name, port=record.port, properties=record.properties(),
        server=record.server, parsed_addresses=list(addresses),
    )


class MdnsAdvertiser:
    """A server's registrations: what ``wanted()`` returns (nothing while it does not announce),
    kept current. ``poke()`` asks for a look now; TXT changes wait ``gap`` (see mdns.next_step)."""

    def __init__(self, links: Links, rt: Runtime, wanted: Callable[[], list[ServiceRecord]]) -> None:
        self._zc = _Zeroconf(links)
        self._wanted = wanted
        self._clock = rt.clock
        self._gap = rt.config.timings.mdns_update_gap
        self._interval = rt.config.timings.heartbeat_interval
        self._poked = asyncio.Event()
        self._registered: dict[str, tuple[ServiceRecord, AsyncServiceInfo]] = {}
        self._last: dict[str, float] = {}
        self._failed: set[str] = set()

    def poke(self) -> None:
        self._poked.set()

    async def run(self) -> None:
        try:
            while True:
                self._poked.clear()
                if await self._zc.ensure():
                    self._registered.clear()  # withdrawn with the zeroconf they were made on
                wait = await self._reconcile() if self._zc.zc is not None else self._interval
                await wait_set(self._poked, min(wait, self._interval))
        finally:
            await self._zc.close()  # goodbyes for every registration

    async def _reconcile(self) -> float:
        """Take the step each service type needs now (together: probing takes a second); return
        how long until one needs another look."""
        wanted = {r.type: r for r in self._wanted()}
        wait, steps = self._interval, []
        for kind in sorted(wanted.keys() | self._registered.keys()):
            held = self._registered.get(kind)
            step, later = next_step(
                held[0] if held else None, wanted.get(kind), last=self._last.get(kind, -1e9),
                failed=kind in self._failed, now=self._clock(), gap=self._gap,
            )
            wait = min(wait, later)
            if step is not None:
                steps.append(self._take(step, kind, held, wanted.get(kind)))
                wait = 0.0 if step is Step.UNREGISTER and kind in wanted else wait
        await asyncio.gather(*steps)
        return wait

    async def _take(self, step: Step, kind: str, held: tuple[ServiceRecord, AsyncServiceInfo] | None,
                    record: ServiceRecord | None) -> None:
        azc = self._zc.zc
        assert azc is not None
        self._last[kind] = self._clock()
        try:
            if step is Step.UNREGISTER and held is not None:
                del self._registered[kind]
                await (await azc.async_unregister_service(held[1]))
                log.info("mdns_unregistered", name=held[1].name)
            elif step is Step.UPDATE and held is not None and record is not None:
                info = _info(record, self._zc.plan.addresses, held[1].name)
                await (await azc.async_update_service(info))
                self._registered[kind] = (record, info)
                log.debug("mdns_updated", name=info.name, txt=record.properties())
            elif step is Step.REGISTER and record is not None:
                info = _info(record, self._zc.plan.addresses)
                await (await azc.async_register_service(info, allow_name_change=True))
                self._registered[kind] = (record, info)
                log.info("mdns_registered", name=info.name, port=record.port, addresses=list(self._zc.plan.addresses))
            self._failed.discard(kind)
        except _FAILURES as exc:
            self._failed.add(kind)
            log.warning("mdns_register_failed", type=kind, step=step.value, error=str(exc) or type(exc).__name__)


@dataclass(slots=True)
class _Seen:
    sighting: Sighting
    held: bool = False  # in the peer table at the last look
    # zeroconf's clock (ms) when the peer table let the server go; None while it is believed.
    stale_since: float | None = None


class MdnsBrowser:
    """A client's view of ``_ollana._tcp``, fed to its peer table: each resolved server goes to
    ``found`` (the client's heartbeat handler: the heartbeat value it amounts to, the address,
    the time), each withdrawn one leaves the table's mDNS path (``apply`` logs and acts on the
    change). Every ``interval`` the servers the table does not hold by mDNS are handed over again
    (a check that failed is retried, as the next heartbeat would). A server the table let go (its
    checks failed: the record outlived it) comes back only with fresh news of it.
    """

    def __init__(self, links: Links, rt: Runtime, table: PeerTable, apply: Callable[[Change | None], None],
                 found: Callable[[Heartbeat, str, float], None]) -> None:
        self._zc = _Zeroconf(links)
        self._own = rt.node.node_id
        self._table = table
        self._clock = rt.clock
        self._on_found = found
        self._apply = apply
        self._interval = rt.config.timings.heartbeat_interval
        self._browser: AsyncServiceBrowser | None = None
        self._seen: dict[str, _Seen] = {}
        self._resolving: dict[str, asyncio.Task[None]] = {}
        self._again: set[str] = set()
        self._tg: asyncio.TaskGroup | None = None
        self._drops = RateLimiter(period=60.0)

    async def run(self) -> None:
        try:
            async with asyncio.TaskGroup() as tg:
                self._tg = tg
                while True:
                    if await self._zc.ensure(before_close=self._unbrowse):
                        assert self._zc.zc is not None
                        self._browser = AsyncServiceBrowser(self._zc.zc.zeroconf, SERVICE_TYPE, handlers=[self._changed])
                    self._refeed()
                    await asyncio.sleep(self._interval)
        finally:
            self._tg = None
            await self._unbrowse()
            await self._zc.close()

    async def _unbrowse(self) -> None:
        browser, self._browser = self._browser, None
        if browser is not None:
            await browser.async_cancel()

    def _changed(self, zeroconf: zeroconf.Zeroconf, service_type: str, name: str,
                 state_change: ServiceStateChange) -> None:
        """The browser's callback (in the event loop): never raises into zeroconf."""
        if state_change is ServiceStateChange.Removed:
            self._again.discard(name)
            task = self._resolving.pop(name, None)
            if task is not None:
                task.cancel()
            seen = self._seen.pop(name, None)
            if seen is not None:
                log.debug("mdns_removed", name=name)
                self._apply(self._table.withdraw(seen.sighting.key, Source.MDNS))
        else:
            self._resolve_soon(name)

    def _refeed(self) -> None:
        zc = self._zc.zc
        for name, seen in list(self._seen.items()):
            key = seen.sighting.key
            was, seen.held = seen.held, self._table.get(key) is not None
            if seen.stale_since is None and was and not seen.held:
                seen.stale_since = current_time_millis()  # expired: its checks failed
            if seen.stale_since is None:
                if not self._table.heard_by(key, Source.MDNS):
                    self._on_found(seen.sighting.heartbeat, seen.sighting.address, self._clock())
                continue
            records = zc.zeroconf.cache.async_entries_with_name(name) if zc is not None else []
            if not records or max(r.created for r in records) > seen.stale_since:
                self._resolve_soon(name)  # news of it since, or nothing left to go by: ask

    def _resolve_soon(self, name: str) -> None:
        if self._tg is None:
            return
        if name in self._resolving:
            self._again.add(name)
            return
        if len(self._resolving) >= MAX_RESOLVING:  # a flood of names: the rest wait for news
            return
        self._resolving[name] = self._tg.create_task(self._resolve(name))

    async def _resolve(self, name: str) -> None:
        try:
            sighting = await self._resolved(name)
            if sighting is None:
                self._seen.pop(name, None)
            elif sighting.heartbeat.node_id != self._own:  # role both: its own server
                self._seen[name] = seen = _Seen(sighting)
                self._on_found(sighting.heartbeat, sighting.address, self._clock())
                seen.held = self._table.get(sighting.key) is not None
        except Exception:  # whatever a remote host announces, the node must go on
            log.exception("mdns_resolve_crashed", name=name)
        finally:
            self._resolving.pop(name, None)
            if name in self._again:
                self._again.discard(name)
                self._resolve_soon(name)

    async def _resolved(self, name: str) -> Sighting | None:
        azc = self._zc.zc
        if azc is None:
            return None
        info = AsyncServiceInfo(SERVICE_TYPE, name)
        try:
            if not await info.async_request(azc.zeroconf, RESOLVE_MS):
                log.debug("mdns_unresolved", name=name)
                return None
            addresses = tuple(_named_scope(a) for a in info.parsed_scoped_addresses())
            resolved = Resolved(name, info.port, addresses, dict(info.properties))
            return parse(resolved, self._zc.plan.networks)
        except _FAILURES as exc:
            allowed, suppressed = self._drops.allow(f"{name}/{type(exc).__name__}", self._clock())
            if allowed:
                log.debug("mdns_record_dropped", name=name, reason=str(exc) or type(exc).__name__,
                          suppressed=suppressed)
            return None

