"""What the trust store changes, and when it writes: pure functions of devices.json's values.

``TrustStore`` (``store.py``) owns the file, its lock and the throttling state. It asks these
functions which device a command names, what an ``allow`` or ``disable`` or a sighting makes of
an entry, what survives a merge, and whether a write is due now; then it does the I/O. Time is
an argument (wall-clock seconds, as stored). Tested in tests/unit/test_trust_edits.py.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import replace
from typing import Final

from ollana.errors import ConfigError
from ollana.trust.document import (
    Allowed,
    AllowedDevice,
    PeerKind,
    Pending,
    PendingDevice,
    sanitize_label,
)
from ollana.trust.identity import ID_LEN, device_id_of_pem, grouped, parse_prefix, short

PENDING_HINT: Final = (
    "run `ollana device pending` after the other side has tried to connect "
    "(its `ollana serve` must be running)"
)


class UnknownDevice(ConfigError):
    """No device (allowed or pending, as the operation needs) matches the given ID."""


class AmbiguousDeviceId(ConfigError):
    """A prefix matches more than one device."""


# --- which device a command names ----------------------------------------------------------------


def resolve_prefix(text: str, device_ids: Iterable[str], *, hint: str = "") -> str:
    """The one ID among ``device_ids`` that ``text`` (a full ID or a prefix of >= 7) names."""
    prefix = parse_prefix(text)
    matches = sorted({d for d in device_ids if d.startswith(prefix)})
    if not matches:
        what = "device" if len(prefix) == ID_LEN else "device whose ID starts with"
        raise UnknownDevice(f"no {what} {grouped(prefix)}" + (f"; {hint}" if hint else ""))
    if len(matches) > 1:
        raise AmbiguousDeviceId(
            f"{grouped(prefix)} matches {len(matches)} devices ("
            + ", ".join(grouped(m) for m in matches)
            + "); give more characters"
        )
    return matches[0]


# --- what the CLI's commands make of an entry ----------------------------------------------------


def allowing(
    text: str, name: str | None, now: float, allowed: Mapping[str, AllowedDevice], pending: Mapping[str, PendingDevice]
) -> AllowedDevice:
    """The entry ``ollana device allow TEXT [--name NAME]`` files (it is no longer pending then).

    A pending device's certificate comes along; an allowed device is enabled again (and renamed
    when a name is given).
    """
    device_id = resolve_prefix(text, [*allowed, *pending], hint=PENDING_HINT)
    label = sanitize_label(name) if name and name.strip() else None
    if device_id in allowed:
        old = allowed[device_id]
        return replace(old, enabled=True, name=label or old.name)
    seen = pending[device_id]
    return AllowedDevice(
        device_id=device_id,
        name=label or seen.hostname or short(device_id),
        cert_pem=seen.cert_pem,
        added_at=now,
        last_seen=seen.last_seen,
        enabled=True,
    )


def disabling(text: str, allowed: Mapping[str, AllowedDevice], pending: Iterable[str]) -> AllowedDevice:
    """The entry ``ollana device disable TEXT`` files: an allowed device, disabled."""
    try:
        device_id = resolve_prefix(text, allowed, hint="see `ollana device list`")
    except UnknownDevice:
        if any(d.startswith(parse_prefix(text)) for d in pending):
            raise UnknownDevice(f"{text} is pending, not allowed: there is nothing to disable") from None
        raise
    return replace(allowed[device_id], enabled=False)


# --- what a running node records -----------------------------------------------------------------


def pending_entry(
    old: PendingDevice | None,
    device_id: str,
    cert_pem: str,
    hostname: str,
    address: str,
    kind: PeerKind,
    now: float,
) -> PendingDevice:
    """A device not allowed yet, as recorded when it is seen at ``now`` (``old``: its entry so far).

    Peer-supplied labels are sanitized. ValueError if the certificate does not hash to
    ``device_id`` (a caller bug: the ID must always be computed from the certificate).
    """
    if (old is None or old.cert_pem != cert_pem) and device_id_of_pem(cert_pem) != device_id:
        raise ValueError(f"certificate does not match device ID {device_id}")
    return PendingDevice(
        device_id=device_id,
        hostname=sanitize_label(hostname),
        address=sanitize_label(address),
        cert_pem=cert_pem,
        kind=kind,
        first_seen=min(old.first_seen, now) if old else now,
        last_seen=now,
    )


def overflow(pending: Mapping[str, PendingDevice], limit: int) -> list[str]:
    """The pending devices to forget so that at most ``limit`` remain: those seen longest ago."""
    if len(pending) <= limit:
        return []
    return [e.device_id for e in sorted(pending.values(), key=lambda e: e.last_seen)[: len(pending) - limit]]


def merged(
    allowed: Allowed,
    pending: Pending,
    unsaved_seen: Mapping[str, float],
    unsaved_pending: Mapping[str, PendingDevice],
    limit: int,
) -> tuple[Allowed, Pending]:
    """A document read from disk, with what this node learned but has not written yet laid over it.

    Last-seen times only move forward; a device allowed meanwhile (by the CLI) is no longer
    pending; a pending device keeps its earliest first sighting; at most ``limit`` stay pending.
    """
    allowed, pending = dict(allowed), dict(pending)
    for device_id, seen in unsaved_seen.items():
        entry = allowed.get(device_id)
        if entry is not None and (entry.last_seen is None or entry.last_seen < seen):
            allowed[device_id] = replace(entry, last_seen=seen)
    for device_id, new in unsaved_pending.items():
        if device_id in allowed:
            continue
        old = pending.get(device_id)
        pending[device_id] = replace(new, first_seen=min(old.first_seen, new.first_seen)) if old else new
    for device_id in overflow(pending, limit):
        del pending[device_id]
    return allowed, pending


def anchors_changed(before: Mapping[str, AllowedDevice], after: Mapping[str, AllowedDevice]) -> bool:
    """Did the allowed set change in what TLS cares about (IDs, certificates, enabled flags)?"""
    return _anchor_view(before) != _anchor_view(after)


def _anchor_view(allowed: Mapping[str, AllowedDevice]) -> frozenset[tuple[str, str, bool]]:
    return frozenset((d.device_id, d.cert_pem, d.enabled) for d in allowed.values())


# --- when to write -------------------------------------------------------------------------------


def persist_due(last_persisted: float | None, now: float, interval: float) -> bool:
    """Is what the node learned about one device due on disk (at most once per ``interval``)?

    A wall clock that went backwards makes it due rather than never.
    """
    return last_persisted is None or not 0 <= now - last_persisted < interval


def may_write(last_write: float | None, now: float, gap: float) -> bool:
    """May the node write the file now (at most once per ``gap`` overall)? After a clock that went
    backwards, yes."""
    return last_write is None or not 0 <= now - last_write < gap
