"""``ollana peers``: the servers the local node knows, as a table or JSON."""

from __future__ import annotations

import http.client
import json
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import click

from ollana.cli import nodeops
from ollana.config import OLLAMA_DEFAULT_PORT, Endpoint, parse_endpoint
from ollana.errors import ConfigError, print_error
from ollana.service.control import fetch_status

_COLUMNS = ("SERVER", "ADDRESS", "FOUND BY", "TRUST", "HEALTH", "RTT", "BUSY", "MODELS", "LOADED")


def _endpoint(_ctx: click.Context, _param: click.Parameter, value: str | None) -> Endpoint:
    if value is None:  # the running node's client listener (its runtime record), else 127.0.0.1:11434
        value = nodeops.client_listener()
    try:
        return parse_endpoint(value, default_host="127.0.0.1", default_port=OLLAMA_DEFAULT_PORT)
    except ConfigError as exc:
        raise click.BadParameter(str(exc)) from None


@click.command()
@click.option("--node", callback=_endpoint, metavar="HOST:PORT",
              help="The local client (or role both) node to ask [default: the running node's listener, "
                   f"found by its runtime record, else 127.0.0.1:{OLLAMA_DEFAULT_PORT}].")
@click.option("--json", "as_json", is_flag=True, help="Print the node's peer list as JSON.")
def peers(node: Endpoint, as_json: bool) -> None:
    """The servers this machine's ollana knows: address, trust, health, RTT, requests in flight
    and parallel slots, models and loaded models.

    Exit 0 with the table, 1 when no ollana client answers at --node.
    """
    try:
        status = fetch_status(node)
    except (OSError, ValueError, http.client.HTTPException) as exc:
        print_error(f"no ollana client answers at {node} ({exc or type(exc).__name__}); "
                    "is `ollana serve` running on this machine as a client (or --mode both)?")
        sys.exit(1)
    listed = status.get("peers")
    if not isinstance(listed, list):
        role = status.get("role", "?")
        print_error(f"the ollana at {node} is a {role}: it routes to no other servers "
                    "(ask a client, or use `ollana status`)")
        sys.exit(1)
    if as_json:
        json.dump(listed, sys.stdout, indent=2)
        print()
        return
    print(render(listed))


def render(peers: Sequence[Mapping[str, Any]]) -> str:
    """The table ``ollana peers`` prints. Pure."""
    if not peers:
        return "no servers known yet (discovery finds them within a few seconds; see `ollana status`)"
    rows = [_COLUMNS, *(_row(p) for p in peers)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(_COLUMNS))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in rows)


def _row(p: Mapping[str, Any]) -> tuple[str, ...]:
    address = p.get("address", "?")
    host = f"[{address}]" if ":" in str(address) else str(address)
    trust = "open" if p.get("trust") == "open" else ("paired" if p.get("paired") else "not paired")
    if p.get("source") == "local":
        trust = "this machine"
    rtt = p.get("rtt_ms")
    slots = p.get("slots")
    busy = f"{p.get('inflight', 0)}/{slots}" if slots else "-"
    models, loaded = p.get("models") or [], p.get("loaded") or []
    return (
        str(p.get("hostname") or p.get("id", "?")[:12]),
        str(p.get("endpoint") or f"{host}:{p.get('port', '?')}"),
        ",".join(p.get("sources") or [str(p.get("source", "?"))]),
        trust,
        "healthy" if p.get("healthy") else "down",
        f"{rtt:.1f} ms" if isinstance(rtt, (int, float)) else "-",
        busy,
        _names(models) if p.get("catalog") is not None else "?",
        _names(loaded) if p.get("catalog") is not None else "?",
    )


def _names(names: Sequence[str], limit: int = 3) -> str:
    if not names:
        return "-"
    shown = ", ".join(str(n) for n in names[:limit])
    return shown + (f" +{len(names) - limit}" if len(names) > limit else "")
