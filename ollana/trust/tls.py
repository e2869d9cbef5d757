"""TLS contexts for trust mode ``devices``, the pairing hello, and reading a peer's device ID.

Python's ssl cannot take an arbitrary self-signed client certificate and let us judge it after the
handshake, so the allowed certificates themselves are the trust anchors (with PARTIAL_CHAIN a leaf
in the store is trusted as is). An unknown client therefore cannot complete a handshake with its
certificate; it connects without one (CERT_OPTIONAL lets it) and introduces itself with a hello
that carries its certificate. The device ID is always computed from a certificate, never taken
from what a peer says.
"""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import Iterable
from dataclasses import dataclass
from os import PathLike
from typing import Final

import structlog
from cryptography.hazmat.primitives import serialization

from ollana.config import bracketed
from ollana.errors import OllanaError, UpstreamUnavailable
from ollana.trust.document import sanitize_label
from ollana.trust.identity import Identity, device_id_of, device_id_of_pem, grouped, load_cert_pem

log = structlog.get_logger(__name__)

HELLO_PATH: Final = "/ollana/v1/hello"
HELLO_VERSION: Final = 1
MAX_HELLO_BYTES: Final = 16 * 1024
MAX_CERT_PEM: Final = 8 * 1024
MAX_HOSTNAME: Final = 253
_PEM_BEGIN: Final = "-----BEGIN CERTIFICATE-----"

StrPath = str | PathLike[str]


class BadHello(OllanaError):
    """A hello body that is not a valid introduction (a peer's fault: answer 400)."""


class PeerIdentityMismatch(OllanaError):
    """The TLS peer is not the device we meant to talk to."""


# --- contexts ----------------------------------------------------------------------------------


def server_context(identity: Identity, allowed_certs_pem: Iterable[str]) -> ssl.SSLContext:
    """The server side: our certificate; client certificates optional but, if sent, allowed ones.

    Allowed clients pass; a client with an unknown certificate fails the handshake; a client with
    no certificate passes and must be judged per request (``peer_device_id`` is None for it).
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    _common(ctx)
    ctx.load_cert_chain(identity.cert_path, identity.key_path)
    ctx.verify_mode = ssl.CERT_OPTIONAL
    _load_anchors(ctx, allowed_certs_pem)
    # No session tickets: a resumed session skips the certificate check, and after `disable` a
    # device must not get back in on an old ticket. Per-request checks back this up anyway.
    ctx.options |= ssl.OP_NO_TICKET
    ctx.num_tickets = 0
    return ctx


def client_context(
    identity: Identity, peer_cert_pem: str, *, present_cert: bool = True
) -> ssl.SSLContext:
    """The client side, pinned: only a server presenting exactly ``peer_cert_pem`` is accepted.

    ``present_cert=False`` is for the hello to a server that does not know us yet (it would refuse
    our certificate in the handshake).
    """
    return client_tls(peer_cert_pem, (identity.cert_path, identity.key_path) if present_cert else None)


def client_tls(
    pin_pem: str | None, cert_and_key: tuple[StrPath, StrPath] | None = None
) -> ssl.SSLContext:
    """Every client context ollana makes: TLS 1.3, no host name check.

    ``pin_pem``: the only certificate the server may present (the pin replaces the name check:
    IDs, not names, are trusted). None accepts any certificate, to read it and nothing more: send
    nothing over such a connection. ``cert_and_key``: the files of the certificate to present.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    _common(ctx)
    ctx.check_hostname = False
    if pin_pem is None:
        ctx.verify_mode = ssl.CERT_NONE
    else:
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(cadata=pin_pem)
    if cert_and_key is not None:
        ctx.load_cert_chain(*cert_and_key)
    return ctx


class ServerTLS:
    """A server context whose trust anchors can be replaced while the server runs.

    Hand ``context`` to the listener once; ``update`` builds a new context and every later
    handshake switches to it (in the SNI callback, which OpenSSL runs for every ClientHello, with
    or without a server name). Connections already open keep theirs: close the ones whose device
    is no longer allowed.
    """

    def __init__(self, identity: Identity, allowed_certs_pem: Iterable[str]) -> None:
        self._identity = identity
        self._current = server_context(identity, allowed_certs_pem)
        # The front context carries the same settings: verify mode and flags are fixed per
        # connection before the callback runs; only the certificate store follows the switch.
        self.context = server_context(identity, ())
        self.context.sni_callback = self._select

    def update(self, allowed_certs_pem: Iterable[str]) -> None:
        self._current = server_context(self._identity, allowed_certs_pem)

    def _select(self, conn: ssl.SSLObject, _server_name: str | None, _ctx: ssl.SSLContext) -> None:
        conn.context = self._current


def _common(ctx: ssl.SSLContext) -> None:
    # Both ends are ollana: TLS 1.3 only. (TLS 1.2 resumes sessions by ID from the server's cache,
    # which could let a session outlive a trust change; 1.3 resumes only with tickets, and the
    # server issues none.)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN


