"""Ollama's DNS-rebinding guard, kept by the client listener on loopback.

An Ollama bound to loopback refuses any request whose ``Host`` is not local-looking
(``server/routes.go``, allowed-hosts middleware), so a web page that rebinds its own name to
127.0.0.1 cannot read it. The client proxy listens where Ollama would and rewrites ``Host``
before any Ollama sees it; it must apply the same rule itself, to every path, its own included.
The rule is pure; the machine's own addresses are read once at start.
"""

from __future__ import annotations

import ipaddress
import socket
from typing import Final

import netifaces

_LOCAL_SUFFIXES: Final = (".localhost", ".local", ".internal")


def host_of(header: str) -> str:
    """The host part of a ``Host`` header: no port, no brackets."""
    header = header.strip()
    if header.startswith("["):
        return header[1:].split("]", 1)[0]
    if header.count(":") == 1:
        return header.split(":", 1)[0]
    return header


def allowed(header: str, own_hostname: str, own_addresses: frozenset[str]) -> bool:
    """Whether Ollama on loopback would let a request with this ``Host`` in."""
    host = host_of(header).lower()
    if host in ("", "localhost") or host == own_hostname.lower() or host.endswith(_LOCAL_SUFFIXES):
        return True
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    return ip.is_loopback or _go_private(ip) or ip.is_unspecified or str(ip) in own_addresses


# Go's net.IP.IsPrivate: RFC 1918 and RFC 4193 only (Python's is_private also counts
# documentation, benchmarking and other special ranges, which Ollama refuses).
_PRIVATE: Final = tuple(ipaddress.ip_network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7"))


def _go_private(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    return any(ip.version == net.version and ip in net for net in _PRIVATE)


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host.lower() == "localhost"


def own_addresses() -> frozenset[str]:
    """Every address of this machine's interfaces (what Ollama's isLocalIP accepts)."""
    found: set[str] = set()
    for name in netifaces.interfaces():
        for family in (netifaces.AF_INET, netifaces.AF_INET6):
            for entry in netifaces.ifaddresses(name).get(family, []):
                addr = str(entry.get("addr", "")).split("%", 1)[0]
                if addr:
                    found.add(addr)
    return frozenset(found)


def own_hostname() -> str:
    return socket.gethostname()
