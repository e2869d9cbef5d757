"""ollana's errors, named by meaning."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # (config imports this module)
    from ollana.config import Endpoint


class OllanaError(Exception):
    """Base of every error ollana raises on purpose."""


class ConfigError(OllanaError):
    """A bad option, environment value or state file: reported in one line, exit code 2."""


class StartupError(OllanaError):
    """ollana cannot start (port busy, no usable interface...): reported in one line, exit 1."""


class PortBusy(StartupError):
    """A listener's address is taken; ``app`` asks what holds it and says so (``portholder``)."""

    def __init__(self, endpoint: Endpoint, message: str) -> None:
        super().__init__(message)
        self.endpoint = endpoint


class UpstreamUnavailable(OllanaError):
    """The upstream (local Ollama, or a peer's proxy) could not be reached before any byte."""


def print_error(message: str) -> None:
    """How an error reaches the person at the terminal: one line on stderr, ``ollana: error: ...``."""
    print(f"ollana: error: {message}", file=sys.stderr, flush=True)
