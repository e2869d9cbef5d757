"""What trust mode devices decides, without sockets: this input in, this decision out."""

from __future__ import annotations

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from ollana.trust import identity
from ollana.trust.decisions import (
    Belief,
    Presented,
    Standing,
    Verdict,
    anchors,
    belief,
    due,
    genuine,
    hello_reply,
    must_cut,
    presented,
    refusal,
    standing,
)
from ollana.trust.document import AllowedDevice, PeerKind, PendingDevice
from ollana.trust.identity import device_id_of_pem, grouped

ME = "M" * 52
OTHER = "ABCDEFGHIJ" + "K" * 42


def allowed(device_id: str = OTHER, *, enabled: bool = True, cert: str = "cert") -> AllowedDevice:
    return AllowedDevice(device_id, "laptop", cert, added_at=1.0, last_seen=None, enabled=enabled)


def pending(device_id: str, kind: PeerKind, cert: str) -> PendingDevice:
    return PendingDevice(device_id, "host", "10.0.0.9", cert, kind, first_seen=1.0, last_seen=2.0)


# --- standing ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("device_id", "entry", "expected"),
    [
        (None, None, Standing.ANONYMOUS),
        (ME, None, Standing.SELF),
        (OTHER, None, Standing.UNKNOWN),
        (OTHER, allowed(), Standing.ALLOWED),
        (OTHER, allowed(enabled=False), Standing.DISABLED),
    ],
)
def test_standing(device_id: str | None, entry: AllowedDevice | None, expected: Standing) -> None:
    assert standing(device_id, ME, entry) is expected


def test_only_ourselves_and_enabled_devices_are_admitted() -> None:
    assert {s for s in Standing if s.admitted} == {Standing.SELF, Standing.ALLOWED}


# --- the gate ------------------------------------------------------------------------------------


@pytest.mark.parametrize("who", [Standing.SELF, Standing.ALLOWED])
def test_admitted_devices_pass_the_gate(who: Standing) -> None:
    assert refusal(OTHER, who, hostname="gpu", server_short="SRVSHRT") is None


def test_a_disabled_device_is_told_so_and_how_to_get_back_in() -> None:
    refused = refusal(OTHER, Standing.DISABLED, hostname="gpu", server_short="SRVSHRT")
    assert refused is not None and refused.reason == "device not allowed"
    assert refused.message == (
        f"ollana: this device ({grouped(OTHER)}) is disabled on the server on gpu; "
        "there, run `ollana device allow ABCDEFG`"
    )


def test_an_unknown_device_is_told_it_is_not_allowed() -> None:
    refused = refusal(OTHER, Standing.UNKNOWN, hostname="gpu", server_short="SRVSHRT")
    assert refused is not None and refused.reason == "device not allowed"
    assert f"({grouped(OTHER)}) is not allowed on the server on gpu" in refused.message


def test_a_connection_without_a_certificate_is_told_to_run_ollana_and_pair() -> None:
    refused = refusal(None, Standing.ANONYMOUS, hostname="gpu", server_short="SRVSHRT")
    assert refused is not None and refused.reason == "no device certificate"
    assert "presented no device certificate" in refused.message
    assert "`ollana device allow ID` (this server is SRVSHRT)" in refused.message


@pytest.mark.parametrize("who", [Standing.SELF, Standing.ALLOWED])
def test_a_hello_from_an_admitted_device_is_answered_allowed(who: Standing) -> None:
    reply = hello_reply(OTHER, who, server_id=ME, hostname="gpu")
    assert (reply.status, reply.record_pending) == (200, False)
    assert reply.body == {"status": "allowed", "device_id": OTHER, "server_device_id": ME}


def test_a_hello_from_an_unknown_device_records_it_as_pending() -> None:
    reply = hello_reply(OTHER, Standing.UNKNOWN, server_id=ME, hostname="gpu")
    assert (reply.status, reply.record_pending) == (202, True)
    assert reply.body == {
        "status": "pending", "device_id": OTHER, "server_device_id": ME,
        "hint": "on gpu run `ollana device allow ABCDEFG`",
    }


def test_a_hello_from_a_disabled_device_does_not_make_it_pending() -> None:
    reply = hello_reply(OTHER, Standing.DISABLED, server_id=ME, hostname="gpu")
    assert (reply.status, reply.body["status"], reply.record_pending) == (202, "pending", False)


def test_anchors_are_ours_every_paired_device_and_pending_clients_only() -> None:
    paired = [allowed("A" * 52, cert="a"), allowed("B" * 52, enabled=False, cert="b")]
    asked = [pending("C" * 52, PeerKind.CLIENT, "c"), pending("D" * 52, PeerKind.SERVER, "d")]
    assert anchors("mine", paired, asked) == ["mine", "a", "b", "c"]


@pytest.mark.parametrize(
    ("who", "cut"),
    [
        (Standing.DISABLED, True),
        (Standing.UNKNOWN, True),
        (Standing.ALLOWED, False),
        (Standing.SELF, False),
        (Standing.ANONYMOUS, False),  # it can only say hello
    ],
)
def test_which_open_connections_are_cut_after_a_change(who: Standing, cut: bool) -> None:
    assert must_cut(who) is cut


# --- believing a server --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("verdict", "now", "expected"),
    [
        (None, 100.0, Belief.CHECK),
        (Verdict(True, 100.0), 100.0, Belief.GENUINE),
        (Verdict(True, 100.0), 160.0, Belief.GENUINE),  # exactly the TTL: still believed
        (Verdict(True, 100.0), 160.5, Belief.CHECK),
        (Verdict(False, 100.0), 130.0, Belief.IMPOSTOR),
        (Verdict(False, 100.0), 161.0, Belief.CHECK),  # an impostor verdict expires too
    ],
)
def test_belief_in_a_heartbeat(verdict: Verdict | None, now: float, expected: Belief) -> None:
    assert belief(verdict, now, ttl=60.0) is expected


@pytest.fixture(scope="module")
def server_der() -> bytes:
    _key, pem = identity.new_key_and_cert("gpu")
    return x509.load_pem_x509_certificate(pem.encode()).public_bytes(serialization.Encoding.DER)


def test_a_certificate_proves_the_id_it_hashes_to_and_no_other(server_der: bytes) -> None:
    cert = presented(server_der)
    assert cert.cert_pem is not None and device_id_of_pem(cert.cert_pem) == cert.device_id
    assert genuine(cert, cert.device_id)
    assert not genuine(cert, OTHER)


def test_bytes_that_are_not_a_certificate_prove_nothing() -> None:
    cert = presented(b"not a certificate")
    assert cert.cert_pem is None
    assert not genuine(cert, cert.device_id)
    assert not genuine(Presented(OTHER, None), OTHER)


@pytest.mark.parametrize(
    ("last", "now", "expected"),
    [
        (None, 5.0, True),  # never said hello
        (100.0, 129.9, False),
        (100.0, 130.0, True),
        (100.0, 99.0, False),  # a clock before the last hello: wait
    ],
)
def test_hello_at_most_every_30_s(last: float | None, now: float, expected: bool) -> None:
    assert due(last, now, gap=30.0) is expected


def test_a_check_may_start_at_most_every_second() -> None:
    assert due(None, 10.0, gap=1.0)
    assert not due(10.0, 10.5, gap=1.0)
    assert due(10.0, 11.0, gap=1.0)
