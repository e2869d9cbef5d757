"""The fake's models, blobs and loaded runners, and the JSON shapes Ollama reports them in."""

from __future__ import annotations

import dataclasses
import hashlib
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Final

from .gojson import go_time

DEFAULT_HOST: Final = "registry.ollama.ai"
DEFAULT_NAMESPACE: Final = "library"
BLOBS_DIR: Final = "/root/.ollama/models/blobs"
DIGEST_RE: Final = re.compile(r"^sha256[:-][0-9a-fA-F]{64}$")
_PART_RE: Final = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,79}$")
_HOST_RE: Final = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.:-]{0,349}$")

_LLAMA_TEMPLATE: Final = (
    "<|start_header_id|>system<|end_header_id|>\n\n{{ .System }}<|eot_id|>"
    "{{ range .Messages }}<|start_header_id|>{{ .Role }}<|end_header_id|>\n\n"
    "{{ .Content }}<|eot_id|>{{ end }}<|start_header_id|>assistant<|end_header_id|>\n\n"
)
_LICENSE: Final = (
    "LLAMA 3.2 COMMUNITY LICENSE AGREEMENT\nLlama 3.2 Version Release Date: September 25, 2024\n\n"
    + (
        "\u201cAgreement\u201d means the terms and conditions for use, reproduction, distribution "
        "and modification of the Llama Materials set forth herein.\n"
    )
    * 8
)


class InvalidName(ValueError):
    """A model name model.ParseName would not accept."""


@dataclass(frozen=True, slots=True)
class ModelName:
    host: str
    namespace: str
    model: str
    tag: str

    @classmethod
    def parse(cls, text: str) -> ModelName:
        """model.ParseName with defaults: [host/][namespace/]model[:tag]."""
        rest, tag = text, "latest"
        slash = rest.rfind("/")
        colon = rest.rfind(":")
        if colon > slash:
            rest, tag = rest[:colon], rest[colon + 1 :]
        parts = rest.split("/")
        if len(parts) > 3 or not parts[-1]:
            raise InvalidName(text)
        host = parts[-3] if len(parts) == 3 else DEFAULT_HOST
        namespace = parts[-2] if len(parts) >= 2 else DEFAULT_NAMESPACE
        name = cls(host, namespace, parts[-1], tag)
        if not (
            _HOST_RE.match(host)
            and _PART_RE.match(namespace)
            and _PART_RE.match(name.model)
            and _PART_RE.match(tag)
        ):
            raise InvalidName(text)
        return name

    @property
    def key(self) -> str:
        # Ollama matches names case-insensitively (getExistingName).
        return f"{self.host}/{self.namespace}/{self.model}:{self.tag}".lower()

    @property
    def short(self) -> str:
        """DisplayShortest: default host and namespace dropped, tag kept."""
        if self.host == DEFAULT_HOST and self.namespace == DEFAULT_NAMESPACE:
            return f"{self.model}:{self.tag}"
        if self.host == DEFAULT_HOST:
            return f"{self.namespace}/{self.model}:{self.tag}"
        return f"{self.host}/{self.namespace}/{self.model}:{self.tag}"


@dataclass(slots=True)
class Model:
    name: str  # as DisplayShortest, e.g. "llama3.2:1b"
    digest: str  # manifest digest, 64 hex chars
    size: int
    family: str = "llama"
    parameter_size: str = "1.2B"
    quantization_level: str = "Q8_0"
    capabilities: tuple[str, ...] = ("completion", "tools")
    context_length: int = 131072
    embedding_length: int = 2048
    template: str = _LLAMA_TEMPLATE
    system: str = ""
    parent_model: str = ""
    license: str = _LICENSE
    layer: str = ""  # digest of the model weights blob
    modified_ns: int = field(default_factory=time.time_ns)

    @classmethod
    def synthetic(cls, name: str, **overrides: Any) -> Model:
        """A plausible llama-family model whose digests derive from its name."""
        short = ModelName.parse(name).short
        seed = hashlib.sha256(short.encode()).hexdigest()
        base: dict[str, Any] = {
            "name": short,
            "digest": seed,
            "size": 1_000_000_000 + int(seed[:6], 16),
            "layer": hashlib.sha256(seed.encode()).hexdigest(),
        }
        return cls(**{**base, **overrides})

    def details(self) -> dict[str, Any]:
        return {
            "parent_model": self.parent_model,
            "format": "gguf",
            "family": self.family,
            "families": [self.family],
            "parameter_size": self.parameter_size,
            "quantization_level": self.quantization_level,
        }

    def tags_entry(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "model": self.name,
            "modified_at": go_time(self.modified_ns),
            "size": self.size,
            "digest": self.digest,
            "details": self.details(),
        }


