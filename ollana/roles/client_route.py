"""Where the client sends each request: the fleet's merged lists, routing by model, failover.

The decisions are pure (``fleet.routing``, ``discovery.peers.candidates``); this module holds the
client's state between them and turns decisions into targets.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import structlog
from aiohttp import web

from ollana.discovery.peers import Change, ChangeKind, Peer, PeerTable, Source, listed, routable
from ollana.fleet.asks import Ask, Kind
from ollana.fleet.catalog import SERVER_HEADER
from ollana.fleet.view import FleetView
from ollana.proxy.answers import error, json_response
from ollana.proxy.forward import Target
from ollana.roles.local import LocalServer

log = structlog.get_logger(__name__)

_MERGED = {Kind.TAGS: "tags", Kind.PS: "ps", Kind.MODELS: "models"}
# What each list shows: the models, or the loaded ones.
_SHOWS = {Kind.TAGS: "models", Kind.PS: "loaded", Kind.MODELS: "models"}


def log_change(change: Change | None) -> None:
    if change is None:
        return
    p = change.peer
    fields = {"peer": p.key, "hostname": p.hostname or None, "address": str(p.endpoint), "source": p.source.value}
    if change.kind in (ChangeKind.UNHEALTHY, ChangeKind.EXPIRED):
        log.warning(f"peer_{change.kind.value}", **fields)
    else:
        log.info(f"peer_{change.kind.value}", **fields)


def target_of(peer: Peer, tls: ssl.SSLContext | None = None, *, listed: bool = False) -> Target:
    # This machine's own Ollama (role both) is reached directly: mark its answers here.
    mark = peer.hostname if peer.source is Source.LOCAL else None
    return Target(peer.key, peer.url, str(peer.endpoint), tls, listed, mark)


class Policy(Protocol):
    """Which servers this client may use, and how it talks to them (trust mode)."""

    def usable(self, peer: Peer) -> bool: ...

    def context(self, peer: Peer) -> ssl.SSLContext | None: ...

    def unpaired_hint(self, peers: list[Peer]) -> str | None: ...

    def refusing(self, peer: Peer) -> bool: ...


class OpenPolicy:
    """Trust mode open: every server is usable, over plain HTTP."""

    def usable(self, peer: Peer) -> bool:
        return True

    def context(self, peer: Peer) -> ssl.SSLContext | None:
        return None

    def unpaired_hint(self, peers: list[Peer]) -> str | None:
        return None

    def refusing(self, peer: Peer) -> bool:
        return False


class WithLocal:
    """Role both: this machine's own Ollama is always usable, over plain HTTP on loopback."""

    def __init__(self, inner: Policy, local_key: str) -> None:
        self._inner = inner
        self._local = local_key

    def usable(self, peer: Peer) -> bool:
        return peer.key == self._local or self._inner.usable(peer)

    def context(self, peer: Peer) -> ssl.SSLContext | None:
        return None if peer.key == self._local else self._inner.context(peer)

    def unpaired_hint(self, peers: list[Peer]) -> str | None:
        return self._inner.unpaired_hint([p for p in peers if p.key != self._local])

    def refusing(self, peer: Peer) -> bool:
        return peer.key != self._local and self._inner.refusing(peer)


def short_id(peer: Peer) -> str:
    """The short ID a server's own answers show in X-Ollana-Server: its device ID's first 7
    characters (trust devices), else its node ID's."""
    return (peer.device_id or peer.node_id or peer.key)[:7]


def names_of(peer: Peer) -> list[str]:
    """What ``X-Ollana-Server`` may say to pin a request to ``peer``."""
    names = [peer.key, peer.hostname, str(peer.endpoint)]
    if peer.device_id:
        names.append(peer.device_id)
    return [n.casefold() for n in names if n]


