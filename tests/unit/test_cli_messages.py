"""What the command line says when it is given nothing, or a value it must refuse: one line, exit 2."""

from __future__ import annotations

import sys

import pytest

from ollana.cli.main import main
from ollana.config import parse_ollama_host
from ollana.errors import ConfigError


def run(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "argv", ["ollana", *args])
    with pytest.raises(SystemExit) as exited:
        main()
    out, err = capsys.readouterr()
    code = exited.value.code
    return code if isinstance(code, int) else 0, out, err


@pytest.mark.parametrize("group", [[], ["device"], ["peer"]])
def test_a_group_alone_prints_its_usage_and_commands_and_exits_0(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], group: list[str],
) -> None:
    code, out, err = run(monkeypatch, capsys, *group)
    assert (code, err) == (0, "")
    path = " ".join(["ollana", *group])
    assert out.startswith(f"Usage: {path} [OPTIONS] COMMAND [ARGS]...")
    assert "Commands:" in out and f"See `{path} COMMAND --help`" in out
    if not group:
        assert all(f"\n  {c} " in out for c in ("serve", "status", "stop", "device", "peer", "doctor"))
        assert "Ollama apps on that machine" not in out  # the group's long help stays in --help


@pytest.mark.parametrize(("args", "said"), [
    (["--ollama", "http://127.0.0.1:99999"], "'--ollama': invalid Ollama URL 'http://127.0.0.1:99999': port 99999 is out of range (1-65535)"),
    (["--ollama", "127.0.0.1:abc"], "port 'abc' is not a number"),
    (["--ollama", "http://[::1]:0"], "port 0 is out of range"),
    (["--multicast-group", "224.0.0.999"], "invalid multicast group '224.0.0.999': not an IP address"),
    (["--multicast-group", "10.0.0.1"], "not an IPv4 multicast address"),
    (["--multicast-group6", "ff05::1"], "not of link-local scope"),
    (["--listen", "127.0.0.1:99999"], "invalid port '99999': must be 0-65535"),
    (["--lan-listen", "[::1]:65536"], "invalid port '65536'"),
    (["--peer", "10.0.0.1:0"], "port 0 is not a server's port"),
    (["--peer", "10.0.0.1:123456"], "invalid port '123456'"),
])
def test_serve_refuses_bad_addresses_in_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], args: list[str], said: str,
) -> None:
    monkeypatch.delenv("OLLAMA_HOST", raising=False)
    code, out, err = run(monkeypatch, capsys, "serve", "--no-discovery", *args)
    assert code == 2 and out == ""
    assert said in err
    assert err.count("\n") == 1, err


def test_ollama_host_keeps_ollamas_own_rule_for_a_bad_port() -> None:
    # Ollama itself reads OLLAMA_HOST=http://h:99999 as port 80, so the server it runs is there.
    assert parse_ollama_host("http://127.0.0.1:99999") == "http://127.0.0.1:80"
    with pytest.raises(ConfigError, match="out of range"):
        parse_ollama_host("http://127.0.0.1:99999", strict=True)
    assert parse_ollama_host("[fd77::2]:9000", strict=True) == "http://[fd77::2]:9000"
