"""The client's side of trust mode ``devices``: which servers requests may go to, and pairing.

A heartbeat announces a device ID; before the client believes it, it reads the certificate the
proxy at that address presents and checks that it hashes to that ID. A host that replays a paired
server's heartbeats with its own key fails that check: it never enters the peer table, and the
client says so once per address. A verified server that the user has not allowed is recorded as
pending (``ollana device pending``) and gets a hello, so that it lists this client as pending in
turn. Requests go only to allowed servers, over a context pinned to the allowed certificate:
identity is checked again on every connection.
"""

from __future__ import annotations

import math
import ssl
from collections.abc import Callable
from typing import Final

import aiohttp
import structlog

from ollana.config import bracketed
from ollana.discovery.peers import Peer
from ollana.errors import UpstreamUnavailable
from ollana.ratelimit import PerKeyAndTotal, RateLimiter
from ollana.trust.decisions import Belief, Standing, Verdict, belief, due, genuine, presented
from ollana.trust.devices import DeviceTrust
from ollana.trust.document import PeerKind
from ollana.trust.identity import grouped, short
from ollana.trust.tls import HELLO_PATH, client_context, encode_hello, fetch_peer_cert

log = structlog.get_logger(__name__)

# How long a checked (address, port, device ID) stays believed before it is checked again.
VERDICT_TTL: Final = 60.0
# A failed check (nothing answered) is retried at most this often per address.
RETRY_GAP: Final = 1.0
# A server that does not let us in gets our hello again at most this often.
HELLO_GAP: Final = 30.0
MAX_VERDICTS: Final = 1024
# Servers named in a 503's text, at most.
HINT_NAMES: Final = 8

Where = tuple[str, int, str]  # (address, port, announced device ID)


