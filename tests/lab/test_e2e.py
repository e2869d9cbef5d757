"""`ollana serve` end to end on the namespace LAN: two servers with fake Ollamas, one client."""

from __future__ import annotations

import json
import signal
import sys
import time
from collections.abc import Callable
from datetime import datetime

import pytest

from tests.lab.netns import Lab
from tests.lab.ollanalan import (
    INTERVAL,
    START_TIMEOUT,
    Lan,
    Watcher,
    build,
    clientops,
    event_time,
    ollana_argv,
    pair,
    start_fake,
    start_ollana,
    status,
)

pytestmark = pytest.mark.lab


def test_official_client_full_api_through_the_lan(lab: Lab) -> None:
    # In the default trust mode, devices: mutual TLS between paired nodes.
    lan = build(lab, servers=2, trust="devices")
    pair(lan)
    assert clientops(lan.client.host, "wait-peers", "--count", "2", "--healthy", "--timeout", "10")["ok"]
    out = clientops(lan.client.host, "suite", timeout=120)
    assert out["list"], out
    assert out["generate_chunks"] > 1 and out["generate_text"]
    assert out["chat_role"] == "assistant" and out["chat_stream_chunks"] > 1
    assert out["show_has_modelfile"] and out["embed_dims"] > 0
    assert out["pull_statuses"] == ["success"]
    assert out["blob_digest_ok"] and out["create_status"] == "success"
    assert out["copy"] == "success" and out["delete"] == "success"
    assert "mine:latest" in out["list_after"] and "mine-copy:latest" not in out["list_after"]
    assert out["missing_model_status"] == 404
    assert out["sse_type"].startswith("text/event-stream") and out["sse_done"] == "[DONE]"
    assert out["sse_events"] > 2
    # The blob upload and the create that used it landed on the same server.
    st = status(lan.client.host)
    assert st["role"] == "client" and len(st["peers"]) == 2 and st["trust"] == "devices"
    assert all(p["source"] == "multicast" and p["scheme"] == "https" and p["paired"] for p in st["peers"])


def _paired_then_stopped(lab: Lab, *, stop_client: bool) -> Lan:
    """Trust mode devices: pair a client with one server, then stop one of them (pairings stay)."""
    lan = build(lab, servers=1, trust="devices")
    pair(lan)
    assert clientops(lan.client.host, "wait-peers", "--count", "1", "--healthy", "--timeout", "10")["ok"]
    node = lan.client if stop_client else lan.servers[0]
    assert node.proc is not None
    node.proc.send_signal(signal.SIGTERM)
    node.proc.wait(15)
    if not stop_client:
        assert clientops(lan.client.host, "wait-peers", "--count", "0", "--timeout", "5")["ok"]
    return lan


@pytest.mark.parametrize("trust", ["open", "devices"])
def test_client_started_after_servers_answers_within_2s(lab: Lab, figure: Callable[..., None], trust: str) -> None:
    if trust == "open":
        lan = build(lab, servers=1, start_client=False)
    else:
        lan = _paired_then_stopped(lab, stop_client=True)
    env_argv = ["env", f"OLLANA_HOME={lan.client.host.dir / 'state'}", *ollana_argv(trust=trust)]
    out = clientops(lan.client.host, "start-and-wait", "--timeout", "10", "--", *env_argv)
    assert out["ok"], out
    figure(f"[{trust}] client start (python start-up included) to first proxied answer (issue: 2 s)", out["elapsed"])
    # A generous bound (issue 10): most of it is Python's start-up, seconds on a loaded 2-core box.
    assert out["elapsed"] < 6.0, out


