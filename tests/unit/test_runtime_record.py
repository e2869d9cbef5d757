"""The runtime record, where commands look for it, and who may use the control socket (pure parts)."""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

from ollana.cli.doctor import _listeners
from ollana.config import Endpoint
from ollana.files import inherited_owner
from ollana.service import record
from ollana.service.ctlsock import may_control
from ollana.service.record import RECORD_FILE, RuntimeRecord


def _record(**kw: object) -> RuntimeRecord:
    base = RuntimeRecord(pid=4242, role="client", listen=("127.0.0.1:11434",), state_dir="/var/lib/ollana",
                         started_at=1.5e9, proc_start=777, control_socket="/run/ollana/ollana.sock")
    return replace(base, **kw)  # type: ignore[arg-type]


def test_record_round_trips_and_garbage_is_no_record() -> None:
    rec = _record(pid_file="/run/ollana/ollana.pid", log_file="/var/log/ollana/serve.log", scheme="https")
    again = record.decode(json.dumps(rec.document()), "/x")
    assert again == rec and again is not None and again.path == "/x"
    assert not again.foreground and _record().foreground
    for bad in ("", "[]", "{}", '{"pid": "12"}', "not json", '{"pid": 3, "started_at": "soon"}'):
        assert record.decode(bad) is None, bad


def test_an_older_state_file_still_reads_as_a_record() -> None:
    old = {"pid": 9, "role": "server", "listen_host": "0.0.0.0", "listen_port": 11435, "grace_s": 3}
    rec = record.decode(json.dumps(old))
    assert rec is not None and rec.listen == ("0.0.0.0:11435",) and rec.grace_s == 3


def test_liveness_needs_the_pid_and_the_same_process() -> None:
    rec = _record()
    assert record.is_live(rec, lambda _p: True, lambda _p: 777)
    assert not record.is_live(rec, lambda _p: False, lambda _p: 777)  # pid gone: stale
    assert not record.is_live(rec, lambda _p: True, lambda _p: 778)  # pid reused by another process
    assert not record.is_live(rec, lambda _p: True, lambda _p: -1)  # exited, not reaped yet
    assert record.is_live(rec, lambda _p: True, lambda _p: None)  # no /proc: the pid decides
    assert record.is_live(_record(proc_start=None), lambda _p: True, lambda _p: 5)
    assert not record.is_live(_record(pid=0), lambda _p: True, lambda _p: 777)


def test_this_process_is_live_by_the_real_probes() -> None:
    started = record.proc_start(os.getpid())
    assert record.live(_record(pid=os.getpid(), proc_start=started))
    if started is not None:  # Linux: a record of an earlier process with this pid is stale
        assert not record.live(_record(pid=os.getpid(), proc_start=started + 1))


def test_where_commands_look_in_order() -> None:
    kw = {"default_pid_file": Path("/run/ollana.pid"), "default_state_dir": Path("/home/a/.local/share/ollana"),
          "settings": {"PIDFILE": "/srv/run/o.pid", "OLLANA_HOME": "/srv/ollana"}}
    assert record.candidates(pid_file=Path("/tmp/p.pid"), state_dir=None, **kw) == [Path("/tmp/p.pid.json")]
    assert record.candidates(pid_file=None, state_dir=Path("/s"), **kw) == [
        Path("/s") / RECORD_FILE, Path("/run/ollana.pid.json"), Path("/run/ollana/ollana.pid.json"),
        Path("/srv/run/o.pid.json")]
    # This user's own node first, then the service's.
    assert record.candidates(pid_file=None, state_dir=None, **kw) == [
        Path("/run/ollana.pid.json"), Path("/home/a/.local/share/ollana") / RECORD_FILE,
        Path("/run/ollana/ollana.pid.json"), Path("/srv/run/o.pid.json"), Path("/srv/ollana") / RECORD_FILE,
        Path("/var/lib/ollana") / RECORD_FILE]
    # No duplicates when the defaults are the service's.
    plain = record.candidates(pid_file=None, state_dir=None, default_pid_file=Path("/run/ollana/ollana.pid"),
                              default_state_dir=Path("/var/lib/ollana"), settings={})
    assert plain == [Path("/run/ollana/ollana.pid.json"), Path("/var/lib/ollana") / RECORD_FILE]


