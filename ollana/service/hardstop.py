"""The hard bound on a node's shutdown: the process ends within ``grace + TEARDOWN`` seconds of
SIGTERM (or SIGINT), whatever is still waiting.

The graceful path (goodbyes, stop accepting, in-flight requests drain for up to ``grace``, close)
is bounded on its own; this is the net under it, for what a bug could still leave waiting: a task
that ignores its cancellation, an event loop blocked in a system call, a worker thread stuck in a
lock (asyncio joins its worker threads at exit without a bound). It is a thread, not a task, so it
fires even when the loop cannot run. It logs what was still waiting (each thread's stack, the
loop's pending tasks: the evidence for a bug report), then ends the process with exit code 1.
``ollana stop`` waits for the grace period plus 5 s, so this fires before it gives up.
"""

from __future__ import annotations

import asyncio
import os
import sys
import threading
import traceback
from collections.abc import Callable
from types import CoroutineType, FrameType
from typing import Any, Final

import structlog

log = structlog.get_logger(__name__)

# After the grace period: tasks wind down (mDNS goodbyes take up to 1 s), sockets close.
TEARDOWN: Final = 4.0
EXIT_OVERDUE: Final = 1
MAX_FRAMES: Final = 8
MAX_TASKS: Final = 32


class HardStop:
    """Armed once shutdown begins; ends the process ``bound`` seconds later unless it has ended."""

    def __init__(self, bound: float, loop: asyncio.AbstractEventLoop,
                 end: Callable[[int], Any] = os._exit) -> None:
        self.bound = bound
        self._loop = loop
        self._end = end  # how the process ends (tests record it instead)
        self._timer: threading.Timer | None = None

    @classmethod
    def after_grace(cls, grace: float, loop: asyncio.AbstractEventLoop) -> HardStop:
        return cls(grace + TEARDOWN, loop)

    def arm(self) -> None:
        """Start the countdown (again SIGTERM: it keeps running from the first)."""
        if self._timer is not None:
            return
        # A daemon thread: it never keeps a process alive that ended on its own.
        self._timer = threading.Timer(self.bound, self._fire)
        self._timer.name, self._timer.daemon = "ollana-hardstop", True
        self._timer.start()

    def disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()

    def _fire(self) -> None:
        try:
            log.error(
                "shutdown_overdue", bound_s=self.bound, code=EXIT_OVERDUE,
                reason="the node did not stop within its grace period and teardown: ending it",
                threads=thread_stacks(sys._current_frames(), threading.enumerate()),
                tasks=pending_tasks(self._loop),
            )
        finally:
            self._end(EXIT_OVERDUE)


def thread_stacks(frames: dict[int, FrameType], threads: list[threading.Thread]) -> dict[str, list[str]]:
    """Each thread's innermost frames (this one's excepted), ``file:line in function``."""
    names = {t.ident: t.name for t in threads}
    me = threading.get_ident()
    return {names.get(ident, str(ident)): frame_lines(frame) for ident, frame in frames.items() if ident != me}


def frame_lines(frame: FrameType | None) -> list[str]:
    summary = traceback.extract_stack(frame, limit=MAX_FRAMES) if frame is not None else []
    return [f"{f.filename}:{f.lineno} in {f.name}" for f in summary]


def pending_tasks(loop: asyncio.AbstractEventLoop) -> list[str]:
    """The loop's pending tasks, each with where it waits (read from another thread: best effort)."""
    try:
        tasks = list(asyncio.all_tasks(loop))[:MAX_TASKS]
        return [f"{t.get_name()}: {awaiting(t.get_coro())}" for t in tasks]
    except Exception as exc:  # noqa: BLE001 - a diagnostic must never stop the exit
        return [f"(tasks unreadable: {exc!r})"]


def awaiting(coro: Any) -> str:
    """Where a coroutine waits: the innermost coroutine of its ``await`` chain, ``file:line in function``."""
    where = "?"
    for _ in range(64):  # an await chain is short; never loop on a strange object
        frame = getattr(coro, "cr_frame", None)
        if frame is not None:
            where = f"{frame.f_code.co_filename}:{frame.f_lineno} in {frame.f_code.co_name}"
        inner = getattr(coro, "cr_await", None)
        if not isinstance(inner, CoroutineType):
            if inner is not None:
                where += f" awaiting {type(inner).__name__}"
            break
        coro = inner
    return where
