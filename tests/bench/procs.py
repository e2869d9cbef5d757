"""The processes a benchmark run starts (nginx, ollana, the fake Ollama), and their clean-up.

Everything binds 127.0.0.1 only. Every ollana gets ``--no-discovery``, an explicit ``--listen``
and a ``--state-dir`` inside the run's temp dir. Each process starts in its own session so it
can be stopped, with all its children (nginx workers), by its own process-group id.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Self

HOST: Final = "127.0.0.1"
TEMPLATE: Final = Path(__file__).with_name("nginx.conf.template")
REPO: Final = Path(__file__).resolve().parents[2]
NGINX: Final = shutil.which("nginx") or "/usr/sbin/nginx"
START_TIMEOUT: Final = 20.0


class BenchError(Exception):
    """A topology could not be set up or run."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


@dataclass(slots=True)
class Proc:
    name: str
    argv: list[str]
    popen: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def http_get(url: str, timeout: float = 2.0) -> tuple[int, bytes, Mapping[str, str]]:
    assert url.startswith(f"http://{HOST}:"), url  # the traffic rule: loopback only
    req = urllib.request.Request(url)
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # ignore *_proxy env
    try:
        with opener.open(req, timeout=timeout) as resp:
            return resp.status, resp.read(), dict(resp.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), dict(exc.headers)


@dataclass
class Procs:
    """Owns every process of a run; ``close()`` stops them in reverse start order."""

    workdir: Path
    procs: list[Proc] = field(default_factory=list)

    def start(
        self, name: str, argv: Sequence[str], env: Mapping[str, str] | None = None, cwd: Path | None = None
    ) -> Proc:
        log = self.workdir / f"{name}.log"
        with open(log, "wb") as out:
            popen = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=dict(env) if env is not None else None,
                cwd=cwd or REPO,
                start_new_session=True,
            )
        proc = Proc(name, list(argv), popen, log)
        self.procs.append(proc)
        return proc

    def stop(self, proc: Proc) -> None:
        if proc in self.procs:
            self.procs.remove(proc)
        _stop(proc)

    def close(self) -> None:
        while self.procs:
            _stop(self.procs.pop())

    # -- readiness ------------------------------------------------------------------------

    def wait_until(self, proc: Proc, what: str, check: Any, timeout: float = START_TIMEOUT) -> Any:
        deadline = time.monotonic() + timeout
        last: object = None
        while time.monotonic() < deadline:
            if proc.popen.poll() is not None:
                raise BenchError(
                    f"{proc.name} exited with {proc.popen.returncode} before {what}:\n"
                    f"  command: {' '.join(proc.argv)}\n{_indent(proc.log_tail())}"
                )
            try:
                result = check()
                if result:
                    return result
                last = "not yet"
            except (OSError, ValueError, urllib.error.URLError) as exc:
                last = exc
            time.sleep(0.05)
        raise BenchError(
            f"{proc.name}: timed out after {timeout:g} s waiting for {what} (last: {last}):\n"
            f"  command: {' '.join(proc.argv)}\n{_indent(proc.log_tail())}"
        )

    # -- the programs -----------------------------------------------------------------------

    def nginx(self, name: str, port: int, upstream_port: int | None = None) -> Proc:
        """``upstream_port`` None: the static fast upstream; else a proxy hop to that port."""
        prefix = self.workdir / name
        prefix.mkdir()
        if os.geteuid() == 0:
            # Root's nginx runs its workers as nobody: they must be able to reach the prefix.
            for p in (self.workdir, prefix):
                p.chmod(0o755)
        conf = prefix / "nginx.conf"
        conf.write_text(
            render_nginx_conf(
                "static" if upstream_port is None else "proxy",
                prefix=prefix,
                port=port,
                upstream_port=upstream_port,
            )
        )
        proc = self.start(
            name, [NGINX, "-p", str(prefix), "-e", str(prefix / "error.log"), "-c", str(conf)]
        )
        url = f"http://{HOST}:{port}/api/version"
        self.wait_until(proc, f"GET {url}", lambda: http_get(url)[0] in (200, 502))
        return proc

    def state_dir(self, name: str) -> Path:
        return self.workdir / f"{name}-state"

    def ollana(
        self,
        name: str,
        args: Sequence[str],
        port: int,
        env_extra: Mapping[str, str],
        trust: str = "open",
    ) -> Proc:
        state = self.state_dir(name)
        state.mkdir()
        argv = [
            sys.executable,
            "-m",
            "ollana",
            "serve",
            *args,
            "--trust",
            trust,
            "--no-discovery",
            "--listen",
            f"{HOST}:{port}",
            "--state-dir",
            str(state),
            "--log-format",
            "json",
        ]
        env = {k: v for k, v in os.environ.items() if k not in ("OLLAMA_HOST", "OLLANA_HOME")}
        env.update(env_extra)
        return self.start(name, argv, env)

    def ollana_server(
        self,
        name: str,
        port: int,
        upstream_port: int,
        env_extra: Mapping[str, str],
        trust: str = "open",
    ) -> Proc:
        proc = self.ollana(
            name,
            ["--mode", "server", "--ollama", f"http://{HOST}:{upstream_port}"],
            port,
            env_extra,
            trust,
        )
        scheme = "https" if trust == "devices" else "http"
        status = f"{scheme}://{HOST}:{port}/ollana/v1/status"
        state = self.state_dir(name)

        def healthy() -> bool:
            if trust == "devices":  # TLS, paired devices only: ask with the node's own key
                body = own_status(port, state)
            else:
                code, raw, _ = http_get(status)
                body = json.loads(raw) if code == 200 else {}
            return bool(body.get("upstream", {}).get("healthy"))

        self.wait_until(proc, f"{status} to report a healthy upstream", healthy)
        return proc

    def ollana_client(
        self,
        name: str,
        port: int,
        peer_port: int,
        env_extra: Mapping[str, str],
        trust: str = "open",
        wait: bool = True,
    ) -> Proc:
        proc = self.ollana(
            name, ["--mode", "client", "--peer", f"{HOST}:{peer_port}"], port, env_extra, trust
        )
        if wait:
            self.wait_client_healthy(proc, port)
        return proc

    def wait_client_healthy(self, proc: Proc, port: int) -> None:
        status = f"http://{HOST}:{port}/ollana/v1/status"

        def healthy() -> bool:
            code, body, _ = http_get(status)
            peers = json.loads(body).get("peers", []) if code == 200 else []
            return any(p.get("healthy") and p.get("rtt_ms") is not None for p in peers)

        self.wait_until(proc, f"{status} to report a healthy peer", healthy)

    def pair(self, server: Proc, client: Proc) -> None:
        """Pair a TLS client and server the way a user does: `ollana device pending` shows each
        to the other (the client met the server's certificate and said hello), then `allow`."""
        sdir, cdir = self.state_dir(server.name), self.state_dir(client.name)

        def short_id(state: Path) -> str:
            return device_cli(state, "show", "--json")["short"]

        def pending(state: Path) -> list[str]:
            return [d["device_id"][:7] for d in device_cli(state, "pending", "--json")]

        sid, cid = short_id(sdir), short_id(cdir)
        self.wait_until(client, "the server in the client's pending devices", lambda: sid in pending(cdir))
        self.wait_until(server, "the client in the server's pending devices", lambda: cid in pending(sdir))
        device_cli(cdir, "allow", sid)
        device_cli(sdir, "allow", cid)

    def fake_ollama(self, name: str, port: int, args: Sequence[str] = ()) -> Proc:
        argv = [
            sys.executable,
            "-m",
            "tests.fakeollama",
            "--host",
            HOST,
            "--port",
            str(port),
            *args,
        ]
        proc = self.start(name, argv)
        self.wait_until(
            proc,
            "the fake to print 'fakeollama listening'",
            lambda: "fakeollama listening" in proc.log.read_text(errors="replace"),
        )
        url = f"http://{HOST}:{port}/api/version"
        self.wait_until(proc, f"GET {url}", lambda: http_get(url)[0] == 200)
        return proc


