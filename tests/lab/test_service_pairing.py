"""Pairing a server that runs as its own service user (issue 10, item 1), on the namespace LAN.

The server's `ollana serve` runs as `nobody` with a pid file in its run dir, as a service does;
the admin pairs from a root shell with `OLLANA_HOME=<its state dir> ollana device allow ID`, the
command of the issue's reproduction. The client is an ordinary `ollana serve` (root, its own
state dir) paired with the real commands.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any, Final

import pytest

from tests.lab.netns import Host, Lab
from tests.lab.ollanalan import (
    INTERVAL,
    SERVING,
    START_TIMEOUT,
    Watcher,
    device,
    device_id,
    device_json,
    start_fake,
    start_ollana,
    wait_pending,
)

pytestmark = pytest.mark.lab

NOBODY: Final = 65534
AS_NOBODY: Final = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]


def _nobody_runs_ollana() -> bool:
    if os.geteuid() != 0 or not shutil.which("setpriv"):
        return False
    probe = subprocess.run([*AS_NOBODY, sys.executable, "-c", "import ollana"], capture_output=True,
                           timeout=60, check=False)
    return probe.returncode == 0


@pytest.fixture
def service_dirs() -> Iterator[Path]:
    """State and run dirs owned by the service user, under a temp dir it can enter."""
    base = Path(tempfile.mkdtemp(prefix="ollana-svc-"))
    os.chmod(base, 0o755)
    for name, mode in (("state", 0o700), ("run", 0o755)):
        (base / name).mkdir(mode=mode)
        shutil.chown(base / name, NOBODY, NOBODY)
    yield base
    shutil.rmtree(base, ignore_errors=True)


def as_admin(host: Host, state: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`OLLANA_HOME=<the service's state dir> ollana ARGS` from a root shell on the server."""
    return host.run([sys.executable, "-m", "ollana", *args], env={"OLLANA_HOME": str(state)}, check=False)


def server_events(host: Host) -> list[dict[str, Any]]:
    found = []
    for line in host.read_log("ollana-s").splitlines():
        try:
            found.append(json.loads(line))
        except ValueError:
            continue
    return found


@pytest.mark.skipif(not _nobody_runs_ollana(), reason="needs root, setpriv and an interpreter `nobody` can run")
def test_root_pairs_a_server_running_as_its_service_user(lab: Lab, service_dirs: Path,
                                                         figure: Callable[..., None]) -> None:
    s, c = lab.add_host("s"), lab.add_host("c")
    state, run = service_dirs / "state", service_dirs / "run"
    start_fake(s)
    server = s.popen([*AS_NOBODY, sys.executable, "-m", "ollana", "serve", "--heartbeat-interval", str(INTERVAL),
                      "--trust", "devices", "--log-format", "json", "--state-dir", str(state),
                      "--pid-file", str(run / "ollana.pid")],
                     env={"OLLANA_LOG": "info"}, log_name="ollana-s")
    s.wait_for_line(server, SERVING, timeout=START_TIMEOUT)
    start_ollana(c, trust="devices")

    # `status` finds the service by its runtime record: no --pid-file.
    st = as_admin(s, state, "status")
    assert st.returncode == 0, st.stdout + st.stderr
    assert "role:     server" in st.stdout and str(run / "ollana.sock") in st.stdout

    shown = as_admin(s, state, "device", "show", "--json")
    assert shown.returncode == 0, shown.stderr
    server_id = json.loads(shown.stdout)["device_id"]
    client_id = device_id(c)
    wait_pending(c, server_id)
    deadline = time.monotonic() + 10
    while client_id not in [p["device_id"] for p in json.loads(as_admin(s, state, "device", "pending", "--json").stdout)]:
        assert time.monotonic() < deadline, "the client never showed in the service's `device pending`"
        time.sleep(0.1)

    device(c, "allow", server_id[:7])
    watch = Watcher(c, "wait-ok", "--path", "/api/version", "--timeout", "15")
    allow_started = time.time()
    allowed = as_admin(s, state, "device", "allow", client_id[:7])
    assert allowed.returncode == 0, allowed.stderr
    assert allowed.stdout.startswith("Allowed "), allowed.stdout
    out = watch.result()
    assert out["ok"], out  # before the fix: 403 for ever, the service could not read devices.json
    figure("service pairing: root's `allow` (command start) to the first answer through the client",
           out["at"] - allow_started)
    assert out["at"] - allow_started < 10.0, out["at"] - allow_started

    st_devices = (state / "devices.json").stat()
    assert (st_devices.st_uid, st_devices.st_mode & 0o777) == (NOBODY, 0o600)
    logged = server_events(s)
    assert any(e.get("event") == "control_done" and e.get("op") == "device.allow" for e in logged)
    assert not any(e.get("event") == "trust_store_unreadable" for e in logged)

    # The client's LAST SEEN for the server moves on as the server answers (issue 10, item 4).
    deadline = time.monotonic() + 10
    while True:
        listed = {d["device_id"]: d for d in device_json(c, "list")}
        seen = listed[server_id]["last_seen"]
        # Whole seconds in the file: "after the allow" is from the allow's second on.
        if seen is not None and datetime.fromisoformat(seen).timestamp() >= int(allow_started):
            break
        assert time.monotonic() < deadline, listed
        time.sleep(0.2)

    # reset-identity is refused while the service runs; `stop` finds it without flags.
    pid = json.loads((run / "ollana.pid.json").read_text())["pid"]
    reset = as_admin(s, state, "device", "reset-identity", "--yes")
    assert reset.returncode == 2 and f"(pid {pid})" in reset.stderr and "running" in reset.stderr, reset.stderr
    assert as_admin(s, state, "device", "show", "--json").stdout == shown.stdout
    stopped = as_admin(s, state, "stop")
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    server.wait(timeout=20)
    assert not (run / "ollana.pid.json").exists() and not (state / "running.json").exists()
