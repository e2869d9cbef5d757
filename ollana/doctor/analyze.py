"""From facts to findings, each with the exact fix. Pure: ``analyze(facts)`` reads nothing else."""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from ollana.config import Endpoint
from ollana.doctor.facts import Facts, Holder, NodeFact, PeerFact

RESTART = "restart ollana: `sudo systemctl restart ollana` (a service) or `ollana stop && ollana serve -d`"
TROUBLESHOOTING = "docs/operations.md, \"Troubleshooting with ollana doctor\""


class Severity(enum.Enum):
    PROBLEM = "problem"  # something stops this node from seeing or serving what it should
    NOTE = "note"  # worth knowing; not a fault by itself


@dataclass(frozen=True, slots=True)
class Finding:
    severity: Severity
    topic: str  # node, ollama, ports, interfaces, firewall, discovery, servers, saved
    what: str
    fix: tuple[str, ...] = ()

    def document(self) -> dict[str, Any]:
        return {"severity": self.severity.value, "topic": self.topic, "what": self.what, "fix": list(self.fix)}


def analyze(facts: Facts) -> list[Finding]:
    """Every finding, problems first (in the order a person would fix them)."""
    found = [
        *_node(facts), *_ollama(facts), *_ports(facts), *_firewall(facts), *_interfaces(facts),
        *_heard(facts), *_mdns(facts), *_servers(facts), *_saved(facts),
        *(Finding(Severity.NOTE, "doctor", f"could not check: {e}") for e in facts.errors),
    ]
    return sorted(found, key=lambda f: f.severity is not Severity.PROBLEM)


def healthy(findings: Iterable[Finding]) -> bool:
    return not any(f.severity is Severity.PROBLEM for f in findings)


def _problem(topic: str, what: str, *fix: str) -> Finding:
    return Finding(Severity.PROBLEM, topic, what, fix)


def _note(topic: str, what: str, *fix: str) -> Finding:
    return Finding(Severity.NOTE, topic, what, fix)


def _is_client(node: NodeFact | None) -> bool:
    return node is not None and node.role in ("client", "both")


def _is_server(facts: Facts) -> bool:
    node = facts.node
    return node.role in ("server", "both") if node is not None else facts.ollama.version is not None


def _servers_of(node: NodeFact) -> list[PeerFact]:
    return [p for p in node.peers if p.source != "local"]


def _peer_add(addresses: Iterable[str]) -> list[str]:
    lines = [f"ollana peer add {a}" for a in dict.fromkeys(addresses)]
    return lines or ["ollana peer add SERVER-ADDRESS   (the server's host name or IP; port 11435 by default)"]


# --- the node and the local Ollama ---------------------------------------------------------------


def _node(facts: Facts) -> list[Finding]:
    node = facts.node
    if node is None:
        why = f" ({facts.node_error})" if facts.node_error else ""
        unasked = [p for p in facts.ports if p.holder is Holder.OLLANA]
        if unasked:
            return [_problem(
                "node", f"an ollana answers at {unasked[0].address} ({unasked[0].detail}), but the doctor cannot ask "
                "it what it sees: only its own key opens it",
                "run the doctor with that ollana's state dir, as its user: `sudo ollana doctor --state-dir "
                "/var/lib/ollana` (a service's), or `--state-dir` / OLLANA_HOME as given to `ollana serve`",
            )]
        if any(p.holder is Holder.OLLAMA for p in facts.ports):
            return [_problem("node", f"an Ollama runs on this machine, but no ollana shares it on the LAN{why}",
                             "ollana serve   (it becomes a server; as a service: `sudo systemctl enable --now ollana`)")]
        return [_problem("node", f"no ollana runs on this machine: nothing answers /ollana/v1/status{why}",
                         "ollana serve   (as a service: `sudo systemctl enable --now ollana`)")]
    out = []
    if node.role == "client" and facts.ollama.version is not None:
        out.append(_problem(
            "node", f"an Ollama {facts.ollama.version} answers at {facts.ollama.url}, but ollana runs as a client "
            "and does not share it (ollana started before Ollama, or with --mode client)",
            RESTART, "or pin the role so boot order does not matter: `ollana serve --mode server` (--mode both "
            "to also use the other servers from this machine)",
        ))
    if node.role in ("server", "both") and node.upstream_healthy is False:
        out.append(_problem(
            "node", f"this server's Ollama at {node.upstream_url} does not answer ({node.upstream_error or 'no answer'}): "
            "the server announces nothing and answers 503",
            "start Ollama: `sudo systemctl start ollama` (Linux service), the Ollama app, or `ollama serve`",
            "if Ollama listens elsewhere, give ollana the same OLLAMA_HOST (or --ollama URL), then " + RESTART,
        ))
    return out


