"""The runtime record: what a running node leaves so that CLI commands find it without flags.

Every node, foreground or daemon, writes one when it serves and removes it on exit:
``running.json`` in its state dir, and ``<pid file>.json`` next to its pid file when it has one
(the run dir, readable by everyone, where ``ollana status`` has always looked). It says who the
node is (pid, role, listen addresses, state dir, log file, control socket, start time) and how to
ask it (``scheme``, its certificate and key for ``status`` over TLS). A record whose process is gone
(or whose pid now names another process: the start time in /proc tells) is stale and ignored.

Where the commands look, first live record wins (``candidates``, pure):

1. ``--pid-file PATH``: ``PATH.json`` only.
2. ``--state-dir DIR`` / ``OLLANA_HOME``: ``DIR/running.json``, then the run-dir records below,
   keeping only a node that uses DIR.
3. Otherwise this user's own node first: the default pid file's record (``/run/ollana.pid.json``
   as root, ``$XDG_RUNTIME_DIR/ollana.pid.json``, else in the default state dir), ``running.json``
   in the default state dir; then the packaged service's: ``/run/ollana/ollana.pid.json`` (or
   ``PIDFILE`` from /etc/default/ollana), ``running.json`` in ``OLLANA_HOME`` from
   /etc/default/ollana or /etc/conf.d/ollana, and in /var/lib/ollana.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final

from ollana.files import write_atomic

RECORD_FILE: Final = "running.json"
RECORD_MODE: Final = 0o644
SOCKET_NAME: Final = "ollana.sock"
SERVICE_PID_FILE: Final = Path("/run/ollana/ollana.pid")
SERVICE_STATE_DIR: Final = Path("/var/lib/ollana")
# Settings files of the packaged services (packaging/sysv, packaging/openrc): shell assignments.
SETTINGS_FILES: Final = (Path("/etc/default/ollana"), Path("/etc/conf.d/ollana"))


@dataclass(frozen=True, slots=True)
class NodeFiles:
    """Where a node's pid file and log file are (None: it has none), handed to ``app.run``."""

    pid_file: Path | None = None
    log_file: Path | None = None


NO_FILES: Final = NodeFiles()


@dataclass(frozen=True, slots=True)
class RuntimeRecord:
    pid: int
    role: str
    listen: tuple[str, ...]
    state_dir: str
    started_at: float
    pid_file: str | None = None
    log_file: str | None = None
    control_socket: str | None = None
    # /proc/<pid>/stat's start time (clock ticks after boot): tells a reused pid apart.
    proc_start: int | None = None
    node_id: str = ""
    uid: int = -1
    # How ``ollana status`` reaches the node (kept from the older state file).
    listen_host: str = "127.0.0.1"
    listen_port: int = 0
    scheme: str = "http"
    cert_file: str | None = None
    key_file: str | None = None
    grace_s: float = 10.0
    # Where this record was read from (not stored).
    path: str = field(default="", compare=False)

    def document(self) -> dict[str, Any]:
        doc = asdict(self)
        doc.pop("path")
        doc["listen"] = list(self.listen)
        return doc

    @property
    def foreground(self) -> bool:
        return self.pid_file is None


def decode(data: str, path: str = "") -> RuntimeRecord | None:
    """A record from its JSON; None when it is not one (never raises)."""
    try:
        doc = json.loads(data)
        if not isinstance(doc, dict) or not isinstance(doc.get("pid"), int):
            return None
        listen = doc.get("listen")
        if not isinstance(listen, list):
            listen = [f"{doc.get('listen_host', '?')}:{doc.get('listen_port', '?')}"]

        def opt(key: str) -> str | None:
            value = doc.get(key)
            return str(value) if value else None

        return RuntimeRecord(
            pid=doc["pid"], role=str(doc.get("role", "?")), listen=tuple(str(x) for x in listen),
            state_dir=str(doc.get("state_dir") or ""), started_at=float(doc.get("started_at") or 0),
            pid_file=opt("pid_file"), log_file=opt("log_file"), control_socket=opt("control_socket"),
            proc_start=doc["proc_start"] if isinstance(doc.get("proc_start"), int) else None,
            node_id=str(doc.get("node_id") or ""), uid=int(doc.get("uid", -1)),
            listen_host=str(doc.get("listen_host", "127.0.0.1")), listen_port=int(doc.get("listen_port", 0)),
            scheme=str(doc.get("scheme", "http")), cert_file=opt("cert_file"), key_file=opt("key_file"),
            grace_s=float(doc.get("grace_s") or 10.0), path=path,
        )
    except (ValueError, TypeError):
        return None


def record_paths(state_dir: Path, pid_file: Path | None) -> list[Path]:
    """Where a node writes its record."""
    paths = [state_dir / RECORD_FILE]
    if pid_file is not None:
        paths.append(pid_file.with_name(pid_file.name + ".json"))
    return paths


