"""A tiny per-key rate limiter for logs about bad input (time passed in)."""

from __future__ import annotations


class RateLimiter:
    """Allows one event per key per ``period`` seconds and counts what it suppressed."""

    def __init__(self, period: float, max_keys: int = 1024) -> None:
        self._period = period
        self._max_keys = max_keys
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def allow(self, key: str, now: float) -> tuple[bool, int]:
        """Returns (allowed, how many were suppressed since the last allowed one)."""
        last = self._last.get(key)
        if last is not None and now - last < self._period:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return False, 0
        if last is None and len(self._last) >= self._max_keys:
            # Bounded memory under a flood of distinct keys (spoofed sources).
            self._last.clear()
            self._suppressed.clear()
        self._last[key] = now
        return True, self._suppressed.pop(key, 0)

    def forget(self, key: str) -> None:
        """As if ``key`` was never seen: its next event is allowed."""
        self._last.pop(key, None)
        self._suppressed.pop(key, None)


class PerKeyAndTotal:
    """One event per key per ``period`` and, across all keys, one per ``gap`` seconds: a flood of
    distinct keys (hellos cycling certificates, forged device IDs) makes one line per ``gap``,
    each saying how many it stands for."""

    def __init__(self, period: float, gap: float, max_keys: int = 1024) -> None:
        self._each = RateLimiter(period, max_keys)
        self._all = RateLimiter(gap, 1)

    def allow(self, key: str, now: float) -> tuple[bool, int]:
        """Returns (allowed, how many were suppressed since the last allowed one, all keys)."""
        allowed, _ = self._each.allow(key, now)
        if not allowed:
            return False, 0
        return self._all.allow("", now)
