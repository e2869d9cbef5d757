"""``ollana serve -d``: detaching with python-daemon, readiness, and what SIGHUP reloads.

``serve -d`` forks once before any event loop exists. The parent stays on the terminal and
waits on a pipe; the child enters python-daemon's ``DaemonContext`` (which forks twice more and
calls ``setsid``), configures logging to the log file, takes the pid file (``ollana.service.pidfile``),
runs the node, and reports back through the pipe: notices, then exactly one of "ready" or
"error". So the parent exits 0 only once the daemon serves, and otherwise prints the daemon's own
error.

SIGHUP (in the foreground too) reopens the log file and reloads log levels: from the state dir's
``log_levels`` file when it exists, else from OLLANA_LOG as it was at start.
"""

from __future__ import annotations

import contextlib
import json
import logging
import logging.handlers
import os
import select
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Final, TypeAlias

import structlog

from ollana import log as logconf
from ollana.config import Config, LogFormat
from ollana.errors import ConfigError, StartupError, print_error
from ollana.service.pidfile import PidFile
from ollana.service.record import NodeFiles

if TYPE_CHECKING:
    from ollana.runtime import Ready

log = structlog.get_logger(__name__)

LOG_FILE_NAME: Final = "serve.log"
ROOT_LOG_FILE: Final = Path("/var/log/ollana") / LOG_FILE_NAME
# OLLANA_LOG directives in the state dir; when present they override OLLANA_LOG, at start and on
# every SIGHUP (so levels can change without a restart).
LOG_LEVELS_FILE: Final = "log_levels"
DAEMON_UMASK: Final = 0o027
# How long the parent waits for the daemon to report (role detection takes about a second).
READY_TIMEOUT: Final = 30.0
EXIT_OK: Final = 0
EXIT_FAILED: Final = 1
EXIT_CONFIG: Final = 2
EXIT_INTERNAL: Final = 70


@dataclass(frozen=True, slots=True)
class Paths:
    pid_file: Path
    log_file: Path


def default_log_file(*, is_root: bool, state_dir: Path) -> Path:
    """/var/log/ollana/serve.log as root, else serve.log in the state dir."""
    return ROOT_LOG_FILE if is_root else state_dir / LOG_FILE_NAME


def absolute(config: Config, paths: Paths) -> tuple[Config, Paths]:
    """Make every path absolute: the daemon changes its working directory to /."""
    return (
        replace(config, state_dir=Path(os.path.abspath(config.state_dir))),
        Paths(Path(os.path.abspath(paths.pid_file)), Path(os.path.abspath(paths.log_file))),
    )


# -- log levels and SIGHUP -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LogLevels:
    """Where log levels come from: the state dir's ``log_levels`` file if present, else OLLANA_LOG."""

    env_spec: logconf.LogSpec
    file: Path

    def load(self) -> tuple[logconf.LogSpec, str]:
        """The levels to apply and their source. Raises ConfigError naming the file if it is bad."""
        try:
            text = self.file.read_text(encoding="utf-8")
        except (FileNotFoundError, NotADirectoryError):
            return self.env_spec, "OLLANA_LOG"
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read the log levels file {self.file}: {exc}") from exc
        lines = [ln.split("#", 1)[0].strip() for ln in text.splitlines()]
        directives = ",".join(ln for ln in lines if ln)
        if not directives:
            return self.env_spec, "OLLANA_LOG"
        try:
            return logconf.parse_directives(directives), str(self.file)
        except ConfigError as exc:
            raise ConfigError(f"{self.file}: {exc}") from None


def configure_logging(spec: logconf.LogSpec, fmt: LogFormat, log_file: Path | None) -> logging.Handler:
    """Log to ``log_file`` (its directory created if missing) or, without one, to stderr.

    Raises OSError when the file cannot be opened.
    """
    if log_file is None:
        return logconf.configure(spec, fmt)
    log_file.parent.mkdir(parents=True, exist_ok=True, mode=0o750)
    return logconf.configure(spec, fmt, log_file=str(log_file))


