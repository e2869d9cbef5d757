"""DNS-SD records without sockets: building, parsing (round trips and garbage), when to update,
and the peer table's mDNS path (one peer seen both ways, liveness without refreshes)."""

from __future__ import annotations

import base64
import ipaddress
import itertools
import math
import random
from dataclasses import replace

import pytest

from ollana.discovery.mdns import (
    OLLAMA_TYPE,
    SERVICE_TYPE,
    Resolved,
    Step,
    choose_address,
    instance_name,
    next_step,
    ollama_record,
    ollana_record,
    parse,
    server_name,
)
from ollana.discovery.packet import Heartbeat
from ollana.discovery.peers import ChangeKind, PeerTable, Source

NODE = bytes(range(16))
INST = bytes([7]) * 8
DEVICE = base64.b32encode(bytes(range(32))).decode().rstrip("=")
LAN = [ipaddress.ip_network("10.77.0.0/24"), ipaddress.ip_network("fd00:77::/64")]


def record(**kw: object) -> Resolved:
    """A resolved record as python-zeroconf reports one, built from our own record."""
    values: dict[str, object] = {
        "hostname": "gpu-box", "node_id": NODE, "instance_id": INST, "port": 11435, "scheme": "http", "trust": "open",
        "device_id": None, "ollama_version": "0.12.3", "catalog_gen": 42,
    }
    values.update(kw)
    rec = ollana_record(**values)  # type: ignore[arg-type]
    props = {k.encode(): v.encode() for k, v in rec.txt}
    return Resolved(rec.name, rec.port, ("10.77.0.2",), props)


def with_txt(resolved: Resolved, **changes: bytes | None) -> Resolved:
    props = dict(resolved.properties)
    for key, value in changes.items():
        if value is None:
            props.pop(key.encode(), None)
        else:
            props[key.encode()] = value
    return replace(resolved, properties=props)


# -- building --------------------------------------------------------------------------------------


def test_open_record_names_the_host_and_short_node_id() -> None:
    rec = ollana_record(hostname="gpu-box.lan", node_id=NODE, instance_id=INST, port=11435, scheme="http",
                        trust="open", device_id=None, ollama_version="0.12.3", catalog_gen=None)
    assert rec.type == SERVICE_TYPE == "_ollana._tcp.local."
    assert rec.name == "gpu-box (0001020)._ollana._tcp.local."
    assert rec.server == "gpu-box-0001020.local." and rec.port == 11435
    assert rec.properties() == {"v": "1", "node": NODE.hex(), "inst": INST.hex(), "scheme": "http",
                                "trust": "open", "ollama": "0.12.3"}  # no device, no cat


def test_devices_record_carries_the_full_device_id_and_its_short_form_in_the_name() -> None:
    rec = ollana_record(hostname="box", node_id=NODE, instance_id=INST, port=11435, scheme="https",
                        trust="devices", device_id=DEVICE, ollama_version="", catalog_gen=7)
    assert rec.instance == f"box ({DEVICE[:7]})" and rec.server == f"box-{DEVICE[:7].lower()}.local."
    assert rec.properties()["device"] == DEVICE and rec.properties()["cat"] == "7"


def test_names_fit_dns_labels_whatever_the_host_name() -> None:
    long = "ü" * 100 + ".example"
    name = instance_name(long, "ABCDEFG")
    assert len(name.encode()) <= 63 and name.endswith(" (ABCDEFG)")
    assert instance_name("", "ABCDEFG") == "ollana (ABCDEFG)"
    assert instance_name("bad\x1b[31mhost") == "bad?[31mhost"
    label = server_name("My_Box!!" + "x" * 80, "abcdefg").removesuffix(".local.")
    assert len(label) <= 63 and label.endswith("-abcdefg") and label.startswith("my-box-")
    assert server_name("___", "abcdefg") == "ollana-abcdefg.local."


def test_ollama_record_as_proposed_upstream() -> None:
    rec = ollama_record(hostname="gpu-box.lan", server="gpu-box-0001020.local.", port=11435, ollama_version="0.12.3")
    assert rec.type == OLLAMA_TYPE and rec.name == "gpu-box._ollama._tcp.local."
    assert rec.txt == (("version", "0.12.3"),) and rec.port == 11435


def test_txt_strings_stay_within_255_bytes() -> None:
    rec = ollana_record(hostname="h", node_id=NODE, instance_id=INST, port=1, scheme="http", trust="open",
                        device_id=None, ollama_version="v" * 1000, catalog_gen=None)
    assert all(len(f"{k}={v}".encode()) <= 255 for k, v in rec.txt)


