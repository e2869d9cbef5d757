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
from tests.lab.ollanalan import build, clientops, device, device_id, pair, status

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
