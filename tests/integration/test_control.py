"""CLI commands against a running node: the runtime record, the control socket, status and stop.

The nodes run as subprocesses on 127.0.0.1 with discovery off (no multicast leaves the test). The
service-user test needs root: the node runs as `nobody` (setpriv), the admin's command as root,
as in issue 10's reproduction.
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
from pathlib import Path
from typing import Final, TypeVar

import pytest

from ollana.config import Trust
from ollana.service.record import RECORD_FILE
from ollana.trust import identity
from ollana.trust.document import PeerKind
from ollana.trust.store import TrustStore
from tests.integration.nodes import client_for, server_for

T = TypeVar("T")
NOBODY: Final = 65534
STRANGER: Final = 65533  # a uid with no account and no group of the node
ASK_AS_MEMBER: Final = ("import sys; from ollana.service import ctlsock\n"
                        "print(len(ctlsock.ask(sys.argv[1], 'device.list', {})))\n")
ASK_AS_STRANGER: Final = ("import sys; from ollana.service import ctlsock\n"
                          "try:\n    ctlsock.ask(sys.argv[1], 'device.list', {})\n"
                          "except PermissionError: print('EACCES')\n"
                          "except ctlsock.ControlDenied as e: print('denied', e)\n")


def _nobody_runs_ollana() -> bool:
    """Root, setpriv, and an interpreter that an unprivileged user can run (not one under /root)."""
    if os.geteuid() != 0 or not shutil.which("setpriv"):
        return False
    probe = subprocess.run([*as_user(NOBODY, NOBODY), sys.executable, "-c", "import ollana"],
                           capture_output=True, timeout=60, check=False)
    return probe.returncode == 0


def as_user(uid: int, gid: int, groups: str = "") -> list[str]:
    return ["setpriv", f"--reuid={uid}", f"--regid={gid}", f"--groups={groups}" if groups else "--clear-groups"]


AS_SERVICE_USER = pytest.mark.skipif(not _nobody_runs_ollana(),
                                     reason="needs root, setpriv and an interpreter `nobody` can run")


def wait_for(what: str, probe: Callable[[], T | None], timeout: float = 20.0) -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def ollana(*args: str, env: dict[str, str] | None = None, prefix: list[str] | None = None,
           timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if k not in ("OLLANA_HOME", "XDG_RUNTIME_DIR")}
    full_env.update(env or {})
    return subprocess.run([*(prefix or []), sys.executable, "-m", "ollana", *args], capture_output=True,
                          text=True, env=full_env, timeout=timeout, check=False)


def serve(state: Path, *extra: str, prefix: list[str] | None = None) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("OLLANA_HOME", "XDG_RUNTIME_DIR")}
    env["OLLANA_LOG"] = "info"
    # Standard error to a file, not a pipe nobody reads while the node runs (it could fill up).
    with open(state.parent / f"{state.name}.stderr", "w") as err:
        return subprocess.Popen(
            [*(prefix or []), sys.executable, "-m", "ollana", "serve", "--mode", "client", "--no-discovery",
             "--listen", "127.0.0.1:0", "--state-dir", str(state), "--trust", "devices", "--log-format", "json",
             *extra],
            stdout=subprocess.DEVNULL, stderr=err, text=True, env=env,
        )


def stopped(proc: subprocess.Popen[str], state: Path) -> str:
    """Stop the node if it still runs; its standard error."""
    if proc.poll() is None:
        proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    return (state.parent / f"{state.name}.stderr").read_text()


@pytest.fixture
def base() -> Iterator[Path]:
    # Not pytest's tmp_path: its parents are 0700, closed to the `nobody` the node runs as.
    path = Path(tempfile.mkdtemp(prefix="ollana-ctl-"))
    os.chmod(path, 0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def events(text: str) -> list[dict[str, object]]:
    found = []
    for line in text.splitlines():
        try:
            found.append(json.loads(line))
        except ValueError:
            continue
    return found


@AS_SERVICE_USER
def test_root_allows_a_device_on_a_service_running_as_its_own_user(base: Path) -> None:
    """Issue 10 item 1: `OLLANA_HOME=<its state dir> ollana device allow ID` as root, against a node
    running as its service user, must leave devices.json the service's and the device allowed."""
    state, run, logs = base / "state", base / "run", base / "log"
    laptop = identity.load_or_create(base / "laptop")
    TrustStore.load(state).record_pending(laptop.device_id, laptop.cert_pem, "laptop", "10.0.0.9",
                                          PeerKind.CLIENT, time.time())
    for d in (state, run, logs):
        d.mkdir(exist_ok=True)
        shutil.chown(d, NOBODY, NOBODY)
        for f in d.iterdir():
            shutil.chown(f, NOBODY, NOBODY)
    os.chmod(state, 0o700)
    pid_file = run / "ollana.pid"
    node = serve(state, "--pid-file", str(pid_file), "--log-file", str(logs / "serve.log"),
                 prefix=as_user(NOBODY, NOBODY))
    try:
        wait_for("the node's runtime record", lambda: (run / "ollana.pid.json").exists() or node.poll() is not None)
        assert node.poll() is None, stopped(node, state)
        sock = run / "ollana.sock"
        st = sock.stat()
        assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (NOBODY, NOBODY, 0o660)

        done = ollana("device", "allow", laptop.short, env={"OLLANA_HOME": str(state)})
        assert done.returncode == 0, done.stderr
        assert "Allowed laptop" in done.stdout
        devices = state / "devices.json"
        st = devices.stat()
        assert (st.st_uid, st.st_mode & 0o777) == (NOBODY, 0o600)
        assert TrustStore.load(state).is_allowed(laptop.device_id)
        log_file = logs / "serve.log"
        wait_for("the node to apply the change", lambda: any(
            e.get("event") == "trust_changed" for e in events(log_file.read_text())))
        logged = events(log_file.read_text())
        assert any(e.get("event") == "control_done" and e.get("op") == "device.allow" for e in logged)
        assert not any(e.get("event") == "trust_store_unreadable" for e in logged)

        listed = ollana("device", "list", "--json", env={"OLLANA_HOME": str(state)})
        assert listed.returncode == 0, listed.stderr
        assert [d["device_id"] for d in json.loads(listed.stdout)] == [laptop.device_id]

        # A member of the node's group may ask; a stranger cannot open the socket (mode 0660),
        # and with the file opened to all, the node itself refuses it (SO_PEERCRED).
        member = subprocess.run([*as_user(STRANGER, STRANGER, str(NOBODY)), sys.executable, "-c",
                                 ASK_AS_MEMBER, str(sock)], capture_output=True, text=True, timeout=30, check=False)
        assert member.returncode == 0 and member.stdout.strip() == "1", member.stderr
        stranger = ["-c", ASK_AS_STRANGER, str(sock)]
        out = subprocess.run([*as_user(STRANGER, STRANGER), sys.executable, *stranger],
                             capture_output=True, text=True, timeout=30, check=False)
        assert out.stdout.strip() == "EACCES", out
        os.chmod(sock, 0o666)
        out = subprocess.run([*as_user(STRANGER, STRANGER), sys.executable, *stranger],
                             capture_output=True, text=True, timeout=30, check=False)
        assert out.stdout.startswith("denied not allowed"), out
    finally:
        err = stopped(node, state)
    assert node.returncode == 0, err
    assert not (run / "ollana.pid.json").exists() and not (state / RECORD_FILE).exists()
    assert not (run / "ollana.sock").exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root")
