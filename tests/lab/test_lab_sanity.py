"""The lab itself behaves like a LAN of separate machines, and cleans up after itself."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Final

import pytest

from tests.lab.netns import Host, Lab, cleanup_stale_namespaces, running

pytestmark = pytest.mark.lab

GROUP: Final = "239.255.11.36"
PORT: Final = 11436
MARKER_PORT: Final = PORT + 1
ECHO_PORT: Final = 7777

ECHO_SERVER: Final = """\
import socket, sys
host, port = sys.argv[1], int(sys.argv[2])
if host == "::":
    srv = socket.create_server((host, port), family=socket.AF_INET6, dualstack_ipv6=True)
else:
    srv = socket.create_server((host, port))
print("listening", flush=True)
while True:
    conn, _ = srv.accept()
    with conn:
        conn.sendall(conn.recv(1024))
"""

ECHO_CLIENT: Final = """\
import socket, sys
try:
    with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=float(sys.argv[3])) as s:
        s.sendall(b"hello")
        print(s.recv(1024).decode())
except ConnectionRefusedError:
    print("refused")
except OSError as exc:
    print("failed", repr(exc))
"""

# Joins the group on both the data and the marker port, then collects datagrams until
# the awaited kind arrives. The marker shows when a datagram *would* have arrived, so
# "nothing was received" needs no fixed sleep.
MCAST_RECEIVER: Final = """\
import json, select, socket, sys, time
group, iface, until = sys.argv[1], sys.argv[4], sys.argv[5]
port, marker_port = int(sys.argv[2]), int(sys.argv[3])
def join(p):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((group, p))
    mreq = socket.inet_aton(group) + socket.inet_aton(iface)
    s.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreq)
    s.setblocking(False)
    return s
data, marker = join(port), join(marker_port)
print("joined", flush=True)
got = {"data": [], "marker": []}
deadline = time.monotonic() + 5.0
while not got[until] and time.monotonic() < deadline:
    ready, _, _ = select.select([data, marker], [], [], deadline - time.monotonic())
    for s in ready:
        payload, addr = s.recvfrom(2048)
        got["data" if s is data else "marker"].append([payload.decode(), addr[0]])
while True:
    try:
        payload, addr = data.recvfrom(2048)
    except BlockingIOError:
        break
    got["data"].append([payload.decode(), addr[0]])
print(json.dumps(got), flush=True)
"""

MCAST_SENDER: Final = """\
import socket, sys
group, iface = sys.argv[1], sys.argv[2]
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 1)
s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(iface))
for item in sys.argv[3:]:
    port, payload = item.split(":", 1)
    s.sendto(payload.encode(), (group, int(port)))
