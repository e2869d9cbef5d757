"""Which firewall rules drop ollana's traffic, read from ``iptables -S`` and ``nft -a list ruleset``.

Pure: text in, findings out. Each port ollana needs is walked through the input and output chains
the way a new packet from the LAN would go (jumps followed, first verdict wins, then the chain's
policy). Conditions that cannot be judged from the rule alone (a source address, an interface, a
random match) make a drop *conditional*: it is reported, and the walk goes on. An accept or a
return with such conditions is taken to be the one written for the LAN's traffic. Rules for loopback or for established
connections only never apply to a new heartbeat or connection and are skipped.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from typing import Final

ACCEPT: Final = "ACCEPT"
DROP: Final = "DROP"
_DROPS: Final = frozenset({"DROP", "REJECT"})
_MAX_DEPTH: Final = 8
# iptables options that say nothing about which LAN packets match.
_NEUTRAL: Final = frozenset({"-m", "--comment", "--reject-with", "--log-prefix", "--log-level", "-c"})
_IPTABLES_TABLES: Final = frozenset({"filter", "mangle", "raw", "security", "nat"})


@dataclass(frozen=True, slots=True)
class Port:
    proto: str  # "udp" or "tcp"
    port: int
    what: str  # what ollana uses it for


@dataclass(frozen=True, slots=True)
class Drop:
    tool: str  # iptables, ip6tables or nft
    chain: str  # as the tool names it: "INPUT", "inet filter input"
    direction: str  # "in" or "out"
    port: Port
    rule: str  # as the tool prints it (or its policy)
    fix: str  # the command that removes the drop
    conditional: bool = False  # it drops only some packets (a source, an interface, at random)


def ports(discovery_port: int = 11436, proxy_port: int = 11435) -> tuple[Port, ...]:
    return (
        Port("udp", discovery_port, "discovery (heartbeats and probes)"),
        Port("udp", 5353, "mDNS"),
        Port("tcp", proxy_port, "the server proxy"),
    )


# --- one rule, whatever the tool: does it apply to a new packet to this port? ----------------------


@dataclass(slots=True)
class _Rule:
    text: str
    protos: set[str] | None = None  # None: any protocol
    dports: list[tuple[int, int]] | None = None  # None: any port
    negate_port: bool = False
    skip: bool = False  # never applies to new traffic from the LAN
    conditional: bool = False
    verdict: str = ""  # ACCEPT, DROP, REJECT, RETURN, a chain name, or "" (no verdict)
    goto: bool = False
    handle: str | None = None


def _matches(rule: _Rule, port: Port) -> bool:
    if rule.skip:
        return False
    if rule.protos is not None and port.proto not in rule.protos:
        return False
    if rule.dports is None:
        return True
    inside = any(lo <= port.port <= hi for lo, hi in rule.dports)
    return inside != rule.negate_port


def _port_ranges(text: str, range_sep: str) -> list[tuple[int, int]] | None:
    out = []
    for part in text.strip("{} ").split(","):
        part = part.strip()
        if not part:
            continue
        lo, _, hi = part.partition(range_sep)
        if not lo.isdigit() or (hi and not hi.isdigit()):
            return None  # a named port or set: cannot tell
        out.append((int(lo), int(hi or lo)))
    return out


# --- the walk ----------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Chains:
    rules: dict[str, list[_Rule]] = field(default_factory=dict)
    drops: list[tuple[_Rule, bool]] = field(default_factory=list)  # (rule, conditional)

    def walk(self, chain: str, port: Port, depth: int = 0) -> str | None:
        """The verdict for a new packet to ``port``; None when the chain returns without one."""
        if depth > _MAX_DEPTH:
            return None
        for rule in self.rules.get(chain, []):
            if not _matches(rule, port):
                continue
            if rule.verdict == ACCEPT:
                return ACCEPT
            if rule.verdict in _DROPS:
                self.drops.append((rule, rule.conditional))
                if not rule.conditional:
                    return DROP
            elif rule.verdict == "RETURN":
                return None  # with conditions too: like an accept, taken to be meant for such packets
            elif rule.verdict in self.rules:
                verdict = self.walk(rule.verdict, port, depth + 1)
                if verdict is not None or rule.goto:
                    return verdict
        return None


# --- iptables -S -------------------------------------------------------------------------------------


def _iptables_rule(tokens: list[str], text: str) -> _Rule:
    rule = _Rule(text)
    negate = False
    i = 1
    while i < len(tokens):
        tok = tokens[i]
        arg = tokens[i + 1] if i + 1 < len(tokens) else ""
        if tok == "!":
            negate = True
            i += 1
            continue
        if tok in ("-p", "--protocol"):
            rule.protos = None if negate or arg == "all" else {arg.lower()}
            rule.conditional = rule.conditional or negate
        elif tok in ("--dport", "--dports", "--destination-port", "--destination-ports"):
            rule.dports = _port_ranges(arg, ":")
            rule.negate_port = negate
            if rule.dports is None:
                rule.conditional = True
        elif tok in ("--ctstate", "--state"):
            states = set(arg.upper().split(","))
            if not negate and "NEW" not in states:
                rule.skip = True
        elif tok in ("-i", "--in-interface", "-o", "--out-interface"):
            if arg == "lo" and not negate:
                rule.skip = True
            else:
                rule.conditional = True
        elif tok in ("-s", "--source") and not negate and arg.startswith("127."):
            rule.skip = True
        elif tok in ("-j", "--jump", "-g", "--goto"):
            rule.verdict, rule.goto = arg, tok in ("-g", "--goto")
        elif tok.startswith("-") and tok not in _NEUTRAL:
            rule.conditional = True  # a source, a destination, a random or rate match...
        negate = False
        takes_arg = bool(arg) and arg != "!" and not (arg.startswith("-") and not arg[1:2].isdigit())
        i += 2 if takes_arg else 1
    return rule


def iptables_drops(text: str, tool: str, want: tuple[Port, ...]) -> list[Drop]:
    """Drops of ``want`` in the output of ``iptables -S`` (or ``ip6tables -S``): the filter table."""
    chains = _Chains()
    policies: dict[str, str] = {}
    for line in text.splitlines():
        try:
            tokens = shlex.split(line)
        except ValueError:
            continue
        if len(tokens) >= 3 and tokens[0] == "-P":
            policies[tokens[1]] = tokens[2]
        elif len(tokens) >= 2 and tokens[0] == "-N":
            chains.rules.setdefault(tokens[1], [])
        elif len(tokens) >= 2 and tokens[0] == "-A":
            chains.rules.setdefault(tokens[1], []).append(_iptables_rule(tokens[1:], line.strip()))
    out: list[Drop] = []
    for chain, direction in (("INPUT", "in"), ("OUTPUT", "out")):
        for port in want:
            chains.drops.clear()
            verdict = chains.walk(chain, port)
            for rule, conditional in chains.drops:
                spec = rule.text.split(None, 1)[1]  # "INPUT -p udp ..." from "-A INPUT -p udp ..."
                out.append(Drop(tool, chain, direction, port, rule.text, f"sudo {tool} -D {spec}", conditional))
            if verdict is None and policies.get(chain) == DROP:
                accept = f"sudo {tool} -I {chain} -p {port.proto} --dport {port.port} -j ACCEPT"
                out.append(Drop(tool, chain, direction, port, f"-P {chain} DROP", accept))
    return out


# --- nft -a list ruleset ---------------------------------------------------------------------------

_HANDLE: Final = re.compile(r"#\s*handle\s+(\d+)\s*$")
_COMMENT: Final = re.compile(r'comment\s+"[^"]*"')
_VERDICTS: Final = {"accept": ACCEPT, "drop": DROP, "reject": "REJECT", "return": "RETURN"}


def _nft_rule(line: str) -> _Rule:
    m = _HANDLE.search(line)
    body = _COMMENT.sub("", line[: m.start()] if m else line).strip()
    rule = _Rule(body, handle=m.group(1) if m else None)
    body = re.sub(r"\{\s*([^}]*)\}", lambda g: "{" + g.group(1).replace(" ", "") + "}", body)
    tokens = body.split()
    for i, tok in enumerate(tokens):
        nxt = tokens[i + 1] if i + 1 < len(tokens) else ""
        if tok == "dport" and i > 0:
            if tokens[i - 1] in ("udp", "tcp"):
                rule.protos = {tokens[i - 1]}
            value = nxt
            if value == "!=":
                rule.negate_port = True
                value = tokens[i + 2] if i + 2 < len(tokens) else ""
            rule.dports = _port_ranges(value, "-")
            if rule.dports is None:
                rule.conditional = True
        elif tok in ("l4proto", "protocol", "nexthdr") and nxt and nxt != "!=":
            rule.protos = set(nxt.strip("{}").split(","))
        elif tok == "state" and i > 0 and tokens[i - 1] == "ct" and "new" not in nxt and nxt != "!=":
            rule.skip = True
        elif tok in ("iif", "iifname", "oif", "oifname"):
            if nxt.strip('"') == "lo":
                rule.skip = True
            else:
                rule.conditional = True
        elif tok in ("saddr", "daddr", "numgen", "limit", "pkttype", "fib", "meter") or tok.startswith("@"):
            rule.conditional = True
        elif tok in _VERDICTS:
            rule.verdict = _VERDICTS[tok]
        elif tok in ("jump", "goto"):
            rule.verdict, rule.goto = nxt, tok == "goto"
    return rule


def nft_drops(text: str, want: tuple[Port, ...], *, iptables_seen: bool = False) -> list[Drop]:
    """Drops of ``want`` in the output of ``nft -a list ruleset``. ``iptables_seen``: the iptables
    tables were read with ``iptables -S`` already (iptables-nft shows them here too): skip them."""
    out: list[Drop] = []
    tables: dict[tuple[str, str], _Chains] = {}
    hooks: list[tuple[str, str, str, str, str]] = []  # (family, table, chain, hook, policy)
    depth = 0
    family = table = chain = ""
    for raw in text.splitlines():
        line = raw.strip()
        opens, closes = line.count("{"), line.count("}")
        words = line.split()
        if depth == 0 and words[:1] == ["table"] and len(words) >= 3:
            family, table = words[1], words[2]
            tables[(family, table)] = _Chains()
        elif depth == 1 and words[:1] == ["chain"] and len(words) >= 2:
            chain = words[1]
            tables[(family, table)].rules[chain] = []
        elif depth == 2 and chain and line and not line.startswith("}"):
            if words[:1] == ["type"]:
                hook = words[words.index("hook") + 1] if "hook" in words else ""
                found = re.search(r"policy\s+(\w+)", line)
                hooks.append((family, table, chain, hook, found.group(1) if found else "accept"))
            elif opens == closes and not line.startswith("policy"):
                tables[(family, table)].rules[chain].append(_nft_rule(line))
        depth += opens - closes
        if depth <= 1:
            chain = ""
    for family, table, chain, hook, policy in hooks:
        if hook not in ("input", "output") or family not in ("ip", "ip6", "inet"):
            continue
        if iptables_seen and family in ("ip", "ip6") and table in _IPTABLES_TABLES:
            continue
        chains = tables[(family, table)]
        name = f"{family} {table} {chain}"
        for port in want:
            chains.drops.clear()
            verdict = chains.walk(chain, port)
            for rule, conditional in chains.drops:
                fix = (f"sudo nft delete rule {family} {table} {_owner(chains, rule)} handle {rule.handle}"
                       if rule.handle else f"remove `{rule.text}` from chain {name}")
                out.append(Drop("nft", name, "in" if hook == "input" else "out", port, rule.text, fix, conditional))
            if verdict is None and policy == "drop":
                fix = f"sudo nft insert rule {family} {table} {chain} {port.proto} dport {port.port} accept"
                out.append(Drop("nft", name, "in" if hook == "input" else "out", port, "policy drop", fix))
    return out


def _owner(chains: _Chains, rule: _Rule) -> str:
    return next(name for name, rules in chains.rules.items() if any(r is rule for r in rules))
