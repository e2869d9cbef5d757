"""A running node's side of trust mode ``devices``: its identity, the trust store, the poll loop.

The CLI (``ollana device allow/disable``) writes ``devices.json``; a running node polls it (one
stat per poll) and reacts to changes of the allowed set within one period. Both roles own one
``DeviceTrust`` for the node's lifetime.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from ollana.trust import identity as ident
from ollana.trust.decisions import Standing, standing
from ollana.trust.identity import Identity
from ollana.trust.store import TrustStore
from ollana.waits import wait_set

log = structlog.get_logger(__name__)


@dataclass(slots=True)
class DeviceTrust:
    identity: Identity
    store: TrustStore
    # The trust store keeps wall-clock times (shown to people by `ollana device list`).
    wall: Callable[[], float] = field(default=time.time)

    @classmethod
    def load(cls, state_dir: Path, hostname: str) -> DeviceTrust:
        """Load (or on first use create) the identity, and read the trust store.

        Raises IdentityError or TrustStoreError (both ConfigError: one line, exit 2) when a file
        is corrupt: a node never silently makes a new identity that breaks its pairings.
        """
        me = ident.load_or_create(state_dir, hostname)
        store = TrustStore.load(state_dir)
        log.info(
            "identity_loaded", device_id=me.grouped, short_id=me.short,
            allowed=sum(1 for d in store.allowed() if d.enabled), pending=len(store.pending()),
        )
        return cls(me, store)

    @property
    def device_id(self) -> str:
        return self.identity.device_id

    def standing(self, device_id: str | None) -> Standing:
        """Who ``device_id`` (None: no certificate) is to this device, by the allow list."""
        return standing(device_id, self.identity.device_id, self.store.entry(device_id) if device_id else None)

    def poll(self) -> bool:
        """Write what the node learned (throttled), re-read the file; True if the allowed set changed."""
        self.store.flush(self.wall())
        return self.store.reload_if_changed()

    async def watch(self, period: float, on_tick: Callable[[bool], None], wake: asyncio.Event | None = None) -> None:
        """Poll every ``period`` seconds (or at once when ``wake`` is set: SIGHUP), forever;
        ``on_tick(changed)`` after each poll, where ``changed`` says whether the allowed set changed."""
        wake = wake or asyncio.Event()
        while True:
            await wait_set(wake, period)
            if wake.is_set():
                wake.clear()
                log.info("trust_reload_requested")
            changed = self.poll()
            if changed:
                log.info(
                    "trust_changed",
                    allowed=[ident.short(d.device_id) for d in self.store.allowed() if d.enabled],
                )
            on_tick(changed)
