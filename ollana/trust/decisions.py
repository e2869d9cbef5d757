"""What trust mode ``devices`` decides, apart from I/O: pure functions of their inputs.

Who may pass the server's gate and what a refused device is told; which certificates complete
a handshake; whether a client believes a server's heartbeats, and when it checks or says hello
again. Time is an argument; nothing here reads a clock, a file or a socket. ``Gate`` and
``ServerVetting`` hold the state: they ask these functions, change their state, and only then
do the I/O ("decide, then act"). Tested in tests/unit/test_trust_decisions.py.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from ollana.trust.document import AllowedDevice, PeerKind, PendingDevice
from ollana.trust.identity import device_id_of, grouped, short

# --- who a device is to this one ---------------------------------------------------------------


class Standing(enum.Enum):
    SELF = "self"  # our own key: whoever holds it is us
    ALLOWED = "allowed"  # paired and enabled
    DISABLED = "disabled"  # paired, then disabled
    UNKNOWN = "unknown"  # not paired: pending or never seen
    ANONYMOUS = "anonymous"  # presented no certificate

    @property
    def admitted(self) -> bool:
        return self is Standing.SELF or self is Standing.ALLOWED


def standing(device_id: str | None, own_id: str, entry: AllowedDevice | None) -> Standing:
    """``entry``: the device's entry in the allow list, if it has one."""
    if device_id is None:
        return Standing.ANONYMOUS
    if device_id == own_id:
        return Standing.SELF
    if entry is None:
        return Standing.UNKNOWN
    return Standing.ALLOWED if entry.enabled else Standing.DISABLED


# --- the server's gate -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Refusal:
    """A request the gate stops before it reaches Ollama: the 403 text, and why (for the log)."""

    message: str
    reason: str


def refusal(device_id: str | None, who: Standing, *, hostname: str, server_short: str) -> Refusal | None:
    """None: the request passes. Otherwise what to answer the device, naming the command that
    lets it in. ``hostname`` and ``server_short`` are this server's."""
    if who.admitted:
        return None
    if device_id is None:
        return Refusal(
            f"ollana: the server on {hostname} serves only paired devices (trust mode devices) "
            "and this connection presented no device certificate; run `ollana serve` on your machine "
            "(it introduces itself), then pair: on each machine `ollana device pending` and "
            f"`ollana device allow ID` (this server is {server_short})",
            "no device certificate",
        )
    return Refusal(
        f"ollana: this device ({grouped(device_id)}) is "
        f"{'disabled' if who is Standing.DISABLED else 'not allowed'} on the server on "
        f"{hostname}; there, run `ollana device allow {short(device_id)}`",
        "device not allowed",
    )


@dataclass(frozen=True, slots=True)
class HelloReply:
    """The answer to a client's hello, and whether to record the client as pending first."""

    status: int
    body: dict[str, str]
    record_pending: bool


def hello_reply(client_id: str, who: Standing, *, server_id: str, hostname: str) -> HelloReply:
    body = {"device_id": client_id, "server_device_id": server_id}
    if who.admitted:
        return HelloReply(200, {"status": "allowed", **body}, record_pending=False)
    return HelloReply(
        202,
        {"status": "pending", **body, "hint": f"on {hostname} run `ollana device allow {short(client_id)}`"},
        # A disabled device stays disabled: a hello does not make it pending again.
        record_pending=who is Standing.UNKNOWN,
    )


def anchors(own_cert: str, allowed: Iterable[AllowedDevice], pending: Iterable[PendingDevice]) -> list[str]:
    """The certificates that complete a TLS handshake with the server.

    Ours, every paired device's, and pending clients'. Disabled and pending clients get in too, so
    that the per-request check can tell them why they are refused (and their device ID); their
    requests never go further.
    """
    return [
        own_cert,
        *(d.cert_pem for d in allowed),
        *(p.cert_pem for p in pending if p.kind is PeerKind.CLIENT),
    ]


def must_cut(who: Standing) -> bool:
    """After the allow list changed: must an open connection of a device with this standing close?

    Devices no longer allowed lose theirs; a connection without a certificate can only say hello,
    and stays.
    """
    return who is Standing.DISABLED or who is Standing.UNKNOWN


# --- the client believing a server -------------------------------------------------------------


class Belief(enum.Enum):
    GENUINE = "genuine"  # proved it holds the announced device's key: take its heartbeats
    CHECK = "check"  # never checked, or too long ago: read its certificate first
    IMPOSTOR = "impostor"  # failed the check: ignore its heartbeats until the verdict expires


@dataclass(frozen=True, slots=True)
class Verdict:
    """The outcome of one check of (address, port, announced device ID), and when it was made."""

    genuine: bool
    at: float


def belief(verdict: Verdict | None, now: float, ttl: float) -> Belief:
    """What to make of a heartbeat, given the last check of its sender (if any)."""
    if verdict is None or now - verdict.at > ttl:
        return Belief.CHECK
    return Belief.GENUINE if verdict.genuine else Belief.IMPOSTOR


@dataclass(frozen=True, slots=True)
class Presented:
    """A certificate a server presented: the device ID it hashes to, and its PEM (None: unusable)."""

    device_id: str
    cert_pem: str | None


def presented(der: bytes) -> Presented:
    try:
        cert = x509.load_der_x509_certificate(der)
    except ValueError:
        return Presented(device_id_of(der), None)
    return Presented(device_id_of(der), cert.public_bytes(serialization.Encoding.PEM).decode("ascii"))


def genuine(cert: Presented, announced: str) -> bool:
    """Does the certificate at a heartbeat's address prove the announced device ID?"""
    return cert.cert_pem is not None and cert.device_id == announced


def due(last: float | None, now: float, gap: float) -> bool:
    """At most once per ``gap`` seconds: never done, or done ``gap`` seconds ago or more.

    The rule of the client's hellos (30 s per server) and of its certificate checks (1 s per
    address). Time from a monotonic clock: a ``now`` before ``last`` is not due.
    """
    return last is None or now - last >= gap
