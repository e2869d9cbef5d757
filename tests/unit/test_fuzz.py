"""Property tests (Hypothesis): the codec and the acceptance path against arbitrary bytes.

Whatever arrives, ``decode`` raises nothing but ``PacketError``, and the receive path (the
discovery service's boundary, then the peer table) creates a peer only for a valid heartbeat.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ollana.discovery.links import Link
from ollana.discovery.net import Datagram
from ollana.discovery.packet import (
    MAX_PACKET,
    Goodbye,
    Heartbeat,
    Packet,
    PacketError,
    Probe,
    decode,
    encode,
)
from ollana.discovery.peers import PeerTable, listed, routable
from ollana.discovery.service import Discovery

GROUP = ipaddress.ip_address("239.255.11.36")
ETH = Link("eth0", 2, 4, (ipaddress.ip_interface("10.77.0.3/24"),))
FAST = settings(max_examples=200, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])

heartbeats = st.builds(
    Heartbeat,
    node_id=st.binary(min_size=16, max_size=16),
    instance_id=st.binary(min_size=8, max_size=8),
    seq=st.integers(0, 2**32 - 1),
    proxy_port=st.integers(1, 65535),
    interval_ms=st.integers(1, 2**32 - 1),
    hostname=st.text(max_size=60),
    ollama_version=st.text(max_size=20),
    catalog_gen=st.none() | st.integers(0, 2**32 - 1),
)
others = st.builds(Goodbye, st.binary(min_size=16, max_size=16), st.binary(min_size=8, max_size=8),
                   st.integers(0, 2**32 - 1)) | st.builds(Probe, st.binary(min_size=16, max_size=16),
                                                          st.binary(min_size=8, max_size=8), st.integers(0, 2**32 - 1))


@st.composite
def mutated(draw: Any) -> bytes:
    """A valid packet, then flipped, cut, stretched or spliced."""
    data = bytearray(encode(draw(heartbeats | others)))
    for _ in range(draw(st.integers(1, 4))):
        how = draw(st.sampled_from(["flip", "cut", "insert", "set", "grow"]))
        pos = draw(st.integers(0, max(0, len(data) - 1)))
        if how == "flip" and data:
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif how == "cut":
            del data[pos:]
        elif how == "insert":
            data[pos:pos] = draw(st.binary(max_size=40))
        elif how == "set" and data:
            data[pos] = draw(st.integers(0, 255))
        elif how == "grow":
            data += draw(st.binary(min_size=1, max_size=MAX_PACKET + 50))
    return bytes(data)


def decodes(data: bytes) -> Packet | None:
    try:
        return decode(data)
    except PacketError:
        return None  # the codec's own error: the only one allowed


@FAST
@given(st.binary(max_size=MAX_PACKET + 64))
def test_arbitrary_bytes_raise_only_the_codecs_error(data: bytes) -> None:
    decodes(data)


@FAST
@given(mutated())
def test_mutated_packets_raise_only_the_codecs_error(data: bytes) -> None:
    got = decodes(data)
    if got is not None:
        assert encode(got)  # whatever decodes is a value the codec can write again


@FAST
@given(heartbeats | others)
def test_valid_packets_round_trip(packet: Packet) -> None:
    got = decode(encode(packet))
    assert type(got) is type(packet) and got.node_id == packet.node_id and got.seq == packet.seq


def receiving_node() -> tuple[Discovery, PeerTable, list[Packet]]:
    table = PeerTable()
    seen: list[Packet] = []

    def on_packet(packet: Packet, source: str, now: float) -> None:
        seen.append(packet)
        if isinstance(packet, Heartbeat):
            table.observe(packet, source, now)
        elif isinstance(packet, Goodbye):
            table.goodbye(packet)

    disc = Discovery(port=11436, groups={4: str(GROUP)}, interface_names=(), instance_id=b"\0" * 8,
                     clock=lambda: 0.0, on_packet=on_packet)
    disc._by_index = {(4, ETH.index): ETH}  # the link it listens on, without a socket
    return disc, table, seen


@settings(FAST, max_examples=80)
@given(st.lists(st.binary(max_size=MAX_PACKET + 64) | mutated(), min_size=1, max_size=12),
       st.sampled_from(["10.77.0.9", "10.77.0.200", "192.0.2.1"]))
def test_the_receive_path_creates_a_peer_only_for_a_valid_heartbeat(datagrams: list[bytes], source: str) -> None:
    disc, table, seen = receiving_node()
    for data in datagrams:
        disc._received(4, Datagram(data, ipaddress.ip_address(source), GROUP, ETH.index))
    valid = {d for d in datagrams if isinstance(decodes(d), Heartbeat)}
    if source == "192.0.2.1":  # off the link: nothing is even decoded
        assert not seen and not len(table)
        return
    assert len(table) <= len({decode(d).node_id for d in valid})
    assert all(isinstance(p, (Heartbeat, Goodbye, Probe)) for p in seen)
    # Nothing heard is a usable server before it answered a check.
    assert not any(listed(p) or routable(p) for p in table)
