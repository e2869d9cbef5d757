"""Responses ollana writes itself: errors in the caller's dialect, and JSON documents."""

from __future__ import annotations

import json
from typing import Any, Final

from aiohttp import web
from multidict import CIMultiDict

from ollana.proxy.headers import add_via

JSON_TYPE: Final = "application/json; charset=utf-8"
# Set on errors ollana generated before the request reached any Ollama: a client proxy may then
# safely send the same request to another server.
NOT_FORWARDED: Final = "X-Ollana-Not-Forwarded"


def json_response(status: int, body: Any, *, not_forwarded: bool = False) -> web.Response:
    headers: CIMultiDict[str] = CIMultiDict({"Content-Type": JSON_TYPE})
    add_via(headers)
    if not_forwarded:
        headers[NOT_FORWARDED] = "1"
    return web.Response(status=status, body=json.dumps(body).encode(), headers=headers)


def error_body(path: str, message: str, status: int) -> dict[str, Any]:
    """Ollama's native routes answer ``{"error": msg}``; its OpenAI-compatible ``/v1`` routes
    answer OpenAI's shape, which OpenAI clients parse."""
    if path.startswith("/v1/"):
        kind = "invalid_request_error" if 400 <= status < 500 else "api_error"
        return {"error": {"message": message, "type": kind, "param": None, "code": None}}
    return {"error": message}


def error(request: web.BaseRequest, status: int, message: str, *, not_forwarded: bool = False) -> web.Response:
    path = request.path if request.raw_path.startswith("/") else "/"
    return json_response(status, error_body(path, message, status), not_forwarded=not_forwarded)
