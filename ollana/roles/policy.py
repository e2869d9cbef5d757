"""Which servers a client may use and how it talks to them: the trust mode's policy."""

from __future__ import annotations

import ssl
from typing import Protocol

from ollana.discovery.peers import Peer


class Policy(Protocol):
    """Which servers this client may use, and how it talks to them (trust mode)."""

    def usable(self, peer: Peer) -> bool: ...

    def context(self, peer: Peer) -> ssl.SSLContext | None: ...

    def unpaired_hint(self, peers: list[Peer]) -> str | None: ...

    def refusing(self, peer: Peer) -> bool: ...


class OpenPolicy:
    """Trust mode open: every server is usable, over plain HTTP."""

    def usable(self, peer: Peer) -> bool:
        return True

    def context(self, peer: Peer) -> ssl.SSLContext | None:
        return None

    def unpaired_hint(self, peers: list[Peer]) -> str | None:
        return None

    def refusing(self, peer: Peer) -> bool:
        return False


class WithLocal:
    """Role both: this machine's own Ollama is always usable, over plain HTTP on loopback."""

    def __init__(self, inner: Policy, local_key: str) -> None:
        self._inner = inner
        self._local = local_key

    def usable(self, peer: Peer) -> bool:
        return peer.key == self._local or self._inner.usable(peer)

    def context(self, peer: Peer) -> ssl.SSLContext | None:
        return None if peer.key == self._local else self._inner.context(peer)

    def unpaired_hint(self, peers: list[Peer]) -> str | None:
        return self._inner.unpaired_hint([p for p in peers if p.key != self._local])

    def refusing(self, peer: Peer) -> bool:
        return peer.key != self._local and self._inner.refusing(peer)
