"""The control socket: how `ollana device …` and `ollana peer …` ask a running node to change its
own state, and the node's presence (its runtime record) while it runs.

An AF_UNIX stream socket, in the run dir next to the pid file (else in the state dir), mode 0660,
owned by the node's user and group. The file mode keeps other users out; the node checks each
connection's SO_PEERCRED as well and answers only root, its own uid, or a member of its group.
One request per connection: a JSON line ``{"op": ..., "args": {...}}``; one JSON line back,
``{"ok": result}`` or ``{"error": "...", "code": n}``. The node performs the operation itself
(``ops.py``), so the files it writes stay its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pwd
import socket
import struct
import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import structlog

from ollana.errors import OllanaError
from ollana.service import ops, record
from ollana.service.record import NodeFiles, RuntimeRecord

if TYPE_CHECKING:
    from ollana.config import Config
    from ollana.runtime import Ready

log = structlog.get_logger(__name__)

SOCKET_MODE: Final = 0o660
MAX_REQUEST: Final = 64 * 1024
REQUEST_TIMEOUT: Final = 5.0
ASK_TIMEOUT: Final = 15.0
# Linux's SO_PEERGROUPS (4.13+): the peer's supplementary groups, as the kernel saw them at connect.
SO_PEERGROUPS: Final = int(getattr(socket, "SO_PEERGROUPS", 59))
MAX_GROUPS: Final = 256  # Python reads at most 1024 bytes of an option
# AF_UNIX paths are limited to 108 bytes (sun_path) on Linux.
MAX_SOCKET_PATH: Final = 107


class ControlError(OllanaError):
    """The node refused or failed the operation; the text is its one-line reason."""

    def __init__(self, message: str, code: int = 2) -> None:
        super().__init__(message)
        self.code = code


class ControlDenied(ControlError):
    """The node does not take orders from this user."""


# --- who may ask (pure) ------------------------------------------------------------------------


def may_control(peer_uid: int, peer_gids: frozenset[int], node_uid: int, node_gid: int) -> bool:
    """Root, the node's own uid, or a member of the node's group may change a running node."""
    return peer_uid in (0, node_uid) or node_gid in peer_gids


def peer_groups(sock: socket.socket | None, uid: int, gid: int) -> frozenset[int]:
    """The groups of the peer process: from the kernel (SO_PEERGROUPS) where it tells, else the
    groups of user ``uid`` in the user and group databases. The primary ``gid`` is included."""
    if sock is not None:
        try:
            raw = sock.getsockopt(socket.SOL_SOCKET, SO_PEERGROUPS, 4 * MAX_GROUPS)
        except OSError:
            pass
        else:
            count = len(raw) // 4
            return frozenset([gid, *struct.unpack(f"{count}I", raw[: count * 4])])
    return groups_of(uid, gid)


def groups_of(uid: int, gid: int) -> frozenset[int]:
    """The groups of user ``uid`` (primary ``gid`` included), from the user and group databases."""
    try:
        name = pwd.getpwuid(uid).pw_name
        return frozenset([gid, *os.getgrouplist(name, gid)])
    except (KeyError, OSError):
        return frozenset([gid])


def peer_credentials(sock: socket.socket) -> tuple[int, int, int]:
    """(pid, uid, gid) of the process at the other end of a unix socket (Linux SO_PEERCRED)."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", raw)
    return pid, uid, gid


# --- the node's side ---------------------------------------------------------------------------


