"""The fleet on the namespace LAN: three servers with different model sets, one client that finds
them by multicast, and the official ``ollama`` client on the client host (`list`, `ps`,
`generate` of each box's model, blob + create), in trust mode open and, paired, in devices.

Figures for the issue's numbers are reported in the summary: merged ``/api/tags`` p50 through
the client (issue: <= 5 ms) and how soon a model pulled on one server shows in the client's list
(issue: within 2 heartbeat intervals). The asserted bounds are several times those: a busy CI box
must not fail them.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Callable
from typing import Any, Final

import pytest

from tests.lab.netns import Host, Lab
from tests.lab.ollanalan import INTERVAL, Lan, Watcher, build, clientops, device_id, pair, status

pytestmark = pytest.mark.lab

SERVER_HEADER: Final = "X-Ollana-Server"
# Box i's fake Ollama: a model only it has, one shared with another box, one they all have.
FAKES: Final = (
    ("alpha:1b", "shared:7b", "common:latest"),
    ("beta:1b", "shared:7b", "common:latest"),
    ("gamma:1b", "common:latest"),
)
LOADED: Final = (("alpha:1b",), ("shared:7b",), ())
UNIQUE: Final = ("alpha:1b", "beta:1b", "gamma:1b")
ALL: Final = sorted({m for models in FAKES for m in models})


def fake_args() -> list[list[str]]:
    return [
        [*(a for m in models for a in ("--model", m)), *(a for m in loaded for a in ("--loaded", m))]
        for models, loaded in zip(FAKES, LOADED, strict=True)
    ]


def fleet(lab: Lab, trust: str = "open") -> Lan:
    """Three servers (s1, s2, s3: FAKES) and a client; returns once the client lists every model."""
    lan = build(lab, servers=3, trust=trust, fake_args=fake_args())
    if trust == "devices":
        pair(lan)
    c = lan.client.host
    assert clientops(c, "wait-peers", "--count", "3", "--healthy", "--timeout", "15")["ok"]
    ready = clientops(c, "wait-models", *model_args(ALL), "--timeout", "15")
    assert ready["ok"], ready
    return lan


def model_args(models: list[str] | tuple[str, ...]) -> list[str]:
    return [a for m in models for a in ("--model", m)]


def short_id(label: str | None) -> str:
    """The ID in an X-Ollana-Server mark, "host (ID)"."""
    assert label and label.endswith(")"), label
    return label.rsplit("(", 1)[1][:-1]


def app_paths(server: Host) -> list[str]:
    """Paths that reached the server's fake Ollama from apps (not the server's own requests:
    health checks and catalogue refreshes say User-Agent: ollana/...)."""
    res = server.python(
        "import httpx;print(httpx.get('http://127.0.0.1:11434/_fake/requests',timeout=5).text)"
    )
    return [
        r["path"] for r in json.loads(res.stdout)
        if not any(k.lower() == "user-agent" and v.startswith("ollana/") for k, v in r["headers"])
    ]


def pinned(client: Host, pin: str) -> dict[str, Any]:
    """GET /api/version through the client, pinned with X-Ollana-Server."""
    res = client.python(
        "import httpx,json,sys;"
        f"r=httpx.get('http://127.0.0.1:11434/api/version',headers={{'{SERVER_HEADER}':sys.argv[1]}},timeout=15);"
        f"print(json.dumps({{'status':r.status_code,'server':r.headers.get('{SERVER_HEADER}'),'body':r.text}}))",
        args=[pin],
    )
    return dict(json.loads(res.stdout))


def check_fleet_suite(lan: Lan, ids: list[str]) -> None:
    """The official client on the client host sees and uses every box; ``ids``: each server's
    short ID as its answers show it, in server order."""
    c = lan.client.host
    out = clientops(c, "fleet", *model_args(UNIQUE), timeout=120)
    assert out["list"] == ALL, out["list"]
    assert out["ps"] == ["alpha:1b", "shared:7b"], out["ps"]
    for i, model in enumerate(UNIQUE):
        got = out["generate"][model]
        assert got["chunks"] > 1 and got["text"] and got["status"] == 200, got
        assert short_id(got["server"]) == ids[i], (model, got["server"], ids)

    # Blob and create: HEAD (404), upload, HEAD (200), create, then use: all on one box.
    status_before, blob_server = out["blob_head"]
    assert status_before == 404 and out["blob_digest_ok"], out
    assert out["blob_head_after"] == [200, blob_server], out
    assert out["create_status"] == "success", out
    assert "fleet-made:latest" in out["list_after"], out["list_after"]
    assert out["made_generate"] == [200, blob_server], out
    home = ids.index(short_id(blob_server))
    for i, server in enumerate(lan.servers):
        paths = app_paths(server.host)
        blobs = [p for p in paths if p.startswith("/api/blobs/")]
        # Its own model twice (official client, then httpx for the header), the created one once.
        assert paths.count("/api/generate") == (3 if i == home else 2), (server.host.name, paths)
        if i == home:
            assert len(blobs) >= 3 and paths.count("/api/create") == 1, paths
        else:
            assert not blobs and "/api/create" not in paths, (server.host.name, paths)

    # Pinned by the ID its answers show (a prefix of the node or device ID), each box answers.
    for i in range(len(lan.servers)):
        got = pinned(c, ids[i])
        assert got["status"] == 200 and short_id(got["server"]) == ids[i], got
    unknown = pinned(c, "no-such-box")
    assert unknown["status"] == 404, unknown
    assert all(f"{s.host.ip}:11435" in json.loads(unknown["body"])["error"] for s in lan.servers), unknown


def test_official_client_sees_and_uses_the_fleet(lab: Lab) -> None:
    lan = fleet(lab)
    ids = [status(s.host, 11435, s.host.ip)["node_id"][:7] for s in lan.servers]
    check_fleet_suite(lan, ids)
    st = status(lan.client.host)
    assert len(st["peers"]) == 3 and all(p["source"] == "multicast" for p in st["peers"])


def test_paired_fleet_in_trust_mode_devices(lab: Lab) -> None:
    lan = fleet(lab, trust="devices")
    check_fleet_suite(lan, [device_id(s.host)[:7] for s in lan.servers])
    st = status(lan.client.host)
    assert st["trust"] == "devices"
    assert all(p["paired"] and p["scheme"] == "https" and p["catalog"] is not None for p in st["peers"])


def test_merged_tags_p50_through_the_client(lab: Lab, figure: Callable[..., None]) -> None:
    lan = fleet(lab)
    c = lan.client.host
    tags = clientops(c, "timings", "--path", "/api/tags", "--count", "300")["ms"]
    p50, p90 = statistics.median(tags), statistics.quantiles(tags, n=10)[-1]
    figure("fleet LAN: merged /api/tags through the client, p50 (issue: <= 5 ms)", p50, "ms")
    figure("fleet LAN: merged /api/tags through the client, p90", p90, "ms")
    # For scale: a request both proxies forward to a server's Ollama and back.
    version = clientops(c, "timings", "--path", "/api/version", "--count", "100")["ms"]
    figure("fleet LAN: /api/version through client and server (2 hops), p50", statistics.median(version), "ms")
    assert p50 <= 50, sorted(tags)[:: len(tags) // 10]
    # Answered by the client itself: no server's Ollama saw any of those lists.
    assert not any("/api/tags" in app_paths(s.host) for s in lan.servers)


def test_a_pulled_model_shows_in_the_clients_list_within_2_heartbeat_intervals(
    lab: Lab, figure: Callable[..., None],
) -> None:
    lan = fleet(lab)
    c, s3 = lan.client.host, lan.servers[2].host
    pull = (
        "import httpx,time,sys;"
        "r=httpx.post(sys.argv[1]+'/api/pull',json={'model':sys.argv[2],'stream':False},timeout=30);"
        "r.raise_for_status();print(time.time())"
    )

    # On the box itself, straight to its Ollama (`ollama pull` on the GPU box): ollana sees no
    # request; its server notices at its next catalogue refresh and announces the change.
    watch = Watcher(c, "wait-models", "--model", "direct:1b", "--timeout", "20")
    pulled_at = float(s3.python(pull, args=["http://127.0.0.1:11434", "direct:1b"]).stdout)
    seen = watch.result()
    assert seen["ok"], seen
    took = seen["at"] - pulled_at
    figure(f"fleet LAN: pulled on a box directly -> in the client's list (interval {INTERVAL} s; "
           "issue: <= 2 intervals)", took)
    assert took <= 10 * INTERVAL, took

    # Through the client (`ollama pull` on the laptop): the box that pulled is asked at once.
    watch = Watcher(c, "wait-models", "--model", "viaclient:1b", "--timeout", "20")
    pulled_at = float(c.python(pull, args=["http://127.0.0.1:11434", "viaclient:1b"]).stdout)
    seen = watch.result()
    assert seen["ok"], seen
    took = seen["at"] - pulled_at
    figure(f"fleet LAN: pulled through the client -> in its list (interval {INTERVAL} s)", took)
    assert took <= 10 * INTERVAL, took
    pulls = {s.host.name: app_paths(s.host).count("/api/pull") for s in lan.servers}
    assert sum(pulls.values()) == 2 and pulls["s3"] >= 1, pulls  # direct on s3; one via the client
