"""The fleet's lists as one Ollama would answer them: these catalogues in, this list out."""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from typing import Any

import pytest

from ollana.fleet.catalog import Catalog, Entry
from ollana.fleet.merge import go_time, openai_models, ps, tags


def tag(name: str, modified: str, **extra: Any) -> Entry:
    return {
        "name": name, "model": name, "modified_at": modified, "size": 1234, "digest": f"d-{name}",
        "details": {"parent_model": "", "format": "gguf", "family": "llama", "families": ["llama"],
                    "parameter_size": "3.2B", "quantization_level": "Q4_K_M"},
        **extra,
    }


def loaded(name: str, expires: str, **extra: Any) -> Entry:
    return {
        "name": name, "model": name, "size": 3000, "digest": f"d-{name}", "expires_at": expires,
        "size_vram": 3000, "context_length": 4096, "details": {"family": "llama"}, **extra,
    }


def model(name: str, created: Any) -> Entry:
    return {"id": name, "object": "model", "created": created, "owned_by": "library"}


def utc(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


# --- go_time -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("2024-06-01T08:00:00Z", utc("2024-06-01T08:00:00")),
        ("2024-06-01T10:00:00+02:00", utc("2024-06-01T08:00:00")),
        ("2024-06-01T01:00:00-07:00", utc("2024-06-01T08:00:00")),
        ("2024-06-01T08:00:00.5Z", utc("2024-06-01T08:00:00.5")),
        ("2024-06-01T10:00:00.123456789+02:00", utc("2024-06-01T08:00:00.123456")),  # ns dropped
        ("2024-06-01T05:30:00.1234567-02:30", utc("2024-06-01T08:00:00.123456")),
        ("2024-06-01T08:00:00.000000001Z", utc("2024-06-01T08:00:00")),
        ("0001-01-01T00:00:00Z", utc("0001-01-01T00:00:00")),  # Go's zero time
        ("2318-08-22T10:00:00.123456789+00:00", utc("2318-08-22T10:00:00.123456")),  # keep_alive -1
    ],
)
def test_go_time_reads_rfc3339_with_nanoseconds_and_offsets(value: str, seconds: float) -> None:
    assert go_time(value) == pytest.approx(seconds, abs=1e-6)


@pytest.mark.parametrize("value", [None, 17, "", "yesterday", "2024-13-01T00:00:00Z", ["2024"], {}])
def test_go_time_of_what_is_not_a_time_is_zero(value: Any) -> None:
    assert go_time(value) == 0.0


# --- /api/tags -----------------------------------------------------------------------------------


def test_tags_is_the_union_with_each_model_once_the_first_servers_entry_winning() -> None:
    home = Catalog(models=(tag("llama3.2:latest", "2024-06-01T08:00:00Z"),))
    other = Catalog(models=(
        tag("registry.ollama.ai/library/llama3.2:latest", "2024-07-01T08:00:00Z", size=1),
        tag("phi3:latest", "2024-05-01T08:00:00Z"),
    ))
    assert tags([home, other]) == {"models": [home.models[0], other.models[1]]}
    assert tags([other, home]) == {"models": [other.models[0], other.models[1]]}


@pytest.mark.parametrize(
    "spelling",
    ["llama3.2", "LLaMA3.2:Latest", "library/llama3.2", "registry.ollama.ai/library/llama3.2"],
)
def test_tags_compares_names_normalised(spelling: str) -> None:
    a = Catalog(models=(tag("llama3.2:latest", "2024-06-01T08:00:00Z"),))
    b = Catalog(models=(tag(spelling, "2024-06-01T08:00:00Z"),))
    assert tags([a, b])["models"] == [a.models[0]]


def test_tags_keeps_other_tags_of_one_model_apart() -> None:
    a = Catalog(models=(tag("llama3.2:latest", "2024-06-01T08:00:00Z"),))
    b = Catalog(models=(tag("llama3.2:1b", "2024-06-01T08:00:00Z"),))
    assert [e["name"] for e in tags([a, b])["models"]] == ["llama3.2:latest", "llama3.2:1b"]


