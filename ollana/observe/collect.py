"""What is a state, not an event, read from the roles' status documents at scrape time.

Peers by state and source, discovery packets by type and drop reason, the local Ollama's health:
the status document already says all of it (``ollana status`` and the page read the same), so
the metrics never drift from what the node reports, and the peer table needs no hooks.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import structlog
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

log = structlog.get_logger(__name__)

Status = Callable[[], dict[str, Any]]


def peer_state(peer: dict[str, Any]) -> str:
    """A peer as the client sees it: usable, not paired (trust mode devices), or failing."""
    if peer.get("paired") is False:
        return "unpaired"
    return "healthy" if peer.get("healthy") else "unhealthy"


def families(documents: list[tuple[str, dict[str, Any]]]) -> list[Metric]:
    """The metric families that a node's status documents (one per role) say. Pure."""
    info = GaugeMetricFamily("ollana_node_info", "This node: version, role and trust mode",
                             labels=["role", "version", "trust"])
    uptime = GaugeMetricFamily("ollana_uptime_seconds", "Seconds since the node started", labels=["role"])
    peers = GaugeMetricFamily("ollana_peers", "Servers in the client's table, by state and source",
                              labels=["state", "source"])
    received = CounterMetricFamily("ollana_discovery_packets_received",
                                   "Discovery packets accepted from others, by type", labels=["role", "type"])
    sent = CounterMetricFamily("ollana_discovery_packets_sent", "Discovery packets sent (one per link), by type",
                               labels=["role", "type"])
    dropped = CounterMetricFamily("ollana_discovery_packets_dropped", "Discovery datagrams dropped, by reason",
                                  labels=["role", "reason"])
    upstream = GaugeMetricFamily("ollana_upstream_up", "Whether the server's Ollama answered its last check",
                                 labels=["role"])
    for role, doc in documents:
        info.add_metric([role, str(doc.get("ollana", "")), str(doc.get("trust", ""))], 1)
        uptime.add_metric([role], float(doc.get("uptime_s", 0.0)))
        if "peers" in doc:
            counts: dict[tuple[str, str], int] = {}
            for peer in doc["peers"]:
                key = (peer_state(peer), str(peer.get("source", "")))
                counts[key] = counts.get(key, 0) + 1
            for (state, source), n in sorted(counts.items()):
                peers.add_metric([state, source], n)
        disc = doc.get("discovery") or {}
        for family, field in ((received, "received"), (sent, "sent"), (dropped, "dropped")):
            for what, n in sorted((disc.get(field) or {}).items()):
                family.add_metric([role, str(what)], n)
        if isinstance(doc.get("upstream"), dict):
            upstream.add_metric([role], 1.0 if doc["upstream"].get("healthy") else 0.0)
    return [info, uptime, peers, received, sent, dropped, upstream]


class StatusCollector(Collector):
    def __init__(self) -> None:
        self._sources: dict[str, Status] = {}

    def track(self, role: str, status: Status) -> None:
        self._sources[role] = status

    def describe(self) -> list[Metric]:
        return []  # nothing to check for name clashes ahead of time: read at scrape time

    def collect(self) -> Iterator[Metric]:
        documents = []
        for role, status in self._sources.items():
            try:
                documents.append((role, status()))
            except Exception:  # a broken status must not break the whole scrape
                log.exception("metrics_status_failed", role=role)
        yield from families(documents)