@pytest.mark.parametrize("trust", ["open", "devices"])
def test_server_started_after_client_is_usable_within_1s(lab: Lab, figure: Callable[..., None], trust: str) -> None:
    if trust == "open":
        lan = build(lab, servers=0)
        host = lab.add_host("s1")
        start_fake(host)
    else:
        lan = _paired_then_stopped(lab, stop_client=False)
        host = lan.servers[0].host
    watch = Watcher(lan.client.host, "wait-ok", "--timeout", "15")
    proc = start_ollana(host, wait=False, trust=trust)
    line = host.wait_for_line(proc, r'^.*"event": "serving".*$', timeout=START_TIMEOUT).group(0)
    ready_at = datetime.fromisoformat(json.loads(line)["timestamp"]).timestamp()
    out = watch.result()
    assert out["ok"], out
    figure(f"[{trust}] server ready to usable by a running client (issue: 1 s)", out["at"] - ready_at)
    assert out["at"] - ready_at < 3.0, out["at"] - ready_at


def test_clean_stop_leaves_peers_fast_and_sigkill_fails_over(lab: Lab, figure: Callable[..., None]) -> None:
    lan = build(lab, servers=2)
    c = lan.client.host
    assert clientops(c, "wait-peers", "--count", "2", "--healthy")["ok"]
    # /api/tags is answered by the client from the catalogues; /api/version goes to the home server.
    assert clientops(c, "wait-ok", "--path", "/api/version")["ok"]
    current = status(c)["current_peer"]
    by_id = {status(n.host, 11435, n.host.ip)["node_id"]: n for n in lan.servers}
    victim = by_id[current]
    other = next(n for n in lan.servers if n is not victim)

    # SIGKILL: no goodbye. Requests move to the other server at once (connection refused).
    assert victim.proc is not None
    watch = Watcher(c, "poll", "--path", "/api/tags", "--timeout", "1.5")
    killed_at = time.time()
    victim.proc.send_signal(signal.SIGKILL)
    after = [r for r in watch.result()["requests"] if r[0] >= killed_at]
    assert after, "no request was sent after the kill"
    first_ok = next(r for r in after if r[2] == 200)
    figure("SIGKILL of the current server to a successful request on another", first_ok[1] - killed_at)
    figure("requests failed after the SIGKILL (of all sent in 1.5 s)", sum(r[2] != 200 for r in after), "")
    assert first_ok[1] - killed_at < 1.0, after[:5]
    assert all(r[2] == 200 for r in after), [r for r in after if r[2] != 200][:5]
    assert status(c)["current_peer"] != current
    waited = event_time(c, "peer_expired", after=killed_at) - killed_at
    figure(f"SIGKILLed server expired after (interval {INTERVAL} s)", waited)
    # Expired 3 intervals after its last heartbeat, which came up to one interval before the kill:
    # never sooner than 2 intervals; later only by the expiry loop and a busy box (generous).
    assert 2 * INTERVAL - 0.1 <= waited <= 3 * INTERVAL + 2.0, waited

    # Clean stop: the goodbye removes the peer at once.
    assert other.proc is not None
    stopped_at = time.time()
    other.proc.send_signal(signal.SIGTERM)
    removed = event_time(c, "peer_removed", after=stopped_at) - stopped_at
    figure("SIGTERM of a server to its removal from the client's peers", removed)
    # The event is peer_removed (the goodbye), not peer_expired: the bound only guards a hang.
    assert removed < 3.0, removed

    # No server at all: a JSON 503 after the short grace, never a hang.
    res = c.python(
        "import httpx,time,json;t=time.time();r=httpx.get('http://127.0.0.1:11434/api/tags',timeout=30);"
        "print(json.dumps({'s':r.status_code,'b':r.json(),'t':time.time()-t}))"
    )
    got = json.loads(res.stdout)
    assert got["s"] == 503 and "no Ollama server found" in got["b"]["error"], got
    # ... and what became of the two it knew (issue 10: per known server, why).
    said = got["b"]["error"]
    assert f"({victim.host.ip}:11435): its heartbeats stopped" in said, said
    assert f"({other.host.ip}:11435): it said goodbye" in said, said
    figure("no server: time to the 503 answer (the grace: 3 s)", got["t"])
    assert 2.9 <= got["t"] < 10.0, got  # the grace, then an answer: never a hang


