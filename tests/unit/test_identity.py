"""The node's identity: creation, persistence, ID forms, loud failures instead of silent ones."""

from __future__ import annotations

import base64
import hashlib
import stat
from collections.abc import Iterator, MutableMapping
from pathlib import Path
from typing import Any

import pytest
import structlog
from click.testing import CliRunner

from ollana.cli import device as cli_device
from ollana.trust import identity
from ollana.trust.identity import IdentityError, InvalidDeviceId


@pytest.fixture
def logs() -> Iterator[list[MutableMapping[str, Any]]]:
    with structlog.testing.capture_logs() as captured:
        yield captured


def test_first_use_creates_a_private_key_and_a_certificate(
    tmp_path: Path, logs: list[MutableMapping[str, Any]]
) -> None:
    me = identity.load_or_create(tmp_path / "state", "box")
    key, cert = tmp_path / "state" / "device.key", tmp_path / "state" / "device.crt"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert cert.exists() and me.cert_path == cert and me.key_path == key
    digest = hashlib.sha256(me.cert_der).digest()
    assert me.device_id == base64.b32encode(digest).decode().rstrip("=")
    assert len(me.device_id) == 52 and me.device_id.isupper()
    assert identity.id_to_bytes(me.device_id) == digest
    assert [e["event"] for e in logs] == ["identity_created"]
    assert logs[0]["device_id"] == me.grouped
    secret = key.read_text()
    assert "PRIVATE KEY" in secret
    assert secret not in repr(logs) and secret not in repr(me)


def test_the_identity_survives_a_reload(
    tmp_path: Path, logs: list[MutableMapping[str, Any]]
) -> None:
    first = identity.load_or_create(tmp_path, "box")
    assert identity.load_or_create(tmp_path, "other") == first
    assert identity.load(tmp_path) == first
    assert [e["event"] for e in logs] == ["identity_created"]


def test_certificate_names_the_host_and_is_not_a_ca(tmp_path: Path) -> None:
    me = identity.load_or_create(tmp_path, "x" * 100)
    cert = identity.load_cert_pem(me.cert_pem)
    cn = cert.subject.rfc4514_string()
    assert cn.startswith("CN=ollana xxx") and len(cn) == 3 + 64
    assert cert.issuer == cert.subject


def test_a_loose_key_mode_is_tightened(
    tmp_path: Path, logs: list[MutableMapping[str, Any]]
) -> None:
    me = identity.load_or_create(tmp_path, "box")
    me.key_path.chmod(0o644)
    identity.load(tmp_path)
    assert stat.S_IMODE(me.key_path.stat().st_mode) == 0o600
    assert "identity_key_mode_fixed" in [e["event"] for e in logs]


def test_grouped_form_and_parsing() -> None:
    device_id = identity.id_from_bytes(bytes(range(32)))
    g = identity.grouped(device_id)
    groups = g.split("-")
    assert [len(x) for x in groups] == [7] * 7 + [3]
    assert identity.short(device_id) == groups[0]
    assert identity.parse_device_id(g.lower()) == device_id
    assert identity.parse_device_id(" " + g + " ") == device_id
    assert identity.parse_prefix(g[:9].lower()) == device_id[:8]  # dashes do not count
    assert identity.parse_prefix(g) == device_id


@pytest.mark.parametrize("text", ["", "ABCDEF", "ABC-DEF", "ABCDEF1", "ABCDEFG!", "A" * 53])
def test_bad_ids_and_short_prefixes_are_refused(text: str) -> None:
    with pytest.raises(InvalidDeviceId):
        identity.parse_prefix(text)


def test_a_full_id_has_one_spelling() -> None:
    device_id = identity.id_from_bytes(bytes(32))
    assert device_id.endswith("A")
    with pytest.raises(InvalidDeviceId):
        identity.parse_device_id(device_id[:-1] + "B")  # same bytes, non-zero padding bits
    with pytest.raises(InvalidDeviceId):
        identity.parse_device_id(device_id[:-1])


def test_corrupt_key_is_a_clear_error_not_a_new_identity(tmp_path: Path) -> None:
    me = identity.load_or_create(tmp_path, "box")
    me.key_path.write_text("garbage")
    for load in (identity.load, identity.load_or_create):
        with pytest.raises(IdentityError, match="device.key.*reset-identity"):
            load(tmp_path)
    assert me.cert_path.read_text() == me.cert_pem  # nothing was replaced


