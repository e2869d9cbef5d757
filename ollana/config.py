"""Configuration values and the pure parsers that build them.

Everything here is pure: the CLI reads the environment once and passes it in, so deep modules never
look at ``os.environ`` and tests build a ``Config`` directly.
"""

from __future__ import annotations

import enum
import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final
from urllib.parse import urlsplit

from ollana.connlimits import ConnLimits
from ollana.errors import ConfigError

OLLAMA_DEFAULT_PORT: Final = 11434
PROXY_DEFAULT_PORT: Final = 11435
DISCOVERY_DEFAULT_PORT: Final = 11436
# IPv4 Local Scope (RFC 2365, 239.255.0.0/16): administratively scoped, never routed off-site.
# The last two octets spell the discovery port so the group is easy to recognise in a capture.
DISCOVERY_DEFAULT_GROUP: Final = "239.255.11.36"
# Link-local scope (ff02::/16: no router forwards it). The group ID 0x80110436 is in RFC 3307's
# range of IDs IANA never assigns, so it meets no assigned or solicited-node group; it ends in
# the port. Its Ethernet address is 33:33:80:11:04:36. See docs/protocol.md.
DISCOVERY_DEFAULT_GROUP6: Final = "ff02::8011:436"
# root's default state dir, and the services' (packaging/): its config file is in /etc/ollana.
SYSTEM_STATE_DIR: Final = Path("/var/lib/ollana")


class Mode(enum.Enum):
    AUTO = "auto"
    SERVER = "server"
    CLIENT = "client"
    BOTH = "both"


class Role(enum.Enum):
    SERVER = "server"
    CLIENT = "client"
    # A machine with an Ollama (on another port) whose own apps use the whole fleet: the server
    # proxy on the LAN and the client listener on 127.0.0.1:11434, in one process.
    BOTH = "both"


class Trust(enum.Enum):
    """Who may use a server, and how nodes talk (see docs/security.md)."""

    # Mutual TLS; only devices the user allowed (paired) talk to each other.
    DEVICES = "devices"
    # Plain HTTP, no checks: anyone on the network may use the server and read the traffic.
    OPEN = "open"


class LogFormat(enum.Enum):
    AUTO = "auto"
    CONSOLE = "console"
    JSON = "json"


def bracketed(host: str) -> str:
    """A host as it goes before ``:PORT`` (in an address or a URL): an IPv6 address in brackets."""
    return f"[{host}]" if ":" in host else host


@dataclass(frozen=True, slots=True)
class Endpoint:
    host: str
    port: int

    def __str__(self) -> str:
        return f"{bracketed(self.host)}:{self.port}"


@dataclass(frozen=True, slots=True)
class Timings:
    """Every interval and timeout in one value, passed in so tests can shrink them."""

    heartbeat_interval: float = 2.0
    # A peer is dropped after this many heartbeat intervals without news.
    missed_heartbeats: int = 3
    # How long role detection waits for the local Ollama to answer.
    detect_timeout: float = 1.0
    # TCP connect timeout towards an upstream; there is deliberately no read timeout.
    connect_timeout: float = 3.0
    # How long the client proxy waits for discovery before answering 503.
    no_peer_grace: float = 3.0
    # Timeout of one health check (upstream Ollama or peer proxy).
    health_timeout: float = 1.5
    # Timeout of a discovered server's first check, the one that lists it: longer, since clients
    # start when many things do (a LAN of servers at once, a busy machine) and a slow first answer
    # costs the next heartbeat's retry. A forged server holds one first-check slot this long.
    first_check_timeout: float = 3.0
    # Graceful shutdown: how long in-flight requests may take to finish.
    grace: float = 10.0
    # How often a running node looks for `ollana device allow/disable` (devices.json).
    trust_poll: float = 0.5
    # A server's mDNS TXT record (catalogue generation, Ollama version) changes at most this often.
    mdns_update_gap: float = 5.0
    # How often discovery looks at the network interfaces (appeared, gone, readdressed, recreated).
    interface_poll: float = 1.0

    @property
    def health_interval(self) -> float:
        return self.heartbeat_interval

    @property
    def peer_ttl(self) -> float:
        """How long a server is kept without news: ``missed_heartbeats`` intervals."""
        return self.missed_heartbeats * self.heartbeat_interval


@dataclass(frozen=True, slots=True)
class Config:
    mode: Mode = Mode.AUTO
    ollama_url: str = f"http://127.0.0.1:{OLLAMA_DEFAULT_PORT}"
    # None means the role's default (see ``listen_for``). In role both, ``listen`` is the client
    # listener's and ``lan_listen`` the server proxy's.
    listen: Endpoint | None = None
    lan_listen: Endpoint | None = None
    # Multicast heartbeats and mDNS / DNS-SD (both off with --no-discovery).
    discovery: bool = True
    # Server, trust mode open: also register _ollama._tcp.local. (ollama/ollama#10283).
    advertise_ollama: bool = False
    discovery_port: int = DISCOVERY_DEFAULT_PORT
    discovery_group: str = DISCOVERY_DEFAULT_GROUP
    discovery_group6: str = DISCOVERY_DEFAULT_GROUP6
    interfaces: tuple[str, ...] = ()
    static_peers: tuple[Endpoint, ...] = ()
    state_dir: Path = Path(".")
    log_format: LogFormat = LogFormat.AUTO
    # Request bodies up to this size are kept in memory so they can be replayed on another server.
    replay_limit: int = 1024 * 1024
    trust: Trust = Trust.DEVICES
    # Server: requests one loaded model serves at once (OLLAMA_NUM_PARALLEL), for routing.
    parallel: int = 1
    timings: Timings = field(default_factory=Timings)
    # Deadlines and caps of the listeners' connections (connections that never finish).
    conn_limits: ConnLimits = field(default_factory=ConnLimits)

    def listen_for(self, role: Role) -> Endpoint:
        if self.listen is not None:
            return self.listen
        if role is Role.CLIENT:
            return Endpoint("127.0.0.1", OLLAMA_DEFAULT_PORT)
        return Endpoint("0.0.0.0", PROXY_DEFAULT_PORT)


