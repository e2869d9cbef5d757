"""Header policy: what a hop forwards, drops and rewrites. Pure functions over multidicts."""

from __future__ import annotations

from typing import Final

from multidict import CIMultiDict, CIMultiDictProxy

from ollana import __version__

# RFC 9110 §7.6.1 hop-by-hop fields, plus the legacy ones Ollama itself strips when it proxies
# (server/cloud_proxy.go), plus Expect: aiohttp answers 100-continue to our client itself.
# Lower-case names: membership is tested on ``name.lower()`` (multidict's istr compares as str).
HOP_BY_HOP: Final = frozenset(
    (
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "expect",
    )
)
VIA_TOKEN: Final = "ollana"
# What ollana's own requests to its Ollama (role detection, health checks, catalogue refreshes)
# say they are, so an Ollama's logs (and tests) tell them from apps' requests.
OWN_REQUEST: Final = {"User-Agent": f"ollana/{__version__}"}
VIA_VALUE: Final = f"1.1 {VIA_TOKEN}"


# What each direction drops besides hop-by-hop fields: computed once, this runs per request.
_REQUEST_DROP: Final = HOP_BY_HOP | {"host"}
_RESPONSE_DROP: Final = HOP_BY_HOP | {"content-length"}


def _strip(headers: CIMultiDictProxy[str] | CIMultiDict[str], drop: frozenset[str]) -> CIMultiDict[str]:
    named = headers.getall("Connection", ())
    if named:  # fields the sender declared hop-by-hop (RFC 9110 §7.6.1)
        drop = drop | {t.strip().lower() for value in named for t in value.split(",") if t.strip()}
    out: CIMultiDict[str] = CIMultiDict()
    for name, value in headers.items():
        if name.lower() not in drop:
            out.add(name, value)
    return out


def request_headers(incoming: CIMultiDictProxy[str], upstream_host: str, hop: str | None = None) -> CIMultiDict[str]:
    """Headers for the upstream request: everything end-to-end passes unchanged, in order.

    Host is rewritten to the upstream's, because Ollama bound to loopback rejects any other
    Host with 403 (its allowed-hosts check). Content-Length stays: the body is streamed as-is.
    ``hop``: this node's mark (``hop_mark``), added as a ``Via`` entry so a request that comes
    back to this node is recognised as a loop.
    """
    out = _strip(incoming, _REQUEST_DROP)
    out["Host"] = upstream_host
    if hop is not None:
        out.add("Via", f"1.1 {hop}")
    return out


def hop_mark(node_id_hex: str) -> str:
    """The pseudonym a node gives itself in requests' ``Via`` (RFC 9110 §7.6.3)."""
    return f"{VIA_TOKEN}-{node_id_hex[:8]}"


def passed(headers: CIMultiDictProxy[str], hop: str) -> bool:
    """Whether a request already passed the node whose mark is ``hop`` (a forwarding loop)."""
    return _via_names(headers, hop)


def _via_names(headers: CIMultiDictProxy[str] | CIMultiDict[str], name: str) -> bool:
    """Whether a ``Via`` entry names ``name`` as the recipient (``1.1 NAME [comment]``)."""
    for value in headers.getall("Via", ()):
        for entry in value.split(","):
            parts = entry.split()
            if len(parts) >= 2 and parts[1] == name:
                return True
    return False


def response_headers(upstream: CIMultiDictProxy[str]) -> CIMultiDict[str]:
    """Headers for the client's response. Content-Length is set by the caller from the body."""
    out = _strip(upstream, _RESPONSE_DROP)
    add_via(out)
    return out


def add_via(headers: CIMultiDict[str]) -> None:
    """Mark a response as having passed through (or come from) ollana (RFC 9110 §7.6.3).

    Role detection relies on it: an endpoint whose answers carry it is an ollana, not an Ollama.
    """
    headers.add("Via", VIA_VALUE)


def is_from_ollana(headers: CIMultiDictProxy[str] | CIMultiDict[str]) -> bool:
    return _via_names(headers, VIA_TOKEN)