def _load_anchors(ctx: ssl.SSLContext, certs_pem: Iterable[str]) -> None:
    for pem in certs_pem:
        try:
            ctx.load_verify_locations(cadata=pem)
        except ssl.SSLError as exc:
            # One bad stored certificate must not take the whole server down.
            log.warning("trust_anchor_rejected", device_id=_safe_id(pem), error=str(exc))


def _safe_id(pem: str) -> str | None:
    try:
        return grouped(device_id_of_pem(pem))
    except ValueError:
        return None


# --- peers -------------------------------------------------------------------------------------


def peer_device_id(ssl_object: ssl.SSLObject | ssl.SSLSocket | None) -> str | None:
    """The device ID of the certificate the peer presented; None without TLS or certificate.

    With aiohttp: ``peer_device_id(request.transport.get_extra_info("ssl_object"))``.
    """
    if ssl_object is None:
        return None
    der = ssl_object.getpeercert(binary_form=True)
    return device_id_of(der) if der else None


def check_peer(ssl_object: ssl.SSLObject | ssl.SSLSocket | None, expected: str) -> None:
    """Belt and braces over the pinned context: the peer's certificate must hash to ``expected``."""
    actual = peer_device_id(ssl_object)
    if actual != expected:
        raise PeerIdentityMismatch(
            f"peer presented {grouped(actual) if actual else 'no certificate'}, "
            f"expected {grouped(expected)}"
        )


async def fetch_peer_cert(host: str, port: int, timeout: float) -> bytes:
    """The DER certificate a TLS server presents, learned without trusting it.

    Only for recording a discovered server as pending: the caller must check that its SHA-256
    (``device_id_of``) is the ID the server announced. Nothing is sent over this connection.
    """
    try:
        async with asyncio.timeout(timeout):
            _reader, writer = await asyncio.open_connection(host, port, ssl=client_tls(None))
    except (OSError, TimeoutError) as exc:  # ssl.SSLError is an OSError
        raise UpstreamUnavailable(
            f"cannot fetch the certificate of {bracketed(host)}:{port}: {exc!r}"
        ) from exc
    try:
        ssl_object = writer.get_extra_info("ssl_object")
        der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
    finally:
        writer.transport.abort()  # a probe: no close_notify round trip to wait for
    if not der:
        raise UpstreamUnavailable(f"{bracketed(host)}:{port} presented no certificate")
    return bytes(der)


# --- the hello ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Hello:
    """An unauthenticated introduction: who the sender claims to be, and its certificate.

    ``device_id`` is computed from the certificate. Anyone can send anyone's certificate, which is
    harmless: allowing a certificate lets in only the holder of its key.
    """

    device_id: str
    cert_pem: str
    hostname: str


def encode_hello(identity: Identity, hostname: str) -> bytes:
    doc = {"version": HELLO_VERSION, "cert_pem": identity.cert_pem, "hostname": hostname}
    return json.dumps(doc).encode("utf-8")


def parse_hello(body: bytes) -> Hello:
    """Validate a hello body (JSON: version, cert_pem, hostname); BadHello says what is wrong."""
    if len(body) > MAX_HELLO_BYTES:
        raise BadHello(f"hello larger than {MAX_HELLO_BYTES} bytes")
    try:
        doc = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise BadHello("hello is not JSON") from None
    if not isinstance(doc, dict):
        raise BadHello("hello is not a JSON object")
    if doc.get("version", HELLO_VERSION) != HELLO_VERSION:
        raise BadHello(f"unsupported hello version {doc.get('version')!r}")
    pem, hostname = doc.get("cert_pem"), doc.get("hostname", "")
    if not isinstance(pem, str) or not pem:
        raise BadHello("hello has no cert_pem string")
    if not isinstance(hostname, str):
        raise BadHello("hello hostname is not a string")
    if len(pem) > MAX_CERT_PEM:
        raise BadHello(f"cert_pem larger than {MAX_CERT_PEM} characters")
    if len(hostname) > MAX_HOSTNAME:
        raise BadHello(f"hostname longer than {MAX_HOSTNAME} characters")
    if pem.count(_PEM_BEGIN) != 1:
        raise BadHello("cert_pem must hold exactly one certificate")
    try:
        cert = load_cert_pem(pem)
    except ValueError:
        raise BadHello("cert_pem is not a certificate") from None
    # Store the certificate as re-encoded from what was parsed: no stray text rides along.
    canonical = cert.public_bytes(serialization.Encoding.PEM).decode("ascii")
    try:
        # What cryptography parses, OpenSSL must accept as a trust anchor once it is allowed.
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cadata=canonical)
    except ssl.SSLError:
        raise BadHello("cert_pem is not usable as a TLS certificate") from None
    return Hello(
        device_id=device_id_of(cert.public_bytes(serialization.Encoding.DER)),
        cert_pem=canonical,
        hostname=sanitize_label(hostname, MAX_HOSTNAME),
    )
