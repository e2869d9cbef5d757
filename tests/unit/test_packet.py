from __future__ import annotations

import os
import random

import pytest

from ollana.discovery.packet import (
    HEADER,
    MAX_PACKET,
    TLV,
    Goodbye,
    Heartbeat,
    PacketError,
    Probe,
    Tag,
    decode,
    encode,
)

NODE = bytes(range(16))
INST = bytes(range(8))
DEVICE = bytes(range(100, 132))


def heartbeat(**kw: object) -> Heartbeat:
    fields: dict[str, object] = {
        "node_id": NODE, "instance_id": INST, "seq": 7, "proxy_port": 11435, "interval_ms": 2000,
        "scheme": "http", "hostname": "gpu-box", "ollama_version": "0.33.0", "ollana_version": "0.1.0",
        "address": "10.77.0.2",
    }
    fields.update(kw)
    return Heartbeat(**fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "packet",
    [
        heartbeat(),
        heartbeat(hostname="ünïcødé-hôst", address=None, scheme="https"),
        heartbeat(address="fd77::2", seq=0xFFFFFFFF),
        heartbeat(scheme="https", trust="devices", device_id=DEVICE),
        heartbeat(trust="open", device_id=DEVICE),
        Goodbye(NODE, INST, 1),
        Probe(NODE, INST, 2),
    ],
)
def test_round_trip(packet: object) -> None:
    assert decode(encode(packet)) == packet  # type: ignore[arg-type]


def test_heartbeat_fits_one_datagram_with_long_strings() -> None:
    data = encode(heartbeat(hostname="h" * 255, ollama_version="v" * 255, ollana_version="o" * 255))
    assert len(data) <= MAX_PACKET


def test_too_long_text_is_refused_when_encoding() -> None:
    with pytest.raises(PacketError):
        encode(heartbeat(hostname="h" * 256))


def test_unknown_fields_are_ignored() -> None:
    data = encode(heartbeat()) + TLV.pack(200, 5) + b"later"
    assert decode(data) == heartbeat()


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda d: b"XXXX" + d[4:], "bad_magic"),
        (lambda d: d[:4] + bytes([2]) + d[5:], "unknown_version"),
        (lambda d: d[:5] + bytes([9]) + d[6:], "unknown_type"),
        (lambda d: d[:-1], "truncated"),
        (lambda d: d[: HEADER.size + 1], "truncated"),
        (lambda d: d[:3], "truncated"),
        (lambda d: d + b"\x00" * (MAX_PACKET + 1 - len(d)), "too_big"),
        (lambda d: d + TLV.pack(1, 16) + bytes(16), "duplicate_field"),
    ],
)
def test_bad_packets_raise_packet_error(mutate: object, reason: str) -> None:
    with pytest.raises(PacketError) as info:
        decode(mutate(encode(heartbeat())))  # type: ignore[operator]
    assert info.value.reason == reason


def test_missing_required_field() -> None:
    data = HEADER.pack(b"OLNA", 1, 1, 0) + TLV.pack(1, 16) + NODE
    with pytest.raises(PacketError) as info:
        decode(data)
    assert info.value.reason == "missing_field"


def test_wrong_size_field_and_bad_utf8() -> None:
    good = encode(Probe(NODE, INST, 1))
    short_node = HEADER.pack(b"OLNA", 1, 3, 0) + TLV.pack(1, 3) + b"abc" + good[HEADER.size + TLV.size + 16 :]
    with pytest.raises(PacketError):
        decode(short_node)
    bad_host = encode(heartbeat(hostname="ab")).replace(b"ab", b"\xff\xfe")
    with pytest.raises(PacketError):
        decode(bad_host)


def test_garbage_never_raises_anything_but_packet_error() -> None:
    rng = random.Random(1234)
    valid = encode(heartbeat())
    for i in range(5000):
        if i % 2:
            data = os.urandom(rng.randrange(0, 1300))
        else:  # flip bytes in a valid packet: exercises the deeper parsing paths
            buf = bytearray(valid)
            for _ in range(rng.randrange(1, 6)):
                buf[rng.randrange(len(buf))] = rng.randrange(256)
            data = bytes(buf[: rng.randrange(len(buf) + 1)])
        try:
            decode(data)
        except PacketError:
            pass