def test_no_node_running_root_keeps_the_state_dirs_owner(base: Path) -> None:
    state = base / "state"
    state.mkdir(mode=0o700)
    shutil.chown(state, NOBODY, NOBODY)
    done = ollana("peer", "add", "192.0.2.7", env={"OLLANA_HOME": str(state)})
    assert done.returncode == 0, done.stderr
    for name in ("peers.json", "peers.json.lock"):
        st = (state / name).stat()
        assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (NOBODY, NOBODY, 0o600), name


def test_status_stop_and_reset_identity_find_a_foreground_node(base: Path) -> None:
    """Issue 10 item 3 and issue 9 item 10: a node started in the foreground, found without flags
    (OLLANA_HOME as the README sets it)."""
    state = base / "state"
    node = serve(state)
    env = {"OLLANA_HOME": str(state)}
    try:
        wait_for("the node's runtime record", lambda: (state / RECORD_FILE).exists() or node.poll() is not None)
        assert node.poll() is None, stopped(node, state)
        before = identity.load(state).device_id

        st = ollana("status", env=env)
        assert st.returncode == 0, st.stderr
        assert f"pid {node.pid}, in the foreground" in st.stdout
        assert "role:     client" in st.stdout and "uptime:" in st.stdout

        reset = ollana("device", "reset-identity", "--yes", env=env)
        assert reset.returncode == 2
        assert f"pid {node.pid}" in reset.stderr and "running" in reset.stderr
        assert identity.load(state).device_id == before

        peers = ollana("peers", env=env)
        assert peers.returncode == 0, peers.stderr
        assert "no servers known yet" in peers.stdout

        saved = ollana("peer", "add", "192.0.2.7", env=env)  # asked of the node (in its log below)
        assert saved.returncode == 0 and "Saved 192.0.2.7:11435" in saved.stdout, saved.stderr

        down = ollana("stop", env=env)
        assert down.returncode == 0, down.stderr
        assert f"ollana stopped (pid {node.pid}" in down.stdout
        assert node.wait(timeout=5) == 0
    finally:
        err = stopped(node, state)
    assert any(e.get("event") == "control_done" and e.get("op") == "peer.add" for e in events(err)), err
    assert not (state / RECORD_FILE).exists()
    after = ollana("status", env=env)
    assert after.returncode == 3, after.stdout


async def test_a_client_records_when_each_paired_server_last_answered(tmp_path: Path) -> None:
    """Issue 10 item 4: LAST SEEN of a paired server in the client's `ollana device list`."""
    from tests.fakeollama import FakeOllama
    from tests.integration.test_devices import allow, until

    fake = FakeOllama()
    sdir, cdir = tmp_path / "server", tmp_path / "client"
    async with fake.serve("127.0.0.1", 0) as ollama_url, server_for(ollama_url, trust=Trust.DEVICES, state_dir=sdir) as srv:
        server_id = identity.load(sdir).device_id
        async with client_for(srv, trust=Trust.DEVICES, state_dir=cdir):
            client_id = identity.load(cdir).device_id
            await until("both sides pending", lambda: server_id in {p.device_id for p in TrustStore.load(cdir).pending()}
                        and client_id in {p.device_id for p in TrustStore.load(sdir).pending()})
            allow(sdir, client_id)
            paired_at = time.time()
            allow(cdir, server_id)

            def seen_since_paired() -> bool:
                entry = TrustStore.load(cdir).entry(server_id)
                return entry is not None and entry.last_seen is not None and entry.last_seen > paired_at

            # Before this change, the client never wrote it: LAST SEEN stayed at the pending sighting.
            await until("the server's last answer on the client", seen_since_paired, timeout=10)