def pinned(peers: list[Peer], wanted: str) -> list[Peer]:
    """The servers ``wanted`` names: a host name, address or key exactly, or a node or device ID
    prefix (the short ID in an answer's X-Ollana-Server)."""
    want = wanted.strip().casefold()
    if want.endswith(")") and "(" in want:  # an answer's own mark, "host (short id)": the ID
        want = want[want.rindex("(") + 1 : -1].strip()
    if not want:
        return []
    exact = [p for p in peers if want in names_of(p)]
    if exact:
        return exact
    if len(want) < 4:
        return []
    return [p for p in peers if any(i.casefold().startswith(want) for i in (p.key, p.node_id, p.device_id or "") if i)]


class ClientRoute:
    """Routes to the peers in the table, waiting a short grace for discovery when none is known.

    Only the servers the policy allows are used (trust mode devices: paired ones, each over a
    context pinned to its certificate).
    """

    def __init__(
        self,
        table: PeerTable,
        view: FleetView,
        clock: Callable[[], float],
        grace: float,
        probe: Callable[[], None],
        fetch_now: Callable[[Peer], Awaitable[None]],
        fetch_soon: Callable[[Peer], None],
        policy: Policy | None = None,
        local: LocalServer | None = None,
    ) -> None:
        self._table = table
        self._view = view
        self._clock = clock
        self._grace = grace
        self._probe = probe
        self._fetch_now = fetch_now  # a server's catalogue, awaited
        self._fetch_soon = fetch_soon  # ... in the background
        self._debug = logging.getLogger(__name__)  # its level says whether to log each decision
        self._policy: Policy = policy or OpenPolicy()
        if local is not None:
            self._policy = WithLocal(self._policy, local.key)
        # Role both: the server side counts this client's requests to the local Ollama too.
        self._local = local
        self.peer_added = asyncio.Event()
        # The request tasks in flight per peer, so that disabling a server cuts its streams.
        self._inflight: dict[str, set[asyncio.Task[Any]]] = {}

    @property
    def replays(self) -> bool:
        return len(self._table) > 1

    def usable(self) -> list[Peer]:
        """Usable servers in home order: the current one first, then by RTT; unhealthy last."""
        policy = self._policy
        return [p for p in self._table.candidates(self._clock()) if policy.usable(p)]

    def _awaiting(self) -> bool:
        """No server usable yet, but one may be soon: none proven so far, or one this client may
        use has not answered its first check."""
        peers = [p for p in self._table if listed(p)]
        return not peers or any(not routable(p) and self._policy.usable(p) for p in peers)

    async def answer(self, request: web.BaseRequest, ask: Ask) -> web.StreamResponse | None:
        if not self.usable() and self._awaiting():
            self._probe()
            self.peer_added.clear()  # set again when a server answers its first check
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.peer_added.wait(), self._grace)
        peers = self.usable()
        if not peers:
            return self.unavailable(request, [])
        what = _MERGED.get(ask.kind)
        if what is None or SERVER_HEADER in request.headers:
            return None
        # Servers that answer this client now; a server that refuses it (not paired there) must
        # not lend its models to the list: the request goes on and gets the server's refusal.
        serving = [p for p in peers if p.healthy and not self._policy.refusing(p)]
        shows = _SHOWS[ask.kind]
        missing = [p for p in serving if self._view.catalog(p.key) is None or self._view.outdated(p.key, shows)]
        if missing:  # just found, or changed by this client: fetch now rather than answer an old list
            await asyncio.gather(*(self._fetch_now(p) for p in missing), return_exceptions=True)
        keys = [p.key for p in serving]
        if not self._view.catalogs(keys):
            # No catalogue (servers down, refusing, or older ollanas): the home server answers.
            return None
        return json_response(200, self._view.merged(what, keys))

    def targets(self, request: web.BaseRequest, ask: Ask) -> list[Target] | web.StreamResponse:
        peers = self.usable()
        policy = self._policy
        wanted = request.headers.get(SERVER_HEADER)
        if wanted is not None:
            chosen = pinned(peers, wanted)
            if len(chosen) != 1:
                known = ", ".join(f"{p.hostname or '?'} ({short_id(p)}) at {p.endpoint}" for p in peers)
                what = "matches several servers" if chosen else "names no server this client knows"
                return error(request, 404, f"{SERVER_HEADER}: {wanted!r} {what}; known servers: {known or 'none'}")
            return [target_of(chosen[0], policy.context(chosen[0]))]
        decision = self._view.decide(ask, peers, [p.key for p in peers], self._clock())
        by_key = {p.key: p for p in peers}
        if ask.model and self._debug.isEnabledFor(logging.DEBUG):  # (checked first: hot path)
            log.debug("routed", model=ask.model, why=decision.why, order=list(decision.order))
        return [
            target_of(by_key[k], policy.context(by_key[k]), listed=k in decision.holders)
            for k in decision.order
        ]

    def begin(self, target: Target, ask: Ask) -> None:
        self._table.begin(target.key)
        if ask.kind is Kind.INFER:
            self._view.begin(target.key, ask.model)
            if self._local is not None and target.key == self._local.key:
                self._local.keeper.begin(ask.model)
        task = asyncio.current_task()
        if task is not None:
            self._inflight.setdefault(target.key, set()).add(task)

    def cut(self, key: str) -> int:
        """Cancel the requests in flight to a peer (it was disabled); returns how many."""
        tasks = self._inflight.pop(key, set())
        for task in tasks:
            task.cancel()
        return len(tasks)

    def end(self, target: Target, ask: Ask, status: int | None) -> None:
        self._table.end(target.key)
        if ask.kind is Kind.INFER:
            self._view.end(target.key, ask.model)
        if self._local is not None and target.key == self._local.key:
            if ask.kind is Kind.INFER:
                self._local.keeper.end(ask.model, changed=status is not None)
            elif ask.kind is Kind.MANAGE and status is not None:
                self._local.keeper.poke()
        tasks = self._inflight.get(target.key)
        if tasks is not None:
            tasks.discard(asyncio.current_task())
            if not tasks:
                del self._inflight[target.key]
        peer = self._table.get(target.key)
        if status is None or peer is None or self._policy.refusing(peer):
            return  # (A server that refuses this device answers too, but is not healthy for it.)
        now = self._clock()
        log_change(self._table.mark_healthy(target.key, None, now))
        if ask.kind is Kind.BLOB and status in (200, 201):
            self._view.remember_blob(ask.digest, target.key, now)
        elif ask.kind is Kind.MANAGE and status < 400:
            self._view.changed_here(target.key, "models")
            self._view.changed_here(target.key, "loaded")
        elif ask.kind is Kind.INFER:
            self._view.changed_here(target.key, "loaded")
        if not target.listed:
            self._table.settle(target.key)  # the home server: requests without a model stay there

    def failed(self, target: Target, reason: str) -> None:
        log.info("peer_request_failed", peer=target.key, reason=reason)
        log_change(self._table.mark_failed(target.key, self._clock()))

    def stale(self, target: Target, ask: Ask) -> None:
        self._view.stale(target.key, ask.model)
        peer = self._table.get(target.key)
        if peer is not None:
            self._fetch_soon(peer)

    def unavailable(self, request: web.BaseRequest, tried: list[str]) -> web.Response:
        if not tried:
            hint = self._policy.unpaired_hint(list(self._table))
            if hint is not None:
                return error(request, 503, hint, not_forwarded=True)
            return error(
                request, 503,
                f"no Ollama server found on the LAN (waited {self._grace:g} s for discovery); "
                "run `ollana serve` on a machine with Ollama, or pass --peer HOST:PORT",
                not_forwarded=True,
            )
        return error(request, 502, f"no Ollama server on the LAN answered (tried {', '.join(tried)})", not_forwarded=True)
