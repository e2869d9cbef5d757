"""Metrics labels, the recent-requests ring, the status-derived metrics and the page's document:
pure parts, no sockets."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from ollana.fleet.names import model_key
from ollana.observe.collect import families, peer_state
from ollana.observe.dashboard import client_servers, document, pending_entries, trust_state
from ollana.observe.labels import Bounded, display_name, model_label, route_name, status_label
from ollana.observe.metrics import Metrics, Trip
from ollana.observe.recent import MAX_TEXT, Entry, RecentRequests
from ollana.trust.document import PeerKind, PendingDevice
from ollana.trust.identity import grouped


def test_paths_become_route_names_from_a_fixed_set() -> None:
    assert route_name("/api/chat") == "/api/chat"
    assert route_name("/api/chat/") == "/api/chat"
    assert route_name("/v1/chat/completions") == "/v1/chat/completions"
    assert route_name("/api/blobs/sha256-abc") == "/api/blobs/:digest"
    assert route_name("/v1/models/llama3") == "/v1/models/:model"
    assert route_name("/ollana/") == "/ollana"
    assert route_name("/ollana/static/app.js") == "/ollana/static"
    for raw in ("/api/chat/x", "/wp-login.php", "/api/blobs/", "//", "/" + "a" * 5000, "/api/%00"):
        assert route_name(raw) in ("other", "/"), raw
    assert route_name("/") == "/"


def test_status_labels() -> None:
    assert status_label(200) == "200"
    assert status_label(0) == "aborted"
    assert status_label(1000) == "aborted"


def test_bounded_keeps_the_first_values_then_says_other() -> None:
    bound = Bounded(3)
    assert [bound(v) for v in ("a", "b", "a", "c", "d", "e", "b")] == ["a", "b", "a", "c", "other", "other", "b"]
    assert bound("") == "none"


def test_models_are_named_only_when_a_catalogue_lists_them() -> None:
    listed = {model_key("llama3.2:1b"), model_key("someone/model:q4")}
    bound = Bounded(50)
    assert model_label(model_key("llama3.2:1b"), listed.__contains__, bound) == "llama3.2:1b"
    assert model_label(model_key("someone/model:q4"), listed.__contains__, bound) == "someone/model:q4"
    assert model_label(model_key("made-up:1"), listed.__contains__, bound) == "other"
    assert model_label("", listed.__contains__, bound) == "none"
    # A catalogue listing endless names still gives a bounded set.
    small = Bounded(2)
    names = {model_label(model_key(f"m{i}"), lambda _m: True, small) for i in range(100)}
    assert names == {"m0:latest", "m1:latest", "other"}


def test_display_names() -> None:
    assert display_name(model_key("llama3.2")) == "llama3.2:latest"
    assert display_name(model_key("ns/m:1")) == "ns/m:1"
    assert display_name(model_key("example.com/ns/m:1")) == "example.com/ns/m:1"


def entry(i: int) -> Entry:
    return (1000.0 + i, "POST", "/api/chat", model_key("m"), "s", 200, 0.001)


def test_the_recent_ring_keeps_the_newest_first_and_is_bounded() -> None:
    ring = RecentRequests(size=100)
    for i in range(250):
        ring.add(entry(i))
    doc = ring.document()
    assert len(ring) == len(doc) == 100
    assert [d["at"] for d in doc[:2]] == [1249.0, 1248.0] and doc[-1]["at"] == 1150.0
    assert doc[0] == {"at": 1249.0, "method": "POST", "path": "/api/chat", "model": "m:latest", "server": "s",
                      "status": 200, "ms": 1.0}  # no body, ever


def test_the_observer_counts_and_fills_the_ring_without_bodies() -> None:
    metrics = Metrics(wall=lambda: 1234.5)
    obs = metrics.observer("client", lambda m: m == model_key("llama3.2:1b"))
    trip = obs.begin()
    trip.model = model_key("llama3.2:1b")
    trip.first_byte, trip.server = trip.started + 0.01, "gpu-box (abcdefg)"
    obs.done("POST", "/api/chat", trip, 200, 123)
    own = obs.begin()
    obs.done("GET", "/ollana/v1/dashboard", own, 200, 10)  # the page's polling: counted, not listed
    long = obs.begin()
    obs.done("GET", "/x" * 200, long, 404, 0)
    text = metrics.exposition().decode()
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for f in text_string_to_metric_families(text) for s in f.samples}
    chat = ("ollana_requests_total", (("model", "llama3.2:1b"), ("role", "client"), ("route", "/api/chat"),
                                      ("server", "gpu-box (abcdefg)"), ("status", "200")))
    assert samples[chat] == 1
    assert samples[("ollana_requests_in_flight", (("role", "client"),))] == 0
    assert samples[("ollana_response_body_bytes_total", (("role", "client"), ("route", "/api/chat")))] == 123
    assert samples[("ollana_request_first_byte_seconds_count",
                    (("model", "llama3.2:1b"), ("role", "client"), ("route", "/api/chat")))] == 1
    recent = metrics.recent("client")
    assert [r["path"][:4] for r in recent] == ["/x/x", "/api"]
    assert len(recent[0]["path"]) == MAX_TEXT
    assert recent[1] | {"ms": 0} == {"at": 1234.5, "method": "POST", "path": "/api/chat", "model": "llama3.2:1b",
                                    "server": "gpu-box (abcdefg)", "status": 200, "ms": 0}
    assert metrics.recent("server") == []


def test_trip_names_the_server_as_its_answers_do() -> None:
    trip = Trip(0.0)

    upstream = SimpleNamespace(headers={"X-Ollana-Server": "gpu-box (abcdefg)"})
    trip.reached("static:1.2.3.4:11435", None, upstream)  # type: ignore[arg-type]
    assert trip.server == "gpu-box (abcdefg)" and trip.first_byte is not None
    trip.reached("local", "this-box (1234567)", upstream)  # type: ignore[arg-type]
    assert trip.server == "this-box (1234567)"


def status_doc() -> dict[str, Any]:
    return {
        "ollana": "0.1.0", "hostname": "laptop", "role": "client", "listen": "127.0.0.1:11434",
        "uptime_s": 12.5, "trust": "devices", "device_id": "A" * 52, "current_peer": "n1",
        "peers": [
            {"id": "n1", "hostname": "gpu-box", "endpoint": "10.0.0.2:11435", "healthy": True, "paired": True,
             "trust": "devices", "source": "multicast", "rtt_ms": 1.5, "inflight": 1, "slots": 2,
             "models": ["llama3.2:1b"], "loaded": ["llama3.2:1b"]},
            {"id": "n2", "hostname": "", "endpoint": "10.0.0.3:11435", "healthy": False, "paired": False,
             "trust": "devices", "source": "mdns", "rtt_ms": None, "catalog": None},
            {"id": "n3", "hostname": "old", "endpoint": "10.0.0.4:11435", "healthy": False, "paired": True,
             "trust": "devices", "source": "multicast"},
        ],
        "discovery": {"dropped": {"off_link": 3, "bad_magic": 1}, "received": {"heartbeat": 7}, "sent": {"probe": 2}},
    }


def test_status_documents_become_metric_families() -> None:
    assert peer_state({"healthy": True, "paired": False}) == "unpaired"
    out = {f.name: {tuple(s.labels.values()): s.value for s in f.samples}
           for f in families([("client", status_doc()), ("server", {"upstream": {"healthy": False}})])}
    assert out["ollana_peers"] == {("healthy", "multicast"): 1, ("unpaired", "mdns"): 1, ("unhealthy", "multicast"): 1}
    assert out["ollana_discovery_packets_dropped"] == {("client", "bad_magic"): 1, ("client", "off_link"): 3}
    assert out["ollana_discovery_packets_received"] == {("client", "heartbeat"): 7}
    assert out["ollana_discovery_packets_sent"] == {("client", "probe"): 2}
    assert out["ollana_upstream_up"] == {("server",): 0.0}
    assert out["ollana_node_info"][("client", "0.1.0", "devices")] == 1


def test_the_dashboard_document() -> None:
    status = status_doc()
    servers = client_servers(status)
    assert [s["name"] for s in servers] == ["gpu-box", "10.0.0.3:11435", "old"]
    assert [s["trust"] for s in servers] == ["paired", "not paired", "paired"]
    assert servers[0]["current"] and not servers[1]["current"]
    assert servers[0]["models"] == ["llama3.2:1b"] and servers[1]["models"] is None
    assert trust_state({"trust": "open"}) == "open" and trust_state({"source": "local"}) == "this machine"
    pending = pending_entries([PendingDevice("B" * 52, "phone", "10.0.0.9", "-----", PeerKind.CLIENT, 1.0, 2.0)])
    assert pending == [{"device_id": grouped("B" * 52), "hostname": "phone", "address": "10.0.0.9",
                        "kind": "client", "last_seen": 2.0, "command": "ollana device allow BBBBBBB"}]
    doc = document(status, servers, [], pending, 99.0)
    assert doc["node"]["hostname"] == "laptop" and doc["node"]["device_id"] == grouped("A" * 52)
    assert set(doc) == {"time", "node", "servers", "recent", "pending"}
