"""The request tally: plain numbers on the request path, Prometheus families at scrape time."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from ollana.observe.tally import LATENCY_BUCKETS, Hist, RequestTally


def samples(tally: RequestTally) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    registry = CollectorRegistry()
    registry.register(tally)
    text = generate_latest(registry).decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(text) for s in f.samples}


def test_a_bucket_bound_is_inclusive_and_the_last_bucket_takes_the_rest() -> None:
    hist = Hist()
    for v in (0.0, 0.005, 0.0051, 300.0, 300.1, 1e9):
        hist.observe(v)
    assert hist.counts[0] == 2  # 0 and 0.005 (le="0.005")
    assert hist.counts[1] == 1  # 0.0051
    assert hist.counts[len(LATENCY_BUCKETS) - 1] == 1  # 300.0 (le="300.0")
    assert hist.counts[-1] == 2  # +Inf
    assert sum(hist.counts) == 6


def test_series_add_up_per_family_labels() -> None:
    tally = RequestTally()
    a = tally.get(("client", "/api/chat", "200", "gpu-a", "m:latest"))
    b = tally.get(("client", "/api/chat", "502", "gpu-b", "m:latest"))
    assert tally.get(("client", "/api/chat", "200", "gpu-a", "m:latest")) is a
    a.requests, a.sent = 3, 300
    b.requests, b.sent = 1, 20
    for s, v in ((a, 0.002), (a, 0.2), (a, 2.0), (b, 0.02)):
        s.duration.observe(v)
    a.first_byte.observe(0.001)
    tally.routing["loaded model"] = 4

    got = samples(tally)
    route = (("role", "client"), ("route", "/api/chat"))
    hist = (("model", "m:latest"), *route)
    assert got[("ollana_requests_total", (("model", "m:latest"), *route, ("server", "gpu-a"),
                                          ("status", "200")))] == 3
    assert got[("ollana_response_body_bytes_total", route)] == 320  # summed over status and server
    assert got[("ollana_request_duration_seconds_count", hist)] == 4
    assert got[("ollana_request_duration_seconds_bucket", (("le", "0.025"), *hist))] == 2  # cumulative
    assert got[("ollana_request_duration_seconds_bucket", (("le", "+Inf"), *hist))] == 4
    assert abs(got[("ollana_request_duration_seconds_sum", hist)] - 2.222) < 1e-9
    assert got[("ollana_request_first_byte_seconds_count", hist)] == 1
    assert got[("ollana_routing_decisions_total", (("why", "loaded_model"),))] == 4


def test_an_empty_tally_scrapes() -> None:
    assert samples(RequestTally()) == {}


def test_a_model_listed_later_gets_its_own_label_and_paths_stay_bounded() -> None:
    from ollana.fleet.names import model_key
    from ollana.observe.metrics import SEEN_MAX, Metrics

    listed: set[str] = set()
    metrics = Metrics()
    obs = metrics.observer("client", listed.__contains__)
    model = model_key("new:1b")

    def chat() -> None:
        trip = obs.begin()
        trip.model = model
        obs.done("POST", "/api/chat", trip, 200, 1)

    chat()  # no catalogue lists it yet: "other"
    listed.add(model)  # pulled
    chat()
    chat()
    got = samples(metrics.tally)
    base = (("role", "client"), ("route", "/api/chat"), ("server", "none"), ("status", "200"))
    assert got[("ollana_requests_total", (("model", "other"), *base))] == 1
    assert got[("ollana_requests_total", (("model", "new:1b"), *base))] == 2

    for i in range(SEEN_MAX + 100):  # endless distinct paths: one "other" series, a bounded memo
        obs.done("GET", f"/x/{i}", obs.begin(), 404, 0)
    assert len(obs._seen) <= SEEN_MAX
    assert got != samples(metrics.tally)
    assert samples(metrics.tally)[("ollana_requests_total", (("model", "none"), ("role", "client"), ("route", "other"),
                                                            ("server", "none"), ("status", "404")))] == SEEN_MAX + 100
