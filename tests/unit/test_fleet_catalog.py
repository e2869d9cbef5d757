"""A server's catalogue: this value in, this document and generation out; this document in,
this catalogue or this ValueError out."""

from __future__ import annotations

import json
from typing import Any

import pytest

from ollana.fleet.catalog import MAX_ENTRIES, Catalog, Entry, entries_of
from ollana.fleet.names import model_key

LLAMA = model_key("llama3.2")
PHI = model_key("phi3")


def tag(
    name: str, digest: str = "d1", modified: str = "2024-06-01T10:00:00.123456789+02:00"
) -> Entry:
    return {
        "name": name, "model": name, "modified_at": modified, "size": 2019393189, "digest": digest,
        "details": {"format": "gguf", "family": "llama", "parameter_size": "3.2B"},
    }


def ps(name: str, expires: str = "2024-06-01T10:05:00.5+02:00", vram: int = 2_000_000_000) -> Entry:
    return {
        "name": name, "model": name, "size": 3_000_000_000, "digest": "d1", "expires_at": expires,
        "size_vram": vram, "context_length": 4096, "details": {"family": "llama"},
    }


def openai(name: str, created: int = 1717228800) -> Entry:
    return {"id": name, "object": "model", "created": created, "owned_by": "library"}


def catalog(**kw: Any) -> Catalog:
    values: dict[str, Any] = {
        "models": (tag("llama3.2:latest"), tag("phi3:latest", "d2")),
        "loaded": (ps("llama3.2:latest"),),
        "openai": (openai("llama3.2:latest"), openai("phi3:latest")),
        "inflight": {LLAMA: 2},
        "capacity": 4,
    }
    values.update(kw)
    return Catalog(**values)


def document(**kw: Any) -> dict[str, Any]:
    doc = catalog().document()
    doc.update(kw)
    return doc


# --- the value -----------------------------------------------------------------------------------


def test_present_and_loaded_compare_normalised_names() -> None:
    cat = catalog()
    assert cat.has(model_key("llama3.2")) and cat.has(model_key("library/phi3:latest"))
    assert cat.is_loaded(LLAMA) and not cat.is_loaded(PHI)
    assert not cat.has(model_key("mistral"))
    assert cat.present == {LLAMA, PHI}
    assert cat.resident == {LLAMA}


def test_busy_counts_requests_per_model() -> None:
    cat = catalog(inflight={LLAMA: 3})
    assert cat.busy(LLAMA) == 3
    assert cat.busy(PHI) == 0


def test_an_empty_catalogue_has_nothing_and_one_slot() -> None:
    cat = Catalog()
    assert not cat.has(LLAMA) and not cat.is_loaded(LLAMA) and cat.busy(LLAMA) == 0
    assert cat.capacity == 1
    assert cat.document()["models"] == []


# --- the document --------------------------------------------------------------------------------


def test_document_round_trips_through_json() -> None:
    cat = catalog()
    doc = json.loads(json.dumps(cat.document()))
    back = Catalog.from_document(doc)
    assert back == cat
    assert back.generation == cat.generation == doc["generation"]
    assert back.present == cat.present and back.resident == cat.resident
    assert back.models == cat.models  # every field as Ollama wrote it


def test_document_holds_the_lists_capacity_and_busy_models_only() -> None:
    cat = catalog(inflight={LLAMA: 2, PHI: 0})
    doc = cat.document()
    assert doc == {
        "generation": cat.generation,
        "capacity": 4,
        "inflight": {LLAMA: 2},
        "models": list(cat.models),
        "loaded": list(cat.loaded),
        "openai": list(cat.openai),
    }


def test_from_document_normalises_inflight_names() -> None:
    cat = Catalog.from_document(document(inflight={"llama3.2": 2, "Phi3:latest": 1}))
    assert cat.busy(LLAMA) == 2 and cat.busy(PHI) == 1


def test_from_document_defaults_missing_lists_and_counts_to_empty() -> None:
    cat = Catalog.from_document({"capacity": 2})
    assert cat == Catalog(capacity=2)


def test_from_document_ignores_the_announced_generation_and_unknown_fields() -> None:
    cat = Catalog.from_document(document(generation=12345, future_field={"x": 1}))
    assert cat.generation == catalog().generation


@pytest.mark.parametrize("capacity", [1, 2, 1024])
def test_from_document_accepts_capacities_1_to_1024(capacity: int) -> None:
    assert Catalog.from_document(document(capacity=capacity)).capacity == capacity


