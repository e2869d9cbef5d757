"""``ollana doctor``: why this node sees what it sees, and the fix for every problem found."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import click

from ollana.cli import nodeops
from ollana.config import (
    DISCOVERY_DEFAULT_GROUP,
    DISCOVERY_DEFAULT_GROUP6,
    DISCOVERY_DEFAULT_PORT,
    OLLAMA_DEFAULT_PORT,
    PROXY_DEFAULT_PORT,
    Endpoint,
    default_state_dir,
    parse_endpoint,
    parse_ollama_host,
)
from ollana.doctor.analyze import Finding, Severity, analyze, healthy
from ollana.doctor.facts import Facts, Holder
from ollana.errors import ConfigError

_MARK = {Severity.PROBLEM: "✗", Severity.NOTE: "•"}


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print the facts and findings as JSON.")
@click.option("--listen-seconds", type=click.FloatRange(0, 60), default=3.0, show_default=True, metavar="SECONDS",
              help="How long to listen for discovery heartbeats and mDNS answers (0: do not listen).")
@click.option("--probe", is_flag=True,
              help="Also send one discovery probe, so servers answer at once (only on a LAN you own).")
@click.option("--ollama", "ollama", metavar="URL",
              help="The local Ollama to check. Default: from OLLAMA_HOST, else http://127.0.0.1:11434.")
@click.option("--discovery-port", type=click.IntRange(1, 65535), default=DISCOVERY_DEFAULT_PORT, show_default=True)
@click.option("--multicast-group", default=DISCOVERY_DEFAULT_GROUP, show_default=True, metavar="IPV4")
@click.option("--multicast-group6", default=DISCOVERY_DEFAULT_GROUP6, show_default=True, metavar="IPV6")
@click.option("--state-dir", type=click.Path(file_okay=False, path_type=Path), envvar="OLLANA_HOME",
              help="The state dir of the ollana to check [env: OLLANA_HOME].")
def doctor(as_json: bool, listen_seconds: float, probe: bool, ollama: str | None, discovery_port: int,
           multicast_group: str, multicast_group6: str, state_dir: Path | None) -> None:
    """Explain why this machine's ollana sees what it sees: the local Ollama, who holds ports
    11434 and 11435, each interface and the heartbeats heard on it, firewall rules that drop
    ollana's traffic (as root), and each server's trust and pairing; for every problem, the fix.

    Exit 0 when it found no problem, 1 when it found one.
    """
    from ollana.doctor.collect import (  # netifaces and sockets: only for this command
        Options,
        collect,
    )

    env_host = os.environ.get("OLLAMA_HOST")
    try:
        url = parse_ollama_host(ollama or env_host)
    except ConfigError as exc:
        raise click.BadParameter(str(exc), param_hint="'--ollama' / OLLAMA_HOST") from None
    # The running node (its runtime record) says where its state and listeners are.
    node = nodeops.locate(state_dir)
    client, server = _listeners(node.role, node.listen) if node is not None else (None, None)
    opts = Options(
        state_dir=state_dir or (Path(node.state_dir) if node is not None
                                else default_state_dir(os.environ, is_root=os.geteuid() == 0)),
        ollama_url=url, ollama_host=env_host if not ollama else None,
        client=client or Endpoint("127.0.0.1", OLLAMA_DEFAULT_PORT),
        server=server or Endpoint("127.0.0.1", PROXY_DEFAULT_PORT),
        listen_seconds=listen_seconds, probe=probe, discovery_port=discovery_port, group=multicast_group,
        group6=multicast_group6,
    )
    if not as_json and listen_seconds > 0:
        click.echo(f"listening {listen_seconds:g} s for discovery heartbeats and mDNS answers...", err=True)
    facts = collect(opts)
    findings = analyze(facts)
    if as_json:
        doc = {"healthy": healthy(findings), "findings": [f.document() for f in findings], "facts": facts.document()}
        click.echo(json.dumps(doc, indent=2))
    else:
        click.echo(render(facts, findings))
    sys.exit(0 if healthy(findings) else 1)


def _listeners(role: str, listen: Sequence[str]) -> tuple[Endpoint | None, Endpoint | None]:
    """(client listener, server listener) of a running node, from its record's addresses. Pure."""
    try:
        found = [parse_endpoint(a) for a in listen]
    except ConfigError:
        return None, None
    found = [Endpoint({"0.0.0.0": "127.0.0.1", "::": "::1"}.get(e.host, e.host), e.port) for e in found]
    if role == "client" and found:
        return found[0], None
    if role == "server" and found:
        return None, found[0]
    if role == "both" and len(found) >= 2:
        return found[0], found[1]
    return None, None


def render(facts: Facts, findings: list[Finding]) -> str:
    """What a person reads on a terminal. Pure."""
    lines = [f"ollana doctor on {facts.hostname}", ""]
    o = facts.ollama
    host = f"OLLAMA_HOST={o.ollama_host}" if o.ollama_host else "OLLAMA_HOST unset"
    state = f"Ollama {o.version}" if o.version else f"no Ollama ({o.error})"
    lines.append(_row("ollama", f"{o.url} ({host}): {state}"))
    for port in facts.ports:
        held = port.holder.value if port.holder is Holder.FREE else port.detail
        lines.append(_row("port", f"{port.address:<16} {held}"))
    node = facts.node
    if node is not None:
        device = f", device {node.device_id[:7]}" if node.device_id else ""
        lines.append(_row("node", f"{node.role}, trust {node.trust}{device} (asked at {node.asked})"))
    for i in facts.interfaces:
        if i.loopback:
            continue
        flags = ", ".join(x for x, on in (("up", i.up), ("multicast", i.multicast), ("IPv6", bool(i.ipv6))) if on)
        heard = [h for h in facts.heard if h.interface == i.name and h.kind == "heartbeat" and not h.this_machine]
        said = ""
        if facts.listened_s > 0 and i.carries_discovery:
            names = ", ".join(f"{h.hostname or h.source} ({h.source})" for h in heard)
            said = f"; heard {len(heard)} server(s) in {facts.listened_s:g} s" + (f": {names}" if names else "")
        lines.append(_row("interface", f"{i.name}: {flags or 'down'}; {' '.join(i.ipv4 + i.ipv6) or 'no address'}{said}"))
    fw = facts.firewall
    lines.append(_row("firewall", f"read with {', '.join(fw.read)}: {len(fw.drops)} rule(s) drop ollana's traffic"
                      if fw.read else f"not read ({fw.unreadable or 'no iptables or nft'})"))
    if node is not None:
        for p in node.peers:
            trust = "this machine" if p.source == "local" else (
                "open" if p.paired is None else "paired" if p.paired else "not paired")
            lines.append(_row("server", f"{p.name:<20} {p.endpoint:<22} {p.source:<9} {trust:<12} "
                                        f"{'healthy' if p.healthy else 'down'}"))
    for m in facts.mdns:
        found = f"{m.hostname} at {m.address}:{m.port}, trust {m.trust}" if m.error is None else m.error
        lines.append(_row("mdns", f"{m.name}: {found}"))
    for s in facts.saved_peers:
        lines.append(_row("saved", s))
    lines.append("")
    problems = [f for f in findings if f.severity is Severity.PROBLEM]
    lines.append(f"{len(problems)} problem(s) found" if problems else "no problem found")
    for f in findings:
        lines.append(f"{_MARK[f.severity]} {f.what}")
        for n, fix in enumerate(f.fix):
            lines.append(f"    {'fix: ' if n == 0 else '     '}{fix}")
    return "\n".join(lines)


def _row(label: str, text: str) -> str:
    return f"{label:<10} {text}"
