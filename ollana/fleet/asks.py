"""What a request asks of the fleet: which list, which model, which blob. Pure.

The path says what kind of request it is; for the routes whose JSON body names a model, the body
does. Reading the name must be cheap and must not hold bodies the proxy would not hold anyway:
it looks at the first bytes for a leading ``"model"`` key (how Ollama's own clients write it),
and parses the whole document only when the proxy keeps the body whole for replay.
"""

from __future__ import annotations

import enum
import json
import re
from dataclasses import dataclass
from typing import Any, Final

from ollana.fleet.names import model_key


class Kind(enum.Enum):
    OTHER = "other"  # no model: the home server (/api/version, unknown routes)
    TAGS = "tags"  # GET/HEAD /api/tags: answered from the merged view
    PS = "ps"  # GET/HEAD /api/ps: answered from the merged view
    MODELS = "models"  # GET/HEAD /v1/models: answered from the merged view
    INFER = "infer"  # uses (and loads) a model: generate, chat, embed, OpenAI routes
    SHOW = "show"  # reads a model: /api/show, GET /v1/models/:model
    MANAGE = "manage"  # pull, push, create, copy, delete
    BLOB = "blob"  # HEAD/POST /api/blobs/:digest


_INFER_PATHS: Final = frozenset({
    "/api/generate", "/api/chat", "/api/embed", "/api/embeddings",
    "/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/responses", "/v1/messages",
})
_MANAGE_PATHS: Final = frozenset({"/api/pull", "/api/push", "/api/create", "/api/copy", "/api/delete"})
_LISTS: Final = {"/api/tags": Kind.TAGS, "/api/ps": Kind.PS, "/v1/models": Kind.MODELS}
_BLOBS: Final = "/api/blobs/"
_V1_MODEL: Final = "/v1/models/"
# A document whose first key names the model: {"model": "llama3.2", ...}. Anchored, so a
# "model" key inside a nested object or a string can never match.
_LEADING_NAME: Final = re.compile(rb'\A\s*\{\s*"(model|name|source)"\s*:\s*"((?:[^"\\\x00-\x1f]|\\.){1,512})"')


@dataclass(frozen=True, slots=True)
class Ask:
    kind: Kind
    path: str = ""
    model: str = ""  # normalised key (names.model_key), "" when none was found
    digest: str = ""  # BLOB: the blob's digest, normalised (sha256-<hex>)
    blobs: tuple[str, ...] = ()  # /api/create: the digests its "files" and "adapters" name

    @property
    def body_names_model(self) -> bool:
        return self.kind in (Kind.INFER, Kind.SHOW, Kind.MANAGE) and not self.model


def classify(method: str, path: str) -> Ask:
    """What the method and path alone say."""
    if method in ("GET", "HEAD"):
        listed = _LISTS.get(path.rstrip("/") if len(path) > 1 else path)
        if listed is not None:
            return Ask(listed, path)
        if path.startswith(_V1_MODEL) and len(path) > len(_V1_MODEL):
            return Ask(Kind.SHOW, path, model_key(path[len(_V1_MODEL):]))
    if path.startswith(_BLOBS) and method in ("HEAD", "POST"):
        return Ask(Kind.BLOB, path, digest=blob_key(path[len(_BLOBS):]))
    if method == "POST" and path in _INFER_PATHS:
        return Ask(Kind.INFER, path)
    if path == "/api/show" and method == "POST":
        return Ask(Kind.SHOW, path)
    if path in _MANAGE_PATHS and method in ("POST", "DELETE"):
        return Ask(Kind.MANAGE, path)
    return Ask(Kind.OTHER, path)


def read_body(ask: Ask, data: bytes, *, whole: bool) -> Ask:
    """The model (and, for /api/create, the blobs) a request body names.

    ``data`` is the whole body when ``whole``, else its first bytes. A body that cannot be read
    (not JSON, compressed, cut short) names nothing: the request then goes where a request with
    no model goes, and the server answers it as Ollama would.
    """
    if ask.path == "/api/create" and whole:
        doc = _document(data)
        # The blobs a create uses: its model files and adapters (uploaded before, by digest).
        blobs = tuple(
            blob_key(str(d))
            for field in ("files", "adapters")
            if isinstance(doc.get(field), dict)
            for d in doc[field].values()
        )
        return Ask(ask.kind, ask.path, _name_in(doc, ask.path), blobs=blobs)
    match = _LEADING_NAME.match(data)
    if match is not None and _leads(match.group(1), ask.path, whole=whole):
        raw = match.group(2)
        try:
            # (A name with no escapes is its own text: no JSON decoding needed.)
            name = raw.decode() if b"\\" not in raw else json.loads(b'"' + raw + b'"')
        except ValueError:
            return ask
        return Ask(ask.kind, ask.path, model_key(name))
    if not whole:
        return ask
    return Ask(ask.kind, ask.path, _name_in(_document(data), ask.path))


def _leads(key: bytes, path: str, *, whole: bool) -> bool:
    """Whether a leading ``key`` names the model as Ollama reads the body: a copy's
    ``source``; else ``model``, or the older ``name`` unless the whole body is at hand (there a
    later ``model`` wins, as in Ollama)."""
    if path == "/api/copy":
        return key == b"source"
    return key == b"model" or (key == b"name" and not whole)


def _document(data: bytes) -> dict[str, Any]:
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError):  # not JSON or UTF-8 (ValueErrors), or nested too deep
        return {}
    return doc if isinstance(doc, dict) else {}


def _name_in(doc: dict[str, Any], path: str) -> str:
    keys = ("source",) if path == "/api/copy" else ("model", "name")
    for key in keys:
        value = doc.get(key)
        if isinstance(value, str) and value:
            return model_key(value)
    return ""


def blob_key(digest: str) -> str:
    """Ollama accepts ``sha256:x`` and ``sha256-x`` for the same blob."""
    return digest.strip().replace(":", "-", 1).casefold()
