"""A LAN made of Linux network namespaces, for ollana's end-to-end tests.

The shape is the one ``lab.md`` proves: one *hub* namespace holds the bridge ``br0``;
every host is its own namespace with an ``eth0`` veth whose peer is enslaved to the
bridge. The root namespace never gets an interface or a route into the lab, so lab
traffic (multicast included) cannot leak onto the machine's real network.

Python 3.11 has no ``os.setns``, so everything inside a host runs as a subprocess
through ``ip netns exec`` (which execs: the PID we hold is the program's).
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Final, Self

__all__ = [
    "REPO_ROOT",
    "CommandFailed",
    "Host",
    "Lab",
    "LabError",
    "LabTimeout",
    "LabUnavailable",
    "cleanup_stale_log_dirs",
    "cleanup_stale_namespaces",
    "unavailable_reason",
]

REPO_ROOT: Final = Path(__file__).resolve().parents[2]

SUBNET4: Final = "10.77.0"
SUBNET6: Final = "fd77::"
# Network n of the lab (bridge br<n> in the hub): 10.<77+n>.0.0/24 and fd<77+n>::/64. A router
# (``Lab.add_router``) has address .254 / ::254 on each network it joins.
ROUTER_INDEX: Final = 254
MAX_HOSTS: Final = 253
STOP_GRACE: Final = 3.0

# ol<pid>-<4 hex>-<host>: the pid lets a later run tell a dead run's leftovers from a
# live parallel run's namespaces; nothing outside this pattern is ever touched.
_NS_PATTERN: Final = re.compile(r"^ol(?P<pid>\d+)-[0-9a-f]{4}-[a-z0-9_]+$")
_LOG_DIR_PREFIX: Final = "ollana-lab-"
_LOG_DIR_PATTERN: Final = re.compile(r"^ollana-lab-ol(?P<pid>\d+)-[0-9a-f]{4}-")
_HOST_NAME: Final = re.compile(r"^[a-z0-9][a-z0-9_]{0,15}$")
_HUB: Final = "hub"
_PROXY_VARS: Final = ("http_proxy", "https_proxy", "all_proxy", "ftp_proxy", "no_proxy")

# Polls inside ONE subprocess so waiting costs a single interpreter start.
_WAIT_TCP_CODE: Final = """\
import socket, sys, time
addr, port, timeout = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
deadline = time.monotonic() + timeout
delay = 0.01
while True:
    try:
        with socket.create_connection((addr, port), timeout=max(0.05, min(1.0, timeout))):
            sys.exit(0)
    except OSError as exc:
        if time.monotonic() >= deadline:
            print(f"{addr}:{port} not reachable after {timeout}s: {exc!r}")
            sys.exit(1)
    time.sleep(delay)
    delay = min(delay * 2, 0.2)
"""


class LabError(Exception):
    """Something in the lab went wrong (setup, teardown, a helper command)."""


class LabUnavailable(LabError):
    """This machine cannot host the lab (not root, no ``ip``, no netns support)."""


class LabTimeout(LabError):
    """A wait on a condition inside the lab ran out of time."""


class CommandFailed(LabError):
    """A command exited non-zero; carries its output so the failure explains itself."""

    def __init__(self, argv: Sequence[str], returncode: int, stdout: str, stderr: str) -> None:
        self.argv = list(argv)
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr
        super().__init__(
            f"command {self.argv!r} exited with {returncode}\n"
            f"--- stdout ---\n{stdout}--- stderr ---\n{stderr}"
        )


def unavailable_reason() -> str | None:
    """Why the lab cannot run here, or None if it probably can."""
    if sys.platform != "linux":
        return "the namespace lab needs Linux"
    if os.geteuid() != 0:
        return "the namespace lab needs root (ip netns add)"
    if shutil.which("ip") is None:
        return "the namespace lab needs iproute2's `ip`"
    return None


def _ip_binary() -> str:
    path = shutil.which("ip")
    if path is None:
        raise LabUnavailable("iproute2's `ip` is not on PATH")
    return path


def _run_checked(argv: Sequence[str], timeout: float = 10.0) -> str:
    proc = subprocess.run(
        argv, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL, check=False
    )
    if proc.returncode != 0:
        raise CommandFailed(argv, proc.returncode, proc.stdout, proc.stderr)
    return proc.stdout


def _list_namespaces(ip: str) -> list[str]:
    # Lines look like "name (id: 3)" or just "name".
    out = _run_checked([ip, "netns", "list"])
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def running(pid: int) -> bool:
    """Whether ``pid`` runs: a zombie (exited, waiting for an init that may never reap it, as
    in a namespace) counts as gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _namespace_pids(ip: str, ns: str) -> list[int]:
    proc = subprocess.run(
        [ip, "netns", "pids", ns], capture_output=True, text=True, stdin=subprocess.DEVNULL, check=False
    )
    return [int(tok) for tok in proc.stdout.split() if tok.isdigit()]


