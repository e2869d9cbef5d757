"""Saved peers: servers named by hand (``ollana peer add``), kept in ``peers.json`` in the state dir.

The CLI changes the file (read-modify-write under an flock, then an atomic replace, mode 0600); a
running client polls it (one stat per poll, like ``devices.json``) and adds or drops those servers
within one poll. What the file holds, and what an add or a remove makes of it, is decided by the
pure functions here (``parse_peer``, ``encode``/``decode``, ``adding``, ``removing``).
"""

from __future__ import annotations

import fcntl
import ipaddress
import json
import os
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Final

import structlog

from ollana.config import PROXY_DEFAULT_PORT, Endpoint, parse_endpoint
from ollana.errors import ConfigError
from ollana.files import open_lock, private_dir, write_atomic
from ollana.trust.document import iso_time

log = structlog.get_logger(__name__)

PEERS_FILE: Final = "peers.json"
LOCK_FILE: Final = "peers.json.lock"
FORMAT_VERSION: Final = 1
MAX_SAVED: Final = 256
MAX_FILE_BYTES: Final = 256 * 1024
_LABEL: Final = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")


class SavedPeersError(ConfigError):
    """peers.json cannot be read, parsed or written, or a command's address is unusable."""


@dataclass(frozen=True, slots=True)
class SavedPeer:
    endpoint: Endpoint
    added_at: float | None = None


# --- pure: addresses, the document, edits -------------------------------------------------------


def parse_peer(text: str) -> Endpoint:
    """``HOST[:PORT]`` as ``ollana peer add`` takes it: a host name or an IP address (IPv6 in
    brackets when a port follows), port 11435 by default. Normalised, so one server is one entry."""
    if "://" in text or "/" in text:
        raise SavedPeersError(f"invalid address {text.strip()!r}: write HOST or HOST:PORT, not a URL")
    try:
        endpoint = parse_endpoint(text, default_host="", default_port=PROXY_DEFAULT_PORT)
    except ConfigError as exc:
        why = str(exc)
        raise SavedPeersError(why if why.startswith(("invalid address", "empty")) else
                              f"invalid address {text.strip()!r}: {why}") from None
    if endpoint.port == 0:
        raise SavedPeersError(f"invalid address {text.strip()!r}: port 0 is not a server's port")
    return Endpoint(_host(endpoint.host, text.strip()), endpoint.port)


def _host(host: str, text: str) -> str:
    if not host:
        raise SavedPeersError(f"invalid address {text!r}: no host (write HOST or HOST:PORT)")
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        pass
    else:
        if ip.is_unspecified or ip.is_multicast:
            raise SavedPeersError(f"invalid address {text!r}: {host} cannot be a server's address")
        return str(ip)
    name = host.lower().removesuffix(".")
    if len(name) > 253 or not all(_LABEL.match(label) for label in name.split(".")):
        raise SavedPeersError(
            f"invalid address {text!r}: not a host name or an IP address (write HOST or HOST:PORT, "
            "e.g. gpu-box.lan or 192.168.1.20:11435)"
        )
    return name


def encode(peers: Sequence[SavedPeer]) -> bytes:
    doc = {
        "version": FORMAT_VERSION,
        "peers": [
            {"host": p.endpoint.host, "port": p.endpoint.port, "added_at": iso_time(p.added_at)}
            for p in peers
        ],
    }
    return (json.dumps(doc, indent=2) + "\n").encode()


def decode(raw: bytes) -> list[SavedPeer]:
    """The peers a file holds; ValueError names what is wrong with it."""
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"not JSON: {exc}") from None
    if not isinstance(doc, dict) or doc.get("version") != FORMAT_VERSION:
        raise ValueError(f"not a version {FORMAT_VERSION} peers document")
    entries = doc.get("peers")
    if not isinstance(entries, list) or len(entries) > MAX_SAVED:
        raise ValueError(f"'peers' must be a list of at most {MAX_SAVED} entries")
    peers: list[SavedPeer] = []
    for entry in entries:
        peers.append(_entry(entry))
    return _unique(peers)


def _entry(entry: Any) -> SavedPeer:
    if not isinstance(entry, dict):
        raise ValueError("every peer must be an object")
    host, port = entry.get("host"), entry.get("port")
    if not isinstance(host, str) or not isinstance(port, int) or isinstance(port, bool) or not 0 < port < 65536:
        raise ValueError(f"bad peer {entry!r}: needs a host (text) and a port (1-65535)")
    try:
        endpoint = Endpoint(_host(host, host), port)
    except SavedPeersError as exc:
        raise ValueError(str(exc)) from None
    added = entry.get("added_at")
    try:
        added_at = datetime.fromisoformat(added).timestamp() if isinstance(added, str) else None
    except ValueError:
        added_at = None
    return SavedPeer(endpoint, added_at)


