"""The one logging configuration, and the ``OLLANA_LOG`` directive parser.

structlog renders; the standard library's logger hierarchy does the filtering, so an OLLANA_LOG
directive such as ``info,ollana.discovery=debug,aiohttp=warn`` maps one-to-one onto logger levels
(and reaches third-party loggers like aiohttp's and zeroconf's too).
"""

from __future__ import annotations

import asyncio
import logging
import logging.handlers
import sys
import time
from dataclasses import dataclass
from typing import IO, Final

import structlog

from ollana.config import LogFormat
from ollana.errors import ConfigError

TRACE: Final = 5
OFF: Final = logging.CRITICAL + 10
LEVELS: Final = {
    "trace": TRACE,
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warn": logging.WARNING,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "off": OFF,
}
DEFAULT_DIRECTIVES: Final = "info"
# Third-party loggers are quiet unless a directive names them: their info lines duplicate ours.
_QUIET_BY_DEFAULT: Final = ("aiohttp", "asyncio", "zeroconf")


@dataclass(frozen=True, slots=True)
class LogSpec:
    default: int = logging.INFO
    targets: tuple[tuple[str, int], ...] = ()


def parse_directives(text: str | None) -> LogSpec:
    """Parse RUST_LOG-style directives: ``LEVEL`` and/or ``TARGET=LEVEL``, comma-separated."""
    if text is None or not text.strip():
        text = DEFAULT_DIRECTIVES
    default = logging.INFO
    targets: list[tuple[str, int]] = []
    for raw in text.split(","):
        directive = raw.strip()
        if not directive:
            continue
        target, eq, level_name = directive.partition("=")
        if not eq:
            level_name, target = directive, ""
        level = LEVELS.get(level_name.strip().lower())
        if level is None:
            raise ConfigError(
                f"invalid OLLANA_LOG directive {directive!r}: level must be one of "
                + ", ".join(k for k in LEVELS if k != "warning")
            )
        # Accept Rust's path separator so RUST_LOG habits carry over.
        target = target.strip().replace("::", ".")
        if eq and not target:
            raise ConfigError(f"invalid OLLANA_LOG directive {directive!r}: empty target")
        if target:
            targets.append((target, level))
        else:
            default = level
    return LogSpec(default, tuple(targets))


def _level_name(level: int) -> str:
    names = {v: k for k, v in LEVELS.items() if k != "warning"}
    return names.get(level, str(level))


class _Output:
    """Where ollana's own log lines go: the installed stdlib handler's stream.

    Lines written while an event loop runs are flushed once at the end of the loop's current
    pass (one system call for all the lines of a busy moment, no visible delay); without a loop,
    at once. A log file that logrotate moved is noticed within a second (and at once on SIGHUP).
    """

    REOPEN_CHECK: Final = 1.0

    def __init__(self, handler: logging.Handler) -> None:
        self.handler = handler
        self._flush_scheduled = False
        self._next_reopen_check = 0.0

    def write(self, line: str) -> None:
        h = self.handler
        h.acquire()
        try:
            if isinstance(h, logging.handlers.WatchedFileHandler):
                now = time.monotonic()
                if now >= self._next_reopen_check:
                    self._next_reopen_check = now + self.REOPEN_CHECK
                    h.reopenIfNeeded()
            stream = getattr(h, "stream", None)
            if stream is None:
                return
            stream.write(line + "\n")
        finally:
            h.release()
        if self._flush_scheduled:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.flush()
            return
        self._flush_scheduled = True
        loop.call_soon(self.flush)

    def flush(self) -> None:
        self._flush_scheduled = False
        self.handler.flush()


class _Sink:
    """structlog's output for ollana's own loggers: renders nothing, writes a finished line.

    It writes through the installed stdlib handler (same stream, same lock, same reopen-on-rotate)
    without building a LogRecord per event: a per-request log line must stay cheap.
    """

    __slots__ = ("_out", "name", "std")

    def __init__(self, name: str, out: _Output) -> None:
        self.name = name
        self.std = logging.getLogger(name)
        self._out = out

    def write(self, line: str) -> None:
        self._out.write(line)

    trace = debug = info = warning = warn = error = critical = exception = msg = log = write


