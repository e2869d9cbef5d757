"""The system's side of discovery: which links there are (netifaces, /sys) and the multicast
sockets, one per address family. The only module that knows socket options.

Why one socket per family rather than one dual-stack socket: joining an IPv4 group and reading
IPv4 packet info need an ``AF_INET`` socket on every platform ollana runs on (a v4-mapped
``AF_INET6`` socket can do neither portably), and a node whose kernel has no IPv6 still runs
IPv4 discovery. The IPv6 socket is ``IPV6_V6ONLY``, so every datagram reaches exactly one of them.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
import struct
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import netifaces

from ollana.discovery.links import IPAddress, IPInterface, Link
from ollana.errors import ConfigError

# Linux interface flags (include/uapi/linux/if.h).
IFF_UP: Final = 0x1
IFF_LOOPBACK: Final = 0x8
IFF_MULTICAST: Final = 0x1000
SYS_NET: Final = Path("/sys/class/net")
LINUX: Final = sys.platform.startswith("linux")
# Python 3.11 does not export IP_PKTINFO; its value is the kernel's (Linux 8, macOS 26).
IP_PKTINFO: Final[int] = int(getattr(socket, "IP_PKTINFO", 8 if LINUX else 26))
IN_PKTINFO: Final = struct.Struct("@i4s4s")  # ifindex, spec_dst, addr (the header's destination)
IN6_PKTINFO: Final = struct.Struct("@16sI")  # addr (the header's destination), ifindex
ANCILLARY_SIZE: Final = socket.CMSG_SPACE(IN6_PKTINFO.size) + socket.CMSG_SPACE(IN_PKTINFO.size)
RECEIVE_BUFFER: Final = 1 << 20  # the kernel caps it (net.core.rmem_max); a burst of probes fits


@dataclass(frozen=True, slots=True)
class Datagram:
    data: bytes
    source: IPAddress
    # From the packet-info control message: where the datagram was sent (a group, or one of
    # this node's addresses) and the interface it arrived on. None if the kernel did not say.
    destination: IPAddress | None
    ifindex: int | None


# -- links ----------------------------------------------------------------------------------------


def _flags(name: str) -> int | None:
    try:
        return int((SYS_NET / name / "flags").read_text().strip(), 16)
    except (OSError, ValueError):
        return None  # not Linux, or the interface vanished


def _usable(name: str) -> bool:
    flags = _flags(name)
    if flags is None:
        return not name.startswith("lo")
    return bool(flags & IFF_UP) and bool(flags & IFF_MULTICAST) and not flags & IFF_LOOPBACK


def _prefix(netmask: str) -> int | None:
    """A netifaces netmask (``255.255.255.0``, ``ffff:ffff:ffff:ffff::/64``) as a prefix length."""
    if "/" in netmask:
        return int(netmask.rsplit("/", 1)[1])
    try:
        return ipaddress.ip_network(f"0.0.0.0/{netmask}").prefixlen
    except ValueError:
        return ipaddress.ip_network(f"::/{netmask}").prefixlen


def _addresses(name: str, family: int) -> tuple[IPInterface, ...]:
    try:
        entries = netifaces.ifaddresses(name).get(family, [])
    except ValueError:
        return ()  # vanished
    found: list[IPInterface] = []
    for entry in entries:
        try:
            addr = str(entry["addr"]).partition("%")[0]
            prefix = _prefix(str(entry.get("netmask") or ("32" if family == netifaces.AF_INET else "128")))
            found.append(ipaddress.ip_interface(f"{addr}/{prefix}"))
        except (KeyError, ValueError):
            continue
    return tuple(found)


def _index(name: str) -> int | None:
    try:
        return socket.if_nametoindex(name)
    except OSError:
        return None  # vanished between the listing and now


def list_links(names: tuple[str, ...] = ()) -> list[Link]:
    """The links discovery runs on: on the named interfaces that exist, or on every up,
    multicast-capable, non-loopback one, an IPv4 link where it has an IPv4 address other than a
    link-local one (169.254/16) and an IPv6 link where it has an IPv6 address."""
    present = netifaces.interfaces()
    chosen = [n for n in names if n in present] if names else [n for n in present if _usable(n)]
    found: list[Link] = []
    for name in chosen:
        index = _index(name)
        if index is None:
            continue
        v4 = _addresses(name, netifaces.AF_INET)
        if any(not a.ip.is_link_local for a in v4):
            found.append(Link(name, index, 4, v4))
        v6 = _addresses(name, netifaces.AF_INET6)
        if v6:
            found.append(Link(name, index, 6, v6))
    return found


def check_names(names: tuple[str, ...]) -> None:
    """A named interface that does not exist is a configuration error, reported at start."""
    known = set(netifaces.interfaces())
    for name in names:
        if name not in known:
            raise ConfigError(f"no such network interface: {name!r} (have: {', '.join(sorted(known))})")


# -- sockets --------------------------------------------------------------------------------------


def open_socket(family: int, port: int) -> socket.socket:
    """The discovery socket of one family, bound to the port on every address, packet info on."""
    sock = socket.socket(socket.AF_INET if family == 4 else socket.AF_INET6, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if hasattr(socket, "SO_REUSEPORT"):
            # Several ollana processes (or tests) on one host may all listen for discovery.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
        except OSError:
            pass  # the default buffer will do
        if family == 4:
            # TTL 1: discovery never leaves the local link.
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 1)
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 1)
            sock.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
            sock.bind(("", port))
        else:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, 1)
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_LOOP, 1)
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVPKTINFO, 1)
            sock.bind(("::", port))
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def _membership(group: str, link: Link) -> bytes:
    if link.family == 6:
        return socket.inet_pton(socket.AF_INET6, group) + struct.pack("@I", link.index)
    if LINUX:  # struct ip_mreqn: by interface index, whatever its addresses are or become
        return struct.pack("@4s4si", socket.inet_aton(group), bytes(4), link.index)
    return struct.pack("4s4s", socket.inet_aton(group), socket.inet_aton(link.address))


def join_group(sock: socket.socket, group: str, link: Link) -> None:
    level, option = (
        (socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP) if link.family == 4
        else (socket.IPPROTO_IPV6, socket.IPV6_JOIN_GROUP)
    )
    try:
        sock.setsockopt(level, option, _membership(group, link))
    except OSError as exc:
        if exc.errno != errno.EADDRINUSE:  # already a member on this interface
            raise


def leave_group(sock: socket.socket, group: str, link: Link) -> None:
    level, option = (
        (socket.IPPROTO_IP, socket.IP_DROP_MEMBERSHIP) if link.family == 4
        else (socket.IPPROTO_IPV6, socket.IPV6_LEAVE_GROUP)
    )
    try:
        sock.setsockopt(level, option, _membership(group, link))
    except OSError:
        pass  # the interface may already be gone, and its memberships with it


def send(sock: socket.socket, data: bytes, group: str, port: int, link: Link) -> None:
    """Send ``data`` to the group on ``link`` only (its source is then an address of that link)."""
    if link.family == 6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF, link.index)
        sock.sendto(data, (group, port, 0, link.index))
        return
    if LINUX:  # struct ip_mreqn: the interface by index, its address as the source
        choice = struct.pack("@4s4si", bytes(4), socket.inet_aton(link.address), link.index)
    else:
        choice = socket.inet_aton(link.address)
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, choice)
    sock.sendto(data, (group, port))


def receive(sock: socket.socket, size: int) -> Datagram | None:
    """One datagram (at most ``size`` bytes of it) with its packet info, or None if none waits."""
    try:
        data, ancdata, _flags, addr = sock.recvmsg(size, ANCILLARY_SIZE)
    except (BlockingIOError, InterruptedError):
        return None
    destination, ifindex = packet_info(ancdata)
    return Datagram(data, ipaddress.ip_address(addr[0].partition("%")[0]), destination, ifindex)


def packet_info(ancdata: list[tuple[int, int, bytes]]) -> tuple[IPAddress | None, int | None]:
    """The destination address and receiving interface index from ``recvmsg`` control messages."""
    for level, kind, value in ancdata:
        if level == socket.IPPROTO_IP and kind == IP_PKTINFO and len(value) >= IN_PKTINFO.size:
            index, _spec_dst, dst = IN_PKTINFO.unpack_from(value)
            return ipaddress.IPv4Address(dst), int(index)
        if level == socket.IPPROTO_IPV6 and kind == socket.IPV6_PKTINFO and len(value) >= IN6_PKTINFO.size:
            dst6, index6 = IN6_PKTINFO.unpack_from(value)
            return ipaddress.IPv6Address(dst6), int(index6)
    return None, None
