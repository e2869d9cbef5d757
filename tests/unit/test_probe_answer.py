"""When a server answers a probe with a heartbeat (roles/server.py).

A stopping server said goodbye, then answered a client's probe in the ~0.3 s before it exited; the
client listed it again and answered from its catalogue instead of the 503 (lab run, test_e2e's clean
stop). The rule is pure; the second test checks the node applies it after its goodbye.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import aiohttp

from ollana.config import Config, Trust
from ollana.discovery.packet import Goodbye, Heartbeat, Probe
from ollana.roles.server import PROBE_ANSWER_GAP, ServerNode, answers_probe
from ollana.runtime import Node, Runtime

NODE, INST = bytes([7]) * 16, bytes([8]) * 8


def test_a_probe_is_answered_only_while_announcing_and_not_too_often() -> None:
    assert answers_probe(announcing=True, now=10.0, last_answer=-1e9)
    assert not answers_probe(announcing=False, now=10.0, last_answer=-1e9)  # before the first announce, after goodbye
    assert not answers_probe(announcing=True, now=10.0, last_answer=10.0 - PROBE_ANSWER_GAP / 2)
    assert answers_probe(announcing=True, now=10.0, last_answer=10.0 - 2 * PROBE_ANSWER_GAP)


class SentPackets:
    """Stands in for Discovery: records what the node would send, on one made-up link."""

    def __init__(self) -> None:
        self.sent: list[Any] = []
        self._seq = 0

    def next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def send(self, make: Callable[[Any], Any], only: Any = None) -> None:
        self.sent.append(make(type("Link", (), {"address": b"\x0a\x00\x00\x01"})()))


async def test_after_its_goodbye_a_server_answers_no_probe() -> None:
    async with aiohttp.ClientSession() as session:
        rt = Runtime(Config(trust=Trust.OPEN), Node(NODE, INST, "box", 0.0), session)
        node = ServerNode(rt)
        disc = SentPackets()
        node._discovery = disc  # type: ignore[assignment]
        node._health.up = True
        node._announcing = True  # as the announce loop sets it once Ollama answered
        probe = Probe(bytes([9]) * 16, bytes([1]) * 8, 1)

        node._on_packet(probe, "10.0.0.9", 100.0)
        assert [type(p) for p in disc.sent] == [Heartbeat]

        node._say_goodbye()
        assert [type(p) for p in disc.sent[1:]] == [Goodbye, Goodbye]
        node._on_packet(probe, "10.0.0.9", 200.0)
        assert [type(p) for p in disc.sent[3:]] == []