# -- parsing ---------------------------------------------------------------------------------------


def test_round_trip_gives_the_heartbeat_values_a_client_feeds_its_table() -> None:
    got = parse(record(), LAN)
    hb = got.heartbeat
    assert got.address == "10.77.0.2" and got.key == NODE.hex()
    assert (hb.node_id, hb.instance_id, hb.proxy_port, hb.scheme, hb.trust) == (NODE, INST, 11435, "http", "open")
    assert (hb.hostname, hb.ollama_version, hb.catalog_gen, hb.device_id) == ("gpu-box", "0.12.3", 42, None)


def test_round_trip_in_trust_mode_devices() -> None:
    got = parse(record(scheme="https", trust="devices", device_id=DEVICE, catalog_gen=None), LAN)
    assert got.heartbeat.device_id == bytes(range(32)) and got.heartbeat.catalog_gen is None


def test_keys_are_case_insensitive_and_unknown_ones_are_ignored() -> None:
    r = record()
    props = {k.upper(): v for k, v in r.properties.items()} | {b"future": b"x", b"flag": None}
    assert parse(replace(r, properties=props), LAN).heartbeat.node_id == NODE


@pytest.mark.parametrize("changes", [
    {"v": b"2"}, {"v": None}, {"node": None}, {"node": b"00"}, {"node": b"zz" * 16}, {"inst": None},
    {"scheme": b"gopher"}, {"trust": b"maybe"}, {"trust": b"devices"},  # devices without a device ID
    {"device": b"A" * 51 + b"B", "trust": b"devices", "scheme": b"https"},  # not canonical base32
    {"device": DEVICE.lower().encode()}, {"device": b"\xff" * 52}, {"cat": b"-1"}, {"cat": b"4294967296"},
    {"cat": b"1e3"}, {"ollama": b"\xff\xfe"}, {"node": "é".encode() * 16},
])
def test_malformed_txt_is_refused_with_value_error(changes: dict[str, bytes | None]) -> None:
    with pytest.raises(ValueError):
        parse(with_txt(record(), **changes), LAN)


def test_bad_port_or_no_usable_address_is_refused() -> None:
    for bad in (replace(record(), port=None), replace(record(), port=0), replace(record(), port=70000),
                replace(record(), addresses=()), replace(record(), addresses=("127.0.0.1", "fe80::1", "169.254.0.9"))):
        with pytest.raises(ValueError):
            parse(bad, LAN)


def test_garbage_never_raises_anything_but_value_error() -> None:
    rng = random.Random(8)
    keys = [b"v", b"node", b"inst", b"device", b"scheme", b"trust", b"ollama", b"cat", b"", b"\xff"]
    for _ in range(3000):
        props: dict[object, object] = {rng.choice(keys): rng.choice([None, rng.randbytes(rng.randrange(0, 70))])
                                       for _ in range(rng.randrange(0, 9))}
        if rng.random() < 0.5:
            props.update({b"v": b"1", b"node": NODE.hex().encode(), b"inst": INST.hex().encode()})
        if rng.random() < 0.05:
            props[rng.choice(["v", 1, None])] = rng.choice([b"1", "1", 3])
        resolved = Resolved(rng.choice(["", "x", "a (ABCDEFG)._ollana._tcp.local."]), rng.choice([None, 0, 1, 11435]),
                            tuple(rng.choice(["10.77.0.9", "::1", "garbage", "fd00:77::9", ""]) for _ in range(2)),
                            props)  # type: ignore[arg-type]
        try:
            parse(resolved, LAN)
        except ValueError:
            pass


def test_address_choice_prefers_ipv4_and_stays_on_the_link() -> None:
    assert choose_address(["fd00:77::2", "10.77.0.2"], LAN) == "10.77.0.2"
    assert choose_address(["fe80::1%eth0", "fd00:77::2"], LAN) == "fd00:77::2"
    assert choose_address(["fe80::1%eth0", "192.0.2.1"], LAN) == "fe80::1%eth0"  # link-local: scoped
    assert choose_address(["fe80::1"], LAN) is None  # no scope: no link to reach it on
    assert choose_address(["192.0.2.9", "10.77.0.3"], LAN) == "10.77.0.3"
    assert choose_address(["192.0.2.9"], LAN) is None  # a record may name any address: off-link is refused
    assert choose_address(["192.0.2.9"]) == "192.0.2.9"  # no networks given: any
    assert choose_address(["127.0.0.1", "169.254.1.1", "224.0.0.251", "0.0.0.0"]) is None


