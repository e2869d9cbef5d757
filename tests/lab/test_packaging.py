"""The service files in packaging/: the SysV script run for real (as root, in a lab namespace),
the systemd unit through `systemd-analyze verify`, and the syntax of the others."""

from __future__ import annotations

import json
import os
import plistlib
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Final

import pytest

from tests.lab.netns import REPO_ROOT, Host, Lab, running

PACKAGING: Final = REPO_ROOT / "packaging"
SYSV: Final = PACKAGING / "sysv" / "ollana"
OLLANA_BIN: Final = Path(sys.executable).parent / "ollana"




@pytest.mark.lab
def test_sysv_script_start_status_restart_reload_stop(lab: Lab, tmp_path: Path) -> None:
    if not OLLANA_BIN.exists():
        pytest.skip(f"the ollana console script is not installed next to {sys.executable}")
    a = lab.add_host("a")
    pid_file = tmp_path / "run" / "ollana" / "ollana.pid"
    log_file = tmp_path / "log" / "ollana" / "serve.log"
    defaults = tmp_path / "default-ollana"
    config = tmp_path / "etc" / "ollana.toml"
    config.parent.mkdir()
    # The settings come from the config file, as packaged; OLLANA_OPTS stays empty.
    config.write_text('mode = "client"\nlisten = "127.0.0.1:11434"\ngrace = 2\n')
    # The service user is root here: the test interpreter lives under /root (mode 0700), which
    # no unprivileged user can run. Every path is a temp one, never /run or /var/log.
    defaults.write_text(
        f"DAEMON={OLLANA_BIN}\n"
        "OLLANA_USER=root\n"
        f"PIDFILE={pid_file}\n"
        f"LOGFILE={log_file}\n"
        f"OLLANA_HOME={tmp_path / 'lib' / 'ollana'}\n"
        f"CONFIG={config}\n"
        "OLLANA_LOG=info\n"
    )

    def init(action: str, host: Host = a) -> subprocess.CompletedProcess[str]:
        return host.run(["sh", str(SYSV), action], env={"OLLANA_DEFAULTS": str(defaults)}, check=False)

    assert init("status").returncode == 3

    started = init("start")
    assert started.returncode == 0, started.stdout + started.stderr
    pid = int(pid_file.read_text())
    assert running(pid)
    a.wait_tcp(11434, timeout=5)
    assert oct(pid_file.parent.stat().st_mode & 0o777) == oct(0o755)

    again = init("start")  # LSB: starting a running service succeeds
    assert again.returncode == 0, again.stdout + again.stderr
    assert int(pid_file.read_text()) == pid

    status = init("status")
    assert status.returncode == 0, status.stdout + status.stderr
    assert f"ollana is running: pid {pid}" in status.stdout
    assert re.search(r"role:\s+client", status.stdout)

    restarted = init("restart")
    assert restarted.returncode == 0, restarted.stdout + restarted.stderr
    new_pid = int(pid_file.read_text())
    assert new_pid != pid
    assert not running(pid)
    assert running(new_pid)

    rotated = log_file.with_name("serve.log.1")
    log_file.rename(rotated)
    reloaded = init("reload")
    assert reloaded.returncode == 0, reloaded.stdout + reloaded.stderr
    deadline = time.monotonic() + 10
    while not (log_file.exists() and "log_reopened" in log_file.read_text()):
        assert time.monotonic() < deadline, "SIGHUP did not reopen the log file"
        time.sleep(0.05)

    stopped = init("stop")
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    assert not running(new_pid)
    assert init("status").returncode == 3
    assert init("stop").returncode == 0  # LSB: stopping a stopped service succeeds
    assert init("reload").returncode != 0


