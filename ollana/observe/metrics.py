"""A node's Prometheus metrics: one registry per node (several nodes may share a process).

The request path calls :class:`RequestObserver` once when a request starts and once when it
ends; routing, vetting and the gate call one method each where they already decide. The request path
stays cheap (``tests/bench/obscost.py``): a request adds to plain numbers of its series
(``tally.py``), which become Prometheus families only at scrape time; the ring stores a tuple. What is a
state rather than an event (peers, discovery counters, the upstream's health) is read from the
role's status document at scrape time (``collect.py``), so nothing has to be kept in step.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

import aiohttp
from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest

from ollana.fleet.catalog import SERVER_HEADER
from ollana.observe.collect import StatusCollector
from ollana.observe.labels import OTHER, Bounded, model_label, route_name, status_label
from ollana.observe.recent import RecentRequests
from ollana.observe.tally import RequestTally, Series

# At most this many distinct servers and models get their own series; the rest are "other".
MAX_SERVERS: Final = 64
MAX_MODELS: Final = 50
SEEN_MAX: Final = 1024  # kinds of request remembered by what they carried
OWN_PREFIX: Final = "/ollana/"


@dataclass(slots=True)
class Trip:
    """One request on its way through a handler: what the metrics need at its end."""

    started: float  # perf_counter
    model: str = ""
    first_byte: float | None = None  # when the upstream's answer began (perf_counter)
    server: str = ""

    def reached(self, key: str, mark: str | None, upstream: aiohttp.ClientResponse) -> None:
        """The upstream answered: its answer begins now. The server is named as its answers
        name it (``X-Ollana-Server``: host and short ID), else by its key."""
        self.first_byte = time.perf_counter()
        self.server = mark or upstream.headers.get(SERVER_HEADER) or key


class Metrics:
    def __init__(self, wall: Callable[[], float] = time.time) -> None:
        self.registry = registry = CollectorRegistry()
        self._wall = wall
        self._servers = Bounded(MAX_SERVERS)
        self._models = Bounded(MAX_MODELS)
        self._recent: dict[str, RecentRequests] = {}
        self._collector = StatusCollector()
        registry.register(self._collector)
        self.tally = RequestTally()
        registry.register(self.tally)
        self.in_flight = Gauge("ollana_requests_in_flight", "Requests being answered now", ["role"],
                               registry=registry)
        self.vetting = Counter("ollana_tls_vetting", "Checks of a server's certificate against its announced "
                               "device ID, by outcome", ["outcome"], registry=registry)
        self.refusals = Counter("ollana_trust_refusals", "Requests the server's gate refused, by reason",
                                ["reason"], registry=registry)

    # -- hooks --------------------------------------------------------------------------------

    def observer(self, role: str, listed: Callable[[str], bool]) -> RequestObserver:
        """What a listener's handler reports to. ``listed``: whether a catalogue lists a model."""
        recent = self._recent.setdefault(role, RecentRequests())
        return RequestObserver(self, role, listed, recent)

    def track(self, role: str, status: Callable[[], dict[str, Any]]) -> None:
        """Read ``status`` (the role's status document) at every scrape."""
        self._collector.track(role, status)

    def routed(self, why: str) -> None:
        routing = self.tally.routing  # once per client request: a plain count, like the requests'
        routing[why] = routing.get(why, 0) + 1

    def vetted(self, outcome: str) -> None:
        self.vetting.labels(outcome).inc()

    def refused(self, reason: str) -> None:
        self.refusals.labels(reason.replace(" ", "_")).inc()

    # -- reading ------------------------------------------------------------------------------

    def exposition(self) -> bytes:
        return generate_latest(self.registry)

    def recent(self, role: str) -> list[dict[str, Any]]:
        ring = self._recent.get(role)
        return ring.document() if ring is not None else []

    def server_label(self, server: str) -> str:
        return self._servers(server)

    def model_label(self, model: str, listed: Callable[[str], bool]) -> str:
        return model_label(model, listed, self._models)

    @property
    def wall_clock(self) -> Callable[[], float]:
        """The wall clock (time.time unless a test gives another)."""
        return self._wall


class RequestObserver:
    """One listener's view of the metrics (its role label, its ring of recent requests)."""

    def __init__(self, metrics: Metrics, role: str, listed: Callable[[str], bool], recent: RecentRequests) -> None:
        self._m = metrics
        self._role = role
        self._listed = listed
        self._recent_add = recent.add
        self._wall = metrics.wall_clock
        # A plain count, read at scrape time: a gauge's lock twice per request costs more.
        self.active = 0
        metrics.in_flight.labels(role).set_function(lambda: self.active)
        # Bounded like the labels themselves: routes x statuses x 64 servers x 50 models at most.
        self._series: dict[tuple[str, str, str, str], Series] = {}
        # The same by what a request carried (path, status, server, model), so that a repeated
        # kind of request skips working out its labels. Bounded: a path may be anything.
        self._seen: dict[tuple[str, int, str, str], Series] = {}

    def begin(self) -> Trip:
        self.active += 1
        return Trip(time.perf_counter())

    def done(self, method: str, path: str, trip: Trip, status: int, sent: int) -> None:
        elapsed = time.perf_counter() - trip.started
        self.active -= 1
        m = self._m
        seen = (path, status, trip.server, trip.model)
        series = self._seen.get(seen)
        if series is None:
            model = m.model_label(trip.model, self._listed)
            key = (route_name(path), status_label(status), m.server_label(trip.server), model)
            series = self._series.get(key)
            if series is None:
                series = self._series[key] = m.tally.get((self._role, *key))
            # A model no catalogue lists (yet) is "other" only until one does: not remembered.
            if len(self._seen) < SEEN_MAX and model != OTHER:
                self._seen[seen] = series
        series.requests += 1
        series.sent += sent
        if trip.first_byte is not None:
            series.first_byte.observe(trip.first_byte - trip.started)
        series.duration.observe(elapsed)
        if not path.startswith(OWN_PREFIX):  # the page's own polling would crowd out the rest
            self._recent_add((self._wall(), method, path, trip.model, trip.server, status, elapsed))
