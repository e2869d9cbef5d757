"""Model names as Ollama compares them: this name in, this key out."""

from __future__ import annotations

import pytest

from ollana.fleet.names import model_key, namespace_of

LLAMA = "registry.ollama.ai/library/llama3.2:latest"


@pytest.mark.parametrize(
    "name",
    [
        "llama3.2",
        "llama3.2:latest",
        "library/llama3.2",
        "library/llama3.2:latest",
        "registry.ollama.ai/library/llama3.2",
        "registry.ollama.ai/library/llama3.2:latest",
        "llama3.2:",  # an empty tag is the default tag
        "https://registry.ollama.ai/library/llama3.2:latest",  # Ollama's parser drops a scheme
        "http://registry.ollama.ai/library/llama3.2",
    ],
)
def test_every_spelling_of_one_model_has_one_key(name: str) -> None:
    assert model_key(name) == LLAMA


@pytest.mark.parametrize(
    "name",
    [
        "LLaMA3.2",
        "Llama3.2:LATEST",
        "Library/LLAMA3.2",
        "Registry.Ollama.AI/Library/Llama3.2:Latest",
    ],
)
def test_names_compare_case_insensitively(name: str) -> None:
    assert model_key(name) == LLAMA


@pytest.mark.parametrize("name", ["  llama3.2", "llama3.2\n", "\tllama3.2:latest  "])
def test_surrounding_whitespace_is_ignored(name: str) -> None:
    assert model_key(name) == LLAMA


@pytest.mark.parametrize(
    ("name", "key"),
    [
        ("llama3.2:1b", "registry.ollama.ai/library/llama3.2:1b"),
        ("jmorganca/llama3.2", "registry.ollama.ai/jmorganca/llama3.2:latest"),
        ("hf.co/bartowski/Qwen2.5-7B-GGUF:Q4_K_M", "hf.co/bartowski/qwen2.5-7b-gguf:q4_k_m"),
        ("llama3.1", "registry.ollama.ai/library/llama3.1:latest"),
    ],
)
def test_another_tag_namespace_host_or_model_is_another_model(name: str, key: str) -> None:
    assert model_key(name) == key
    assert key != LLAMA


@pytest.mark.parametrize(
    ("name", "key"),
    [
        ("localhost:5000/team/coder", "localhost:5000/team/coder:latest"),
        ("localhost:5000/team/coder:v1", "localhost:5000/team/coder:v1"),
        ("LocalHost:5000/Team/Coder:V1", "localhost:5000/team/coder:v1"),
        ("10.0.0.7:8080/team/coder", "10.0.0.7:8080/team/coder:latest"),
    ],
)
def test_a_hosts_port_is_not_taken_for_a_tag(name: str, key: str) -> None:
    assert model_key(name) == key


def test_the_same_model_on_another_host_or_port_is_another_model() -> None:
    keys = {
        model_key("localhost:5000/team/coder"),
        model_key("localhost:5001/team/coder"),
        model_key("registry.ollama.ai/team/coder"),
        model_key("team/coder"),
    }
    assert len(keys) == 3  # team/coder is on registry.ollama.ai


@pytest.mark.parametrize(
    ("name", "same_as"),
    [
        ("llama3.2@sha256:" + "a" * 64, "llama3.2"),
        ("llama3.2:latest@sha256:" + "b" * 64, "llama3.2"),
        ("llama3.2:1b@sha256:" + "c" * 64, "llama3.2:1b"),
        ("localhost:5000/team/coder:v1@sha256:" + "d" * 64, "localhost:5000/team/coder:v1"),
    ],
)
def test_a_pinned_digest_names_the_same_model(name: str, same_as: str) -> None:
    assert model_key(name) == model_key(same_as)


@pytest.mark.parametrize("name", ["", "   ", "@sha256:" + "a" * 64])
def test_no_name_has_the_empty_key(name: str) -> None:
    assert model_key(name) == ""


@pytest.mark.parametrize(
    ("name", "namespace"),
    [
        ("llama3.2", "library"),
        ("registry.ollama.ai/library/llama3.2:latest", "library"),
        ("jmorganca/llama3.2", "jmorganca"),
        ("Jmorganca/Llama3.2", "jmorganca"),
        ("localhost:5000/team/coder:v1", "team"),
        ("hf.co/bartowski/Qwen:Q4_K_M", "bartowski"),
        ("a/b/c/d", "c"),  # Ollama: host "a/b", namespace "c", model "d"
        ("", ""),
        ("  ", ""),
        ("@sha256:" + "a" * 64, ""),  # was an IndexError
    ],
)
def test_namespace_of(name: str, namespace: str) -> None:
    assert namespace_of(name) == namespace
