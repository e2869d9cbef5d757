"""The OpenAI-compatible routes Ollama layers over its own handlers (middleware/openai.go)."""

from __future__ import annotations

import random
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any, Final

from aiohttp import web

from . import wire
from .catalog import ModelName
from .gojson import BindError, Field, decode_request, dumps
from .inference import Inference, Turn
from .keys import body_of, record_of
from .wire import Failure

if TYPE_CHECKING:
    from .app import FakeOllama

CHAT_COMPLETION_FIELDS: Final = {
    "model": Field("string", "string"),
    "messages": Field("array", "[]openai.Message"),
    "stream": Field("bool", "bool"),
    "stream_options": Field("object", "openai.StreamOptions"),
}
_ERROR_TYPES: Final = {400: "invalid_request_error", 404: "not_found_error"}


def openai_error(status: int, message: str) -> web.Response:
    """openai.NewError, written by json.Encoder (so newline-terminated) as application/json."""
    error = {
        "message": message,
        "type": _ERROR_TYPES.get(status, "api_error"),
        "param": None,
        "code": None,
    }
    return wire.body_response(status, dumps({"error": error}) + b"\n", wire.BARE_JSON)


def _sse(value: Any) -> bytes:
    return b"data: " + dumps(value) + b"\n\n"


class OpenAI:
    def __init__(self, fake: FakeOllama, inference: Inference) -> None:
        self._fake = fake
        self._inference = inference

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        try:
            req = decode_request(
                await body_of(request).read(), "ChatCompletionRequest", CHAT_COMPLETION_FIELDS
            )
        except BindError as exc:
            # ChatMiddleware reports io.EOF as it is, not as "missing request body".
            text = "EOF" if str(exc) == "missing request body" else str(exc)
            return openai_error(400, text)
        if not req.get("messages"):
            return openai_error(400, "[] is too short - 'messages'")
        stream = req.get("stream") is True
        req["stream"] = stream
        plan = await self._inference.chat_plan(request, req)
        if isinstance(plan, Failure):
            return openai_error(plan.status, plan.message)
        if isinstance(plan, dict):  # unreachable through /v1: messages are never empty here
            return wire.json_response(200, plan, wire.BARE_JSON)
        chat_id = f"chatcmpl-{random.randrange(999)}"
        created = int(time.time())
        if not stream:
            fault = await self._inference.whole(request, plan)
            if fault is not None:
                return openai_error(fault.status, fault.message)
            body = self._completion(chat_id, plan, "".join(plan.pieces))
            return wire.body_response(200, dumps(body) + b"\n", wire.BARE_JSON)
        options = req.get("stream_options") or {}
        lines = self._frames(chat_id, created, plan, options.get("include_usage") is True)
        empty = self._chunk(chat_id, created, plan.label, "", None)
        stream_writer = wire.LineStream(
            request,
            self._fake.knobs,
            record_of(request),
            wire.SSE,
            # An {"error"} line passes ChatWriter as a ChatResponse with no content.
            lambda _message: _sse(empty),
            lambda failure: openai_error(failure.status, failure.message),
        )
        return await wire.run_stream(stream_writer, lines)

    def _chunk(
        self, chat_id: str, created: int, model: str, text: str, finish: str | None
    ) -> dict[str, Any]:
        return {
            "id": chat_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "system_fingerprint": "fp_ollama",
            "choices": [
                {
                    "index": 0,
                    "delta": {"role": "assistant", "content": text},
                    "finish_reason": finish,
                }
            ],
        }

    def _usage(self, turn: Turn) -> dict[str, int]:
        metrics = turn.metrics()
        prompt, completion = metrics["prompt_eval_count"], metrics["eval_count"]
        return {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        }

    def _completion(self, chat_id: str, turn: Turn, text: str) -> dict[str, Any]:
        return {
            "id": chat_id,
            "object": "chat.completion",
            "created": int(time.time()),
            "model": turn.label,
            "system_fingerprint": "fp_ollama",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": "stop",
                }
            ],
            "usage": self._usage(turn),
        }

    async def _frames(
        self, chat_id: str, created: int, turn: Turn, usage: bool
    ) -> AsyncIterator[bytes]:
        for piece, done in self._inference.chat_events(turn):
            if not done:
                await turn.pace()
                yield _sse(self._chunk(chat_id, created, turn.label, piece, None))
                continue
            # The final chunk, the usage chunk and [DONE] go out in one flush.
            final = self._chunk(chat_id, created, turn.label, "", "stop")
            frame = _sse(final)
            if usage:
                frame += _sse({**final, "choices": [], "usage": self._usage(turn)})
            yield frame + b"data: [DONE]\n\n"

    async def models(self, request: web.Request) -> web.StreamResponse:
        data = [self._model_entry(m.name, m.modified_ns) for m in self._fake.catalog.listed()]
        body = dumps({"object": "list", "data": data}) + b"\n"
        return wire.body_response(200, body, wire.BARE_JSON)

    async def model(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["model"]
        found = self._fake.catalog.get(name)
        if found is None:
            return openai_error(404, f"model '{name}' not found")
        body = dumps(self._model_entry(name, found.modified_ns)) + b"\n"
        return wire.body_response(200, body, wire.BARE_JSON)

    def _model_entry(self, name: str, modified_ns: int) -> dict[str, Any]:
        return {
            "id": name,
            "object": "model",
            "created": modified_ns // 10**9,
            "owned_by": ModelName.parse(name).namespace,
        }
