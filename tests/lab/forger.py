"""A forger for the lab: floods the discovery group with forged and mangled datagrams.

    python -m tests.lab.forger --address IP --sources IP,IP,... --rate R --seconds S [--fuzz N]

It first listens for real heartbeats (until it heard two servers, or 15 s), then sends from
every source address in turn (each its own socket, bound to that address: on-link sources):

* flood (default): ``--rate`` datagrams a second for ``--seconds``: heartbeats with random node,
  instance and device IDs (and intervals up to 2**32 ms), copies of the real heartbeats with a
  changed instance ID and a grown sequence number, and the real heartbeats replayed byte for
  byte from other addresses, in turn;
* ``--fuzz N``: N datagrams as fast as ``--rate`` allows: random garbage, truncated, oversized
  and bit-flipped real heartbeats, replays from other addresses, random-ID heartbeats.

Prints READY (with the nodes it heard), then DONE with how many it sent. Lab only (discovery
traffic): never run it in the root namespace.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import socket
import time

from ollana.discovery.packet import (
    MAX_PACKET,
    TRUST_DEVICES,
    Heartbeat,
    PacketError,
    decode,
    encode,
)
from tests.lab.impostor import GROUP, PORT, group_listener


def capture(address: str, want: int, timeout: float) -> dict[bytes, tuple[bytes, Heartbeat]]:
    sock = group_listener(address)
    heard: dict[bytes, tuple[bytes, Heartbeat]] = {}
    deadline = time.monotonic() + timeout
    try:
        while len(heard) < want and time.monotonic() < deadline:
            sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                data, _ = sock.recvfrom(2048)
                packet = decode(data)
            except (TimeoutError, PacketError):
                continue
            if isinstance(packet, Heartbeat):
                heard[packet.node_id] = (data, packet)
    finally:
        sock.close()
    return heard


def sender(address: str) -> socket.socket:
    out = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
    out.bind((address, 0))  # the source address of everything this socket sends
    out.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 1)
    out.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(address))
    return out


def random_heartbeat(rng: random.Random, trust: str) -> bytes:
    devices = trust == TRUST_DEVICES
    return encode(Heartbeat(
        node_id=os.urandom(16), instance_id=os.urandom(8), seq=rng.getrandbits(32), proxy_port=11435,
        interval_ms=rng.choice([500, 2000, 1_275_068_916, 2**32 - 1]), scheme="https" if devices else "http",
        hostname="forged", trust=trust, device_id=os.urandom(32) if devices else None,
    ))


def flood_datagram(i: int, rng: random.Random, real: list[tuple[bytes, Heartbeat]], source: str) -> bytes:
    raw, hb = real[i % len(real)]
    kind = i % 3
    if kind == 0:
        return random_heartbeat(rng, hb.trust)
    if kind == 1:
        copy = dataclasses.replace(hb, instance_id=os.urandom(8), seq=(hb.seq + i) & 0xFFFFFFFF, address=source)
        return encode(copy)
    return raw  # a replay, from an address that is not the server's


def fuzz_datagram(i: int, rng: random.Random, real: list[tuple[bytes, Heartbeat]], source: str) -> bytes:
    raw = real[i % len(real)][0]
    kind = i % 6
    if kind == 0:
        return rng.randbytes(rng.randint(0, 1400))
    if kind == 1:
        return raw[: rng.randint(0, len(raw) - 1)]
    if kind == 2:
        return raw + rng.randbytes(rng.randint(MAX_PACKET + 1 - len(raw), 1400 - len(raw)))
    if kind == 3:
        data = bytearray(raw)
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        return bytes(data)
    if kind == 4:
        return raw
    return flood_datagram(i, rng, real, source)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--address", required=True)
    p.add_argument("--sources", required=True, help="comma-separated on-link addresses of this host")
    p.add_argument("--rate", type=float, default=1000.0)
    p.add_argument("--seconds", type=float, default=60.0)
    p.add_argument("--fuzz", type=int, default=0)
    p.add_argument("--servers", type=int, default=2)
    a = p.parse_args()
    real = list(capture(a.address, a.servers, 15).values())
    if not real:
        print("NO-HEARTBEAT", flush=True)
        return
    sources = a.sources.split(",")
    socks = [sender(s) for s in sources]
    rng = random.Random(9)
    print(f"READY nodes={json.dumps([hb.node_id.hex() for _, hb in real])}", flush=True)
    make = fuzz_datagram if a.fuzz else flood_datagram
    total = a.fuzz or int(a.rate * a.seconds)
    start = time.monotonic()
    sent = errors = 0
    for i in range(total):
        n = i % len(socks)
        try:
            socks[n].sendto(make(i, rng, real, sources[n]), (GROUP, PORT))
            sent += 1
        except OSError:
            errors += 1  # (an oversized datagram the kernel refuses, a full buffer)
        if i % 50 == 49:  # paced in bursts of 50
            ahead = start + (i + 1) / a.rate - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)
    print(f"DONE sent={sent} errors={errors} seconds={time.monotonic() - start:.3f}", flush=True)


if __name__ == "__main__":
    main()
