"""Writing state files: one way, atomic and durable.

Every file ollana keeps (its key, devices.json, peers, its node ID, a pid file's state) is
written whole to a temporary file created with its final mode, flushed to disk, renamed over the
old one, and the directory synced: a crash leaves the old file or the new one, never a mix, and
a key is never readable by others, not even for a moment.

A file (or lock file) made in a directory that belongs to someone else, by root, is given to the
directory's owner: `sudo ollana device allow` on a service's state dir when no node runs must not
leave a root-owned file the service can no longer read.
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
        _adopt(fd, path.parent)
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


def open_lock(path: Path) -> int:
    """Open (creating it 0600, owned like its directory) a lock file for ``flock``. Raises OSError."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        _adopt(fd, path.parent)
    except OSError:
        os.close(fd)
        raise
    return fd


def inherited_owner(euid: int, file_owner: tuple[int, int], dir_owner: tuple[int, int]) -> tuple[int, int] | None:
    """The (uid, gid) a file this process just made in a directory must be given, or None.

    Only root makes files owned by another user; it gives a file in a directory of another user
    to that directory's owner and group (the service's state dir stays the service's). Pure.
    """
    if euid != 0 or dir_owner[0] == 0 or file_owner == dir_owner:
        return None
    return dir_owner


def _adopt(fd: int, directory: Path) -> None:
    st, own = os.stat(directory), os.fstat(fd)
    owner = inherited_owner(os.geteuid(), (own.st_uid, own.st_gid), (st.st_uid, st.st_gid))
    if owner is not None:
        os.fchown(fd, *owner)


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
