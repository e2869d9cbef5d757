"""Who holds a port ollana could not listen on, and what to tell the user about it.

Only what answers decides: Ollama is blamed when the holder answers ``GET /api/version`` as an
Ollama does, another ollana when its answer carries ollana's Via mark; anything else (silent, not
HTTP, TLS) is "another program", and the message names the address only.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import aiohttp

from ollana.config import Endpoint, Role
from ollana.proxy.headers import OWN_REQUEST, is_from_ollana


class Kind(enum.Enum):
    OLLAMA = "ollama"
    OLLANA = "ollana"
    OTHER = "other"


@dataclass(frozen=True, slots=True)
class Holder:
    kind: Kind
    version: str = ""


def reachable(endpoint: Endpoint) -> Endpoint:
    """Where to ask a listener bound to ``endpoint``: a wildcard address is asked on loopback."""
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(endpoint.host, endpoint.host)
    return Endpoint(host, endpoint.port)


async def who_holds(session: aiohttp.ClientSession, endpoint: Endpoint, timeout: float) -> Holder:
    """Ask ``GET /api/version`` at the busy address, briefly, over HTTP, then over TLS (a server
    ollana in trust mode devices answers that with a 403 carrying its mark); whatever goes wrong
    means OTHER."""
    holder = await _ask(session, f"http://{reachable(endpoint)}", timeout)
    if holder.kind is Kind.OTHER:
        holder = await _ask(session, f"https://{reachable(endpoint)}", timeout)
    return holder


async def _ask(session: aiohttp.ClientSession, base: str, timeout: float) -> Holder:
    try:
        async with session.get(
            base + "/api/version", headers=OWN_REQUEST, timeout=aiohttp.ClientTimeout(total=timeout),
            allow_redirects=False,
            ssl=False,  # (https: only to see who answers; nothing secret is sent)
        ) as resp:
            if is_from_ollana(resp.headers):
                return Holder(Kind.OLLANA)
            body = await resp.json(content_type=None) if resp.status == 200 else None
    except (TimeoutError, aiohttp.ClientError, ValueError, OSError):
        return Holder(Kind.OTHER)
    if isinstance(body, dict) and isinstance(body.get("version"), str):
        return Holder(Kind.OLLAMA, body["version"])
    return Holder(Kind.OTHER)


def busy_message(endpoint: Endpoint, holder: Holder, role: Role) -> str:
    """One line: which address is taken, by what, and what to type (pure)."""
    where = f"cannot listen on {endpoint}"
    if holder.kind is Kind.OLLAMA:
        version = f" {holder.version}" if holder.version else ""
        if role is Role.SERVER:
            return (f"{where}: an Ollama{version} already listens there; give ollana another address "
                    "with --listen")
        return (f"{where}: an Ollama{version} already listens there, so this machine has its own Ollama; "
                "run `ollana serve --mode server` to share it (or --mode both with Ollama on another port), "
                "or choose another address with --listen")
    if holder.kind is Kind.OLLANA:
        return (f"{where}: another ollana already listens there (see `ollana status`); stop it first, "
                "or choose another address with --listen")
    return f"{where}: {endpoint} is already in use by another program; choose another address with --listen"
