"""Gather the doctor's facts: the only part of it that does I/O (HTTP on loopback, TLS handshakes,
interface flags, firewall commands, the state dir, and listening on the discovery port)."""

from __future__ import annotations

import http.client
import json
import socket
import ssl
import subprocess
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

import netifaces
from cryptography import x509
from cryptography.x509.oid import NameOID

from ollana import __version__
from ollana.config import Endpoint
from ollana.discovery import net, saved
from ollana.doctor import firewall
from ollana.doctor.browse import browse
from ollana.doctor.facts import (
    Facts,
    FirewallFact,
    HeardFact,
    Holder,
    InterfaceFact,
    MdnsFact,
    NodeFact,
    OllamaFact,
    PeerFact,
    PortFact,
)
from ollana.doctor.listen import listen
from ollana.errors import OllanaError
from ollana.trust import identity
from ollana.trust.identity import Identity, device_id_of
from ollana.trust.tls import client_tls

TIMEOUT: Final = 1.5
_FLAGS: Final = {"up": 0x1, "loopback": 0x8, "multicast": 0x1000}

# A command's (exit status, output, error output); None when the program is not installed.
Runner = Callable[[list[str]], "tuple[int, str, str] | None"]


@dataclass(frozen=True, slots=True)
class Options:
    state_dir: Path
    ollama_url: str
    ollama_host: str | None
    client: Endpoint
    server: Endpoint
    listen_seconds: float
    probe: bool
    discovery_port: int
    group: str
    group6: str


def run_command(argv: list[str]) -> tuple[int, str, str] | None:
    try:
        proc = subprocess.run(argv, check=False, capture_output=True, text=True, timeout=5, stdin=subprocess.DEVNULL)
    except FileNotFoundError:
        return None
    except (OSError, subprocess.TimeoutExpired) as exc:
        return 1, "", str(exc)
    return proc.returncode, proc.stdout, proc.stderr


def collect(opts: Options, run: Runner = run_command) -> Facts:
    errors: list[str] = []
    me = _identity(opts.state_dir)
    ports, statuses = [], []
    for endpoint in (opts.client, opts.server):
        fact, status = identify(endpoint, me)
        ports.append(fact)
        if status is not None:
            statuses.append((str(endpoint), status))
    node = _node(statuses)
    node_error = None if node is not None else f"asked {opts.client} and {opts.server}"
    interfaces = interfaces_now()
    links = net.list_links()
    heard: list[HeardFact] = []
    answered: list[MdnsFact] = []
    if opts.listen_seconds > 0 and links:
        groups = {4: opts.group, 6: opts.group6}
        # mDNS answers are collected in a thread over the same seconds as the heartbeats.
        mdns_errors: list[str] = []
        browsing = threading.Thread(target=_browse, args=(opts.listen_seconds, answered, mdns_errors), daemon=True)
        browsing.start()
        try:
            heard = listen(opts.discovery_port, groups, links, opts.listen_seconds, probe=opts.probe)
        except OSError as exc:
            errors.append(f"cannot listen on UDP {opts.discovery_port}: {exc.strerror or exc}")
        browsing.join(opts.listen_seconds + 5)
        errors.extend(mdns_errors)
    try:
        saved_peers = tuple(str(p.endpoint) for p in saved.load(opts.state_dir))
    except OllanaError as exc:
        saved_peers = ()
        errors.append(str(exc))
    return Facts(
        hostname=socket.gethostname(),
        ollama=ollama_fact(opts.ollama_url, opts.ollama_host),
        ports=tuple(ports), node=node, node_error=node_error, interfaces=tuple(interfaces),
        listened_s=opts.listen_seconds if links else 0.0, heard=tuple(heard),
        firewall=firewall_fact(run, firewall.ports(opts.discovery_port, opts.server.port)),
        saved_peers=saved_peers, own_short=me.short if me is not None else None,
        discovery_port=opts.discovery_port, group=opts.group, group6=opts.group6, errors=tuple(errors),
        mdns=tuple(answered),
    )


def _browse(seconds: float, into: list[MdnsFact], errors: list[str]) -> None:
    try:
        into.extend(browse(seconds))
    except OSError as exc:
        errors.append(f"cannot browse mDNS (UDP 5353): {exc.strerror or exc}")


def _identity(state_dir: Path) -> Identity | None:
    try:
        return identity.load(state_dir)
    except OllanaError:
        return None


# --- who holds a port -----------------------------------------------------------------------------


