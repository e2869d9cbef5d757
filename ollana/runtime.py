"""What every role is handed: the configuration, the node's identity, the clock, the session."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import aiohttp

from ollana import __version__
from ollana.config import Config, Endpoint, Role
from ollana.observe.metrics import Metrics

if TYPE_CHECKING:
    from ollana.trust.devices import DeviceTrust

# aiohttp adds these when absent; a transparent proxy must not invent headers the client never sent.
_NO_AUTO_HEADERS = ("User-Agent", "Content-Type", "Accept", "Accept-Encoding")


@dataclass(frozen=True, slots=True)
class Node:
    node_id: bytes
    instance_id: bytes
    hostname: str
    started: float  # on the runtime clock

    @staticmethod
    def local_hostname() -> str:
        return socket.gethostname()


@dataclass(frozen=True, slots=True)
class Ready:
    """Reported once the node serves: what it became and where it listens."""

    role: Role
    listen: Endpoint
    node_id: str
    # "https" when the proxy speaks TLS (a server in trust mode devices); then ``ollana status``
    # connects with the node's own certificate and key (paths), which the node lets in.
    scheme: str = "http"
    cert_file: str | None = None
    key_file: str | None = None


@dataclass(frozen=True, slots=True)
class Runtime:
    config: Config
    node: Node
    session: aiohttp.ClientSession
    clock: Callable[[], float] = time.monotonic
    # Trust mode devices: identity and allow list (None in trust mode open).
    devices: DeviceTrust | None = None
    # Set (by SIGHUP) to re-read what can be reloaded now rather than at the next poll.
    reload: asyncio.Event = field(default_factory=asyncio.Event)
    # The node's metrics and recent requests (one registry per node, shared by role both's sides).
    metrics: Metrics = field(default_factory=Metrics)

    def base_status(self, role: Role, listen: Endpoint) -> dict[str, Any]:
        return {
            "ollana": __version__,
            "node_id": self.node.node_id.hex(),
            "instance_id": self.node.instance_id.hex(),
            "hostname": self.node.hostname,
            "role": role.value,
            "listen": str(listen),
            "uptime_s": round(self.clock() - self.node.started, 3),
            "trust": self.config.trust.value,
            "device_id": self.devices.device_id if self.devices is not None else None,
        }


def upstream_timeout(connect_timeout: float) -> aiohttp.ClientTimeout:
    """No total or read timeout (a model may load for minutes before its first byte); a bound on
    setting up a connection, TCP and TLS together (the pool is unbounded, so nothing else waits
    there): a peer that accepts but never completes a handshake cannot hang a request."""
    return aiohttp.ClientTimeout(total=None, connect=connect_timeout, sock_connect=connect_timeout, sock_read=None)


def upstream_session(
    connect_timeout: float, traces: list[aiohttp.TraceConfig] | None = None
) -> aiohttp.ClientSession:
    """The one pooled client session of a node's lifetime (keep-alive connections are reused;
    ``traces``: aiohttp request tracing, for debug logs)."""
    connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=60.0, ttl_dns_cache=10)
    return aiohttp.ClientSession(
        connector=connector,
        skip_auto_headers=_NO_AUTO_HEADERS,
        auto_decompress=False,
        cookie_jar=aiohttp.DummyCookieJar(),
        timeout=upstream_timeout(connect_timeout),
        trust_env=False,
        trace_configs=traces or None,
    )
