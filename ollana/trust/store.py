"""The trust store: which devices are allowed, and which asked (``devices.json`` in the state dir).

The CLI and a running ``serve`` share the file. Every write is read-modify-write under an flock on a
lock file, then an atomic replace, so concurrent writers never lose each other's changes and readers
never see half a file. A running node polls ``reload_if_changed`` (one stat) and learns of ``allow``
and ``disable`` within one poll; what it records itself (pending devices, last seen) is throttled,
so a flood of connection attempts cannot turn into a flood of disk writes.

What a change makes of the document, and whether a write is due, is decided in ``edits.py``
(pure); the file's format is ``document.py``; this module holds the state and does the I/O.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any, Final, TypeVar

import structlog

from ollana.errors import ConfigError
from ollana.files import open_lock, private_dir, write_atomic
from ollana.trust.document import (
    Allowed,
    AllowedDevice,
    PeerKind,
    Pending,
    PendingDevice,
    decode,
    encode,
)
from ollana.trust.edits import (
    allowing,
    anchors_changed,
    disabling,
    may_write,
    merged,
    overflow,
    pending_entry,
    persist_due,
)

log = structlog.get_logger(__name__)

DEVICES_FILE: Final = "devices.json"
LOCK_FILE: Final = "devices.json.lock"
# A running node persists what it learns about one device at most this often...
PERSIST_INTERVAL: Final = 5.0
# ...and writes the file at most this often overall (the rest waits for ``flush``).
MIN_WRITE_GAP: Final = 1.0
MAX_PENDING: Final = 64
# A sane file is a few kB per device; anything this big is not ours.
MAX_FILE_BYTES: Final = 4 * 1024 * 1024

T = TypeVar("T")


class TrustStoreError(ConfigError):
    """devices.json cannot be read, parsed or written."""


class _LockBusy(Exception):
    """Another writer holds the lock: the node's own write waits for its next poll."""


# (st_mtime_ns, st_ino, st_size) of devices.json; None when the file does not exist.
_Signature = tuple[int, int, int] | None


