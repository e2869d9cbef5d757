"""ollana's DNS-SD records (RFC 6763 over mDNS, RFC 6762): node values <-> a service record.

Pure: no sockets, no zeroconf, no clock. ``discovery/mdns_io.py`` registers and browses these
records with python-zeroconf; the layout is specified in docs/protocol.md ("mDNS / DNS-SD").

A server registers ``<host> (<short ID>)._ollana._tcp.local.``: SRV to its proxy port on a host
name of its own (``<host>-<short ID>.local.``, so two machines with one host name never share
address records), and a TXT record a client turns back into the same value a heartbeat gives
(``parse``), so both paths feed one peer table.
"""

from __future__ import annotations

import base64
import binascii
import enum
import ipaddress
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from ollana.discovery.links import preference, unscoped
from ollana.discovery.packet import (
    DEVICE_ID_LEN,
    INSTANCE_ID_LEN,
    NODE_ID_LEN,
    SCHEMES,
    TRUST_DEVICES,
    TRUST_OPEN,
    Heartbeat,
    clip,
    printable,
)

SERVICE_TYPE: Final = "_ollana._tcp.local."
# Proposed in ollama/ollama#10283; registered only with --advertise-ollama (trust mode open).
OLLAMA_TYPE: Final = "_ollama._tcp.local."
TXT_VERSION: Final = "1"
MAX_LABEL: Final = 63  # bytes in one DNS label (an instance name is one label)
MAX_TXT_STRING: Final = 255  # bytes in one "key=value" string
SHORT_ID: Final = 7
_DEVICE_ID_CHARS: Final = 52
_NOT_DNS: Final = re.compile(r"[^a-z0-9-]+")
_SHORT_SUFFIX: Final = re.compile(r" \([A-Za-z0-9]{7}\)$")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class ServiceRecord:
    """One DNS-SD service as registered: PTR/SRV/TXT (and A records for ``server``)."""

    type: str
    instance: str
    server: str  # the host name SRV points to, e.g. "gpu-box-nqlemhq.local."
    port: int
    txt: tuple[tuple[str, str], ...]  # "key=value" strings, in order

    @property
    def name(self) -> str:
        return f"{self.instance}.{self.type}"

    def properties(self) -> dict[str, str]:
        return dict(self.txt)

    def same_service(self, other: ServiceRecord) -> bool:
        """Whether ``other`` only changes the TXT record (an update, not a new registration)."""
        return (self.type, self.instance, self.server, self.port) == (
            other.type, other.instance, other.server, other.port,
        )


@dataclass(frozen=True, slots=True)
class Resolved:
    """A resolved service as a browser reports it: what ``parse`` reads."""

    name: str
    port: int | None
    addresses: tuple[str, ...]
    properties: Mapping[bytes, bytes | None]


@dataclass(frozen=True, slots=True)
class Sighting:
    """A server found by DNS-SD: its announcement as a heartbeat value and the address to use.

    The heartbeat's ``interval_ms`` is 0 (mDNS announces no interval) and ``seq`` 0; it never
    goes on the wire.
    """

    heartbeat: Heartbeat
    address: str

    @property
    def key(self) -> str:
        return self.heartbeat.node_id.hex()


def short_id(node_id: bytes, device_id: str | None) -> str:
    """How a node is told apart from others of the same host name: its device ID's first 7
    characters (trust mode devices, as `ollana device` shows), else its node ID's."""
    return device_id[:SHORT_ID] if device_id else node_id.hex()[:SHORT_ID]


def instance_name(hostname: str, short: str = "") -> str:
    """``<host> (<short>)`` (or ``<host>``), within one DNS label: the host's first label,
    printable, clipped by UTF-8 bytes; "ollana" if the host has no name."""
    host = printable(hostname.split(".", 1)[0].strip()) or "ollana"
    suffix = f" ({short})" if short else ""
    return clip(host, MAX_LABEL - len(suffix.encode())) + suffix


