"""What ``ollana doctor`` found out about this machine: plain values, collected at the edge."""

from __future__ import annotations

import enum
from dataclasses import asdict, dataclass, field
from typing import Any

from ollana.doctor.firewall import Drop


class Holder(enum.Enum):
    """Who answers on a TCP port of this machine."""

    FREE = "free"  # nothing listens
    OLLAMA = "ollama"
    OLLANA = "ollana"
    OTHER = "other"  # something that is neither


@dataclass(frozen=True, slots=True)
class OllamaFact:
    url: str  # where ollana looks for the local Ollama (--ollama, OLLAMA_HOST, the default)
    ollama_host: str | None  # OLLAMA_HOST in this environment
    version: str | None  # the Ollama's version; None when no Ollama answers there
    error: str | None = None


@dataclass(frozen=True, slots=True)
class PortFact:
    address: str  # "127.0.0.1:11434"
    holder: Holder
    detail: str  # "Ollama 0.5.7", "ollana client (trust devices)", "answers 404 to /api/version"
    role: str | None = None  # an ollana's role


@dataclass(frozen=True, slots=True)
class PeerFact:
    """A server as the running node lists it (its /ollana/v1/status)."""

    key: str
    hostname: str
    address: str
    port: int
    source: str  # multicast, static, saved, learned, local
    healthy: bool
    trust: str
    paired: bool | None  # None in trust mode open
    device_id: str | None
    node_id: str = ""

    @property
    def endpoint(self) -> str:
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"{host}:{self.port}"

    @property
    def name(self) -> str:
        return self.hostname or self.endpoint


@dataclass(frozen=True, slots=True)
class NodeFact:
    """The running ollana, as it describes itself."""

    asked: str  # where it answered
    role: str
    trust: str
    hostname: str
    device_id: str | None
    node_id: str
    peers: tuple[PeerFact, ...] = ()
    interfaces: tuple[str, ...] | None = None  # its discovery interfaces; None: not said
    upstream_url: str | None = None
    upstream_healthy: bool | None = None
    upstream_error: str | None = None


@dataclass(frozen=True, slots=True)
class InterfaceFact:
    name: str
    up: bool
    multicast: bool
    loopback: bool
    ipv4: tuple[str, ...] = ()  # "10.0.0.5/24"
    ipv6: tuple[str, ...] = ()

    @property
    def carries_discovery(self) -> bool:
        return self.up and self.multicast and not self.loopback and bool(self.ipv4 or self.ipv6)


@dataclass(frozen=True, slots=True)
class HeardFact:
    """Discovery packets heard from one node while the doctor listened."""

    source: str
    interface: str | None
    kind: str  # heartbeat, probe, goodbye
    node_id: str
    count: int
    hostname: str = ""
    port: int | None = None
    trust: str | None = None
    device_id: str | None = None
    this_machine: bool = False  # our own node's packets, looped back


@dataclass(frozen=True, slots=True)
class MdnsFact:
    """A ``_ollana._tcp`` service that answered the doctor's mDNS query."""

    name: str
    address: str | None = None
    port: int | None = None
    node_id: str = ""
    hostname: str = ""
    trust: str | None = None
    error: str | None = None  # why a client could not use it (unresolved, invalid record)


@dataclass(frozen=True, slots=True)
class FirewallFact:
    read: tuple[str, ...] = ()  # the tools whose rules were read
    unreadable: str | None = None  # why none could be read
    drops: tuple[Drop, ...] = ()


@dataclass(frozen=True, slots=True)
class Facts:
    hostname: str
    ollama: OllamaFact
    ports: tuple[PortFact, ...]
    node: NodeFact | None
    node_error: str | None
    interfaces: tuple[InterfaceFact, ...]
    listened_s: float  # 0: did not listen
    heard: tuple[HeardFact, ...]
    firewall: FirewallFact
    saved_peers: tuple[str, ...]
    own_short: str | None  # this device's short ID (trust mode devices), for the fixes
    discovery_port: int = 11436
    group: str = "239.255.11.36"
    group6: str = "ff02::8011:436"
    errors: tuple[str, ...] = field(default_factory=tuple)  # what could not be collected
    mdns: tuple[MdnsFact, ...] = ()  # services that answered mDNS while the doctor listened

    def document(self) -> dict[str, Any]:
        doc = asdict(self)
        for port in doc["ports"]:
            port["holder"] = port["holder"].value
        return doc
