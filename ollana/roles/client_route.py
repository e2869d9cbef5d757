"""Where the client sends each request: the fleet's merged lists, routing by model, failover.

The decisions are pure (``fleet.routing``, ``discovery.peers.candidates``); this module holds the
client's state between them and turns decisions into targets.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Awaitable, Callable
from typing import Any, Final

import structlog
from aiohttp import web

from ollana.config import Endpoint
from ollana.discovery.links import preference
from ollana.discovery.packet import TRUST_DEVICES
from ollana.discovery.peers import (
    BY_ADDRESS,
    Change,
    ChangeKind,
    Peer,
    PeerTable,
    Source,
    listed,
    routable,
)
from ollana.fleet.asks import Ask, Kind
from ollana.fleet.catalog import SERVER_HEADER
from ollana.fleet.view import FleetView
from ollana.proxy.answers import error, json_response
from ollana.proxy.forward import Target
from ollana.proxy.forward import cut as cut_request
from ollana.roles.local import LocalServer
from ollana.roles.no_server import Unusable, Why, failure, no_answer, no_server
from ollana.roles.policy import OpenPolicy, Policy, WithLocal
from ollana.waits import wait_set

log = structlog.get_logger(__name__)

# Servers no longer in the table (gone, or heard in the other trust mode) are still named in the
# 503 for this long, at most this many (the most recent).
GONE_MEMORY: Final = 30 * 60.0
MAX_GONE: Final = 64

_MERGED = {Kind.TAGS: "tags", Kind.PS: "ps", Kind.MODELS: "models"}
# What each list shows: the models, or the loaded ones.
_SHOWS = {Kind.TAGS: "models", Kind.PS: "loaded", Kind.MODELS: "models"}


# Why a peer changed state, in words (each log line says it; the check's own error is logged with it).
_REASONS: Final = {
    ChangeKind.ADDED: "answered its first health check as that node",
    ChangeKind.RESTARTED: "a new instance of the node (it restarted)",
    ChangeKind.MOVED: "answered as that node at a new address",
    ChangeKind.REMOVED: "said goodbye, or was removed",
    ChangeKind.EXPIRED: "not heard for its lifetime",
    ChangeKind.HEALTHY: "answered its health check again",
    ChangeKind.UNHEALTHY: "a health check or request failed",
}


def log_change(change: Change | None) -> None:
    if change is None:
        return
    p = change.peer
    fields = {"peer": p.key, "hostname": p.hostname or None, "address": str(p.endpoint), "source": p.source.value,
              "reason": _REASONS[change.kind]}
    if change.kind in (ChangeKind.UNHEALTHY, ChangeKind.EXPIRED):
        log.warning(f"peer_{change.kind.value}", **fields)
    elif change.first:  # proven by the claim check before any health check: its first answer
        log.info("peer_added", **{**fields, "reason": "answered as that node (claim check)"})
    else:
        log.info(f"peer_{change.kind.value}", **fields)


def target_of(peer: Peer, tls: ssl.SSLContext | None = None, *, listed: bool = False) -> Target:
    # This machine's own Ollama (role both) is reached directly: mark its answers here.
    mark = peer.hostname if peer.source is Source.LOCAL else None
    return Target(peer.key, peer.url, str(peer.endpoint), tls, listed, mark, display_name(peer))


def display_name(peer: Peer) -> str:
    """A server as people know it: its host name, else its address."""
    return peer.hostname or str(peer.endpoint)


def candidate(peer: Peer, view: FleetView) -> dict[str, Any]:
    """A server as the debug log shows it next to a routing decision."""
    catalog = view.catalog(peer.key)
    return {
        "peer": peer.key, "hostname": peer.hostname or None, "healthy": peer.healthy,
        "rtt_ms": None if peer.rtt_ms is None else round(peer.rtt_ms, 2), "inflight": peer.inflight,
        "models": len(catalog.models) if catalog is not None else None,
    }


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
        *,
        routed: Callable[[str], None] = lambda _why: None,
        discovery: bool = True,
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
        self._routed = routed  # counts each decision by its rule (metrics)
        self.peer_added = asyncio.Event()
        # The request tasks in flight per peer, so that disabling a server cuts its streams.
        self._inflight: dict[str, set[asyncio.Task[Any]]] = {}
        # For the 503 and 502 texts: whether discovery runs, servers that left the table (or were
        # heard in the other trust mode) with when, and each server's last failed request.
        self._discovery = discovery
        self._gone: dict[str, tuple[Unusable, float, str]] = {}  # (what, when, its host)
        self._failures: dict[str, str] = {}

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
            await wait_set(self.peer_added, self._grace)
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
            self._decided(ask, peers, (chosen[0].key,), "pinned")
            return [target_of(chosen[0], policy.context(chosen[0]))]
        decision = self._view.decide(ask, peers, [p.key for p in peers], self._clock())
        by_key = {p.key: p for p in peers}
        self._decided(ask, peers, decision.order, decision.why)
        return [
            target_of(by_key[k], policy.context(by_key[k]), listed=k in decision.holders)
            for k in decision.order
        ]

    def _decided(self, ask: Ask, peers: list[Peer], order: tuple[str, ...], why: str) -> None:
        """Count a routing decision; at debug, log it: the candidates as routing saw them, the
        order chosen, and the rule that chose (the level is checked first: this is the hot path)."""
        self._routed(why)
        if self._debug.isEnabledFor(logging.DEBUG):
            log.debug(
                "routed", path=ask.path, kind=ask.kind.value, model=ask.model or None, why=why,
                chosen=order[0] if order else None, order=list(order),
                candidates=[candidate(p, self._view) for p in peers],
            )

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
        """End the requests in flight to a peer (it was disabled here); returns how many. Each
        answer ends saying so (an error line in a stream, else a 403)."""
        tasks = self._inflight.pop(key, set())
        peer = self._table.get(key)
        name = display_name(peer) if peer is not None else key
        for task in tasks:
            cut_request(task, f"{name} was disabled on this device")
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
        if len(self._failures) >= MAX_GONE and target.key not in self._failures:
            self._failures.clear()  # bounded, whatever the keys
        self._failures[target.key] = reason
        log.info("peer_request_failed", peer=target.key, reason=reason)
        log_change(self._table.mark_failed(target.key, self._clock()))

    def stale(self, target: Target, ask: Ask) -> None:
        self._view.stale(target.key, ask.model)
        peer = self._table.get(target.key)
        if peer is not None:
            self._fetch_soon(peer)

    # -- why no server could be used --------------------------------------------------------

    def note(self, change: Change | None) -> None:
        """A table change, remembered for the 503: a discovered server that left, and why."""
        if change is None:
            return
        peer = change.peer
        if change.kind in (ChangeKind.ADDED, ChangeKind.RESTARTED, ChangeKind.MOVED):
            self._gone.pop(peer.key, None)
        elif change.kind in (ChangeKind.REMOVED, ChangeKind.EXPIRED) and peer.source not in (*BY_ADDRESS, Source.LOCAL):
            why = Why.GOODBYE if change.kind is ChangeKind.REMOVED else Why.SILENT
            self._remember(peer.key, Unusable(peer.hostname, str(peer.endpoint), why), peer.endpoint.host)
        if change.kind in (ChangeKind.REMOVED, ChangeKind.EXPIRED):
            self._failures.pop(peer.key, None)

    def other_mode(self, key: str, hostname: str, endpoint: Endpoint, server_trust: str) -> None:
        """A server was heard in the other trust mode: never used, named in the 503."""
        why = Why.SPEAKS_TLS if server_trust == TRUST_DEVICES else Why.PLAIN
        known = self._gone.get(key)
        if known is not None and known[0].why is why and preference(known[2]) < preference(endpoint.host):
            endpoint = Endpoint(known[2], endpoint.port)  # heard on both families: name it by IPv4
        self._remember(key, Unusable(hostname, str(endpoint), why), endpoint.host)

    def _remember(self, key: str, server: Unusable, host: str) -> None:
        self._gone.pop(key, None)
        while len(self._gone) >= MAX_GONE:
            del self._gone[next(iter(self._gone))]  # the oldest news goes first
        self._gone[key] = (server, self._clock(), host)

    def _unusable(self, peer: Peer) -> Unusable:
        named = peer.source in BY_ADDRESS
        # Unusable under trust mode devices: genuine but not allowed here, or (named by address)
        # its certificate, hence its device, still unknown.
        why = Why.UNPAIRED if peer.device_id is not None else Why.NO_CERTIFICATE
        return Unusable(peer.hostname, str(peer.endpoint), why, named)

    def unusable(self) -> list[Unusable]:
        """Every server known and not usable now, the table's first, then those remembered."""
        now, policy = self._clock(), self._policy
        known = [self._unusable(p) for p in self._table if not policy.usable(p)]
        for key in [k for k, (_, at, _) in self._gone.items() if now - at > GONE_MEMORY]:
            del self._gone[key]
        for key, (server, at, _) in reversed(self._gone.items()):
            if self._table.get(key) is None:
                left = server.why in (Why.GOODBYE, Why.SILENT)
                known.append(Unusable(server.name, server.address, server.why, when=_ago(now - at) if left else ""))
        return known

    def unavailable(self, request: web.BaseRequest, tried: list[str]) -> web.Response:
        if tried:
            servers = []
            for key in tried:
                peer = self._table.get(key)
                why, detail = failure(self._failures.get(key, ""))
                name, address = (peer.hostname, str(peer.endpoint)) if peer is not None else ("", key)
                servers.append(Unusable(name, address, why, peer is not None and peer.source in BY_ADDRESS, detail))
            return error(request, 502, no_answer(servers), not_forwarded=True)
        hint = self._policy.unpaired_hint(list(self._table))
        text = no_server(self.unusable(), waited=self._grace, discovery=self._discovery, pair_hint=hint)
        return error(request, 503, text, not_forwarded=True)


def _ago(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s ago"
    return f"{seconds / 60:.0f} min ago"
