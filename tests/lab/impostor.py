"""An impostor for the lab: poses as a paired server from another host, with its own key.

    python -m tests.lab.impostor --state DIR --address IP [--seconds S]

It waits for a heartbeat of a server in trust mode devices, then for S seconds sends that heartbeat
again and again, byte for byte (a replay), and forged variants made with the codec (same node and
device ID, its own address, new sequence numbers, and one with a new instance id). Its proxy port
serves TLS with its own certificate and accepts any client, so any request sent to it would be
seen: it prints READY, then HANDSHAKE for every TLS connection and REQUEST <line> for every HTTP
request it receives. Lab only (discovery traffic): never run it in the root namespace.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import socket
import ssl
import struct
import time
from pathlib import Path

from ollana.discovery.packet import TRUST_DEVICES, Heartbeat, PacketError, decode, encode
from ollana.trust import identity

GROUP = "239.255.11.36"
PORT = 11436


def say(line: str) -> None:
    print(line, flush=True)


def group_listener(address: str) -> socket.socket:
    """A socket that hears the discovery group on the interface with ``address``."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(("", PORT))
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP,
                    struct.pack("4s4s", socket.inet_aton(GROUP), socket.inet_aton(address)))
    return sock


def capture(address: str, timeout: float) -> tuple[bytes, Heartbeat]:
    sock = group_listener(address)
    sock.settimeout(timeout)
    try:
        while True:
            data, _ = sock.recvfrom(2048)
            try:
                packet = decode(data)
            except PacketError:
                continue
            if isinstance(packet, Heartbeat) and packet.trust == TRUST_DEVICES:
                return data, packet
    finally:
        sock.close()


async def serve(me: identity.Identity, port: int) -> asyncio.Server:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(me.cert_path, me.key_path)
    ctx.verify_mode = ssl.CERT_NONE  # take anyone: whatever a client sends, we would see it

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        say(f"HANDSHAKE {writer.get_extra_info('peername')}")
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, OSError):
            writer.close()
            return
        first = head.split(b"\r\n", 1)[0].decode(errors="replace")
        say(f"REQUEST {first}")
        body = b'{"models":[]}'
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nVia: 1.1 ollana\r\n"
                     + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        await writer.drain()
        writer.close()

    return await asyncio.start_server(handle, "0.0.0.0", port, ssl=ctx)


async def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--state", type=Path, required=True)
    p.add_argument("--address", required=True)
    p.add_argument("--seconds", type=float, default=20)
    p.add_argument("--period", type=float, default=0.2)
    a = p.parse_args()
    me = identity.load_or_create(a.state, "impostor")
    raw, hb = await asyncio.to_thread(capture, a.address, 15)
    server = await serve(me, hb.proxy_port)
    out = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
    out.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 1)
    out.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(a.address))
    say(f"READY node={hb.node_id.hex()} port={hb.proxy_port}")
    end = time.monotonic() + a.seconds
    seq = hb.seq
    other_instance = os.urandom(8)
    async with server:
        while time.monotonic() < end:
            seq += 1
            forged = dataclasses.replace(hb, seq=seq, address=a.address)
            restarted = dataclasses.replace(forged, instance_id=other_instance)
            for data in (raw, encode(forged), encode(restarted)):
                out.sendto(data, (GROUP, PORT))
            await asyncio.sleep(a.period)
    say("DONE")


if __name__ == "__main__":
    asyncio.run(main())