BAD_DOCUMENTS: list[tuple[str, Any]] = [
    ("not an object", []),
    ("a string", "catalog"),
    ("null", None),
    ("no capacity", {"models": []}),
    ("capacity as text", document(capacity="4")),
    ("capacity as float", document(capacity=4.0)),
    ("capacity as bool", document(capacity=True)),
    ("capacity zero", document(capacity=0)),
    ("capacity negative", document(capacity=-1)),
    ("capacity too big", document(capacity=1025)),
    ("inflight a list", document(inflight=[[LLAMA, 1]])),
    ("inflight negative", document(inflight={LLAMA: -1})),
    ("inflight bool", document(inflight={LLAMA: True})),
    ("inflight float", document(inflight={LLAMA: 1.0})),
    ("inflight text", document(inflight={LLAMA: "1"})),
    ("models an object", document(models={"name": "llama3.2"})),
    ("models null", document(models=None)),
    ("entry not an object", document(models=["llama3.2"])),
    ("entry without name", document(models=[{"model": "llama3.2", "digest": "d"}])),
    ("entry with empty name", document(models=[{"name": ""}])),
    ("entry with numeric name", document(models=[{"name": 3}])),
    ("loaded entry without name", document(loaded=[{"expires_at": "x"}])),
    ("openai entry without id", document(openai=[{"name": "llama3.2"}])),
    ("openai entry with empty id", document(openai=[{"id": ""}])),
    ("too many models", document(models=[tag(f"m{i}") for i in range(MAX_ENTRIES + 1)])),
    ("too many loaded", document(loaded=[ps(f"m{i}") for i in range(MAX_ENTRIES + 1)])),
    ("too many openai", document(openai=[openai(f"m{i}") for i in range(MAX_ENTRIES + 1)])),
    ("too many inflight", document(inflight={f"m{i}": 1 for i in range(MAX_ENTRIES + 1)})),
]


@pytest.mark.parametrize("doc", [d for _, d in BAD_DOCUMENTS], ids=[n for n, _ in BAD_DOCUMENTS])
def test_from_document_rejects_malformed_documents(doc: Any) -> None:
    with pytest.raises(ValueError, match="catalog"):
        Catalog.from_document(doc)


def test_from_document_accepts_exactly_max_entries() -> None:
    cat = Catalog.from_document(document(models=[tag(f"m{i}") for i in range(MAX_ENTRIES)]))
    assert len(cat.models) == MAX_ENTRIES


def test_entries_of_reads_one_of_ollamas_lists() -> None:
    body = {"models": [tag("llama3.2:latest")]}
    assert entries_of(body, "models") == (tag("llama3.2:latest"),)
    v1 = {"object": "list", "data": [openai("x")]}
    assert entries_of(v1, "data", name="id") == (openai("x"),)
    assert entries_of({}, "models") == ()


@pytest.mark.parametrize("body", [None, [], "models", {"models": "x"}, {"models": [{"size": 1}]}])
def test_entries_of_rejects_what_is_not_a_list_of_named_entries(body: Any) -> None:
    with pytest.raises(ValueError):
        entries_of(body, "models")


# --- the generation ------------------------------------------------------------------------------


def test_generation_is_a_u32_and_depends_only_on_the_value() -> None:
    assert 0 <= catalog().generation < 2**32
    assert catalog().generation == catalog().generation


@pytest.mark.parametrize(
    "change",
    [
        {"models": (tag("llama3.2:latest"),)},  # a model deleted
        # pulled; then re-pulled (a new digest)
        {"models": (tag("llama3.2:latest"), tag("phi3:latest", "d2"), tag("mistral:latest"))},
        {"models": (tag("llama3.2:latest", "d9"), tag("phi3:latest", "d2"))},
        {"loaded": ()},  # unloaded
        {"loaded": (ps("llama3.2:latest"), ps("phi3:latest"))},  # loaded
        {"inflight": {}},
        {"inflight": {LLAMA: 3}},
        {"inflight": {LLAMA: 2, PHI: 1}},
        {"capacity": 5},
    ],
)
def test_generation_changes_with_models_loaded_inflight_and_capacity(
    change: dict[str, Any],
) -> None:
    assert catalog(**change).generation != catalog().generation


@pytest.mark.parametrize(
    "same",
    [
        # every request moves expires_at
        {"loaded": (ps("llama3.2:latest", expires="2030-01-01T00:00:00Z"),)},
        {"inflight": {LLAMA: 2, PHI: 0}},  # a zero count is no count
        {"models": (tag("phi3:latest", "d2"), tag("llama3.2:latest"))},  # order
        {"openai": ()},  # derived from the tags
    ],
)
def test_generation_ignores_expiry_zero_counts_and_order(same: dict[str, Any]) -> None:
    assert catalog(**same).generation == catalog().generation