def socket_path(state_dir: Path, pid_file: Path | None) -> Path:
    """The control socket: in the run dir next to the pid file (group-accessible), else in the
    state dir (private to the node's user and root)."""
    if pid_file is not None:
        return pid_file.with_name(pid_file.stem + ".sock")  # /run/ollana/ollana.pid: ollana.sock
    return state_dir / SOCKET_NAME


# --- liveness ----------------------------------------------------------------------------------


def proc_start(pid: int) -> int | None:
    """The start time of process ``pid`` (clock ticks after boot); -1 when it has exited (a zombie
    its parent has not reaped yet); None when /proc does not tell (then ``pid_exists`` decides)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii", errors="replace")
    except OSError:
        return None
    fields = stat.rpartition(")")[2].split()
    try:
        return -1 if fields[0] in ("Z", "X") else int(fields[19])
    except (IndexError, ValueError):
        return None


def pid_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, as another user
    return True


def is_live(record: RuntimeRecord, exists: Callable[[int], bool], start_of: Callable[[int], int | None]) -> bool:
    """Whether the process that wrote ``record`` still runs. Pure, given the two probes."""
    if record.pid <= 0 or not exists(record.pid):
        return False
    if record.proc_start is None:
        return True
    started = start_of(record.pid)
    return started is None or started == record.proc_start


def live(record: RuntimeRecord) -> bool:
    return is_live(record, pid_exists, proc_start)


# --- where to look -----------------------------------------------------------------------------


def parse_settings(text: str) -> dict[str, str]:
    """``KEY=value`` lines of a shell settings file (/etc/default/ollana); comments and anything
    that is not a plain assignment are skipped. Pure."""
    found: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.partition("=")
        key = key.removeprefix("export ").strip()
        if not key.isidentifier():
            continue
        try:
            words = shlex.split(value, comments=True)
        except ValueError:
            continue
        found[key] = words[0] if words else ""
    return found


def read_settings(files: Iterable[Path] = SETTINGS_FILES) -> dict[str, str]:
    settings: dict[str, str] = {}
    for path in files:
        with contextlib.suppress(OSError, UnicodeDecodeError):
            for key, value in parse_settings(path.read_text(encoding="utf-8")).items():
                settings.setdefault(key, value)
    return settings


def candidates(
    *,
    pid_file: Path | None,
    state_dir: Path | None,
    default_pid_file: Path,
    default_state_dir: Path,
    settings: Mapping[str, str],
) -> list[Path]:
    """The record files to read, in order (see the module doc). Pure."""
    if pid_file is not None:
        return record_paths(Path("/"), pid_file)[1:]
    service_pids = [SERVICE_PID_FILE]
    if settings.get("PIDFILE"):
        service_pids.append(Path(settings["PIDFILE"]))
    by_pid = [p.with_name(p.name + ".json") for p in (default_pid_file, *service_pids)]
    if state_dir is not None:
        return _unique([state_dir / RECORD_FILE, *by_pid])
    # This user's own node first (default pid file, default state dir), then the service's.
    homes = [Path(settings["OLLANA_HOME"])] if settings.get("OLLANA_HOME") else []
    return _unique([by_pid[0], default_state_dir / RECORD_FILE, *by_pid[1:],
                    *(h / RECORD_FILE for h in [*homes, SERVICE_STATE_DIR])])


def _unique(paths: Sequence[Path]) -> list[Path]:
    seen: set[Path] = set()
    return [p for p in paths if not (p in seen or seen.add(p))]  # type: ignore[func-returns-value]


def same_dir(a: str | Path, b: str | Path) -> bool:
    return os.path.realpath(a) == os.path.realpath(b)


def find(paths: Iterable[Path], state_dir: Path | None = None,
         alive: Callable[[RuntimeRecord], bool] = live) -> RuntimeRecord | None:
    """The first live record among ``paths`` (of a node using ``state_dir``, when given)."""
    for path in paths:
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue  # absent, or in a state dir this user cannot read
        record = decode(text, str(path))
        if record is None or not alive(record):
            continue
        if state_dir is not None and not same_dir(record.state_dir, state_dir):
            continue
        return record
    return None


# --- writing -----------------------------------------------------------------------------------


def write(record: RuntimeRecord, paths: Iterable[Path]) -> list[Path]:
    """Write the record atomically to each path; returns those written (a failure is skipped)."""
    data = (json.dumps(record.document()) + "\n").encode()
    written = []
    for path in paths:
        try:
            write_atomic(path, data, RECORD_MODE)
        except OSError:
            continue
        written.append(path)
    return written


def remove(paths: Iterable[Path], pid: int) -> None:
    """Remove the records that are still this process's (another node may have replaced one)."""
    for path in paths:
        with contextlib.suppress(OSError, UnicodeDecodeError):
            current = decode(path.read_text(encoding="utf-8"))
            if current is not None and current.pid == pid:
                path.unlink()