class Logger(structlog.BoundLogger):
    """structlog's bound logger with a ``trace`` level below debug (raw packet bytes and the like).

    Callers check ``log.tracing()`` before building costly trace fields; the level filter drops
    the event otherwise.
    """

    def trace(self, event: str | None = None, **kw: object) -> object:
        # Checked here, not only by the filter: an unconfigured logger has no trace method.
        if not self.tracing():
            return None
        return self._proxy_to_logger("trace", event, **kw)

    def tracing(self) -> bool:
        name = getattr(self._logger, "name", None)
        return logging.getLogger(name).isEnabledFor(TRACE) if isinstance(name, str) else False


def get_logger(name: str) -> Logger:
    """A module's logger; ``log = get_logger(__name__)`` at module scope (configured at startup)."""
    logger: Logger = structlog.wrap_logger(None, wrapper_class=Logger, logger_factory_args=(name,))
    return logger


def _filter_by_target(logger: _Sink, method: str, event: structlog.types.EventDict) -> structlog.types.EventDict:
    # The stdlib hierarchy holds the levels (it caches lookups), so directives apply to both paths.
    if not logger.std.isEnabledFor(_METHOD_LEVELS.get(method, logging.INFO)):
        raise structlog.DropEvent
    event["level"] = "warning" if method == "warn" else method
    event["logger"] = logger.name
    return event


_METHOD_LEVELS: Final = {
    "trace": TRACE,
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "warn": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
    "exception": logging.ERROR,
}


def configure(
    spec: LogSpec,
    fmt: LogFormat = LogFormat.AUTO,
    *,
    stream: IO[str] | None = None,
    log_file: str | None = None,
) -> logging.Handler:
    """Configure logging once, at startup (after daemonising). Returns the installed handler."""
    logging.addLevelName(TRACE, "TRACE")
    handler: logging.Handler
    if log_file is not None:
        # WatchedFileHandler reopens the file when logrotate moves it, even without SIGHUP.
        handler = logging.handlers.WatchedFileHandler(log_file, encoding="utf-8")
        tty = False
    else:
        out = stream if stream is not None else sys.stderr
        handler = logging.StreamHandler(out)
        tty = bool(getattr(out, "isatty", lambda: False)())
    use_json = fmt is LogFormat.JSON or (fmt is LogFormat.AUTO and not tty)
    timestamper = structlog.processors.TimeStamper(fmt="iso", utc=True)
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer() if use_json else structlog.dev.ConsoleRenderer(colors=tty)
    )
    # Third-party loggers (aiohttp, asyncio, zeroconf) go through the stdlib and this formatter.
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[structlog.stdlib.add_log_level, structlog.stdlib.add_logger_name, timestamper],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    apply_levels(spec)

    output = _Output(handler)
    structlog.configure(
        processors=[
            _filter_by_target,
            timestamper,
            structlog.processors.format_exc_info,
            renderer,
        ],
        logger_factory=lambda name=None, *_a: _Sink(str(name or "ollana"), output),
        wrapper_class=Logger,
        # Not cached: a logger first used before configure() (or reconfigured in tests and after
        # daemonising) must follow the current configuration.
        cache_logger_on_first_use=False,
    )
    return handler


def apply_levels(spec: LogSpec) -> None:
    """Set logger levels from a spec; also used to reload levels on SIGHUP."""
    root = logging.getLogger()
    root.setLevel(spec.default)
    named = {t for t, _ in spec.targets}
    for name in _QUIET_BY_DEFAULT:
        if name not in named:
            logging.getLogger(name).setLevel(max(spec.default, logging.WARNING))
    for target, level in spec.targets:
        logging.getLogger(target).setLevel(level)


def describe(spec: LogSpec) -> str:
    parts = [_level_name(spec.default)] + [f"{t}={_level_name(lvl)}" for t, lvl in spec.targets]
    return ",".join(parts)
