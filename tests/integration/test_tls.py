"""TLS contexts on real loopback sockets: pairing, refusal, the cert-less hello path, impostors."""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import pytest

from ollana.errors import UpstreamUnavailable
from ollana.service.control import own_tls
from ollana.trust import identity
from ollana.trust.identity import Identity, device_id_of
from ollana.trust.tls import (
    BadHello,
    PeerIdentityMismatch,
    ServerTLS,
    check_peer,
    client_context,
    encode_hello,
    fetch_peer_cert,
    parse_hello,
    peer_device_id,
    server_context,
)

TIMEOUT = 5.0


@pytest.fixture(scope="module")
def ids(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Identity]:
    base = tmp_path_factory.mktemp("ids")
    # "impostor" uses the server's host name: same certificate subject, different key.
    names = {"server": "alpha", "client": "beta", "stranger": "gamma", "impostor": "alpha"}
    return {role: identity.load_or_create(base / role, host) for role, host in names.items()}


class Server:
    """An echo server that records the device ID of every connection its handler sees."""

    def __init__(self) -> None:
        self.seen: asyncio.Queue[str | None] = asyncio.Queue()
        self.port = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.seen.put_nowait(peer_device_id(writer.get_extra_info("ssl_object")))
        line = await reader.readline()
        writer.write(b"ok " + line)
        await writer.drain()
        writer.close()


@asynccontextmanager
async def serving(ctx: ssl.SSLContext) -> AsyncIterator[Server]:
    srv = Server()
    server = await asyncio.start_server(srv.handle, "127.0.0.1", 0, ssl=ctx)
    srv.port = server.sockets[0].getsockname()[1]
    try:
        yield srv
    finally:
        server.close()
        await server.wait_closed()


async def exchange(port: int, ctx: ssl.SSLContext) -> tuple[bytes, str | None, str]:
    """One request; returns (answer, the server's device ID as the client saw it, TLS version)."""
    async with asyncio.timeout(TIMEOUT):
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx)
        try:
            sslobj = writer.get_extra_info("ssl_object")
            writer.write(b"hi\n")
            await writer.drain()
            return await reader.read(), peer_device_id(sslobj), sslobj.version()
        finally:
            writer.close()


async def refused(port: int, ctx: ssl.SSLContext) -> BaseException:
    """The error a refused client sees (in TLS 1.3 it may surface on the first read)."""
    try:
        answer, _, _ = await exchange(port, ctx)
    except (ssl.SSLError, ConnectionError) as exc:
        return exc
    # The server aborted after the client's side of the handshake: no answer at all.
    assert answer == b""
    return ConnectionError("closed without an answer")


async def test_paired_client_and_server_see_each_others_ids(ids: dict[str, Identity]) -> None:
    server, client = ids["server"], ids["client"]
    async with serving(server_context(server, [client.cert_pem])) as srv:
        answer, server_id, version = await exchange(
            srv.port, client_context(client, server.cert_pem)
        )
        assert answer == b"ok hi\n"
        assert server_id == server.device_id
        assert version == "TLSv1.3"
        assert srv.seen.get_nowait() == client.device_id


async def test_tls13_is_required_between_nodes(ids: dict[str, Identity]) -> None:
    """Both ends are ollana: TLS 1.2 is refused (its session-ID resumption could outlive a trust
    change)."""
    server, client = ids["server"], ids["client"]
    ctx = client_context(client, server.cert_pem)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    async with serving(server_context(server, [client.cert_pem])) as srv:
        exc = await refused(srv.port, ctx)
        assert isinstance(exc, (ssl.SSLError, ConnectionError))


def _resumed(port: int, ctx: ssl.SSLContext) -> bool:
    """Connect, talk, then connect again offering the first session: was it resumed?"""
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as raw, ctx.wrap_socket(raw) as tls:
        tls.sendall(b"hi\n")
        while tls.recv(100):  # (a TLS 1.3 ticket, if any, arrives with the data)
            pass
        session = tls.session
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as raw, \
            ctx.wrap_socket(raw, session=session) as tls:
        return tls.session_reused


