"""/_fake/*: introspection and knobs over HTTP, for tests that run the fake out of process.

These routes skip every Ollama behaviour (recording, CORS, Host check, knobs).
"""

from __future__ import annotations

import contextlib
import json
from typing import TYPE_CHECKING, Any, Final

from aiohttp import web

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
