from __future__ import annotations

from multidict import CIMultiDict, CIMultiDictProxy

from ollana.proxy.headers import is_from_ollana, request_headers, response_headers


def proxy(*items: tuple[str, str]) -> CIMultiDictProxy[str]:
    return CIMultiDictProxy(CIMultiDict(items))


def test_request_headers_rewrite_host_drop_hop_by_hop_keep_the_rest_in_order() -> None:
    incoming = proxy(
        ("Host", "box.lan:11435"),
        ("User-Agent", "ollama-python/0.6.3"),
        ("Authorization", "Bearer x"),
        ("Origin", "http://192.168.1.5:3000"),
        ("Content-Encoding", "zstd"),
        ("Connection", "keep-alive, X-Secret"),
        ("X-Secret", "hop"),
        ("Keep-Alive", "timeout=5"),
        ("Transfer-Encoding", "chunked"),
        ("Proxy-Authorization", "Basic y"),
        ("TE", "trailers"),
        ("Upgrade", "h2c"),
        ("Expect", "100-continue"),
        ("X-Multi", "1"),
        ("X-Multi", "2"),
        ("Content-Length", "12"),
    )
    out = request_headers(incoming, "127.0.0.1:11434")
    assert list(out.items()) == [
        ("User-Agent", "ollama-python/0.6.3"),
        ("Authorization", "Bearer x"),
        ("Origin", "http://192.168.1.5:3000"),
        ("Content-Encoding", "zstd"),
        ("X-Multi", "1"),
        ("X-Multi", "2"),
        ("Content-Length", "12"),
        ("Host", "127.0.0.1:11434"),
    ]


def test_response_headers_mark_via_and_drop_framing() -> None:
    out = response_headers(proxy(
        ("Content-Type", "application/x-ndjson"), ("Transfer-Encoding", "chunked"),
        ("Content-Length", "5"), ("Date", "x"), ("Via", "1.1 ollana"),
    ))
    assert out.getall("Via") == ["1.1 ollana", "1.1 ollana"]
    assert "Content-Length" not in out and "Transfer-Encoding" not in out
    assert out["Date"] == "x"


def test_is_from_ollana() -> None:
    assert is_from_ollana(proxy(("Via", "1.0 fred, 1.1 ollana")))
    assert not is_from_ollana(proxy(("Via", "1.1 nginx")))
    assert not is_from_ollana(proxy(("Server", "ollana")))


def test_forwarded_requests_carry_the_hop_mark_and_a_loop_is_recognised() -> None:
    from ollana.proxy.headers import hop_mark, passed

    me = hop_mark("9e47df3c45a9dfa3741d5abada65c782")
    assert me == "ollana-9e47df3c"
    incoming = CIMultiDictProxy(CIMultiDict([("Via", "1.1 proxy.example"), ("Accept", "*/*")]))
    out = request_headers(incoming, "127.0.0.1:11434", me)
    assert out.getall("Via") == ["1.1 proxy.example", f"1.1 {me}"]
    assert not passed(incoming, me)
    assert passed(CIMultiDictProxy(out), me)
    assert passed(CIMultiDictProxy(CIMultiDict([("Via", f"1.0 fred, 1.1 {me}")])), me)
    assert not passed(CIMultiDictProxy(CIMultiDict([("Via", "1.1 ollana")])), me)  # a response mark
