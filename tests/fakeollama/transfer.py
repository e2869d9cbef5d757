"""Routes that move model data: pull, push, create, and the blob upload/check pair."""

from __future__ import annotations

import hashlib
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any, Final

from aiohttp import web

from . import wire
from .catalog import DIGEST_RE, Blob, InvalidName, Model, ModelName
from .gojson import Field, dumps
from .keys import bind, body_of, record_of
from .wire import Failure

if TYPE_CHECKING:
    from .app import FakeOllama

PULL_FIELDS: Final = {
    "model": Field("string", "string"),
    "name": Field("string", "string"),
    "insecure": Field("bool", "bool"),
    "stream": Field("bool", "bool"),
}
CREATE_FIELDS: Final = {
    **PULL_FIELDS,
    "from": Field("string", "string"),
    "files": Field("object", "map[string]string"),
    "adapters": Field("object", "map[string]string"),
    "template": Field("string", "string"),
    "system": Field("string", "string"),
    "license": Field("any", "interface {}"),
    "parameters": Field("object", "map[string]interface {}"),
    "messages": Field("array", "[]api.Message"),
    "quantize": Field("string", "string"),
}
_MANIFESTS: Final = "/root/.ollama/models/manifests"
_QUANTIZE_GGUF: Final = (
    "create-time quantization is only supported for safetensors imports; "
    "quantize GGUF models with llama.cpp tools before importing"
)
_PULL_STEPS: Final = 4  # progress lines for the weights layer


def _line(value: dict[str, Any]) -> bytes:
    return dumps(value) + b"\n"


def _small_layers(model: Model) -> list[tuple[str, int]]:
    seeds = ("template", "license", "params")
    return [
        (hashlib.sha256(f"{model.name}/{s}".encode()).hexdigest(), 100 + 37 * i)
        for i, s in enumerate(seeds)
    ]


def _valid_path(path: str) -> bool:
    # validateCreateFilePath: fs.ValidPath plus no backslash or colon.
    if path in ("", ".") or "\\" in path or ":" in path or path.startswith("/"):
        return False
    return all(part not in ("", ".", "..") for part in path.split("/"))