class Reloader:
    """What SIGHUP does: reopen the log file (after logrotate moved it) and reload log levels."""

    def __init__(self, handler: logging.Handler | None, levels: LogLevels, applied: logconf.LogSpec) -> None:
        self._handler = handler
        self._levels = levels
        self._applied = applied

    def reload(self) -> None:
        if isinstance(self._handler, logging.handlers.WatchedFileHandler):
            reopen(self._handler)
            log.info("log_reopened", file=self._handler.baseFilename)
        self._reload_levels()

    def _reload_levels(self) -> None:
        try:
            spec, source = self._levels.load()
        except ConfigError as exc:
            log.error("log_levels_not_reloaded", error=str(exc))
            return
        # Targets named before but not now go back to inheriting from their parents.
        dropped = {t for t, _ in self._applied.targets} - {t for t, _ in spec.targets}
        for target in dropped:
            logging.getLogger(target).setLevel(logging.NOTSET)
        logconf.apply_levels(spec)
        self._applied = spec
        log.info("log_levels_reloaded", levels=logconf.describe(spec), source=source)


def reopen(handler: logging.handlers.WatchedFileHandler) -> None:
    """Reopen the handler's file now, whether or not it moved."""
    handler.acquire()
    try:
        handler.dev, handler.ino = -1, -1  # forces reopenIfNeeded to reopen
        with contextlib.suppress(OSError):  # the next record retries opening it
            handler.reopenIfNeeded()
    finally:
        handler.release()


# -- daemonising ---------------------------------------------------------------------------------

# run_node(config, on_ready, on_hangup, files): runs the node until SIGTERM/SIGINT; raises ConfigError or
# StartupError when it cannot start. cli.py owns it (the event loop and its signal handlers).
RunNode: TypeAlias = "Callable[[Config, Callable[[Ready], None], Callable[[], None], NodeFiles], None]"


