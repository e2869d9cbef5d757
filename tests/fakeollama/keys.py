"""Per-request values the middlewares hand to handlers, and reading the JSON body."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

from aiohttp import web

from . import wire
from .gojson import BindError, Field, decode_request
from .state import RequestRecord
from .wire import RequestBody

RECORD: Final = web.RequestKey("fakeollama_record", RequestRecord)
BODY: Final = web.RequestKey("fakeollama_body", RequestBody)
# Frees the parallel slot a request holds (sched.py); the `slots` middleware calls it.
SLOT: Final = web.RequestKey[Callable[[], None]]("fakeollama_slot")


def record_of(request: web.Request) -> RequestRecord | None:
    return request.get(RECORD)


def body_of(request: web.Request) -> RequestBody:
    body = request.get(BODY)
    if body is None:
        body = RequestBody(request, None)
        request[BODY] = body
    return body


async def bind(
    request: web.Request, struct: str, fields: dict[str, Field]
) -> dict[str, Any] | web.Response:
    """gin's ShouldBindJSON: the decoded body, or the 400 Ollama answers with."""
    try:
        return decode_request(await body_of(request).read(), struct, fields)
    except BindError as exc:
        return wire.error_response(400, str(exc))
