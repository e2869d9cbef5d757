"""At ``debug`` the client logs each routing decision (candidates, chosen, why) and whether each
upstream request got a new connection or a reused one; at ``trace`` (everything) no prompt and no
answer text is ever logged. Real nodes on loopback, ollana's real log configuration."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import ollama
import pytest
import structlog

from ollana import log as logconf
from tests.fakeollama import FakeOllama
from tests.integration.nodes import client_for, server_for
from tests.integration.test_metrics import catalogued

MARKER = "obs-marker-prompt-5d1c9e"


@pytest.fixture
def log_lines() -> Iterator[io.StringIO]:
    out = io.StringIO()
    logconf.configure(logconf.parse_directives("trace"), stream=out)  # JSON: not a terminal
    try:
        yield out
    finally:
        structlog.reset_defaults()
        logging.getLogger().handlers.clear()
        logging.getLogger().setLevel(logging.WARNING)
        for name in ("aiohttp", "asyncio", "zeroconf"):
            logging.getLogger(name).setLevel(logging.NOTSET)


def events(out: io.StringIO, name: str) -> list[dict[str, Any]]:
    lines = [json.loads(line) for line in out.getvalue().splitlines() if line.startswith("{")]
    return [line for line in lines if line.get("event") == name]


async def test_debug_shows_routing_and_connection_reuse_and_never_a_prompt(log_lines: io.StringIO) -> None:
    fake = FakeOllama()
    async with fake.serve("127.0.0.1", 0) as base, server_for(base) as srv, client_for(srv) as cli:
        await catalogued(cli)
        app = ollama.AsyncClient(host=cli)
        await app.list()
        answers = []
        for _ in range(3):
            answer = await app.generate(model="llama3.2:1b", prompt=MARKER)
            answers.append(answer.response)
        chat = await app.chat(model="llama3.2:1b", messages=[{"role": "user", "content": MARKER}])
        answers.append(chat.message.content or "")
        await app.show("llama3.2:1b")
    logged = log_lines.getvalue()
    routed = [e for e in events(log_lines, "routed") if e["path"] == "/api/generate"]
    assert len(routed) == 3, routed
    first = routed[0]
    assert first["why"] and first["chosen"] == f"static:{srv.split('://', 1)[1]}", first
    assert first["model"].endswith("llama3.2:1b") and first["order"] == [first["chosen"]]
    [candidate] = first["candidates"]
    assert candidate["peer"] == first["chosen"] and candidate["healthy"] is True and candidate["models"] == 2
    reuse = events(log_lines, "upstream_connection")
    assert {e["reused"] for e in reuse} == {True, False}, reuse  # keep-alive: later requests reuse
    assert all(e["upstream"].startswith("http://127.0.0.1:") for e in reuse)
    # Prompts and answers never reach the log, at any level.
    assert MARKER not in logged
    for text in answers:
        assert len(text) > 10 and text not in logged, text