def _get(endpoint: Endpoint, path: str, tls: ssl.SSLContext | None = None) -> tuple[int, bool, Any]:
    """(status, passed an ollana, JSON body or None)."""
    conn: http.client.HTTPConnection = (
        http.client.HTTPSConnection(endpoint.host, endpoint.port, timeout=TIMEOUT, context=tls)
        if tls is not None else http.client.HTTPConnection(endpoint.host, endpoint.port, timeout=TIMEOUT)
    )
    try:
        conn.request("GET", path, headers={"User-Agent": f"ollana/{__version__}", "Accept": "application/json"})
        resp = conn.getresponse()
        raw = resp.read(1024 * 1024)
        via = any(_ollana_hop(hop) for v in resp.headers.get_all("Via") or [] for hop in v.split(","))
    finally:
        conn.close()
    try:
        body = json.loads(raw)
    except ValueError:
        body = None
    return resp.status, via, body


def _ollana_hop(hop: str) -> bool:
    parts = hop.split()
    return len(parts) >= 2 and parts[1].startswith("ollana")


def identify(endpoint: Endpoint, me: Identity | None) -> tuple[PortFact, dict[str, Any] | None]:
    """Who answers at ``endpoint`` (asking /ollana/v1/status, then /api/version), and the status
    document when it is an ollana."""
    where = str(endpoint)
    try:
        status, _via, body = _get(endpoint, "/ollana/v1/status")
    except ConnectionRefusedError:
        return PortFact(where, Holder.FREE, "nothing listens"), None
    except (OSError, http.client.HTTPException):
        return _identify_tls(endpoint, me)
    if status == 200 and isinstance(body, dict) and "node_id" in body and "role" in body:
        return _ollana(where, body), body
    try:
        status, via, body = _get(endpoint, "/api/version")
    except (OSError, http.client.HTTPException) as exc:
        return PortFact(where, Holder.OTHER, f"answers HTTP, but not /api/version ({exc})"), None
    if status == 200 and not via and isinstance(body, dict) and isinstance(body.get("version"), str):
        return PortFact(where, Holder.OLLAMA, f"Ollama {body['version']}"), None
    return PortFact(where, Holder.OTHER, f"answers {status} to /api/version"), None


def _ollana(where: str, body: dict[str, Any]) -> PortFact:
    role = str(body.get("role"))
    return PortFact(where, Holder.OLLANA, f"ollana {role} (trust {body.get('trust', '?')})", role)


def _identify_tls(endpoint: Endpoint, me: Identity | None) -> tuple[PortFact, dict[str, Any] | None]:
    where = str(endpoint)
    try:
        with socket.create_connection((endpoint.host, endpoint.port), timeout=TIMEOUT) as raw, \
                client_tls(None).wrap_socket(raw) as tls:
            der = tls.getpeercert(binary_form=True)
    except (OSError, ValueError) as exc:
        return PortFact(where, Holder.OTHER, f"accepts connections but speaks neither HTTP nor TLS ({exc})"), None
    if not der or not _ollana_cert(der):
        return PortFact(where, Holder.OTHER, "speaks TLS, with a certificate that is not an ollana's"), None
    if me is None or device_id_of(der) != me.device_id:
        return PortFact(where, Holder.OLLANA, f"ollana in trust mode devices (device {device_id_of(der)[:7]}), "
                                              "with another state dir than this doctor's"), None
    try:
        status, _via, body = _get(endpoint, "/ollana/v1/status", client_tls(me.cert_pem, (me.cert_path, me.key_path)))
    except (OSError, http.client.HTTPException) as exc:
        return PortFact(where, Holder.OLLANA, f"ollana with this device's key (cannot ask it: {exc})"), None
    if status == 200 and isinstance(body, dict):
        return _ollana(where, body), body
    return PortFact(where, Holder.OLLANA, f"ollana with this device's key (answers {status})"), None


def _ollana_cert(der: bytes) -> bool:
    """Whether a certificate is one ollana made (its common name says "ollana HOST")."""
    try:
        names = x509.load_der_x509_certificate(der).subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    except ValueError:
        return False
    return any(str(n.value).startswith("ollana") for n in names)


