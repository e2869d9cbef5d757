"""The pure parts of ollana.service.daemon, ollana.service.pidfile and ollana.service.control: pid file locking, stale detection, stop/status decisions,
default paths, log levels and the SIGHUP reload. No sockets; a few short-lived subprocesses."""

from __future__ import annotations

import json
import logging
import logging.handlers
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ollana import log as logconf
from ollana.config import Endpoint, Role
from ollana.errors import ConfigError
from ollana.runtime import Ready
from ollana.service import control, daemon, pidfile

# Holds a pid file the way a daemon does, prints "held", then waits for SIGTERM (or ignores it).
HOLDER = textwrap.dedent("""\
    import signal, sys, time
    from pathlib import Path
    from ollana.service.pidfile import PidFile
    if sys.argv[2] == "ignore":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    else:
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    pf = PidFile.acquire(Path(sys.argv[1]))
    try:
        # Said inside the try: a SIGTERM that comes right after "held" must still remove the file.
        print("held", flush=True)
        while True:
            time.sleep(0.05)
    finally:
        pf.remove()
""")


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.fixture
def holder(tmp_path: Path) -> Iterator[tuple[Path, list[subprocess.Popen[str]]]]:
    procs: list[subprocess.Popen[str]] = []
    yield tmp_path / "ollana.pid", procs
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def start_holder(path: Path, procs: list[subprocess.Popen[str]], mode: str = "exit") -> subprocess.Popen[str]:
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(path), mode], stdout=subprocess.PIPE, text=True, env=env)
    procs.append(proc)
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "held"
    return proc


# -- paths ---------------------------------------------------------------------------------------


def test_default_paths_follow_the_issue(tmp_path: Path) -> None:
    state = tmp_path / "state"
    assert pidfile.default_pid_file({}, is_root=True, state_dir=state) == Path("/run/ollana.pid")
    assert pidfile.default_pid_file({"XDG_RUNTIME_DIR": "/run/user/1000"}, is_root=False, state_dir=state) == Path(
        "/run/user/1000/ollana.pid"
    )
    assert pidfile.default_pid_file({}, is_root=False, state_dir=state) == state / "ollana.pid"
    assert daemon.default_log_file(is_root=True, state_dir=state) == Path("/var/log/ollana/serve.log")
    assert daemon.default_log_file(is_root=False, state_dir=state) == state / "serve.log"
    assert pidfile.state_file_for(Path("/run/ollana.pid")) == Path("/run/ollana.pid.json")


# -- the pid file ----------------------------------------------------------------------------------