def default_models() -> list[Model]:
    return [
        Model(
            name="llama3.2:1b",
            digest="baf6a787fdffd633537aa2eb51cfd54cb93ff08e28040095462bb63daf552878",
            size=1321098329,
            layer="74701a8c35f6c8d9a4b91f3f3497643001d63e0c7a84e085bed452548fa88d45",
        ),
        Model(
            name="nomic-embed-text:latest",
            digest="0a109f422b47e3a30ba2b10eca18548e944e8a23073ee3f3e947efcf3c45e59f",
            size=274302450,
            family="nomic-bert",
            parameter_size="137M",
            quantization_level="F16",
            capabilities=("embedding",),
            context_length=2048,
            embedding_length=768,
            template="{{ .Prompt }}",
            license="Apache License\nVersion 2.0, January 2004\n",
            layer="970aa74c0a90ef7482477cf803618e776e173c007bf957f635f1015bfcfef0e6",
        ),
    ]


@dataclass(slots=True)
class Blob:
    size: int
    magic: bytes  # first 4 bytes, enough for create's GGUF detection


class Catalog:
    """Models by case-folded full name, uploaded blobs by path-style digest, loaded runners."""

    def __init__(self, models: Iterable[Model]) -> None:
        self.models: dict[str, Model] = {}
        self.blobs: dict[str, Blob] = {}
        self.loaded: dict[str, int] = {}  # model key -> expires_at (ns since epoch)
        for model in models:
            self.add(model)

    def add(self, model: Model) -> Model:
        self.models[ModelName.parse(model.name).key] = model
        return model

    def get(self, name: str) -> Model | None:
        try:
            return self.models.get(ModelName.parse(name).key)
        except InvalidName:
            return None

    def remove(self, name: str) -> bool:
        key = ModelName.parse(name).key
        self.loaded.pop(key, None)
        return self.models.pop(key, None) is not None

    def copy(self, source: Model, destination: str) -> Model:
        clone = dataclasses.replace(
            source, name=ModelName.parse(destination).short, modified_ns=time.time_ns()
        )
        return self.add(clone)

    def listed(self) -> list[Model]:
        return sorted(self.models.values(), key=lambda m: m.modified_ns // 10**9, reverse=True)

    def load(self, model: Model, keep_alive: float, now_ns: int) -> None:
        key = ModelName.parse(model.name).key
        if keep_alive == 0:
            self.loaded.pop(key, None)
        else:
            forever = 10**9 * 3600 * 24 * 365 * 200
            span = forever if keep_alive == float("inf") else int(keep_alive * 10**9)
            self.loaded[key] = now_ns + span

    def is_loaded(self, model: Model, now_ns: int) -> bool:
        return self.loaded.get(ModelName.parse(model.name).key, 0) > now_ns

    def running(self, now_ns: int) -> list[tuple[Model, int]]:
        alive = [(self.models[k], exp) for k, exp in self.loaded.items() if k in self.models]
        alive = [(m, exp) for m, exp in alive if exp > now_ns]
        return sorted(alive, key=lambda pair: pair[1], reverse=True)

    @staticmethod
    def blob_key(digest: str) -> str:
        """manifest.BlobsPath maps "sha256:x" and "sha256-x" to the same file."""
        return digest.replace(":", "-", 1)

    def blob_path(self, digest: str) -> str:
        return f"{BLOBS_DIR}/{self.blob_key(digest)}"
