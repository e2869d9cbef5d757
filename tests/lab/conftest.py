"""Fixtures for tests that run on the namespace LAN (see ``netns.py`` and ``lab.md``)."""

from __future__ import annotations

import os
from collections.abc import Generator, Iterator
from typing import NoReturn

import pytest

from tests.lab.netns import (
    Lab,
    LabUnavailable,
    cleanup_stale_log_dirs,
    cleanup_stale_namespaces,
    raise_neighbour_limits,
    unavailable_reason,
)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "lab: runs on the network-namespace LAN (needs root, ip)")


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}


def _unavailable(reason: str) -> NoReturn:
    # CI is where the lab must run; a silent skip there would hide a broken setup.
    if _in_ci():
        pytest.fail(f"namespace lab unavailable on CI: {reason}", pytrace=False)
    pytest.skip(f"namespace lab unavailable: {reason}")


@pytest.fixture(scope="session")
def _lab_ready() -> None:
    """Check the machine once per session, clear namespaces of killed earlier runs and make the
    kernel's shared neighbour table big enough for the largest lab."""
    reason = unavailable_reason()
    if reason is not None:
        _unavailable(reason)
    try:
        cleanup_stale_namespaces()
    except Exception as exc:  # noqa: BLE001 - whatever fails, the lab is unavailable: skip with why
        _unavailable(f"cannot list network namespaces: {exc}")
    cleanup_stale_log_dirs()
    raise_neighbour_limits()


@pytest.fixture
def lab(_lab_ready: None) -> Iterator[Lab]:
    """An empty LAN; add machines with ``lab.add_host(name)``. Torn down even on failure."""
    try:
        new_lab = Lab()
    except LabUnavailable as exc:
        _unavailable(str(exc))
    with new_lab:
        yield new_lab


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    # While the report is made the lab is still open, so its logs are readable; a
    # report section is printed with the failure, unlike output from teardown.
    report = yield
    if report.failed and report.when in ("call", "setup"):
        lab = getattr(item, "funcargs", {}).get("lab")
        if isinstance(lab, Lab) and not lab.closed:
            report.sections.append(("lab logs (tails)", lab.log_tails()))
    return report