class TrustStore:
    """The allow list and pending devices of one state dir. Not thread-safe: one owner each."""

    def __init__(
        self,
        state_dir: Path,
        *,
        persist_interval: float = PERSIST_INTERVAL,
        min_write_gap: float = MIN_WRITE_GAP,
        max_pending: int = MAX_PENDING,
    ) -> None:
        self.path = state_dir / DEVICES_FILE
        self._lock_path = state_dir / LOCK_FILE
        self._persist_interval = persist_interval
        self._min_write_gap = min_write_gap
        self._max_pending = max_pending
        self._allowed: Allowed = {}
        self._pending: Pending = {}
        self._signature: _Signature = None
        self._allowed_changed = False
        # Learned but not yet written (throttled): re-applied over every reload.
        self._unsaved_seen: dict[str, float] = {}
        self._unsaved_pending: Pending = {}
        self._persisted_at: dict[str, float] = {}
        self._last_write: float | None = None
        self._write_gap = min_write_gap  # longer after a failed write

    @classmethod
    def load(cls, state_dir: Path, **options: Any) -> TrustStore:
        """Read devices.json (absent means empty); TrustStoreError if it is corrupt."""
        store = cls(state_dir, **options)
        signature, allowed, pending = store._read_disk()
        store._install(signature, allowed, pending)
        store._allowed_changed = False
        return store

    # --- what a running node asks -------------------------------------------------------------

    def reload_if_changed(self) -> bool:
        """Re-read the file if it changed on disk (one stat when it did not).

        Returns True when the allowed set (IDs, certificates, enabled flags) changed since the
        previous call, including changes picked up while writing: then rebuild the TLS contexts
        and close connections of devices that are no longer allowed. A file that turns corrupt
        while the node runs is logged once and the last good contents are kept.
        """
        current = self._stat()
        if current != self._signature:
            try:
                signature, allowed, pending = self._read_disk()
            except TrustStoreError as exc:
                log.error("trust_store_unreadable", path=str(self.path), error=str(exc))
                self._signature = current
            else:
                self._install(signature, allowed, pending)
        changed, self._allowed_changed = self._allowed_changed, False
        return changed

    def is_allowed(self, device_id: str | None) -> bool:
        entry = self._allowed.get(device_id) if device_id else None
        return entry is not None and entry.enabled

    def entry(self, device_id: str) -> AllowedDevice | None:
        """The device's entry in the allow list (enabled or not); None if it has none."""
        return self._allowed.get(device_id)

    def cert_of(self, device_id: str) -> str | None:
        """The certificate of an enabled, allowed device; None otherwise."""
        entry = self._allowed.get(device_id)
        return entry.cert_pem if entry is not None and entry.enabled else None

    def allowed(self) -> list[AllowedDevice]:
        return sorted(self._allowed.values(), key=lambda d: (d.name.lower(), d.device_id))

    def pending(self) -> list[PendingDevice]:
        return sorted(self._pending.values(), key=lambda d: -d.last_seen)

    # --- what a running node records (throttled) -----------------------------------------------

    def record_pending(
        self,
        device_id: str,
        cert_pem: str,
        hostname: str,
        address: str,
        kind: PeerKind,
        now: float,
    ) -> bool:
        """Remember a device that is not allowed yet. Returns True if it was not pending before.

        Allowed devices (enabled or not) are ignored. ValueError if the certificate does not hash
        to ``device_id`` (a caller bug: the ID must always be computed from the certificate).
        """
        if device_id in self._allowed:
            return False
        old = self._pending.get(device_id)
        self._pending[device_id] = self._unsaved_pending[device_id] = pending_entry(
            old, device_id, cert_pem, hostname, address, kind, now
        )
        self._bound(self._pending)
        self._bound(self._unsaved_pending)
        if self._write_due(device_id, now):
            self._write_unsaved(now)
        return old is None

    def touch_last_seen(self, device_id: str, now: float) -> None:
        entry = self._allowed.get(device_id)
        if entry is None:
            return
        self._allowed[device_id] = replace(entry, last_seen=now)
        self._unsaved_seen[device_id] = now
        if self._write_due(device_id, now):
            self._write_unsaved(now)

    def flush(self, now: float) -> bool:
        """Write what throttling held back, if the write gap allows. Call it from the poll loop."""
        if not may_write(self._last_write, now, self._write_gap):
            return False
        if not any(self._persist_due(d, now) for d in [*self._unsaved_seen, *self._unsaved_pending]):
            return False
        return self._write_unsaved(now)

    # --- what the CLI does ---------------------------------------------------------------------

    def allow(self, id_or_prefix: str, name: str | None = None, *, now: float) -> AllowedDevice:
        """Allow a pending device (its certificate comes along) or re-enable an allowed one."""

        def change(allowed: Allowed, pending: Pending) -> AllowedDevice:
            entry = allowing(id_or_prefix, name, now, allowed, pending)
            allowed[entry.device_id] = entry
            pending.pop(entry.device_id, None)
            self._unsaved_pending.pop(entry.device_id, None)
            return entry

        return self._mutate(change)

    def disable(self, id_or_prefix: str) -> AllowedDevice:
        """Disable an allowed device: the node refuses it and closes its connections."""

        def change(allowed: Allowed, pending: Pending) -> AllowedDevice:
            entry = disabling(id_or_prefix, allowed, pending)
            allowed[entry.device_id] = entry
            return entry

        return self._mutate(change)

    # --- internals -----------------------------------------------------------------------------

    def _write_due(self, device_id: str, now: float) -> bool:
        return self._persist_due(device_id, now) and may_write(self._last_write, now, self._write_gap)

    def _persist_due(self, device_id: str, now: float) -> bool:
        return persist_due(self._persisted_at.get(device_id), now, self._persist_interval)

    def _bound(self, pending: Pending) -> None:
        for device_id in overflow(pending, self._max_pending):
            del pending[device_id]

    def _write_unsaved(self, now: float) -> bool:
        written = [*self._unsaved_seen, *self._unsaved_pending]
        self._last_write = now
        try:
            # In the event loop: never wait for the lock (a CLI command may hold it), try again later.
            self._mutate(lambda _a, _p: None, wait=False)
        except _LockBusy:
            log.debug("trust_store_busy", path=str(self.path))
            return False
        except TrustStoreError as exc:
            # The node keeps running on what it has in memory and retries, less often.
            log.warning("trust_store_write_failed", path=str(self.path), error=str(exc))
            self._write_gap = max(self._min_write_gap, self._persist_interval)
            return False
        self._write_gap = self._min_write_gap
        if len(self._persisted_at) > 4 * self._max_pending:
            self._persisted_at.clear()  # bounded memory; worst case one early write per device
        for device_id in written:
            self._persisted_at[device_id] = now
        return True

    def _mutate(self, change: Callable[[Allowed, Pending], T], *, wait: bool = True) -> T:
        """Under the lock: read the file fresh, apply what is unsaved and ``change``, write it.
        ``wait=False``: _LockBusy at once when another writer holds the lock."""
        try:
            private_dir(self.path.parent)
        except OSError as exc:
            raise TrustStoreError(f"cannot create {self.path.parent}: {exc.strerror}") from exc
        with self._locked(wait):
            _signature, allowed, pending = self._read_disk()
            allowed, pending = self._with_unsaved(allowed, pending)
            result = change(allowed, pending)
            self._bound(pending)
            signature = self._write(allowed, pending)
        self._unsaved_seen.clear()
        self._unsaved_pending.clear()
        self._install(signature, allowed, pending)
        return result

    @contextmanager
    def _locked(self, wait: bool) -> Iterator[None]:
        try:
            fd = open_lock(self._lock_path)
        except OSError as exc:
            raise TrustStoreError(f"cannot open {self._lock_path}: {exc.strerror}") from exc
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise _LockBusy from None
            yield
        finally:
            os.close(fd)  # releases the lock

    def _with_unsaved(self, allowed: Allowed, pending: Pending) -> tuple[Allowed, Pending]:
        return merged(allowed, pending, self._unsaved_seen, self._unsaved_pending, self._max_pending)

    def _install(self, signature: _Signature, allowed: Allowed, pending: Pending) -> None:
        allowed, pending = self._with_unsaved(allowed, pending)
        if anchors_changed(self._allowed, allowed):
            self._allowed_changed = True
        self._signature, self._allowed, self._pending = signature, allowed, pending

    def _stat(self) -> _Signature:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return None
        except OSError:
            return self._signature  # transient: try again next poll
        return (st.st_mtime_ns, st.st_ino, st.st_size)

    def _read_disk(self) -> tuple[_Signature, Allowed, Pending]:
        try:
            with open(self.path, "rb") as f:
                st = os.fstat(f.fileno())
                raw = f.read(MAX_FILE_BYTES + 1)
        except FileNotFoundError:
            return None, {}, {}
        except OSError as exc:
            raise TrustStoreError(f"cannot read {self.path}: {exc.strerror}") from exc
        if len(raw) > MAX_FILE_BYTES:
            raise self._corrupt(f"larger than {MAX_FILE_BYTES} bytes")
        try:
            allowed, pending = decode(raw)
        except ValueError as exc:
            raise self._corrupt(str(exc)) from None
        return (st.st_mtime_ns, st.st_ino, st.st_size), allowed, pending

    def _corrupt(self, why: str) -> TrustStoreError:
        return TrustStoreError(
            f"{self.path} is corrupt ({why}); fix it, or move it away to start with no paired "
            "devices (pair them again with `ollana device pending` and `ollana device allow`)"
        )

    def _write(self, allowed: Allowed, pending: Pending) -> _Signature:
        try:
            st = write_atomic(self.path, encode(allowed, pending))
        except OSError as exc:
            raise TrustStoreError(f"cannot write {self.path}: {exc.strerror}") from exc
        return (st.st_mtime_ns, st.st_ino, st.st_size)