def parse_parallel(text: str | None) -> int:
    """OLLAMA_NUM_PARALLEL as Ollama reads it: a positive integer; unset, empty or invalid is 1."""
    try:
        value = int((text or "").strip())
    except ValueError:
        return 1
    return min(value, 1024) if value > 0 else 1


def parse_port(text: str, *, what: str = "port") -> int:
    try:
        port = int(text)
    except ValueError:
        raise ConfigError(f"invalid {what} {text!r}: not a number") from None
    if not 0 <= port <= 65535:
        raise ConfigError(f"invalid {what} {text!r}: must be 0-65535")
    return port


def parse_group(text: str, version: int) -> str:
    """A discovery multicast group: IPv4 any multicast address; IPv6 a link-local-scope one
    (``ff02::/16``, or another flags nibble with scope 2), since discovery is for the link."""
    try:
        addr = ipaddress.ip_address(text.strip())
    except ValueError:
        raise ConfigError(f"invalid multicast group {text!r}: not an IP address") from None
    if addr.version != version or not addr.is_multicast:
        raise ConfigError(f"invalid multicast group {text!r}: not an IPv{version} multicast address")
    if version == 6 and addr.packed[1] & 0x0F != 2:
        raise ConfigError(f"invalid multicast group {text!r}: not of link-local scope (ff02::/16)")
    return str(addr)


def parse_endpoint(text: str, *, default_host: str = "0.0.0.0", default_port: int | None = None) -> Endpoint:
    """Parse ``HOST:PORT``, ``[V6]:PORT``, ``:PORT`` or (with a default port) ``HOST``."""
    text = text.strip()
    if not text:
        raise ConfigError("empty address")
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep:
            raise ConfigError(f"invalid address {text!r}: missing ']'")
        port_text = rest.removeprefix(":")
        if rest and not rest.startswith(":"):
            raise ConfigError(f"invalid address {text!r}")
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
    elif text.count(":") > 1:
        raise ConfigError(f"invalid address {text!r}: write IPv6 addresses as [ADDR]:PORT")
    else:
        host, port_text = text, ""
    if not port_text:
        if default_port is None:
            raise ConfigError(f"invalid address {text!r}: a port is required (HOST:PORT)")
        port = default_port
    else:
        port = parse_port(port_text)
    return Endpoint(host or default_host, port)


def parse_ollama_host(value: str | None, *, strict: bool = False) -> str:
    """Turn an OLLAMA_HOST-style value into the base URL a client connects to.

    Follows Ollama's own rules (envconfig.Host + ConnectableHost): no scheme means http on 11434,
    an explicit http:// means port 80 and https:// port 443, a path is kept, an invalid port falls
    back to the default, and an unspecified host means loopback. ``strict`` (``--ollama``, typed
    for ollana alone): an invalid or out-of-range port is an error, not a quiet port 80.
    """
    raw = (value or "").strip().strip("\"'").strip()
    if not raw:
        return f"http://127.0.0.1:{OLLAMA_DEFAULT_PORT}"
    if raw == "ollama.com":
        return "https://ollama.com:443"
    scheme, default_port = "http", OLLAMA_DEFAULT_PORT
    if "://" in raw:
        scheme, _, rest = raw.partition("://")
        scheme = scheme.lower()
        if scheme not in ("http", "https"):
            raise ConfigError(f"invalid Ollama URL {value!r}: scheme must be http or https")
        default_port = 443 if scheme == "https" else 80
    else:
        rest = raw
    hostport, slash, path = rest.partition("/")
    path = (slash + path).rstrip("/")
    parts = urlsplit(f"//{hostport}")
    try:
        host = parts.hostname or ""
        port = parts.port or default_port
    except ValueError:
        if strict:
            raise ConfigError(f"invalid Ollama URL {value!r}: {_bad_port(hostport)}") from None
        # An invalid port falls back to the default, as in Ollama.
        host = parts.hostname or hostport.rsplit(":", 1)[0].strip("[]")
        port = default_port
    if strict and parts.port == 0:
        raise ConfigError(f"invalid Ollama URL {value!r}: {_bad_port(hostport)}")
    if host in ("", "0.0.0.0"):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    return f"{scheme}://{Endpoint(host, port)}{path}"


def _bad_port(hostport: str) -> str:
    text = hostport.rpartition("]")[2].rpartition(":")[2]
    if not text.isdigit():
        return f"port {text!r} is not a number"
    return f"port {text} is out of range (1-65535)"


def default_state_dir(env: Mapping[str, str], *, is_root: bool) -> Path:
    if env.get("OLLANA_HOME"):
        return Path(env["OLLANA_HOME"])
    if is_root:
        return SYSTEM_STATE_DIR
    if env.get("XDG_DATA_HOME"):
        return Path(env["XDG_DATA_HOME"]) / "ollana"
    return Path(env.get("HOME", os.path.expanduser("~"))) / ".local" / "share" / "ollana"