def test_find_skips_stale_unreadable_and_other_state_dirs(tmp_path: Path) -> None:
    stale, other, mine = tmp_path / "a.json", tmp_path / "b.json", tmp_path / "c.json"
    stale.write_text(json.dumps(_record(pid=1, state_dir=str(tmp_path / "s")).document()))
    other.write_text(json.dumps(_record(pid=2, state_dir=str(tmp_path / "elsewhere")).document()))
    mine.write_text(json.dumps(_record(pid=3, state_dir=str(tmp_path / "s")).document()))
    paths = [tmp_path / "missing.json", stale, other, mine]
    alive = {2, 3}
    found = record.find(paths, tmp_path / "s", alive=lambda r: r.pid in alive)
    assert found is not None and found.pid == 3 and found.path == str(mine)
    assert record.find(paths, None, alive=lambda r: r.pid in alive).pid == 2  # type: ignore[union-attr]
    assert record.find(paths, None, alive=lambda _r: False) is None


def test_write_and_remove_only_our_own(tmp_path: Path) -> None:
    paths = [tmp_path / RECORD_FILE, tmp_path / "run" / "ollana.pid.json"]
    (tmp_path / "run").mkdir()
    assert record.write(_record(pid=os.getpid()), paths) == paths
    assert all(p.stat().st_mode & 0o777 == 0o644 for p in paths)
    record.write(_record(pid=1), paths[1:])  # replaced by another node
    record.remove(paths, os.getpid())
    assert not paths[0].exists() and paths[1].exists()


def test_settings_files_are_read_like_the_init_scripts_read_them() -> None:
    text = """# comment
OLLANA_USER=ollana
PIDFILE="/run/ollana/ollana.pid"   # where
export OLLANA_HOME='/srv/ollana'
#OLLANA_LOG=info
OLLANA_OPTS="--mode server --peer 10.0.0.2"
not a setting
BROKEN="unterminated
"""
    got = record.parse_settings(text)
    assert got["PIDFILE"] == "/run/ollana/ollana.pid" and got["OLLANA_HOME"] == "/srv/ollana"
    assert got["OLLANA_USER"] == "ollana" and "OLLANA_LOG" not in got and "BROKEN" not in got


def test_socket_goes_next_to_the_pid_file_else_in_the_state_dir() -> None:
    assert record.socket_path(Path("/var/lib/ollana"), Path("/run/ollana/ollana.pid")) == Path("/run/ollana/ollana.sock")
    assert record.socket_path(Path("/s"), None) == Path("/s/ollana.sock")
    assert record.record_paths(Path("/s"), Path("/r/x.pid")) == [Path("/s") / RECORD_FILE, Path("/r/x.pid.json")]


def test_who_may_use_the_control_socket() -> None:
    node_uid, node_gid = 998, 997
    assert may_control(0, frozenset({0}), node_uid, node_gid)  # root
    assert may_control(998, frozenset({100}), node_uid, node_gid)  # the node's own user
    assert may_control(1000, frozenset({1000, 997}), node_uid, node_gid)  # a member of its group
    assert not may_control(1000, frozenset({1000, 27}), node_uid, node_gid)
    assert not may_control(65534, frozenset({65534}), node_uid, node_gid)


def test_root_gives_files_in_another_users_dir_to_that_user() -> None:
    assert inherited_owner(0, (0, 0), (998, 997)) == (998, 997)
    assert inherited_owner(0, (998, 997), (998, 997)) is None  # already theirs
    assert inherited_owner(0, (0, 0), (0, 0)) is None  # root's own dir
    assert inherited_owner(1000, (1000, 1000), (998, 997)) is None  # only root can give files away


def test_doctor_reads_the_listeners_from_the_record() -> None:
    assert _listeners("client", ["127.0.0.1:11500"]) == (Endpoint("127.0.0.1", 11500), None)
    assert _listeners("server", ["0.0.0.0:11435"]) == (None, Endpoint("127.0.0.1", 11435))
    assert _listeners("both", ["127.0.0.1:11434", "[::]:11435"]) == (
        Endpoint("127.0.0.1", 11434), Endpoint("::1", 11435))
    assert _listeners("client", ["garbage"]) == (None, None)
