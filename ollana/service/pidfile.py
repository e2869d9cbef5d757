"""The pid file and the state file next to it.

The pid file is held with ``flock`` for the process's whole life. That lock, not ``kill(pid, 0)``,
decides whether ollana runs: a pid file nobody holds is stale even when its pid was reused by an
unrelated process, so nothing ever signals a process ollana did not start. The kernel releases
the lock when the process exits, which is how ``ollana stop`` knows it is gone.

Next to it, the state file ``<pid file>.json`` records the pid, role, listen address and grace
period, written once the node serves, so ``ollana status`` can ask the node itself
(``GET /ollana/v1/status``) for its role, uptime and peers.
"""

from __future__ import annotations

import contextlib
import enum
import fcntl
import json
import os
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import structlog

from ollana.errors import StartupError
from ollana.files import write_atomic

if TYPE_CHECKING:
    from ollana.runtime import Ready

log = structlog.get_logger(__name__)

PID_FILE_NAME: Final = "ollana.pid"
ROOT_PID_FILE: Final = Path("/run") / PID_FILE_NAME
PID_FILE_MODE: Final = 0o644
# A concurrent ``status`` holds a shared lock for an instant; taking the pid file retries this long.
LOCK_RETRY: Final = 0.5


class AlreadyRunning(StartupError):
    """Another ollana holds the pid file."""

    def __init__(self, path: Path, pid: int | None) -> None:
        self.path = path
        self.pid = pid
        who = f"pid {pid}" if pid is not None else "a process that has not written its pid yet"
        super().__init__(f"ollana is already running ({who}, pid file {path}); stop it first with `ollana stop`")


def default_pid_file(env: Mapping[str, str], *, is_root: bool, state_dir: Path) -> Path:
    """/run/ollana.pid as root, else $XDG_RUNTIME_DIR/ollana.pid, else in the state dir."""
    if is_root:
        return ROOT_PID_FILE
    if env.get("XDG_RUNTIME_DIR"):
        return Path(env["XDG_RUNTIME_DIR"]) / PID_FILE_NAME
    return state_dir / PID_FILE_NAME


def state_file_for(pid_file: Path) -> Path:
    """Where the daemon records how to reach it: the pid file's name plus ``.json``."""
    return pid_file.with_name(pid_file.name + ".json")


class Liveness(enum.Enum):
    RUNNING = "running"
    DEAD = "dead"  # the pid file remains but nobody holds it
    NOT_RUNNING = "not running"  # no pid file


@dataclass(frozen=True, slots=True)
class PidFileState:
    path: Path
    liveness: Liveness
    pid: int | None


def parse_pid(data: bytes) -> int | None:
    text = data.decode("ascii", "replace").strip().splitlines()
    if not text:
        return None
    try:
        pid = int(text[0])
    except ValueError:
        return None
    return pid if pid > 0 else None


def read_fd(fd: int) -> bytes:
    return os.pread(fd, 64, 0)


def is_held(fd: int) -> bool:
    """Whether another open file (a running ollana) holds the lock on this pid file."""
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    fcntl.flock(fd, fcntl.LOCK_UN)
    return False


def read_pid_file(path: Path) -> PidFileState:
    """Read a pid file without changing it. Raises OSError when it exists but cannot be read."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return PidFileState(path, Liveness.NOT_RUNNING, None)
    try:
        held = is_held(fd)
        pid = parse_pid(read_fd(fd))
    finally:
        os.close(fd)
    return PidFileState(path, Liveness.RUNNING if held else Liveness.DEAD, pid)


class PidFile:
    """The pid file of the running process, locked for its whole life."""

    def __init__(self, path: Path, fd: int, replaced_pid: int | None) -> None:
        self.path = path
        self._fd = fd
        # The pid named by a stale pid file this one replaced, for the notice.
        self.replaced_pid = replaced_pid

    @classmethod
    def acquire(cls, path: Path, *, retry: float = LOCK_RETRY) -> PidFile:
        """Create and lock ``path`` and write our pid into it.

        Raises AlreadyRunning when a live ollana holds it, StartupError when it cannot be written.
        A stale pid file (nobody holds its lock) is taken over; ``replaced_pid`` names its pid.
        """
        deadline = time.monotonic() + retry
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            while True:
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, PID_FILE_MODE)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    pid = parse_pid(read_fd(fd))
                    os.close(fd)
                    if time.monotonic() >= deadline:
                        raise AlreadyRunning(path, pid) from None
                    time.sleep(0.02)
                    continue
                if not _same_file(fd, path):
                    # The previous owner removed the file between our open and our lock.
                    os.close(fd)
                    continue
                break
            previous = parse_pid(read_fd(fd))
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
            with contextlib.suppress(OSError):
                os.fchmod(fd, PID_FILE_MODE)  # readable by `ollana status` run as anyone
        except OSError as exc:
            raise StartupError(f"cannot write the pid file {path}: {exc.strerror or exc}") from exc
        stale = previous if previous is not None and previous != os.getpid() else None
        return cls(path, fd, stale)

    @property
    def state_file(self) -> Path:
        return state_file_for(self.path)

    def write_state(self, ready: Ready, *, grace: float, log_file: Path | None) -> None:
        """Record how to reach this node (read by ``status``, and by ``stop`` for the grace)."""
        state = {
            "pid": os.getpid(),
            "role": ready.role.value,
            "listen_host": ready.listen.host,
            "listen_port": ready.listen.port,
            "node_id": ready.node_id,
            "scheme": ready.scheme,
            "cert_file": ready.cert_file,
            "key_file": ready.key_file,
            "grace_s": grace,
            "log_file": str(log_file) if log_file is not None else None,
            "started_at": time.time(),
        }
        try:
            write_atomic(self.state_file, (json.dumps(state) + "\n").encode(), PID_FILE_MODE)
        except OSError as exc:
            log.warning("state_file_not_written", path=str(self.state_file), error=exc.strerror or str(exc))

    def remove(self) -> None:
        """Remove the pid and state files if they are still ours.

        The lock stays held until the process exits, so ``stop`` returns only once it is gone.
        """
        with contextlib.suppress(OSError):
            if _same_file(self._fd, self.path):
                with contextlib.suppress(FileNotFoundError):
                    self.state_file.unlink()
                self.path.unlink()


def _same_file(fd: int, path: Path) -> bool:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    own = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (own.st_dev, own.st_ino)


def read_state(pid_file: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(state_file_for(pid_file).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


@contextlib.contextmanager
def hold(path: Path | None) -> Iterator[None]:
    """For the foreground: hold ``path`` (if any) while the node runs (its runtime record, written
    by the node itself, goes next to it: ``ollana.service.record``)."""
    if path is None:
        yield
        return
    pid_file = PidFile.acquire(Path(os.path.abspath(path)))
    if pid_file.replaced_pid is not None:
        log.warning("stale_pid_file_replaced", path=str(path), stale_pid=pid_file.replaced_pid)
    try:
        yield
    finally:
        pid_file.remove()