def server_name(hostname: str, short: str) -> str:
    """The host name SRV points to: ``<host>-<short>.local.``, letters, digits and dashes only."""
    host = _NOT_DNS.sub("-", hostname.split(".", 1)[0].lower()).strip("-") or "ollana"
    label = f"{host[: MAX_LABEL - len(short) - 1].rstrip('-')}-{short.lower()}"
    return f"{label}.local."


def ollana_record(
    *,
    hostname: str,
    node_id: bytes,
    instance_id: bytes,
    port: int,
    scheme: str,
    trust: str,
    device_id: str | None,
    ollama_version: str,
    catalog_gen: int | None,
) -> ServiceRecord:
    """The ``_ollana._tcp`` record of a server, from the values its heartbeat carries."""
    if len(node_id) != NODE_ID_LEN or len(instance_id) != INSTANCE_ID_LEN:
        raise ValueError("node id must be 16 bytes and instance id 8 bytes")
    short = short_id(node_id, device_id)
    txt = [("v", TXT_VERSION), ("node", node_id.hex()), ("inst", instance_id.hex())]
    if device_id is not None:
        txt.append(("device", device_id))
    txt += [("scheme", scheme), ("trust", trust), ("ollama", _txt_value("ollama", ollama_version))]
    if catalog_gen is not None:
        txt.append(("cat", str(catalog_gen & 0xFFFFFFFF)))
    return ServiceRecord(SERVICE_TYPE, instance_name(hostname, short), server_name(hostname, short), port, tuple(txt))


def ollama_record(*, hostname: str, server: str, port: int, ollama_version: str) -> ServiceRecord:
    """The ``_ollama._tcp`` record (ollama/ollama#10283): instance = host name, TXT ``version``."""
    txt = (("version", _txt_value("version", ollama_version)),)
    return ServiceRecord(OLLAMA_TYPE, instance_name(hostname), server, port, txt)


def _txt_value(key: str, value: str) -> str:
    return clip(value, MAX_TXT_STRING - len(key) - 1)


# -- reading a resolved record back ---------------------------------------------------------


def parse(resolved: Resolved, networks: Sequence[Network] | None = None) -> Sighting:
    """A resolved ``_ollana._tcp`` service as a heartbeat value and the address to connect to.

    ``networks``: the subnets of the interfaces discovery runs on; an address outside all of
    them is never used (a record may name any address; only the link may speak). None: any.
    Raises ValueError (only) for a record that is not a valid version 1 announcement.
    """
    txt = _txt(resolved.properties)
    if txt.get("v") != TXT_VERSION:
        raise ValueError(f"unsupported version {txt.get('v')!r}")
    node_id = _hex(txt, "node", NODE_ID_LEN)
    instance_id = _hex(txt, "inst", INSTANCE_ID_LEN)
    port = resolved.port
    if port is None or not 0 < port < 65536:
        raise ValueError(f"bad port {port!r}")
    scheme = txt.get("scheme", "http")
    if scheme not in SCHEMES:
        raise ValueError(f"bad scheme {scheme!r}")
    trust = txt.get("trust", TRUST_OPEN)
    if trust not in (TRUST_OPEN, TRUST_DEVICES):
        raise ValueError(f"bad trust {trust!r}")
    device_id = _device_id(txt["device"]) if "device" in txt else None
    if trust == TRUST_DEVICES and (device_id is None or scheme != "https"):
        raise ValueError("trust devices needs a device ID and scheme https")
    catalog_gen = None
    if "cat" in txt:
        if not txt["cat"].isdigit() or int(txt["cat"]) > 0xFFFFFFFF:
            raise ValueError(f"bad cat {txt['cat']!r}")
        catalog_gen = int(txt["cat"])
    address = choose_address(resolved.addresses, networks)
    if address is None:
        raise ValueError(f"no usable address in {list(resolved.addresses)[:4]}")
    hb = Heartbeat(
        node_id=node_id, instance_id=instance_id, seq=0, proxy_port=port, interval_ms=0, scheme=scheme,
        hostname=_hostname(resolved.name), ollama_version=printable(clip(txt.get("ollama", ""))),
        address=address, trust=trust, device_id=device_id, catalog_gen=catalog_gen,
    )
    return Sighting(hb, address)


