"""Model names as Ollama compares them. Pure.

``llama3.2``, ``llama3.2:latest``, ``library/llama3.2`` and
``registry.ollama.ai/library/llama3.2:latest`` name one model: each normalises to the same key.
Ollama matches names case-insensitively, so keys are case-folded.
"""

from __future__ import annotations

from typing import Final

DEFAULT_HOST: Final = "registry.ollama.ai"
DEFAULT_NAMESPACE: Final = "library"
DEFAULT_TAG: Final = "latest"


def model_key(name: str) -> str:
    """The comparison key of a model name (``host/namespace/model:tag``), or "" if empty."""
    name = name.strip().split("@", 1)[0]  # a pinned digest names the same model
    name = name.split("://", 1)[-1]  # Ollama's parser drops a scheme ("https://host/ns/m:tag")
    if not name:
        return ""
    path, colon, tag = name.rpartition(":")
    if not colon or "/" in tag:  # no tag ("llama3.2"), or the colon was a host's port
        path, tag = name, DEFAULT_TAG
    parts = path.split("/")
    if len(parts) == 1:
        parts = [DEFAULT_HOST, DEFAULT_NAMESPACE, parts[0]]
    elif len(parts) == 2:
        parts = [DEFAULT_HOST, *parts]
    return f"{'/'.join(parts)}:{tag or DEFAULT_TAG}".casefold()


def namespace_of(name: str) -> str:
    """The namespace Ollama reports as ``owned_by`` in ``/v1/models``."""
    key = model_key(name)
    return key.split("/")[-2] if key else ""  # host/namespace/model:tag; a host may hold "/"
