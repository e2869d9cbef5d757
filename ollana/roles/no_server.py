"""What the client tells an app when no server can take its request: per known server, why not.

Pure: the route gathers what it knows of each server (``Unusable``) and these functions word it.
Suggestions are made only where they apply: waiting for discovery only when it runs, ``--peer``
only when no server was named by address and discovery cannot find one.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

# How many servers a message lists before "and N more": an app shows the whole text to a person.
MAX_LISTED: Final = 10


class Why(enum.Enum):
    """Why a known server cannot be used (the words are in ``_WORDS``)."""

    UNPAIRED = "unpaired"  # genuine, but not allowed on this device (pending or disabled)
    NO_CERTIFICATE = "no-certificate"  # named by address, trust devices: its certificate unread
    SPEAKS_TLS = "speaks-tls"  # heard: it runs trust mode devices, this client --trust open
    PLAIN = "plain"  # heard: it runs --trust open, this client trust mode devices
    GOODBYE = "goodbye"  # it said goodbye: shut down, or its Ollama stopped answering
    SILENT = "silent"  # its heartbeats stopped: switched off, or unreachable
    UNREACHABLE = "unreachable"  # a request could not connect
    NOT_FORWARDED = "not-forwarded"  # it answered, but could not reach its Ollama
    FAILED = "failed"  # anything else a request met


_WORDS: Final = {
    Why.UNPAIRED: "not paired with this device",
    Why.NO_CERTIFICATE: ("its certificate could not be read: it is unreachable, or it runs --trust open "
                         "(plain HTTP), which this client (trust mode devices) never uses"),
    Why.SPEAKS_TLS: ("it serves only paired devices over TLS (trust mode devices) and this client runs "
                     "--trust open; run the client without --trust open and pair the two"),
    Why.PLAIN: ("it runs --trust open (plain HTTP) and this client runs trust mode devices, which never "
                "sends prompts in the clear; run both in the same mode"),
    Why.GOODBYE: "it said goodbye: it was stopped, or its Ollama stopped answering",
    Why.SILENT: "its heartbeats stopped: it is switched off or unreachable",
    Why.UNREACHABLE: "unreachable",
    Why.NOT_FORWARDED: "it answered, but could not reach its own Ollama (is that Ollama running?)",
    Why.FAILED: "its answer failed",
}


@dataclass(frozen=True, slots=True)
class Unusable:
    """A server this client knows of, and why it cannot take the request."""

    name: str  # host name, or "" when unknown
    address: str  # HOST:PORT
    why: Why
    named: bool = False  # given by address (--peer, `ollana peer add`), not discovered
    detail: str = ""  # what a failed request met, in words (UNREACHABLE, FAILED)
    when: str = ""  # when it left ("12 s ago")

    def describe(self) -> str:
        who = f"{self.name} ({self.address})" if self.name else self.address
        if self.named:
            who += " [--peer]"
        words = _WORDS[self.why] + (f": {self.detail}" if self.detail else "")
        return f"{who}: {words}" + (f" ({self.when})" if self.when else "")


def listed(servers: Sequence[Unusable], limit: int = MAX_LISTED) -> str:
    """``a: why; b: why; ... and N more``: bounded, whatever the number of servers."""
    shown = "; ".join(s.describe() for s in servers[:limit])
    more = len(servers) - limit
    return shown + (f"; and {more} more" if more > 0 else "")


def no_server(
    servers: Sequence[Unusable], *, waited: float, discovery: bool, pair_hint: str | None = None,
) -> str:
    """The 503 text when no server could be used (none known, or none usable).

    ``pair_hint``: what to type to pair, when some servers are only unpaired (it names them).
    """
    named = any(s.named for s in servers)
    left = [s for s in servers if s.why in (Why.GOODBYE, Why.SILENT)]
    if len(left) == len(servers):  # none on the LAN now; maybe some were, a while ago
        before = f". Seen before: {listed(left)}" if left else ""
        if discovery:
            return (f"ollana: no Ollama server found on the LAN (waited {waited:g} s for discovery); run "
                    "`ollana serve` on a machine with Ollama, or pass --peer HOST:PORT for a server "
                    f"multicast cannot reach{before}")
        return ("ollana: no Ollama server: discovery is off (--no-discovery) and no server is named; "
                f"pass --peer HOST:PORT (or `ollana peer add HOST`){before}")
    unpaired = [s for s in servers if s.why is Why.UNPAIRED]
    others = [s for s in servers if s.why is not Why.UNPAIRED]
    if pair_hint is not None and unpaired:
        text = pair_hint.rstrip(". ")
        return text + (f". Other servers: {listed(others)}" if others else "")
    count = "server" if len(servers) == 1 else f"{len(servers)} servers"
    text = f"ollana: no usable Ollama server found; known {count}: {listed(servers)}"
    if discovery:
        hint = "other servers are found as they announce themselves"
        if not named:
            hint += "; pass --peer HOST:PORT for one multicast cannot reach"
    else:
        hint = "" if named else "pass --peer HOST:PORT (or `ollana peer add HOST`)"
    return text + (f". {hint[0].upper()}{hint[1:]}" if hint else "")


def no_answer(tried: Sequence[Unusable]) -> str:
    """The 502 text when every server tried failed before answering."""
    return f"ollana: no Ollama server on the LAN answered; tried {listed(tried)}"


def failure(reason: str) -> tuple[Why, str]:
    """A failed request's reason (``UpstreamUnavailable``'s text, or the handler's) in words."""
    if reason.startswith("answered ") and "without forwarding" in reason:
        return Why.NOT_FORWARDED, ""
    low = reason.casefold()
    if "timeout" in low or "timed out" in low:
        return Why.UNREACHABLE, "it did not answer in time"
    if "connect call failed" in low or "refused" in low:
        return Why.UNREACHABLE, "connection refused (nothing listens there)"
    if any(w in low for w in ("certificate", "sslerror", "handshake", "[ssl")):  # (not "ssl:default")
        return Why.FAILED, "the TLS handshake failed"
    if "name or service not known" in low or "name resolution" in low or "nodename nor servname" in low:
        return Why.UNREACHABLE, "its name does not resolve"
    if "disconnected" in low or "reset" in low:
        return Why.FAILED, "it closed the connection"
    return Why.UNREACHABLE, ""