def test_server_whose_ollama_stops_says_goodbye_and_returns(lab: Lab) -> None:
    lan = build(lab, servers=1)
    c = lan.client.host
    s = lan.servers[0]
    assert clientops(c, "wait-peers", "--count", "1", "--healthy")["ok"]
    assert s.fake is not None
    s.fake.send_signal(signal.SIGKILL)
    s.fake.wait()
    assert clientops(c, "wait-peers", "--count", "0", "--timeout", str(3 * INTERVAL))["ok"]
    # Asked directly, the server proxy answers 503 JSON naming its upstream.
    res = c.python(
        f"import httpx;r=httpx.post('http://{s.host.ip}:11435/api/generate',json={{}},timeout=10);"
        "print(r.status_code, r.headers.get('content-type'), r.text)"
    )
    assert res.stdout.startswith("503 application/json"), res.stdout
    assert "127.0.0.1:11434" in res.stdout
    s.fake = start_fake(s.host)
    back = clientops(c, "wait-peers", "--count", "1", "--healthy", "--timeout", str(INTERVAL * 2 + 2))
    assert back["ok"], back
    assert clientops(c, "wait-ok", "--path", "/api/tags")["ok"]


def test_garbage_datagrams_are_dropped_and_logged(lab: Lab) -> None:
    lan = build(lab, servers=1)
    c = lan.client.host
    assert clientops(c, "wait-peers", "--count", "1", "--healthy")["ok"]
    attacker = lab.add_host("x")
    attacker.python(
        "import socket,os,struct\n"
        "s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n"
        "s.setsockopt(socket.IPPROTO_IP,socket.IP_MULTICAST_TTL,1)\n"
        f"s.setsockopt(socket.IPPROTO_IP,socket.IP_MULTICAST_IF,socket.inet_aton('{attacker.ip}'))\n"
        "good_header=b'OLNA'+bytes([1,1,0,0])\n"
        "msgs=[b'',b'x',os.urandom(1500)[:1400],b'OLNA',good_header,good_header+b'\\x01\\xff\\xff',"
        "b'OLNA'+bytes([9,1,0,0]),b'XXXX'+bytes(40)]+[os.urandom(n) for n in range(1,400,7)]\n"
        "for m in msgs: s.sendto(m,('239.255.11.36',11436))\n"
        f"for m in msgs: s.sendto(m,('{lan.servers[0].host.ip}',11436))\n"
    )
    # Both nodes are alive and still working.
    assert clientops(c, "wait-ok", "--path", "/api/tags")["ok"]
    assert lan.client.proc is not None and lan.client.proc.poll() is None
    assert lan.servers[0].proc is not None and lan.servers[0].proc.poll() is None
    deadline = time.monotonic() + 5
    while "packet_dropped" not in c.read_log("ollana-c") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "packet_dropped" in c.read_log("ollana-c")


def test_discovery_survives_30_percent_packet_loss(lab: Lab) -> None:
    lan = build(lab, servers=1, start_client=False)
    c = lan.client.host
    c.drop_udp(11436, 0.3)
    lan.client.proc = start_ollana(c)
    assert clientops(c, "wait-ok", "--path", "/api/tags", "--timeout", "5")["ok"]
    # With a third of heartbeats lost, the peer must not flap out (3 in a row are needed).
    peers = clientops(c, "wait-peers", "--count", "1", "--healthy")
    assert peers["ok"]


def test_port_busy_client_exits_with_a_clear_message(lab: Lab) -> None:
    host = lab.add_host("busy")
    blocker = host.popen(
        [sys.executable, "-c",
         "import socket,time;s=socket.socket();s.bind(('127.0.0.1',11434));s.listen();print('bound',flush=True);time.sleep(60)"],
        log_name="blocker",
    )
    host.wait_for_line(blocker, "bound")
    res = host.run(ollana_argv("--mode", "client"), check=False, timeout=20,
                   env={"OLLANA_HOME": str(host.dir / "state")})
    assert res.returncode == 1
    said = [line for line in res.stderr.splitlines() if line.startswith("ollana: error:")]
    assert len(said) == 1 and "127.0.0.1:11434 is already in use by another program" in said[0]
    assert "Ollama" not in said[0]  # what holds the port was asked, and it is no Ollama