def _ollama(facts: Facts) -> list[Finding]:
    o = facts.ollama
    if o.ollama_host and o.version is None and any(p.holder is Holder.OLLAMA for p in facts.ports):
        where = next(p.address for p in facts.ports if p.holder is Holder.OLLAMA)
        return [_problem(
            "ollama", f"OLLAMA_HOST={o.ollama_host} points at {o.url}, where no Ollama answers; an Ollama answers "
            f"at {where}",
            "unset OLLAMA_HOST (in this shell and in ollana's service environment)",
            f"or set it to where Ollama listens: OLLAMA_HOST={where}",
        )]
    return []


def _ports(facts: Facts) -> list[Finding]:
    out = []
    for p in facts.ports:
        if p.holder is not Holder.OTHER:
            continue
        port = p.address.rsplit(":", 1)[1]
        if port == "11434":
            fix = ("find it: `sudo ss -ltnp 'sport = :11434'`, and stop it",
                   ("or let ollana's client listen elsewhere: `ollana serve --listen 127.0.0.1:PORT` (apps then "
                    "need OLLAMA_HOST=127.0.0.1:PORT)"))
        else:
            fix = (f"find it: `sudo ss -ltnp 'sport = :{port}'`, and stop it",
                   ("or run the server proxy on another port: `ollana serve --listen 0.0.0.0:PORT` (clients learn "
                    "the port from its heartbeats; saved peers need it: `ollana peer add HOST:PORT`)"))
        out.append(_problem("ports", f"{p.address} is held by a program that is neither Ollama nor ollana "
                                     f"({p.detail})", *fix))
    return out


# --- the network --------------------------------------------------------------------------------------


def _firewall(facts: Facts) -> list[Finding]:
    fw = facts.firewall
    if not fw.read:
        return [_note("firewall", f"could not read the firewall rules ({fw.unreadable or 'no iptables or nft'})",
                      "run it as root to check them: `sudo ollana doctor`")]
    out = []
    known = _known_addresses(facts)
    for d in fw.drops:
        some = "some of " if d.conditional else ""
        where = "arriving" if d.direction == "in" else "leaving"
        what = (f"the firewall drops {some}{d.port.what} ({d.port.port}/{d.port.proto}, {where}): "
                f"`{d.rule}` ({d.tool}, chain {d.chain})")
        fix = [d.fix]
        if d.port.port == facts.discovery_port:
            fix.append("or, where the rule must stay, name the servers by address: " + "; ".join(_peer_add(known)))
        if d.port.proto == "tcp" and d.direction == "in" and not _is_server(facts):
            out.append(_note("firewall", what + "; it matters only if this machine becomes a server", *fix))
            continue
        out.append(_problem("firewall", what, *fix))
    return out


def _known_addresses(facts: Facts) -> list[str]:
    """Addresses of the servers heard on the link, for `ollana peer add` lines: link-local IPv6
    ones (valid on this link only) only when there is nothing better."""
    heard = [str(Endpoint(h.source, h.port)) for h in facts.heard
             if h.kind == "heartbeat" and not h.this_machine and h.port]
    peers = [p.endpoint for p in facts.node.peers if p.source in ("multicast", "mdns")] if facts.node else []
    stable = [a for a in [*heard, *peers] if "%" not in a and not a.startswith("[fe80")]
    return stable or [*heard, *peers]


def _interfaces(facts: Facts) -> list[Finding]:
    out = []
    usable = [i for i in facts.interfaces if i.carries_discovery]
    if not usable:
        out.append(_problem(
            "interfaces", "no interface can carry discovery (none is up, multicast-capable and has an address)",
            *_peer_add(()),
        ))
    for i in facts.interfaces:
        if i.up and not i.loopback and i.ipv4 and not i.multicast:
            out.append(_note("interfaces", f"{i.name} has no MULTICAST flag: discovery skips it",
                             f"sudo ip link set {i.name} multicast on"))
    node = facts.node
    if _is_client(node) and node is not None and node.interfaces == ():
        out.append(_note("interfaces", "the running node runs discovery on no interface (--no-discovery, or none "
                                       "usable): it finds servers only by saved and --peer addresses"))
    return out


