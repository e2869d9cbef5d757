"""Per-request numbers kept as plain Python numbers, turned into Prometheus families at scrape time.

prometheus-client's ``Counter.inc`` and ``Histogram.observe`` take a lock and walk the metric's
machinery on every call: about 10 µs of the request path's CPU for the five updates a request makes.
Everything here runs on the node's one event loop (the scrape too), so a request only adds to numbers
of its series, and :class:`RequestTally` (a prometheus-client collector) sums them into families
when someone asks. The exposition is prometheus-client's, as before.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator
from itertools import accumulate
from typing import Final

from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

# From a cached answer in milliseconds to a model loading for minutes (+Inf is implied).
LATENCY_BUCKETS: Final = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                          60.0, 120.0, 300.0)
_LE: Final = (*(floatToGoString(b) for b in LATENCY_BUCKETS), "+Inf")  # type: ignore[no-untyped-call]


class Hist:
    """One histogram series: a count per bucket (not yet cumulative) and the sum."""

    __slots__ = ("counts", "total")

    def __init__(self) -> None:
        self.counts = [0] * (len(LATENCY_BUCKETS) + 1)
        self.total = 0.0

    def observe(self, seconds: float) -> None:
        # A bucket's bound is inclusive (le): the first bound >= the value.
        self.counts[bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self.total += seconds

    def add_to(self, other: Hist) -> None:
        other.counts = [a + b for a, b in zip(other.counts, self.counts, strict=True)]
        other.total += self.total


class Series:
    """What one kind of request (role, route, status, server, model) has added up."""

    __slots__ = ("duration", "first_byte", "requests", "sent")

    def __init__(self) -> None:
        self.requests = 0
        self.sent = 0
        self.first_byte = Hist()
        self.duration = Hist()


Key = tuple[str, str, str, str, str]  # role, route, status, server, model


class RequestTally(Collector):
    """Every request series of a node, and the families they make."""

    def __init__(self) -> None:
        self.series: dict[Key, Series] = {}
        self.routing: dict[str, int] = {}  # the client's routing decisions, by the rule that chose

    def get(self, key: Key) -> Series:
        series = self.series.get(key)
        if series is None:
            series = self.series[key] = Series()
        return series

    def describe(self) -> list[Metric]:
        return []  # read at scrape time, like the status collector

    def collect(self) -> Iterator[Metric]:
        requests = CounterMetricFamily(
            "ollana_requests", "Requests answered, by listener role, route, status, server and model",
            labels=["role", "route", "status", "server", "model"])
        sent = CounterMetricFamily("ollana_response_body_bytes", "Response body bytes sent to callers",
                                   labels=["role", "route"])
        by_route: dict[tuple[str, str], int] = {}
        first_byte: dict[tuple[str, str, str], Hist] = {}
        duration: dict[tuple[str, str, str], Hist] = {}
        for (role, route, status, server, model), s in sorted(self.series.items()):
            requests.add_metric([role, route, status, server, model], s.requests)
            by_route[(role, route)] = by_route.get((role, route), 0) + s.sent
            s.first_byte.add_to(first_byte.setdefault((role, route, model), Hist()))
            s.duration.add_to(duration.setdefault((role, route, model), Hist()))
        for labels, n in by_route.items():
            sent.add_metric(list(labels), n)
        routing = CounterMetricFamily("ollana_routing_decisions", "Client routing decisions, by the rule that chose",
                                      labels=["why"])
        for why, n in sorted(self.routing.items()):
            routing.add_metric([why.replace(" ", "_")], n)
        yield requests
        yield sent
        yield routing
        yield _histogram("ollana_request_first_byte_seconds",
                         "From a request's arrival to the start of the upstream's answer (forwarded requests)",
                         first_byte)
        yield _histogram("ollana_request_duration_seconds", "From a request's arrival to the end of its answer",
                         duration)


def _histogram(name: str, doc: str, series: dict[tuple[str, str, str], Hist]) -> Metric:
    family = HistogramMetricFamily(name, doc, labels=["role", "route", "model"])
    for labels, hist in series.items():
        buckets = list(zip(_LE, accumulate(hist.counts), strict=True))
        family.add_metric(list(labels), buckets, hist.total)
    return family