def test_corrupt_certificate_is_a_clear_error(tmp_path: Path) -> None:
    me = identity.load_or_create(tmp_path, "box")
    me.cert_path.write_text("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
    with pytest.raises(IdentityError, match="device.crt"):
        identity.load_or_create(tmp_path)


def test_key_that_does_not_match_the_certificate(tmp_path: Path) -> None:
    me = identity.load_or_create(tmp_path / "a", "a")
    other = identity.load_or_create(tmp_path / "b", "b")
    me.cert_path.write_text(other.cert_pem)
    with pytest.raises(IdentityError, match="does not match"):
        identity.load_or_create(tmp_path / "a")


@pytest.mark.parametrize("missing", ["device.key", "device.crt"])
def test_one_file_missing_is_an_error(tmp_path: Path, missing: str) -> None:
    identity.load_or_create(tmp_path, "box")
    (tmp_path / missing).unlink()
    with pytest.raises(IdentityError, match=f"{missing} is missing"):
        identity.load_or_create(tmp_path)


def test_load_without_identity_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(IdentityError, match="no identity"):
        identity.load(tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_reset_makes_a_new_identity_and_says_so(
    tmp_path: Path, logs: list[MutableMapping[str, Any]]
) -> None:
    first = identity.load_or_create(tmp_path, "box")
    old, new = identity.reset(tmp_path, "box")
    assert old == first.device_id and new.device_id != first.device_id
    assert identity.load(tmp_path) == new
    reset = [e for e in logs if e["event"] == "identity_reset"]
    assert (
        reset and reset[0]["log_level"] == "warning" and reset[0]["old_device_id"] == first.grouped
    )


def test_reset_recovers_from_a_corrupt_key(tmp_path: Path) -> None:
    first = identity.load_or_create(tmp_path, "box")
    first.key_path.write_text("garbage")
    old, new = identity.reset(tmp_path)
    assert old is None and identity.load(tmp_path) == new


# --- CLI: show and reset-identity ---------------------------------------------------------------


@pytest.fixture
def run(monkeypatch: pytest.MonkeyPatch, logs: list[MutableMapping[str, Any]]) -> Any:
    monkeypatch.setattr(cli_device, "_setup_logging", lambda: None)

    def invoke(*args: str) -> Any:
        return CliRunner().invoke(cli_device.device, list(args), catch_exceptions=False)

    return invoke


def test_cli_show(tmp_path: Path, run: Any) -> None:
    result = run("show", "--state-dir", str(tmp_path))
    assert result.exit_code == 0
    me = identity.load(tmp_path)
    assert f"Device ID: {me.grouped}" in result.output and f"Short ID:  {me.short}" in result.output
    as_json = run("show", "--json", "--state-dir", str(tmp_path))
    assert f'"device_id": "{me.device_id}"' in as_json.output


def test_cli_show_uses_ollana_home(
    tmp_path: Path, run: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OLLANA_HOME", str(tmp_path / "home"))
    assert run("show").exit_code == 0
    assert (tmp_path / "home" / "device.key").exists()


def test_cli_show_with_a_corrupt_key_fails_with_exit_2(tmp_path: Path, run: Any) -> None:
    identity.load_or_create(tmp_path, "box")
    (tmp_path / "device.key").write_text("garbage")
    result = run("show", "--state-dir", str(tmp_path))
    assert result.exit_code == 2 and "device.key" in result.output


def test_cli_reset_identity_needs_yes(tmp_path: Path, run: Any) -> None:
    first = identity.load_or_create(tmp_path, "box")
    refused = run("reset-identity", "--state-dir", str(tmp_path))
    assert refused.exit_code == 2 and "--yes" in refused.output
    assert identity.load(tmp_path) == first
    done = run("reset-identity", "--yes", "--state-dir", str(tmp_path))
    assert done.exit_code == 0 and f"Old device ID: {first.grouped}" in done.output
    assert identity.load(tmp_path).device_id != first.device_id


def test_a_half_written_identity_is_read_again_under_the_creation_lock(tmp_path: Path) -> None:
    """A `device show` next to a starting `serve` may see the key before the certificate: it
    waits for the creator's lock instead of calling the identity broken."""
    import fcntl
    import os
    import threading

    first = identity.load_or_create(tmp_path / "a", "alpha")
    state = tmp_path / "b"
    state.mkdir(mode=0o700)
    (state / first.key_path.name).write_bytes(first.key_path.read_bytes())  # key only, so far
    lock = os.open(state / identity.LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(lock, fcntl.LOCK_EX)  # the "creator" holds the lock while it writes
    result: list[identity.Identity] = []
    reader = threading.Thread(target=lambda: result.append(identity.load_or_create(state, "alpha")))
    reader.start()
    (state / first.cert_path.name).write_bytes(first.cert_path.read_bytes())  # creation completes
    os.close(lock)
    reader.join(10)
    assert result and result[0].device_id == first.device_id