def ollama_fact(url: str, ollama_host: str | None) -> OllamaFact:
    parts = urlsplit(url)
    endpoint = Endpoint(parts.hostname or "127.0.0.1", parts.port or (443 if parts.scheme == "https" else 80))
    tls = ssl.create_default_context() if parts.scheme == "https" else None
    try:
        status, via, body = _get(endpoint, parts.path.rstrip("/") + "/api/version", tls)
    except (OSError, http.client.HTTPException) as exc:
        return OllamaFact(url, ollama_host, None, str(exc) or type(exc).__name__)
    if via:
        return OllamaFact(url, ollama_host, None, "an ollana answers there, not an Ollama")
    if status == 200 and isinstance(body, dict) and isinstance(body.get("version"), str):
        return OllamaFact(url, ollama_host, body["version"])
    return OllamaFact(url, ollama_host, None, f"answers {status} to /api/version")


# --- the running node ------------------------------------------------------------------------------


def _node(statuses: list[tuple[str, dict[str, Any]]]) -> NodeFact | None:
    """The node that routes (client or both) when one answers, else the server."""
    if not statuses:
        return None
    asked, doc = next(((a, d) for a, d in statuses if isinstance(d.get("peers"), list)), statuses[0])
    upstream = doc.get("upstream")
    if not isinstance(upstream, dict):
        upstream = {}
    interfaces = doc.get("interfaces")
    return NodeFact(
        asked=asked, role=str(doc.get("role")), trust=str(doc.get("trust", "open")),
        hostname=str(doc.get("hostname", "")), device_id=doc.get("device_id"), node_id=str(doc.get("node_id", "")),
        peers=tuple(_peer(p) for p in doc.get("peers") or [] if isinstance(p, dict)),
        interfaces=tuple(str(i.get("name")) for i in interfaces if isinstance(i, dict))
        if isinstance(interfaces, list) else None,
        upstream_url=upstream.get("url"), upstream_healthy=upstream.get("healthy"),
        upstream_error=upstream.get("error"),
    )


def _peer(p: dict[str, Any]) -> PeerFact:
    paired = p.get("paired")
    return PeerFact(
        key=str(p.get("id", "")), hostname=str(p.get("hostname") or ""), address=str(p.get("address", "")),
        port=int(p.get("port") or 0), source=str(p.get("source", "")), healthy=bool(p.get("healthy")),
        trust=str(p.get("trust", "open")), paired=paired if p.get("trust") == "devices" else None,
        device_id=p.get("device_id"), node_id=str(p.get("node_id") or ""),
    )


# --- interfaces and firewall ---------------------------------------------------------------------


def interfaces_now() -> list[InterfaceFact]:
    out = []
    for name in netifaces.interfaces():
        try:
            flags = int(Path(f"/sys/class/net/{name}/flags").read_text().strip(), 16)
        except (OSError, ValueError):
            flags = _FLAGS["up"] | _FLAGS["multicast"] | (_FLAGS["loopback"] if name.startswith("lo") else 0)
        try:
            addrs = netifaces.ifaddresses(name)
        except ValueError:
            continue
        v4 = tuple(f"{a['addr']}/{_prefix(a.get('netmask', '255.255.255.255'))}"
                   for a in addrs.get(netifaces.AF_INET, []) if a.get("addr"))
        v6 = tuple(str(a["addr"]) for a in addrs.get(netifaces.AF_INET6, []) if a.get("addr"))
        out.append(InterfaceFact(name, bool(flags & _FLAGS["up"]), bool(flags & _FLAGS["multicast"]),
                                 bool(flags & _FLAGS["loopback"]), v4, v6))
    return out


def _prefix(netmask: str) -> int:
    try:
        return sum(int(octet).bit_count() for octet in netmask.split("."))
    except ValueError:
        return 32


def firewall_fact(run: Runner, want: tuple[firewall.Port, ...]) -> FirewallFact:
    read: list[str] = []
    drops: list[firewall.Drop] = []
    why: list[str] = []
    for tool in ("iptables", "ip6tables"):
        got = run([tool, "-S"])
        if got is None:
            continue
        code, out, err = got
        if code != 0:
            why.append(f"{tool}: {err.strip().splitlines()[0] if err.strip() else f'exit {code}'}")
            continue
        read.append(tool)
        drops += firewall.iptables_drops(out, tool, want)
    got = run(["nft", "-a", "list", "ruleset"])
    if got is not None:
        code, out, err = got
        if code == 0:
            read.append("nft")
            drops += firewall.nft_drops(out, want, iptables_seen="iptables" in read)
        else:
            why.append(f"nft: {err.strip().splitlines()[0] if err.strip() else f'exit {code}'}")
    unreadable = None if read else ("; ".join(why) or None)
    return FirewallFact(tuple(read), unreadable, tuple(drops))