class ServerVetting:
    def __init__(
        self,
        devices: DeviceTrust,
        session: aiohttp.ClientSession,
        *,
        hostname: str,
        timeout: float,
        clock: Callable[[], float],
        on_outcome: Callable[[str], None] = lambda _outcome: None,
    ) -> None:
        self._devices = devices
        self._outcome = on_outcome  # counts each check's outcome (metrics)
        self._session = session
        self._hostname = hostname
        self._timeout = timeout
        self._clock = clock
        self._contexts: dict[str, ssl.SSLContext] = {}
        self._verdicts: dict[Where, Verdict] = {}
        # When a check of "address:port/device ID" last started, and when each server last got our hello.
        self._checked_at: dict[str, float] = {}
        self._hello_at: dict[str, float] = {}
        # Warnings said once per key (address, device) for the process' life, bounded in memory.
        self._warned = RateLimiter(math.inf)
        self._refusing: set[str] = set()
        # Servers made pending: once a minute per device, once a second in all.
        self._pending_log = PerKeyAndTotal(60.0, 1.0)

    # -- what requests may use ------------------------------------------------------------

    def usable(self, peer: Peer) -> bool:
        return peer.device_id is not None and self._devices.store.is_allowed(peer.device_id)

    def context(self, peer: Peer) -> ssl.SSLContext | None:
        """The context pinned to the peer's allowed certificate; None when it is not allowed."""
        device_id = peer.device_id
        if device_id is None:
            return None
        ctx = self._contexts.get(device_id)
        if ctx is None:
            cert = self._devices.store.cert_of(device_id)
            if cert is None:
                return None
            ctx = self._contexts[device_id] = client_context(self._devices.identity, cert)
        return ctx

    def forget_disallowed(self) -> set[str]:
        """After the allow list changed: drop contexts of devices no longer allowed; return them."""
        gone = {d for d in self._contexts if not self._devices.store.is_allowed(d)}
        for device_id in gone:
            del self._contexts[device_id]
        return gone

    # -- believing heartbeats -------------------------------------------------------------

    def verdict(self, address: str, port: int, device_id: str) -> bool | None:
        """True: that address proved it holds the device's key; False: it did not; None: check it."""
        got = belief(self._verdicts.get((address, port, device_id)), self._clock(), VERDICT_TTL)
        return None if got is Belief.CHECK else got is Belief.GENUINE

    def may_check(self, address: str, port: int, device_id: str) -> bool:
        """May a check start now (at most one per RETRY_GAP each)? If so, it counts as started."""
        return _note_if_due(self._checked_at, f"{address}:{port}/{device_id}", self._clock(), RETRY_GAP)

    async def check(self, address: str, port: int, announced: str, hostname: str) -> bool:
        """Read the certificate at ``address``: does it belong to the announced device?

        Records a genuine server that is not allowed yet as pending and sends it our hello.
        """
        try:
            der = await fetch_peer_cert(address, port, self._timeout)
        except UpstreamUnavailable as exc:
            log.debug("server_check_failed", address=address, port=port, error=str(exc))
            self._outcome("unreachable")
            return False
        cert = presented(der)
        pem = cert.cert_pem if genuine(cert, announced) else None
        if pem is None:
            self.impostor(address, port, announced, cert.device_id)
            return False
        self._record((address, port, announced), proved=True)
        self._outcome("genuine")
        await self.introduce(address, port, announced, pem, hostname)
        return True

    def _record(self, where: Where, *, proved: bool) -> None:
        if where not in self._verdicts and len(self._verdicts) >= MAX_VERDICTS:
            self._verdicts.clear()  # bounded memory under a flood of addresses
        self._verdicts[where] = Verdict(proved, self._clock())

    async def learn(self, peer: Peer) -> None:
        """A static peer (--peer) announces nothing: its device is the one its certificate names."""
        try:
            der = await fetch_peer_cert(peer.endpoint.host, peer.endpoint.port, self._timeout)
        except UpstreamUnavailable as exc:
            self._outcome("unreachable")
            allowed, _ = self._warned.allow(f"static/{peer.endpoint}", self._clock())
            if allowed:
                log.warning(
                    "server_unreachable", peer=peer.key, address=str(peer.endpoint), error=str(exc),
                    hint="in trust mode devices the server must run `ollana serve` with --trust devices (TLS)",
                )
            return
        cert = presented(der)
        if cert.cert_pem is None:
            return
        peer.device_id = cert.device_id
        self._outcome("learned")
        await self.introduce(peer.endpoint.host, peer.endpoint.port, cert.device_id, cert.cert_pem, peer.hostname)

    def impostor(self, address: str, port: int, announced: str, actual: str | None) -> None:
        """A host at ``address`` claims a device whose key it does not hold: warn once per address."""
        self._record((address, port, announced), proved=False)
        self._outcome("impostor")
        allowed, _ = self._warned.allow(f"impostor/{address}", self._clock())
        if allowed:
            log.warning(
                "server_identity_mismatch", address=f"{bracketed(address)}:{port}", announced=grouped(announced),
                presented=grouped(actual) if actual else None,
                paired=self._devices.store.is_allowed(announced),
                action="ignored: it gets no requests",
                reason="its certificate does not hash to the device ID it announces (another host "
                "replaying heartbeats, or a changed key)",
            )

    # -- pairing --------------------------------------------------------------------------

    async def introduce(self, address: str, port: int, device_id: str, cert_pem: str, hostname: str) -> None:
        """A genuine server: if it is not allowed yet, record it as pending and say hello."""
        who = self._devices.standing(device_id)
        if who.admitted:
            return
        if who is Standing.DISABLED:
            self._say_once(f"disabled/{device_id}", "server_disabled", device_id, address, port, hostname,
                           reason="this device disabled it", hint=f"ollana device allow {short(device_id)}")
            return
        new = self._devices.store.record_pending(device_id, cert_pem, hostname, address, PeerKind.SERVER, self._devices.wall())
        allowed, suppressed = self._pending_log.allow(device_id, self._clock()) if new else (False, 0)
        if allowed:
            log.info("device_pending", kind="server", device_id=grouped(device_id), hostname=hostname,
                     address=f"{bracketed(address)}:{port}", hint=f"ollana device allow {short(device_id)}",
                     suppressed=suppressed)
        self._say_once(
            f"unpaired/{device_id}", "server_not_paired", device_id, address, port, hostname,
            reason="not allowed on this device: it gets no requests",
            hint=f"here `ollana device allow {short(device_id)}`; on {hostname or 'the server'} "
            f"`ollana device allow {self._devices.identity.short}`",
        )
        await self.hello(address, port, cert_pem, device_id)

    async def hello(self, address: str, port: int, cert_pem: str, device_id: str) -> None:
        """Introduce ourselves (our certificate) so the server lists us in its pending devices.

        Without our certificate in the handshake (the server would refuse it), but pinned to the
        server's: the introduction goes to that device only. At most once per HELLO_GAP each.
        """
        if not _note_if_due(self._hello_at, device_id, self._clock(), HELLO_GAP):
            return
        me = self._devices.identity
        url = f"https://{bracketed(address)}:{port}{HELLO_PATH}"
        try:
            async with self._session.post(
                url, data=encode_hello(me, self._hostname), headers={"Content-Type": "application/json"},
                ssl=client_context(me, cert_pem, present_cert=False),
                timeout=aiohttp.ClientTimeout(total=self._timeout),
            ) as resp:
                body = await resp.json(content_type=None)
                status = body.get("status") if isinstance(body, dict) else None
                log.info("hello_sent", server=grouped(device_id), address=f"{bracketed(address)}:{port}",
                         http_status=resp.status, answer=status)
        except (TimeoutError, aiohttp.ClientError, ValueError, OSError) as exc:
            log.info("hello_failed", server=grouped(device_id), address=f"{bracketed(address)}:{port}",
                     error=str(exc) or type(exc).__name__)

    def refusing(self, peer: Peer) -> bool:
        """The server's last answer to a health check was 403 (it has not allowed us)."""
        return peer.device_id in self._refusing

    def answered(self, peer: Peer, status: int) -> None:
        """A health check's answer: a 403 means the server has not allowed this device (yet)."""
        if peer.device_id is None:
            return
        if status != 403:
            self._refusing.discard(peer.device_id)
            return
        if len(self._refusing) >= MAX_VERDICTS:
            self._refusing.clear()
        self._refusing.add(peer.device_id)
        self._say_once(
            f"refused/{peer.device_id}", "server_refuses_this_device", peer.device_id,
            peer.endpoint.host, peer.endpoint.port, peer.hostname,
            reason="it has not allowed this device",
            hint=f"on {peer.hostname or 'the server'} run `ollana device pending` and "
            f"`ollana device allow {self._devices.identity.short}`",
        )

    async def hello_again(self, peer: Peer) -> None:
        """A paired server does not let us in: introduce ourselves again (rate-limited)."""
        cert = self._devices.store.cert_of(peer.device_id) if peer.device_id else None
        if cert is not None and peer.device_id is not None:
            await self.hello(peer.endpoint.host, peer.endpoint.port, cert, peer.device_id)

    def _say_once(self, key: str, event: str, device_id: str, address: str, port: int, hostname: str,
                  **fields: str) -> None:
        allowed, _ = self._warned.allow(key, self._clock())
        if allowed:
            log.warning(event, server=grouped(device_id), hostname=hostname or None,
                        address=f"{bracketed(address)}:{port}", **fields)

    def unpaired_hint(self, peers: list[Peer]) -> str | None:
        """What to tell an app whose request found only servers this device may not use."""
        unpaired = [p for p in peers if p.device_id is not None and not self.usable(p)]
        if not unpaired:
            return None
        # Bounded: a flood of forged servers must not make a megabyte of 503 text.
        names = ", ".join(f"{p.hostname or p.endpoint.host} ({short(p.device_id or '')})" for p in unpaired[:HINT_NAMES])
        if len(unpaired) > HINT_NAMES:
            names += f" and {len(unpaired) - HINT_NAMES} more (`ollana device pending`)"
        return (
            f"ollana: found Ollama servers on the LAN, but none is paired with this device: {names}. "
            f"Pair: here `ollana device allow ID`; on the server `ollana device pending` and "
            f"`ollana device allow {self._devices.identity.short}`"
        )


def _note_if_due(last: dict[str, float], key: str, now: float, gap: float) -> bool:
    """Decide (``due``), then note it as done now; bounded memory under a flood of keys."""
    if not due(last.get(key), now, gap):
        return False
    if key not in last and len(last) >= MAX_VERDICTS:
        last.clear()
    last[key] = now
    return True