async def test_no_session_resumption(ids: dict[str, Identity]) -> None:
    """A session from before a trust change must never skip the certificate check."""
    server, client = ids["server"], ids["client"]
    async with serving(server_context(server, [client.cert_pem])) as srv:
        assert not await asyncio.to_thread(_resumed, srv.port, client_context(client, server.cert_pem))


@pytest.mark.parametrize("max_version", [ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_2])
async def test_unknown_client_certificate_fails_the_handshake(
    ids: dict[str, Identity], max_version: ssl.TLSVersion
) -> None:
    server, client, stranger = ids["server"], ids["client"], ids["stranger"]
    ctx = client_context(stranger, server.cert_pem)
    ctx.maximum_version = max_version
    async with serving(server_context(server, [client.cert_pem])) as srv:
        await refused(srv.port, ctx)
        assert srv.seen.empty()  # the handler never ran: nothing could reach Ollama


async def test_client_without_certificate_passes_the_handshake_anonymously(
    ids: dict[str, Identity],
) -> None:
    server, stranger = ids["server"], ids["stranger"]
    async with serving(server_context(server, [])) as srv:
        ctx = client_context(stranger, server.cert_pem, present_cert=False)
        answer, server_id, _ = await exchange(srv.port, ctx)
        assert answer == b"ok hi\n" and server_id == server.device_id
        assert srv.seen.get_nowait() is None


async def test_client_pinned_to_a_server_refuses_an_impostor(ids: dict[str, Identity]) -> None:
    server, client, impostor = ids["server"], ids["client"], ids["impostor"]
    assert impostor.device_id != server.device_id
    async with serving(server_context(impostor, [client.cert_pem])) as srv:
        for present in (True, False):
            with pytest.raises(ssl.SSLCertVerificationError):
                await exchange(
                    srv.port, client_context(client, server.cert_pem, present_cert=present)
                )
        assert srv.seen.empty()


async def test_fetch_peer_cert_returns_the_servers_der(ids: dict[str, Identity]) -> None:
    server = ids["server"]
    async with serving(server_context(server, [])) as srv:
        der = await fetch_peer_cert("127.0.0.1", srv.port, TIMEOUT)
        assert der == server.cert_der and device_id_of(der) == server.device_id
        assert srv.seen.empty()  # the probe never got as far as a request


async def test_fetch_peer_cert_from_nothing_is_upstream_unavailable() -> None:
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()
    with pytest.raises(UpstreamUnavailable):
        await fetch_peer_cert("127.0.0.1", port, TIMEOUT)


async def test_server_tls_update_changes_who_gets_in(ids: dict[str, Identity]) -> None:
    server, client = ids["server"], ids["client"]
    tls = ServerTLS(server, [])
    ctx = client_context(client, server.cert_pem)
    async with serving(tls.context) as srv:
        await refused(srv.port, ctx)
        tls.update([client.cert_pem])
        answer, _, _ = await exchange(srv.port, ctx)
        assert answer == b"ok hi\n" and srv.seen.get_nowait() == client.device_id
        tls.update([])
        await refused(srv.port, ctx)
        assert srv.seen.empty()


async def test_check_peer(ids: dict[str, Identity]) -> None:
    server, client = ids["server"], ids["client"]
    async with serving(server_context(server, [client.cert_pem])) as srv:
        async with asyncio.timeout(TIMEOUT):
            _r, writer = await asyncio.open_connection(
                "127.0.0.1", srv.port, ssl=client_context(client, server.cert_pem)
            )
        sslobj = writer.get_extra_info("ssl_object")
        check_peer(sslobj, server.device_id)
        with pytest.raises(PeerIdentityMismatch):
            check_peer(sslobj, client.device_id)
        writer.close()
    with pytest.raises(PeerIdentityMismatch):
        check_peer(None, server.device_id)


