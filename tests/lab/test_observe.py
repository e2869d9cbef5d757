"""Metrics and the status page's document on the namespace LAN: discovery counters, peers by
source, TLS vetting outcomes and requests as a real client and real servers count them (trust mode
devices, paired with the real commands); a server's metrics answer its paired client only."""

from __future__ import annotations

import json
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.lab.netns import Host, Lab
from tests.lab.ollanalan import build, clientops, pair, status

pytestmark = pytest.mark.lab

Samples = list[tuple[str, dict[str, str], float]]

# GET a URL inside a host; over HTTPS with the node's own state dir's device key (a paired device).
_GET = """
import sys, ssl, httpx
url, state = sys.argv[1], sys.argv[2]
kw = {}
if url.startswith("https"):
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if state:
        ctx.load_cert_chain(state + "/device.crt", state + "/device.key")
    kw["verify"] = ctx
r = httpx.get(url, timeout=10, **kw)
print(r.status_code)
print(r.text)
"""


def get(host: Host, url: str, *, as_paired: bool = False) -> tuple[int, str]:
    out = host.python(_GET, [url, str(host.dir / "state") if as_paired else ""]).stdout
    code, _, body = out.partition("\n")
    return int(code), body


def metrics(host: Host, url: str, *, as_paired: bool = False) -> Samples:
    code, body = get(host, url + "/ollana/v1/metrics", as_paired=as_paired)
    assert code == 200, body
    return [(s.name, s.labels, s.value) for f in text_string_to_metric_families(body) for s in f.samples]


def total(samples: Samples, name: str, **labels: str) -> float:
    return sum(v for n, ls, v in samples if n == name and labels.items() <= ls.items())


def test_metrics_and_dashboard_on_the_lan(lab: Lab) -> None:
    lan = build(lab, servers=2, trust="devices")
    pair(lan)
    client = lan.client.host
    assert clientops(client, "wait-peers", "--count", "2", "--healthy", "--timeout", "10")["ok"]
    generate = ("import httpx; r = httpx.post('http://127.0.0.1:11434/api/generate', timeout=30, "
                "json={'model': 'llama3.2:1b', 'prompt': 'hello', 'stream': False}); print(r.status_code)")
    assert client.python(generate).stdout.strip() == "200"

    m = metrics(client, "http://127.0.0.1:11434")
    assert total(m, "ollana_peers", state="healthy", source="multicast") == 2, m
    assert total(m, "ollana_discovery_packets_received_total", role="client", type="heartbeat") >= 2
    assert total(m, "ollana_discovery_packets_sent_total", role="client", type="probe") >= 1
    assert total(m, "ollana_tls_vetting_total", outcome="genuine") >= 2
    assert total(m, "ollana_requests_total", role="client", route="/api/generate", status="200",
                 model="llama3.2:1b") == 1

    doc: dict[str, Any] = json.loads(get(client, "http://127.0.0.1:11434/ollana/v1/dashboard")[1])
    assert len(doc["servers"]) == 2 and all(s["trust"] == "paired" and s["healthy"] for s in doc["servers"])
    assert all("llama3.2:1b" in s["models"] for s in doc["servers"])
    assert doc["recent"][0]["path"] == "/api/generate" and doc["recent"][0]["status"] == 200

    # A server's metrics: for its paired client, not for a connection without a certificate.
    server = status(client)["peers"][0]["endpoint"]
    code, body = get(client, f"https://{server}/ollana/v1/metrics")
    assert code == 403 and "paired devices" in body, body
    s = metrics(client, f"https://{server}", as_paired=True)
    assert total(s, "ollana_discovery_packets_sent_total", role="server", type="heartbeat") >= 1
    assert total(s, "ollana_trust_refusals_total", reason="no_device_certificate") >= 1
    assert total(s, "ollana_upstream_up", role="server") == 1
