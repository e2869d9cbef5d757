"""How `ollana device …` and `ollana peer …` reach the state they change: through the running
node when one runs (it writes its own files), else in the state dir directly.

A running node is found by its runtime record (``ollana.service.record`` has the search order);
then the command is sent over its control socket. With no node running, the command works on
``--state-dir`` / ``OLLANA_HOME`` or the default state dir, and says which other state dir a
packaged service uses when that is not the one it changed.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import click

from ollana.config import OLLAMA_DEFAULT_PORT, default_state_dir
from ollana.errors import OllanaError
from ollana.service import ctlsock, ops, pidfile, record
from ollana.service.record import RuntimeRecord


class NodeCommandError(click.ClickException):
    """One line, exit 2, like every other configuration or usage problem."""

    exit_code = 2


def _is_root() -> bool:
    return os.geteuid() == 0


def locate(state_dir: Path | None = None, pid_file: Path | None = None) -> RuntimeRecord | None:
    """The running node (of ``state_dir`` when given), from its runtime record; None if none runs."""
    default = default_state_dir(os.environ, is_root=_is_root())
    paths = record.candidates(
        pid_file=pid_file, state_dir=state_dir,
        default_pid_file=pidfile.default_pid_file(os.environ, is_root=_is_root(), state_dir=default),
        default_state_dir=default, settings=record.read_settings(),
    )
    return record.find(paths, state_dir)


def perform(op: str, args: Mapping[str, Any], state_dir: Path | None) -> Any:
    """Run ``op`` by the running node if there is one, else on the state dir here."""
    node = locate(state_dir)
    if node is not None and node.control_socket:
        try:
            return ctlsock.ask(node.control_socket, op, args)
        except ctlsock.ControlDenied as exc:
            raise NodeCommandError(_denied(node, str(exc))) from None
        except PermissionError:
            raise NodeCommandError(_denied(node, "its control socket is not open to this user")) from None
        except ctlsock.ControlError as exc:
            raise NodeCommandError(str(exc)) from None
        except OSError as exc:
            click.echo(f"ollana: note: the running ollana (pid {node.pid}) does not answer on "
                       f"{node.control_socket} ({exc.strerror or exc}); changing {node.state_dir} directly",
                       err=True)
    directory = state_dir or (Path(node.state_dir) if node is not None else _default_with_hint())
    try:
        return ops.perform(directory, op, args)
    except OllanaError as exc:
        raise NodeCommandError(str(exc)) from None
    except PermissionError as exc:
        raise NodeCommandError(f"cannot use the state dir {directory}: {exc.strerror}; run as its owner "
                               "or root, or pass --state-dir") from None


def refuse_if_running(state_dir: Path | None, what: str) -> None:
    """Raise when a node runs on ``state_dir`` (or the default one): ``what`` cannot be done under it."""
    node = locate(state_dir or default_state_dir(os.environ, is_root=_is_root()))
    if node is not None:
        stop = f"`ollana stop --pid-file {node.pid_file}`" if node.pid_file else f"stop it (kill {node.pid})"
        raise NodeCommandError(
            f"ollana is running on {node.state_dir} (pid {node.pid}): {what} while it runs would leave "
            f"it announcing one identity and presenting another; {stop}, then run this again"
        )


def _denied(node: RuntimeRecord, why: str) -> str:
    return (f"the running ollana (pid {node.pid}, state dir {node.state_dir}) refused: {why}; "
            "run this as root (sudo), as the node's user, or as a member of its group")


def _default_with_hint() -> Path:
    """The default state dir; on stderr, the service's state dir when it is another one."""
    default = default_state_dir(os.environ, is_root=_is_root())
    service = service_state_dir(record.read_settings())
    if service is not None and not record.same_dir(service, default):
        click.echo(f"ollana: note: no running ollana found; using {default}. The service's state dir is "
                   f"{service}: to change its pairings, start it, or pass `--state-dir {service}` "
                   "(as root or its user)", err=True)
    return default


def service_state_dir(settings: Mapping[str, str]) -> Path | None:
    """The packaged service's state dir, when it exists on this machine."""
    for candidate in (settings.get("OLLANA_HOME"), str(record.SERVICE_STATE_DIR)):
        if candidate and Path(candidate).is_dir():
            return Path(candidate)
    return None


def client_listener(state_dir: Path | None = None) -> str:
    """Where this machine's client listener is: the running node's (role client or both), else
    Ollama's default address, where a client listens unless told otherwise."""
    node = locate(state_dir)
    if node is not None and node.role in ("client", "both") and node.listen:
        return node.listen[0]
    return f"127.0.0.1:{OLLAMA_DEFAULT_PORT}"