class _Reporter:
    """The daemon's end of the readiness pipe: JSON lines, a final "ready" or "error"."""

    def __init__(self, fd: int) -> None:
        self._fd: int | None = fd

    def _send(self, message: dict[str, Any], *, final: bool) -> None:
        if self._fd is None:
            return
        try:
            os.write(self._fd, (json.dumps(message) + "\n").encode("utf-8"))
        except OSError:
            final = True  # the parent is gone (Ctrl-C): nobody to report to
        if final:
            self.close()

    def notice(self, text: str) -> None:
        self._send({"notice": text}, final=False)

    def ready(self, ready: Ready) -> None:
        self._send({"ready": {"pid": os.getpid(), "role": ready.role.value, "listen": str(ready.listen)}}, final=True)

    def error(self, text: str, code: int) -> None:
        self._send({"error": text, "code": code}, final=True)

    def close(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None


def start(config: Config, paths: Paths, levels: LogLevels, run_node: RunNode) -> int:
    """``serve -d``: start the daemon; return the exit code once it serves or has failed."""
    import daemon as python_daemon  # noqa: F401  (fail here, on the terminal, if missing)

    config, paths = absolute(config, paths)
    sys.stdout.flush()
    sys.stderr.flush()
    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - runs in the forked process
        code = EXIT_INTERNAL
        try:
            os.close(read_end)
            code = _daemon_main(write_end, config, paths, levels, run_node)
        finally:
            os._exit(code)
    os.close(write_end)
    # The child exits as soon as python-daemon has forked the daemon off; reap it.
    os.waitpid(child, 0)
    with os.fdopen(read_end, "rb") as pipe:
        return _await_ready(pipe, paths, READY_TIMEOUT)


def _await_ready(pipe: IO[bytes], paths: Paths, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    buffer = b""
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            print_error(f"the daemon did not report that it serves within {timeout:g} s; see {paths.log_file}")
            return EXIT_FAILED
        readable, _, _ = select.select([pipe], [], [], remaining)
        if not readable:
            continue
        chunk = os.read(pipe.fileno(), 65536)
        if not chunk:
            print_error(f"the daemon exited during start-up; see {paths.log_file}")
            return EXIT_FAILED
        buffer += chunk
        while b"\n" in buffer:
            line, buffer = buffer.split(b"\n", 1)
            try:
                message = json.loads(line)
            except ValueError:
                continue
            if "notice" in message:
                print(f"ollana: {message['notice']}", file=sys.stderr, flush=True)
            elif "ready" in message:
                r = message["ready"]
                print(f"ollana started: pid {r['pid']}, {r['role']} on {r['listen']} "
                      f"(pid file {paths.pid_file}, log {paths.log_file})", flush=True)
                return EXIT_OK
            elif "error" in message:
                print_error(str(message["error"]))
                return int(message.get("code") or EXIT_FAILED)


def _daemon_main(report_fd: int, config: Config, paths: Paths, levels: LogLevels, run_node: RunNode) -> int:
    import daemon as python_daemon

    reporter = _Reporter(report_fd)
    context = python_daemon.DaemonContext(
        working_directory="/",
        umask=DAEMON_UMASK,
        # Always detach, even when started by init or with a socket on stdin.
        detach_process=True,
        files_preserve=[report_fd],
        stdin=None,  # /dev/null
        stdout=None,
        stderr=None,
        # Until the event loop installs its handlers: SIGTERM exits, SIGHUP is ignored.
        signal_map={
            signal.SIGTSTP: None,
            signal.SIGTTIN: None,
            signal.SIGTTOU: None,
            signal.SIGHUP: None,
            signal.SIGTERM: "terminate",
        },
    )
    try:
        context.open()  # forks twice; only the daemon returns
    except (python_daemon.daemon.DaemonError, OSError) as exc:
        reporter.error(f"cannot become a daemon: {exc}", EXIT_FAILED)
        return EXIT_FAILED
    pid_file: PidFile | None = None
    try:
        try:
            spec, source = levels.load()
        except ConfigError as exc:
            reporter.error(str(exc), EXIT_CONFIG)
            return EXIT_CONFIG
        try:
            handler = configure_logging(spec, config.log_format, paths.log_file)
        except OSError as exc:
            reporter.error(f"cannot open the log file {paths.log_file}: {exc.strerror or exc}", EXIT_FAILED)
            return EXIT_FAILED
        log.info("daemon_starting", pid=os.getpid(), pid_file=str(paths.pid_file),
                 log_levels=logconf.describe(spec), log_levels_source=source)
        pid_file = PidFile.acquire(paths.pid_file)
        if pid_file.replaced_pid is not None:
            log.warning("stale_pid_file_replaced", path=str(paths.pid_file), stale_pid=pid_file.replaced_pid)
            reporter.notice(f"replaced the stale pid file {paths.pid_file} (pid {pid_file.replaced_pid} no longer runs)")
        # The node writes its runtime record next to the pid file itself (service/record.py).
        run_node(config, reporter.ready, Reloader(handler, levels, spec).reload,
                 NodeFiles(paths.pid_file, paths.log_file))
        log.info("daemon_exiting", pid=os.getpid())
        return EXIT_OK
    except ConfigError as exc:
        log.error("startup_failed", error=str(exc))
        reporter.error(str(exc), EXIT_CONFIG)
        return EXIT_CONFIG
    except StartupError as exc:
        log.error("startup_failed", error=str(exc))
        reporter.error(str(exc), EXIT_FAILED)
        return EXIT_FAILED
    except SystemExit:
        # SIGTERM before the event loop took over the signals: python-daemon's handler.
        log.info("daemon_exiting", pid=os.getpid(), reason="signal during start-up")
        reporter.error("the daemon was stopped during start-up", EXIT_FAILED)
        return EXIT_OK
    except BaseException as exc:
        log.exception("daemon_crashed")
        reporter.error(f"unexpected error: {exc!r}; see {paths.log_file}", EXIT_INTERNAL)
        return EXIT_INTERNAL
    finally:
        if pid_file is not None:
            pid_file.remove()
        reporter.close()
        logging.shutdown()
