"""Connections that never finish must not deny service (issue 9, item 7), on the namespace LAN:
1,000 idle plus 200 slowloris connections against each listener while the official ollama
client keeps asking through the proxy. Figure: p50 under the flood <= 5x the unloaded p50."""

from __future__ import annotations

import json
import statistics
import sys
from collections.abc import Callable

import pytest

from tests.lab.netns import Host, Lab
from tests.lab.ollanalan import build, clientops, pair

pytestmark = pytest.mark.lab

# The bound: 5x the unloaded p50 the issue sets, plus a floor for a shared 2-core CI box whose
# cores the attacker (a Python process holding 1,200 sockets) shares with both ollanas.
FACTOR = 5.0
FLOOR_MS = 50.0


def _measure(host: Host, model: str) -> tuple[float, list[float]]:
    res = host.run([sys.executable, "-m", "tests.lab.flood", "measure", "--count", "40", "--model", model],
                   timeout=180)
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["failed"] == [], out["failed"]
    return statistics.median(out["ms"]), out["ms"]


def _last_counts(host: Host, log_name: str) -> dict[str, float]:
    lines = [ln for ln in host.read_log(log_name).splitlines() if ln.startswith("{")]
    assert lines, host.read_log(log_name)[-2000:]
    return json.loads(lines[-1])  # type: ignore[no-any-return]


@pytest.mark.parametrize("listener", ["server", "client"])
def test_idle_and_slowloris_floods_do_not_deny_service(
    lab: Lab, figure: Callable[..., None], listener: str
) -> None:
    # Trust mode devices: the server proxy speaks TLS (the "a handshake is enough").
    lan = build(lab, servers=1, trust="devices")
    pair(lan)
    assert clientops(lan.client.host, "wait-peers", "--count", "1", "--healthy", "--timeout", "15")["ok"]
    model = "llama3.2:1b"  # in the fake Ollama's default catalogue
    server = lan.servers[0].host
    unloaded, _ = _measure(lan.client.host, model)

    if listener == "server":  # from another machine of the LAN, at the server proxy
        attacker = lab.add_host("a")
        argv = ["attack", server.ip, "11435", "--tls"]
    else:  # on the client's own machine, at its loopback listener
        attacker = lan.client.host
        argv = ["attack", "127.0.0.1", "11434"]
    log_name = f"flood-{listener}"
    proc = attacker.popen([sys.executable, "-m", "tests.lab.flood", *argv], log_name=log_name)
    try:
        attacker.wait_for_line(proc, r"^READY$", timeout=120)
        # Measure once the listener has freed connections at their deadline (10 s) and the
        # attacker reconnects: the steady state of the flood, not just its first seconds.
        attacker.wait_for_line(proc, r'"closed": ([4-9]\d\d|\d{4,})', timeout=60)
        loaded, samples = _measure(lan.client.host, model)
        counts = _last_counts(attacker, log_name)
    finally:
        attacker.terminate(proc)
    print(f"[{listener}] p50 unloaded {unloaded:.2f} ms, under the flood {loaded:.2f} ms "
          f"(max {max(samples):.1f} ms); attacker: {counts}")
    figure(f"[{listener} listener] p50 of `show` unloaded", unloaded / 1000)
    figure(f"[{listener} listener] p50 of `show` under 1,000 idle + 200 slowloris", loaded / 1000)
    figure(f"[{listener} listener] p50 ratio flood / unloaded", loaded / unloaded, "x")
    assert loaded <= FACTOR * unloaded + FLOOR_MS, (unloaded, loaded)
    # The flood was real: it held connections, and the server proxy refused one source's excess.
    assert counts["open"] > 0 and counts["closed"] >= 400
    if listener == "server":  # one source: capped at 512 (the default per-source cap)
        assert counts["refused"] > 0 and counts["open"] <= 512
    # Both ollanas lived through it.
    assert lan.servers[0].proc is not None and lan.servers[0].proc.poll() is None
    assert lan.client.proc is not None and lan.client.proc.poll() is None