class ControlServer:
    def __init__(self, state_dir: Path) -> None:
        self._state_dir = state_dir
        self._uid, self._gid = os.geteuid(), os.getegid()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            reply = await self._reply(reader, writer)
            writer.write((json.dumps(reply) + "\n").encode())
            await writer.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass  # the asker went away
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async def _reply(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> dict[str, Any]:
        sock = writer.get_extra_info("socket")
        pid, uid, gid = peer_credentials(sock) if sock is not None else (0, -1, -1)
        try:
            # Read the request even from someone refused: closing on unread data would reset the
            # connection, and the asker would not learn why.
            async with asyncio.timeout(REQUEST_TIMEOUT):
                line = await reader.readline()
        except (TimeoutError, ValueError):  # ValueError: a line over the limit
            line = b""
        if not may_control(uid, peer_groups(sock, uid, gid), self._uid, self._gid):
            log.warning("control_refused", pid=pid, uid=uid, gid=gid)
            return {"error": "not allowed: only root, the node's user or members of its group may change it",
                    "code": 4}
        try:
            request = json.loads(line)
            op, args = request["op"], request.get("args") or {}
            if not isinstance(op, str) or not isinstance(args, Mapping):
                raise TypeError
        except (ValueError, KeyError, TypeError):
            return {"error": "bad request: send one JSON line {\"op\": ..., \"args\": {...}}", "code": 2}
        try:
            result = await asyncio.to_thread(ops.perform, self._state_dir, op, args)
        except OllanaError as exc:
            log.info("control_refused_op", op=op, uid=uid, error=str(exc))
            return {"error": str(exc), "code": 2}
        log.info("control_done", op=op, uid=uid, pid=pid)
        return {"ok": result}


def _other_node_answers(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(1.0)
        try:
            probe.connect(str(path))
        except OSError:
            return False
    return True


async def _start(path: Path, state_dir: Path) -> asyncio.AbstractServer | None:
    if len(os.fsencode(path)) > MAX_SOCKET_PATH:
        log.warning("control_socket_not_started", path=str(path), reason="path longer than 107 bytes")
        return None
    if _other_node_answers(path):
        log.warning("control_socket_not_started", path=str(path), reason="another ollana answers there")
        return None
    try:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()  # left by a node that died
        server = await asyncio.start_unix_server(ControlServer(state_dir).handle, path=str(path),
                                                 limit=MAX_REQUEST)
        os.chmod(path, SOCKET_MODE)
    except OSError as exc:
        log.warning("control_socket_not_started", path=str(path), reason=exc.strerror or str(exc))
        return None
    log.info("control_socket_listening", path=str(path))
    return server


@asynccontextmanager
async def presence(config: Config, files: NodeFiles, ready: Callable[[Ready], None],
                   wall: Callable[[], float] = time.time) -> AsyncIterator[Callable[[Ready], None]]:
    """For the node's lifetime: its control socket, and its runtime record once it serves.

    Yields the ``ready`` hook to hand to the role: it writes the record, then calls ``ready``.
    """
    state_dir = Path(os.path.abspath(config.state_dir))
    pid_file = Path(os.path.abspath(files.pid_file)) if files.pid_file is not None else None
    sock_path = record.socket_path(state_dir, pid_file)
    server = await _start(sock_path, state_dir)
    paths = record.record_paths(state_dir, pid_file)

    def on_ready(r: Ready) -> None:
        rec = RuntimeRecord(
            pid=os.getpid(), role=r.role.value, listen=tuple(_listens(config, r)), state_dir=str(state_dir),
            started_at=wall(), pid_file=str(pid_file) if pid_file else None,
            log_file=str(files.log_file) if files.log_file else None,
            control_socket=str(sock_path) if server is not None else None,
            proc_start=record.proc_start(os.getpid()), node_id=r.node_id, uid=os.geteuid(),
            listen_host=r.listen.host, listen_port=r.listen.port, scheme=r.scheme,
            cert_file=r.cert_file, key_file=r.key_file, grace_s=config.timings.grace,
        )
        written = record.write(rec, paths)
        if len(written) < len(paths):
            log.warning("runtime_record_not_written", paths=[str(p) for p in paths if p not in written])
        ready(r)

    try:
        yield on_ready
    finally:
        record.remove(paths, os.getpid())
        if server is not None:
            server.close()
            with contextlib.suppress(FileNotFoundError):
                sock_path.unlink()


def _listens(config: Config, r: Ready) -> list[str]:
    listens = [str(r.listen)]
    if r.role.value == "both":
        listens.append(str(config.lan_listen) if config.lan_listen is not None else "0.0.0.0:11435")
    return listens


# --- the CLI's side ----------------------------------------------------------------------------


def ask(path: str | Path, op: str, args: Mapping[str, Any], timeout: float = ASK_TIMEOUT) -> Any:
    """Ask the node at ``path`` to perform ``op``. Raises ControlError (refused or failed, with the
    node's reason), ControlDenied (not allowed), OSError (nobody answers there)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(str(path))
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            # A node that refuses this user answers at once and closes: its reason is still there to read.
            sock.sendall((json.dumps({"op": op, "args": dict(args)}) + "\n").encode())
        data = b""
        while not data.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    try:
        reply = json.loads(data)
    except ValueError:
        raise OSError(f"the node at {path} gave no answer") from None
    if not isinstance(reply, dict):
        raise OSError(f"the node at {path} gave an answer that is not JSON object")
    if "error" in reply:
        code = int(reply.get("code") or 2)
        raise (ControlDenied if code == 4 else ControlError)(str(reply["error"]), code)
    return reply.get("ok")
