"""Operations a test runs *inside* a lab host (``python -m tests.lab.clientops OP ...``).

Each prints one JSON object on stdout. Clocks: ``time.time()`` is shared by every namespace of
the machine, so stamps printed here compare with stamps taken by the test in the root namespace.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
import time
from typing import Any

import httpx

DEFAULT = "http://127.0.0.1:11434"


def _emit(obj: dict[str, Any]) -> None:
    print(json.dumps(obj), flush=True)


def official_suite(base: str) -> dict[str, Any]:
    """The official ollama client, unchanged and unconfigured, against 127.0.0.1:11434."""
    import ollama

    os.environ.pop("OLLAMA_HOST", None)
    client = ollama.Client()  # the default host: where every Ollama client looks
    out: dict[str, Any] = {}
    out["list"] = sorted(m.model for m in client.list().models)
    out["version"] = httpx.get(base + "/api/version").json()["version"]
    model = out["list"][0]
    chunks = [c.response for c in client.generate(model=model, prompt="hi", stream=True)]
    out["generate_chunks"] = len(chunks)
    out["generate_text"] = "".join(chunks)
    chat = client.chat(model=model, messages=[{"role": "user", "content": "hello"}])
    out["chat_role"] = chat.message.role
    out["chat_stream_chunks"] = sum(
        1 for _ in client.chat(model=model, messages=[{"role": "user", "content": "x"}], stream=True)
    )
    out["show_has_modelfile"] = bool(client.show(model).modelfile)
    emb = [m for m in out["list"] if "embed" in m] or out["list"]
    out["embed_dims"] = len(client.embed(model=emb[0], input="text").embeddings[0])
    out["pull_statuses"] = [p.status for p in client.pull("tinyllama:latest", stream=True)][-1:]
    with tempfile.NamedTemporaryFile(suffix=".gguf", delete=False) as f:
        f.write(b"GGUF" + os.urandom(3 * 1024 * 1024 + 13))  # create checks the GGUF magic
        path = f.name
    digest = client.create_blob(path)
    with open(path, "rb") as blob:
        out["blob_digest_ok"] = digest == "sha256:" + hashlib.sha256(blob.read()).hexdigest()
    os.unlink(path)
    created = client.create(model="mine:latest", files={"model.gguf": digest})
    out["create_status"] = created.status
    out["copy"] = client.copy("mine:latest", "mine-copy:latest").status
    out["delete"] = client.delete("mine-copy:latest").status
    out["list_after"] = sorted(m.model for m in client.list().models)
    try:
        client.show("does-not-exist:latest")
        out["missing_model_status"] = None
    except ollama.ResponseError as exc:
        out["missing_model_status"] = exc.status_code
    # An OpenAI-style SSE stream through the same port.
    events: list[str] = []
    with httpx.stream("POST", base + "/v1/chat/completions", timeout=30,
                      json={"model": model, "stream": True, "messages": [{"role": "user", "content": "x"}]}) as r:
        out["sse_type"] = r.headers.get("content-type", "")
        for line in r.iter_lines():
            if line.startswith("data: "):
                events.append(line[6:])
    out["sse_events"] = len(events)
    out["sse_done"] = events[-1] if events else None
    return out


SERVER_HEADER = "X-Ollana-Server"


def fleet_suite(base: str, models: list[str]) -> dict[str, Any]:
    """The official client against a fleet: the merged lists, a generation of each named model
    (and which server answered it, from the X-Ollana-Server header), blob upload and create."""
    import ollama

    os.environ.pop("OLLAMA_HOST", None)
    client = ollama.Client()  # the default host: where every Ollama client looks
    out: dict[str, Any] = {}
    out["list"] = sorted(m.model for m in client.list().models)
    out["ps"] = sorted(m.model for m in client.ps().models)
    generated: dict[str, Any] = {}
    with httpx.Client(base_url=base, timeout=30) as http:
        for model in models:
            parts = [c.response or "" for c in client.generate(model=model, prompt="hi", stream=True)]
            r = http.post("/api/generate", json={"model": model, "prompt": "hi", "stream": False})
            generated[model] = {"chunks": len(parts), "text": "".join(parts), "status": r.status_code,
                                "server": r.headers.get(SERVER_HEADER)}
        out["generate"] = generated
        # Blob and create as Ollama's CLI does them: HEAD (is it there?), upload, create.
        data = b"GGUF" + os.urandom(2 * 1024 * 1024 + 7)  # larger than a body kept for replay
        with tempfile.NamedTemporaryFile(suffix=".gguf", delete=False) as f:
            f.write(data)
            path = f.name
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        head = http.head(f"/api/blobs/{digest}")
        out["blob_head"] = [head.status_code, head.headers.get(SERVER_HEADER)]
        out["blob_digest_ok"] = client.create_blob(path) == digest
        os.unlink(path)
        head = http.head(f"/api/blobs/{digest}")
        out["blob_head_after"] = [head.status_code, head.headers.get(SERVER_HEADER)]
        out["create_status"] = client.create(model="fleet-made:latest", files={"model.gguf": digest}).status
        deadline = time.monotonic() + 10  # the server's catalogue changes, then the client's
        while "fleet-made:latest" not in (listed := [m.model for m in client.list().models]):
            if time.monotonic() > deadline:
                break
            time.sleep(0.05)
        out["list_after"] = sorted(listed)
        r = http.post("/api/generate", json={"model": "fleet-made", "prompt": "hi", "stream": False})
        out["made_generate"] = [r.status_code, r.headers.get(SERVER_HEADER)]
    return out


def timings(base: str, path: str, count: int) -> dict[str, Any]:
    """``count`` GETs of ``path`` on one kept-alive connection: each one's milliseconds."""
    out: list[float] = []
    with httpx.Client(base_url=base, timeout=10) as c:
        for _ in range(10):  # warm up: connection, caches
            c.get(path).raise_for_status()
        for _ in range(count):
            t0 = time.perf_counter()
            r = c.get(path)
            out.append((time.perf_counter() - t0) * 1000)
            r.raise_for_status()
    return {"ms": out}


