"""A fake Ollama server for ollana's tests, faithful to the real one on the wire."""

from __future__ import annotations

from .app import FakeOllama
from .catalog import Model
from .state import Knobs, RequestRecord

__all__ = ["FakeOllama", "Knobs", "Model", "RequestRecord"]