# -- keeping a registration current ----------------------------------------------------------------


def test_register_and_withdraw_at_once_updates_wait_for_the_gap() -> None:
    a = ollana_record(hostname="h", node_id=NODE, instance_id=INST, port=1, scheme="http", trust="open",
                      device_id=None, ollama_version="1", catalog_gen=1)
    b = replace(a, txt=(*a.txt[:-1], ("cat", "2")))
    assert next_step(None, a, last=-1e9, failed=False, now=0.0, gap=5.0) == (Step.REGISTER, 0.0)
    assert next_step(None, None, last=0.0, failed=False, now=1.0, gap=5.0) == (None, math.inf)
    assert next_step(a, a, last=0.0, failed=False, now=1.0, gap=5.0) == (None, math.inf)
    assert next_step(a, None, last=4.9, failed=False, now=5.0, gap=5.0) == (Step.UNREGISTER, 0.0)
    assert next_step(a, b, last=0.0, failed=False, now=1.0, gap=5.0) == (None, 4.0)  # busy: wait
    assert next_step(a, b, last=0.0, failed=False, now=5.0, gap=5.0) == (Step.UPDATE, 0.0)
    moved = replace(a, port=2)  # not a TXT change: withdrawn, then registered anew
    assert next_step(a, moved, last=0.0, failed=False, now=0.1, gap=5.0) == (Step.UNREGISTER, 0.0)
    assert next_step(None, a, last=0.0, failed=True, now=2.0, gap=5.0) == (None, 3.0)  # retry later
    assert next_step(None, a, last=0.0, failed=True, now=5.0, gap=5.0) == (Step.REGISTER, 0.0)


# -- the peer table: one server, two paths ---------------------------------------------------------


_SEQ = itertools.count(1)


def hb(inst: int = 1, port: int = 11435, interval_ms: int = 1000) -> Heartbeat:
    return Heartbeat(NODE, bytes([inst]) * 8, next(_SEQ), port, interval_ms, hostname="gpu-box")


def test_a_server_seen_both_ways_is_one_peer_listing_both_paths() -> None:
    t = PeerTable(missed_heartbeats=3, mdns_grace=3.0)
    added = t.observe(hb(interval_ms=0), "10.0.0.1", 0.0, via=Source.MDNS)
    assert added is not None and added.kind is ChangeKind.ADDED
    assert t.observe(hb(), "10.0.0.1", 0.1) is None  # the heartbeat: same peer, no change
    assert len(t) == 1
    status = t.get(NODE.hex()).status(0.2)  # type: ignore[union-attr]
    assert status["source"] == "multicast" and status["sources"] == ["multicast", "mdns"]


def test_heartbeats_lost_the_mdns_path_keeps_the_peer_and_a_withdrawal_removes_it() -> None:
    t = PeerTable(missed_heartbeats=3, mdns_grace=3.0)
    t.observe(hb(), "10.0.0.1", 0.0)
    t.observe(hb(interval_ms=0), "10.0.0.1", 0.0, via=Source.MDNS)
    t.mark_healthy(NODE.hex(), 1.0, 0.0)  # its first check
    assert t.expire(10.0) == [] and t.heard_by(NODE.hex(), Source.MDNS)
    assert not t.heard_by(NODE.hex(), Source.MULTICAST)
    assert t.withdraw(NODE.hex(), Source.MULTICAST) is None  # not a path any more
    gone = t.withdraw(NODE.hex(), Source.MDNS)
    assert gone is not None and gone.kind is ChangeKind.REMOVED and len(t) == 0


def test_withdrawing_mdns_leaves_a_peer_still_heard_by_heartbeats() -> None:
    t = PeerTable()
    t.observe(hb(), "10.0.0.1", 0.0)
    t.observe(hb(interval_ms=0), "10.0.0.1", 0.0, via=Source.MDNS)
    assert t.withdraw(NODE.hex(), Source.MDNS) is None and len(t) == 1


