"""Writing state files: one way, atomic and durable.

Every file ollana keeps (its key, devices.json, peers, its node ID, a pid file's state) is
written whole to a temporary file created with its final mode, flushed to disk, renamed over the
old one, and the directory synced: a crash leaves the old file or the new one, never a mix, and
a key is never readable by others, not even for a moment.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path


def write_atomic(path: Path, data: bytes, mode: int = 0o600) -> os.stat_result:
    """Replace ``path`` with ``data``; returns the new file's stat. Raises OSError."""
    tmp = path.with_name(path.name + ".tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()  # left by a crash: O_EXCL below must create it anew, with our mode
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
            st = os.fstat(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    _sync_dir(path.parent)
    return st


def _sync_dir(directory: Path) -> None:
    """Make the rename durable (best effort: some file systems cannot sync a directory)."""
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def private_dir(path: Path) -> None:
    """Create ``path`` with mode 0700, or tighten an existing one of ours to 0700 (it holds a
    private key). Raises OSError."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    st = path.stat()
    if st.st_uid == os.geteuid() and st.st_mode & 0o077:
        os.chmod(path, 0o700)