def _heard(facts: Facts) -> list[Finding]:
    node = facts.node
    if facts.listened_s <= 0 or not _is_client(node) or node is None:
        return []
    listed = {p.key for p in node.peers} | {p.node_id for p in node.peers if p.node_id}
    out = []
    for h in facts.heard:
        if h.kind != "heartbeat" or h.this_machine or h.node_id in listed:
            continue
        address = str(Endpoint(h.source, h.port or 0))
        name = f"{h.hostname or 'a server'} at {address}"
        if h.trust and h.trust != node.trust:
            fix = ("restart this node without --trust open, then pair: `ollana device pending`, `ollana device allow ID`"
                   if node.trust == "open" else f"on {h.hostname or h.source}: restart ollana without --trust open, "
                   "then pair the two (`ollana device pending`, `ollana device allow ID` on each)")
            out.append(_problem("discovery", f"heard {name} in trust mode {h.trust}; this node runs trust mode "
                                             f"{node.trust} and ignores it", fix))
        else:
            out.append(_problem("discovery", f"heard {name}, but the running node does not list it (it may run "
                                             "discovery on other interfaces: --interface)", *_peer_add([address])))
    return out


def _mdns(facts: Facts) -> list[Finding]:
    """What mDNS answered, against what the heartbeats said."""
    if facts.listened_s <= 0:
        return []
    by_heartbeat = {h.node_id for h in facts.heard if h.kind == "heartbeat"}
    node = facts.node
    listed = ({p.key for p in node.peers} | {p.node_id for p in node.peers if p.node_id}) if node is not None else set()
    out = []
    for m in facts.mdns:
        if m.error is not None:
            out.append(_problem("mdns", f"{m.name} answered mDNS but {m.error}; clients ignore it",
                                "run `ollana doctor` on that machine; update its ollana if it is older"))
            continue
        address = str(Endpoint(m.address or "?", m.port or 0))
        name = f"{m.hostname or 'a server'} at {address}"
        if m.node_id not in by_heartbeat:
            out.append(_note("mdns", f"found {name} by mDNS only: its heartbeats (UDP {facts.discovery_port}, "
                                     f"{facts.group} / {facts.group6}) did not arrive in {facts.listened_s:g} s, so "
                                     "a firewall (here or there) or the switch (IGMP snooping) drops them; clients "
                                     "still find it by mDNS", f"to carry both: allow UDP {facts.discovery_port} "
                                     f"({TROUBLESHOOTING})"))
        if _is_client(node) and m.node_id not in listed and m.node_id not in by_heartbeat:
            out.append(_problem("mdns", f"{name} answers mDNS, but the running node does not list it",
                                *_peer_add([address])))
    return out


# --- the servers the node sees ----------------------------------------------------------------------


def _servers(facts: Facts) -> list[Finding]:
    node = facts.node
    if not _is_client(node) or node is None:
        return []
    servers = _servers_of(node)
    if not servers:
        heard = ""
        if facts.listened_s > 0 and not any(h.kind == "heartbeat" and not h.this_machine for h in facts.heard):
            answered = " or mDNS answer" if not facts.mdns else ""
            heard = f", and no heartbeat{answered} arrived in {facts.listened_s:g} s of listening"
        return [_problem(
            "servers", f"this client knows no server{heard}",
            "if a server runs on this LAN: run `ollana doctor` there too; check UDP "
            f"{facts.discovery_port} in both firewalls, Wi-Fi client isolation, VLANs ({TROUBLESHOOTING})",
            *_peer_add(_known_addresses(facts)),
        )]
    out = []
    for p in servers:
        src = f"{p.endpoint}, {p.source}"
        if p.trust == "devices" and p.paired is False:
            fix = []
            if p.device_id:
                fix.append(f"here: ollana device allow {p.device_id[:7]}")
            else:
                fix.append(f"its certificate could not be read: is `ollana serve` (trust mode devices) running on "
                           f"{p.name}, and TCP {p.port} open there?")
            if facts.own_short:
                fix.append(f"on {p.name}: ollana device allow {facts.own_short}")
            out.append(_problem("servers", f"{p.name} ({src}) is not paired with this device: it gets no requests",
                                *fix))
        elif not p.healthy:
            scheme = "https" if p.trust == "devices" else "http"
            out.append(_problem(
                "servers", f"{p.name} ({src}) does not answer its health checks",
                f"from here: `curl -skm3 {scheme}://{p.endpoint}/ollana/v1/status` (any JSON answer: it is reachable)",
                f"on {p.name}: `ollana doctor` (is its Ollama up? is TCP {p.port} open there?)",
            ))
    return out


def _saved(facts: Facts) -> list[Finding]:
    if not facts.saved_peers or facts.node is None:
        return []
    node = facts.node
    if not _is_client(node):
        return [_note("saved", f"{len(facts.saved_peers)} saved peer(s), but this node is a {node.role}: only "
                               "clients (and role both) use saved peers")]
    in_use = {p.endpoint for p in node.peers}
    return [
        _problem("saved", f"saved peer {s} is not in the running node's list (a node started with another state dir, "
                          "an older ollana, or the peer is this machine)",
                 f"check that ollana runs with this state dir (--state-dir / OLLANA_HOME), then {RESTART}")
        for s in facts.saved_peers if s not in in_use
    ]
