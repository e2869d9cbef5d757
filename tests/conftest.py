"""Project-wide test helpers: measured figures are collected and printed at the end of the run."""

from __future__ import annotations

from collections.abc import Callable

import pytest

_FIGURES = pytest.StashKey[list[tuple[str, str]]]()


def pytest_configure(config: pytest.Config) -> None:
    config.stash[_FIGURES] = []


@pytest.fixture
def figure(request: pytest.FixtureRequest) -> Callable[[str, float, str], None]:
    """Record a measured number (e.g. a latency the issue sets a bound on) for the summary."""
    store = request.config.stash[_FIGURES]

    def record(name: str, value: float, unit: str = "s") -> None:
        store.append((name, f"{value:.3f} {unit}"))

    return record


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    figures = config.stash.get(_FIGURES, [])
    if figures:
        terminalreporter.section("measured figures")
        for name, value in figures:
            terminalreporter.write_line(f"{name}: {value}")
