"""The discovery packet codec: values <-> bytes. Sans-IO: no sockets, no asyncio, no clock.

Wire format (all integers big-endian; specified field by field in docs/protocol.md)::

    magic "OLNA" | version u8 | type u8 | flags u16 | TLV fields ...
    TLV field:  tag u8 | length u16 | value (length bytes)

Unknown tags are skipped so newer senders can add fields; an unknown version or type is refused.
"""

from __future__ import annotations

import enum
import ipaddress
import struct
from dataclasses import dataclass
from typing import Final

MAGIC: Final = b"OLNA"
VERSION: Final = 1
MAX_PACKET: Final = 1200
HEADER: Final = struct.Struct("!4sBBH")
TLV: Final = struct.Struct("!BH")
MAX_TEXT: Final = 255


class PacketError(ValueError):
    """The bytes are not a packet we accept. ``reason`` is a short, stable tag for logs."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


class Kind(enum.IntEnum):
    HEARTBEAT = 1
    GOODBYE = 2
    PROBE = 3


class Tag(enum.IntEnum):
    NODE_ID = 1
    INSTANCE_ID = 2
    SEQ = 3
    PROXY_PORT = 4
    SCHEME = 5
    HOSTNAME = 6
    OLLAMA_VERSION = 7
    INTERVAL_MS = 8
    ADDRESS = 9
    OLLANA_VERSION = 10
    DEVICE_ID = 11
    TRUST = 12
    CATALOG_GEN = 13


NODE_ID_LEN: Final = 16
INSTANCE_ID_LEN: Final = 8
SCHEMES: Final = ("http", "https")
DEVICE_ID_LEN: Final = 32
# Trust modes on the wire (u8). A heartbeat without the field comes from an `open` node.
TRUST_OPEN: Final = "open"
TRUST_DEVICES: Final = "devices"
_TRUST_CODES: Final = {TRUST_OPEN: 0, TRUST_DEVICES: 1}
_TRUST_NAMES: Final = {code: name for name, code in _TRUST_CODES.items()}


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """A server's announcement: "my proxy is at this port, and my Ollama answers"."""

    node_id: bytes
    instance_id: bytes
    seq: int
    proxy_port: int
    interval_ms: int
    scheme: str = "http"
    hostname: str = ""
    ollama_version: str = ""
    ollana_version: str = ""
    # The sender's address on the interface it sent on (informational: receivers trust the
    # datagram's source address, which is what routes back).
    address: str | None = None
    # ``devices``: the proxy speaks TLS with this device's certificate (SHA-256 of its DER) and
    # serves only devices it allowed. ``open``: plain HTTP, no device checks.
    trust: str = TRUST_OPEN
    device_id: bytes | None = None
    # The generation (u32 fingerprint) of the server's model catalogue: a client refetches
    # GET /ollana/v1/catalog when it changes. None from servers that publish no catalogue.
    catalog_gen: int | None = None


@dataclass(frozen=True, slots=True)
class Goodbye:
    """A server leaves (clean shutdown, or its Ollama stopped answering)."""

    node_id: bytes
    instance_id: bytes
    seq: int


@dataclass(frozen=True, slots=True)
class Probe:
    """A client asks every server to announce itself now."""

    node_id: bytes
    instance_id: bytes
    seq: int


Packet = Heartbeat | Goodbye | Probe


def clip(text: str, limit: int = MAX_TEXT) -> str:
    """``text`` cut to at most ``limit`` UTF-8 bytes, never inside a character."""
    data = text.encode("utf-8")
    return text if len(data) <= limit else data[:limit].decode("utf-8", "ignore")


def printable(text: str) -> str:
    """Text from the wire made safe to log and show: control characters (ANSI escapes
    included) become "?"."""
    return text if text.isprintable() else "".join(c if c.isprintable() else "?" for c in text)


def _u(fmt: str, value: int) -> bytes:
    return struct.pack(fmt, value)


def _text(value: str, what: str) -> bytes:
    data = value.encode("utf-8")
    if len(data) > MAX_TEXT:
        raise PacketError("too_long", f"{what} is {len(data)} bytes")
    return data


def encode(packet: Packet) -> bytes:
    fields: list[tuple[Tag, bytes]] = [
        (Tag.NODE_ID, packet.node_id),
        (Tag.INSTANCE_ID, packet.instance_id),
        (Tag.SEQ, _u("!I", packet.seq & 0xFFFFFFFF)),
    ]
    if len(packet.node_id) != NODE_ID_LEN or len(packet.instance_id) != INSTANCE_ID_LEN:
        raise PacketError("bad_id", "node id must be 16 bytes and instance id 8 bytes")
    if isinstance(packet, Heartbeat):
        kind = Kind.HEARTBEAT
        if packet.scheme not in SCHEMES:
            raise PacketError("bad_scheme", packet.scheme)
        fields += [
            (Tag.PROXY_PORT, _u("!H", packet.proxy_port)),
            (Tag.INTERVAL_MS, _u("!I", packet.interval_ms)),
            (Tag.SCHEME, packet.scheme.encode()),
            (Tag.HOSTNAME, _text(packet.hostname, "hostname")),
            (Tag.OLLAMA_VERSION, _text(packet.ollama_version, "ollama_version")),
            (Tag.OLLANA_VERSION, _text(packet.ollana_version, "ollana_version")),
        ]
        if packet.address is not None:
            fields.append((Tag.ADDRESS, ipaddress.ip_address(packet.address).packed))
        _check_trust(packet.trust, packet.device_id, packet.scheme)
        fields.append((Tag.TRUST, _u("!B", _TRUST_CODES[packet.trust])))
        if packet.device_id is not None:
            fields.append((Tag.DEVICE_ID, packet.device_id))
        if packet.catalog_gen is not None:
            fields.append((Tag.CATALOG_GEN, _u("!I", packet.catalog_gen & 0xFFFFFFFF)))
    elif isinstance(packet, Goodbye):
        kind = Kind.GOODBYE
    else:
        kind = Kind.PROBE
    out = bytearray(HEADER.pack(MAGIC, VERSION, kind, 0))
    for tag, value in fields:
        out += TLV.pack(tag, len(value)) + value
    if len(out) > MAX_PACKET:
        raise PacketError("too_big", f"{len(out)} bytes")
    return bytes(out)