def _unique(peers: list[SavedPeer]) -> list[SavedPeer]:
    seen: set[Endpoint] = set()
    out = []
    for p in peers:
        if p.endpoint not in seen:
            seen.add(p.endpoint)
            out.append(p)
    return out


def adding(peers: Sequence[SavedPeer], endpoint: Endpoint, now: float) -> tuple[list[SavedPeer], bool]:
    """The list with ``endpoint`` saved, and whether it is new (adding a saved peer again is a no-op)."""
    if any(p.endpoint == endpoint for p in peers):
        return list(peers), False
    if len(peers) >= MAX_SAVED:
        raise SavedPeersError(f"at most {MAX_SAVED} saved peers; remove one first (`ollana peer list`)")
    return [*peers, SavedPeer(endpoint, now)], True


def removing(peers: Sequence[SavedPeer], endpoint: Endpoint) -> list[SavedPeer]:
    """The list without ``endpoint``; SavedPeersError when it was not saved."""
    kept = [p for p in peers if p.endpoint != endpoint]
    if len(kept) == len(peers):
        saved = ", ".join(str(p.endpoint) for p in peers) or "none"
        raise SavedPeersError(f"{endpoint} is not a saved peer (saved: {saved}; see `ollana peer list`)")
    return kept


# --- the file ------------------------------------------------------------------------------------

# (st_mtime_ns, st_ino, st_size); None when the file does not exist.
Signature = tuple[int, int, int] | None


def path_in(state_dir: Path) -> Path:
    return state_dir / PEERS_FILE


def read(state_dir: Path) -> tuple[Signature, list[SavedPeer]]:
    """The saved peers (none when the file does not exist); SavedPeersError when it is corrupt."""
    path = path_in(state_dir)
    try:
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())
            raw = f.read(MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        return None, []
    except OSError as exc:
        raise SavedPeersError(f"cannot read {path}: {exc.strerror}") from exc
    try:
        if len(raw) > MAX_FILE_BYTES:
            raise ValueError(f"larger than {MAX_FILE_BYTES} bytes")
        peers = decode(raw)
    except ValueError as exc:
        raise SavedPeersError(
            f"{path} is corrupt ({exc}); fix it, or move it away and add the peers again with "
            "`ollana peer add HOST[:PORT]`"
        ) from None
    return (st.st_mtime_ns, st.st_ino, st.st_size), peers


def load(state_dir: Path) -> list[SavedPeer]:
    return read(state_dir)[1]


def add(state_dir: Path, endpoint: Endpoint, now: float) -> bool:
    """Save ``endpoint``; False when it was saved already."""
    with _locked(state_dir):
        peers, added = adding(load(state_dir), endpoint, now)
        if added:
            _write(state_dir, peers)
    return added


def remove(state_dir: Path, endpoint: Endpoint) -> None:
    with _locked(state_dir):
        _write(state_dir, removing(load(state_dir), endpoint))


@contextmanager
def _locked(state_dir: Path) -> Iterator[None]:
    try:
        private_dir(state_dir)
        fd = open_lock(state_dir / LOCK_FILE)
    except OSError as exc:
        raise SavedPeersError(f"cannot use the state directory {state_dir}: {exc.strerror}") from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _write(state_dir: Path, peers: Sequence[SavedPeer]) -> None:
    path = path_in(state_dir)
    try:
        write_atomic(path, encode(peers), 0o600)
    except OSError as exc:
        raise SavedPeersError(f"cannot write {path}: {exc.strerror}") from exc


class SavedPeersFile:
    """A running node's view of peers.json: re-read when it changed (one stat per poll)."""

    def __init__(self, state_dir: Path) -> None:
        self._state_dir = state_dir
        self._signature: Signature = None
        self.peers: tuple[Endpoint, ...] = ()

    @classmethod
    def load(cls, state_dir: Path) -> SavedPeersFile:
        """Read the file at start; SavedPeersError (exit 2) when it is corrupt."""
        saved = cls(state_dir)
        saved._signature, peers = read(state_dir)
        saved.peers = tuple(p.endpoint for p in peers)
        return saved

    def poll(self) -> bool:
        """Re-read the file if it changed; True when the saved peers changed. A file that turns
        corrupt while the node runs is logged and the last good list is kept."""
        current = self._stat()
        if current == self._signature:
            return False
        try:
            signature, peers = read(self._state_dir)
        except SavedPeersError as exc:
            log.error("saved_peers_unreadable", path=str(path_in(self._state_dir)), error=str(exc))
            self._signature = current
            return False
        self._signature = signature
        endpoints = tuple(p.endpoint for p in peers)
        changed, self.peers = endpoints != self.peers, endpoints
        return changed

    def _stat(self) -> Signature:
        try:
            st = os.stat(path_in(self._state_dir))
        except FileNotFoundError:
            return None
        except OSError:
            return self._signature  # transient: try again next poll
        return (st.st_mtime_ns, st.st_ino, st.st_size)
