"""The transport aiohttp's protocol writes to, in front of the real one: it tells the
connection's guard (``connguard.py``) whether a response began and whether aiohttp paused
reading."""

from __future__ import annotations

import asyncio
from typing import Any, Final, Protocol

from aiohttp import web

_CONTINUE: Final = b"HTTP/1.1 100"  # an interim answer is not the response


class Watcher(Protocol):
    responded: bool
    reading_paused: bool

    def resumed(self) -> None: ...

    def request_started(self, request: web.BaseRequest) -> None: ...

    def request_ended(self) -> None: ...


class GuardedTransport(asyncio.Transport):
    """The transport aiohttp's protocol writes to: tells the guard whether a response began
    and whether aiohttp paused reading (then a quiet body is not the client's fault)."""

    __slots__ = ("_t", "watcher")

    def __init__(self, transport: asyncio.Transport, watcher: Watcher) -> None:
        super().__init__()
        self._t = transport
        self.watcher = watcher

    def write(self, data: bytes | bytearray | memoryview) -> None:
        watcher = self.watcher
        if not watcher.responded and data[:12] != _CONTINUE:  # (bytes-likes compare by content)
            watcher.responded = True
        self._t.write(data)

    def writelines(self, list_of_data: Any) -> None:
        self.watcher.responded = True
        self._t.writelines(list_of_data)

    def pause_reading(self) -> None:
        self.watcher.reading_paused = True
        self._t.pause_reading()

    def resume_reading(self) -> None:
        self.watcher.resumed()
        self._t.resume_reading()

    def is_reading(self) -> bool:
        return self._t.is_reading()

    def write_eof(self) -> None:
        self._t.write_eof()

    def can_write_eof(self) -> bool:
        return self._t.can_write_eof()

    def abort(self) -> None:
        self._t.abort()

    def close(self) -> None:
        self._t.close()

    def is_closing(self) -> bool:
        return self._t.is_closing()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._t.get_extra_info(name, default)

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._t.set_write_buffer_limits(high, low)

    def get_write_buffer_size(self) -> int:
        return self._t.get_write_buffer_size()

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self._t.get_write_buffer_limits()

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._t.set_protocol(protocol)

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._t.get_protocol()