def _check_trust(trust: str, device_id: bytes | None, scheme: str) -> None:
    if trust not in _TRUST_CODES:
        raise PacketError("bad_trust", trust)
    if device_id is not None and len(device_id) != DEVICE_ID_LEN:
        raise PacketError("bad_field", f"device_id has {len(device_id)} bytes, want {DEVICE_ID_LEN}")
    if trust == TRUST_DEVICES and (device_id is None or scheme != "https"):
        raise PacketError("bad_field", "trust devices needs a device_id and scheme https")


def _fields(data: bytes) -> dict[int, bytes]:
    found: dict[int, bytes] = {}
    pos = HEADER.size
    while pos < len(data):
        if pos + TLV.size > len(data):
            raise PacketError("truncated", f"field header at byte {pos}")
        tag, length = TLV.unpack_from(data, pos)
        pos += TLV.size
        if pos + length > len(data):
            raise PacketError("truncated", f"field {tag} wants {length} bytes")
        if tag in found:
            raise PacketError("duplicate_field", str(tag))
        found[tag] = data[pos : pos + length]
        pos += length
    return found


def _need(fields: dict[int, bytes], tag: Tag, size: int | None = None) -> bytes:
    value = fields.get(tag)
    if value is None:
        raise PacketError("missing_field", tag.name.lower())
    if size is not None and len(value) != size:
        raise PacketError("bad_field", f"{tag.name.lower()} has {len(value)} bytes, want {size}")
    return value


def _str(fields: dict[int, bytes], tag: Tag) -> str:
    value = fields.get(tag, b"")
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        raise PacketError("bad_field", f"{tag.name.lower()} is not UTF-8") from None


def decode(data: bytes) -> Packet:
    """Decode one datagram, or raise ``PacketError``. Never raises anything else."""
    if len(data) > MAX_PACKET:
        raise PacketError("too_big", f"{len(data)} bytes")
    if len(data) < HEADER.size:
        raise PacketError("truncated", f"{len(data)} bytes")
    magic, version, kind, _flags = HEADER.unpack_from(data)
    if magic != MAGIC:
        raise PacketError("bad_magic")
    if version != VERSION:
        raise PacketError("unknown_version", str(version))
    fields = _fields(data)
    node_id = _need(fields, Tag.NODE_ID, NODE_ID_LEN)
    instance_id = _need(fields, Tag.INSTANCE_ID, INSTANCE_ID_LEN)
    (seq,) = struct.unpack("!I", _need(fields, Tag.SEQ, 4))
    if kind == Kind.GOODBYE:
        return Goodbye(node_id, instance_id, seq)
    if kind == Kind.PROBE:
        return Probe(node_id, instance_id, seq)
    if kind != Kind.HEARTBEAT:
        raise PacketError("unknown_type", str(kind))
    (port,) = struct.unpack("!H", _need(fields, Tag.PROXY_PORT, 2))
    (interval_ms,) = struct.unpack("!I", _need(fields, Tag.INTERVAL_MS, 4))
    if port == 0 or interval_ms == 0:
        raise PacketError("bad_field", "proxy_port and interval_ms must be non-zero")
    scheme = _str(fields, Tag.SCHEME) or "http"
    if scheme not in SCHEMES:
        raise PacketError("bad_field", f"scheme {scheme!r}")
    address = None
    if Tag.ADDRESS in fields:
        raw = fields[Tag.ADDRESS]
        if len(raw) not in (4, 16):
            raise PacketError("bad_field", f"address has {len(raw)} bytes")
        address = str(ipaddress.ip_address(raw))
    trust = TRUST_OPEN
    if Tag.TRUST in fields:
        (code,) = struct.unpack("!B", _need(fields, Tag.TRUST, 1))
        if code not in _TRUST_NAMES:
            raise PacketError("bad_field", f"trust mode {code}")
        trust = _TRUST_NAMES[code]
    device_id = _need(fields, Tag.DEVICE_ID, DEVICE_ID_LEN) if Tag.DEVICE_ID in fields else None
    _check_trust(trust, device_id, scheme)
    catalog_gen = None
    if Tag.CATALOG_GEN in fields:
        (catalog_gen,) = struct.unpack("!I", _need(fields, Tag.CATALOG_GEN, 4))
    return Heartbeat(
        node_id=node_id,
        instance_id=instance_id,
        seq=seq,
        proxy_port=port,
        interval_ms=interval_ms,
        scheme=scheme,
        hostname=printable(_str(fields, Tag.HOSTNAME)),
        ollama_version=printable(_str(fields, Tag.OLLAMA_VERSION)),
        ollana_version=printable(_str(fields, Tag.OLLANA_VERSION)),
        address=address,
        trust=trust,
        device_id=device_id,
        catalog_gen=catalog_gen,
    )