def wait_models(base: str, models: list[str], timeout: float) -> dict[str, Any]:
    """Poll /api/tags until every named model is listed; report when (time.time())."""
    deadline = time.monotonic() + timeout
    listed: list[str] = []
    with httpx.Client(timeout=5) as c:
        _ready()
        while time.monotonic() < deadline:
            try:
                listed = [m["name"] for m in c.get(base + "/api/tags").json()["models"]]
                if all(m in listed for m in models):
                    return {"ok": True, "at": time.time(), "list": listed}
            except (httpx.HTTPError, ValueError, KeyError, TypeError):
                pass
            time.sleep(0.01)
    return {"ok": False, "at": time.time(), "list": listed}


def _ready() -> None:
    # Printed once imports and set-up are done, so a test can act after it and time only the
    # reaction, not this process's start-up.
    print("READY", flush=True)


def wait_ok(base: str, path: str, timeout: float) -> dict[str, Any]:
    """Poll until a request succeeds with 200; report when (time.time()) and the answer."""
    deadline = time.monotonic() + timeout
    last = ""
    with httpx.Client(timeout=5) as c:
        _ready()
        while time.monotonic() < deadline:
            try:
                r = c.get(base + path)
                if r.status_code == 200:
                    return {"ok": True, "at": time.time(), "body": r.text[:500]}
                last = f"{r.status_code} {r.text[:200]}"
            except httpx.HTTPError as exc:
                last = repr(exc)
            time.sleep(0.01)
    return {"ok": False, "at": time.time(), "last": last}


def poll(base: str, path: str, duration: float) -> dict[str, Any]:
    """Send requests back to back for ``duration`` seconds; report each one's start, end and status."""
    results: list[tuple[float, float, int]] = []
    with httpx.Client(timeout=5) as c:
        _ready()
        end = time.monotonic() + duration
        while time.monotonic() < end:
            t0 = time.time()
            try:
                code = c.get(base + path).status_code
            except httpx.HTTPError:
                code = 0
            results.append((t0, time.time(), code))
    return {"requests": results}


def start_and_wait(argv: list[str], base: str, path: str, timeout: float) -> dict[str, Any]:
    """Start ``argv`` (an ollana) and time its first successful proxied request from its start."""
    import subprocess

    t0 = time.time()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    result = wait_ok(base, path, timeout)
    result["started"] = t0
    result["elapsed"] = result["at"] - t0
    result["pid"] = proc.pid
    return result


def wait_peers(base: str, count: int, timeout: float, healthy: bool) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    body: dict[str, Any] = {}
    with httpx.Client(timeout=5) as c:
        _ready()
        while time.monotonic() < deadline:
            try:
                body = c.get(base + "/ollana/v1/status").json()
                peers = [p for p in body["peers"] if p["healthy"] or not healthy]
                if len(peers) == count:
                    return {"ok": True, "at": time.time(), "status": body}
            except (httpx.HTTPError, ValueError, KeyError):
                pass
            time.sleep(0.01)
    return {"ok": False, "at": time.time(), "status": body}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("op")
    p.add_argument("--base", default=DEFAULT)
    p.add_argument("--path", default="/api/version")
    p.add_argument("--timeout", type=float, default=10.0)
    p.add_argument("--count", type=int, default=1)
    p.add_argument("--healthy", action="store_true")
    p.add_argument("--model", action="append", default=[])
    args = sys.argv[1:]
    rest: list[str] = []
    if "--" in args:  # what follows "--" is a command line to start
        cut = args.index("--")
        args, rest = args[:cut], args[cut + 1 :]
    a = p.parse_args(args)
    a.argv = rest
    if a.op == "suite":
        _emit(official_suite(a.base))
    elif a.op == "wait-ok":
        _emit(wait_ok(a.base, a.path, a.timeout))
    elif a.op == "start-and-wait":
        _emit(start_and_wait(a.argv, a.base, a.path, a.timeout))
    elif a.op == "poll":
        _emit(poll(a.base, a.path, a.timeout))
    elif a.op == "wait-peers":
        _emit(wait_peers(a.base, a.count, a.timeout, a.healthy))
    elif a.op == "fleet":
        _emit(fleet_suite(a.base, a.model))
    elif a.op == "timings":
        _emit(timings(a.base, a.path, a.count))
    elif a.op == "wait-models":
        _emit(wait_models(a.base, a.model, a.timeout))
    else:
        sys.exit(f"unknown op {a.op}")


if __name__ == "__main__":
    main()
