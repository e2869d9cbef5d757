"""The connection limits' decisions, without sockets: deadlines by phase, the caps."""

from __future__ import annotations

from ollana.connlimits import (
    ConnCounts,
    ConnLimits,
    Phase,
    Refusal,
    Verdict,
    check,
    effective_total,
    is_loopback,
)

L = ConnLimits(head_timeout=10.0, idle_timeout=75.0, body_timeout=30.0, per_source=2, total=3)


def at(phase: Phase, now: float, **kw: object) -> tuple[Verdict | None, float | None]:
    args: dict[str, object] = {"head_since": 100.0, "last_byte": 100.0, "body_open": False, "reading_paused": False}
    args.update(kw)
    return check(phase, now, L, **args)  # type: ignore[arg-type]


def test_head_deadline_counts_from_its_start_whatever_arrives() -> None:
    assert at(Phase.HEAD, 105.0, last_byte=109.0) == (None, 110.0)
    assert at(Phase.HEAD, 110.0, last_byte=109.9) == (Verdict.HEAD_TIMEOUT, None)


def test_body_deadline_counts_from_the_last_byte() -> None:
    assert at(Phase.HANDLING, 125.0, last_byte=120.0, body_open=True) == (None, 150.0)
    assert at(Phase.HANDLING, 150.0, last_byte=120.0, body_open=True) == (Verdict.BODY_TIMEOUT, None)


def test_nothing_is_timed_once_the_body_is_complete_or_while_ollana_is_not_reading() -> None:
    # A long generation: the body is complete, the answer streams for hours.
    assert at(Phase.HANDLING, 1e6, body_open=False) == (None, None)
    # ollana paused reading (its upstream is slow to take the body): not the client's fault.
    assert at(Phase.HANDLING, 1e6, body_open=True, reading_paused=True) == (None, None)
    # Idle keep-alive connections are aiohttp's keep-alive timer's.
    assert at(Phase.IDLE, 1e6) == (None, None)


def test_caps_per_source_and_in_total() -> None:
    counts = ConnCounts(L, total=4, loopback_listener=False)
    assert counts.admit("10.0.0.1") is None
    assert counts.admit("10.0.0.1") is None
    assert counts.admit("10.0.0.1") is Refusal.PER_SOURCE
    assert counts.admit("10.0.0.2") is None
    assert counts.admit("10.0.0.2") is None
    assert counts.admit("10.0.0.3") is Refusal.TOTAL
    assert counts.count == 4
    counts.release("10.0.0.1")
    assert counts.held("10.0.0.1") == 1
    assert counts.admit("10.0.0.3") is None
    for source in ("10.0.0.1", "10.0.0.2", "10.0.0.2", "10.0.0.3"):
        counts.release(source)
    assert counts.count == 0 and counts.held("10.0.0.1") == 0 and counts.held("10.0.0.2") == 0


def test_one_source_gets_at_most_half_of_a_small_total() -> None:
    counts = ConnCounts(ConnLimits(per_source=512), total=effective_total(4096, 200), loopback_listener=False)
    admitted = [counts.admit("10.0.0.9") for _ in range(40)]
    assert admitted.count(None) == 17 and admitted[17] is Refusal.PER_SOURCE
    assert counts.admit("10.0.0.1") is None


def test_a_loopback_listener_caps_only_the_total() -> None:
    counts = ConnCounts(L, total=3, loopback_listener=True)
    assert [counts.admit("127.0.0.1") for _ in range(4)] == [None, None, None, Refusal.TOTAL]
    tests_cap_it = ConnCounts(ConnLimits(per_source=1, cap_loopback_sources=True), total=3, loopback_listener=True)
    assert [tests_cap_it.admit("127.0.0.1") for _ in range(2)] == [None, Refusal.PER_SOURCE]


def test_total_fits_the_descriptor_limit() -> None:
    assert effective_total(4096, 1_048_576) == 4096
    assert effective_total(4096, 20_000) == 4096
    assert effective_total(4096, 1024) == 240  # (1024 - 64) / 4
    assert effective_total(4096, 200) == 34
    assert effective_total(4096, 50) == 16
    assert effective_total(3, 1_048_576) == 3


def test_loopback_hosts() -> None:
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.2") and not is_loopback("::")
