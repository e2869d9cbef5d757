"""The fake's mutable state for tests: behaviour knobs and the record of every request."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import time
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, TypeVar

T = TypeVar("T")

DEFAULT_ERROR: Final = "an error was encountered while running the model: unexpected EOF"


@dataclass(slots=True)
class Knobs:
    """What tests can turn. Line counts are stream lines already written (final line included)."""

    first_byte_delay: float = 0.0  # seconds before every inference answer, loaded model or not
    load_delay: float = 0.0  # seconds to load a model /api/ps does not list; one load is shared
    num_parallel: int = 0  # requests one model serves at once (OLLAMA_NUM_PARALLEL); 0: no limit
    hold: bool = False  # requests that have their slot and model write nothing until it is off
    chunk_delay: float = 0.0  # seconds between stream lines (and per token when not streaming)
    generation_time: float = 0.0  # seconds per generation, spread over its tokens (+ chunk_delay)
    tokens: int = 8  # content chunks per generate/chat; the stream has tokens + 1 lines
    split_chunks: bool = False  # write each line in two writes, split mid-line
    split_delay: float = 0.0  # pause between the two halves of a split line
    error_after: int | None = None  # after N lines write {"error": ...} and end the stream
    error_message: str = DEFAULT_ERROR
    die_after: int | None = None  # after N lines abort the TCP connection mid-body
    fail_status: int | None = None  # answer every /api route with this status
    fail_message: str | None = None  # error text for fail_status (default by status)
    context_size: int | None = None  # length of generate's final "context" array

    def update(self, values: Mapping[str, Any]) -> None:
        """Set knobs from a JSON-ish mapping, refusing unknown names and wrong types."""
        kinds = {f.name: str(f.type) for f in dataclasses.fields(self)}
        unknown = sorted(set(values) - set(kinds))
        if unknown:
            raise ValueError(f"unknown knob(s): {', '.join(unknown)}")
        checked = {name: _coerce(name, kinds[name], value) for name, value in values.items()}
        for name, value in checked.items():  # all or nothing
            setattr(self, name, value)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _coerce(name: str, kind: str, value: Any) -> Any:
    optional = "None" in kind
    if value is None:
        if optional:
            return None
        raise ValueError(f"knob {name!r} cannot be null")
    if kind.startswith("float") and isinstance(value, (int, float)) and not isinstance(value, bool):
        if value < 0:
            raise ValueError(f"knob {name!r} must be >= 0")
        return float(value)
    if kind.startswith("int") and isinstance(value, int) and not isinstance(value, bool):
        if value < 0:
            raise ValueError(f"knob {name!r} must be >= 0")
        return value
    if kind.startswith("bool") and isinstance(value, bool):
        return value
    if kind.startswith("str") and isinstance(value, str):
        return value
    raise ValueError(f"knob {name!r} expects {kind}, got {value!r}")


@dataclass(slots=True)
class RequestRecord:
    """One request as it reached the fake. `body_*` cover the bytes the fake read."""

    id: int
    method: str
    path: str
    query_string: str
    http_version: str
    headers: list[tuple[str, str]]  # arrival order, duplicates kept
    peer: tuple[str, int]
    connection: int  # 1-based id of the TCP connection it came on
    started_at: float
    body_size: int = 0
    status: int | None = None
    completed: bool = False  # response fully written
    disconnected: bool = False  # handler cancelled because the client went away first
    aborted: bool = False  # the fake cut the connection on purpose (die_after)
    finished_at: float | None = None
    _hash: Any = field(default_factory=hashlib.sha256, repr=False)

    @property
    def body_sha256(self) -> str:
        return str(self._hash.hexdigest())

    def header(self, name: str) -> str | None:
        """First value of a header, case-insensitively."""
        return next((v for k, v in self.headers if k.lower() == name.lower()), None)

    def feed(self, chunk: bytes) -> None:
        self.body_size += len(chunk)
        self._hash.update(chunk)

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "method": self.method,
            "path": self.path,
            "query_string": self.query_string,
            "http_version": self.http_version,
            "headers": [list(pair) for pair in self.headers],
            "peer": list(self.peer),
            "connection": self.connection,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "body_size": self.body_size,
            "body_sha256": self.body_sha256,
            "status": self.status,
            "completed": self.completed,
            "disconnected": self.disconnected,
            "aborted": self.aborted,
        }


Predicate = Callable[[list[RequestRecord]], "T | None"]


class Recorder:
    """Keeps the records and wakes tests waiting for a condition on them (no polling)."""

    def __init__(self) -> None:
        self.records: list[RequestRecord] = []
        self._connections: weakref.WeakKeyDictionary[object, int] = weakref.WeakKeyDictionary()
        self._peers: list[tuple[str, int]] = []
        self._waiters: list[tuple[Predicate[Any], asyncio.Future[Any]]] = []

    def reset(self) -> None:
        self.records.clear()
        self._connections = weakref.WeakKeyDictionary()
        self._peers.clear()
        self.changed()

    @property
    def connections(self) -> int:
        return len(self._peers)

    @property
    def peers(self) -> list[tuple[str, int]]:
        return list(self._peers)

    def connection_id(self, transport: object, peer: tuple[str, int]) -> int:
        # Keyed by the connection's transport object: a peer port can be reused, it cannot.
        if transport not in self._connections:
            self._peers.append(peer)
            self._connections[transport] = len(self._peers)
        return self._connections[transport]

    def start(self, **fields: Any) -> RequestRecord:
        record = RequestRecord(id=len(self.records) + 1, started_at=time.time(), **fields)
        self.records.append(record)
        self.changed()
        return record

    def changed(self) -> None:
        for predicate, fut in list(self._waiters):
            if fut.done():
                continue
            result = predicate(self.records)
            if result:
                fut.set_result(result)

    async def wait_for(self, predicate: Predicate[T], timeout: float = 10.0) -> T:
        """Return predicate(records) as soon as it is truthy; TimeoutError after `timeout`."""
        result = predicate(self.records)
        if result:
            return result
        fut: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        entry = (predicate, fut)
        self._waiters.append(entry)
        try:
            async with asyncio.timeout(timeout):
                return await fut
        except TimeoutError:
            summary = [
                (r.method, r.path, r.status, r.completed, r.disconnected) for r in self.records
            ]
            raise TimeoutError(f"condition not met in {timeout}s; requests: {summary}") from None
        finally:
            self._waiters.remove(entry)