class Transfer:
    def __init__(self, fake: FakeOllama) -> None:
        self._fake = fake

    async def _progress(
        self, request: web.Request, req: dict[str, Any], lines: AsyncIterator[bytes | Failure]
    ) -> web.StreamResponse:
        """streamResponse, or waitForStream (last object, bare JSON) when stream is false."""
        knobs, record = self._fake.knobs, record_of(request)
        if req.get("stream", True) is not False:
            return await wire.run_stream(wire.ndjson_stream(request, knobs, record), lines)
        last = await wire.run_whole(request, knobs, record, lines)
        if isinstance(last, Failure):
            return last.response(wire.BARE_JSON)
        return wire.body_response(200, last, wire.BARE_JSON)

    # -- pull / push ----------------------------------------------------------------------------

    async def pull(self, request: web.Request) -> web.StreamResponse:
        req = await bind(request, "PullRequest", PULL_FIELDS)
        if isinstance(req, web.Response):
            return req
        label = req.get("model") or req.get("name") or ""
        try:
            name = ModelName.parse(label)
        except InvalidName:
            return wire.error_response(400, "invalid model name")
        return await self._progress(request, req, self._pull_lines(name))

    async def _pull_lines(self, name: ModelName) -> AsyncIterator[bytes | Failure]:
        model = self._fake.catalog.get(name.short) or Model.synthetic(name.short)
        yield _line({"status": "pulling manifest"})
        status = f"pulling {model.layer[:12]}"
        digest = f"sha256:{model.layer}"
        for step in range(_PULL_STEPS + 1):
            done = model.size * step // _PULL_STEPS
            item: dict[str, Any] = {"status": status, "digest": digest, "total": model.size}
            if done:
                item["completed"] = done
            yield _line(item)
        for layer, size in _small_layers(model):
            yield _line(
                {
                    "status": f"pulling {layer[:12]}",
                    "digest": f"sha256:{layer}",
                    "total": size,
                    "completed": size,
                }
            )
        yield _line({"status": "verifying sha256 digest"})
        yield _line({"status": "writing manifest"})
        if self._fake.catalog.get(name.short) is None:
            self._fake.catalog.add(model)
        yield _line({"status": "success"})

    async def push(self, request: web.Request) -> web.StreamResponse:
        req = await bind(request, "PushRequest", PULL_FIELDS)
        if isinstance(req, web.Response):
            return req
        label = req.get("model") or req.get("name") or ""
        if not label:
            return wire.error_response(400, "model is required")
        return await self._progress(request, req, self._push_lines(label))

    async def _push_lines(self, label: str) -> AsyncIterator[bytes | Failure]:
        yield _line({"status": "retrieving manifest"})
        model = self._fake.catalog.get(label)
        if model is None:
            yield _line({"status": "couldn't retrieve manifest"})
            try:
                name = ModelName.parse(label)
                path = f"{_MANIFESTS}/{name.host}/{name.namespace}/{name.model}/{name.tag}"
            except InvalidName:
                path = f"{_MANIFESTS}/{label}"
            yield Failure(500, f"open {path}: no such file or directory")
            return
        layers = [(model.layer, model.size), *_small_layers(model)]
        for layer, size in layers:
            yield _line(
                {
                    "status": f"pushing {layer[:12]}",
                    "digest": f"sha256:{layer}",
                    "total": size,
                    "completed": size,
                }
            )
        yield _line({"status": "pushing manifest"})
        yield _line({"status": "success"})

    # -- create -----------------------------------------------------------------------------------

    async def create(self, request: web.Request) -> web.StreamResponse:
        req = await bind(request, "CreateRequest", CREATE_FIELDS)
        if isinstance(req, web.Response):
            return req
        files: dict[str, Any] = req.get("files") or {}
        for path, digest in files.items():
            if not _valid_path(path):
                return wire.error_response(400, f"file path must be relative: {path}")
            if not isinstance(digest, str) or not digest:
                return wire.error_response(400, "invalid digest format")
            if not DIGEST_RE.match(digest):
                return wire.error_response(400, f"invalid digest for {path}: invalid digest format")
        if req.get("adapters"):
            return wire.error_response(400, "LoRA adapters are no longer supported")
        label = req.get("model") or req.get("name") or ""
        try:
            name = ModelName.parse(label)
        except InvalidName:
            return wire.error_response(400, "invalid model name")
        kind = self._file_kind(files)
        if isinstance(kind, Failure):
            return kind.response()
        if req.get("quantize") and (kind == "gguf" or (not kind and req.get("from"))):
            return wire.error_response(400, _QUANTIZE_GGUF)
        return await self._progress(request, req, self._create_lines(name, req, files, kind))

    def _file_kind(self, files: dict[str, str]) -> str | Failure:
        """detectModelTypeFromFiles: by extension, else by the blob's GGUF magic."""
        found = ""
        for path in sorted(files):
            digest = files[path]
            if path.endswith(".safetensors"):
                kind = "safetensors"
            elif path.endswith(".gguf"):
                kind = "gguf"
            else:
                blob = self._fake.catalog.blobs.get(self._fake.catalog.blob_key(digest))
                if blob is None:
                    where = self._fake.catalog.blob_path(digest)
                    missing = f"open {where}: no such file or directory"
                    return Failure(400, f"blob not found for {path} (digest {digest}): {missing}")
                kind = "gguf" if blob.magic in (b"GGUF", b"FUGG") else ""
            if kind and found and kind != found:
                return Failure(400, f"mixed model file types: found both {found} and {kind} inputs")
            found = kind or found
        return found

    async def _create_lines(
        self, name: ModelName, req: dict[str, Any], files: dict[str, str], kind: str
    ) -> AsyncIterator[bytes | Failure]:
        catalog = self._fake.catalog
        source = req.get("from") or ""
        if source:
            base = catalog.get(source)
            if base is None:  # parseFromModel pulls a missing base model first
                try:
                    base_name = ModelName.parse(source)
                except InvalidName:
                    yield Failure(400, "invalid model name")
                    return
                async for line in self._pull_lines(base_name):
                    yield line
                base = catalog.get(source)
            assert base is not None
            layers = [(base.layer, base.size), *_small_layers(base)]
            size = base.size
        elif kind == "gguf":
            layers, size = [], 0
            for path in sorted(files):
                yield _line({"status": "parsing GGUF"})
                blob = catalog.blobs.get(catalog.blob_key(files[path]))
                if blob is None:
                    yield Failure(
                        500, f"open {catalog.blob_path(files[path])}: no such file or directory"
                    )
                    return
                if blob.magic not in (b"GGUF", b"FUGG"):
                    yield Failure(500, "invalid file magic")
                    return
                layers.append((files[path][len("sha256:") :], blob.size))
                size += blob.size
            base = None
        elif files:
            reason = "supplied file was not in GGUF format" if kind else "unknown type"
            yield Failure(400, reason)
            return
        else:
            yield Failure(400, "neither 'from' or 'files' was specified")
            return
        for layer, _ in layers:
            yield _line({"status": f"using existing layer sha256:{layer}"})
        overrides = {
            k: req[k]
            for k in ("template", "system", "license", "parameters", "messages")
            if req.get(k)
        }
        for value in overrides.values():
            digest = hashlib.sha256(dumps(value)).hexdigest()
            yield _line({"status": f"creating new layer sha256:{digest}"})
        yield _line({"status": "writing manifest"})
        fields: dict[str, Any] = {
            "size": size or 1,
            "layer": layers[0][0],
            "modified_ns": time.time_ns(),
        }
        if base is not None:
            fields.update(
                family=base.family, capabilities=base.capabilities, parent_model=base.name
            )
        if isinstance(req.get("template"), str):
            fields["template"] = req["template"]
        if isinstance(req.get("system"), str):
            fields["system"] = req["system"]
        catalog.add(Model.synthetic(name.short, **fields))
        yield _line({"status": "success"})

    # -- blobs ------------------------------------------------------------------------------------

    async def head_blob(self, request: web.Request) -> web.StreamResponse:
        digest = request.match_info["digest"]
        if not DIGEST_RE.match(digest):
            return wire.error_response(400, "invalid digest format")
        if self._fake.catalog.blob_key(digest) not in self._fake.catalog.blobs:
            return wire.error_response(404, f"blob {_quote(digest)} not found")
        return wire.empty_response(200)

    async def create_blob(self, request: web.Request) -> web.StreamResponse:
        digest = request.match_info["digest"]
        if not DIGEST_RE.match(digest):
            return wire.error_response(400, "invalid digest format")
        catalog = self._fake.catalog
        if catalog.blob_key(digest) in catalog.blobs:
            # Answered without reading the body; net/http then decides about the rest.
            return wire.empty_response(200)
        hasher, size, magic = hashlib.sha256(), 0, b""
        async for chunk in body_of(request).chunks():
            hasher.update(chunk)
            if len(magic) < 4:
                magic = (magic + chunk)[:4]
            size += len(chunk)
        got = f"sha256:{hasher.hexdigest()}"
        if got != digest:
            return wire.error_response(
                400, f"digest mismatch, expected {_quote(digest)}, got {_quote(got)}"
            )
        catalog.blobs[catalog.blob_key(digest)] = Blob(size, magic)
        return wire.empty_response(201)


def _quote(text: str) -> str:
    return '"' + text + '"'
