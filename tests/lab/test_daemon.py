"""`ollana serve -d`, `ollana stop` and `ollana status` on a lab host.

serve discovers over multicast, so every ollana here runs inside a lab namespace; every pid, log
and state path is in a temp dir (never the real /run or /var/log defaults).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final, TypeVar

import pytest

from tests.lab.netns import Host, Lab, running

pytestmark = pytest.mark.lab

T = TypeVar("T")

LISTENER: Final = """\
import socket, sys, time
s = socket.create_server(("127.0.0.1", int(sys.argv[1])))
print("listening", flush=True)
time.sleep(120)
"""

# Streams one generate through the server proxy, printing each NDJSON line with its arrival time.
STREAMER: Final = """\
import http.client, json, sys, time
conn = http.client.HTTPConnection("127.0.0.1", int(sys.argv[1]), timeout=30)
body = json.dumps({"model": "llama3.2:1b", "prompt": "why is the sky blue"})
conn.request("POST", "/api/generate", body, {"Content-Type": "application/json"})
resp = conn.getresponse()
print("STATUS", resp.status, flush=True)
n = 0
while True:
    line = resp.readline()
    if not line:
        break
    n += 1
    print("LINE", time.time(), line.decode().strip(), flush=True)
print("END", time.time(), n, flush=True)
"""


@dataclass(frozen=True)
class Files:
    root: Path

    @property
    def pid(self) -> Path:
        return self.root / "run" / "ollana.pid"

    @property
    def log(self) -> Path:
        return self.root / "log" / "serve.log"

    @property
    def state(self) -> Path:
        return self.root / "state"

    def args(self) -> list[str]:
        return ["--pid-file", str(self.pid), "--log-file", str(self.log), "--state-dir", str(self.state)]

    def events(self, path: Path | None = None) -> list[dict[str, object]]:
        text = (path or self.log).read_text()
        return [json.loads(line) for line in text.splitlines() if line.strip()]


def ollana(host: Host, *args: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    return host.run([sys.executable, "-m", "ollana", *args], check=False, timeout=timeout)


def serve_d(host: Host, files: Files, *args: str) -> subprocess.CompletedProcess[str]:
    return ollana(host, "serve", "-d", *files.args(), *args)


def wait_until(what: str, probe: Callable[[], T | None], timeout: float = 10.0) -> T:
    deadline = time.monotonic() + timeout
    delay = 0.01
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(delay)
        delay = min(delay * 1.5, 0.1)




@pytest.fixture
def files(tmp_path: Path) -> Files:
    return Files(tmp_path)


def test_serve_d_detaches_reports_status_and_stops(lab: Lab, files: Files) -> None:
    a = lab.add_host("a")
    started = serve_d(a, files, "--mode", "client")
    assert started.returncode == 0, started.stderr
    pid = int(files.pid.read_text())
    assert f"pid {pid}, client on 127.0.0.1:11434" in started.stdout

    # A well-behaved daemon: its own session, cwd /, umask 027, stdin from /dev/null.
    assert os.getsid(pid) not in (os.getsid(0), pid)  # setsid, then a second fork
    assert os.readlink(f"/proc/{pid}/cwd") == "/"
    assert "Umask:\t0027" in Path(f"/proc/{pid}/status").read_text()
    assert os.readlink(f"/proc/{pid}/fd/0") == "/dev/null"
    assert "serving" in [e["event"] for e in files.events()]  # logs are JSON lines

    status = ollana(a, "status", "--pid-file", str(files.pid))
    assert status.returncode == 0, status.stdout + status.stderr
    assert f"ollana is running: pid {pid}" in status.stdout
    assert re.search(r"role:\s+client", status.stdout)
    assert re.search(r"uptime:\s+\d", status.stdout)
    assert re.search(r"peers:\s+0 ", status.stdout)

    stopped = ollana(a, "stop", "--pid-file", str(files.pid))
    assert stopped.returncode == 0, stopped.stderr
    assert f"stopped (pid {pid}" in stopped.stdout
    assert not running(pid)
    assert not files.pid.exists()

    after = ollana(a, "status", "--pid-file", str(files.pid))
    assert after.returncode == 3
    assert "not running" in after.stdout
    assert [e["event"] for e in files.events()][-1] == "daemon_exiting"


def test_second_start_is_refused_and_stale_pid_file_replaced(lab: Lab, files: Files) -> None:
    a = lab.add_host("a")
    # A stale pid file: its process is gone.
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    files.pid.parent.mkdir(parents=True)
    files.pid.write_text(f"{gone.pid}\n")
    assert ollana(a, "status", "--pid-file", str(files.pid)).returncode == 1

    first = serve_d(a, files, "--mode", "client")
    assert first.returncode == 0, first.stderr
    assert f"replaced the stale pid file {files.pid} (pid {gone.pid} no longer runs)" in first.stderr
    pid = int(files.pid.read_text())
    assert pid != gone.pid

    second = serve_d(a, files, "--mode", "client", "--listen", "127.0.0.1:11500")
    assert second.returncode == 1
    assert f"already running (pid {pid}" in second.stderr
    assert int(files.pid.read_text()) == pid
    assert running(pid)
    assert ollana(a, "stop", "--pid-file", str(files.pid)).returncode == 0


def test_startup_errors_reach_the_terminal(lab: Lab, files: Files, tmp_path: Path) -> None:
    a = lab.add_host("a")
    listener = a.popen([sys.executable, "-c", LISTENER, "11434"], log_name="listener")
    a.wait_for_line(listener, "^listening$")

    busy = serve_d(a, files, "--mode", "client")
    assert busy.returncode == 1
    assert "cannot listen on 127.0.0.1:11434: 127.0.0.1:11434 is already in use by another program" in busy.stderr
    assert not files.pid.exists()
    assert ollana(a, "status", "--pid-file", str(files.pid)).returncode == 3
    assert "startup_failed" in [e["event"] for e in files.events()]

    bad_option = serve_d(a, files, "--listen", "nonsense")
    assert bad_option.returncode == 2
    assert "--listen" in bad_option.stderr

    blocker = tmp_path / "a-file"
    blocker.write_text("")
    unusable_state = ollana(a, "serve", "-d", "--pid-file", str(files.pid), "--log-file", str(files.log),
                            "--state-dir", str(blocker / "state"), "--mode", "client", "--listen", "127.0.0.1:11501")
    assert unusable_state.returncode == 1
    assert f"cannot create the state directory {blocker / 'state'}" in unusable_state.stderr


def test_sighup_reopens_a_moved_log_file_and_reloads_levels(lab: Lab, files: Files) -> None:
    a = lab.add_host("a")
    assert serve_d(a, files, "--mode", "client").returncode == 0
    pid = int(files.pid.read_text())
    rotated = files.log.with_name("serve.log.1")
    files.log.rename(rotated)
    (files.state / "log_levels").write_text("debug\n")

    os.kill(pid, signal.SIGHUP)
    events = wait_until(
        "a new log file with the reload lines",
        lambda: files.log.exists() and [e for e in files.events() if e["event"] == "log_levels_reloaded"],
    )
    assert events[0]["levels"] == "debug"
    assert files.events()[0]["event"] == "log_reopened"
    # Debug lines now flow into the new file (one per proxied request, the status query's too).
    assert ollana(a, "status", "--pid-file", str(files.pid)).returncode == 0
    wait_until("a debug request line", lambda: [e for e in files.events() if e["event"] == "request"])
    assert "request" not in [e["event"] for e in files.events(rotated)]
    assert running(pid)
    assert ollana(a, "stop", "--pid-file", str(files.pid)).returncode == 0


def test_sigterm_lets_an_open_stream_finish_within_the_grace_period(lab: Lab, files: Files) -> None:
    a = lab.add_host("a")
    chunk_delay, tokens, grace = 0.2, 8, 6.0
    fake = a.popen([sys.executable, "-m", "tests.fakeollama", "--host", "127.0.0.1", "--port", "11434",
                    "--chunk-delay", str(chunk_delay), "--tokens", str(tokens)], log_name="fakeollama")
    a.wait_for_line(fake, r"fakeollama listening on")
    # Trust mode open: the streamer below speaks plain HTTP to the server proxy.
    started = serve_d(a, files, "--mode", "server", "--trust", "open", "--listen", "127.0.0.1:11435",
                      "--grace", str(grace))
    assert started.returncode == 0, started.stderr
    pid = int(files.pid.read_text())
    status = ollana(a, "status", "--pid-file", str(files.pid))
    assert status.returncode == 0, status.stdout + status.stderr
    assert re.search(r"role:\s+server", status.stdout)
    assert re.search(r"ollama:\s+http://127.0.0.1:11434 \(up, version ", status.stdout), status.stdout

    stream = a.popen([sys.executable, "-c", STREAMER, "11435"], log_name="stream")
    a.wait_for_line(stream, r"^LINE ", timeout=10)
    sigterm_at = time.time()
    stopped = ollana(a, "stop", "--pid-file", str(files.pid))
    stop_took = time.time() - sigterm_at
    assert stopped.returncode == 0, stopped.stderr

    end = a.wait_for_line(stream, r"^END (\S+) (\d+)$", timeout=10)
    lines = re.findall(r"^LINE (\S+) (.*)$", a.read_log("stream"), re.MULTILINE)
    assert "STATUS 200" in a.read_log("stream")
    assert int(end.group(2)) == tokens + 1, a.read_log("stream")
    assert json.loads(lines[-1][1])["done"] is True
    # The stream was still open when SIGTERM came, and finished during the drain.
    assert float(lines[-1][0]) > sigterm_at + chunk_delay
    assert stop_took < grace
    assert stop_took >= float(lines[-1][0]) - sigterm_at - 0.1
    assert not running(pid)
    events = [e["event"] for e in files.events()]
    # Goodbye first (clients stop choosing it), then the drain, then exit.
    assert events.index("goodbye_sent") < events.index("stopped") < events.index("daemon_exiting")
