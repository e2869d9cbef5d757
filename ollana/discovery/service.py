"""The discovery endpoint: owns the UDP socket, receives and sends packets on every interface.

It decodes at the boundary and hands *values* (with the time) to the role; bad datagrams are
dropped here with a rate-limited debug line and never reach anything else.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from typing import Any

import structlog

from ollana.config import Config
from ollana.discovery import net
from ollana.discovery.packet import Packet, PacketError, decode, encode
from ollana.errors import StartupError
from ollana.ratelimit import RateLimiter

log = structlog.get_logger(__name__)

OnPacket = Callable[[Packet, str, float], None]


class _Receiver(asyncio.DatagramProtocol):
    def __init__(self, owner: Discovery) -> None:
        self._owner = owner

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        self._owner._received(data, str(addr[0]))

    def error_received(self, exc: Exception) -> None:
        log.debug("discovery_socket_error", error=str(exc))


class Discovery:
    def __init__(
        self,
        *,
        port: int,
        group: str,
        interface_names: tuple[str, ...],
        instance_id: bytes,
        clock: Callable[[], float],
        on_packet: OnPacket,
    ) -> None:
        self._port = port
        self._group = group
        self._names = interface_names
        self._instance_id = instance_id
        self._clock = clock
        self._on_packet = on_packet
        self._sock: socket.socket | None = None
        self._transport: asyncio.DatagramTransport | None = None
        self._interfaces: list[net.Interface] = []
        self._drops = RateLimiter(period=10.0)
        self._send_errors = RateLimiter(period=30.0)
        self._seq = 0

    @property
    def interfaces(self) -> list[net.Interface]:
        return list(self._interfaces)

    @classmethod
    async def started(cls, config: Config, instance_id: bytes, clock: Callable[[], float], on_packet: OnPacket) -> Discovery | None:
        """The running discovery endpoint a node's config asks for, or None with --no-discovery."""
        if not config.discovery:
            return None
        disc = cls(
            port=config.discovery_port, group=config.discovery_group, interface_names=config.interfaces,
            instance_id=instance_id, clock=clock, on_packet=on_packet,
        )
        await disc.start()
        return disc


    def next_seq(self) -> int:
        self._seq = (self._seq + 1) & 0xFFFFFFFF
        return self._seq

    async def start(self) -> None:
        # A named interface that does not exist is a configuration error, reported at start.
        for iface in self._names:
            if not net.list_interfaces((iface,)):
                log.warning("interface_without_ipv4", interface=iface)
        try:
            self._sock = net.open_multicast_socket(self._port)
        except OSError as exc:
            raise StartupError(f"cannot open the discovery socket on UDP port {self._port}: {exc.strerror}") from exc
        self.refresh_interfaces()
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(lambda: _Receiver(self), sock=self._sock)
        self._transport = transport

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
            self._transport = None
        elif self._sock is not None:
            self._sock.close()
        self._sock = None

    def refresh_interfaces(self) -> None:
        """Follow interfaces coming and going (DHCP, Wi-Fi roaming) without a restart."""
        if self._sock is None:
            return
        try:
            current = net.list_interfaces(self._names)
        except Exception as exc:  # noqa: BLE001 - an interface listing must never stop discovery
            log.warning("interface_scan_failed", error=str(exc))
            return
        old, new = set(self._interfaces), set(current)
        for iface in old - new:
            net.leave_group(self._sock, self._group, iface)
            log.info("interface_removed", interface=iface.name, address=iface.address)
        for iface in sorted(new - old, key=lambda i: i.name):
            try:
                net.join_group(self._sock, self._group, iface)
            except OSError as exc:
                log.warning("multicast_join_failed", interface=iface.name, error=exc.strerror)
                current.remove(iface)
                continue
            log.info("interface_added", interface=iface.name, address=iface.address, group=self._group)
        if not current and (old or not self._interfaces):
            log.warning("no_discovery_interface", hint="no up, multicast-capable interface with an IPv4 address")
        self._interfaces = current

    def send(self, build: Callable[[net.Interface], Packet]) -> None:
        """Send one packet per interface, each built for (and sent from) that interface."""
        if self._sock is None or self._transport is None:
            return
        for iface in self._interfaces:
            try:
                data = encode(build(iface))
                net.set_outgoing_interface(self._sock, iface)
                self._sock.sendto(data, (self._group, self._port))
            except OSError as exc:
                allowed, _ = self._send_errors.allow(iface.name, self._clock())
                if allowed:
                    log.warning("discovery_send_failed", interface=iface.name, error=exc.strerror)

    def _received(self, data: bytes, source: str) -> None:
        now = self._clock()
        try:
            packet = decode(data)
        except PacketError as exc:
            allowed, suppressed = self._drops.allow(f"{source}/{exc.reason}", now)
            if allowed:
                log.debug("packet_dropped", source=source, reason=str(exc), size=len(data), suppressed=suppressed)
            return
        if packet.instance_id == self._instance_id:
            return  # our own packet, looped back
        self._on_packet(packet, source, now)


def interfaces_status(disc: Discovery | None) -> list[dict[str, str]]:
    """The interfaces discovery runs on, for a status document."""
    return [{"name": i.name, "address": i.address} for i in (disc.interfaces if disc is not None else [])]
