"""FakeOllama: an in-process Ollama double that is faithful on the wire, for ollana's tests.

fake = FakeOllama()
async with fake.serve() as url:          # http://127.0.0.1:<port>
    ...
    await fake.wait_for_requests(1)
    assert fake.requests[0].path == "/api/tags"

One box of a fleet under load (change knobs with configure(), which wakes waiting requests):

fake = FakeOllama(loaded=["llama3.2:1b"], knobs=Knobs(num_parallel=1, load_delay=2.0))
fake.configure(hold=True)                # requests that get a slot write nothing for now
...
await fake.wait_for_running(running=1, queued=1)
fake.configure(hold=False)
"""

from __future__ import annotations

import dataclasses
import socket
import time
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from typing import Any, Final

from aiohttp import web

from . import middleware
from .catalog import Catalog, Model, default_models
from .control import Control
from .cors import CorsPolicy, default_origins
from .gojson import DEFAULT_KEEP_ALIVE
from .inference import Inference
from .manage import Manage
from .openai import OpenAI
from .sched import Scheduler, running_ready
from .state import Knobs, Predicate, Recorder, RequestRecord, T
from .transfer import Transfer
from .wire import error_response

DEFAULT_VERSION: Final = "0.33.0"
# Go's net/http has no idle, read or write timeouts in Ollama and allows 1 MB of headers.
_SERVER_SETTINGS: Final[dict[str, Any]] = {
    "handler_cancellation": True,  # a client disconnect cancels the handler, like ctx.Done()
    "keepalive_timeout": 24 * 3600.0,
    "lingering_time": 0,  # unread bodies are settled the net/http way in middleware.record
    "auto_decompress": False,  # Ollama sees Content-Encoding'd bodies as sent
    "max_line_size": 1 << 20,
    "max_field_size": 1 << 20,
    "access_log": None,
}
_SHUTDOWN_TIMEOUT: Final = 0.5
# Real routes the fake does not model: present so the router answers 405/404 as Ollama does.
_UNMODELLED: Final = (
    ("POST", "/api/me"),
    ("POST", "/api/signout"),
    ("DELETE", "/api/user/keys/{key}"),
    ("POST", "/api/experimental/web_search"),
    ("POST", "/api/experimental/web_fetch"),
    ("GET", "/api/experimental/model-recommendations"),
    ("POST", "/v1/completions"),
    ("POST", "/v1/embeddings"),
    ("POST", "/v1/responses"),
    ("POST", "/v1/images/generations"),
    ("POST", "/v1/images/edits"),
    ("POST", "/v1/audio/transcriptions"),
    ("POST", "/v1/messages"),
)


async def _no_expect(request: web.Request) -> None:
    """net/http answers 100-continue only once the handler reads the body (see RequestBody)."""


async def _unmodelled(request: web.Request) -> web.StreamResponse:
    return error_response(501, f"fakeollama does not model {request.method} {request.path}")


def _as_model(item: Model | str) -> Model:
    return Model.synthetic(item) if isinstance(item, str) else dataclasses.replace(item)


