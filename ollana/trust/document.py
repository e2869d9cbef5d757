"""devices.json, the document: its entries, and its encoding, checked on the way in (pure).

The trust store (``store.py``) reads and writes the file; this module turns its bytes into values
and back, and refuses a document that is not one ollana wrote: a wrong version, a missing field,
or a certificate that does not hash to the device ID it is filed under (the ID is what the user
allowed; a certificate that hashes to another ID was tampered with).
"""

from __future__ import annotations

import enum
import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, TypeVar

from ollana.trust.identity import device_id_of_pem, grouped

FORMAT_VERSION: Final = 1
MAX_LABEL: Final = 64

T = TypeVar("T")


class PeerKind(enum.Enum):
    CLIENT = "client"  # tried to connect to this server
    SERVER = "server"  # discovered by this client


@dataclass(frozen=True, slots=True)
class AllowedDevice:
    device_id: str
    name: str
    cert_pem: str
    added_at: float
    last_seen: float | None
    enabled: bool


@dataclass(frozen=True, slots=True)
class PendingDevice:
    device_id: str
    hostname: str
    address: str
    cert_pem: str
    kind: PeerKind
    first_seen: float
    last_seen: float


Allowed = dict[str, AllowedDevice]
Pending = dict[str, PendingDevice]


def sanitize_label(text: str, limit: int = MAX_LABEL) -> str:
    """Peer-supplied text made safe to store and print: no control characters, bounded length."""
    return "".join(c if c.isprintable() else "?" for c in text.strip())[:limit]


def encode(allowed: Allowed, pending: Pending) -> bytes:
    doc = {
        "version": FORMAT_VERSION,
        "allowed": {
            d.device_id: {
                "name": d.name,
                "cert_pem": d.cert_pem,
                "added_at": iso_time(d.added_at),
                "last_seen": iso_time(d.last_seen),
                "enabled": d.enabled,
            }
            for d in allowed.values()
        },
        "pending": {
            p.device_id: {
                "hostname": p.hostname,
                "address": p.address,
                "cert_pem": p.cert_pem,
                "kind": p.kind.value,
                "first_seen": iso_time(p.first_seen),
                "last_seen": iso_time(p.last_seen),
            }
            for p in pending.values()
        },
    }
    return (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode("utf-8")


def decode(raw: bytes) -> tuple[Allowed, Pending]:
    """Parse and check devices.json; ValueError saying what is wrong."""
    try:
        doc = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise ValueError("not a JSON object")
    version = doc.get("version", FORMAT_VERSION)
    if version != FORMAT_VERSION:
        raise ValueError(f"format version {version!r}; this ollana reads version {FORMAT_VERSION}")
    allowed: Allowed = {}
    for device_id, e in _section(doc, "allowed"):
        last_seen = e.get("last_seen")
        allowed[device_id] = AllowedDevice(
            device_id=device_id,
            name=_field(e, "name", str, device_id),
            cert_pem=_cert(e, device_id),
            added_at=_time(_field(e, "added_at", str, device_id), device_id),
            last_seen=None
            if last_seen is None
            else _time(_field(e, "last_seen", str, device_id), device_id),
            enabled=_field(e, "enabled", bool, device_id),
        )
    pending: Pending = {}
    for device_id, e in _section(doc, "pending"):
        try:
            kind = PeerKind(_field(e, "kind", str, device_id))
        except ValueError:
            raise ValueError(f"device {device_id}: kind must be 'client' or 'server'") from None
        pending[device_id] = PendingDevice(
            device_id=device_id,
            hostname=_field(e, "hostname", str, device_id),
            address=_field(e, "address", str, device_id),
            cert_pem=_cert(e, device_id),
            kind=kind,
            first_seen=_time(_field(e, "first_seen", str, device_id), device_id),
            last_seen=_time(_field(e, "last_seen", str, device_id), device_id),
        )
    return allowed, pending


def _section(doc: dict[str, Any], name: str) -> Iterator[tuple[str, dict[str, Any]]]:
    section = doc.get(name, {})
    if not isinstance(section, dict):
        raise ValueError(f"{name!r} is not an object")
    for device_id, entry in section.items():
        if not isinstance(entry, dict):
            raise ValueError(f"{name} entry {device_id!r} is not an object")
        yield device_id, entry


def _field(entry: dict[str, Any], key: str, kind: type[T], device_id: str) -> T:
    value = entry.get(key)
    if not isinstance(value, kind):
        raise ValueError(f"device {device_id}: {key!r} missing or not a {kind.__name__}")
    return value


def _cert(entry: dict[str, Any], device_id: str) -> str:
    pem = _field(entry, "cert_pem", str, device_id)
    try:
        actual = device_id_of_pem(pem)
    except ValueError:
        raise ValueError(f"device {device_id}: cert_pem is not a certificate") from None
    # The key is what users allowed; a certificate that hashes to another ID was tampered with.
    if actual != device_id:
        raise ValueError(
            f"device {device_id}: cert_pem belongs to another device ({grouped(actual)})"
        )
    return pem


def iso_time(ts: float | None) -> str | None:
    """A stored time as devices.json and ``--json`` output write it (UTC, whole seconds)."""
    return None if ts is None else datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")


def _time(text: str, device_id: str) -> float:
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        raise ValueError(f"device {device_id}: bad timestamp {text!r}") from None