def test_an_mdns_record_outliving_its_server_lasts_only_while_its_checks_pass() -> None:
    t = PeerTable(missed_heartbeats=3, mdns_grace=3.0)
    t.observe(hb(interval_ms=0), "10.0.0.1", 0.0, via=Source.MDNS)
    t.mark_healthy(NODE.hex(), 1.0, 0.1)  # its first check
    assert t.expire(1000.0) == []  # healthy: no refresh needed
    t.mark_healthy(NODE.hex(), 1.0, 1000.0)  # a check it passed counts as hearing it
    t.mark_failed(NODE.hex(), 1001.0)
    assert t.expire(1002.9) == []
    t.mark_healthy(NODE.hex(), 1.0, 1002.95)  # back in time
    t.mark_failed(NODE.hex(), 1004.0)
    assert t.expire(1005.9) == []
    # Re-announcements of the record do not refresh it once it went quiet for the grace.
    assert t.observe(hb(interval_ms=0), "10.0.0.1", 1006.5, via=Source.MDNS) is None
    gone = t.expire(1006.5)
    assert [c.kind for c in gone] == [ChangeKind.EXPIRED] and len(t) == 0


def test_mdns_moves_an_entry_only_when_no_heartbeat_is_heard_and_a_new_instance_restarts_it() -> None:
    t = PeerTable()
    t.observe(hb(), "10.0.0.1", 0.0)
    assert t.observe(hb(interval_ms=0), "10.0.1.1", 0.1, via=Source.MDNS) is None  # heartbeats say where
    t2 = PeerTable()
    t2.observe(hb(interval_ms=0), "10.0.0.1", 0.0, via=Source.MDNS)
    moved = t2.observe(hb(interval_ms=0), "10.0.1.1", 0.1, via=Source.MDNS, proven=True)
    assert moved is not None and moved.kind is ChangeKind.MOVED and moved.peer.endpoint.host == "10.0.1.1"
    restarted = t2.observe(hb(inst=2, interval_ms=0), "10.0.1.1", 0.2, via=Source.MDNS, proven=True)
    assert restarted is not None and restarted.kind is ChangeKind.RESTARTED


def test_advertise_ollama_is_for_trust_mode_open_only() -> None:
    import click

    from ollana.cli.main import build_config

    with pytest.raises(click.UsageError, match="--trust open"):
        build_config({"advertise_ollama": True}, {"HOME": "/nonexistent"}, is_root=False)
    config = build_config({"advertise_ollama": True, "trust": "open"}, {"HOME": "/nonexistent"}, is_root=False)
    assert config.advertise_ollama and config.discovery


def test_a_failing_server_known_by_heartbeats_gains_no_mdns_path_from_an_old_record() -> None:
    t = PeerTable(missed_heartbeats=3, mdns_grace=3.0)
    t.observe(hb(), "10.0.0.1", 0.0)
    t.mark_healthy(NODE.hex(), 1.0, 0.1)  # its first check
    t.mark_failed(NODE.hex(), 0.5)
    assert t.observe(hb(interval_ms=0), "10.0.0.1", 1.0, via=Source.MDNS) is None
    assert not t.heard_by(NODE.hex(), Source.MDNS)
    t.mark_healthy(NODE.hex(), 1.0, 1.5)
    t.observe(hb(interval_ms=0), "10.0.0.1", 2.0, via=Source.MDNS)
    assert t.heard_by(NODE.hex(), Source.MDNS)


def test_a_server_that_answers_a_check_with_a_refusal_is_still_there() -> None:
    t = PeerTable(missed_heartbeats=3, mdns_grace=3.0)
    t.observe(hb(interval_ms=0), "10.0.0.1", 0.0, via=Source.MDNS)
    t.mark_healthy(NODE.hex(), 1.0, 0.0)  # its first check
    t.mark_failed(NODE.hex(), 10.0, answered=True)  # a 403 while pairing: it is alive
    assert t.expire(12.0) == []
    t.mark_failed(NODE.hex(), 12.5)  # nothing answered
    assert [c.kind for c in t.expire(13.1)] == [ChangeKind.EXPIRED]


def test_the_preferred_address_wins_whichever_path_names_it() -> None:
    # An IPv6-only LAN: heartbeats come from link-local addresses, the record names the ULA too.
    t = PeerTable()
    t.observe(hb(), "fe80::2%eth0", 0.0)
    moved = t.observe(hb(interval_ms=0), "fd00:77::2", 0.1, via=Source.MDNS, proven=True)
    assert moved is not None and moved.kind is ChangeKind.MOVED and moved.peer.endpoint.host == "fd00:77::2"
    assert t.observe(hb(), "fe80::2%eth0", 0.5) is None  # heartbeats do not move it back...
    t.mark_healthy(NODE.hex(), 1.0, 3.0)  # ...while it answers there
    assert t.observe(hb(), "fe80::2%eth0", 3.5) is None
