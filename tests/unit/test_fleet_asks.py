"""What a request asks of the fleet: this method, path and body in, this ask out."""

from __future__ import annotations

import json

import pytest

from ollana.fleet.asks import Ask, Kind, blob_key, classify, read_body
from ollana.fleet.names import model_key

LLAMA = model_key("llama3.2")
DIGEST = "sha256:" + "ab12" * 16
BLOB = "sha256-" + "ab12" * 16

INFER_PATHS = [
    "/api/generate", "/api/chat", "/api/embed", "/api/embeddings",
    "/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/responses", "/v1/messages",
]
MANAGE = [
    ("POST", "/api/pull"), ("POST", "/api/push"), ("POST", "/api/create"), ("POST", "/api/copy"),
    ("DELETE", "/api/delete"),
]
# Every route whose JSON body names the model, with the key that names it.
MODEL_ROUTES = [("POST", p) for p in INFER_PATHS] + [("POST", "/api/show")] + MANAGE


def ask_of(method: str, path: str, body: bytes, *, whole: bool) -> Ask:
    ask = classify(method, path)
    assert ask.body_names_model
    return read_body(ask, body, whole=whole)


def model_body(path: str, name: str, **rest: object) -> bytes:
    key = "source" if path == "/api/copy" else "model"
    return json.dumps({key: name, **rest}).encode()


# --- classify: the method and path ---------------------------------------------------------------


@pytest.mark.parametrize("path", INFER_PATHS)
def test_model_using_routes_are_infer_and_wait_for_the_body(path: str) -> None:
    ask = classify("POST", path)
    assert ask == Ask(Kind.INFER, path)
    assert ask.body_names_model


@pytest.mark.parametrize(("method", "path"), MANAGE)
def test_managing_routes_are_manage_and_wait_for_the_body(method: str, path: str) -> None:
    ask = classify(method, path)
    assert ask == Ask(Kind.MANAGE, path)
    assert ask.body_names_model


def test_show_reads_a_model_named_in_the_body() -> None:
    ask = classify("POST", "/api/show")
    assert ask == Ask(Kind.SHOW, "/api/show")
    assert ask.body_names_model


@pytest.mark.parametrize("method", ["GET", "HEAD"])
@pytest.mark.parametrize(
    "name",
    [
        "llama3.2",
        "llama3.2:latest",
        "library/llama3.2",
        "registry.ollama.ai/library/llama3.2:latest",
    ],
)
def test_v1_models_with_a_name_is_show_with_the_model_from_the_path(method: str, name: str) -> None:
    ask = classify(method, f"/v1/models/{name}")
    assert ask.kind is Kind.SHOW
    assert ask.model == LLAMA
    assert not ask.body_names_model  # nothing to read: the path named it


@pytest.mark.parametrize("method", ["GET", "HEAD"])
@pytest.mark.parametrize(
    ("path", "kind"),
    [
        ("/api/tags", Kind.TAGS), ("/api/tags/", Kind.TAGS),
        ("/api/ps", Kind.PS), ("/api/ps/", Kind.PS),
        ("/v1/models", Kind.MODELS), ("/v1/models/", Kind.MODELS),
    ],
)
def test_lists_are_answered_from_the_merged_view(method: str, path: str, kind: Kind) -> None:
    ask = classify(method, path)
    assert ask.kind is kind
    assert not ask.model
    assert not ask.body_names_model


@pytest.mark.parametrize("path", ["/api/tags", "/api/ps", "/v1/models"])
@pytest.mark.parametrize("method", ["POST", "DELETE", "PUT"])
def test_a_list_path_with_another_method_is_not_a_list(method: str, path: str) -> None:
    assert classify(method, path).kind is Kind.OTHER


@pytest.mark.parametrize("method", ["HEAD", "POST"])
@pytest.mark.parametrize("spelling", [DIGEST, BLOB, DIGEST.upper(), BLOB.upper(), f" {DIGEST}"])
def test_blobs_name_one_digest_however_it_is_spelled(method: str, spelling: str) -> None:
    ask = classify(method, f"/api/blobs/{spelling}")
    assert ask.kind is Kind.BLOB
    assert ask.digest == BLOB
    assert not ask.model
    assert not ask.body_names_model


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE"])
def test_blobs_with_another_method_are_other(method: str) -> None:
    assert classify(method, f"/api/blobs/{DIGEST}").kind is Kind.OTHER