def test_tags_keeps_every_field_exactly_as_ollama_wrote_it() -> None:
    cloud = tag("gpt-oss:120b-cloud", "2024-06-01T08:00:00Z", remote_host="https://ollama.com:443",
                remote_model="gpt-oss:120b", future_field={"x": [1, 2]})
    before = copy.deepcopy(cloud)
    [entry] = tags([Catalog(models=(cloud,))])["models"]
    assert entry == before
    assert list(entry) == list(before)  # same keys, same order


def test_tags_lists_newest_first_across_servers_and_offsets() -> None:
    a = Catalog(models=(
        tag("old", "2024-06-01T10:00:00.000000001+02:00"),  # 08:00:00Z
        tag("newest", "2024-06-01T05:30:00.5-03:00"),  # 08:30:00.5Z
    ))
    b = Catalog(models=(
        tag("middle", "2024-06-01T08:00:00.999999999Z"),
        tag("newer", "2024-06-01T08:30:00.25Z"),
    ))
    assert [e["name"] for e in tags([a, b])["models"]] == ["newest", "newer", "middle", "old"]


def test_tags_puts_unreadable_times_last_and_keeps_ties_in_server_order() -> None:
    a = Catalog(models=(tag("broken", "not a time"), tag("tie-a", "2024-06-01T08:00:00Z")))
    b = Catalog(
        models=(tag("tie-b", "2024-06-01T10:00:00+02:00"), tag("new", "2025-01-01T00:00:00Z"))
    )
    assert [e["name"] for e in tags([a, b])["models"]] == ["new", "tie-a", "tie-b", "broken"]


def test_tags_of_no_catalogue_is_an_empty_list() -> None:
    assert tags([]) == {"models": []}
    assert tags([Catalog(), Catalog()]) == {"models": []}


# --- /api/ps -------------------------------------------------------------------------------------


def test_ps_is_every_loaded_model_once_latest_expiry_first() -> None:
    a = Catalog(loaded=(
        loaded("llama3.2:latest", "2024-06-01T08:05:00.123456789Z"),
        loaded("phi3:latest", "2024-06-01T10:10:00+02:00"),  # 08:10Z
    ))
    b = Catalog(loaded=(
        loaded("llama3.2", "2024-06-01T09:00:00Z"),  # the same model, also loaded on b
        loaded("pinned:latest", "2318-08-22T10:00:00.123456789+00:00"),  # keep_alive -1
        loaded("mistral:latest", "2024-06-01T08:07:00-00:00"),
    ))
    merged = ps([a, b])["models"]
    names = [e["name"] for e in merged]
    assert names == ["pinned:latest", "phi3:latest", "mistral:latest", "llama3.2:latest"]
    assert merged[-1] is a.loaded[0]  # the first server's entry, untouched


def test_ps_ignores_what_is_present_but_not_loaded() -> None:
    cat = Catalog(models=(tag("llama3.2:latest", "2024-06-01T08:00:00Z"),))
    assert ps([cat]) == {"models": []}


# --- /v1/models ----------------------------------------------------------------------------------


def test_openai_models_is_the_union_by_id_newest_created_first() -> None:
    a = Catalog(
        openai=(model("llama3.2:latest", 1_717_000_000), model("phi3:latest", 1_700_000_000))
    )
    b = Catalog(openai=(
        model("llama3.2", 1_800_000_000),  # the same model: a's entry is kept
        model("mistral:latest", 1_710_000_000),
        model("odd:latest", "1717000000"),  # not a number: last
    ))
    answer = openai_models([a, b])
    assert answer["object"] == "list"
    ids = [e["id"] for e in answer["data"]]
    assert ids == ["llama3.2:latest", "mistral:latest", "phi3:latest", "odd:latest"]
    assert answer["data"][0] is a.openai[0]


def test_openai_models_of_no_catalogue_is_an_empty_list() -> None:
    assert openai_models([]) == {"object": "list", "data": []}


def test_merging_leaves_the_catalogues_as_they_were() -> None:
    a = Catalog(
        models=(tag("b", "2024-01-01T00:00:00Z"), tag("a", "2025-01-01T00:00:00Z")),
        loaded=(loaded("b", "2024-01-01T00:00:00Z"), loaded("a", "2025-01-01T00:00:00Z")),
        openai=(model("b", 1), model("a", 2)),
    )
    before = copy.deepcopy((a.models, a.loaded, a.openai))
    tags([a])
    ps([a])
    openai_models([a])
    assert (a.models, a.loaded, a.openai) == before