class FakeOllama:
    """Holds all state of one fake server; nothing is shared between instances."""

    def __init__(
        self,
        version: str = DEFAULT_VERSION,
        models: Iterable[Model | str] | None = None,
        hostname: str | None = None,
        origins: Sequence[str] = (),
        knobs: Knobs | None = None,
        loaded: Iterable[str] = (),
    ) -> None:
        """`loaded` names models already in memory at start (and after reset), for 5 minutes."""
        self.version = version
        self.hostname = hostname if hostname is not None else socket.gethostname()
        self._initial_models = [
            _as_model(m) for m in (default_models() if models is None else models)
        ]
        self._initial_knobs = dataclasses.replace(knobs) if knobs is not None else Knobs()
        self._initial_loaded = list(loaded)
        self.catalog = self._fresh_catalog()
        self.knobs = dataclasses.replace(self._initial_knobs)
        self.recorder = Recorder()
        self.scheduler = Scheduler(self)
        self.cors = CorsPolicy.from_origins(default_origins(origins))
        # Addresses the server listens on; the Host check runs only when all are loopback.
        self.listen_hosts: list[str] = []

    # -- knobs and introspection -----------------------------------------------------------------

    @property
    def requests(self) -> list[RequestRecord]:
        return self.recorder.records

    def configure(self, **values: Any) -> None:
        """Set knobs by name, e.g. configure(chunk_delay=0.05, split_chunks=True)."""
        self.knobs.update(values)
        self.scheduler.knobs_changed()

    def reset(self) -> None:
        """Forget requests and connections; knobs and models back to the constructor's."""
        self.knobs = dataclasses.replace(self._initial_knobs)
        self.catalog = self._fresh_catalog()
        self.recorder.reset()
        self.scheduler.reset()

    def _fresh_catalog(self) -> Catalog:
        catalog = Catalog(dataclasses.replace(m) for m in self._initial_models)
        for name in self._initial_loaded:
            model = catalog.get(name)
            if model is None:
                raise ValueError(f"cannot mark {name!r} loaded: the fake does not have it")
            catalog.load(model, DEFAULT_KEEP_ALIVE, time.time_ns())
        return catalog

    def set_loaded(self, name: str, keep_alive: float = DEFAULT_KEEP_ALIVE) -> None:
        """Load or (keep_alive 0) unload a model at once: no request, no load_delay.

        keep_alive is in seconds; float("inf") keeps it loaded for good (keep_alive -1).
        """
        model = self.catalog.get(name)
        if model is None:
            raise KeyError(name)
        self.catalog.load(model, keep_alive, time.time_ns())
        self.recorder.changed()

    def running(self, model: str | None = None) -> dict[str, Any]:
        """Requests running and queued per model, loads in progress and started; see sched.py."""
        return self.scheduler.snapshot(model)

    async def wait_for_running(
        self,
        running: int = 0,
        queued: int = 0,
        model: str | None = None,
        idle: bool = False,
        timeout: float = 10.0,
    ) -> dict[str, Any]:
        """Wait until at least `running` requests run and `queued` wait (for `model`, or in all).

        With idle=True, wait instead until none runs, waits or loads.
        """
        return await self.wait_for(
            lambda _: running_ready(self.running(model), running, queued, idle), timeout
        )

    async def wait_for(self, predicate: Predicate[T], timeout: float = 10.0) -> T:
        return await self.recorder.wait_for(predicate, timeout)

    async def wait_for_requests(self, count: int, timeout: float = 10.0) -> list[RequestRecord]:
        """Wait until `count` requests have arrived (not necessarily finished)."""
        return await self.wait_for(lambda rs: list(rs) if len(rs) >= count else None, timeout)

    async def wait_for_completed(self, count: int, timeout: float = 10.0) -> list[RequestRecord]:
        def done(records: list[RequestRecord]) -> list[RequestRecord] | None:
            finished = [r for r in records if r.completed]
            return finished if len(finished) >= count else None

        return await self.wait_for(done, timeout)

    async def wait_for_disconnect(self, timeout: float = 10.0) -> RequestRecord:
        """Wait until a handler has been cancelled by its client going away."""
        return await self.wait_for(
            lambda rs: next((r for r in rs if r.disconnected), None), timeout
        )

    # -- the application ------------------------------------------------------------------------

    def make_app(self) -> web.Application:
        app = web.Application(middlewares=middleware.build(self), client_max_size=0)
        app.on_response_prepare.append(middleware.on_response_prepare)
        manage, transfer = Manage(self), Transfer(self)
        inference = Inference(self)
        openai = OpenAI(self, inference)
        routes = [
            ("HEAD", "/", manage.root),
            ("GET", "/", manage.root),
            ("HEAD", "/api/version", manage.version),
            ("GET", "/api/version", manage.version),
            ("GET", "/api/status", manage.status),
            ("POST", "/api/pull", transfer.pull),
            ("POST", "/api/push", transfer.push),
            ("HEAD", "/api/tags", manage.tags),
            ("GET", "/api/tags", manage.tags),
            ("POST", "/api/show", manage.show),
            ("DELETE", "/api/delete", manage.delete),
            ("POST", "/api/create", transfer.create),
            ("POST", "/api/blobs/{digest}", transfer.create_blob),
            ("HEAD", "/api/blobs/{digest}", transfer.head_blob),
            ("POST", "/api/copy", manage.copy),
            ("GET", "/api/ps", manage.ps),
            ("POST", "/api/generate", inference.generate),
            ("POST", "/api/chat", inference.chat),
            ("POST", "/api/embed", inference.embed),
            ("POST", "/api/embeddings", inference.embeddings),
            ("POST", "/v1/chat/completions", openai.chat_completions),
            ("GET", "/v1/models", openai.models),
            ("GET", "/v1/models/{model}", openai.model),
            *((method, path, _unmodelled) for method, path in _UNMODELLED),
        ]
        for method, path, handler in routes:
            app.router.add_route(method, path, handler, expect_handler=_no_expect)
        app.router.add_routes(Control(self).routes())
        return app

    @asynccontextmanager
    async def serve(self, host: str = "127.0.0.1", port: int = 0) -> AsyncIterator[str]:
        """Run on a real socket; yields the base URL. The bound address drives the Host check."""
        runner = web.AppRunner(
            self.make_app(), shutdown_timeout=_SHUTDOWN_TIMEOUT, **_SERVER_SETTINGS
        )
        await runner.setup()
        try:
            site = web.TCPSite(runner, host, port)
            await site.start()
            addresses = runner.addresses
            self.listen_hosts = [str(addr[0]) for addr in addresses]
            bound_host, bound_port = str(addresses[0][0]), int(addresses[0][1])
            shown = f"[{bound_host}]" if ":" in bound_host else bound_host
            yield f"http://{shown}:{bound_port}"
        finally:
            self.listen_hosts = []
            await runner.cleanup()
