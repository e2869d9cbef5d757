"""What an app is told when its stream is cut (issue 10): the official ollama client's error.

A device disabled on either side, or a server that vanishes, ends an open NDJSON stream with an
Ollama-style ``{"error": ...}`` line saying what happened, which the ollama library raises as a
``ResponseError`` with that text; never aiohttp's exception text, never a bare broken connection.
"""

from __future__ import annotations

import json
import signal
import sys
import time
from typing import Any, Final

import pytest

from tests.lab.netns import Host, Lab
from tests.lab.ollanalan import (
    app_get,
    build,
    clientops,
    device,
    device_id,
    pair,
    start_ollana,
    status,
)

pytestmark = pytest.mark.lab

# One streamed generate through the client proxy with the official client: a line per part, then
# how it ended.
STREAM: Final = """\
import json, time, ollama
client = ollama.Client(host="http://127.0.0.1:11434", timeout=30)
n = 0
try:
    for part in client.generate(model="llama3.2:1b", prompt="x", stream=True):
        n += 1
        print("LINE", n, flush=True)
    print("ENDED", json.dumps({"how": "done"}), flush=True)
except ollama.ResponseError as exc:
    print("ENDED", json.dumps({"how": "ResponseError", "error": exc.error, "n": n}), flush=True)
except Exception as exc:
    print("ENDED", json.dumps({"how": type(exc).__name__, "error": str(exc), "n": n}), flush=True)
"""


def slow_streams(server: Host) -> None:
    server.python(
        "import httpx;httpx.post('http://127.0.0.1:11434/_fake/config',"
        "json={'chunk_delay':0.05,'tokens':400},timeout=5).raise_for_status()"
    )


def cut_while_streaming(client: Host, name: str, cut: Any) -> dict[str, Any]:
    """Start a stream, wait for its first part, ``cut()``, return how the stream ended."""
    stream = client.popen([sys.executable, "-c", STREAM], log_name=name)
    client.wait_for_line(stream, r"^LINE ", timeout=10)
    cut()
    ended = client.wait_for_line(stream, r"^ENDED (.*)$", timeout=15)
    return dict(json.loads(ended.group(1)))


def server_name(client: Host) -> str:
    peers = status(client)["peers"]
    assert len(peers) == 1, peers
    return str(peers[0]["hostname"])


def test_a_stream_cut_by_disable_says_which_side_disabled_what(lab: Lab) -> None:
    lan = build(lab, servers=1, trust="devices")
    s, c = lan.servers[0].host, lan.client.host
    client_id, server_id = device_id(c), device_id(s)
    pair(lan)
    assert clientops(c, "wait-ok", "--path", "/api/tags", "--timeout", "10")["ok"]
    slow_streams(s)
    name = server_name(c)

    ended = cut_while_streaming(c, "stream-server-disables", lambda: device(s, "disable", client_id[:7]))
    assert ended["how"] == "ResponseError", ended
    assert ended["error"] == f"ollana: this device was disabled on {name}", ended
    assert ended["n"] < 400, ended

    device(s, "allow", client_id[:7])
    assert clientops(c, "wait-ok", "--path", "/api/version", "--timeout", "10")["ok"]
    ended = cut_while_streaming(c, "stream-client-disables", lambda: device(c, "disable", server_id[:7]))
    assert ended["how"] == "ResponseError", ended
    assert ended["error"] == f"ollana: {name} was disabled on this device", ended


def test_a_server_that_vanishes_mid_stream_is_named(lab: Lab) -> None:
    lan = build(lab, servers=1, trust="open")
    server, c = lan.servers[0], lan.client.host
    assert clientops(c, "wait-ok", "--path", "/api/tags", "--timeout", "10")["ok"]
    slow_streams(server.host)
    name = server_name(c)
    assert server.proc is not None
    proc = server.proc
    started = time.time()
    ended = cut_while_streaming(c, "stream-server-killed", lambda: proc.send_signal(signal.SIGKILL))
    print(f"stream ended {time.time() - started:.2f} s after the server was killed")
    assert ended["how"] == "ResponseError", ended
    assert ended["error"] == f"ollana: {name} went away mid-stream", ended
    assert "TransferEncoding" not in json.dumps(ended)


def test_the_503_names_each_server_heard_and_why_it_is_not_used(lab: Lab) -> None:
    # A server in the other trust mode is heard but never used: the 503 names it and says why.
    lan = build(lab, servers=1, trust="open", start_client=False)
    server, c = lan.servers[0], lan.client.host
    lan.client.proc = start_ollana(c, trust="devices")
    c.wait_for_line(f"ollana-{c.name}", r'"event": "server_ignored"', timeout=15)
    got = app_get(c, "/api/version")
    assert got["status"] == 503, got
    said = got["body"]["error"]
    assert said.startswith("ollana: no usable Ollama server found; known server: ")
    assert f"({server.host.ip}:11435): it runs --trust open (plain HTTP)" in said, said
    assert "--peer" in said and "waited" not in said  # discovery runs, and no server is named by address

    # Its Ollama stops: the server says goodbye; the 503 of an open client says so.
    c2 = lab.add_host("c2")
    start_ollana(c2, trust="open")
    assert clientops(c2, "wait-peers", "--count", "1", "--healthy", "--timeout", "10")["ok"]
    assert server.fake is not None
    server.fake.send_signal(signal.SIGKILL)
    c2.wait_for_line(f"ollana-{c2.name}", r'"event": "peer_removed"', timeout=15)
    got = app_get(c2, "/api/version")
    assert got["status"] == 503, got
    assert f"({server.host.ip}:11435): it said goodbye: it was stopped, or its Ollama stopped answering (" in got["body"]["error"], got
