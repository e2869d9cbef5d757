"""The texts an app gets when no server can take its request (roles/no_server.py): pure."""

from __future__ import annotations

import pytest

from ollana.roles.no_server import MAX_LISTED, Unusable, Why, failure, listed, no_answer, no_server


def test_nothing_known_with_discovery_suggests_serving_or_a_peer() -> None:
    said = no_server([], waited=3, discovery=True)
    assert said.startswith("ollana: no Ollama server found on the LAN (waited 3 s for discovery)")
    assert "--peer HOST:PORT" in said


def test_nothing_known_without_discovery_never_says_it_waited() -> None:
    said = no_server([], waited=3, discovery=False)
    assert "discovery is off" in said and "waited" not in said and "--peer HOST:PORT" in said


def test_a_named_server_without_discovery_gets_no_suggestion_of_peer_or_waiting() -> None:
    plain = Unusable("", "10.0.0.2:11435", Why.NO_CERTIFICATE, named=True)
    said = no_server([plain], waited=3, discovery=False)
    assert said == (
        "ollana: no usable Ollama server found; known server: 10.0.0.2:11435 [--peer]: its certificate "
        "could not be read: it is unreachable, or it runs --trust open (plain HTTP), which this client "
        "(trust mode devices) never uses"
    )


def test_each_server_says_why_and_suggestions_fit_discovery() -> None:
    servers = [
        Unusable("gpu-box", "10.0.0.2:11435", Why.PLAIN),
        Unusable("old-box", "10.0.0.3:11435", Why.GOODBYE, when="12 s ago"),
        Unusable("lab", "10.0.0.4:11435", Why.SILENT, when="3 min ago"),
    ]
    said = no_server(servers, waited=3, discovery=True)
    assert "known 3 servers: gpu-box (10.0.0.2:11435): it runs --trust open" in said
    assert "old-box (10.0.0.3:11435): it said goodbye: it was stopped, or its Ollama stopped answering (12 s ago)" in said
    assert "lab (10.0.0.4:11435): its heartbeats stopped" in said
    assert said.endswith("Other servers are found as they announce themselves; pass --peer HOST:PORT for one multicast cannot reach")


def test_servers_that_left_are_named_after_the_usual_suggestions() -> None:
    servers = [Unusable("old-box", "10.0.0.3:11435", Why.GOODBYE, when="12 s ago")]
    said = no_server(servers, waited=3, discovery=True)
    assert said.startswith("ollana: no Ollama server found on the LAN (waited 3 s for discovery); run `ollana serve`")
    assert said.endswith(". Seen before: old-box (10.0.0.3:11435): it said goodbye: it was stopped, or its Ollama "
                         "stopped answering (12 s ago)")


def test_unpaired_servers_keep_the_pairing_hint_and_others_follow() -> None:
    hint = "ollana: found Ollama servers on the LAN, but none is paired with this device: a (ABC). Pair: ..."
    servers = [Unusable("a", "10.0.0.2:11435", Why.UNPAIRED), Unusable("b", "10.0.0.3:11435", Why.SPEAKS_TLS)]
    said = no_server(servers, waited=3, discovery=True, pair_hint=hint)
    assert said.startswith("ollana: found Ollama servers on the LAN, but none is paired with this device")
    assert "Other servers: b (10.0.0.3:11435): it serves only paired devices over TLS" in said
    assert no_server(servers[:1], waited=3, discovery=True, pair_hint=hint) == hint.rstrip(". ")


@pytest.mark.parametrize("count", [MAX_LISTED, MAX_LISTED + 1, 500])
def test_the_list_is_bounded(count: int) -> None:
    servers = [Unusable(f"s{i}", f"10.0.{i // 250}.{i % 250}:11435", Why.SILENT) for i in range(count)]
    text = listed(servers)
    assert text.count(": its heartbeats stopped") == min(count, MAX_LISTED)
    if count > MAX_LISTED:
        assert text.endswith(f"; and {count - MAX_LISTED} more")
    assert len(no_server(servers, waited=3, discovery=True)) < 2000


@pytest.mark.parametrize(("reason", "why", "detail"), [
    ("http://10.0.0.2:11435: Cannot connect to host 10.0.0.2:11435 ssl:default [Connect call failed ('10.0.0.2', 11435)]",
     Why.UNREACHABLE, "connection refused (nothing listens there)"),
    ("https://10.0.0.2:11435: TimeoutError", Why.UNREACHABLE, "it did not answer in time"),
    ("answered 503 without forwarding", Why.NOT_FORWARDED, ""),
    ("https://h:1: Cannot connect to host h:1 ssl:<ssl.SSLContext> [SSLCertVerificationError ...]", Why.FAILED, "the TLS handshake failed"),
    ("http://h:1: Server disconnected", Why.FAILED, "it closed the connection"),
    ("http://nope:1: Cannot connect to host nope:1 ssl:default [Name or service not known]", Why.UNREACHABLE,
     "its name does not resolve"),
    ("", Why.UNREACHABLE, ""),
])
def test_failures_in_words(reason: str, why: Why, detail: str) -> None:
    assert failure(reason) == (why, detail)


def test_no_answer_names_each_server_tried() -> None:
    said = no_answer([Unusable("gpu-box", "10.0.0.2:11435", Why.NOT_FORWARDED)])
    assert said == ("ollana: no Ollama server on the LAN answered; tried gpu-box (10.0.0.2:11435): it answered, "
                    "but could not reach its own Ollama (is that Ollama running?)")


def test_the_route_names_a_server_heard_on_both_families_by_ipv4_and_forgets_it_when_found() -> None:
    from ollana.config import Endpoint
    from ollana.discovery.peers import Change, ChangeKind, Peer, PeerTable, Source
    from ollana.fleet.view import FleetView
    from ollana.roles.client_route import ClientRoute

    async def fetch(_p: Peer) -> None:
        return None

    now = [100.0]
    route = ClientRoute(PeerTable(), FleetView(), lambda: now[0], 3.0, lambda: None, fetch, lambda _p: None)
    route.other_mode("k1", "vm", Endpoint("10.0.0.1", 11435), "open")
    route.other_mode("k1", "vm", Endpoint("fe80::1%eth0", 11435), "open")
    [seen] = route.unusable()
    assert (seen.name, seen.address, seen.why) == ("vm", "10.0.0.1:11435", Why.PLAIN)
    gone = Peer("k2", Endpoint("10.0.0.2", 11435), Source.MULTICAST, 0, 0, 6.0, hostname="box")
    route.note(Change(ChangeKind.REMOVED, gone))
    now[0] += 125
    assert [(s.name, s.why, s.when) for s in route.unusable()] == [("box", Why.GOODBYE, "2 min ago"), ("vm", Why.PLAIN, "")]
    route.note(Change(ChangeKind.ADDED, gone))  # back: no longer named as gone
    assert [s.name for s in route.unusable()] == ["vm"]
    now[0] += 31 * 60  # remembered for 30 minutes
    assert route.unusable() == []