def test_blob_key_makes_colon_and_dash_one_digest() -> None:
    assert blob_key(DIGEST) == blob_key(BLOB) == BLOB
    assert blob_key("SHA256:ABC") == "sha256-abc"


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/api/version"), ("HEAD", "/"), ("GET", "/"), ("GET", "/api/unknown"),
        ("GET", "/api/chat"), ("GET", "/api/generate"), ("PUT", "/api/chat"),
        ("GET", "/api/pull"), ("POST", "/api/chat/extra"), ("POST", "/v1/models/llama3.2"),
        ("DELETE", "/api/show"),
    ],
)
def test_everything_else_is_other_and_names_no_model(method: str, path: str) -> None:
    ask = classify(method, path)
    assert ask == Ask(Kind.OTHER, path)
    assert not ask.body_names_model


# --- read_body: the model a body names -----------------------------------------------------------


@pytest.mark.parametrize("whole", [True, False])
@pytest.mark.parametrize(("method", "path"), MODEL_ROUTES)
def test_every_model_taking_route_reads_the_model(method: str, path: str, whole: bool) -> None:
    body = model_body(path, "LLaMA3.2:latest", stream=True)
    ask = ask_of(method, path, body, whole=whole)
    assert ask.model == LLAMA
    assert ask.kind is classify(method, path).kind
    assert ask.path == path
    assert not ask.body_names_model


@pytest.mark.parametrize(
    "head",
    [
        b'{"model": "llama3.2", "messages": [{"role": "user", "content": "hel',
        b'{"model":"llama3.2"',
        b'  {\n  "model" :\t"llama3.2" , "prompt": "',
        b'{"model": "llama3.2\\u003alatest", "prompt": "',  # an escaped ":" is still a ":"
        b'{"model": "registry.ollama.ai/library/llama3.2:latest", "stream": tr',
    ],
)
def test_a_leading_model_is_read_from_the_first_bytes_alone(head: bytes) -> None:
    assert ask_of("POST", "/api/chat", head, whole=False).model == LLAMA


@pytest.mark.parametrize(
    "head",
    [
        b'{"model": "llama3',  # cut inside the name
        b'{"model": ',
        b'{"model"',
        b"{",
        b"",
    ],
)
def test_a_name_cut_short_names_nothing(head: bytes) -> None:
    assert ask_of("POST", "/api/chat", head, whole=False).model == ""


@pytest.mark.parametrize(
    "head",
    [
        b'{"options": {"model": "llama3.2"}, "prompt": "',
        b'{"messages": [{"model": "llama3.2", "role": "user"}], "mod',
        b'{"prompt": "{\\"model\\": \\"llama3.2\\"}", "mo',
        b'{"prompt": "\\"model\\": \\"llama3.2\\"',
        b'["model", "llama3.2"',
        b'"model": "llama3.2"',
    ],
)
def test_the_fast_path_never_reads_a_nested_model_or_one_inside_a_string(head: bytes) -> None:
    assert ask_of("POST", "/api/chat", head, whole=False).model == ""


def test_a_nested_model_is_not_the_requests_model_in_a_whole_body_either() -> None:
    body = json.dumps({"options": {"model": "llama3.2"}, "messages": [{"model": "llama3.2"}]})
    assert ask_of("POST", "/api/chat", body.encode(), whole=True).model == ""


def test_a_model_inside_a_string_before_the_real_one_is_not_taken() -> None:
    body = json.dumps({"prompt": '{"model": "phi3"}', "model": "llama3.2"}).encode()
    assert ask_of("POST", "/api/generate", body, whole=True).model == LLAMA


def test_whole_body_fallback_reads_a_model_that_is_not_the_first_key() -> None:
    # The OpenAI SDK writes "messages" first.
    body = json.dumps({
        "messages": [{"role": "user", "content": 'say "model": "phi3"', "name": "ann"}],
        "model": "llama3.2",
        "stream": True,
    }).encode()
    assert ask_of("POST", "/v1/chat/completions", body, whole=True).model == LLAMA
    # A body not kept for replay is not read past its first bytes.
    assert ask_of("POST", "/v1/chat/completions", body, whole=False).model == ""


@pytest.mark.parametrize(
    "path", ["/api/pull", "/api/push", "/api/delete", "/api/show", "/api/create"]
)
@pytest.mark.parametrize("whole", [True, False])
def test_the_older_name_key_names_the_model(path: str, whole: bool) -> None:
    method = "DELETE" if path == "/api/delete" else "POST"
    body = json.dumps({"name": "llama3.2", "stream": False}).encode()
    assert ask_of(method, path, body, whole=whole).model == LLAMA


def test_an_older_name_key_after_other_keys_is_read_from_a_whole_body() -> None:
    body = json.dumps({"stream": False, "name": "llama3.2"}).encode()
    assert ask_of("POST", "/api/pull", body, whole=True).model == LLAMA


@pytest.mark.parametrize(
    "body",
    [{"name": "phi3", "model": "llama3.2"}, {"model": "llama3.2", "name": "phi3"}],
)
def test_model_wins_over_name_as_in_ollama(body: dict[str, str]) -> None:
    data = json.dumps(body).encode()
    assert ask_of("POST", "/api/pull", data, whole=True).model == LLAMA