def device_cli(state: Path, *args: str) -> Any:
    """`ollana device ARGS --state-dir STATE`; its JSON output when asked with --json."""
    done = subprocess.run(
        [sys.executable, "-m", "ollana", "device", *args, "--state-dir", str(state)],
        capture_output=True, text=True, timeout=30, cwd=REPO, check=False,
    )
    if done.returncode != 0:
        raise BenchError(f"ollana device {' '.join(args)}: {done.stderr.strip()}")
    return json.loads(done.stdout) if "--json" in args else done.stdout


def own_status(port: int, state: Path) -> dict[str, Any]:
    """GET /ollana/v1/status of a TLS server (trust mode devices) with its own key, as
    `ollana status` does. Loopback only."""
    from ollana.config import Endpoint
    from ollana.service import control

    tls = control.own_tls({"cert_file": state / "device.crt", "key_file": state / "device.key"})
    return control.fetch_status(Endpoint(HOST, port), tls)


def render_nginx_conf(role: str, *, prefix: Path, port: int, upstream_port: int | None) -> str:
    out: list[str] = []
    keep = True
    for line in TEMPLATE.read_text().splitlines():
        stripped = line.strip()
        if stripped.startswith("#ROLE "):
            keep = stripped.split()[1] == role
            continue
        if stripped == "#END":
            keep = True
            continue
        if keep:
            out.append(line)
    text = "\n".join(out) + "\n"
    values = {"PREFIX": str(prefix), "PORT": str(port), "UPSTREAM_PORT": str(upstream_port or 0)}
    for key, value in values.items():
        text = text.replace("{{" + key + "}}", value)
    if "{{" in text:
        raise BenchError("unfilled placeholder in nginx.conf.template")
    return text


def _stop(proc: Proc, grace: float = 5.0) -> None:
    if proc.popen.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            proc.popen.wait(grace)
        except subprocess.TimeoutExpired:
            pass
    # Anything left in the process group (e.g. an nginx worker) goes too.
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.popen.wait(2.0)
    except subprocess.TimeoutExpired:
        pass


def _indent(text: str) -> str:
    return "\n".join("    | " + line for line in text.splitlines())


# -- memory ------------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far (from /proc/PID/stat)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks  # utime, stime: fields 14 and 15


def rss_kib(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of a process, in KiB."""
    rss = hwm = 0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
            elif line.startswith("VmHWM:"):
                hwm = int(line.split()[1])
    return rss, hwm


class RssSampler:
    """Polls VmRSS of some processes every ``period`` seconds in a thread; keeps start and peak."""

    def __init__(self, pids: Mapping[str, int], period: float = 0.05) -> None:
        self._pids = dict(pids)
        self._period = period
        self._stop = threading.Event()
        self.start_kib = {name: rss_kib(pid)[0] for name, pid in self._pids.items()}
        self.peak_kib = dict(self.start_kib)
        self.samples = 0
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    def _sample(self) -> None:
        for name, pid in self._pids.items():
            try:
                rss = rss_kib(pid)[0]
            except OSError:
                continue
            self.peak_kib[name] = max(self.peak_kib[name], rss)
        self.samples += 1

    def _run(self) -> None:
        while not self._stop.wait(self._period):
            self._sample()
