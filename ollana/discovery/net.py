"""Interfaces (found with netifaces) and the multicast socket. The only module that knows socket options."""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import netifaces

from ollana.errors import ConfigError

# Linux interface flags (include/uapi/linux/if.h).
IFF_UP: Final = 0x1
IFF_LOOPBACK: Final = 0x8
IFF_MULTICAST: Final = 0x1000
SYS_NET: Final = Path("/sys/class/net")


@dataclass(frozen=True, slots=True)
class Interface:
    name: str
    address: str  # IPv4 address used as the source and multicast interface


def _flags(name: str) -> int | None:
    try:
        return int((SYS_NET / name / "flags").read_text().strip(), 16)
    except (OSError, ValueError):
        return None  # not Linux, or the interface vanished


def _ipv4(name: str) -> str | None:
    try:
        addrs = netifaces.ifaddresses(name).get(netifaces.AF_INET, [])
    except ValueError:
        return None
    for entry in addrs:
        addr = entry.get("addr")
        if addr and not addr.startswith("169.254."):
            return str(addr)
    return None


def _usable(name: str) -> bool:
    flags = _flags(name)
    if flags is None:
        return not name.startswith("lo")
    return bool(flags & IFF_UP) and bool(flags & IFF_MULTICAST) and not flags & IFF_LOOPBACK


def list_interfaces(names: tuple[str, ...] = ()) -> list[Interface]:
    """The interfaces discovery runs on: the named ones, or every up, multicast-capable,
    non-loopback interface with an IPv4 address."""
    if names:
        known = set(netifaces.interfaces())
        result = []
        for name in names:
            if name not in known:
                raise ConfigError(f"no such network interface: {name!r} (have: {', '.join(sorted(known))})")
            addr = _ipv4(name)
            if addr is not None:
                result.append(Interface(name, addr))
        return result
    found = []
    for name in netifaces.interfaces():
        if _usable(name):
            addr = _ipv4(name)
            if addr is not None:
                found.append(Interface(name, addr))
    return found


def open_multicast_socket(port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if hasattr(socket, "SO_REUSEPORT"):
            # Several ollana processes (or tests) on one host may all listen for discovery.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        # TTL 1: discovery never leaves the local link.
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 1)
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 1)
        sock.bind(("", port))
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def _mreq(group: str, iface: Interface) -> bytes:
    return struct.pack("4s4s", socket.inet_aton(group), socket.inet_aton(iface.address))


def join_group(sock: socket.socket, group: str, iface: Interface) -> None:
    try:
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, _mreq(group, iface))
    except OSError as exc:
        if exc.errno != 98:  # EADDRINUSE: already a member on this interface
            raise


def leave_group(sock: socket.socket, group: str, iface: Interface) -> None:
    try:
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_DROP_MEMBERSHIP, _mreq(group, iface))
    except OSError:
        pass  # the interface may already be gone


def set_outgoing_interface(sock: socket.socket, iface: Interface) -> None:
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(iface.address))
