"""Ollama's allowed-hosts middleware (server/routes.go allowedHostsMiddleware), as pure decisions.

Go semantics are kept on purpose, quirks included: net.SplitHostPort (so "[::1]" without a
port is not an IP and gets 403), netip's IsLoopback/IsPrivate (4-in-6 unmapped first) and
IsUnspecified (not unmapped), and isLocalIP (an address on one of this machine's interfaces).
"""

from __future__ import annotations

import errno
import ipaddress
import socket
from collections.abc import Callable, Iterable
from enum import Enum
from typing import Final

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_LOCAL_TLDS: Final = (".localhost", ".local", ".internal")
_PRIVATE_V4: Final = (
    ipaddress.IPv4Network("10.0.0.0/8"),
    ipaddress.IPv4Network("172.16.0.0/12"),
    ipaddress.IPv4Network("192.168.0.0/16"),
)
_ULA_V6: Final = ipaddress.IPv6Network("fc00::/7")


class HostVerdict(Enum):
    PASS = "pass"
    PREFLIGHT = "preflight"  # OPTIONS on an accepted name: 204, handler not run
    FORBIDDEN = "forbidden"  # 403, empty body


def split_host_port(hostport: str) -> tuple[str, str] | None:
    """Go's net.SplitHostPort; None where Go returns an error."""
    i = hostport.rfind(":")
    if i < 0:
        return None
    j = k = 0
    if hostport.startswith("["):
        end = hostport.find("]")
        if end < 0 or end + 1 == len(hostport) or end + 1 != i:
            return None
        host = hostport[1:end]
        j, k = 1, end + 1
    else:
        host = hostport[:i]
        if ":" in host:
            return None
    if "[" in hostport[j:] or "]" in hostport[k:]:
        return None
    return host, hostport[i + 1 :]


def parse_ip(text: str) -> IPAddress | None:
    """netip.ParseAddr: a bare IP literal (IPv6 zones allowed), else None."""
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def _unmap(ip: IPAddress) -> IPAddress:
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def is_loopback(ip: IPAddress) -> bool:
    ip = _unmap(ip)
    if isinstance(ip, ipaddress.IPv4Address):
        return ip.packed[0] == 127
    return int(ip) == 1


def is_private(ip: IPAddress) -> bool:
    ip = _unmap(ip)
    if isinstance(ip, ipaddress.IPv4Address):
        return any(ip in net for net in _PRIVATE_V4)
    return ipaddress.IPv6Address(int(ip)) in _ULA_V6


def is_unspecified(ip: IPAddress) -> bool:
    if isinstance(ip, ipaddress.IPv6Address) and ip.scope_id:
        return False
    return int(ip) == 0 and not (isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped)


def is_local_ip(ip: IPAddress) -> bool:
    """Whether ip is assigned to an interface here: binding to it succeeds only if it is."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return False  # Go compares String() forms, which never match for 4-in-6
    family = socket.AF_INET if isinstance(ip, ipaddress.IPv4Address) else socket.AF_INET6
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((str(ip).split("%")[0], 0))
        except OSError as exc:
            if exc.errno in (errno.EADDRNOTAVAIL, errno.EINVAL, errno.EAFNOSUPPORT):
                return False
            raise
    return True


def allowed_name(host: str, hostname: str) -> bool:
    host = host.lower()
    if host in ("", "localhost") or host == hostname.lower():
        return True
    return host.endswith(_LOCAL_TLDS)


def check_enabled(listen_hosts: Iterable[str]) -> bool:
    """The check runs only when Ollama listens on loopback (and not when the address is unknown)."""
    hosts = list(listen_hosts)
    if not hosts:
        return False
    for host in hosts:
        ip = parse_ip(host)
        if ip is None or not is_loopback(ip):
            return False
    return True


def check_host(
    host_header: str,
    method: str,
    hostname: str,
    local_ip: Callable[[IPAddress], bool] = is_local_ip,
) -> HostVerdict:
    """Decide one request the way allowedHostsMiddleware does (when the check is enabled)."""
    split = split_host_port(host_header)
    host = split[0] if split is not None else host_header
    ip = parse_ip(host)
    if ip is not None and (is_loopback(ip) or is_private(ip) or is_unspecified(ip) or local_ip(ip)):
        return HostVerdict.PASS
    if allowed_name(host, hostname):
        return HostVerdict.PREFLIGHT if method == "OPTIONS" else HostVerdict.PASS
    return HostVerdict.FORBIDDEN
