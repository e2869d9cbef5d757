"""One way to write state files (atomic, durable, with their final mode from the start)."""

from __future__ import annotations

import os
from pathlib import Path

from ollana.files import private_dir, write_atomic


def test_write_atomic_replaces_whole_with_the_mode_given(tmp_path: Path) -> None:
    path = tmp_path / "key.pem"
    path.write_bytes(b"old")
    (tmp_path / "key.pem.tmp").write_bytes(b"left by a crash")
    st = write_atomic(path, b"new", 0o600)
    assert path.read_bytes() == b"new" and st.st_size == 3
    assert path.stat().st_mode & 0o777 == 0o600
    assert not (tmp_path / "key.pem.tmp").exists()
    write_atomic(path, b"public", 0o644)
    assert path.stat().st_mode & 0o777 == 0o644


def test_private_dir_creates_and_tightens(tmp_path: Path) -> None:
    new = tmp_path / "a" / "state"
    private_dir(new)
    assert new.stat().st_mode & 0o777 == 0o700
    loose = tmp_path / "loose"
    loose.mkdir(mode=0o755)
    os.chmod(loose, 0o755)
    private_dir(loose)
    assert loose.stat().st_mode & 0o777 == 0o700
