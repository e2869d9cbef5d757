"""The client listener's copy of Ollama's allowed-hosts rule (DNS rebinding guard)."""

from __future__ import annotations

import pytest

from ollana.proxy.hostcheck import allowed, host_of, is_loopback

OWN = frozenset({"10.77.0.5", "203.0.113.7", "fe80::1"})


@pytest.mark.parametrize("host", [
    "", "localhost", "localhost:11434", "127.0.0.1:11434", "[::1]:11434", "0.0.0.0", "[::]",
    "10.1.2.3", "192.168.1.20:11434", "172.16.0.1", "[fd00::5]:11434",  # private and ULA
    "203.0.113.7:11434",  # a public address of this machine's own interfaces
    "MyBox", "mybox:11434",  # this machine's host name, case-insensitively
    "printer.local", "app.localhost:3000", "svc.internal",
])
def test_what_ollama_lets_in(host: str) -> None:
    assert allowed(host, "mybox", OWN)


@pytest.mark.parametrize("host", [
    "rebind.attacker.example", "rebind.attacker.example:11434", "box.lan", "box.home.arpa",
    "ollama.example.com", "8.8.8.8", "[2001:db8::1]:11434", "mybox.evil.com", "localhost.evil.com",
])
def test_what_ollama_refuses(host: str) -> None:
    assert not allowed(host, "mybox", OWN)


def test_host_of_strips_port_and_brackets() -> None:
    assert host_of("[::1]:11434") == "::1"
    assert host_of("a.b:1") == "a.b"
    assert host_of("::1") == "::1"
    assert is_loopback("127.0.0.1") and is_loopback("::1") and not is_loopback("0.0.0.0")
