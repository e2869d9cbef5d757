"""The discovery endpoint: owns the UDP sockets (IPv4 and IPv6), follows the links, receives and
sends packets on every link.

A datagram is first judged by where it was sent and where it came from (``accept.py``, from the
kernel's packet info), then decoded; only *values* (with the time) reach the role. Drops happen
here with a rate-limited debug line and a counter, and never reach anything else. The links are
scanned again every ``interface_poll`` seconds: groups are joined on new links and again on
readdressed or recreated ones, and the role hears which links are new and which sources became
unreachable (``links.LinkChange``).
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import logging
import socket
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any, Final

from ollana.config import Config
from ollana.discovery import accept, links, net
from ollana.discovery.links import Link, LinkChange, LinkKey
from ollana.discovery.packet import MAX_PACKET, Packet, PacketError, decode, encode
from ollana.errors import StartupError
from ollana.log import TRACE, get_logger
from ollana.ratelimit import RateLimiter

log = get_logger(__name__)

OnPacket = Callable[[Packet, str, float], None]
OnLinks = Callable[[LinkChange], None]

FAMILIES: Final = (4, 6)
# Datagrams read per wake-up of a socket, so a flood cannot starve the rest of the node.
BATCH: Final = 64
# Sources remembered with the links they were heard on (bounded against forged on-link sources).
MAX_HEARD: Final = 4096


class Discovery:
    def __init__(
        self,
        *,
        port: int,
        groups: dict[int, str],
        interface_names: tuple[str, ...],
        instance_id: bytes,
        clock: Callable[[], float],
        on_packet: OnPacket,
        on_links: OnLinks | None = None,
        poll: float = 1.0,
    ) -> None:
        self._port = port
        self._groups = groups
        self._group_ips = {family: ipaddress.ip_address(group) for family, group in groups.items()}
        self._names = interface_names
        self._instance_id = instance_id
        self._clock = clock
        self._on_packet = on_packet
        self._on_links = on_links
        self._poll = poll
        self._socks: dict[int, socket.socket] = {}
        self._links: list[Link] = []
        self._by_index: dict[tuple[int, int], Link] = {}
        self._heard: dict[str, frozenset[LinkKey]] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._drops = RateLimiter(period=10.0)
        self._send_errors = RateLimiter(period=30.0)
        self._join_errors = RateLimiter(period=60.0)
        self.accepted: Counter[LinkKey] = Counter()
        self.dropped: Counter[str] = Counter()
        # Packets accepted from others and sent (one per link), by type (metrics read these).
        self.received: Counter[str] = Counter()
        self.sent: Counter[str] = Counter()
        self._seq = 0
        self._levels = logging.getLogger(__name__)  # per-packet lines cost nothing unless enabled

    @property
    def interfaces(self) -> list[Link]:
        return list(self._links)

    @classmethod
    async def started(
        cls, config: Config, instance_id: bytes, clock: Callable[[], float], on_packet: OnPacket,
        on_links: OnLinks | None = None,
    ) -> Discovery | None:
        """The running discovery endpoint a node's config asks for, or None with --no-discovery."""
        if not config.discovery:
            return None
        disc = cls(
            port=config.discovery_port,
            groups={4: config.discovery_group, 6: config.discovery_group6},
            interface_names=config.interfaces, instance_id=instance_id, clock=clock,
            on_packet=on_packet, on_links=on_links, poll=config.timings.interface_poll,
        )
        await disc.start()
        return disc

    def next_seq(self) -> int:
        self._seq = (self._seq + 1) & 0xFFFFFFFF
        return self._seq

    async def start(self) -> None:
        net.check_names(self._names)
        for family in FAMILIES:
            try:
                self._socks[family] = net.open_socket(family, self._port)
            except OSError as exc:
                if family == 6 and exc.errno in (errno.EAFNOSUPPORT, errno.EADDRNOTAVAIL, errno.EPROTONOSUPPORT):
                    log.info("ipv6_unavailable", error=exc.strerror)  # a kernel without IPv6
                    continue
                self.close()
                raise StartupError(
                    f"cannot open the IPv{family} discovery socket on UDP port {self._port}: {exc.strerror}"
                ) from exc
        self._rescan(initial=True)
        loop = asyncio.get_running_loop()
        for family, sock in self._socks.items():
            loop.add_reader(sock.fileno(), self._readable, family)
        self._timer = loop.call_later(self._poll, self._tick)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for sock in self._socks.values():
            try:
                asyncio.get_running_loop().remove_reader(sock.fileno())
            except RuntimeError:
                pass  # no loop running: no reader was added either
            sock.close()  # its group memberships go with it
        self._socks.clear()

    # -- links ---------------------------------------------------------------------------------

    def _tick(self) -> None:
        self._timer = asyncio.get_running_loop().call_later(self._poll, self._tick)
        self.refresh_interfaces()

    def refresh_interfaces(self) -> None:
        """Follow links coming, going and changing (DHCP, Wi-Fi roaming, a recreated interface)."""
        if self._socks:
            self._rescan(initial=False)

    def _rescan(self, *, initial: bool) -> None:
        try:
            current = [link for link in net.list_links(self._names) if link.family in self._socks]
        except Exception as exc:  # noqa: BLE001 - an interface listing must never stop discovery
            log.warning("interface_scan_failed", error=str(exc))
            return
        change = links.diff(self._links, current)
        if not change and not initial:
            return
        before = {link.key: link for link in self._links}
        for link in change.removed:
            net.leave_group(self._socks[link.family], self._groups[link.family], link)
            log.info("interface_removed", interface=link.name, index=link.index, family=f"ipv{link.family}")
        joined: list[Link] = []
        for link in change.readdressed:
            net.leave_group(self._socks[link.family], self._groups[link.family], before[link.key])
        for link in sorted(change.new, key=lambda lk: (lk.name, lk.family)):
            if self._join(link):
                joined.append(link)
            else:
                current.remove(link)  # not joined: a later scan tries again
        self._links = current
        self._by_index = {(link.family, link.index): link for link in current}
        self._heard, stranded = accept.reachable(self._heard, current)
        if not current and (initial or change.removed):
            log.warning("no_discovery_interface",
                        hint="no up, multicast-capable interface with an IPv4 or IPv6 address")
        if not initial and self._on_links is not None and (joined or stranded):
            self._on_links(LinkChange(tuple(joined), stranded))

    def _join(self, link: Link) -> bool:
        group = self._groups[link.family]
        try:
            net.join_group(self._socks[link.family], group, link)
        except OSError as exc:
            allowed, _ = self._join_errors.allow(f"{link.name}/{link.family}", self._clock())
            if allowed:
                log.warning("multicast_join_failed", interface=link.name, group=group, error=exc.strerror)
            return False
        log.info("interface_added", interface=link.name, index=link.index, family=f"ipv{link.family}",
                 address=link.address, group=group)
        return True

    # -- sending -------------------------------------------------------------------------------

    def send(self, build: Callable[[Link], Packet], only: Iterable[Link] | None = None) -> None:
        """Send one packet per link (or per link of ``only``), each built for (and sent from) it."""
        for link in list(self._links if only is None else only):
            sock = self._socks.get(link.family)
            if sock is None:
                continue
            packet = build(link)
            try:
                data = encode(packet)
                net.send(sock, data, self._groups[link.family], self._port, link)
                self.sent[type(packet).__name__.lower()] += 1
                if self._levels.isEnabledFor(logging.DEBUG):
                    self._trace("packet_sent", packet, link.name, data, destination=self._groups[link.family])
            except OSError as exc:
                allowed, _ = self._send_errors.allow(f"{link.name}/{link.family}", self._clock())
                if allowed:
                    log.warning("discovery_send_failed", interface=link.name, family=f"ipv{link.family}",
                                error=exc.strerror)

    # -- receiving -----------------------------------------------------------------------------

    def _readable(self, family: int) -> None:
        sock = self._socks.get(family)
        for _ in range(BATCH):
            if sock is None:
                return
            try:
                datagram = net.receive(sock, MAX_PACKET + 1)  # one byte more: "too big" is seen
            except OSError as exc:
                log.debug("discovery_socket_error", family=f"ipv{family}", error=exc.strerror)
                return
            if datagram is None:
                return
            self._received(family, datagram)

    def _received(self, family: int, dgram: net.Datagram) -> None:
        now = self._clock()
        link = self._by_index.get((family, dgram.ifindex)) if dgram.ifindex is not None else None
        drop = accept.accept(dgram.destination, dgram.source, link, self._group_ips[family])
        if drop is not None:
            self._dropped(drop.value, link.name if link else str(dgram.ifindex), dgram, now)
            return
        assert link is not None
        source = links.scoped(dgram.source, link)
        try:
            packet = decode(dgram.data)
        except PacketError as exc:
            self.dropped[exc.reason] += 1
            allowed, suppressed = self._drops.allow(f"{source}/{exc.reason}", now)
            if allowed:
                log.debug("packet_dropped", source=source, reason=str(exc), size=len(dgram.data),
                          suppressed=suppressed)
            return
        if packet.instance_id == self._instance_id:
            return  # our own packet, looped back
        self.accepted[link.key] += 1
        self.received[type(packet).__name__.lower()] += 1
        if self._levels.isEnabledFor(logging.DEBUG):
            self._trace("packet_received", packet, link.name, dgram.data, source=source)
        self._remember(source, link.key)
        self._on_packet(packet, source, now)

    def _trace(self, event: str, packet: Packet, interface: str, data: bytes, **where: str) -> None:
        log.debug(event, type=type(packet).__name__.lower(), node=packet.node_id.hex(), seq=packet.seq,
                  interface=interface, **where)
        if self._levels.isEnabledFor(TRACE):
            log.trace(f"{event}_bytes", interface=interface, hex=data.hex())

    def _dropped(self, reason: str, where: str, dgram: net.Datagram, now: float) -> None:
        self.dropped[reason] += 1
        # Keyed by interface, not by source: a flood of forged sources makes one line per 10 s.
        allowed, suppressed = self._drops.allow(f"{where}/{reason}", now)
        if allowed:
            log.debug("packet_dropped", source=str(dgram.source), destination=str(dgram.destination),
                      interface=where, reason=reason, size=len(dgram.data), suppressed=suppressed)

    def _remember(self, source: str, key: LinkKey) -> None:
        keys = self._heard.pop(source, frozenset())
        self._heard[source] = keys | {key}  # the most recently heard last
        if len(self._heard) > MAX_HEARD:
            del self._heard[next(iter(self._heard))]

    # -- status --------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        return {
            "port": self._port,
            "groups": {f"ipv{family}": self._groups[family] for family in self._socks},
            "interfaces": self.links_status(),
            "dropped": dict(sorted(self.dropped.items())),
            "received": dict(sorted(self.received.items())),
            "sent": dict(sorted(self.sent.items())),
        }

    def links_status(self) -> list[dict[str, Any]]:
        """The links, each with its group and how many packets from others it accepted there."""
        return [
            {**link.describe(), "group": self._groups[link.family], "heard": self.accepted[link.key]}
            for link in self._links
        ]


def interfaces_status(disc: Discovery | None) -> list[dict[str, Any]]:
    """The links discovery runs on, for a status document."""
    return disc.links_status() if disc is not None else []


def discovery_status(disc: Discovery | None) -> dict[str, Any] | None:
    return disc.status() if disc is not None else None