async def test_a_bad_stored_anchor_is_skipped_not_fatal(ids: dict[str, Identity]) -> None:
    junk = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"
    server, client = ids["server"], ids["client"]
    # The good anchor after the bad one still lets its device in.
    async with serving(server_context(server, [junk, client.cert_pem])) as srv:
        answer, _, _ = await exchange(srv.port, client_context(client, server.cert_pem))
        assert answer == b"ok hi\n"
        assert srv.seen.get_nowait() == client.device_id


# --- the hello (pure) ----------------------------------------------------------------------------


def test_hello_round_trip_computes_the_id_from_the_certificate(ids: dict[str, Identity]) -> None:
    client = ids["client"]
    hello = parse_hello(encode_hello(client, "beta"))
    assert hello.device_id == client.device_id
    assert hello.cert_pem == client.cert_pem and hello.hostname == "beta"
    # A claimed ID in the body is ignored.
    doc = {"cert_pem": client.cert_pem, "hostname": "x", "device_id": ids["server"].device_id}
    assert parse_hello(json.dumps(doc).encode()).device_id == client.device_id


def test_hello_drops_stray_text_and_control_characters(ids: dict[str, Identity]) -> None:
    client = ids["client"]
    doc = {"cert_pem": "junk before\n" + client.cert_pem + "junk after", "hostname": "evil\x1b[2J"}
    hello = parse_hello(json.dumps(doc).encode())
    assert hello.cert_pem == client.cert_pem
    assert hello.hostname == "evil?[2J"


def _body(**fields: object) -> bytes:
    return json.dumps(fields).encode()


@pytest.mark.parametrize(
    "make",
    [
        lambda c: b"not json",
        lambda c: b"[1]",
        lambda c: b"{" + b" " * 20000 + b"}",
        lambda c: _body(hostname="x"),
        lambda c: _body(cert_pem=42, hostname="x"),
        lambda c: _body(cert_pem=c.cert_pem, hostname=7),
        lambda c: _body(cert_pem=c.cert_pem, hostname="h" * 300),
        lambda c: _body(cert_pem=c.cert_pem, hostname="x", version=2),
        lambda c: _body(cert_pem=c.cert_pem + c.cert_pem, hostname="x"),
        lambda c: _body(cert_pem="-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"),
        lambda c: _body(cert_pem="x" * 9000, hostname="x"),
    ],
)
def test_bad_hellos_are_refused(
    ids: dict[str, Identity], make: Callable[[Identity], bytes]
) -> None:
    with pytest.raises(BadHello):
        parse_hello(make(ids["client"]))


def test_context_settings(ids: dict[str, Identity]) -> None:
    srv = server_context(ids["server"], [])
    assert srv.verify_mode == ssl.CERT_OPTIONAL and not srv.check_hostname
    cli = client_context(ids["client"], ids["server"].cert_pem)
    assert cli.verify_mode == ssl.CERT_REQUIRED and not cli.check_hostname
    for ctx in (srv, cli):
        assert ctx.minimum_version == ssl.TLSVersion.TLSv1_3
        assert ctx.verify_flags & ssl.VERIFY_X509_PARTIAL_CHAIN


async def test_ollana_status_reaches_its_own_node_with_the_nodes_key(ids: dict[str, Identity]) -> None:
    server = ids["server"]
    ctx = own_tls({"cert_file": str(server.cert_path), "key_file": str(server.key_path)})
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_3 and not ctx.check_hostname
    async with serving(server_context(server, [server.cert_pem])) as srv:
        answer, seen, _ = await exchange(srv.port, ctx)
        assert answer == b"ok hi\n" and seen == server.device_id
        assert await srv.seen.get() == server.device_id  # it presented the node's own certificate
    async with serving(server_context(ids["impostor"], [server.cert_pem])) as srv:
        assert isinstance(await refused(srv.port, ctx), ssl.SSLError)  # pinned to the node's key