def choose_address(addresses: Sequence[str], networks: Sequence[Network] | None = None) -> str | None:
    """The address to reach a server at, in the order heartbeats prefer (``links.preference``):
    IPv4, then IPv6 with a prefix, then IPv6 link-local, which must carry its scope
    (``fe80::1%eth0``). Never loopback, IPv4 link-local, or an address off the given networks."""
    found: list[str] = []
    for text in addresses:
        try:
            ip = unscoped(text)
        except ValueError:
            continue
        if ip.is_loopback or ip.is_unspecified or ip.is_multicast:
            continue
        if ip.is_link_local:
            if ip.version == 4 or "%" not in text:
                continue  # IPv6 link-local is on a link by definition: the scope says which
        elif networks is not None and not any(ip in net for net in networks if net.version == ip.version):
            continue
        found.append(text)
    found.sort(key=preference)
    return found[0] if found else None


def _txt(properties: Mapping[bytes, bytes | None]) -> dict[str, str]:
    """TXT attributes as text. Keys are case-insensitive (RFC 6763 6.4); a key without "="
    carries no value and is skipped; a value that is not UTF-8 makes the record invalid."""
    out: dict[str, str] = {}
    for raw_key, raw_value in properties.items():
        if not isinstance(raw_key, bytes) or not isinstance(raw_value, bytes | None):
            raise ValueError("TXT attributes must be bytes")
        if raw_value is None:
            continue
        key = raw_key.decode("ascii").lower()
        if len(raw_key) + 1 + len(raw_value) > MAX_TXT_STRING:
            raise ValueError(f"TXT attribute {key!r} is too long")
        out.setdefault(key, raw_value.decode("utf-8"))
    return out


def _hex(txt: Mapping[str, str], key: str, length: int) -> bytes:
    text = txt.get(key)
    if text is None:
        raise ValueError(f"no {key!r} in TXT")
    if len(text) != 2 * length:
        raise ValueError(f"{key!r} must be {2 * length} hex digits")
    return bytes.fromhex(text)


def _device_id(text: str) -> bytes:
    """A full device ID (base32 of 32 bytes, 52 characters, canonical) as its 32 bytes."""
    if len(text) != _DEVICE_ID_CHARS or not text.isascii() or not text.isupper():
        raise ValueError("device must be a full device ID (52 characters A-Z, 2-7)")
    try:
        raw = base64.b32decode(text + "====")
    except binascii.Error:
        raise ValueError("device is not base32") from None
    if len(raw) != DEVICE_ID_LEN or base64.b32encode(raw).decode().rstrip("=") != text:
        raise ValueError("device is not a canonical device ID")
    return raw


def _hostname(name: str) -> str:
    """The host name shown for a server: its instance name without the short ID."""
    instance = name[: -len(SERVICE_TYPE) - 1] if name.endswith("." + SERVICE_TYPE) else name
    return printable(clip(_SHORT_SUFFIX.sub("", instance)))


# -- keeping a registration current -------------------------------------------------------------


class Step(enum.Enum):
    REGISTER = "register"
    UPDATE = "update"  # same service, new TXT
    UNREGISTER = "unregister"


def next_step(
    registered: ServiceRecord | None,
    wanted: ServiceRecord | None,
    *,
    last: float,
    failed: bool,
    now: float,
    gap: float,
) -> tuple[Step | None, float]:
    """What to do about one service type now, and when to look again if it must wait.

    ``last``: when the last step was taken (or failed). Registering and withdrawing happen at
    once; a TXT change (the catalogue generation moves with every request) waits until ``gap``
    has passed since the last step, so a busy server announces at most one change per gap;
    after a failure, the retry waits as long.
    """
    if wanted is None:
        return (Step.UNREGISTER, 0.0) if registered is not None else (None, math.inf)
    wait = last + gap - now
    if registered is None:
        return (None, wait) if failed and wait > 0 else (Step.REGISTER, 0.0)
    if registered == wanted:
        return None, math.inf
    if not registered.same_service(wanted):
        return Step.UNREGISTER, 0.0  # then registered anew, at the next look
    return (None, wait) if wait > 0 else (Step.UPDATE, 0.0)