def test_acquire_writes_our_pid_and_locks(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "ollana.pid"
    pf = pidfile.PidFile.acquire(path)
    assert path.read_text() == f"{os.getpid()}\n"
    assert path.stat().st_mode & 0o777 == 0o644
    assert pf.replaced_pid is None
    # flock is per open file: even this process sees the lock from another descriptor.
    assert pidfile.read_pid_file(path) == pidfile.PidFileState(path, pidfile.Liveness.RUNNING, os.getpid())
    with pytest.raises(pidfile.AlreadyRunning, match=rf"already running \(pid {os.getpid()}"):
        pidfile.PidFile.acquire(path, retry=0.05)
    pf.remove()
    assert not path.exists()
    assert pidfile.read_pid_file(path).liveness is pidfile.Liveness.NOT_RUNNING


def test_a_pid_file_nobody_holds_is_stale_even_if_its_pid_lives(tmp_path: Path) -> None:
    path = tmp_path / "ollana.pid"
    path.write_text("1\n")  # pid 1 is alive, but it does not hold the lock
    assert pidfile.read_pid_file(path) == pidfile.PidFileState(path, pidfile.Liveness.DEAD, 1)
    pf = pidfile.PidFile.acquire(path)
    assert pf.replaced_pid == 1
    assert path.read_text() == f"{os.getpid()}\n"
    pf.remove()


def test_state_file_is_written_next_to_the_pid_file_and_removed_with_it(tmp_path: Path) -> None:
    path = tmp_path / "ollana.pid"
    pf = pidfile.PidFile.acquire(path)
    pf.write_state(Ready(Role.CLIENT, Endpoint("127.0.0.1", 11434), "ab" * 16), grace=3.0, log_file=None)
    state = pidfile.read_state(path)
    assert state is not None
    assert state["pid"] == os.getpid()
    assert (state["role"], state["listen_host"], state["listen_port"], state["grace_s"]) == (
        "client", "127.0.0.1", 11434, 3.0,
    )
    pf.remove()
    assert not pidfile.state_file_for(path).exists()


def test_remove_leaves_a_pid_file_that_is_no_longer_ours(tmp_path: Path) -> None:
    path = tmp_path / "ollana.pid"
    pf = pidfile.PidFile.acquire(path)
    path.unlink()
    path.write_text("12345\n")  # someone else's now
    pf.remove()
    assert path.read_text() == "12345\n"


# -- stop and status ---------------------------------------------------------------------------------


def test_status_codes_without_a_running_ollana(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "ollana.pid"
    assert control.status(path) == 3
    assert "not running" in capsys.readouterr().out
    pid = dead_pid()
    path.write_text(f"{pid}\n")
    assert control.status(path) == 1
    assert f"pid {pid} is gone" in capsys.readouterr().out


@pytest.mark.parametrize("garbage", ["", "not a pid\n", "-4\n", "\x00\x01"])
def test_a_pid_file_with_garbage_is_named_as_such(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], garbage: str,
) -> None:
    path = tmp_path / "ollana.pid"
    path.write_text(garbage)
    said = f"the pid file {path} does not hold a pid (garbage): remove it"
    assert control.status(path) == 1
    out = capsys.readouterr().out
    assert said in out and "None" not in out
    assert control.stop(path) == 0
    out = capsys.readouterr().out
    assert said in out and "None" not in out
    assert path.read_text() == garbage  # named, not removed


def test_stop_without_a_running_ollana_succeeds_and_removes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "ollana.pid"
    assert control.stop(path) == 0
    assert "not running" in capsys.readouterr().out
    path.write_text("1\n")  # stale, and pid 1 must never be signalled
    assert control.stop(path) == 0
    assert "stale" in capsys.readouterr().out
    assert path.read_text() == "1\n"


def test_status_reports_the_node(holder: tuple[Path, list[subprocess.Popen[str]]], capsys: pytest.CaptureFixture[str]) -> None:
    path, procs = holder
    proc = start_holder(path, procs)
    assert control.status(path) == 0
    assert "starting" in capsys.readouterr().out  # no state file yet
    pidfile.state_file_for(path).write_text(json.dumps(
        {"pid": proc.pid, "role": "client", "listen_host": "127.0.0.1", "listen_port": 1, "grace_s": 1.0}
    ))
    seen: list[Endpoint] = []

    def fetch(endpoint: Endpoint) -> dict[str, object]:
        seen.append(endpoint)
        return {"role": "client", "listen": "127.0.0.1:1", "uptime_s": 75.2,
                "peers": [{"healthy": True}, {"healthy": False}]}

    assert control.status(path, fetch=fetch) == 0
    out = capsys.readouterr().out
    assert seen == [Endpoint("127.0.0.1", 1)]
    assert f"running: pid {proc.pid}" in out
    assert "role:     client" in out and "uptime:   1m 15s" in out and "peers:    2 (1 healthy)" in out

    def refuse(endpoint: Endpoint) -> dict[str, object]:
        raise ConnectionRefusedError("refused")

    assert control.status(path, fetch=refuse) == 0
    assert "not answering" in capsys.readouterr().out


def test_stop_signals_the_holder_and_waits_for_it(holder: tuple[Path, list[subprocess.Popen[str]]], capsys: pytest.CaptureFixture[str]) -> None:
    path, procs = holder
    proc = start_holder(path, procs)
    assert control.stop(path, timeout=10) == 0
    # The kernel drops the lock while the process exits; reaping it may lag a moment behind.
    assert proc.wait(timeout=5) is not None
    assert f"stopped (pid {proc.pid}" in capsys.readouterr().out
    assert not path.exists()  # removed by its owner, not by stop


def test_stop_reports_failure_when_it_does_not_exit(holder: tuple[Path, list[subprocess.Popen[str]]], capsys: pytest.CaptureFixture[str]) -> None:
    path, procs = holder
    proc = start_holder(path, procs, mode="ignore")
    started = time.monotonic()
    assert control.stop(path, timeout=0.3) == 1
    assert time.monotonic() - started < 3
    assert proc.poll() is None
    assert "still running" in capsys.readouterr().err
    assert control.status(path) == 0
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert control.status(path) == 1  # killed: its pid file remains


def test_format_duration() -> None:
    assert control.format_duration(3.25) == "3.2s"
    assert control.format_duration(42.9) == "42s"
    assert control.format_duration(3723) == "1h 02m 03s"
    assert control.format_duration(90061) == "1d 01h 01m"


# -- log levels and SIGHUP ---------------------------------------------------------------------------


def test_log_levels_file_overrides_ollana_log(tmp_path: Path) -> None:
    env = logconf.parse_directives("warn")
    levels = daemon.LogLevels(env, tmp_path / "log_levels")
    assert levels.load() == (env, "OLLANA_LOG")
    levels.file.write_text("# comment only\n\n")
    assert levels.load() == (env, "OLLANA_LOG")
    levels.file.write_text("info  # default\nollana.discovery=debug\n")
    spec, source = levels.load()
    assert source == str(levels.file)
    assert spec == logconf.LogSpec(logging.INFO, (("ollana.discovery", logging.DEBUG),))
    levels.file.write_text("loud\n")
    with pytest.raises(ConfigError, match=r"log_levels: invalid OLLANA_LOG directive 'loud'"):
        levels.load()


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for h in list(root.handlers):
        root.removeHandler(h)
        h.close()
    for h in handlers:
        root.addHandler(h)
    root.setLevel(level)
    logging.getLogger("ollana.discovery").setLevel(logging.NOTSET)


def test_reload_reopens_a_moved_log_file_and_resets_dropped_targets(tmp_path: Path, restore_logging: None) -> None:
    log_file = tmp_path / "serve.log"
    start = logconf.parse_directives("info,ollana.discovery=debug")
    handler = logconf.configure(start, log_file=str(log_file))
    levels = daemon.LogLevels(start, tmp_path / "log_levels")
    reloader = daemon.Reloader(handler, levels, start)
    assert logging.getLogger("ollana.discovery").level == logging.DEBUG

    log_file.rename(tmp_path / "serve.log.1")
    levels.file.write_text("warn\n")
    reloader.reload()
    assert logging.getLogger("ollana.discovery").level == logging.NOTSET
    assert logging.getLogger().level == logging.WARNING
    lines = [json.loads(line) for line in log_file.read_text().splitlines()]
    # log_reopened is written at info, before the new levels apply; the reload line is then a
    # warning-level-filtered info, so only the first shows.
    assert [line["event"] for line in lines] == ["log_reopened"]

    levels.file.write_text("nonsense\n")
    reloader.reload()
    assert logging.getLogger().level == logging.WARNING  # a bad file keeps the levels
    assert "log_levels_not_reloaded" in log_file.read_text()