def test_trust_fields_on_the_wire() -> None:
    data = encode(heartbeat(scheme="https", trust="devices", device_id=DEVICE))
    assert TLV.pack(Tag.TRUST, 1) + b"\x01" in data
    assert TLV.pack(Tag.DEVICE_ID, 32) + DEVICE in data
    assert TLV.pack(Tag.TRUST, 1) + b"\x00" in encode(heartbeat())


def _strip(data: bytes, tags: set[int]) -> bytes:
    """The packet without the given TLV fields (as an older sender would have sent it)."""
    out, pos = bytearray(data[: HEADER.size]), HEADER.size
    while pos < len(data):
        tag, length = TLV.unpack_from(data, pos)
        end = pos + TLV.size + length
        if tag not in tags:
            out += data[pos:end]
        pos = end
    return bytes(out)


def test_heartbeat_of_an_older_sender_means_open() -> None:
    old = _strip(encode(heartbeat()), {Tag.TRUST, Tag.DEVICE_ID})
    got = decode(old)
    assert isinstance(got, Heartbeat) and got.trust == "open" and got.device_id is None


@pytest.mark.parametrize(
    "packet",
    [
        heartbeat(trust="devices", device_id=None, scheme="https"),
        heartbeat(trust="devices", device_id=DEVICE, scheme="http"),
        heartbeat(trust="paranoid"),
        heartbeat(device_id=b"short"),
    ],
)
def test_inconsistent_trust_fields_are_refused_when_encoding(packet: Heartbeat) -> None:
    with pytest.raises(PacketError):
        encode(packet)


@pytest.mark.parametrize(
    "mutate",
    [
        # devices mode without a device ID: nobody could check the server's certificate
        lambda d: _strip(d, {Tag.DEVICE_ID}),
        # an unknown trust mode: refused rather than guessed
        lambda d: d.replace(TLV.pack(Tag.TRUST, 1) + b"\x01", TLV.pack(Tag.TRUST, 1) + b"\x07"),
        lambda d: d.replace(TLV.pack(Tag.TRUST, 1) + b"\x01", TLV.pack(Tag.TRUST, 2) + b"\x01\x01"),
        lambda d: d.replace(TLV.pack(Tag.DEVICE_ID, 32) + DEVICE, TLV.pack(Tag.DEVICE_ID, 31) + DEVICE[:31]),
        # devices mode over plain http
        lambda d: d.replace(TLV.pack(Tag.SCHEME, 5) + b"https", TLV.pack(Tag.SCHEME, 4) + b"http"),
    ],
)
def test_bad_trust_fields_are_dropped(mutate: object) -> None:
    data = encode(heartbeat(scheme="https", trust="devices", device_id=DEVICE))
    with pytest.raises(PacketError) as info:
        decode(mutate(data))  # type: ignore[operator]
    assert info.value.reason == "bad_field"


def test_garbage_around_trust_fields_never_raises_anything_else() -> None:
    rng = random.Random(99)
    valid = encode(heartbeat(scheme="https", trust="devices", device_id=DEVICE))
    for _ in range(3000):
        buf = bytearray(valid)
        for _ in range(rng.randrange(1, 4)):
            buf[rng.randrange(len(buf))] = rng.randrange(256)
        try:
            decode(bytes(buf))
        except PacketError:
            pass


def test_long_non_ascii_host_names_are_clipped_by_bytes_and_still_encode() -> None:
    from ollana.discovery.packet import clip

    name = "ü" * 200  # 400 bytes
    clipped = clip(name)
    assert len(clipped.encode()) <= 255 and name.startswith(clipped)
    encode(heartbeat(hostname=clipped))  # does not raise


def test_control_characters_from_the_wire_never_reach_logs() -> None:
    decoded = decode(encode(heartbeat(hostname="evil\x1b[31mred\x07", ollama_version="1\n2")))
    assert isinstance(decoded, Heartbeat)
    assert decoded.hostname == "evil?[31mred?" and decoded.ollama_version == "1?2"
