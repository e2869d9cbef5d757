"""Saved peers (peers.json): addresses, the document, edits, the file and a node's poll of it."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from ollana.config import Endpoint
from ollana.discovery import saved
from ollana.discovery.saved import (
    SavedPeer,
    SavedPeersError,
    SavedPeersFile,
    adding,
    decode,
    encode,
    parse_peer,
)
from ollana.roles.beyond import saved_changes


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("gpu-box.lan", Endpoint("gpu-box.lan", 11435)),
        ("GPU-Box.LAN.", Endpoint("gpu-box.lan", 11435)),
        ("10.0.0.5:12000", Endpoint("10.0.0.5", 12000)),
        (" 10.0.0.5 ", Endpoint("10.0.0.5", 11435)),
        ("[fd00::0:1]:11435", Endpoint("fd00::1", 11435)),
        ("[fe80::1%eth0]", Endpoint("fe80::1%eth0", 11435)),
        ("box-1", Endpoint("box-1", 11435)),
    ],
)
def test_parse_peer_normalises(text: str, want: Endpoint) -> None:
    assert parse_peer(text) == want


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("", "empty address"),
        ("http://gpu-box:11435", "not a URL"),
        ("gpu box", "not a host name"),
        ("-box", "not a host name"),
        ("box_1", "not a host name"),
        (":11435", "no host"),
        ("box:0", "port 0"),
        ("box:99999", "65535"),
        ("box:abc", "not a number"),
        ("fd00::1", "[ADDR]:PORT"),
        ("0.0.0.0", "cannot be a server"),
        ("239.255.11.36", "cannot be a server"),
        ("a." * 130 + "b", "not a host name"),
    ],
)
def test_parse_peer_refuses_with_a_reason(text: str, says: str) -> None:
    with pytest.raises(SavedPeersError, match="invalid address|empty address") as err:
        parse_peer(text)
    assert says in str(err.value)


def test_document_round_trip_and_dedup() -> None:
    peers = [SavedPeer(Endpoint("a.lan", 11435), 1_700_000_000.0), SavedPeer(Endpoint("fd00::1", 1), None)]
    assert decode(encode(peers)) == peers
    doc = json.loads(encode(peers))
    doc["peers"].append(doc["peers"][0])  # a hand-edited duplicate is one peer
    assert decode(json.dumps(doc).encode()) == peers


@pytest.mark.parametrize(
    "raw",
    [
        b"not json",
        b"[]",
        b'{"version": 2, "peers": []}',
        b'{"version": 1}',
        b'{"version": 1, "peers": [1]}',
        b'{"version": 1, "peers": [{"host": "a", "port": "11435"}]}',
        b'{"version": 1, "peers": [{"host": "a", "port": true}]}',
        b'{"version": 1, "peers": [{"host": "a b", "port": 1}]}',
        b'{"version": 1, "peers": [{"host": "a", "port": 70000}]}',
    ],
)
def test_decode_refuses_what_ollana_did_not_write(raw: bytes) -> None:
    with pytest.raises(ValueError):
        decode(raw)


def test_adding_and_removing() -> None:
    a, b = Endpoint("a", 11435), Endpoint("b", 11435)
    peers, new = adding([], a, 1.0)
    assert new and peers == [SavedPeer(a, 1.0)]
    again, new = adding(peers, a, 2.0)
    assert not new and again == peers
    peers, _ = adding(peers, b, 3.0)
    assert [p.endpoint for p in saved.removing(peers, a)] == [b]
    with pytest.raises(SavedPeersError, match=r"c:11435 is not a saved peer \(saved: a:11435, b:11435"):
        saved.removing(peers, Endpoint("c", 11435))
    full = [SavedPeer(Endpoint(f"h{i}", 1)) for i in range(saved.MAX_SAVED)]
    with pytest.raises(SavedPeersError, match="at most"):
        adding(full, a, 0.0)


def test_file_is_written_atomically_with_mode_0600(tmp_path: Path) -> None:
    state = tmp_path / "state"
    assert saved.load(state) == []
    assert saved.add(state, Endpoint("a.lan", 11435), 10.0)
    assert not saved.add(state, Endpoint("a.lan", 11435), 11.0)
    path = state / saved.PEERS_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert not path.with_name(path.name + ".tmp").exists()
    assert [p.endpoint for p in saved.load(state)] == [Endpoint("a.lan", 11435)]
    saved.remove(state, Endpoint("a.lan", 11435))
    assert saved.load(state) == []
    with pytest.raises(SavedPeersError, match="not a saved peer"):
        saved.remove(state, Endpoint("a.lan", 11435))


def test_corrupt_file_is_an_error_naming_it(tmp_path: Path) -> None:
    (tmp_path / saved.PEERS_FILE).write_text("{")
    with pytest.raises(SavedPeersError, match=r"peers.json is corrupt \(not JSON"):
        saved.load(tmp_path)
    with pytest.raises(SavedPeersError, match="corrupt"):
        SavedPeersFile.load(tmp_path)
    with pytest.raises(SavedPeersError, match="corrupt"):
        saved.add(tmp_path, Endpoint("a", 1), 0.0)


def test_node_poll_sees_changes_and_keeps_the_last_good_list(tmp_path: Path) -> None:
    watched = SavedPeersFile.load(tmp_path)
    assert watched.peers == () and not watched.poll()
    saved.add(tmp_path, Endpoint("a", 11435), 0.0)
    assert watched.poll() and watched.peers == (Endpoint("a", 11435),)
    assert not watched.poll()  # one stat, nothing new
    path = tmp_path / saved.PEERS_FILE
    path.write_text("garbage")
    os.utime(path, ns=(1, 1))
    assert not watched.poll() and watched.peers == (Endpoint("a", 11435),)
    path.unlink()
    assert watched.poll() and watched.peers == ()


def test_saved_changes_leave_the_command_line_alone() -> None:
    a, b, c = Endpoint("a", 1), Endpoint("b", 1), Endpoint("c", 1)
    add, drop = saved_changes([a, b], in_table=set(), command_line={b})
    assert add == [a] and drop == []
    add, drop = saved_changes([c], in_table={a}, command_line={b})
    assert add == [c] and drop == [a]
    assert saved_changes([a], {a}, set()) == ([], [])