def test_systemd_unit_verifies(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (Debian's `systemd` package provides it)")
    if not OLLANA_BIN.exists():
        pytest.skip(f"the ollana console script is not installed next to {sys.executable}")
    unit = (PACKAGING / "systemd" / "ollana.service").read_text()
    assert "ExecStart=/usr/local/bin/ollana serve --config /etc/ollana/ollana.toml " in unit
    # verify checks that ExecStart exists: point it at this machine's ollana.
    (tmp_path / "ollana.service").write_text(unit.replace("/usr/local/bin/ollana", str(OLLANA_BIN)))
    # Offline: it reads unit files only, and talks to no running systemd.
    proc = subprocess.run(
        [analyze, "verify", str(tmp_path / "ollana.service")],
        capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL, check=False,
        env={**os.environ, "SYSTEMD_LOG_COLOR": "0"},
    )
    # Unknown keys and bad values are warnings (exit 0): a clean unit prints nothing.
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout + proc.stderr == ""
    env_file = (PACKAGING / "systemd" / "ollana.env").read_text()
    assert re.search(r"^OLLANA_OPTS=$", env_file, re.MULTILINE)
    assert re.search(r"^OLLANA_LOG=", env_file, re.MULTILINE)


@pytest.mark.parametrize("script", ["sysv/ollana", "openrc/ollana"])
def test_shell_scripts_parse(script: str) -> None:
    path = PACKAGING / script
    assert os.access(path, os.X_OK), f"{path} is not executable"
    proc = subprocess.run(["sh", "-n", str(path)], capture_output=True, text=True, timeout=10, check=False)
    assert proc.returncode == 0, proc.stderr


def test_launchd_plist_runs_ollana_serve() -> None:
    plists = list((PACKAGING / "launchd").glob("*.plist"))
    assert len(plists) == 1
    with plists[0].open("rb") as f:
        plist = plistlib.load(f)
    assert plist["Label"] == plists[0].stem
    assert plist["ProgramArguments"][1:2] == ["serve"]
    assert plist["RunAtLoad"] is True


def test_logrotate_config(tmp_path: Path) -> None:
    text = (PACKAGING / "logrotate" / "ollana").read_text()
    assert "/var/log/ollana/" in text and "postrotate" in text and "reload" in text
    logrotate = shutil.which("logrotate")
    if logrotate is None:
        pytest.skip("logrotate is not installed; checked the text only")
    conf = tmp_path / "ollana"
    # The package creates the `ollana` user; this machine has none, so check with root's.
    conf.write_text(text.replace("/var/log/ollana/", f"{tmp_path}/").replace("create 0640 ollana adm", "create 0640 root adm"))
    proc = subprocess.run([logrotate, "-d", "-s", str(tmp_path / "state"), str(conf)],
                          capture_output=True, text=True, timeout=30, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_every_service_reads_the_config_file() -> None:
    assert 'CONFIG=/etc/ollana/ollana.toml' in SYSV.read_text()
    assert '--config "$CONFIG"' in SYSV.read_text()
    openrc = (PACKAGING / "openrc" / "ollana").read_text()
    assert "OLLANA_CONFIG:=/etc/ollana/ollana.toml" in openrc and "serve --config ${OLLANA_CONFIG}" in openrc
    for defaults in ("sysv/ollana.default", "openrc/ollana.confd"):
        assert not re.search(r"^OLLANA_OPTS=.", (PACKAGING / defaults).read_text(), re.MULTILINE), defaults


def test_the_packaged_config_file_is_valid_as_shipped_and_uncommented(tmp_path: Path) -> None:
    example = PACKAGING / "ollana.toml"
    uncommented = tmp_path / "ollana.toml"
    uncommented.write_text(re.sub(r"^#(?=[a-z_0-9]+ = )", "", example.read_text(), flags=re.MULTILINE))
    for path in (example, uncommented):
        proc = subprocess.run(
            [sys.executable, "-m", "ollana", "config", "show", "--json", "--config", str(path)],
            capture_output=True, text=True, timeout=60, check=False, cwd=REPO_ROOT,
            env={k: v for k, v in os.environ.items() if k not in ("OLLAMA_HOST", "OLLAMA_NUM_PARALLEL", "OLLANA_HOME")},
        )
        assert proc.returncode == 0, proc.stderr
    sources = {name: s["source"] for name, s in json.loads(proc.stdout)["settings"].items()}
    assert set(sources.values()) == {"file"}, sources  # every key is in the example