def _kill_namespace_processes(ip: str, ns: str, grace: float) -> None:
    """SIGTERM then SIGKILL whatever still lives in ``ns`` (daemons escape their group)."""
    pids = _namespace_pids(ip, ns)
    if not pids:
        return
    for pid in pids:
        _signal_pid(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    delay = 0.01
    while pids and time.monotonic() < deadline:
        time.sleep(delay)
        delay = min(delay * 2, 0.2)
        pids = _namespace_pids(ip, ns)
    for pid in pids:
        _signal_pid(pid, signal.SIGKILL)


def _signal_pid(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, sig)


# The kernel keeps one neighbour table (ARP, NDP) for all namespaces, sized for one machine
# (gc_thresh3: 1,024 entries). The 20x20 lab overflows it ("neighbor table overflow" in dmesg),
# and an IPv6 send then fails with EINVAL, a link-local check hangs: a lab artefact, not ollana's.
# Raised for the lab, largest first (the kernel wants thresh1 <= thresh2 <= thresh3), never lowered.
_NEIGH_LIMITS: Final = (("gc_thresh3", 32768), ("gc_thresh2", 16384), ("gc_thresh1", 4096))


def raise_neighbour_limits() -> list[str]:
    """Raise the host's neighbour table limits for a lab of many hosts (host-wide, left raised:
    a larger table harms nothing, and lowering it could break a lab running next to this one).
    Returns what was changed; a limit that cannot be written (a container) is left as it is."""
    changed = []
    for family in ("ipv4", "ipv6"):
        for key, want in _NEIGH_LIMITS:
            path = Path(f"/proc/sys/net/{family}/neigh/default/{key}")
            try:
                have = int(path.read_text())
                if have < want:
                    path.write_text(f"{want}\n")
                    changed.append(f"net.{family}.neigh.default.{key} {have} -> {want}")
            except (OSError, ValueError):
                continue
    return changed


def cleanup_stale_namespaces() -> list[str]:
    """Delete lab namespaces left behind by runs whose process is gone.

    Only names matching ``ol<pid>-<hex4>-<name>`` whose pid is dead are touched, so
    a parallel live run and every foreign namespace are left alone. Returns the names
    removed.
    """
    ip = _ip_binary()
    removed: list[str] = []
    for ns in _list_namespaces(ip):
        match = _NS_PATTERN.match(ns)
        if match is None:
            continue
        pid = int(match["pid"])
        if pid == os.getpid() or _pid_alive(pid):
            continue
        _kill_namespace_processes(ip, ns, grace=0.5)
        _run_checked([ip, "netns", "del", ns])
        removed.append(ns)
    return removed


def cleanup_stale_log_dirs() -> list[Path]:
    """Delete lab log dirs (in the temp dir) of runs whose process is gone."""
    removed: list[Path] = []
    for path in Path(tempfile.gettempdir()).glob(_LOG_DIR_PREFIX + "ol*"):
        match = _LOG_DIR_PATTERN.match(path.name)
        if match is None or not path.is_dir():
            continue
        pid = int(match["pid"])
        if pid == os.getpid() or _pid_alive(pid):
            continue
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    return removed


def _tail(text: str, lines: int) -> str:
    return "\n".join(text.splitlines()[-lines:])


@dataclass(slots=True)
class _Proc:
    popen: subprocess.Popen[bytes]
    log_name: str
    log_path: Path
    start_offset: int


class Host:
    """One machine of the lab: a namespace with ``lo`` and ``eth0`` on the shared LAN."""

    def __init__(self, lab: Lab, name: str, index: int, *, network: int = 0, ipv4: bool = True) -> None:
        self._lab = lab
        self.name: Final = name
        self.index: Final = index
        self.ns: Final = lab.prefix + name
        # An IPv6-only host (ipv4=False) has no IPv4 address on eth0 (``ip`` is then unused).
        self.ipv4: Final = ipv4
        self.network = network
        self.dir: Final = lab.log_dir / name
        self._procs: list[_Proc] = []

    @property
    def ip(self) -> str:
        return f"10.{77 + self.network}.0.{self.index}"

    @property
    def ip6(self) -> str:
        return f"fd{77 + self.network}::{self.index}"

    def __repr__(self) -> str:
        return f"Host(name={self.name!r}, ns={self.ns!r}, ip={self.ip!r})"

    # -- processes ---------------------------------------------------------------

    def env(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        """The environment lab processes get; ``extra`` overrides it key by key."""
        return self._lab.process_env(self, extra)

    def popen(
        self,
        argv: Sequence[str],
        env: Mapping[str, str] | None = None,
        cwd: str | Path | None = None,
        log_name: str | None = None,
    ) -> subprocess.Popen[bytes]:
        """Start ``argv`` inside the host in its own process group.

        stdout and stderr go, interleaved, to the log ``log_name`` (default: the
        program's name); a reused name appends, and waits on the new process only
        see its own output. The lab kills the process group on close.
        """
        self._lab.check_open()
        name = log_name or self._default_log_name(argv)
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
            raise ValueError(f"log name {name!r} must be a plain file name")
        for proc in self._procs:
            if proc.log_name == name and proc.popen.poll() is None:
                raise LabError(f"{self.name}: log {name!r} belongs to a running process")
        path = self.dir / f"{name}.log"
        with path.open("ab") as log:
            offset = log.tell()
            popen = subprocess.Popen(
                [self._lab.ip_bin, "netns", "exec", self.ns, *argv],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env(env),
                cwd=str(cwd or REPO_ROOT),
                start_new_session=True,
            )
        self._procs.append(_Proc(popen, name, path, offset))
        return popen

    def _default_log_name(self, argv: Sequence[str]) -> str:
        base = re.sub(r"[^A-Za-z0-9_.-]", "_", Path(argv[0]).name) or "proc"
        taken = {p.log_name for p in self._procs}
        if base not in taken:
            return base
        n = 2
        while f"{base}-{n}" in taken:
            n += 1
        return f"{base}-{n}"

    def run(
        self,
        argv: Sequence[str],
        timeout: float = 30.0,
        check: bool = True,
        input: str | None = None,
        env: Mapping[str, str] | None = None,
        cwd: str | Path | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` inside the host to completion and capture its output."""
        self._lab.check_open()
        full = [self._lab.ip_bin, "netns", "exec", self.ns, *argv]
        popen = subprocess.Popen(
            full,
            stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=self.env(env),
            cwd=str(cwd or REPO_ROOT),
            start_new_session=True,
        )
        try:
            stdout, stderr = popen.communicate(input, timeout=timeout)
        except subprocess.TimeoutExpired:
            # Kill the whole group: a child the command forked must not outlive it.
            _signal_group(popen.pid, signal.SIGKILL)
            stdout, stderr = popen.communicate()
            raise LabTimeout(
                f"{self.name}: {list(argv)!r} still running after {timeout}s\n"
                f"--- stdout ---\n{stdout}--- stderr ---\n{stderr}"
            ) from None
        if check and popen.returncode != 0:
            raise CommandFailed(argv, popen.returncode, stdout, stderr)
        return subprocess.CompletedProcess(full, popen.returncode, stdout, stderr)

    def python(
        self,
        code: str,
        args: Sequence[str] = (),
        timeout: float = 30.0,
        check: bool = True,
        env: Mapping[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``sys.executable -c code args...`` inside the host."""
        return self.run([sys.executable, "-c", code, *args], timeout=timeout, check=check, env=env)

    def terminate(
        self,
        popen: subprocess.Popen[bytes],
        sig: signal.Signals = signal.SIGTERM,
        timeout: float = STOP_GRACE,
    ) -> int:
        """Signal the process group of ``popen``; SIGKILL it if still alive after ``timeout``."""
        if popen.poll() is None:
            _signal_group(popen.pid, sig)
            try:
                return popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                _signal_group(popen.pid, signal.SIGKILL)
        return popen.wait()

    # -- logs and waits ---------------------------------------------------------------

    def log_path(self, name: str) -> Path:
        return self.dir / f"{name}.log"

    def log_names(self) -> list[str]:
        return sorted(p.stem for p in self.dir.glob("*.log"))

    def read_log(self, name: str) -> str:
        path = self.log_path(name)
        if not path.exists():
            raise LabError(f"{self.name}: no log named {name!r} (have {self.log_names()})")
        return path.read_bytes().decode(errors="replace")

    def wait_for_line(
        self,
        target: subprocess.Popen[bytes] | str,
        pattern: str | re.Pattern[str],
        timeout: float = 10.0,
    ) -> re.Match[str]:
        """Wait until the output of ``target`` (a process or a log name) matches ``pattern``.

        Fails early, with the log, if the process exits without matching.
        """
        proc = self._find_proc(target)
        regex = re.compile(pattern, re.MULTILINE) if isinstance(pattern, str) else pattern
        deadline = time.monotonic() + timeout
        delay = 0.01
        while True:
            # Read the exit status before the log: a process may print and then exit.
            exited = proc.popen.poll()
            with proc.log_path.open("rb") as log:
                log.seek(proc.start_offset)
                text = log.read().decode(errors="replace")
            match = regex.search(text)
            if match is not None:
                return match
            if exited is not None:
                raise LabError(
                    f"{self.name}: {proc.log_name} exited with {exited} before printing "
                    f"{regex.pattern!r}\n--- log tail ---\n{_tail(text, 40)}"
                )
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise LabTimeout(
                    f"{self.name}: {proc.log_name} did not print {regex.pattern!r} within "
                    f"{timeout}s\n--- log tail ---\n{_tail(text, 40)}"
                )
            time.sleep(min(delay, remaining))
            delay = min(delay * 1.5, 0.1)

    def _find_proc(self, target: subprocess.Popen[bytes] | str) -> _Proc:
        for proc in reversed(self._procs):
            if proc.popen is target or proc.log_name == target:
                return proc
        raise LabError(f"{self.name}: {target!r} was not started through this host")

    def wait_tcp(self, port: int, addr: str = "127.0.0.1", timeout: float = 10.0) -> None:
        """Wait until a TCP connect from inside this host to ``addr:port`` succeeds."""
        proc = self.python(
            _WAIT_TCP_CODE,
            args=[addr, str(port), str(timeout)],
            timeout=timeout + 10.0,
            check=False,
        )
        if proc.returncode != 0:
            raise LabTimeout(f"{self.name}: {proc.stdout.strip() or proc.stderr.strip()}")

    # -- faults ------------------------------------------------------------------

    def link_down(self) -> None:
        """Unplug the cable: ``eth0`` down (the kernel also drops its routes and IPv6 address)."""
        self._lab.ip_in(self.ns, "link", "set", "eth0", "down")

    def link_up(self) -> None:
        """Plug the cable back and restore what link_down made the kernel forget."""
        self._lab.ip_in(self.ns, "link", "set", "eth0", "up")
        self._lab.configure_addresses(self)

    def recreate_link(self) -> None:
        """Delete ``eth0`` (and its veth peer) and create it again: same name, same MAC, same
        addresses (so the same link-local one too); only the kernel's interface index changes."""
        mac = self._lab.ip_in(self.ns, "-br", "link", "show", "eth0").split()[2]
        self._lab.ip_in(self.ns, "link", "del", "eth0")
        self._lab.plug(self, mac=mac)

    def move_to(self, network: int) -> None:
        """The laptop moves: ``eth0`` is plugged into network ``network`` (same interface, same
        index) and takes that network's addresses; the link-local one stays."""
        lab = self._lab
        lab.ip_in(lab.hub, "link", "set", f"p{self.index}", "master", lab.bridge(network))
        lab.ip_in(self.ns, "addr", "flush", "dev", "eth0", "scope", "global")
        self.network = network
        lab.configure_addresses(self)

    def drop_udp(self, port: int, probability: float) -> None:
        """Drop incoming UDP to ``port`` (IPv4 and IPv6) with the given probability."""
        if not 0.0 < probability <= 1.0:
            raise ValueError(f"probability must be in (0, 1], got {probability}")
        rule = [
            "-A", "INPUT", "-p", "udp", "--dport", str(port),
            "-m", "statistic", "--mode", "random", "--probability", f"{probability:.6f}",
            "-j", "DROP",
        ]  # fmt: skip
        for tool in self._lab.firewall_tools():
            self.run([tool, *rule], timeout=10.0)

    def clear_firewall(self) -> None:
        """Remove every rule drop_udp added (flush the filter table)."""
        for tool in self._lab.firewall_tools():
            self.run([tool, "-F"], timeout=10.0)


class Lab:
    """A bridge in a hub namespace plus hosts on it. Use as a context manager.

    ``close`` kills every process started through the lab and deletes every namespace
    it created, whatever happened before; it is idempotent.
    """

    def __init__(self, keep_logs: bool = False) -> None:
        reason = unavailable_reason()
        if reason is not None:
            raise LabUnavailable(reason)
        self.ip_bin: Final = _ip_binary()
        self.prefix: Final = f"ol{os.getpid()}-{secrets.token_hex(2)}-"
        self.hub: Final = self.prefix + _HUB
        self.log_dir: Final = Path(tempfile.mkdtemp(prefix=_LOG_DIR_PREFIX + self.prefix))
        self._keep_logs = keep_logs
        self._hosts: dict[str, Host] = {}
        self._bridges: set[str] = set()
        self._namespaces: list[str] = []
        self._closed = False
        try:
            self._add_namespace(self.hub)
            self.bridge(0)
        except BaseException as exc:
            self.close()
            if isinstance(exc, CommandFailed):
                raise LabUnavailable(f"cannot build the hub namespace: {exc}") from exc
            raise

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def hosts(self) -> tuple[Host, ...]:
        """The hosts in the order they were added."""
        return tuple(self._hosts.values())

    @property
    def namespaces(self) -> tuple[str, ...]:
        return tuple(self._namespaces)

    @property
    def closed(self) -> bool:
        return self._closed

    def host(self, name: str) -> Host:
        return self._hosts[name]

    def check_open(self) -> None:
        if self._closed:
            raise LabError("the lab is closed")

    def add_host(self, name: str, *, network: int = 0, ipv4: bool = True) -> Host:
        """Create a host on network ``network`` (0: the LAN, 10.77.0.0/24) with the next free
        address (10.77.0.1, .2, ...); ``ipv4=False``: an IPv6-only host."""
        self.check_open()
        if not _HOST_NAME.match(name) or name == _HUB:
            raise ValueError(f"bad host name {name!r}: [a-z0-9_], at most 16 chars, not {_HUB!r}")
        if name in self._hosts:
            raise ValueError(f"host {name!r} already exists")
        index = len(self._hosts) + 1
        if index > MAX_HOSTS:
            raise LabError(f"the lab subnet holds at most {MAX_HOSTS} hosts")
        host = Host(self, name, index, network=network, ipv4=ipv4)
        host.dir.mkdir()
        self._add_namespace(host.ns)
        self.ip_in(host.ns, "link", "set", "lo", "up")
        self.plug(host)
        self._hosts[name] = host
        return host

    def bridge(self, network: int) -> str:
        """The bridge of network ``network`` in the hub, created the first time it is asked for."""
        name = f"br{network}"
        if name not in self._bridges:
            # No snooping: like a cheap LAN switch, flood multicast to every port so delivery
            # never depends on IGMP/MLD timing.
            self.ip_in(self.hub, "link", "add", name, "type", "bridge", "mcast_snooping", "0")
            self.ip_in(self.hub, "link", "set", name, "up")
            self._bridges.add(name)
        return name

    def _veth(self, ns: str, dev: str, peer: str, network: int, mac: str | None = None) -> None:
        # Created directly inside the two namespaces: never visible in the root one.
        _run_checked([
            self.ip_bin, "link", "add", dev, *(["address", mac] if mac else []), "netns", ns,
            "type", "veth", "peer", "name", peer, "netns", self.hub,
        ])  # fmt: skip
        self.ip_in(self.hub, "link", "set", peer, "master", self.bridge(network))
        self.ip_in(self.hub, "link", "set", peer, "up")
        # Skip IPv6 duplicate address detection so link-local addresses work at once.
        _run_checked([
            self.ip_bin, "netns", "exec", ns, "sh", "-c",
            f"echo 0 > /proc/sys/net/ipv6/conf/{dev}/accept_dad",
        ])  # fmt: skip
        self.ip_in(ns, "link", "set", dev, "up")

    def plug(self, host: Host, mac: str | None = None) -> None:
        """Give ``host`` its ``eth0`` on its network, with its addresses and routes."""
        self._veth(host.ns, "eth0", f"p{host.index}", host.network, mac)  # names far below IFNAMSIZ
        self.configure_addresses(host)

    def configure_addresses(self, host: Host) -> None:
        """(Re)apply the host's addresses and default routes; safe to repeat."""
        if host.ipv4:
            self.ip_in(host.ns, "addr", "replace", f"{host.ip}/24", "dev", "eth0")
        self.ip_in(host.ns, "addr", "replace", f"{host.ip6}/64", "dev", "eth0", "nodad")
        # A default route, as on a real LAN, so multicast sends find an interface; off the
        # first network, through the router (``add_router``).
        if host.network == 0:
            via4, via6 = ["dev", "eth0"], ["dev", "eth0"]
        else:
            via4 = ["via", f"10.{77 + host.network}.0.{ROUTER_INDEX}", "dev", "eth0"]
            via6 = ["via", f"fd{77 + host.network}::{ROUTER_INDEX}", "dev", "eth0"]
        if host.ipv4:
            self.ip_in(host.ns, "route", "replace", "default", *via4)
        self.ip_in(host.ns, "-6", "route", "replace", "default", *via6)

    def add_router(self, name: str, networks: Sequence[int] = (0, 1)) -> str:
        """A router namespace with ``eth<n>`` on each network ``n`` (address .254 / ::254) that
        forwards between them (unicast only: no multicast routing). Returns its namespace."""
        self.check_open()
        ns = self.prefix + name
        self._add_namespace(ns)
        self.ip_in(ns, "link", "set", "lo", "up")
        for n in networks:
            dev = f"eth{n}"
            self._veth(ns, dev, f"r{n}", n)
            self.ip_in(ns, "addr", "replace", f"10.{77 + n}.0.{ROUTER_INDEX}/24", "dev", dev)
            self.ip_in(ns, "addr", "replace", f"fd{77 + n}::{ROUTER_INDEX}/64", "dev", dev, "nodad")
        _run_checked([
            self.ip_bin, "netns", "exec", ns, "sh", "-c",
            "echo 1 > /proc/sys/net/ipv4/ip_forward && echo 1 > /proc/sys/net/ipv6/conf/all/forwarding",
        ])  # fmt: skip
        return ns

    def ip_in(self, ns: str, *args: str) -> str:
        """Run ``ip -n ns args...`` (configuration only, no traffic)."""
        return _run_checked([self.ip_bin, "-n", ns, *args])

    def firewall_tools(self) -> list[str]:
        tools = [t for t in ("iptables", "ip6tables") if shutil.which(t) is not None]
        if "iptables" not in tools:
            raise LabUnavailable("`iptables` is not installed (needed for packet loss)")
        return tools

    def process_env(self, host: Host, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        env = dict(os.environ)
        # Lab processes use the test interpreter and its scripts (`python`, `ollana`),
        # not whatever a shim would pick, and can import the repo (`tests.fakeollama`).
        bin_dir = str(Path(sys.executable).parent)
        env["PATH"] = os.pathsep.join([bin_dir, env.get("PATH", os.defpath)])
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in [str(REPO_ROOT), env.get("PYTHONPATH", "")] if p
        )
        env["PYTHONUNBUFFERED"] = "1"  # logs must show lines as they happen
        # A proxy outside the lab is unreachable and off-limits: talk directly.
        for var in _PROXY_VARS:
            env.pop(var, None)
            env.pop(var.upper(), None)
        env["NO_PROXY"] = env["no_proxy"] = "*"
        # Hosts share one filesystem; give each its own state dirs, as separate machines.
        for var, sub in (
            ("XDG_RUNTIME_DIR", "run"),
            ("XDG_STATE_HOME", "state"),
            ("XDG_CONFIG_HOME", "config"),
            ("XDG_CACHE_HOME", "cache"),
            ("XDG_DATA_HOME", "data"),
            ("TMPDIR", "tmp"),
        ):
            path = host.dir / "home" / sub
            path.mkdir(parents=True, exist_ok=True, mode=0o700)
            env[var] = str(path)
        if extra:
            env.update(extra)
        return env

    def log_tails(self, lines: int = 40) -> str:
        """The last lines of every host log, for printing when a test fails."""
        parts: list[str] = []
        for host in self.hosts:
            for name in host.log_names():
                header = f"===== {host.name} ({host.ip if host.ipv4 else host.ip6}) {name}.log ====="
                parts.append(f"{header}\n{_tail(host.read_log(name), lines)}")
        return "\n".join(parts) if parts else "(no lab logs)"

    def _add_namespace(self, ns: str) -> None:
        _run_checked([self.ip_bin, "netns", "add", ns])
        self._namespaces.append(ns)

    def close(self) -> None:
        """Kill every lab process and delete every lab namespace. Idempotent."""
        if self._closed:
            return
        self._closed = True
        errors: list[str] = []
        try:
            self._stop_processes()
        except Exception as exc:  # noqa: BLE001 - teardown must go on: namespaces still need deleting
            errors.append(f"stopping processes: {exc!r}")
        for ns in self._namespaces:
            try:
                _kill_namespace_processes(self.ip_bin, ns, grace=STOP_GRACE)
            except Exception as exc:  # noqa: BLE001 - teardown goes on (collected, raised at the end)
                errors.append(f"killing processes in {ns}: {exc!r}")
        # Hosts first: deleting a host also deletes its veth pair out of the hub.
        for ns in reversed(self._namespaces):
            try:
                _run_checked([self.ip_bin, "netns", "del", ns])
            except Exception as exc:  # noqa: BLE001 - teardown goes on (collected, raised at the end)
                errors.append(f"deleting {ns}: {exc!r}")
        self._namespaces.clear()
        if not self._keep_logs:
            shutil.rmtree(self.log_dir, ignore_errors=True)
        if errors:
            raise LabError("lab teardown was incomplete:\n" + "\n".join(errors))

    def _stop_processes(self) -> None:
        procs = [p.popen for host in self.hosts for p in host._procs]
        running = [p for p in procs if p.poll() is None]
        for popen in running:
            _signal_group(popen.pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE
        for popen in running:
            try:
                popen.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _signal_group(popen.pid, signal.SIGKILL)
                popen.wait()
        for popen in procs:
            popen.wait()  # reap, so no zombie outlives the lab
