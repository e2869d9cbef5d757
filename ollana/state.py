"""What a node keeps on disk between runs (its state dir): for now, its node id."""

from __future__ import annotations

import secrets
from pathlib import Path

import structlog

from ollana.discovery.packet import NODE_ID_LEN
from ollana.errors import StartupError
from ollana.files import private_dir, write_atomic

log = structlog.get_logger(__name__)

NODE_ID_FILE = "node_id"


def ensure_state_dir(state_dir: Path) -> Path:
    try:
        private_dir(state_dir)
    except OSError as exc:
        raise StartupError(
            f"cannot create the state directory {state_dir}: {exc.strerror}; "
            "set OLLANA_HOME or --state-dir to a writable directory"
        ) from exc
    return state_dir


def load_node_id(state_dir: Path) -> bytes:
    """The node's stable id: created on first use, kept across restarts.

    A corrupt file is replaced, and the replacement is logged: peers then see a new node.
    """
    path = ensure_state_dir(state_dir) / NODE_ID_FILE
    try:
        text = path.read_text(encoding="ascii").strip()
        node_id = bytes.fromhex(text)
        if len(node_id) == NODE_ID_LEN:
            return node_id
        log.warning("node_id_regenerated", path=str(path), reason="wrong length")
    except FileNotFoundError:
        pass
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        log.warning("node_id_regenerated", path=str(path), reason=str(exc))
    node_id = secrets.token_bytes(NODE_ID_LEN)
    try:
        write_atomic(path, (node_id.hex() + "\n").encode("ascii"), 0o644)
    except OSError as exc:
        raise StartupError(f"cannot write {path}: {exc.strerror}") from exc
    log.info("node_id_created", path=str(path), node_id=node_id.hex())
    return node_id
