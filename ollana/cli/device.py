"""`ollana device`: this node's identity, the allowed devices, and pairing (pending + allow)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import click

from ollana import log as logconf
from ollana.cli import nodeops
from ollana.config import LogFormat, default_state_dir
from ollana.errors import OllanaError
from ollana.trust import identity
from ollana.trust.document import iso_time, sanitize_label
from ollana.trust.identity import grouped, short

F = TypeVar("F", bound=Callable[..., Any])


class DeviceCommandError(click.ClickException):
    """One line, exit 2, like every other configuration or usage problem."""

    exit_code = 2


def _state_dir_option(f: F) -> F:
    return click.option(
        "--state-dir",
        type=click.Path(file_okay=False, path_type=Path),
        envvar="OLLANA_HOME",
        help="Where ollana keeps its state [env: OLLANA_HOME].",
    )(f)


def _json_option(f: F) -> F:
    return click.option("--json", "as_json", is_flag=True, help="Print JSON.")(f)


def _state_dir(value: Path | None) -> Path:
    return value or default_state_dir(os.environ, is_root=os.geteuid() == 0)


def _setup_logging() -> None:
    # Log lines (identity_created, identity_reset) go to stderr so --json output stays clean.
    try:
        spec = logconf.parse_directives(os.environ.get("OLLANA_LOG"))
    except OllanaError as exc:
        raise click.UsageError(str(exc)) from None
    logconf.configure(spec, LogFormat.AUTO)


@contextmanager
def _reported() -> Iterator[None]:
    try:
        yield
    except OllanaError as exc:
        raise DeviceCommandError(str(exc)) from None


@click.group()
def device() -> None:
    """This device's identity, and which devices may talk to it.

    Pairing two machines: run `ollana serve` on both, then on each one
    `ollana device pending` and `ollana device allow ID` (a 7-character prefix is enough).
    """
    _setup_logging()


@device.command()
@_state_dir_option
@_json_option
def show(state_dir: Path | None, as_json: bool) -> None:
    """This device's ID (created on first use)."""
    me = nodeops.perform("device.show", {}, state_dir)
    if as_json:
        _print_json(me)
        return
    click.echo(f"Device ID: {me['grouped']}")
    click.echo(f"Short ID:  {me['short']}")
    click.echo(
        f"To pair, on the other machine run `ollana device pending`, then "
        f"`ollana device allow {me['short']}`."
    )


@device.command("list")
@_state_dir_option
@_json_option
def list_(state_dir: Path | None, as_json: bool) -> None:
    """Allowed devices: name, ID, enabled, last seen (last request from it, or last answer from
    it for a server this client uses)."""
    devices = nodeops.perform("device.list", {}, state_dir)
    if as_json:
        _print_json([_allowed_json(d) for d in devices])
        return
    if not devices:
        click.echo(
            "No allowed devices. Pair one: `ollana device pending`, then `ollana device allow ID`."
        )
        return
    _table(
        ["NAME", "ID", "ENABLED", "LAST SEEN"],
        [
            [
                sanitize_label(d["name"]),
                grouped(d["device_id"]),
                "yes" if d["enabled"] else "no",
                _when(d["last_seen"]),
            ]
            for d in devices
        ],
    )


@device.command()
@_state_dir_option
@_json_option
def pending(state_dir: Path | None, as_json: bool) -> None:
    """Devices not allowed yet: clients that tried to connect, servers discovered."""
    devices = nodeops.perform("device.pending", {}, state_dir)
    if as_json:
        _print_json([_pending_json(d) for d in devices])
        return
    if not devices:
        click.echo(
            "No pending devices. Run `ollana serve` on both machines; a device shows up "
            "here once it tried to connect (on a server) or was discovered (on a client)."
        )
        return
    _table(
        ["HOST", "ADDRESS", "KIND", "FIRST SEEN", "LAST SEEN", "ID"],
        [
            [
                sanitize_label(d["hostname"]),
                sanitize_label(d["address"]),
                str(d["kind"]),
                _when(d["first_seen"]),
                _when(d["last_seen"]),
                grouped(d["device_id"]),
            ]
            for d in devices
        ],
    )
    click.echo(
        f"\nAllow one with `ollana device allow ID` (e.g. `ollana device allow "
        f"{short(devices[0]['device_id'])}`)."
    )


@device.command()
@click.argument("device_id", metavar="ID")
@click.option("--name", help="A name for the device (default: its host name).")
@_state_dir_option
def allow(device_id: str, name: str | None, state_dir: Path | None) -> None:
    """Allow a pending device (or re-enable a disabled one). ID may be a prefix of >= 7."""
    done = nodeops.perform("device.allow", {"id": device_id, "name": name}, state_dir)
    entry = done["device"]
    click.echo(f"Allowed {sanitize_label(entry['name'])} ({grouped(entry['device_id'])}).")
    if done.get("own_short"):
        click.echo(
            f"Pairing needs both sides: on {sanitize_label(entry['name'])} run "
            f"`ollana device allow {done['own_short']}` if not done yet."
        )


@device.command()
@click.argument("device_id", metavar="ID")
@_state_dir_option
def disable(device_id: str, state_dir: Path | None) -> None:
    """Disable an allowed device; a running serve cuts it off within 2 s."""
    entry = nodeops.perform("device.disable", {"id": device_id}, state_dir)["device"]
    click.echo(
        f"Disabled {sanitize_label(entry['name'])} ({grouped(entry['device_id'])}). "
        f"`ollana device allow {short(entry['device_id'])}` enables it again."
    )


@device.command("reset-identity")
@click.option("--yes", is_flag=True, help="Really replace this device's key and ID.")
@_state_dir_option
def reset_identity(yes: bool, state_dir: Path | None) -> None:
    """Make a new key and ID for this device (pairings with it must be redone). Refused while
    an ollana runs on this state dir: stop it first."""
    if not yes:
        raise DeviceCommandError(
            "this replaces the device's key and ID: every device paired with it must allow it "
            "again; rerun with --yes to go ahead"
        )
    nodeops.refuse_if_running(state_dir, "replacing its identity")
    with _reported():
        old, me = identity.reset(_state_dir(state_dir))
    if old:
        click.echo(f"Old device ID: {grouped(old)}")
    click.echo(f"New device ID: {me.grouped}")
    click.echo(
        "Devices paired with this one must allow it again (`ollana device pending`, then "
        f"`ollana device allow {me.short}` on each); then start `ollana serve` again."
    )


# --- output ------------------------------------------------------------------------------------


def _when(ts: float | None) -> str:
    if ts is None:
        return "never"
    return datetime.fromtimestamp(ts).astimezone().strftime("%Y-%m-%d %H:%M:%S")


def _allowed_json(d: Mapping[str, Any]) -> dict[str, Any]:
    return {**d, "added_at": iso_time(d["added_at"]), "last_seen": iso_time(d["last_seen"])}


def _pending_json(d: Mapping[str, Any]) -> dict[str, Any]:
    return {**d, "first_seen": iso_time(d["first_seen"]), "last_seen": iso_time(d["last_seen"])}


def _print_json(doc: Any) -> None:
    click.echo(json.dumps(doc, indent=2))


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        click.echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
