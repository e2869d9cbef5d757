"""POST /api/generate, /api/chat, /api/embed, /api/embeddings, in routes.go's order of checks."""

from __future__ import annotations

import asyncio
import hashlib
import math
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from itertools import cycle, islice
from typing import TYPE_CHECKING, Any, Final

from aiohttp import web

from . import wire
from .catalog import InvalidName, Model, ModelName
from .gojson import Field, dumps, go_quote, go_time, keep_alive_of
from .keys import bind, record_of
from .wire import Failure

if TYPE_CHECKING:
    from .app import FakeOllama

_WORDS: Final = (
    "The",
    " sky",
    " looks",
    " blue",
    " because",
    " air",
    " scatters",
    " short",
    " wavelengths",
    " of",
    " sunlight",
    " more",
    " than",
    " long",
    " ones",
    ".",
)
_COMMON: Final = {
    "model": Field("string", "string"),
    "stream": Field("bool", "bool"),
    "keep_alive": Field("duration", "api.Duration"),
    "options": Field("object", "map[string]interface {}"),
    "format": Field("any", "json.RawMessage"),
    "think": Field("any", "api.ThinkValue"),
}
GENERATE_FIELDS: Final = {
    **_COMMON,
    "prompt": Field("string", "string"),
    "suffix": Field("string", "string"),
    "system": Field("string", "string"),
    "template": Field("string", "string"),
    "context": Field("array", "[]int"),
    "raw": Field("bool", "bool"),
    "images": Field("array", "[]api.ImageData"),
}
CHAT_FIELDS: Final = {
    **_COMMON,
    "messages": Field("array", "[]api.Message"),
    "tools": Field("array", "api.Tools"),
}
EMBED_FIELDS: Final = {**_COMMON, "input": Field("any", "interface {}")}
EMBEDDINGS_FIELDS: Final = {**_COMMON, "prompt": Field("string", "string")}


@dataclass(frozen=True, slots=True)
class Turn:
    """One simulated generation: what to say and the numbers Ollama reports about it."""

    label: str  # the model name exactly as the client sent it (Ollama echoes req.Model)
    pieces: tuple[str, ...]
    prompt_tokens: int
    started_ns: int
    loaded_ns: int
    token_delay: float = 0.0  # the generation_time knob's share per token

    async def pace(self) -> None:
        """The time the model takes to produce one token."""
        if self.token_delay:
            await asyncio.sleep(self.token_delay)

    def metrics(self) -> dict[str, int]:
        now = time.time_ns()
        generating = max(now - self.loaded_ns, 2)
        return {
            "total_duration": now - self.started_ns,
            "load_duration": self.loaded_ns - self.started_ns,
            "prompt_eval_count": self.prompt_tokens,
            "prompt_eval_duration": generating // 4,
            "eval_count": len(self.pieces),
            "eval_duration": generating - generating // 4,
        }


def token_ids(seed: str, count: int) -> list[int]:
    """Deterministic fake token ids (what generate's "context" carries)."""
    digest = hashlib.shake_256(seed.encode()).digest(4 * count)
    return [int.from_bytes(digest[i : i + 4], "little") % 128000 for i in range(0, 4 * count, 4)]


def embedding(text: str, dims: int) -> list[float]:
    digest = hashlib.shake_256(text.encode()).digest(2 * dims)
    raw = [
        int.from_bytes(digest[i : i + 2], "little") / 32768.0 - 1.0 for i in range(0, 2 * dims, 2)
    ]
    norm = math.sqrt(sum(v * v for v in raw)) or 1.0
    return [round(v / norm, 7) for v in raw]


