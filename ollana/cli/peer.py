"""``ollana peer``: servers saved by address (``peers.json``), for where multicast does not pass."""

from __future__ import annotations

import http.client
import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import click

from ollana.cli import nodeops
from ollana.config import OLLAMA_DEFAULT_PORT, Endpoint
from ollana.discovery import saved
from ollana.discovery.saved import SavedPeer, SavedPeersError
from ollana.service.control import fetch_status
from ollana.trust.document import iso_time


class PeerCommandError(click.ClickException):
    """One line, exit 2, like every other configuration or usage problem."""

    exit_code = 2


_STATE_DIR = click.option(
    "--state-dir", type=click.Path(file_okay=False, path_type=Path), envvar="OLLANA_HOME",
    help="Where ollana keeps its state [env: OLLANA_HOME].",
)


def _address(_ctx: click.Context, _param: click.Parameter, value: str) -> Endpoint:
    try:
        return saved.parse_peer(value)
    except SavedPeersError as exc:
        raise PeerCommandError(str(exc)) from None


@click.group()
def peer() -> None:
    """Servers saved by address, used besides the discovered ones and kept across restarts.

    For servers multicast does not reach: another subnet or VLAN, a VPN, Wi-Fi with client
    isolation. A running `ollana serve` picks a change up within 2 s (at once on SIGHUP).
    """


@peer.command()
@click.argument("address", metavar="HOST[:PORT]", callback=_address)
@_STATE_DIR
def add(address: Endpoint, state_dir: Path | None) -> None:
    """Save a server (port 11435 unless given)."""
    added = nodeops.perform("peer.add", {"host": address.host, "port": address.port}, state_dir)["added"]
    if added:
        click.echo(f"Saved {address}; a running ollana uses it within 2 s.")
    else:
        click.echo(f"{address} is saved already.")


@peer.command()
@click.argument("address", metavar="HOST[:PORT]", callback=_address)
@_STATE_DIR
def remove(address: Endpoint, state_dir: Path | None) -> None:
    """Forget a saved server (a running ollana stops using it within 2 s)."""
    nodeops.perform("peer.remove", {"host": address.host, "port": address.port}, state_dir)
    click.echo(f"Removed {address}.")


@peer.command("list")
@_STATE_DIR
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option("--node", metavar="HOST:PORT",
              help="The local client to ask how each saved server is doing [default: the running node's "
                   f"listener, else 127.0.0.1:{OLLAMA_DEFAULT_PORT}].")
def list_(state_dir: Path | None, as_json: bool, node: str | None) -> None:
    """The saved servers, and how the running client sees each (when one runs)."""
    peers = [SavedPeer(Endpoint(p["host"], p["port"]), p["added_at"])
             for p in nodeops.perform("peer.list", {}, state_dir)]
    seen = _seen_by_node(node or nodeops.client_listener(state_dir))
    if as_json:
        click.echo(json.dumps([_json(p, seen) for p in peers], indent=2))
        return
    click.echo(render(peers, seen))


def _seen_by_node(node: str) -> dict[str, Mapping[str, Any]] | None:
    """The running client's peers by address; None when no client answers at ``node``."""
    host, _, port = node.rpartition(":")
    try:
        status = fetch_status(Endpoint(host.strip("[]") or "127.0.0.1", int(port)))
    except (OSError, ValueError, http.client.HTTPException):
        return None
    listed = status.get("peers")
    if not isinstance(listed, list):
        return None
    return {str(Endpoint(str(p.get("address")), int(p.get("port", 0)))): p for p in listed if isinstance(p, dict)}


def _state(p: SavedPeer, seen: Mapping[str, Mapping[str, Any]] | None) -> str:
    if seen is None:
        return "-"
    entry = seen.get(str(p.endpoint))
    if entry is None:
        return "not used yet"
    if entry.get("trust") == "devices" and not entry.get("paired"):
        return "not paired"
    return "healthy" if entry.get("healthy") else "down"


def _json(p: SavedPeer, seen: Mapping[str, Mapping[str, Any]] | None) -> dict[str, Any]:
    return {
        "host": p.endpoint.host,
        "port": p.endpoint.port,
        "address": str(p.endpoint),
        "added_at": iso_time(p.added_at),
        "state": None if seen is None else _state(p, seen),
    }


def render(peers: Sequence[SavedPeer], seen: Mapping[str, Mapping[str, Any]] | None) -> str:
    """The table ``ollana peer list`` prints. Pure."""
    if not peers:
        return "No saved peers. Save a server multicast does not reach: `ollana peer add HOST[:PORT]`."
    header = ("ADDRESS", "ADDED", "STATE")
    rows = [header, *((str(p.endpoint), _when(p.added_at), _state(p, seen)) for p in peers)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    if seen is None:
        lines.append("(no ollana client answers on this machine: STATE unknown)")
    return "\n".join(lines)


def _when(ts: float | None) -> str:
    if ts is None:
        return "-"
    return datetime.fromtimestamp(ts).astimezone().strftime("%Y-%m-%d %H:%M:%S")