"""


def start_echo(host: Host, bind: str = "::", port: int = ECHO_PORT) -> subprocess.Popen[bytes]:
    proc = host.popen([sys.executable, "-c", ECHO_SERVER, bind, str(port)], log_name="echo")
    host.wait_for_line(proc, r"^listening$", timeout=5)
    return proc


def echo_from(host: Host, addr: str, port: int = ECHO_PORT, timeout: float = 2.0) -> str:
    return host.python(ECHO_CLIENT, args=[addr, str(port), str(timeout)]).stdout.strip()


def multicast_exchange(
    sender: Host, receiver: Host, items: list[tuple[int, str]], until: str
) -> dict[str, list[list[str]]]:
    args = [GROUP, str(PORT), str(MARKER_PORT), receiver.ip, until]
    proc = receiver.popen([sys.executable, "-c", MCAST_RECEIVER, *args], log_name="mcast-recv")
    receiver.wait_for_line(proc, r"^joined$", timeout=5)
    sender.python(MCAST_SENDER, args=[GROUP, sender.ip, *(f"{p}:{m}" for p, m in items)])
    match = receiver.wait_for_line(proc, r"^\{.*\}$", timeout=10)
    result: dict[str, list[list[str]]] = json.loads(match.group(0))
    return result


def netns_names() -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True)
    return [line.split()[0] for line in out.stdout.splitlines() if line.strip()]


def root_links() -> set[str]:
    """``index:name`` of every interface in the root namespace (read-only query)."""
    out = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True, check=True)
    return {":".join(line.split(":")[0:2]).replace(" ", "") for line in out.stdout.splitlines()}




def test_hosts_reach_each_other_over_tcp(lab: Lab) -> None:
    a, b = lab.add_host("a"), lab.add_host("b")
    start_echo(a)
    b.wait_tcp(ECHO_PORT, addr=a.ip, timeout=5)
    assert echo_from(b, a.ip) == "hello"
    assert echo_from(b, a.ip6) == "hello"


def test_multicast_crosses_the_lan(lab: Lab) -> None:
    a, b = lab.add_host("a"), lab.add_host("b")
    got = multicast_exchange(a, b, [(PORT, "hi")], until="data")
    assert got["data"] == [["hi", a.ip]]


def test_loopback_is_private_to_each_host(lab: Lab) -> None:
    a, b = lab.add_host("a"), lab.add_host("b")
    start_echo(a, bind="127.0.0.1")
    assert echo_from(a, "127.0.0.1") == "hello"
    assert echo_from(b, "127.0.0.1") == "refused"
    assert echo_from(b, a.ip) == "refused"


def test_drop_udp_blocks_datagrams_until_cleared(lab: Lab) -> None:
    a, b = lab.add_host("a"), lab.add_host("b")
    b.drop_udp(PORT, 1.0)
    got = multicast_exchange(a, b, [(PORT, "lost")] * 3 + [(MARKER_PORT, "marker")], "marker")
    assert got["marker"] == [["marker", a.ip]]
    assert got["data"] == []

    b.clear_firewall()
    b.drop_udp(PORT, 0.25)
    assert "--probability 0.25" in b.run(["iptables", "-S", "INPUT"]).stdout
    b.clear_firewall()
    got = multicast_exchange(a, b, [(PORT, "back")], until="data")
    assert got["data"] == [["back", a.ip]]


def test_link_down_blocks_tcp_until_link_up(lab: Lab) -> None:
    a, b = lab.add_host("a"), lab.add_host("b")
    start_echo(b)
    assert echo_from(a, b.ip) == "hello"

    b.link_down()
    assert echo_from(a, b.ip, timeout=0.5).startswith("failed")

    b.link_up()
    a.wait_tcp(ECHO_PORT, addr=b.ip, timeout=5)
    a.wait_tcp(ECHO_PORT, addr=b.ip6, timeout=5)


def test_root_namespace_gets_no_interface_or_route_into_the_lab(_lab_ready: None) -> None:
    before = root_links()
    with Lab() as lab:
        lab.add_host("a")
        lab.add_host("b")
        assert root_links() == before
        routes = subprocess.run(
            ["ip", "route", "show", "table", "all"], capture_output=True, text=True, check=True
        ).stdout
        assert not re.search(r"^(local |broadcast )?10\.77\.", routes, re.MULTILINE), routes
        # `ip route get` only consults the table; it sends nothing.
        probe = subprocess.run(
            ["ip", "-o", "route", "get", "10.77.0.2"], capture_output=True, text=True, check=False
        )
        dev = re.search(r" dev (\S+)", probe.stdout)
        if dev is not None:
            assert dev.group(1) in {link.split(":")[1].split("@")[0] for link in before}


def test_processes_see_the_repo_and_interpreter(lab: Lab) -> None:
    a = lab.add_host("a")
    out = a.run(["python", "-c", "import sys, tests.lab.netns; print(sys.executable)"]).stdout
    assert out.strip() == sys.executable


def test_close_kills_processes_and_removes_namespaces(_lab_ready: None) -> None:
    lab = Lab()
    prefix = lab.prefix
    try:
        a = lab.add_host("a")
        sleeper = "import time; print('up', flush=True); time.sleep(60)"
        proc = a.popen([sys.executable, "-c", sleeper])
        # A daemon-like grandchild in its own session escapes the process group.
        escaped = a.popen(
            [sys.executable, "-c",
             ("import os, subprocess, sys; "
             "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'], "
             "start_new_session=True); print(p.pid, flush=True)")],
            log_name="escaper",
        )  # fmt: skip
        a.wait_for_line(proc, "^up$")
        grandchild = int(a.wait_for_line(escaped, r"^\d+$").group(0))
        assert any(ns.startswith(prefix) for ns in netns_names())
    finally:
        lab.close()
    assert proc.returncode is not None
    assert not any(ns.startswith(prefix) for ns in netns_names())
    assert not running(grandchild)
    lab.close()  # idempotent


def test_stale_namespaces_of_dead_runs_are_removed(_lab_ready: None) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale, live = f"ol{dead.pid}-abcd-x", "ol1-abcd-x"  # pid 1 is always alive
    subprocess.run(["ip", "netns", "add", stale], check=True)
    subprocess.run(["ip", "netns", "add", live], check=True)
    try:
        removed = cleanup_stale_namespaces()
        names = netns_names()
        assert stale in removed and stale not in names
        assert live in names
    finally:
        for ns in (stale, live):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)


def test_the_shared_neighbour_table_fits_the_largest_lab(lab: Lab) -> None:
    # One table for every namespace: the 20x20 lab overflowed the default 1,024 entries.
    for family in ("ipv4", "ipv6"):
        limit = int(Path(f"/proc/sys/net/{family}/neigh/default/gc_thresh3").read_text())
        assert limit >= 32768, (family, limit)