class Inference:
    def __init__(self, fake: FakeOllama) -> None:
        self._fake = fake

    # -- shared steps -------------------------------------------------------------------------

    def _lookup(self, name: str, empty: Failure) -> Model | Failure:
        """parseAndValidateModelRef + getExistingName + GetModel, with each handler's texts."""
        if not name:
            return empty
        try:
            ModelName.parse(name)
        except InvalidName:
            return Failure(400, "invalid model name")
        model = self._fake.catalog.get(name)
        if model is None:
            return Failure(404, f"model '{name}' not found")
        return model

    async def _load(
        self, request: web.Request, model: Model, req: dict[str, Any], work: bool
    ) -> int:
        """scheduleRunner and a runner slot: Ollama writes nothing at all until it has both.

        `work` is false for a preload (nothing to generate), which needs the model, not a slot.
        """
        sched, keep_alive = self._fake.scheduler, keep_alive_of(req)
        if work:
            await sched.hold_slot(request, model)
        await sched.load(model, keep_alive)
        if self._fake.knobs.first_byte_delay:
            await asyncio.sleep(self._fake.knobs.first_byte_delay)
        now = time.time_ns()
        self._fake.catalog.load(model, keep_alive, now)
        if work:
            await sched.wait_unheld()
        return now

    def _turn(self, label: str, prompt: str, started_ns: int, loaded_ns: int) -> Turn:
        knobs = self._fake.knobs
        pieces = tuple(islice(cycle(_WORDS), knobs.tokens))
        delay = knobs.generation_time / knobs.tokens if knobs.tokens else 0.0
        return Turn(label, pieces, len(prompt.split()) + 10, started_ns, loaded_ns, delay)

    async def whole(self, request: web.Request, turn: Turn) -> Failure | None:
        """stream:false waits for the whole generation; faults surface as a status or a cut."""
        knobs = self._fake.knobs
        lines = len(turn.pieces) + 1
        await asyncio.sleep((knobs.chunk_delay + turn.token_delay) * len(turn.pieces))
        if knobs.die_after is not None and knobs.die_after < lines:
            await wire.abort_connection(request, record_of(request))
        if knobs.error_after is not None and knobs.error_after < lines:
            return Failure(500, knobs.error_message)
        return None

    def _stream(self, request: web.Request) -> wire.LineStream:
        return wire.ndjson_stream(request, self._fake.knobs, record_of(request))

    # -- /api/generate --------------------------------------------------------------------------

    async def generate(self, request: web.Request) -> web.StreamResponse:
        started = time.time_ns()
        req = await bind(request, "GenerateRequest", GENERATE_FIELDS)
        if isinstance(req, web.Response):
            return req
        label = req.get("model") or ""
        model = self._lookup(label, Failure(404, f"model '{label}' not found"))
        if isinstance(model, Failure):
            return model.response()
        prompt = req.get("prompt") or ""
        if not prompt and req.get("keep_alive") == 0:
            self._fake.catalog.load(model, 0, started)
            return wire.json_response(200, self._generate_done(label, "", "unload"))
        refused = self._capable(model, label, "completion", "generate", req)
        if refused is not None:
            return refused.response()
        loaded = await self._load(request, model, req, work=bool(prompt))
        if not prompt:
            return wire.json_response(200, self._generate_done(label, "", "load"))
        turn = self._turn(label, prompt, started, loaded)
        if req.get("stream", True) is False:
            fault = await self.whole(request, turn)
            if fault is not None:
                return fault.response()
            return wire.json_response(200, self._generate_final(turn, prompt, "".join(turn.pieces)))
        return await wire.run_stream(self._stream(request), self._generate_lines(turn, prompt))

    def _capable(
        self, model: Model, label: str, capability: str, verb: str, req: dict[str, Any]
    ) -> Failure | None:
        if req.get("think") and "thinking" not in model.capabilities:
            return Failure(400, f"{go_quote(label)} does not support thinking")
        if capability not in model.capabilities:
            return Failure(400, f"{go_quote(label)} does not support {verb}")
        return None

    def _generate_done(self, label: str, text: str, reason: str) -> dict[str, Any]:
        return {
            "model": label,
            "created_at": go_time(time.time_ns()),
            "response": text,
            "done": True,
            "done_reason": reason,
        }

    def _generate_final(self, turn: Turn, prompt: str, text: str) -> dict[str, Any]:
        size = self._fake.knobs.context_size
        count = size if size is not None else turn.prompt_tokens + len(turn.pieces)
        return {
            **self._generate_done(turn.label, text, "stop"),
            "context": token_ids(prompt, count),
            **turn.metrics(),
        }

    async def _generate_lines(self, turn: Turn, prompt: str) -> AsyncIterator[bytes]:
        for piece in turn.pieces:
            await turn.pace()
            chunk = {
                "model": turn.label,
                "created_at": go_time(time.time_ns()),
                "response": piece,
                "done": False,
            }
            yield dumps(chunk) + b"\n"
        yield dumps(self._generate_final(turn, prompt, "")) + b"\n"

    # -- /api/chat (also behind /v1/chat/completions) -------------------------------------------

    async def chat_plan(
        self, request: web.Request, req: dict[str, Any]
    ) -> Turn | Failure | dict[str, Any]:
        """ChatHandler up to the first token: a Turn to generate, a Failure, or a final object."""
        started = time.time_ns()
        label = req.get("model") or ""
        model = self._lookup(label, Failure(400, "model is required"))
        if isinstance(model, Failure):
            return model
        messages = req.get("messages") or []
        if not messages and req.get("keep_alive") == 0:
            self._fake.catalog.load(model, 0, started)
            return self._chat_done(label, "", "unload")
        refused = self._capable(model, label, "completion", "chat", req)
        if refused is not None:
            return refused
        loaded = await self._load(request, model, req, work=bool(messages))
        if not messages:
            return self._chat_done(label, "", "load")
        last = messages[-1] if isinstance(messages[-1], dict) else {}
        return self._turn(label, str(last.get("content") or ""), started, loaded)

    async def chat(self, request: web.Request) -> web.StreamResponse:
        req = await bind(request, "ChatRequest", CHAT_FIELDS)
        if isinstance(req, web.Response):
            return req
        turn = await self.chat_plan(request, req)
        if isinstance(turn, Failure):
            return turn.response()
        if isinstance(turn, dict):
            return wire.json_response(200, turn)
        if req.get("stream", True) is False:
            fault = await self.whole(request, turn)
            if fault is not None:
                return fault.response()
            return wire.json_response(200, self.chat_final(turn, "".join(turn.pieces)))
        return await wire.run_stream(self._stream(request), self._chat_lines(turn))

    def _chat_done(self, label: str, text: str, reason: str) -> dict[str, Any]:
        return {
            "model": label,
            "created_at": go_time(time.time_ns()),
            "message": {"role": "assistant", "content": text},
            "done_reason": reason,
            "done": True,
        }

    def chat_final(self, turn: Turn, text: str) -> dict[str, Any]:
        return {**self._chat_done(turn.label, text, "stop"), **turn.metrics()}

    def chat_events(self, turn: Turn) -> list[tuple[str, bool]]:
        """(content, done) per stream line: one per token, then the empty final one."""
        return [(piece, False) for piece in turn.pieces] + [("", True)]

    async def _chat_lines(self, turn: Turn) -> AsyncIterator[bytes]:
        for piece, done in self.chat_events(turn):
            if done:
                yield dumps(self.chat_final(turn, "")) + b"\n"
                continue
            await turn.pace()
            chunk = {
                "model": turn.label,
                "created_at": go_time(time.time_ns()),
                "message": {"role": "assistant", "content": piece},
                "done": False,
            }
            yield dumps(chunk) + b"\n"

    # -- /api/embed and the legacy /api/embeddings ---------------------------------------------

    async def embed(self, request: web.Request) -> web.StreamResponse:
        started = time.time_ns()
        req = await bind(request, "EmbedRequest", EMBED_FIELDS)
        if isinstance(req, web.Response):
            return req
        label = req.get("model") or ""
        model = self._lookup(label, Failure(404, f"model '{label}' not found"))
        if isinstance(model, Failure):
            return model.response()
        raw = req.get("input")
        if isinstance(raw, str):
            inputs = [raw] if raw else []
        elif isinstance(raw, list) and all(isinstance(v, str) for v in raw):
            inputs = list(raw)
        elif raw is None:
            inputs = []
        else:
            return wire.error_response(400, "invalid input type")
        loaded = await self._load(request, model, req, work=bool(inputs))
        if not inputs:
            return wire.json_response(200, {"model": label, "embeddings": []})
        return wire.json_response(
            200,
            {
                "model": label,
                "embeddings": [embedding(text, model.embedding_length) for text in inputs],
                "total_duration": time.time_ns() - started,
                "load_duration": loaded - started,
                "prompt_eval_count": sum(len(text.split()) + 2 for text in inputs),
            },
        )

    async def embeddings(self, request: web.Request) -> web.StreamResponse:
        req = await bind(request, "EmbeddingRequest", EMBEDDINGS_FIELDS)
        if isinstance(req, web.Response):
            return req
        label = req.get("model") or ""
        if not label:
            return wire.error_response(400, "model is required")
        model = self._fake.catalog.get(label)
        if model is None:
            # Here the miss surfaces from the scheduler (handleScheduleError).
            return wire.error_response(
                404, f"model {go_quote(label)} not found, try pulling it first"
            )
        prompt = req.get("prompt") or ""
        await self._load(request, model, req, work=bool(prompt))
        vector = embedding(prompt, model.embedding_length) if prompt else []
        return wire.json_response(200, {"embedding": vector})
