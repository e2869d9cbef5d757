"""The client's intake of heartbeats: what it believes at once, and what it checks first.

A heartbeat is a claim anyone on the link can make (``discovery/claims.py``). This module asks
the peer table what a heartbeat would do, takes plain refreshes at once, drops replays and
identity grabs, and puts everything that needs a check (trust devices: the certificate at that
address; trust open: a known node's new address or instance, a new server's first health check)
in the bounded, fair queue of ``discovery/vetqueue.py``. Checks run in the node's task group.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Awaitable, Callable, Coroutine, Hashable
from typing import Any

import aiohttp
import structlog

from ollana.config import Endpoint, bracketed
from ollana.discovery.claims import Claim, Verdict, asks_again, rehomes
from ollana.discovery.packet import TRUST_DEVICES, Heartbeat
from ollana.discovery.peers import Change, Peer, PeerTable, Source
from ollana.discovery.vetqueue import Lane, Offer, VetQueue
from ollana.log import TRACE
from ollana.proxy.headers import is_from_ollana
from ollana.ratelimit import RateLimiter
from ollana.trust.identity import id_from_bytes
from ollana.trust.vetting import ServerVetting

log = structlog.get_logger(__name__)

Spawn = Callable[[Coroutine[Any, Any, None]], "asyncio.Task[None] | None"]
Job = Callable[[], Awaitable[None]]


class Intake:
    def __init__(
        self,
        table: PeerTable,
        vetting: ServerVetting | None,
        *,
        trust: str,
        session: aiohttp.ClientSession,
        timeout: float,
        clock: Callable[[], float],
        apply: Callable[[Change | None], None],
        announced: Callable[[Peer | None, int | None], None],
        first_check: Callable[[Peer], Awaitable[None]],
        other_mode: Callable[[str, str, Endpoint, str], None] = lambda *_: None,
    ) -> None:
        self._table = table
        self._vetting = vetting
        self._trust = trust
        self._session = session
        self._timeout = timeout
        self._clock = clock
        self._apply = apply
        self._announced = announced
        self._first_check = first_check
        self._other_mode = other_mode  # (servers in the other trust mode are named in the 503)
        self.queue: VetQueue[Hashable] = VetQueue()
        self._jobs: dict[Hashable, Job] = {}
        self._wake = asyncio.Event()
        self._spawn: Spawn | None = None
        # New nodes with a certificate check queued or running (one address at a time each).
        self._new_nodes: set[str] = set()
        # Servers in the other trust mode: said once per node, never used.
        self._mismatch = RateLimiter(math.inf)
        self._drops = RateLimiter(period=10.0)
        self._debug = logging.getLogger(__name__)

    # -- heartbeats ---------------------------------------------------------------------------

    def heartbeat(self, hb: Heartbeat, source: str, now: float, via: Source = Source.MULTICAST) -> None:
        if hb.trust != self._trust:
            self._trust_mismatch(hb, source, now)
            return
        vetting = self._vetting
        device_id = id_from_bytes(hb.device_id) if vetting is not None and hb.device_id is not None else None
        verdict = self._table.judge(hb, source, now, device_id, via)
        if verdict in (Verdict.REPLAY, Verdict.IDENTITY_TAKEN):
            self._dropped(verdict.value, hb, source, now)
            return
        if vetting is None or device_id is None:
            known = self._table.get(hb.node_id.hex())
            if verdict is Verdict.NEEDS_PROOF and known is not None and rehomes(known, hb, source):
                self.observe(hb, source, now, None, via)  # not proven yet: its first check asks here
                return
            if verdict is Verdict.NEEDS_PROOF:
                claim = Claim.of(hb, source)
                self._offer(("proof", claim), source, Lane.UNKNOWN, lambda: self._prove(hb, claim, via), now)
                return
            self.observe(hb, source, now, None, via)
            peer = self._table.get(hb.node_id.hex())
            if peer is not None and not peer.proven and verdict is not None:
                self.check_first(peer, now)  # refreshed but not proven yet: its first check again
            return
        answer = vetting.verdict(source, hb.proxy_port, device_id)
        if answer:
            self.observe(hb, source, now, device_id, via, proven=True)
        elif answer is None:
            # A server that proved this very claim before is re-checked first, in its own lane;
            # a node heard for the first time before a known node's new address or device ID.
            lane = Lane.KNOWN if verdict is Verdict.REFRESH else Lane.NEW if verdict is None else Lane.UNKNOWN
            node = hb.node_id.hex()
            if verdict is None and node in self._new_nodes:
                return  # a new node is checked at one address at a time: the first one heard first
            where = ("cert", node, source, hb.proxy_port, device_id)
            if self._offer(where, source, lane, lambda: self._vet(vetting, hb, source, device_id, via), now) and verdict is None:
                self._new_nodes.add(node)

    def observe(self, hb: Heartbeat, source: str, now: float, device_id: str | None = None,
                via: Source = Source.MULTICAST, *, proven: bool = False) -> None:
        self._apply(self._table.observe(hb, source, now, device_id, via, proven=proven))
        if hb.catalog_gen is not None:
            self._announced(self._table.get(hb.node_id.hex()), hb.catalog_gen)

    def check_first(self, peer: Peer, now: float) -> None:
        """A discovered server that has not answered yet: its first health check, in a lane of its
        own (``Lane.NEW``). One per address: an entry that moved to a better one (``rehomes``) is
        asked there at once, not after a check of the old one hangs until its timeout."""
        key, where = peer.key, ("first", peer.key, str(peer.endpoint))
        self._offer(where, peer.endpoint.host, Lane.NEW, lambda: self._first(key, where), now)

    async def _first(self, key: str, where: Hashable) -> None:
        peer = self._table.get(key)
        if peer is None or peer.proven:
            return
        started = self._clock()
        await self._first_check(peer)
        again = self._table.get(key)
        if asks_again(again, started) and again is not None:
            self.queue.done(where)  # (this check ended: the heartbeat heard meanwhile asks again)
            self.check_first(again, self._clock())

    async def _vet(self, vetting: ServerVetting, hb: Heartbeat, source: str, device_id: str, via: Source) -> None:
        try:
            await self._vet_once(vetting, hb, source, device_id, via)
        finally:
            self._new_nodes.discard(hb.node_id.hex())

    async def _vet_once(self, vetting: ServerVetting, hb: Heartbeat, source: str, device_id: str, via: Source) -> None:
        if not vetting.may_check(source, hb.proxy_port, device_id):
            return
        log.debug("vetting_started", address=str(Endpoint(source, hb.proxy_port)), node=hb.node_id.hex(),
                  device_id=device_id)
        ok = await vetting.check(source, hb.proxy_port, device_id, hb.hostname)
        log.debug("vetting_done", address=str(Endpoint(source, hb.proxy_port)), node=hb.node_id.hex(), genuine=ok)
        if ok:
            self.observe(hb, source, self._clock(), device_id, via, proven=True)

    async def _prove(self, hb: Heartbeat, claim: Claim, via: Source) -> None:
        """Trust open: does ``claim.address`` answer as that node and instance? Then take it."""
        url = f"http://{bracketed(claim.address)}:{claim.port}/ollana/v1/status"
        try:
            async with self._session.get(url, timeout=aiohttp.ClientTimeout(total=self._timeout)) as resp:
                body = await resp.json(content_type=None)
                ok = (resp.status == 200 and is_from_ollana(resp.headers) and isinstance(body, dict)
                      and body.get("node_id") == claim.key and body.get("instance_id") == claim.instance_id)
        except (TimeoutError, aiohttp.ClientError, ValueError, OSError) as exc:
            ok, body = False, str(exc) or type(exc).__name__
        log.debug("claim_checked", node=claim.key, address=str(Endpoint(claim.address, claim.port)),
                  instance=claim.instance_id, believed=ok, **({} if ok else {"reason": str(body)[:200]}))
        if ok:
            self.observe(hb, claim.address, self._clock(), None, via, proven=True)

    def _trust_mismatch(self, hb: Heartbeat, source: str, now: float) -> None:
        self._other_mode(hb.node_id.hex(), hb.hostname, Endpoint(source, hb.proxy_port), hb.trust)
        allowed, _ = self._mismatch.allow(hb.node_id.hex(), now)
        if not allowed:
            return
        if hb.trust == TRUST_DEVICES:
            reason = ("the server serves only paired devices over TLS (trust mode devices) and this client runs "
                      "--trust open; run the client without --trust open and pair the two")
        else:
            reason = ("the server runs --trust open (plain HTTP, no device checks) and this client runs trust "
                      "mode devices, which never sends prompts in the clear; run both in the same mode")
        log.warning("server_ignored", node=hb.node_id.hex(), hostname=hb.hostname or None,
                    address=str(Endpoint(source, hb.proxy_port)), server_trust=hb.trust,
                    client_trust=self._trust, reason=reason)

    def _dropped(self, reason: str, hb: Heartbeat, source: str, now: float) -> None:
        if not self._debug.isEnabledFor(logging.DEBUG):
            return
        allowed, suppressed = self._drops.allow(f"{reason}/{source}", now)
        if allowed:
            log.debug("heartbeat_dropped", reason=reason, node=hb.node_id.hex(), source=source, seq=hb.seq,
                      suppressed=suppressed)

    # -- the check queue ----------------------------------------------------------------------

    def _offer(self, key: Hashable, source: str, lane: Lane, job: Job, now: float) -> bool:
        """Queue a check; whether it was queued."""
        got, evicted = self.queue.offer(key, source, lane, now)
        if evicted is not None:
            self._jobs.pop(evicted, None)
            if isinstance(evicted, tuple) and evicted[0] == "cert":
                self._new_nodes.discard(evicted[1])
        if got is Offer.QUEUED:
            self._jobs[key] = job
            self._wake.set()
        elif got is not Offer.DUPLICATE and self._debug.isEnabledFor(logging.DEBUG):
            allowed, suppressed = self._drops.allow(f"check/{got.value}", now)
            if allowed:
                log.debug("check_not_queued", reason=got.value, source=source, lane=lane.value, suppressed=suppressed)
        if self._debug.isEnabledFor(TRACE):
            log.debug("check_offered", key=repr(key), lane=lane.value, result=got.value)
        return got is Offer.QUEUED

    async def run(self, spawn: Spawn) -> None:
        """Start queued checks as slots free up; checks run in the caller's task group."""
        self._spawn = spawn
        while True:
            await self._wake.wait()
            self._wake.clear()
            while (got := self.queue.take()) is not None:
                key, _lane = got
                job = self._jobs.pop(key, None)
                if job is None or spawn(self._run(key, job)) is None:
                    self.queue.done(key)

    async def _run(self, key: Hashable, job: Job) -> None:
        try:
            await job()
        except Exception:  # whatever a remote host sends, the node must go on
            log.exception("server_check_crashed", check=repr(key))
        finally:
            self.queue.done(key)
            self._wake.set()
