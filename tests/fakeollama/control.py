"""/_fake/*: introspection and knobs over HTTP, for tests that run the fake out of process.

These routes skip every Ollama behaviour (recording, CORS, Host check, knobs).
"""

from __future__ import annotations

import contextlib
import json
import time
from typing import TYPE_CHECKING, Any, Final

from aiohttp import web

from .gojson import DEFAULT_KEEP_ALIVE, BindError, parse_duration
from .state import RequestRecord

if TYPE_CHECKING:
    from .app import FakeOllama

PREFIX: Final = "/_fake/"
_DEFAULT_WAIT: Final = 10.0


def _json(value: Any, status: int = 200) -> web.Response:
    return web.json_response(value, status=status)


class Control:
    def __init__(self, fake: FakeOllama) -> None:
        self._fake = fake

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/_fake/requests", self.requests, allow_head=False),
            web.post("/_fake/reset", self.reset),
            web.get("/_fake/config", self.get_config, allow_head=False),
            web.post("/_fake/config", self.set_config),
            web.get("/_fake/connections", self.connections, allow_head=False),
            web.get("/_fake/running", self.running, allow_head=False),
            web.get("/_fake/loaded", self.get_loaded, allow_head=False),
            web.post("/_fake/loaded", self.set_loaded),
        ]

    async def requests(self, request: web.Request) -> web.Response:
        """The records; ?wait_count=N, ?wait_completed=N or ?wait_disconnect=1 long-poll first.

        ?timeout=S bounds the wait (default 10 s); on timeout the current list is returned.
        """
        query = request.query
        try:
            count = int(query.get("wait_count", "0"))
            completed = int(query.get("wait_completed", "0"))
            disconnect = query.get("wait_disconnect", "") not in ("", "0", "false")
            timeout = float(query.get("timeout", str(_DEFAULT_WAIT)))
        except ValueError as exc:
            return _json({"error": str(exc)}, 400)

        def ready(records: list[RequestRecord]) -> bool:
            return (
                len(records) >= count
                and sum(r.completed for r in records) >= completed
                and (not disconnect or any(r.disconnected for r in records))
            )

        with contextlib.suppress(TimeoutError):  # on timeout the caller judges the list itself
            await self._fake.wait_for(ready, timeout)
        return _json([r.as_dict() for r in self._fake.requests])

    async def reset(self, request: web.Request) -> web.Response:
        self._fake.reset()
        return _json({"ok": True})

    async def get_config(self, request: web.Request) -> web.Response:
        return _json(self._fake.knobs.as_dict())

    async def set_config(self, request: web.Request) -> web.Response:
        try:
            values = json.loads(await request.read() or b"{}")
        except ValueError as exc:
            return _json({"error": str(exc)}, 400)
        if not isinstance(values, dict):
            return _json({"error": "expected a JSON object"}, 400)
        try:
            self._fake.configure(**values)
        except ValueError as exc:
            return _json({"error": str(exc)}, 400)
        return _json(self._fake.knobs.as_dict())

    async def connections(self, request: web.Request) -> web.Response:
        recorder = self._fake.recorder
        return _json(
            {"connections": recorder.connections, "peers": [list(p) for p in recorder.peers]}
        )

    async def running(self, request: web.Request) -> web.Response:
        """Requests running and queued per model: {"running", "queued", "models": {name: {
        "running", "queued", "loading", "loads"}}}; ?model=NAME narrows it to one model.

        ?wait_running=N and ?wait_queued=N long-poll until at least that many run and wait;
        ?wait_idle=1 until nothing runs, waits or loads. ?timeout=S as for /_fake/requests.
        """
        query = request.query
        try:
            model = query.get("model") or None
            if model is not None:
                self._fake.running(model)  # validates the name
            running = int(query.get("wait_running", "0"))
            queued = int(query.get("wait_queued", "0"))
            idle = query.get("wait_idle", "") not in ("", "0", "false")
            timeout = float(query.get("timeout", str(_DEFAULT_WAIT)))
        except ValueError as exc:  # InvalidName included
            return _json({"error": str(exc)}, 400)
        with contextlib.suppress(TimeoutError):  # on timeout the caller judges the state itself
            await self._fake.wait_for_running(running, queued, model, idle, timeout)
        return _json(self._fake.running(model))

    async def get_loaded(self, request: web.Request) -> web.Response:
        return _json(self._loaded())

    async def set_loaded(self, request: web.Request) -> web.Response:
        """{"model": NAME, "keep_alive": seconds or a Go duration}: load it at once, no request
        and no load_delay; keep_alive as in Ollama (default 5m, 0 unloads, negative forever)."""
        try:
            values = json.loads(await request.read() or b"{}")
            if not isinstance(values, dict) or not isinstance(values.get("model"), str):
                raise ValueError('expected {"model": NAME, "keep_alive": ...}')
            keep_alive = values.get("keep_alive")
            seconds = DEFAULT_KEEP_ALIVE if keep_alive is None else parse_duration(keep_alive)
        except (ValueError, BindError) as exc:
            return _json({"error": str(exc)}, 400)
        try:
            self._fake.set_loaded(values["model"], seconds)
        except KeyError:
            return _json({"error": f"model '{values['model']}' not found"}, 404)
        return _json(self._loaded())

    def _loaded(self) -> dict[str, Any]:
        """The names /api/ps would list, without a recorded request."""
        running = self._fake.catalog.running(time.time_ns())
        return {"models": [model.name for model, _ in running]}
