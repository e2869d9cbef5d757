"""What the trust store changes and when it writes, without files: this input in, this decision out."""

from __future__ import annotations

import pytest

from ollana.trust import identity
from ollana.trust.document import AllowedDevice, PeerKind, PendingDevice
from ollana.trust.edits import (
    UnknownDevice,
    allowing,
    anchors_changed,
    disabling,
    may_write,
    merged,
    overflow,
    pending_entry,
    persist_due,
)
from ollana.trust.identity import device_id_of_pem

A = "AAAAAAA" + "Q" * 45
B = "BBBBBBB" + "Q" * 45


def entry(device_id: str = A, *, enabled: bool = True, last_seen: float | None = None) -> AllowedDevice:
    return AllowedDevice(device_id, "laptop", "cert-" + device_id[0], added_at=1.0, last_seen=last_seen, enabled=enabled)


def asked(device_id: str = B, *, first: float = 10.0, last: float = 20.0, host: str = "gpu") -> PendingDevice:
    return PendingDevice(device_id, host, "10.0.0.9", "cert-" + device_id[0], PeerKind.SERVER, first, last)


# --- allow and disable ---------------------------------------------------------------------------


def test_allowing_a_pending_device_files_its_certificate_under_its_host_name() -> None:
    got = allowing(B[:7], None, 50.0, {}, {B: asked()})
    assert got == AllowedDevice(B, "gpu", "cert-B", added_at=50.0, last_seen=20.0, enabled=True)


def test_allowing_with_a_name_labels_it_and_a_pending_device_without_a_host_is_named_by_its_id() -> None:
    assert allowing(B, " my\x1bbox ", 50.0, {}, {B: asked()}).name == "my?box"
    assert allowing(B, None, 50.0, {}, {B: asked(host="")}).name == "BBBBBBB"


def test_allowing_a_disabled_device_enables_it_and_keeps_its_name_unless_given_one() -> None:
    off = entry(enabled=False)
    assert allowing(A, None, 50.0, {A: off}, {}) == entry(enabled=True)
    assert allowing(A, "  ", 50.0, {A: off}, {}).name == "laptop"
    assert allowing(A, "desk", 50.0, {A: off}, {}).name == "desk"


def test_allowing_an_unknown_device_says_to_run_pending() -> None:
    with pytest.raises(UnknownDevice, match="ollana device pending"):
        allowing(B, None, 50.0, {A: entry()}, {})


def test_disabling() -> None:
    assert disabling(A[:7], {A: entry()}, {}) == entry(enabled=False)
    with pytest.raises(UnknownDevice, match="is pending, not allowed"):
        disabling(B[:7], {A: entry()}, {B: asked()})
    with pytest.raises(UnknownDevice, match="ollana device list"):
        disabling(B[:7], {A: entry()}, {})


# --- what a node records -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cert() -> tuple[str, str]:
    _key, pem = identity.new_key_and_cert("host")
    return device_id_of_pem(pem), pem


def test_a_first_sighting_and_a_later_one(cert: tuple[str, str]) -> None:
    device_id, pem = cert
    first = pending_entry(None, device_id, pem, "evil\nhost", "10.0.0.9", PeerKind.CLIENT, 100.0)
    assert (first.hostname, first.first_seen, first.last_seen) == ("evil?host", 100.0, 100.0)
    again = pending_entry(first, device_id, pem, "host", "10.0.0.9", PeerKind.CLIENT, 130.0)
    assert (again.hostname, again.first_seen, again.last_seen) == ("host", 100.0, 130.0)
    earlier = pending_entry(first, device_id, pem, "host", "10.0.0.9", PeerKind.CLIENT, 90.0)
    assert earlier.first_seen == 90.0  # a wall clock set back


def test_a_certificate_that_is_not_the_devices_is_a_caller_bug(cert: tuple[str, str]) -> None:
    _device_id, pem = cert
    with pytest.raises(ValueError, match="does not match"):
        pending_entry(None, A, pem, "host", "10.0.0.9", PeerKind.CLIENT, 1.0)


def test_overflow_forgets_the_devices_seen_longest_ago() -> None:
    ids = [c * 52 for c in "CDEFG"]
    pending = {d: asked(d, last=float(i)) for i, d in zip([3, 1, 4, 0, 2], ids, strict=True)}
    assert overflow(pending, 5) == []
    assert overflow(pending, 3) == [ids[3], ids[1]]


def test_merged_lays_what_is_unsaved_over_what_was_read() -> None:
    read_allowed = {A: entry(last_seen=30.0)}
    read_pending = {B: asked(first=5.0, last=8.0)}
    allowed, pending = merged(
        read_allowed, read_pending,
        unsaved_seen={A: 40.0},
        unsaved_pending={B: asked(first=10.0, last=20.0)},
        limit=64,
    )
    assert allowed[A].last_seen == 40.0
    assert (pending[B].first_seen, pending[B].last_seen) == (5.0, 20.0)  # earliest first sighting
    assert read_allowed[A].last_seen == 30.0 and read_pending[B].last_seen == 8.0  # inputs untouched


def test_merged_never_moves_last_seen_back_nor_revives_a_device_allowed_meanwhile() -> None:
    allowed, pending = merged(
        {A: entry(last_seen=50.0), B: entry(B)}, {}, unsaved_seen={A: 40.0}, unsaved_pending={B: asked()}, limit=64
    )
    assert allowed[A].last_seen == 50.0 and pending == {}


def test_merged_keeps_at_most_the_limit_pending() -> None:
    _allowed, pending = merged({}, {A: asked(A, last=1.0)}, {}, {B: asked(B, last=2.0)}, limit=1)
    assert list(pending) == [B]


def test_anchors_change_with_ids_certificates_and_enabled_flags_only() -> None:
    before = {A: entry()}
    assert not anchors_changed(before, {A: entry(last_seen=99.0)})
    assert anchors_changed(before, {A: entry(enabled=False)})
    assert anchors_changed(before, {})
    assert anchors_changed(before, {A: entry(), B: entry(B)})


# --- when to write -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("last", "now", "expected"),
    [
        (None, 0.0, True),
        (10.0, 14.9, False),
        (10.0, 15.0, True),
        (10.0, 9.0, True),  # a wall clock set back: due rather than never
    ],
)
def test_one_device_is_persisted_at_most_every_interval(last: float | None, now: float, expected: bool) -> None:
    assert persist_due(last, now, interval=5.0) is expected


@pytest.mark.parametrize(
    ("last", "now", "expected"),
    [(None, 0.0, True), (10.0, 10.5, False), (10.0, 11.0, True), (10.0, 9.5, True)],
)
def test_the_file_is_written_at_most_every_gap(last: float | None, now: float, expected: bool) -> None:
    assert may_write(last, now, gap=1.0) is expected
