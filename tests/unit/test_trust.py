"""The trust store (devices.json) and the `ollana device` commands that edit it."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Iterator, MutableMapping
from pathlib import Path
from typing import Any

import pytest
import structlog
from click.testing import CliRunner

from ollana.cli import device as cli_device
from ollana.trust import identity
from ollana.trust.document import PeerKind
from ollana.trust.edits import AmbiguousDeviceId, UnknownDevice, resolve_prefix
from ollana.trust.identity import InvalidDeviceId, device_id_of_pem, grouped
from ollana.trust.store import TrustStore, TrustStoreError


class Dev:
    """A fake remote device: a real certificate, its ID, a host name."""

    def __init__(self, host: str) -> None:
        _key, self.cert = identity.new_key_and_cert(host)
        self.id = device_id_of_pem(self.cert)
        self.host = host


@pytest.fixture(scope="module")
def devs() -> list[Dev]:
    return [Dev(f"host{i}") for i in range(8)]


@pytest.fixture(autouse=True)
def quiet_logs() -> Iterator[list[MutableMapping[str, Any]]]:
    with structlog.testing.capture_logs() as captured:
        yield captured


def pend(store: TrustStore, dev: Dev, now: float = 100.0, kind: PeerKind = PeerKind.CLIENT) -> bool:
    return store.record_pending(dev.id, dev.cert, dev.host, "10.0.0.9", kind, now)


def enabled_certs(store: TrustStore) -> list[str]:
    return [d.cert_pem for d in store.allowed() if d.enabled]


def test_missing_file_is_an_empty_store_and_loading_writes_nothing(tmp_path: Path) -> None:
    store = TrustStore.load(tmp_path)
    assert store.allowed() == [] and store.pending() == [] and enabled_certs(store) == []
    assert not store.reload_if_changed()
    assert list(tmp_path.iterdir()) == []


def test_pending_then_allow_round_trips(tmp_path: Path, devs: list[Dev]) -> None:
    a = devs[0]
    node = TrustStore.load(tmp_path)
    assert pend(node, a, now=100.0, kind=PeerKind.SERVER) is True
    assert pend(node, a, now=100.0) is False  # already pending
    assert not node.is_allowed(a.id) and node.cert_of(a.id) is None

    cli = TrustStore.load(tmp_path)
    [p] = cli.pending()
    assert (p.device_id, p.hostname, p.address, p.first_seen) == (a.id, "host0", "10.0.0.9", 100.0)
    entry = cli.allow(a.id[:7].lower(), now=200.0)
    assert entry.name == "host0" and entry.enabled and entry.cert_pem == a.cert
    assert entry.added_at == 200.0 and entry.last_seen == 100.0

    again = TrustStore.load(tmp_path)
    assert again.pending() == [] and again.allowed() == [entry]
    assert again.is_allowed(a.id) and again.cert_of(a.id) == a.cert
    assert enabled_certs(again) == [a.cert]
    assert stat_mode(again.path) == 0o600


def stat_mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def test_allow_with_a_name_and_records_for_allowed_devices_are_ignored(
    tmp_path: Path, devs: list[Dev]
) -> None:
    store = TrustStore.load(tmp_path)
    pend(store, devs[0])
    store.allow(grouped(devs[0].id), "laptop", now=1.0)
    assert store.allowed()[0].name == "laptop"
    assert pend(store, devs[0], now=500.0) is False
    assert store.pending() == []


def test_allowing_an_unknown_device_says_to_run_pending(tmp_path: Path, devs: list[Dev]) -> None:
    store = TrustStore.load(tmp_path)
    with pytest.raises(UnknownDevice, match="ollana device pending"):
        store.allow(devs[1].id, now=1.0)
    assert not store.path.exists()


def test_disable_and_reenable(tmp_path: Path, devs: list[Dev]) -> None:
    store = TrustStore.load(tmp_path)
    for d in devs[:2]:
        pend(store, d)
        store.allow(d.id, now=1.0)
    off = store.disable(devs[0].id[:10])
    assert not off.enabled and not store.is_allowed(devs[0].id)
    assert enabled_certs(store) == [devs[1].cert] and store.cert_of(devs[0].id) is None
    assert not TrustStore.load(tmp_path).is_allowed(devs[0].id)
    store.allow(devs[0].id, now=2.0)
    assert TrustStore.load(tmp_path).is_allowed(devs[0].id)


def test_disable_refuses_pending_and_unknown_devices(tmp_path: Path, devs: list[Dev]) -> None:
    store = TrustStore.load(tmp_path)
    pend(store, devs[0])
    with pytest.raises(UnknownDevice, match="pending"):
        store.disable(devs[0].id)
    with pytest.raises(UnknownDevice):
        store.disable(devs[1].id)


def test_resolve_rules() -> None:
    ids = [identity.id_from_bytes(bytes([1, 2, 3, 4, 5, i] + [0] * 26)) for i in range(3)]
    ids.append(identity.id_from_bytes(bytes([9] * 32)))
    assert resolve_prefix(ids[3][:7].lower(), ids) == ids[3]
    assert resolve_prefix(grouped(ids[0]), ids) == ids[0]
    assert resolve_prefix(ids[1][:10], ids) == ids[1]
    with pytest.raises(InvalidDeviceId, match="too short"):
        resolve_prefix(ids[3][:6], ids)
    with pytest.raises(AmbiguousDeviceId, match="3 devices"):
        resolve_prefix(ids[0][:7], ids)
    with pytest.raises(UnknownDevice):
        resolve_prefix("ZZZZZZZ", ids)


def test_store_resolve_covers_allowed_and_pending(tmp_path: Path, devs: list[Dev]) -> None:
    store = TrustStore.load(tmp_path)
    pend(store, devs[0])
    pend(store, devs[1])
    store.allow(devs[1].id, now=1.0)
    assert store.allow(devs[0].id[:7], now=2.0).device_id == devs[0].id
    assert store.allow(devs[1].id[:7], now=2.0).device_id == devs[1].id


def test_a_corrupt_file_is_a_clear_error_not_an_empty_store(tmp_path: Path) -> None:
    (tmp_path / "devices.json").write_text("{ nope")
    with pytest.raises(TrustStoreError, match=r"devices\.json is corrupt"):
        TrustStore.load(tmp_path)
    assert (tmp_path / "devices.json").read_text() == "{ nope"


def test_a_certificate_that_hashes_to_another_id_is_corrupt(
    tmp_path: Path, devs: list[Dev]
) -> None:
    store = TrustStore.load(tmp_path)
    pend(store, devs[0])
    store.allow(devs[0].id, now=1.0)
    doc = json.loads(store.path.read_text())
    doc["allowed"][devs[0].id]["cert_pem"] = devs[1].cert
    store.path.write_text(json.dumps(doc))
    with pytest.raises(TrustStoreError, match="belongs to another device"):
        TrustStore.load(tmp_path)


@pytest.mark.parametrize(
    "doc",
    [[], {"version": 9}, {"allowed": []}, {"allowed": {"X": {"name": "n"}}}, {"pending": {"X": 3}}],
)
def test_bad_structures_are_corrupt(tmp_path: Path, doc: Any) -> None:
    (tmp_path / "devices.json").write_text(json.dumps(doc))
    with pytest.raises(TrustStoreError):
        TrustStore.load(tmp_path)


def test_record_pending_checks_the_certificate_matches_the_id(
    tmp_path: Path, devs: list[Dev]
) -> None:
    store = TrustStore.load(tmp_path)
    with pytest.raises(ValueError):
        store.record_pending(devs[0].id, devs[1].cert, "h", "a", PeerKind.CLIENT, 1.0)


def test_peer_supplied_labels_are_sanitized(tmp_path: Path, devs: list[Dev]) -> None:
    store = TrustStore.load(tmp_path)
    store.record_pending(
        devs[0].id, devs[0].cert, "evil\x1b[2J" + "x" * 100, "a\nb", PeerKind.CLIENT, 1.0
    )
    [p] = TrustStore.load(tmp_path).pending()
    assert p.hostname.startswith("evil?[2J") and len(p.hostname) == 64 and p.address == "a?b"


# --- the running node's view ---------------------------------------------------------------------


def test_reload_if_changed_sees_cli_changes(tmp_path: Path, devs: list[Dev]) -> None:
    node = TrustStore.load(tmp_path)
    pend(node, devs[0])
    assert not node.reload_if_changed()  # its own writes are not news
    TrustStore.load(tmp_path).allow(devs[0].id, now=1.0)
    assert node.reload_if_changed() and node.is_allowed(devs[0].id)
    assert not node.reload_if_changed()
    TrustStore.load(tmp_path).disable(devs[0].id)
    assert node.reload_if_changed() and not node.is_allowed(devs[0].id)


def test_a_change_picked_up_by_the_nodes_own_write_is_still_reported(
    tmp_path: Path, devs: list[Dev]
) -> None:
    node = TrustStore.load(tmp_path, persist_interval=5.0, min_write_gap=0.0)
    pend(node, devs[0], now=0.0)
    TrustStore.load(tmp_path).allow(devs[0].id, now=1.0)
    pend(node, devs[1], now=1.0)  # a write: reads the file (with the allow) under the lock
    assert node.is_allowed(devs[0].id)
    assert node.reload_if_changed()


def test_a_file_corrupted_under_a_running_node_keeps_the_last_good_state(
    tmp_path: Path, devs: list[Dev], quiet_logs: list[MutableMapping[str, Any]]
) -> None:
    node = TrustStore.load(tmp_path)
    pend(node, devs[0])
    node.allow(devs[0].id, now=1.0)
    assert node.reload_if_changed()  # its own allow counts: the anchors changed
    node.path.write_text("garbage!")
    assert not node.reload_if_changed()
    assert node.is_allowed(devs[0].id)
    assert [e["event"] for e in quiet_logs].count("trust_store_unreadable") == 1
    node.reload_if_changed()
    assert [e["event"] for e in quiet_logs].count("trust_store_unreadable") == 1  # logged once


def test_pending_writes_are_throttled_per_device(tmp_path: Path, devs: list[Dev]) -> None:
    node = TrustStore.load(tmp_path, persist_interval=5.0, min_write_gap=1.0)
    pend(node, devs[0], now=0.0)
    written = node.path.read_bytes()
    for t in (1.0, 2.0, 3.0):
        pend(node, devs[0], now=t)
        assert not node.flush(now=t + 0.5)  # only held-back updates of a device not yet due
    assert node.path.read_bytes() == written
    assert node.pending()[0].last_seen == 3.0  # memory is current
    assert node.flush(now=5.5)
    assert TrustStore.load(tmp_path).pending()[0].last_seen == 3.0


def test_a_flood_of_new_devices_is_bounded_in_writes_and_entries(
    tmp_path: Path, devs: list[Dev]
) -> None:
    node = TrustStore.load(tmp_path, min_write_gap=1.0, max_pending=3)
    for i, d in enumerate(devs[:6]):
        pend(node, d, now=10.0 + i / 100)
    on_disk = TrustStore.load(tmp_path)
    assert [p.device_id for p in on_disk.pending()] == [devs[0].id]  # one write in the gap
    assert len(node.pending()) == 3
    assert node.flush(now=11.5)
    assert {p.device_id for p in TrustStore.load(tmp_path).pending()} == {d.id for d in devs[3:6]}


def test_touch_last_seen_is_throttled_and_persisted(tmp_path: Path, devs: list[Dev]) -> None:
    node = TrustStore.load(tmp_path, persist_interval=5.0, min_write_gap=0.0)
    pend(node, devs[0], now=0.0)
    node.allow(devs[0].id, now=0.0)
    node.touch_last_seen(devs[0].id, now=10.0)
    node.touch_last_seen(devs[0].id, now=11.0)
    assert TrustStore.load(tmp_path).allowed()[0].last_seen == 10.0
    assert node.allowed()[0].last_seen == 11.0
    node.touch_last_seen(devs[1].id, now=12.0)  # not allowed: ignored
    assert node.flush(now=15.0)
    assert TrustStore.load(tmp_path).allowed()[0].last_seen == 11.0


def test_unsaved_updates_survive_a_reload_and_do_not_undo_an_allow(
    tmp_path: Path, devs: list[Dev]
) -> None:
    node = TrustStore.load(tmp_path, persist_interval=5.0, min_write_gap=10.0)
    pend(node, devs[0], now=0.0)
    pend(node, devs[0], now=1.0)  # held back
    TrustStore.load(tmp_path).allow(devs[0].id, now=2.0)
    assert node.reload_if_changed() and node.is_allowed(devs[0].id)
    assert node.pending() == []
    assert node.flush(now=20.0)
    on_disk = TrustStore.load(tmp_path)
    assert on_disk.pending() == [] and on_disk.is_allowed(devs[0].id)


# --- concurrent writers --------------------------------------------------------------------------


def _seed_pending(tmp_path: Path, devs: list[Dev]) -> None:
    seed = TrustStore.load(tmp_path, min_write_gap=0.0)
    for d in devs:
        pend(seed, d)


def test_concurrent_threads_allowing_different_devices_all_survive(
    tmp_path: Path, devs: list[Dev]
) -> None:
    _seed_pending(tmp_path, devs)
    barrier = threading.Barrier(len(devs))
    errors: list[BaseException] = []

    def allow(d: Dev) -> None:
        try:
            store = TrustStore.load(tmp_path)
            barrier.wait(timeout=5)
            store.allow(d.id, now=1.0)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=allow, args=(d,)) for d in devs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    assert errors == []
    final = TrustStore.load(tmp_path)
    assert {d.device_id for d in final.allowed()} == {d.id for d in devs}
    assert final.pending() == []


def test_concurrent_processes_allowing_different_devices_all_survive(
    tmp_path: Path, devs: list[Dev]
) -> None:
    _seed_pending(tmp_path, devs)
    script = (
        "import sys; from pathlib import Path; from ollana.trust.store import TrustStore\n"
        "for d in sys.argv[2:]:\n"
        "    TrustStore.load(Path(sys.argv[1])).allow(d, now=1.0)\n"
    )
    halves = [devs[0::2], devs[1::2]]
    procs = [
        subprocess.Popen([sys.executable, "-c", script, str(tmp_path), *[d.id for d in half]])
        for half in halves
    ]
    assert [p.wait(timeout=20) for p in procs] == [0, 0]
    assert {d.device_id for d in TrustStore.load(tmp_path).allowed()} == {d.id for d in devs}


# --- CLI: list, pending, allow, disable ----------------------------------------------------------


@pytest.fixture
def run(monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setattr(cli_device, "_setup_logging", lambda: None)

    def invoke(*args: str) -> Any:
        return CliRunner().invoke(cli_device.device, list(args), catch_exceptions=False)

    return invoke


def test_cli_pairing_flow(tmp_path: Path, devs: list[Dev], run: Any) -> None:
    sd = ["--state-dir", str(tmp_path)]
    identity.load_or_create(tmp_path, "me")
    assert "No pending devices" in run("pending", *sd).output
    assert "No allowed devices" in run("list", *sd).output
    pend(TrustStore.load(tmp_path), devs[0], kind=PeerKind.SERVER)

    out = run("pending", *sd).output
    assert "host0" in out and "10.0.0.9" in out and "server" in out and grouped(devs[0].id) in out
    [p] = json.loads(run("pending", "--json", *sd).output)
    assert p["device_id"] == devs[0].id and p["kind"] == "server"

    allowed = run("allow", devs[0].id[:7].lower(), "--name", "gpu box", *sd)
    assert allowed.exit_code == 0 and "gpu box" in allowed.output
    assert identity.load(tmp_path).short in allowed.output  # what to allow on the other side
    out = run("list", *sd).output
    assert "gpu box" in out and grouped(devs[0].id) in out and "yes" in out
    [d] = json.loads(run("list", "--json", *sd).output)
    assert d["enabled"] is True and d["name"] == "gpu box"

    assert run("disable", devs[0].id[:8], *sd).exit_code == 0
    [d] = json.loads(run("list", "--json", *sd).output)
    assert d["enabled"] is False


def test_with_a_corrupt_key_only_show_stops(tmp_path: Path, devs: list[Dev], run: Any) -> None:
    # What docs/security.md says: the commands that read only devices.json keep working.
    sd = ["--state-dir", str(tmp_path)]
    identity.load_or_create(tmp_path, "me")
    pend(TrustStore.load(tmp_path), devs[0], kind=PeerKind.SERVER)
    (tmp_path / "device.key").write_text("garbage")
    shown = run("show", *sd)
    assert shown.exit_code == 2 and "device.key" in shown.output
    assert run("pending", *sd).exit_code == 0
    allowed = run("allow", devs[0].id[:7], *sd)
    assert allowed.exit_code == 0 and "Allowed" in allowed.output and "Pairing needs both sides" not in allowed.output
    assert run("list", *sd).exit_code == 0
    assert run("disable", devs[0].id[:7], *sd).exit_code == 0
    assert (tmp_path / "device.key").read_text() == "garbage"  # nothing regenerated it


def test_cli_errors_are_one_line_with_exit_2(tmp_path: Path, devs: list[Dev], run: Any) -> None:
    sd = ["--state-dir", str(tmp_path)]
    unknown = run("allow", devs[0].id, *sd)
    assert unknown.exit_code == 2 and "ollana device pending" in unknown.output
    short = run("allow", "ABC", *sd)
    assert short.exit_code == 2 and "too short" in short.output
    (tmp_path / "devices.json").write_text("nope")
    corrupt = run("list", *sd)
    assert corrupt.exit_code == 2 and "devices.json is corrupt" in corrupt.output


def test_a_failing_write_is_logged_and_retried_less_often(
    tmp_path: Path, devs: list[Dev], quiet_logs: list[MutableMapping[str, Any]]
) -> None:
    node = TrustStore.load(tmp_path, persist_interval=5.0, min_write_gap=1.0)
    node.path.write_text("garbage!")  # corrupt under the node: writes must not clobber it
    assert pend(node, devs[0], now=0.0) is True
    assert len(node.pending()) == 1  # still known in memory
    assert not node.flush(now=2.0)  # backing off
    assert [e["event"] for e in quiet_logs].count("trust_store_write_failed") == 1
    node.path.unlink()
    assert node.flush(now=5.0)
    assert [p.device_id for p in TrustStore.load(tmp_path).pending()] == [devs[0].id]
