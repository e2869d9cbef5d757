"""What `ollana device …` and `ollana peer …` do to a state dir, as named operations.

One implementation for both ways a command runs: the running node performs an operation when
asked over its control socket (so it writes its own files, as its own user), and the CLI
performs it itself when no node runs. Arguments and results are JSON values; a refusal is an
``OllanaError`` whose text is the one line the CLI prints.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Final

from ollana.config import Endpoint
from ollana.discovery import saved
from ollana.errors import ConfigError
from ollana.trust import identity
from ollana.trust.document import AllowedDevice, PendingDevice
from ollana.trust.store import TrustStore

Args = Mapping[str, Any]


class BadRequest(ConfigError):
    """An operation the node does not know, or arguments of the wrong shape."""


def _text(args: Args, key: str, *, optional: bool = False) -> str | None:
    value = args.get(key)
    if value is None and optional:
        return None
    if not isinstance(value, str):
        raise BadRequest(f"argument {key!r} must be a string")
    return value


def allowed_doc(d: AllowedDevice) -> dict[str, Any]:
    return {"device_id": d.device_id, "name": d.name, "enabled": d.enabled,
            "added_at": d.added_at, "last_seen": d.last_seen}


def pending_doc(d: PendingDevice) -> dict[str, Any]:
    return {"device_id": d.device_id, "hostname": d.hostname, "address": d.address, "kind": d.kind.value,
            "first_seen": d.first_seen, "last_seen": d.last_seen}


def _own_short(state_dir: Path) -> str | None:
    try:
        return identity.load(state_dir).short
    except ConfigError:
        return None


def device_show(state_dir: Path, _args: Args) -> dict[str, Any]:
    me = identity.load_or_create(state_dir)
    return {"device_id": me.device_id, "grouped": me.grouped, "short": me.short, "cert": str(me.cert_path)}


def device_list(state_dir: Path, _args: Args) -> list[dict[str, Any]]:
    return [allowed_doc(d) for d in TrustStore.load(state_dir).allowed()]


def device_pending(state_dir: Path, _args: Args) -> list[dict[str, Any]]:
    return [pending_doc(d) for d in TrustStore.load(state_dir).pending()]


def device_allow(state_dir: Path, args: Args) -> dict[str, Any]:
    entry = TrustStore.load(state_dir).allow(str(_text(args, "id")), _text(args, "name", optional=True),
                                              now=time.time())
    return {"device": allowed_doc(entry), "own_short": _own_short(state_dir)}


def device_disable(state_dir: Path, args: Args) -> dict[str, Any]:
    return {"device": allowed_doc(TrustStore.load(state_dir).disable(str(_text(args, "id"))))}


def _endpoint(args: Args) -> Endpoint:
    host, port = args.get("host"), args.get("port")
    if not isinstance(host, str) or not isinstance(port, int):
        raise BadRequest("arguments 'host' (string) and 'port' (integer) are required")
    return Endpoint(host, port)


def peer_add(state_dir: Path, args: Args) -> dict[str, Any]:
    return {"added": saved.add(state_dir, _endpoint(args), time.time())}


def peer_remove(state_dir: Path, args: Args) -> dict[str, Any]:
    saved.remove(state_dir, _endpoint(args))
    return {}


def peer_list(state_dir: Path, _args: Args) -> list[dict[str, Any]]:
    return [{"host": p.endpoint.host, "port": p.endpoint.port, "added_at": p.added_at}
            for p in saved.load(state_dir)]


OPERATIONS: Final[Mapping[str, Callable[[Path, Args], Any]]] = {
    "device.show": device_show,
    "device.list": device_list,
    "device.pending": device_pending,
    "device.allow": device_allow,
    "device.disable": device_disable,
    "peer.add": peer_add,
    "peer.remove": peer_remove,
    "peer.list": peer_list,
}


def perform(state_dir: Path, op: str, args: Args) -> Any:
    """Run ``op`` on ``state_dir``. Raises OllanaError (the message for the user) when refused."""
    handler = OPERATIONS.get(op)
    if handler is None:
        raise BadRequest(f"unknown operation {op!r}")
    return handler(state_dir, args)
