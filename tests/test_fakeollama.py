"""The fake Ollama is faithful where ollana's tests rely on it: checked with the official client
and with raw HTTP. Real sockets on 127.0.0.1, port 0; waits are on events, never sleeps."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal
import sys
from collections.abc import AsyncIterator, Mapping
from pathlib import Path

import aiohttp
import httpx
import ollama
import pytest

from tests.fakeollama import FakeOllama
from tests.fakeollama.hosts import HostVerdict, check_host, split_host_port

REPO = Path(__file__).resolve().parent.parent
TIMEOUT = aiohttp.ClientTimeout(total=10)


@pytest.fixture
def fake() -> FakeOllama:
    return FakeOllama(hostname="testbox")


@pytest.fixture
async def url(fake: FakeOllama) -> AsyncIterator[str]:
    async with fake.serve() as base:
        yield base


@pytest.fixture
async def client(url: str) -> AsyncIterator[ollama.AsyncClient]:
    async with ollama.AsyncClient(host=url) as c:
        yield c


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=TIMEOUT) as session:
        yield session


def gguf_file(tmp_path: Path, size: int = 70_000) -> Path:
    path = tmp_path / "model.gguf"
    path.write_bytes(b"GGUF" + os.urandom(size - 4))
    return path


# -- the official client -------------------------------------------------------------------------


async def test_list_ps_show_and_version(
    client: ollama.AsyncClient, http: aiohttp.ClientSession, url: str
) -> None:
    listed = await client.list()
    assert [m.model for m in listed.models] == ["llama3.2:1b", "nomic-embed-text:latest"]
    assert listed.models[0].details and listed.models[0].details.family == "llama"
    assert (await client.ps()).models == []

    shown = await client.show("llama3.2:1b")
    assert shown.capabilities == ["completion", "tools"]
    assert shown.modelinfo and shown.modelinfo["general.architecture"] == "llama"
    assert shown.modelfile and "FROM /root/.ollama/models/blobs/sha256-" in shown.modelfile

    async with http.get(f"{url}/api/version") as resp:
        assert resp.headers["Content-Type"] == "application/json; charset=utf-8"
        assert await resp.json() == {"version": "0.33.0"}

    await client.generate("llama3.2:1b", "")  # preload: shows up in ps
    assert [m.model for m in (await client.ps()).models] == ["llama3.2:1b"]


async def test_generate_stream_and_whole(client: ollama.AsyncClient, fake: FakeOllama) -> None:
    parts = [
        p async for p in await client.generate("llama3.2:1b", "why is the sky blue?", stream=True)
    ]
    assert len(parts) == fake.knobs.tokens + 1
    assert not any(p.done for p in parts[:-1])
    final = parts[-1]
    assert final.done and final.done_reason == "stop" and final.response == ""
    assert final.context and all(isinstance(t, int) for t in final.context)
    assert final.eval_count == fake.knobs.tokens and final.total_duration

    whole = await client.generate("llama3.2:1b", "why is the sky blue?")
    assert whole.done and whole.response == "".join(p.response or "" for p in parts)


async def test_preload_and_unload(client: ollama.AsyncClient) -> None:
    loaded = await client.generate("llama3.2:1b", "", stream=True)
    # An empty prompt answers with one plain object even when streaming was asked for.
    parts = [p async for p in loaded]
    assert [(p.done, p.done_reason) for p in parts] == [(True, "load")]
    unloaded = await client.chat("llama3.2:1b", [], keep_alive=0)
    assert unloaded.done_reason == "unload"


async def test_chat_stream(client: ollama.AsyncClient, fake: FakeOllama) -> None:
    fake.configure(tokens=3)
    stream = await client.chat("llama3.2:1b", [{"role": "user", "content": "hi"}], stream=True)
    parts = [p async for p in stream]
    assert [p.message.content for p in parts] == ["The", " sky", " looks", ""]
    assert parts[-1].done and parts[-1].message.role == "assistant"


async def test_embed_and_embeddings(client: ollama.AsyncClient) -> None:
    embedded = await client.embed("nomic-embed-text", ["a", "b"])
    assert len(embedded.embeddings) == 2 and len(embedded.embeddings[0]) == 768
    legacy = await client.embeddings("nomic-embed-text", "a")
    assert len(legacy.embedding) == 768


async def test_pull_push(client: ollama.AsyncClient) -> None:
    statuses = [p.status async for p in await client.pull("qwen3:0.6b", stream=True)]
    assert statuses[0] == "pulling manifest" and statuses[-1] == "success"
    assert "qwen3:0.6b" in [m.model for m in (await client.list()).models]
    assert (await client.pull("qwen3:0.6b")).status == "success"

    pushed = [p.status async for p in await client.push("qwen3:0.6b", stream=True)]
    assert pushed[-1] == "success"
    # A missing model fails after the first progress line, as an {"error"} line in a 200.
    with pytest.raises(ollama.ResponseError, match="no such file or directory"):
        _ = [p async for p in await client.push("nothere", stream=True)]


async def test_blob_and_create(
    client: ollama.AsyncClient, http: aiohttp.ClientSession, url: str, tmp_path: Path
) -> None:
    path = gguf_file(tmp_path)
    digest = await client.create_blob(path)
    assert digest == "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()
    async with http.head(f"{url}/api/blobs/{digest}") as resp:
        assert resp.status == 200
    async with http.head(f"{url}/api/blobs/sha256:{'0' * 64}") as resp:
        assert resp.status == 404

    statuses = [
        p.status
        async for p in await client.create("mine", files={"model.gguf": digest}, stream=True)
    ]
    assert statuses == [
        "parsing GGUF",
        f"using existing layer {digest}",
        "writing manifest",
        "success",
    ]
    derived = await client.create("mine2", from_="llama3.2:1b", system="be brief")
    assert derived.status == "success"
    names = [m.model for m in (await client.list()).models]
    assert {"mine:latest", "mine2:latest"} <= set(names)

    with pytest.raises(ollama.ResponseError) as missing:
        await client.create("bad", files={"w": "sha256:" + "1" * 64})
    assert missing.value.status_code == 400 and "blob not found" in missing.value.error


async def test_copy_and_delete(client: ollama.AsyncClient) -> None:
    assert (await client.copy("llama3.2:1b", "copied")).status == "success"
    assert (await client.delete("copied")).status == "success"
    with pytest.raises(ollama.ResponseError) as gone:
        await client.delete("copied")
    assert gone.value.status_code == 404 and gone.value.error == "model 'copied' not found"
    with pytest.raises(ollama.ResponseError) as nosrc:
        await client.copy("nothere", "x")
    assert nosrc.value.status_code == 404 and nosrc.value.error == 'model "nothere" not found'


@pytest.mark.parametrize(
    ("call", "status", "error"),
    [
        (lambda c: c.generate("nothere", "hi"), 404, "model 'nothere' not found"),
        (
            lambda c: c.chat("nothere", [{"role": "user", "content": "hi"}]),
            404,
            "model 'nothere' not found",
        ),
        (lambda c: c.show("nothere"), 404, "model 'nothere' not found"),
        (lambda c: c.embed("nothere", "x"), 404, "model 'nothere' not found"),
        (
            lambda c: c.generate("nomic-embed-text", "hi"),
            400,
            '"nomic-embed-text" does not support generate',
        ),
    ],
)
async def test_errors(client: ollama.AsyncClient, call, status: int, error: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ollama.ResponseError) as raised:
        await call(client)
    assert (raised.value.status_code, raised.value.error) == (status, error)


async def test_bad_bodies(http: aiohttp.ClientSession, url: str) -> None:
    cases = [
        (b"", "missing request body"),
        (b"{", "unexpected EOF"),
        (b"abc", "invalid character 'a' looking for beginning of value"),
        (
            b'{"model": 5}',
            "json: cannot unmarshal number into Go struct field ChatRequest.model of type string",
        ),
        (b'{"messages": []}', "model is required"),
        (b'{"model": "x", "keep_alive": "soon"}', 'time: invalid duration "soon"'),
    ]
    for body, error in cases:
        async with http.post(f"{url}/api/chat", data=body) as resp:
            assert resp.status == 400
            assert resp.headers["Content-Type"] == "application/json; charset=utf-8"
            assert await resp.json() == {"error": error}


# -- framing ---------------------------------------------------------------------------------------


async def test_large_json_is_chunked_small_is_not(http: aiohttp.ClientSession, url: str) -> None:
    async with http.post(f"{url}/api/show", json={"model": "llama3.2:1b"}) as resp:
        body = await resp.read()
        assert len(body) > 2048
        assert "Content-Length" not in resp.headers
        assert resp.headers["Transfer-Encoding"] == "chunked"
    async with http.get(f"{url}/api/tags") as resp:
        body = await resp.read()
        assert len(body) <= 2048 and resp.headers["Content-Length"] == str(len(body))
        assert "Server" not in resp.headers


async def test_stream_headers_and_one_chunk_per_line(http: aiohttp.ClientSession, url: str) -> None:
    async with http.post(
        f"{url}/api/generate", json={"model": "llama3.2:1b", "prompt": "x"}
    ) as resp:
        assert resp.headers["Content-Type"] == "application/x-ndjson"
        assert resp.headers["Transfer-Encoding"] == "chunked"
        chunks = [data async for data, _ in resp.content.iter_chunks()]
    assert all(c.endswith(b"\n") and c.count(b"\n") == 1 for c in chunks)


async def test_split_chunks(http: aiohttp.ClientSession, url: str, fake: FakeOllama) -> None:
    fake.configure(split_chunks=True, tokens=4)
    async with http.post(
        f"{url}/api/chat",
        json={"model": "llama3.2:1b", "messages": [{"role": "user", "content": "x"}]},
    ) as resp:
        chunks = [data async for data, _ in resp.content.iter_chunks()]
    assert any(not c.endswith(b"\n") for c in chunks)
    lines = b"".join(chunks).splitlines()
    assert len(lines) == 5 and json.loads(lines[-1])["done"] is True


async def test_error_after(
    client: ollama.AsyncClient, fake: FakeOllama, http: aiohttp.ClientSession, url: str
) -> None:
    fake.configure(error_after=3)
    seen = []
    with pytest.raises(ollama.ResponseError, match="unexpected EOF"):
        async for part in await client.generate("llama3.2:1b", "x", stream=True):
            seen.append(part)
    assert len(seen) == 3
    async with http.post(
        f"{url}/api/generate", json={"model": "llama3.2:1b", "prompt": "x"}
    ) as resp:
        assert resp.status == 200
        lines = (await resp.read()).splitlines()
    assert json.loads(lines[-1]) == {"error": fake.knobs.error_message} and len(lines) == 4

    fake.configure(error_after=0)  # nothing written yet: the real status goes out
    async with http.post(
        f"{url}/api/generate", json={"model": "llama3.2:1b", "prompt": "x"}
    ) as resp:
        assert resp.status == 500 and resp.headers["Content-Type"] == "application/json"
        assert await resp.json() == {"error": fake.knobs.error_message}


async def test_die_after_truncates(
    http: aiohttp.ClientSession, url: str, fake: FakeOllama, client: ollama.AsyncClient
) -> None:
    fake.configure(die_after=2)
    got = []
    with pytest.raises(aiohttp.ClientPayloadError):
        async with http.post(
            f"{url}/api/generate", json={"model": "llama3.2:1b", "prompt": "x"}
        ) as resp:
            async for line in resp.content:
                got.append(line)
    assert len(got) == 2
    with pytest.raises(httpx.RemoteProtocolError):
        _ = [
            p
            async for p in await client.chat(
                "llama3.2:1b", [{"role": "user", "content": "x"}], stream=True
            )
        ]
    records = await fake.wait_for(
        lambda rs: rs if len(rs) == 2 and all(r.finished_at for r in rs) else None
    )
    assert all(r.aborted and not r.disconnected and not r.completed for r in records)


async def test_disconnect_is_recorded(
    http: aiohttp.ClientSession, url: str, fake: FakeOllama
) -> None:
    fake.configure(first_byte_delay=60)  # a model load that never ends
    call = asyncio.create_task(
        http.post(f"{url}/api/generate", json={"model": "llama3.2:1b", "prompt": "x"})
    )
    await fake.wait_for_requests(1)
    call.cancel()  # the client gives up: its connection closes
    with pytest.raises(asyncio.CancelledError):
        await call
    record = await fake.wait_for_disconnect(timeout=5)
    assert record.path == "/api/generate" and record.status is None and not record.completed


async def test_disconnect_mid_stream_is_recorded(
    http: aiohttp.ClientSession, url: str, fake: FakeOllama
) -> None:
    fake.configure(chunk_delay=60)
    body = {"model": "llama3.2:1b", "prompt": "x"}
    async with http.post(f"{url}/api/generate", json=body) as resp:
        first = await resp.content.readline()
        assert json.loads(first)["response"] == "The"
        resp.close()  # drop the connection with the stream unfinished
    record = await fake.wait_for_disconnect(timeout=5)
    assert record.status == 200 and not record.completed


async def test_first_byte_delay_holds_headers(
    http: aiohttp.ClientSession, url: str, fake: FakeOllama
) -> None:
    fake.configure(first_byte_delay=0.2)
    loop = asyncio.get_running_loop()
    start = loop.time()
    async with http.post(
        f"{url}/api/chat",
        json={"model": "llama3.2:1b", "messages": [{"role": "user", "content": "x"}]},
    ) as resp:
        assert loop.time() - start >= 0.2
        await resp.read()


async def test_openai_routes(http: aiohttp.ClientSession, url: str) -> None:
    body = {"model": "llama3.2:1b", "messages": [{"role": "user", "content": "x"}]}
    async with http.post(f"{url}/v1/chat/completions", json=body) as resp:
        data = await resp.json()
        assert data["object"] == "chat.completion" and data["choices"][0]["finish_reason"] == "stop"
    async with http.post(f"{url}/v1/chat/completions", json={**body, "stream": True}) as resp:
        assert resp.headers["Content-Type"] == "text/event-stream"
        text = (await resp.read()).decode()
    frames = text.split("\n\n")
    assert frames[-2:] == ["data: [DONE]", ""] and all(f.startswith("data: ") for f in frames[:-1])
    async with http.post(f"{url}/v1/chat/completions", json={**body, "model": "nothere"}) as resp:
        assert resp.status == 404
        assert (await resp.json())["error"]["type"] == "not_found_error"
    async with http.get(f"{url}/v1/models") as resp:
        assert [m["id"] for m in (await resp.json())["data"]] == [
            "llama3.2:1b",
            "nomic-embed-text:latest",
        ]


# -- routing, Host check, CORS ---------------------------------------------------------------------


async def test_not_found_and_method_not_allowed(http: aiohttp.ClientSession, url: str) -> None:
    async with http.get(f"{url}/api/nothing") as resp:
        assert (resp.status, resp.headers["Content-Type"], await resp.text()) == (
            404,
            "text/plain",
            "404 page not found",
        )
    async with http.get(f"{url}/api/generate") as resp:
        assert (resp.status, await resp.text()) == (405, "405 method not allowed")
    async with http.head(f"{url}/api/ps") as resp:  # gin does not map HEAD to GET
        assert resp.status == 405
    async with http.head(url) as resp:
        assert resp.status == 200 and resp.headers["Content-Length"] == "17"


@pytest.mark.parametrize(
    ("host", "status"),
    [
        ("box.lan", 403),
        ("box.lan:11434", 403),
        ("8.8.8.8", 403),
        ("localhost:11434", 200),
        ("127.0.0.1:11434", 200),
        ("x.local", 200),
        ("10.0.0.5", 200),
        ("testbox:80", 200),
    ],
)
async def test_host_check(http: aiohttp.ClientSession, url: str, host: str, status: int) -> None:
    async with http.get(f"{url}/api/tags", headers={"Host": host}) as resp:
        assert resp.status == status
        if status == 403:
            assert await resp.read() == b"" and "Content-Type" not in resp.headers


async def test_host_check_options_and_wildcard_bind(http: aiohttp.ClientSession, url: str) -> None:
    async with http.options(f"{url}/api/tags", headers={"Host": "x.local"}) as resp:
        assert resp.status == 204
    async with http.options(f"{url}/api/tags", headers={"Host": "127.0.0.1"}) as resp:
        assert resp.status == 405  # an IP passes on to the router, which has no OPTIONS route
    wide = FakeOllama()
    async with wide.serve(host="0.0.0.0") as base:  # not loopback: no Host check at all
        port = base.rsplit(":", 1)[1]
        async with http.get(
            f"http://127.0.0.1:{port}/api/tags", headers={"Host": "box.lan"}
        ) as resp:
            assert resp.status == 200


def test_host_rules_follow_go() -> None:
    assert split_host_port("[::1]:80") == ("::1", "80")
    assert split_host_port("[::1]") is None and split_host_port("::1") is None
    assert check_host("[::1]", "GET", "h") is HostVerdict.FORBIDDEN  # no port: not parsed as an IP
    assert check_host("::ffff:127.0.0.1", "GET", "h") is HostVerdict.PASS
    assert check_host("a.INTERNAL", "GET", "h") is HostVerdict.PASS
    assert check_host("box.home.arpa", "GET", "h") is HostVerdict.FORBIDDEN


async def test_cors(http: aiohttp.ClientSession, url: str) -> None:
    async with http.get(f"{url}/api/tags", headers={"Origin": "http://192.168.1.5:3000"}) as resp:
        assert resp.status == 403 and await resp.read() == b""
    async with http.get(f"{url}/api/tags", headers={"Origin": "http://localhost:3000"}) as resp:
        assert (
            resp.status == 200
            and resp.headers["Access-Control-Allow-Origin"] == "http://localhost:3000"
        )
    preflight = {"Origin": "http://localhost:3000", "Access-Control-Request-Method": "POST"}
    async with http.options(f"{url}/api/chat", headers=preflight) as resp:
        assert resp.status == 204 and "POST" in resp.headers["Access-Control-Allow-Methods"]


async def test_redirects(http: aiohttp.ClientSession, url: str) -> None:
    async with http.get(f"{url}/api/tags/", allow_redirects=False) as resp:
        assert (resp.status, resp.headers["Location"]) == (301, "/api/tags")
    async with http.post(f"{url}/api/chat/", allow_redirects=False) as resp:
        assert (resp.status, resp.headers["Location"]) == (307, "/api/chat")


# -- blobs -----------------------------------------------------------------------------------------


async def test_blob_digest_mismatch(http: aiohttp.ClientSession, url: str) -> None:
    wrong = "sha256:" + "a" * 64
    async with http.post(f"{url}/api/blobs/{wrong}", data=b"hello") as resp:
        assert resp.status == 400
        got = "sha256:" + hashlib.sha256(b"hello").hexdigest()
        assert await resp.json() == {"error": f'digest mismatch, expected "{wrong}", got "{got}"'}
    async with http.post(f"{url}/api/blobs/nope", data=b"hello") as resp:
        assert (resp.status, await resp.json()) == (400, {"error": "invalid digest format"})


async def test_existing_blob_answers_without_reading(
    http: aiohttp.ClientSession, url: str, fake: FakeOllama
) -> None:
    data = os.urandom(1 << 20)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    async with http.post(f"{url}/api/blobs/{digest}", data=data) as resp:
        assert resp.status == 201
    async with http.post(f"{url}/api/blobs/{digest}", data=b"tiny") as resp:
        assert resp.status == 200 and "Connection" not in resp.headers  # drained: kept alive
    async with http.post(f"{url}/api/blobs/{digest}", data=data) as resp:
        # Too much left unread: net/http answers and closes instead of draining 1 MiB.
        assert resp.status == 200 and resp.headers["Connection"] == "close"
    assert fake.requests[-1].body_size < len(data)


async def test_blob_upload_streams(http: aiohttp.ClientSession, url: str, fake: FakeOllama) -> None:
    total, piece = 64 << 20, os.urandom(1 << 20)
    digest = "sha256:" + hashlib.sha256(piece * 64).hexdigest()

    async def body() -> AsyncIterator[bytes]:
        for _ in range(64):
            yield piece

    async with http.post(f"{url}/api/blobs/{digest}", data=body()) as resp:
        assert resp.status == 201
    record = fake.requests[-1]
    assert record.body_size == total and record.body_sha256 == digest.split(":")[1]
    assert record.header("Transfer-Encoding") == "chunked"


# -- introspection and control ---------------------------------------------------------------------


async def test_records_and_control_routes(
    http: aiohttp.ClientSession, url: str, fake: FakeOllama
) -> None:
    body = json.dumps({"model": "llama3.2:1b"}).encode()
    async with http.post(
        f"{url}/api/show?x=1", data=body, headers={"X-B": "2", "X-A": "1"}
    ) as resp:
        await resp.read()
    record = (await fake.wait_for_completed(1))[0]
    names = [k for k, _ in record.headers]
    assert names.index("X-B") < names.index("X-A")
    assert (record.method, record.path, record.query_string, record.status) == (
        "POST",
        "/api/show",
        "x=1",
        200,
    )
    assert record.body_size == len(body) and record.body_sha256 == hashlib.sha256(body).hexdigest()

    async with http.post(f"{url}/_fake/config", json={"fail_status": 503}) as resp:
        assert (await resp.json())["fail_status"] == 503
    async with http.get(f"{url}/api/tags") as resp:
        assert resp.status == 503 and "server busy" in (await resp.json())["error"]
    async with http.get(f"{url}/_fake/requests", params={"wait_count": "2"}) as resp:
        listed = await resp.json()
    assert [r["path"] for r in listed] == ["/api/show", "/api/tags"]
    async with http.get(f"{url}/_fake/connections") as resp:
        assert (await resp.json())["connections"] == 1  # one keep-alive connection
    async with http.post(f"{url}/_fake/config", json={"bogus": 1}) as resp:
        assert resp.status == 400
    async with http.post(f"{url}/_fake/reset") as resp:
        assert resp.status == 200
    assert fake.requests == [] and fake.knobs.fail_status is None


async def test_cli_runs_and_stops_cleanly() -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.fakeollama",
        "--port",
        "0",
        "--version",
        "9.9.9",
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 10)).decode().strip()
        assert line.startswith("fakeollama listening on http://127.0.0.1:")
        async with (
            aiohttp.ClientSession(timeout=TIMEOUT) as session,
            session.get(line.split()[-1] + "/api/version") as resp,
        ):
            assert await resp.json() == {"version": "9.9.9"}
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 10) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


# -- several boxes under load: model loads, parallel slots, generation time ------------------------

GENERATE = {"model": "llama3.2:1b", "prompt": "x", "stream": False}
CHAT = {
    "model": "llama3.2:1b",
    "messages": [{"role": "user", "content": "x"}],
    "stream": False,
}
EMBED = {"model": "nomic-embed-text", "input": "x"}


async def post_json(
    http: aiohttp.ClientSession, url: str, path: str, body: Mapping[str, object]
) -> tuple[int, dict[str, object]]:
    async with http.post(f"{url}{path}", json=body) as resp:
        return resp.status, await resp.json(content_type=None)


async def ps_names(http: aiohttp.ClientSession, url: str) -> list[str]:
    async with http.get(f"{url}/api/ps") as resp:
        return [m["name"] for m in (await resp.json())["models"]]


async def hang_up(task: asyncio.Task[object], fake: FakeOllama, count: int) -> None:
    """Cancel a client call (its connection closes) and wait for the fake to see `count` gone."""
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await fake.wait_for(lambda rs: sum(r.disconnected for r in rs) >= count or None)


async def test_load_delay_is_paid_once_and_only_by_an_unloaded_model(
    http: aiohttp.ClientSession, url: str, fake: FakeOllama
) -> None:
    fake.configure(load_delay=3600)  # a load that lasts until the client gives up
    first = asyncio.create_task(post_json(http, url, "/api/generate", GENERATE))
    await fake.wait_for(lambda _: fake.running()["models"].get("llama3.2:1b", {}).get("loading"))
    second = asyncio.create_task(post_json(http, url, "/api/chat", CHAT))
    state = await fake.wait_for_running(running=2)
    # Both wait for the one load; Ollama lists a loading model in /api/ps and writes nothing.
    assert state["models"]["llama3.2:1b"] == {
        "running": 2,
        "queued": 0,
        "loading": True,
        "loads": 1,
    }
    assert await ps_names(http, url) == ["llama3.2:1b"]
    assert [r.status for r in fake.requests[:2]] == [None, None]
    await hang_up(second, fake, 1)
    await hang_up(first, fake, 2)  # the aborted load leaves the model unloaded
    await fake.wait_for_running(idle=True)
    assert await ps_names(http, url) == []
    assert fake.running()["models"]["llama3.2:1b"]["loads"] == 1

    fake.configure(load_delay=0.2)
    loop = asyncio.get_running_loop()
    start = loop.time()
    assert (await post_json(http, url, "/api/generate", GENERATE))[0] == 200
    assert loop.time() - start >= 0.19
    assert await ps_names(http, url) == ["llama3.2:1b"]

    fake.configure(load_delay=3600)  # loaded already: no load to wait for
    status, _ = await asyncio.wait_for(post_json(http, url, "/api/chat", CHAT), 30)
    assert status == 200 and fake.running()["models"]["llama3.2:1b"]["loads"] == 2


async def test_num_parallel_queues_the_rest(
    http: aiohttp.ClientSession, url: str, fake: FakeOllama
) -> None:
    async def running(**params: str) -> dict[str, object]:
        async with http.get(f"{url}/_fake/running", params=params) as resp:
            return dict(await resp.json())

    async with http.post(f"{url}/_fake/config", json={"num_parallel": 1, "hold": True}) as resp:
        assert resp.status == 200
    first = asyncio.create_task(post_json(http, url, "/api/generate", GENERATE))
    assert (await running(wait_running="1"))["running"] == 1
    second = asyncio.create_task(post_json(http, url, "/api/chat", CHAT))
    state = await running(wait_queued="1", model="LLAMA3.2:1b")
    assert state == {
        "running": 1,
        "queued": 1,
        "models": {"llama3.2:1b": {"running": 1, "queued": 1, "loading": False, "loads": 0}},
    }
    assert [r.status for r in fake.requests] == [None, None]  # nothing written yet
    async with http.post(f"{url}/_fake/config", json={"hold": False}) as resp:
        assert resp.status == 200
    assert [(await first)[0], (await second)[0]] == [200, 200]
    idle = await running(wait_idle="1")
    assert (idle["running"], idle["queued"]) == (0, 0)
    async with http.get(f"{url}/_fake/running", params={"model": "a:b:c"}) as resp:
        assert resp.status == 400


async def test_queue_is_fifo_and_a_disconnect_frees_the_slot(
    http: aiohttp.ClientSession, url: str, fake: FakeOllama
) -> None:
    fake.configure(num_parallel=1, hold=True)
    calls = []
    for queued in range(3):
        calls.append(asyncio.create_task(post_json(http, url, "/api/generate", GENERATE)))
        await fake.wait_for_running(running=1, queued=queued)
    fake.configure(num_parallel=2)  # one more slot: the oldest waiter takes it
    await fake.wait_for_running(running=2)
    await hang_up(calls[2], fake, 1)  # the youngest was the one still queued
    assert (fake.running()["running"], fake.running()["queued"]) == (2, 0)

    fake.configure(num_parallel=1)
    await hang_up(calls[0], fake, 2)  # a running request that goes away gives its slot back
    assert fake.running()["running"] == 1
    calls.append(asyncio.create_task(post_json(http, url, "/api/generate", GENERATE)))
    await fake.wait_for_running(running=1, queued=1)
    fake.configure(hold=False)
    assert [(await calls[1])[0], (await calls[3])[0]] == [200, 200]
    await fake.wait_for_running(idle=True)


async def test_slots_are_per_model_and_a_preload_needs_none(
    http: aiohttp.ClientSession, url: str, fake: FakeOllama, client: ollama.AsyncClient
) -> None:
    fake.configure(num_parallel=1, hold=True)
    chat = asyncio.create_task(post_json(http, url, "/v1/chat/completions", CHAT))
    embed = asyncio.create_task(post_json(http, url, "/api/embed", EMBED))
    state = await fake.wait_for_running(running=2)
    assert state["queued"] == 0 and set(state["models"]) == {
        "llama3.2:1b",
        "nomic-embed-text:latest",
    }
    assert (await client.generate("llama3.2:1b", "")).done_reason == "load"
    fake.configure(hold=False)
    assert [(await chat)[0], (await embed)[0]] == [200, 200]


async def test_generation_time_spreads_over_the_tokens(
    http: aiohttp.ClientSession, url: str, fake: FakeOllama
) -> None:
    fake.configure(generation_time=0.4, tokens=4)
    loop = asyncio.get_running_loop()
    start = loop.time()
    async with http.post(f"{url}/api/generate", json={**GENERATE, "stream": True}) as resp:
        arrivals = [loop.time() - start async for _ in resp.content]
    assert len(arrivals) == 5
    assert arrivals[0] >= 0.09 and arrivals[-1] >= 0.39  # a token's share, then all of it
    start = loop.time()
    status, body = await post_json(http, url, "/api/chat", CHAT)
    assert status == 200 and loop.time() - start >= 0.39
    assert body["eval_count"] == 4


async def test_loaded_models_at_start_and_by_control_route(http: aiohttp.ClientSession) -> None:
    with pytest.raises(ValueError, match="nothere"):
        FakeOllama(loaded=["nothere"])
    fake = FakeOllama(loaded=["LLAMA3.2:1b"])
    async with fake.serve() as base:
        async with http.get(f"{base}/api/ps") as resp:
            (entry,) = (await resp.json())["models"]
        assert entry["name"] == "llama3.2:1b"
        fake.configure(load_delay=3600)
        status, _ = await asyncio.wait_for(post_json(http, base, "/api/generate", GENERATE), 30)
        assert status == 200

        body = {"model": "nomic-embed-text", "keep_alive": -1}
        async with http.post(f"{base}/_fake/loaded", json=body) as resp:
            assert (await resp.json())["models"] == ["nomic-embed-text:latest", "llama3.2:1b"]
        body = {"model": "llama3.2:1b", "keep_alive": "0s"}
        async with http.post(f"{base}/_fake/loaded", json=body) as resp:
            assert (await resp.json())["models"] == ["nomic-embed-text:latest"]
        async with http.post(f"{base}/_fake/loaded", json={"model": "nothere"}) as resp:
            assert resp.status == 404
        async with http.post(f"{base}/_fake/loaded", json={"keep_alive": 1}) as resp:
            assert resp.status == 400
        fake.reset()  # back to the constructor's loaded models
        async with http.get(f"{base}/_fake/loaded") as resp:
            assert (await resp.json())["models"] == ["llama3.2:1b"]
        assert [r.path for r in fake.requests] == []  # control routes are not recorded


async def test_a_pull_shows_on_that_box_only(http: aiohttp.ClientSession) -> None:
    one, two = FakeOllama(), FakeOllama()
    async with one.serve() as first, two.serve() as second:
        async with http.post(f"{first}/api/pull", json={"model": "qwen3:0.6b"}) as resp:
            assert json.loads((await resp.read()).splitlines()[-1]) == {"status": "success"}
        for base, present in ((first, True), (second, False)):
            async with http.get(f"{base}/api/tags") as resp:
                names = [m["name"] for m in (await resp.json())["models"]]
            assert ("qwen3:0.6b" in names) is present


async def test_cli_fleet_flags() -> None:
    proc = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "tests.fakeollama", "--port", "0", "--loaded", "llama3.2:1b"),
        *("--load-delay", "2.5", "--num-parallel", "2", "--generation-time", "0.5"),
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 10)).decode().strip()
        base = line.split()[-1]
        async with aiohttp.ClientSession(timeout=TIMEOUT) as session:
            assert await ps_names(session, base) == ["llama3.2:1b"]
            async with session.get(f"{base}/_fake/config") as resp:
                knobs = await resp.json()
        assert (knobs["load_delay"], knobs["num_parallel"], knobs["generation_time"]) == (
            2.5,
            2,
            0.5,
        )
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 10) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()

    bad = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "tests.fakeollama", "--port", "0", "--loaded", "nothere"),
        cwd=REPO,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await asyncio.wait_for(bad.communicate(), 10)
    assert bad.returncode == 2 and b"nothere" in err
