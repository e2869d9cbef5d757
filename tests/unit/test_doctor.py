"""`ollana doctor`, the pure parts: firewall rule sets parsed, facts analysed, the report rendered."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

from ollana.cli.doctor import render
from ollana.doctor.analyze import Finding, Severity, analyze, healthy
from ollana.doctor.facts import (
    Facts,
    FirewallFact,
    HeardFact,
    Holder,
    InterfaceFact,
    NodeFact,
    OllamaFact,
    PeerFact,
    PortFact,
)
from ollana.doctor.firewall import Drop, iptables_drops, nft_drops, ports

PORTS = ports()
DISCOVERY, MDNS, PROXY = PORTS

# --- firewall ------------------------------------------------------------------------------------

LAB_DROP = """\
-P INPUT ACCEPT
-P FORWARD ACCEPT
-P OUTPUT ACCEPT
-A INPUT -i lo -j ACCEPT
-A INPUT -p udp -m udp --dport 11436 -m statistic --mode random --probability 0.30000000000 -j DROP
-A INPUT -p udp -m udp --dport 11436 -j DROP
-A INPUT -p tcp -m multiport --dports 8080,11435 -j REJECT --reject-with icmp-port-unreachable
-A OUTPUT -p udp -m udp --dport 5000:6000 -j DROP
"""

# ufw's shape: policy DROP, chains jumped to, the LAN's discovery accepted with a source.
UFW = """\
-P INPUT DROP
-P FORWARD DROP
-P OUTPUT ACCEPT
-N ufw-before-input
-N ufw-user-input
-N ufw-not-local
-A INPUT -j ufw-before-input
-A ufw-before-input -i lo -j ACCEPT
-A ufw-before-input -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A ufw-before-input -m conntrack --ctstate INVALID -j DROP
-A ufw-before-input -j ufw-not-local
-A ufw-before-input -p udp -d 224.0.0.251/32 --dport 5353 -j ACCEPT
-A ufw-before-input -j ufw-user-input
-A ufw-not-local -m addrtype --dst-type LOCAL -j RETURN
-A ufw-not-local -m addrtype --dst-type MULTICAST -j RETURN
-A ufw-not-local -j DROP
-A ufw-user-input -p tcp -m tcp --dport 22 -j ACCEPT
-A ufw-user-input -s 192.168.1.0/24 -p udp -m udp --dport 11436 -m comment --comment "ollana discovery" -j ACCEPT
"""

NFT = """\
table inet filter { # handle 1
\tchain input { # handle 1
\t\ttype filter hook input priority filter; policy drop;
\t\tct state established,related accept # handle 4
\t\tiifname "lo" accept # handle 5
\t\tudp dport 11436 counter packets 3 bytes 300 drop comment "no discovery" # handle 6
\t\ttcp dport { 22, 11435 } accept # handle 7
\t\tjump more # handle 8
\t}
\tchain more { # handle 2
\t\tmeta l4proto udp th dport 5000-6000 reject # handle 9
\t}
\tset blocked { # handle 3
\t\ttype ipv4_addr
\t\telements = { 10.0.0.1,
\t\t\t     10.0.0.2 }
\t}
}
table ip filter { # handle 2
\tchain INPUT { # handle 1
\t\ttype filter hook input priority filter; policy accept;
\t\tmeta l4proto udp udp dport 11436 counter packets 0 bytes 0 drop # handle 2
\t}
}
table bridge filter { # handle 3
\tchain input { # handle 1
\t\ttype filter hook input priority filter; policy drop;
\t}
}
"""


def brief(drops: list[Drop]) -> list[tuple[str, int, str, bool]]:
    return [(d.chain, d.port.port, d.fix, d.conditional) for d in drops]


def test_iptables_explicit_drops_with_the_command_that_deletes_each() -> None:
    assert brief(iptables_drops(LAB_DROP, "iptables", PORTS)) == [
        ("INPUT", 11436, ("sudo iptables -D INPUT -p udp -m udp --dport 11436 -m statistic --mode random "
                         "--probability 0.30000000000 -j DROP"), True),
        ("INPUT", 11436, "sudo iptables -D INPUT -p udp -m udp --dport 11436 -j DROP", False),
        ("INPUT", 11435, ("sudo iptables -D INPUT -p tcp -m multiport --dports 8080,11435 -j REJECT "
                         "--reject-with icmp-port-unreachable"), False),
        ("OUTPUT", 5353, "sudo iptables -D OUTPUT -p udp -m udp --dport 5000:6000 -j DROP", False),
    ]


def test_iptables_policy_drop_without_an_accept_through_jumps() -> None:
    drops = iptables_drops(UFW, "ip6tables", PORTS)
    # Discovery is accepted (from the LAN), mDNS too (ufw's own rule); the proxy port falls to the
    # policy. The catch-all DROP in ufw-not-local is never reached: a return for multicast is first.
    assert [(d.port.port, d.rule, d.fix) for d in drops] == [
        (11435, "-P INPUT DROP", "sudo ip6tables -I INPUT -p tcp --dport 11435 -j ACCEPT"),
    ]


def test_iptables_rules_that_never_apply_to_new_lan_traffic_are_skipped() -> None:
    text = ("-P INPUT ACCEPT\n-A INPUT -i lo -p udp --dport 11436 -j DROP\n"
            "-A INPUT -m state --state ESTABLISHED -p udp --dport 11436 -j DROP\n"
            "-A INPUT -s 127.0.0.0/8 -p tcp --dport 11435 -j DROP\n"
            "-A INPUT -p udp ! --dport 11436 -j DROP\n"
            "-A INPUT -p udp --dport 53 -j DROP\n")
    assert iptables_drops(text, "iptables", PORTS) == [
        Drop("iptables", "INPUT", "in", MDNS, "-A INPUT -p udp ! --dport 11436 -j DROP",
             "sudo iptables -D INPUT -p udp ! --dport 11436 -j DROP"),
    ]
    assert iptables_drops("garbage 'unbalanced\n-A\n", "iptables", PORTS) == []


def test_nft_drops_policies_and_jumps_with_delete_by_handle() -> None:
    assert brief(nft_drops(NFT, PORTS)) == [
        ("inet filter input", 11436, "sudo nft delete rule inet filter input handle 6", False),
        ("inet filter input", 5353, "sudo nft delete rule inet filter more handle 9", False),
        ("ip filter INPUT", 11436, "sudo nft delete rule ip filter INPUT handle 2", False),
    ]
    # With iptables -S read too, its tables (iptables-nft shows them in nft as well) are not repeated.
    assert [d.chain for d in nft_drops(NFT, PORTS, iptables_seen=True)] == ["inet filter input"] * 2
    only_policy = "table inet f {\n chain in {\n  type filter hook input priority 0; policy drop;\n }\n}\n"
    assert [(d.port.port, d.fix) for d in nft_drops(only_policy, (DISCOVERY,))] == [
        (11436, "sudo nft insert rule inet f in udp dport 11436 accept"),
    ]


# --- analysis -------------------------------------------------------------------------------------

OWN = "AAAAAAA" + "A" * 45
SERVER_ID = "UFB5IGJ" + "B" * 45


def peer(**kw: Any) -> PeerFact:
    base = PeerFact(key="n1", hostname="gpu-box", address="10.0.0.5", port=11435, source="multicast",
                    healthy=True, trust="devices", paired=True, device_id=SERVER_ID, node_id="n1")
    return replace(base, **kw)


def facts(**kw: Any) -> Facts:
    node = NodeFact(asked="127.0.0.1:11434", role="client", trust="devices", hostname="laptop", device_id=OWN,
                    node_id="me", peers=(peer(),), interfaces=("eth0",))
    base = Facts(
        hostname="laptop",
        ollama=OllamaFact("http://127.0.0.1:11434", None, None, "an ollana answers there, not an Ollama"),
        ports=(PortFact("127.0.0.1:11434", Holder.OLLANA, "ollana client (trust devices)", "client"),
               PortFact("127.0.0.1:11435", Holder.FREE, "nothing listens")),
        node=node, node_error=None,
        interfaces=(InterfaceFact("lo", True, False, True, ("127.0.0.1/8",)),
                    InterfaceFact("eth0", True, True, False, ("10.0.0.9/24",), ("fe80::1%eth0",))),
        listened_s=3.0,
        heard=(HeardFact("10.0.0.5", "eth0", "heartbeat", "n1", 2, "gpu-box", 11435, "devices", SERVER_ID),),
        firewall=FirewallFact(("iptables", "nft")), saved_peers=(), own_short=OWN[:7],
    )
    return replace(base, **kw)


def problems(f: Facts) -> list[Finding]:
    return [x for x in analyze(f) if x.severity is Severity.PROBLEM]


def test_a_healthy_client_has_no_problem() -> None:
    found = analyze(facts())
    assert healthy(found) and found == []


def test_no_ollana_running_says_start_it() -> None:
    free = tuple(PortFact(f"127.0.0.1:{n}", Holder.FREE, "nothing listens") for n in (11434, 11435))
    (p,) = problems(facts(node=None, node_error="asked 127.0.0.1:11434 and 127.0.0.1:11435", listened_s=0.0,
                          ports=free))
    assert "no ollana runs on this machine" in p.what and p.fix[0].startswith("ollana serve")
    ollama_here = facts(node=None, ports=(PortFact("127.0.0.1:11434", Holder.OLLAMA, "Ollama 0.5.7"),))
    assert "an Ollama runs on this machine, but no ollana shares it" in problems(ollama_here)[0].what
    other_key = PortFact("127.0.0.1:11435", Holder.OLLANA, "ollana in trust mode devices (device UFB5IGJ), ...")
    (p,) = problems(facts(node=None, ports=(other_key,), listened_s=0.0))
    assert "the doctor cannot ask it" in p.what and "--state-dir /var/lib/ollana" in p.fix[0]


def test_firewall_drop_of_discovery_names_the_rule_and_the_fixes() -> None:
    drop = Drop("iptables", "INPUT", "in", DISCOVERY, "-A INPUT -p udp -m udp --dport 11436 -j DROP",
                "sudo iptables -D INPUT -p udp -m udp --dport 11436 -j DROP")
    (p,) = problems(facts(firewall=FirewallFact(("iptables",), None, (drop,))))
    assert p.topic == "firewall" and "`-A INPUT -p udp -m udp --dport 11436 -j DROP`" in p.what
    assert p.fix[0] == "sudo iptables -D INPUT -p udp -m udp --dport 11436 -j DROP"
    assert "ollana peer add 10.0.0.5:11435" in p.fix[1]  # the server it knows, by address


def test_incoming_proxy_port_drop_matters_only_on_a_server() -> None:
    drop = Drop("nft", "inet filter input", "in", PROXY, "tcp dport 11435 drop", "sudo nft delete rule ...")
    on_client = analyze(facts(firewall=FirewallFact(("nft",), None, (drop,))))
    assert healthy(on_client) and "only if this machine becomes a server" in on_client[0].what
    server = replace(facts().node, role="server", peers=(), upstream_url="http://127.0.0.1:11434",
                     upstream_healthy=True)
    assert not healthy(analyze(facts(node=server, firewall=FirewallFact(("nft",), None, (drop,)))))


def test_unreadable_firewall_is_a_note_with_sudo() -> None:
    (n,) = analyze(facts(firewall=FirewallFact((), "iptables: Permission denied (you must be root)")))
    assert n.severity is Severity.NOTE and n.fix == ("run it as root to check them: `sudo ollana doctor`",)


def test_unpaired_server_gives_both_allow_commands() -> None:
    (p,) = problems(facts(node=replace(facts().node, peers=(peer(paired=False),))))
    assert "gpu-box (10.0.0.5:11435, multicast) is not paired" in p.what
    assert p.fix == ("here: ollana device allow UFB5IGJ", "on gpu-box: ollana device allow AAAAAAA")


def test_unhealthy_server_and_no_server() -> None:
    (p,) = problems(facts(node=replace(facts().node, peers=(peer(healthy=False, source="saved"),))))
    assert "does not answer its health checks" in p.what and "curl -skm3 https://10.0.0.5:11435" in p.fix[0]
    lonely = facts(node=replace(facts().node, peers=()), heard=())
    (p,) = problems(lonely)
    assert p.what == "this client knows no server, and no heartbeat or mDNS answer arrived in 3 s of listening"
    assert p.fix[-1].startswith("ollana peer add SERVER-ADDRESS")


def test_heard_but_not_listed_trust_mismatch_and_other_interfaces() -> None:
    node = replace(facts().node, peers=(peer(key="other", node_id="other"),))
    (p,) = problems(facts(node=node))
    assert "heard gpu-box at 10.0.0.5:11435, but the running node does not list it" in p.what
    assert p.fix == ("ollana peer add 10.0.0.5:11435",)
    open_server = HeardFact("10.0.0.6", "eth0", "heartbeat", "n2", 1, "old-box", 11435, "open")
    found = problems(facts(heard=(*facts().heard, open_server)))
    assert len(found) == 1 and "in trust mode open; this node runs trust mode devices" in found[0].what
    assert "on old-box: restart ollana without --trust open" in found[0].fix[0]
    own = HeardFact("10.0.0.9", "eth0", "heartbeat", "me", 1, "laptop", 11435, "devices", this_machine=True)
    assert healthy(analyze(facts(heard=(*facts().heard, own))))


def test_client_that_should_be_a_server_and_a_server_without_ollama() -> None:
    f = facts(ollama=OllamaFact("http://127.0.0.1:11433", "127.0.0.1:11433", "0.5.7"))
    (p,) = problems(f)
    assert "ollana runs as a client and does not share it" in p.what and "systemctl restart ollana" in p.fix[0]
    server = replace(facts().node, role="server", peers=(), upstream_url="http://127.0.0.1:11434",
                     upstream_healthy=False, upstream_error="connection refused")
    (p,) = problems(facts(node=server))
    assert "this server's Ollama at http://127.0.0.1:11434 does not answer (connection refused)" in p.what


def test_ollama_host_pointing_nowhere_and_a_foreign_port_holder() -> None:
    f = facts(ollama=OllamaFact("http://127.0.0.1:11433", "127.0.0.1:11433", None, "refused"),
              ports=(PortFact("127.0.0.1:11434", Holder.OLLAMA, "Ollama 0.5.7"),
                     PortFact("127.0.0.1:11435", Holder.OTHER, "answers 404 to /api/version")))
    whats = [p.what for p in problems(f)]
    assert any(w.startswith("OLLAMA_HOST=127.0.0.1:11433 points at http://127.0.0.1:11433") for w in whats)
    assert any(w.startswith("127.0.0.1:11435 is held by a program that is neither") for w in whats)


def test_interfaces_without_discovery() -> None:
    f = facts(interfaces=(InterfaceFact("eth0", True, False, False, ("10.0.0.9/24",)),), listened_s=0.0)
    found = analyze(f)
    assert any(x.severity is Severity.PROBLEM and x.topic == "interfaces" for x in found)
    assert any(x.fix == ("sudo ip link set eth0 multicast on",) for x in found)


def test_saved_peer_not_in_use() -> None:
    f = facts(saved_peers=("10.0.0.5:11435", "10.78.0.2:11435"))
    (p,) = problems(f)
    assert p.what.startswith("saved peer 10.78.0.2:11435 is not in the running node's list")


def test_render_and_json_document() -> None:
    f = facts(node=replace(facts().node, peers=(peer(paired=False),)))
    found = analyze(f)
    text = render(f, found)
    assert "1 problem(s) found" in text and "fix: here: ollana device allow UFB5IGJ" in text
    assert "eth0: up, multicast, IPv6; 10.0.0.9/24 fe80::1%eth0; heard 1 server(s) in 3 s: gpu-box" in text
    doc = json.loads(json.dumps(f.document()))
    assert doc["ports"][0]["holder"] == "ollana" and doc["node"]["peers"][0]["paired"] is False


def test_ipv6_sources_are_written_as_addresses_to_type() -> None:
    v6 = HeardFact("fe80::5%eth0", "eth0", "heartbeat", "n9", 1, "box9", 11435, "devices", SERVER_ID)
    node = replace(facts().node, peers=(peer(key="other", node_id="other"),))
    found = problems(facts(node=node, heard=(v6,)))
    assert found[0].fix == ("ollana peer add [fe80::5%eth0]:11435",)
    # For the firewall's alternative, a stable address (here the node's IPv4 one) beats a link-local one.
    drop = Drop("iptables", "INPUT", "in", DISCOVERY, "-A INPUT -p udp --dport 11436 -j DROP", "x")
    found = problems(facts(heard=(v6,), firewall=FirewallFact(("iptables",), None, (drop,))))
    (fw,) = [f for f in found if f.topic == "firewall"]
    assert fw.fix[1].endswith("ollana peer add 10.0.0.5:11435")


def test_mdns_answers_against_heartbeats() -> None:
    from ollana.doctor.facts import MdnsFact

    # Heard both ways, listed: nothing to say.
    both = MdnsFact("gpu-box (ABCDEFG)._ollana._tcp.local.", "10.0.0.5", 11435, "n1", "gpu-box", "devices")
    assert analyze(facts(mdns=(both,))) == []
    # mDNS only (heartbeats dropped somewhere), listed: a note that says why, healthy.
    found = analyze(facts(heard=(), mdns=(both,)))
    assert healthy(found) and len(found) == 1
    assert "found gpu-box at 10.0.0.5:11435 by mDNS only" in found[0].what and "UDP 11436" in found[0].what
    # mDNS only and not listed by the node: a problem with the line to type.
    other = MdnsFact("b._ollana._tcp.local.", "10.0.0.7", 11435, "n7", "box-b", "devices")
    (p,) = problems(facts(heard=(), mdns=(both, other)))
    assert "box-b at 10.0.0.7:11435 answers mDNS, but the running node does not list it" in p.what
    assert p.fix == ("ollana peer add 10.0.0.7:11435",)
    # A record clients cannot use.
    (p,) = problems(facts(mdns=(MdnsFact("x._ollana._tcp.local.", error="not a valid ollana record: v"),)))
    assert "x._ollana._tcp.local. answered mDNS but not a valid ollana record" in p.what
    # Nothing at all: the no-server message says mDNS was asked too.
    lonely = facts(node=replace(facts().node, peers=()), heard=(), mdns=())
    assert "no heartbeat or mDNS answer arrived" in problems(lonely)[0].what