@pytest.mark.parametrize("whole", [True, False])
def test_copy_is_routed_by_its_source(whole: bool) -> None:
    body = json.dumps({"source": "llama3.2", "destination": "mine"}).encode()
    assert ask_of("POST", "/api/copy", body, whole=whole).model == LLAMA


def test_copy_with_the_destination_first_is_read_from_a_whole_body() -> None:
    body = json.dumps({"destination": "mine", "source": "llama3.2"}).encode()
    assert ask_of("POST", "/api/copy", body, whole=True).model == LLAMA
    assert ask_of("POST", "/api/copy", body, whole=False).model == ""


def test_copy_reads_nothing_but_its_source() -> None:
    body = json.dumps({"model": "phi3", "source": "llama3.2", "destination": "mine"}).encode()
    assert ask_of("POST", "/api/copy", body, whole=True).model == LLAMA


def test_a_leading_source_is_not_the_model_of_other_routes() -> None:
    body = json.dumps({"source": "phi3", "model": "llama3.2"}).encode()
    assert ask_of("POST", "/api/chat", body, whole=True).model == LLAMA
    assert ask_of("POST", "/api/chat", body, whole=False).model == ""


def test_create_names_its_model_and_the_blobs_its_files_use() -> None:
    other = "sha256:" + "cd34" * 16
    body = json.dumps({
        "model": "mine",
        "files": {"model.gguf": DIGEST, "adapter.gguf": other.upper()},
        "template": "{{ .Prompt }}",
    }).encode()
    ask = ask_of("POST", "/api/create", body, whole=True)
    assert ask.model == model_key("mine")
    assert ask.blobs == (BLOB, "sha256-" + "cd34" * 16)
    assert ask.kind is Kind.MANAGE


def test_create_with_files_first_and_the_older_name_key() -> None:
    body = json.dumps({"files": {"m.gguf": BLOB}, "name": "mine"}).encode()
    ask = ask_of("POST", "/api/create", body, whole=True)
    assert (ask.model, ask.blobs) == (model_key("mine"), (BLOB,))


def test_create_from_a_partial_body_names_only_a_leading_model() -> None:
    body = json.dumps({"model": "mine", "files": {"m.gguf": DIGEST}}).encode()
    ask = ask_of("POST", "/api/create", body, whole=False)
    assert (ask.model, ask.blobs) == (model_key("mine"), ())


@pytest.mark.parametrize(
    "body",
    [
        {"model": "mine", "from": "llama3.2"},
        {"model": "mine", "files": ["sha256:ab"]},
        {"model": "mine", "files": "sha256:ab"},
        {"model": "mine", "files": None},
    ],
)
def test_create_without_a_files_map_names_no_blobs(body: dict[str, object]) -> None:
    ask = ask_of("POST", "/api/create", json.dumps(body).encode(), whole=True)
    assert (ask.model, ask.blobs) == (model_key("mine"), ())


MALFORMED = [
    b"",
    b"   ",
    b"not json",
    b"{",
    b'{"model": ',
    b'{"model": "llama3.2',
    b"[]",
    b'["llama3.2"]',
    b"null",
    b"42",
    b'"llama3.2"',
    b'{"model": 3}',
    b'{"model": null}',
    b'{"model": ""}',
    b'{"model": ["llama3.2"]}',
    b'{"model": {"name": "llama3.2"}}',
    b'{"name": 1, "source": false}',
    b'{"model": "bad \\x escape"}',
    b'{"model": "a\x00b"}',  # a raw control character: not JSON
    b"\xff\xfe\x00{",
    b'{"model": "\xff\xfe"}',
    b"\x1f\x8b\x08\x00",  # gzip, sent without a Content-Encoding
    b"[" * 100_000,  # nesting deep enough to exhaust the recursion limit
    b'{"a":' * 100_000,
    b'{"files": ' + b"[" * 100_000,
]


@pytest.mark.parametrize("whole", [True, False])
@pytest.mark.parametrize("path", ["/api/chat", "/v1/chat/completions", "/api/create", "/api/copy"])
@pytest.mark.parametrize("body", MALFORMED, ids=lambda b: repr(b[:24]))
def test_a_malformed_body_names_nothing_and_never_raises(
    body: bytes, path: str, whole: bool
) -> None:
    ask = ask_of("POST", path, body, whole=whole)
    assert ask == classify("POST", path)


def test_a_very_long_leading_name_is_left_to_the_whole_body() -> None:
    name = "n" * 600
    body = json.dumps({"model": name}).encode()
    assert ask_of("POST", "/api/chat", body, whole=False).model == ""
    assert ask_of("POST", "/api/chat", body, whole=True).model == model_key(name)
