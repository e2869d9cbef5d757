"""Where a request goes in a fleet: catalogues, in-flight counts and stickiness in, an order out.

The last tests drive the same decision through FleetView the way the client does (decide, then
begin on the first server, end when the answer is done), without sockets or sleeps.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence

import pytest

from ollana.config import Endpoint
from ollana.discovery.peers import Peer, Source
from ollana.fleet.asks import Ask, Kind, classify
from ollana.fleet.catalog import Catalog, Entry
from ollana.fleet.names import model_key
from ollana.fleet.routing import Decision, Server, decide
from ollana.fleet.view import FleetView

LLAMA = model_key("llama3.2")
PHI = model_key("phi3")
BLOB = "sha256-" + "ab" * 32
HOME = ("A", "B", "C")


def entry(name: str) -> Entry:
    return {"name": name, "model": name, "digest": f"digest-of-{name}", "size": 1}


def cat(
    models: Sequence[str] = (),
    loaded: Sequence[str] = (),
    inflight: Mapping[str, int] | None = None,
    capacity: int = 1,
) -> Catalog:
    return Catalog(
        models=tuple(entry(m) for m in models),
        loaded=tuple(entry(m) for m in loaded),
        inflight={model_key(k): v for k, v in (inflight or {}).items()},
        capacity=capacity,
    )


def infer(model: str = "llama3.2", path: str = "/api/chat") -> Ask:
    return Ask(Kind.INFER, path, model_key(model))


def route(
    ask: Ask,
    *servers: Server,
    home: Sequence[str] | None = None,
    sticky: Mapping[str, str] | None = None,
    affinity: Mapping[str, str] | None = None,
) -> Decision:
    order = home if home is not None else [s.key for s in servers]
    return decide(ask, servers, order, sticky=sticky or {}, affinity=affinity or {})


# --- Server: what a server's catalogue and this client's counts say -----------------------------


@pytest.mark.parametrize(
    ("reported", "own_at_fetch", "own", "load"),
    [
        (0, 0, 0, 0),
        (3, 0, 0, 3),  # others' requests, as the server counted them
        (0, 0, 2, 2),  # mine count at once, before the server's next count
        (3, 2, 2, 3),  # the catalogue already counted my 2: 1 other + my 2
        (3, 2, 0, 1),  # my 2 ended since the fetch: 1 other
        (3, 2, 4, 5),  # 2 more of mine since the fetch
        (1, 2, 0, 0),  # the server had not counted all of mine yet: never below 0
        (1, 2, 1, 1),
    ],
)
def test_load_counts_own_requests_at_once_and_others_from_the_catalogue(
    reported: int, own_at_fetch: int, own: int, load: int
) -> None:
    server = Server(
        "A", catalog=cat([LLAMA], inflight={LLAMA: reported}, capacity=4),
        own={LLAMA: own}, own_at_fetch={LLAMA: own_at_fetch},
    )
    assert server.load(LLAMA) == load
    assert server.free(LLAMA) == 4 - load


def test_load_and_free_are_per_model() -> None:
    server = Server("A", catalog=cat([LLAMA, PHI], inflight={PHI: 5}, capacity=2), own={PHI: 1})
    assert server.load(LLAMA) == 0 and server.free(LLAMA) == 2
    assert server.load(PHI) == 6 and server.free(PHI) == -4  # the queue a request would join


def test_a_server_without_a_catalogue_holds_nothing_and_has_one_slot() -> None:
    server = Server("A", own={LLAMA: 1})
    assert not server.holds(LLAMA) and not server.has_loaded(LLAMA)
    assert server.load(LLAMA) == 1 and server.free(LLAMA) == 0


# --- a model only one server has -----------------------------------------------------------------


@pytest.mark.parametrize("holder", ["A", "B", "C"])
@pytest.mark.parametrize("model", ["llama3.2", "llama3.2:latest", "library/llama3.2", "LLaMA3.2"])
def test_a_model_only_one_server_has_goes_only_there(holder: str, model: str) -> None:
    servers = [
        Server(k, rtt_ms=float(i), catalog=cat(["llama3.2:latest"] if k == holder else ["phi3"]))
        for i, k in enumerate(HOME)
    ]
    decision = route(infer(model), *servers)
    assert decision.order == (holder,)
    assert decision.holders == {holder}
    assert decision.stick == holder


def test_a_model_only_one_server_has_goes_there_even_when_it_is_busy_and_far() -> None:
    decision = route(
        infer(),
        Server("A", rtt_ms=0.1, catalog=cat([PHI], capacity=8)),
        Server("B", rtt_ms=90.0, catalog=cat([LLAMA], inflight={LLAMA: 9})),
        Server("C", rtt_ms=0.2, catalog=cat([PHI], capacity=8)),
    )
    assert decision.order == ("B",)
    assert decision.why == "queue"


# --- loaded, free slots, RTT ---------------------------------------------------------------------


def test_loaded_before_merely_present_even_when_present_is_nearer() -> None:
    decision = route(
        infer(),
        Server("A", rtt_ms=0.5, catalog=cat([LLAMA])),
        Server("B", rtt_ms=40.0, catalog=cat([LLAMA], loaded=[LLAMA])),
    )
    assert decision.order == ("B", "A")
    assert decision.why == "loaded"
    assert decision.stick == "B"
    assert decision.holders == {"A", "B"}


def test_more_free_slots_before_nearer() -> None:
    decision = route(
        infer(),
        Server("A", rtt_ms=1.0, catalog=cat([LLAMA], [LLAMA], {LLAMA: 3}, capacity=4)),
        Server("B", rtt_ms=9.0, catalog=cat([LLAMA], [LLAMA], {LLAMA: 1}, capacity=4)),
    )
    assert decision.order == ("B", "A")


def test_nearer_when_equally_loaded_and_free() -> None:
    decision = route(
        infer(),
        Server("A", rtt_ms=5.0, catalog=cat([LLAMA])),
        Server("B", rtt_ms=1.0, catalog=cat([LLAMA])),
        Server("C", rtt_ms=None, catalog=cat([LLAMA])),  # not measured yet: last
    )
    assert decision.order == ("B", "A", "C")
    assert decision.why == "free slot"


def test_home_order_breaks_the_last_tie() -> None:
    servers = [Server(k, rtt_ms=1.0, catalog=cat([LLAMA])) for k in HOME]
    assert route(infer(), *servers, home=["C", "A", "B"]).order == ("C", "A", "B")


def test_a_free_present_holder_before_a_full_loaded_one_without_a_current_server() -> None:
    decision = route(
        infer(),
        Server("A", rtt_ms=1.0, catalog=cat([LLAMA], [LLAMA], {LLAMA: 1})),
        Server("B", rtt_ms=9.0, catalog=cat([LLAMA])),
    )
    assert decision.order == ("B", "A")


def test_own_requests_count_at_once() -> None:
    a = Server("A", rtt_ms=1.0, catalog=cat([LLAMA], [LLAMA]))
    b = Server("B", rtt_ms=9.0, catalog=cat([LLAMA], [LLAMA]))
    assert route(infer(), a, b).order == ("A", "B")
    busy_a = Server("A", rtt_ms=1.0, catalog=a.catalog, own={LLAMA: 1})
    assert route(infer(), busy_a, b).order == ("B", "A")


def test_own_requests_that_ended_since_the_fetch_free_their_slots() -> None:
    # A's catalogue counted one request: this client's, which has ended since.
    a = Server(
        "A", rtt_ms=1.0, catalog=cat([LLAMA], [LLAMA], {LLAMA: 1}), own={}, own_at_fetch={LLAMA: 1}
    )
    b = Server("B", rtt_ms=9.0, catalog=cat([LLAMA], [LLAMA]))
    assert route(infer(), a, b).order == ("A", "B")
    # The same count from another client: A is full.
    other = Server("A", rtt_ms=1.0, catalog=a.catalog)
    assert route(infer(), other, b).order == ("B", "A")


def test_requests_for_other_models_do_not_fill_a_models_slots() -> None:
    decision = route(
        infer(),
        Server("A", rtt_ms=1.0, catalog=cat([LLAMA, PHI], [LLAMA, PHI], {PHI: 1}), own={PHI: 3}),
        Server("B", rtt_ms=9.0, catalog=cat([LLAMA], [LLAMA])),
    )
    assert decision.order == ("A", "B")


# --- stickiness ----------------------------------------------------------------------------------


def test_a_model_keeps_going_to_its_server_while_it_has_a_free_slot() -> None:
    decision = route(
        infer(),
        Server("A", rtt_ms=30.0, catalog=cat([LLAMA])),  # current, not even loaded
        Server("B", rtt_ms=1.0, catalog=cat([LLAMA], [LLAMA], capacity=4)),
        sticky={LLAMA: "A"},
    )
    assert decision.order == ("A", "B")
    assert decision.why == "current"
    assert decision.stick is None


def test_a_full_current_server_spills_to_a_loaded_holder_first() -> None:
    decision = route(
        infer(),
        Server("A", rtt_ms=1.0, catalog=cat([LLAMA], [LLAMA]), own={LLAMA: 1}),  # current, full
        Server("B", rtt_ms=2.0, catalog=cat([LLAMA], capacity=4)),  # nearer, more slots, not loaded
        Server("C", rtt_ms=20.0, catalog=cat([LLAMA], [LLAMA])),
        sticky={LLAMA: "A"},
    )
    assert decision.order == ("C", "B", "A")
    assert decision.why == "loaded"
    assert decision.stick is None  # A stays the model's server: it only spilled


def test_a_full_current_server_spills_to_a_present_holder_when_none_has_it_loaded() -> None:
    decision = route(
        infer(),
        Server("A", rtt_ms=1.0, catalog=cat([LLAMA], [LLAMA], {LLAMA: 2})),
        Server("B", rtt_ms=2.0, catalog=cat([LLAMA])),
        sticky={LLAMA: "A"},
    )
    assert decision.order == ("B", "A")
    assert decision.why == "free slot"
    assert decision.stick is None


def test_every_holder_full_joins_the_shortest_queue() -> None:
    decision = route(
        infer(),
        Server("A", rtt_ms=1.0, catalog=cat([LLAMA], [LLAMA], {LLAMA: 3})),  # queue 2
        Server("B", rtt_ms=2.0, catalog=cat([LLAMA], [LLAMA], {LLAMA: 2})),  # queue 1
        Server("C", rtt_ms=3.0, catalog=cat([LLAMA], [LLAMA], {LLAMA: 2}, capacity=2)),  # queue 0
        sticky={LLAMA: "A"},
    )
    assert decision.order == ("C", "B", "A")
    assert decision.why == "queue"
    assert decision.stick is None


def test_equal_queues_prefer_a_loaded_copy_then_the_nearer() -> None:
    decision = route(
        infer(),
        Server("A", rtt_ms=1.0, catalog=cat([LLAMA], [], {LLAMA: 1})),
        Server("B", rtt_ms=5.0, catalog=cat([LLAMA], [LLAMA], {LLAMA: 1})),
        Server("C", rtt_ms=2.0, catalog=cat([LLAMA], [LLAMA], {LLAMA: 1})),
    )
    assert decision.order == ("C", "B", "A")
    assert decision.stick == "C"


@pytest.mark.parametrize(
    ("current", "a", "stick"),
    [
        (None, Server("A", rtt_ms=1.0, catalog=cat([LLAMA])), "A"),  # no server yet
        ("Z", Server("A", rtt_ms=1.0, catalog=cat([LLAMA])), "A"),  # gone from the fleet
        ("A", Server("A", healthy=False, rtt_ms=1.0, catalog=cat([LLAMA])), "B"),  # unhealthy
        ("A", Server("A", rtt_ms=1.0, catalog=cat([PHI])), "B"),  # no longer has the model
        ("A", Server("A", rtt_ms=1.0, catalog=None), "B"),  # catalogue lost
        ("A", Server("A", rtt_ms=1.0, catalog=cat([LLAMA])), None),  # healthy, free: keep
        ("A", Server("A", rtt_ms=1.0, catalog=cat([LLAMA]), own={LLAMA: 1}), None),  # full: keep
    ],
)
def test_stick_is_set_only_when_the_current_server_is_missing_or_unusable(
    current: str | None, a: Server, stick: str | None
) -> None:
    b = Server("B", rtt_ms=9.0, catalog=cat([LLAMA]))
    sticky = {LLAMA: current} if current is not None else {}
    assert route(infer(), a, b, sticky=sticky).stick == stick


def test_stickiness_is_per_model() -> None:
    a = Server("A", rtt_ms=9.0, catalog=cat([LLAMA, PHI]))
    b = Server("B", rtt_ms=1.0, catalog=cat([LLAMA, PHI]))
    sticky = {LLAMA: "A", PHI: "B"}
    assert route(infer("llama3.2"), a, b, sticky=sticky).order == ("A", "B")
    assert route(infer("phi3"), a, b, sticky=sticky).order == ("B", "A")


# --- unhealthy holders ---------------------------------------------------------------------------


def test_unhealthy_holders_come_last_however_good_they_look() -> None:
    decision = route(
        infer(),
        Server("A", healthy=False, rtt_ms=0.1, catalog=cat([LLAMA], [LLAMA], capacity=8)),
        Server("B", rtt_ms=50.0, catalog=cat([LLAMA], [], {LLAMA: 4})),
        Server("C", rtt_ms=60.0, catalog=cat([PHI])),
        sticky={LLAMA: "A"},
    )
    assert decision.order == ("B", "A")
    assert decision.holders == {"A", "B"}
    assert decision.stick == "B"


def test_only_unhealthy_holders_are_still_tried() -> None:
    decision = route(
        infer(),
        Server("A", healthy=False, rtt_ms=1.0, catalog=cat([LLAMA])),
        Server("B", rtt_ms=1.0, catalog=cat([PHI])),
    )
    assert decision.order == ("A",)
    assert decision.holders == {"A"}
    assert decision.stick is None


# --- models nobody has, requests without a model -------------------------------------------------


def test_a_model_no_server_has_goes_home() -> None:
    decision = route(
        infer("mistral"),
        Server("A", rtt_ms=1.0, catalog=cat([LLAMA])),
        Server("B", rtt_ms=2.0, catalog=cat([PHI])),
        Server("C", catalog=None),
        home=["B", "A", "C"],
    )
    assert decision == Decision(("B", "A", "C"), why="no holder")


@pytest.mark.parametrize(
    "ask",
    [
        classify("GET", "/api/version"),
        classify("GET", "/api/tags"),
        classify("POST", "/api/chat"),  # the body named no model (unreadable, compressed)
        classify("POST", "/api/pull"),
        classify("HEAD", "/"),
    ],
)
def test_a_request_without_a_model_goes_home(ask: Ask) -> None:
    decision = route(
        ask,
        Server("A", rtt_ms=1.0, catalog=cat([LLAMA], [LLAMA])),
        Server("B", rtt_ms=2.0, catalog=cat([LLAMA])),
        home=["B", "A"],
        sticky={LLAMA: "A"},
    )
    assert decision == Decision(("B", "A"), why="home")


@pytest.mark.parametrize(
    "ask",
    [
        Ask(Kind.MANAGE, "/api/pull", model_key("mistral")),
        Ask(Kind.MANAGE, "/api/create", model_key("mine")),
    ],
)
def test_pull_and_create_of_a_model_nobody_has_go_home(ask: Ask) -> None:
    a, b = Server("A", catalog=cat([LLAMA])), Server("B", catalog=cat([PHI]))
    decision = route(ask, a, b, home=["B", "A"])
    assert decision.order == ("B", "A")
    assert decision.holders == frozenset()


# --- reading and managing a model ----------------------------------------------------------------


@pytest.mark.parametrize(
    "ask",
    [
        Ask(Kind.SHOW, "/api/show", LLAMA),
        Ask(Kind.SHOW, "/v1/models/llama3.2", LLAMA),
        Ask(Kind.MANAGE, "/api/delete", LLAMA),
        Ask(Kind.MANAGE, "/api/copy", LLAMA),
        Ask(Kind.MANAGE, "/api/push", LLAMA),
    ],
)
def test_show_delete_copy_push_go_to_a_server_that_has_the_model(ask: Ask) -> None:
    decision = route(
        ask,
        Server("A", rtt_ms=1.0, catalog=cat([PHI])),
        Server("B", rtt_ms=9.0, catalog=cat([LLAMA])),
        Server("C", rtt_ms=2.0, catalog=cat([PHI])),
    )
    assert decision.order == ("B",)
    assert decision.holders == {"B"}
    assert decision.stick is None
    assert decision.why == "holder"


def test_reading_a_model_prefers_its_current_server_then_a_loaded_copy_then_the_nearer() -> None:
    ask = Ask(Kind.SHOW, "/api/show", LLAMA)
    a = Server("A", rtt_ms=1.0, catalog=cat([LLAMA]))
    b = Server("B", rtt_ms=5.0, catalog=cat([LLAMA]))
    c = Server("C", rtt_ms=9.0, catalog=cat([LLAMA], [LLAMA]))
    down = Server("D", healthy=False, rtt_ms=0.1, catalog=cat([LLAMA], [LLAMA]))
    assert route(ask, a, b, c, down).order == ("C", "A", "B", "D")
    assert route(ask, a, b, c, down, sticky={LLAMA: "B"}).order == ("B", "C", "A", "D")
    assert route(ask, a, b, c, down).holders == {"A", "B", "C", "D"}


# --- blob affinity -------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["HEAD", "POST"])
def test_a_blob_goes_where_it_was_uploaded(method: str) -> None:
    ask = classify(method, "/api/blobs/sha256:" + "ab" * 32)
    servers = [Server(k, rtt_ms=1.0, catalog=cat([LLAMA])) for k in HOME]
    decision = route(ask, *servers, affinity={BLOB: "B"})
    assert decision == Decision(("B", "A", "C"), why="blob")


def test_an_unknown_blob_or_one_on_a_server_gone_goes_home() -> None:
    ask = classify("HEAD", "/api/blobs/sha256:" + "ab" * 32)
    servers = [Server(k) for k in ("A", "C")]
    assert route(ask, *servers, home=["C", "A"]) == Decision(("C", "A"), why="home")
    gone = route(ask, *servers, home=["C", "A"], affinity={BLOB: "B"})
    assert gone == Decision(("C", "A"), why="home")


def test_create_goes_to_the_server_that_has_its_files() -> None:
    other = "sha256-" + "cd" * 32
    create = Ask(Kind.MANAGE, "/api/create", model_key("mine"), blobs=(other, BLOB))
    servers = [Server(k, rtt_ms=1.0, catalog=cat([LLAMA])) for k in HOME]
    decision = route(create, *servers, affinity={BLOB: "C"})
    assert decision == Decision(("C", "A", "B"), why="blob")


def test_create_with_files_beats_the_holders_of_the_model_it_replaces() -> None:
    create = Ask(Kind.MANAGE, "/api/create", LLAMA, blobs=(BLOB,))
    decision = route(
        create,
        Server("A", catalog=cat([LLAMA])),
        Server("B", catalog=cat([PHI])),
        affinity={BLOB: "B"},
    )
    assert decision.order == ("B", "A")


def test_create_with_unknown_files_is_routed_by_its_model() -> None:
    create = Ask(Kind.MANAGE, "/api/create", model_key("mine"), blobs=(BLOB,))
    affinity = {"sha256-other": "A"}
    decision = route(create, Server("A"), Server("B"), home=["B", "A"], affinity=affinity)
    assert decision == Decision(("B", "A"), why="no holder")


# --- scenarios through the client's view ---------------------------------------------------------


def peer(key: str, rtt_ms: float | None, *, healthy: bool = True) -> Peer:
    return Peer(
        key, Endpoint(f"10.0.0.{ord(key[0])}", 11435), Source.MULTICAST, 0.0, 0.0, 6.0,
        healthy=healthy, rtt_ms=rtt_ms,
    )


def test_two_servers_one_slot_each_eight_concurrent_requests_use_both_boxes() -> None:
    view = FleetView()
    peers = [peer("A", 1.0), peer("B", 2.0)]
    for p in peers:
        view.fetched(p.key, cat([LLAMA], [LLAMA], capacity=1), view.own_now(p.key))
    ask = infer()
    sent: list[str] = []
    for _ in range(8):  # all eight start before any ends
        first = view.decide(ask, peers, ["A", "B"], now=0.0).order[0]
        view.begin(first, LLAMA)
        sent.append(first)
    assert Counter(sent) == {"A": 4, "B": 4}
    assert sent[:2] == ["A", "B"]  # the second request already uses the second box


def test_loaded_on_b_only_keeps_every_request_on_b_and_stays_there_after_b_unloads() -> None:
    view = FleetView()
    peers = [peer("A", 0.2), peer("B", 8.0)]  # A is nearer
    view.fetched("A", cat([LLAMA]), {})
    view.fetched("B", cat([LLAMA], [LLAMA]), {})
    ask = infer()

    def one() -> str:
        first = view.decide(ask, peers, ["A", "B"], now=0.0).order[0]
        view.begin(first, LLAMA)
        view.end(first, LLAMA)
        return first

    assert [one() for _ in range(100)] == ["B"] * 100
    view.fetched("B", cat([LLAMA]), view.own_now("B"))  # keep_alive 0: unloaded on B
    assert [one() for _ in range(20)] == ["B"] * 20


def test_200_requests_for_models_only_one_of_three_servers_has_0_misrouted() -> None:
    view = FleetView()
    peers = [peer("A", 1.0), peer("B", 2.0), peer("C", 3.0)]
    owner = {"llama3.2": "A", "phi3": "B", "mistral:7b": "C", "qwen2.5:0.5b": "C"}
    for key in ("A", "B", "C"):
        names = [m for m, k in owner.items() if k == key]
        view.fetched(key, cat(names, names[:1], capacity=2), {})
    models = list(owner)
    running: list[tuple[str, str]] = []
    misrouted = 0
    for i in range(200):
        name = models[i % len(models)]
        ask = infer(name)
        decision = view.decide(ask, peers, ["A", "B", "C"], now=float(i))
        misrouted += decision.order != (owner[name],)
        view.begin(decision.order[0], ask.model)
        running.append((decision.order[0], ask.model))
        if i % 3 == 2:  # some end, some pile up
            view.end(*running.pop(0))
    assert misrouted == 0
