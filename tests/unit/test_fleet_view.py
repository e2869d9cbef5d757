"""The client's view of the fleet: catalogues fetched, requests begun and ended, blobs uploaded,
servers forgotten or found stale in; these routing decisions, refetches and lists out."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from ollana.config import Endpoint
from ollana.discovery.peers import Peer, Source
from ollana.fleet.asks import Ask, Kind, classify
from ollana.fleet.catalog import Catalog, Entry
from ollana.fleet.names import model_key
from ollana.fleet.view import BLOB_MEMORY, MAX_BLOBS, FleetView

LLAMA = model_key("llama3.2")
PHI = model_key("phi3")
HOME = ["A", "B"]


def entry(name: str, when: str = "2024-06-01T08:00:00Z") -> Entry:
    return {
        "name": name, "model": name, "digest": f"d-{name}", "modified_at": when, "expires_at": when
    }


def cat(
    models: Sequence[str] = (), loaded: Sequence[str] = (), inflight: dict[str, int] | None = None,
    capacity: int = 1,
) -> Catalog:
    return Catalog(
        models=tuple(entry(m) for m in models),
        loaded=tuple(entry(m) for m in loaded),
        openai=tuple(
            {"id": m, "object": "model", "created": 1, "owned_by": "library"} for m in models
        ),
        inflight=inflight or {},
        capacity=capacity,
    )


def peer(key: str, rtt_ms: float | None = 1.0, *, healthy: bool = True) -> Peer:
    return Peer(
        key, Endpoint("10.0.0.9", 11435), Source.STATIC, 0.0, 0.0, 6.0,
        healthy=healthy, rtt_ms=rtt_ms,
    )


PEERS = [peer("A", 1.0), peer("B", 2.0)]


def infer(model: str = LLAMA) -> Ask:
    return Ask(Kind.INFER, "/api/chat", model)


def blob(digest: str) -> Ask:
    return classify("HEAD", f"/api/blobs/{digest}")


def first(view: FleetView, ask: Ask, now: float = 0.0, peers: Sequence[Peer] = PEERS) -> str:
    return view.decide(ask, peers, [p.key for p in peers], now).order[0]


def both(a: Catalog, b: Catalog) -> FleetView:
    view = FleetView()
    view.fetched("A", a, {})
    view.fetched("B", b, {})
    return view


# --- announcements and fetches -------------------------------------------------------------------


@pytest.mark.parametrize("generation", [None, 0, 7])
def test_a_server_never_fetched_is_fetched_whatever_it_announces(generation: int | None) -> None:
    assert FleetView().announced("A", generation)


def test_an_announced_generation_is_fetched_only_when_it_differs() -> None:
    view = FleetView()
    c = cat([LLAMA])
    assert view.fetched("A", c, {})
    assert not view.announced("A", c.generation)
    assert not view.announced("A", None)  # a heartbeat from an older ollana: nothing to go on
    assert view.announced("A", c.generation + 1)


def test_fetched_says_whether_the_catalogue_changed() -> None:
    view = FleetView()
    assert view.fetched("A", cat([LLAMA]), {})
    assert not view.fetched("A", cat([LLAMA]), {})
    assert view.fetched("A", cat([LLAMA], [LLAMA]), {})
    assert view.catalog("A") == cat([LLAMA], [LLAMA])
    assert view.catalog("B") is None


def test_catalogs_are_those_known_in_the_order_asked() -> None:
    view = both(cat([LLAMA]), cat([PHI]))
    assert view.catalogs(["B", "Z", "A"]) == [cat([PHI]), cat([LLAMA])]


# --- own requests --------------------------------------------------------------------------------


def test_own_now_counts_requests_begun_and_not_ended_per_server_and_model() -> None:
    view = FleetView()
    view.begin("A", LLAMA)
    view.begin("A", LLAMA)
    view.begin("A", PHI)
    view.begin("B", LLAMA)
    view.begin("A", "")  # no model: not counted
    view.end("A", PHI)
    assert view.own_now("A") == {LLAMA: 2}
    assert view.own_now("B") == {LLAMA: 1}
    assert view.own_now("C") == {}


def test_ending_more_than_begun_or_elsewhere_never_goes_below_zero() -> None:
    view = FleetView()
    view.end("A", LLAMA)
    view.begin("A", LLAMA)
    view.end("A", LLAMA)
    view.end("A", LLAMA)
    view.end("A", "")
    assert view.own_now("A") == {}
    view.begin("A", LLAMA)
    assert view.own_now("A") == {LLAMA: 1}


def test_own_now_is_a_snapshot() -> None:
    view = FleetView()
    view.begin("A", LLAMA)
    snapshot = view.own_now("A")
    view.begin("A", LLAMA)
    assert snapshot == {LLAMA: 1}


def test_own_requests_at_fetch_are_not_counted_twice() -> None:
    # A's catalogue counts one request: this client's. B is free; A is nearer, the model loaded.
    view = FleetView()
    view.begin("A", LLAMA)
    view.fetched("A", cat([LLAMA], [LLAMA], {LLAMA: 1}, capacity=2), view.own_now("A"))
    view.fetched("B", cat([LLAMA]), {})
    assert first(view, infer()) == "A"  # one slot of two used (mine)
    view.begin("A", LLAMA)
    assert view.decide(infer(), PEERS, HOME, 0.0).order == ("B", "A")  # now both are mine: full


# --- stickiness through the view -----------------------------------------------------------------


def test_the_first_decision_sticks_the_model_to_its_server() -> None:
    view = both(cat([LLAMA]), cat([LLAMA], [LLAMA]))
    assert first(view, infer()) == "B"  # loaded
    view.fetched("A", cat([LLAMA], [LLAMA]), {})  # now loaded on the nearer A too
    assert first(view, infer()) == "B"  # stable


def test_forget_drops_the_servers_catalogue_counts_and_the_models_stuck_to_it() -> None:
    view = both(cat([LLAMA, PHI], [LLAMA, PHI]), cat([LLAMA, PHI], [LLAMA, PHI]))
    assert first(view, infer(LLAMA)) == "A"
    view.begin("A", PHI)
    assert first(view, infer(PHI)) == "B"  # A's slot for phi3 is taken: phi3 sticks to B
    view.forget("A")
    assert view.catalog("A") is None
    assert view.own_now("A") == {}
    assert view.announced("A", None)  # back again: fetch it
    assert view.summary("A") == {"catalog": None, "own_inflight": 0}
    # llama3.2 lost its server, phi3 kept its own: B for both; when A returns, both stay on B.
    assert first(view, infer(LLAMA)) == "B"
    view.fetched("A", cat([LLAMA, PHI], [LLAMA, PHI]), {})
    assert first(view, infer(LLAMA)) == "B"
    assert first(view, infer(PHI)) == "B"


def test_forgetting_an_unknown_server_is_harmless() -> None:
    view = both(cat([LLAMA]), cat([LLAMA]))
    view.forget("Z")
    assert first(view, infer()) == "A"


# --- stale catalogues ----------------------------------------------------------------------------


def test_stale_removes_the_model_from_that_server_until_the_next_fetch() -> None:
    view = both(cat([LLAMA, PHI], [LLAMA, PHI]), cat([LLAMA]))
    generation = cat([LLAMA, PHI], [LLAMA, PHI]).generation
    assert first(view, infer()) == "A"
    view.stale("A", LLAMA)
    stale = view.catalog("A")
    assert stale is not None
    assert not stale.has(LLAMA) and not stale.is_loaded(LLAMA)
    assert stale.has(PHI) and stale.is_loaded(PHI)  # only the model it said it has not
    assert view.decide(infer(), PEERS, HOME, 0.0).order == ("B",)
    assert view.announced("A", generation)  # refetch even though the generation is unchanged
    assert view.announced("A", None)
    assert view.summary("A")["catalog"] == -1
    assert view.catalog("B") == cat([LLAMA])  # other servers untouched
    view.fetched("A", cat([LLAMA, PHI], [LLAMA, PHI]), {})
    assert not view.announced("A", generation)
    # llama3.2 stuck to B meanwhile
    assert view.decide(infer(), PEERS, HOME, 0.0).order == ("B", "A")


def test_stale_unsticks_the_model_from_that_server() -> None:
    view = both(cat([LLAMA], [LLAMA]), cat([LLAMA], [LLAMA]))
    view.begin("A", LLAMA)
    assert first(view, infer()) == "B"  # the nearer A is full: the model goes to B, and sticks
    view.end("A", LLAMA)
    assert first(view, infer()) == "B"
    view.stale("B", LLAMA)
    view.fetched("B", cat([LLAMA], [LLAMA]), {})  # listed again at once, but no longer stuck
    assert first(view, infer()) == "A"


def test_stale_for_an_unknown_server_or_model_changes_nothing_but_the_refetch() -> None:
    view = both(cat([LLAMA]), cat([LLAMA]))
    view.stale("Z", LLAMA)
    assert view.catalog("Z") is None
    view.stale("A", PHI)
    assert view.catalog("A") == cat([LLAMA])


# --- blob memory ---------------------------------------------------------------------------------


def test_blob_memory_lasts_at_least_the_ten_minutes_the_issue_asks() -> None:
    assert BLOB_MEMORY >= 600


def test_a_blob_is_remembered_for_blob_memory_then_forgotten() -> None:
    view = both(cat(), cat())
    view.remember_blob("sha256-aa", "B", now=100.0)
    assert view.decide(blob("sha256:aa"), PEERS, HOME, 100.0).why == "blob"
    assert first(view, blob("sha256:aa"), now=100.0 + BLOB_MEMORY) == "B"
    assert first(view, blob("sha256-AA"), now=100.0 + BLOB_MEMORY) == "B"
    decision = view.decide(blob("sha256:aa"), PEERS, HOME, 100.0 + BLOB_MEMORY + 0.001)
    assert (decision.order, decision.why) == (("A", "B"), "home")
    assert first(view, blob("sha256:aa"), now=100.0) == "A"  # forgotten for good


def test_remembering_a_blob_again_renews_it_and_moves_it() -> None:
    view = both(cat(), cat())
    view.remember_blob("sha256-aa", "A", now=0.0)
    view.remember_blob("sha256-aa", "B", now=BLOB_MEMORY)
    assert first(view, blob("sha256:aa"), now=2 * BLOB_MEMORY) == "B"


def test_create_follows_its_files_through_the_view() -> None:
    view = both(cat(), cat())
    view.remember_blob("sha256-bb", "B", now=0.0)
    create = Ask(Kind.MANAGE, "/api/create", model_key("mine"), blobs=("sha256-bb",))
    assert view.decide(create, PEERS, HOME, 60.0).order == ("B", "A")


def test_a_blob_on_a_forgotten_server_goes_home() -> None:
    view = both(cat(), cat())
    view.remember_blob("sha256-aa", "B", now=0.0)
    assert first(view, blob("sha256:aa"), peers=[peer("A")]) == "A"


def test_at_most_max_blobs_are_remembered_the_oldest_dropped_first() -> None:
    view = both(cat(), cat())
    for i in range(MAX_BLOBS + 1):
        view.remember_blob(f"sha256-{i:x}", "B", now=float(i) * 1e-3)
    now = MAX_BLOBS * 1e-3
    assert first(view, blob("sha256:0"), now) == "A"  # dropped
    assert first(view, blob("sha256:1"), now) == "B"
    assert first(view, blob(f"sha256:{MAX_BLOBS:x}"), now) == "B"


def test_a_full_blob_memory_forgets_expired_blobs_before_fresh_ones() -> None:
    view = both(cat(), cat())
    view.remember_blob("sha256-old", "B", now=0.0)
    for i in range(MAX_BLOBS - 1):
        view.remember_blob(f"sha256-{i:x}", "B", now=BLOB_MEMORY)
    view.remember_blob("sha256-new", "B", now=BLOB_MEMORY + 1.0)  # the old one expired: room
    now = BLOB_MEMORY + 1.0
    assert first(view, blob("sha256:old"), now) == "A"
    assert all(first(view, blob(f"sha256:{i:x}"), now) == "B" for i in (0, 1, MAX_BLOBS - 2))
    assert first(view, blob("sha256:new"), now) == "B"


# --- merged lists and the summary ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("what", "listed"), [("tags", "models"), ("ps", "models"), ("models", "data")]
)
def test_merged_lists_union_the_servers_asked_for(what: str, listed: str) -> None:
    view = both(
        cat(["llama3.2:latest", "phi3:latest"], ["llama3.2:latest"]),
        cat(["llama3.2", "mistral:latest"], ["mistral:latest"]),
    )
    field = "id" if what == "models" else "name"
    names = {e[field] for e in view.merged(what, ["A", "B"])[listed]}
    only_b = {e[field] for e in view.merged(what, ["B"])[listed]}
    if what == "ps":
        assert names == {"llama3.2:latest", "mistral:latest"}
        assert only_b == {"mistral:latest"}
    else:
        assert names == {"llama3.2:latest", "phi3:latest", "mistral:latest"}  # llama3.2 once, A's
        assert only_b == {"llama3.2", "mistral:latest"}


def test_merged_list_of_no_known_server_is_empty() -> None:
    view = FleetView()
    assert view.merged("tags", ["A"]) == {"models": []}
    assert view.merged("models", []) == {"object": "list", "data": []}


def test_summary_tells_what_a_server_holds_and_what_is_in_flight() -> None:
    view = FleetView()
    view.begin("A", LLAMA)
    assert view.summary("A") == {"catalog": None, "own_inflight": 1}
    c = cat(["llama3.2:latest", "phi3:latest"], ["llama3.2:latest"], {LLAMA: 2, PHI: 1}, capacity=4)
    view.fetched("A", c, view.own_now("A"))
    view.begin("A", PHI)
    assert view.summary("A") == {
        "catalog": c.generation,
        "slots": 4,
        "inflight": 3,
        "own_inflight": 2,
        "models": ["llama3.2:latest", "phi3:latest"],
        "loaded": ["llama3.2:latest"],
    }
