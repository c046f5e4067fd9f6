"""uws/passthrough/head.py, beyond tests/unit/test_unit_head.py: what Head accepts reads as Tornado's
HTTPHeaders reads it, and the edits a relay makes keep the other lines as they were."""

from __future__ import annotations

import pytest
from tornado import httputil

from uws.passthrough.head import Head, parse_response_head


def parse(text: str) -> Head:
    """Header lines as the passthrough reads them from a session's answer (llhttp)."""
    lines = (text + "\r\n" if text else "").encode("latin1")
    return parse_response_head(b"HTTP/1.1 204 No Content\r\n" + lines + b"\r\n").headers


@pytest.mark.parametrize(
    "text",
    [
        "Host: example.org",
        "X-Empty:",
        "X-Empty:   ",
        "X-Tab: a\tb",
        "X-Spaced: \t padded value \t",
        "Content-Type: text/html; charset=utf-8\r\nContent-Length: 12",
        "Set-Cookie: a=1; Path=/\r\nset-cookie: b=2\r\nSET-COOKIE: c=3",
        "X-Latin: caf\xe9",
        "!#$%&'*+-.^_`|~09azAZ: token characters",
        "Link: <https://a.example/>; rel=preload, <https://b.example/>; rel=next",
    ],
)
def test_accepted_heads_read_as_tornado_reads_them(text: str) -> None:
    theirs = httputil.HTTPHeaders.parse(text)
    ours = parse(text)
    assert [(n.lower(), v) for n, v in ours.get_all()] == [(n.lower(), v) for n, v in theirs.get_all()]
    for name in {n for n, _ in theirs.get_all()}:
        assert ours.get(name) == theirs.get(name)
        assert ours[name.lower()] == theirs[name] and ours[name.upper()] == theirs[name]
    assert list(ours.to_tornado().get_all()) == list(theirs.get_all())


def test_empty_head() -> None:
    head = parse("")
    assert list(head.get_all()) == []
    assert head.encode("HTTP/1.1 204 No Content") == b"HTTP/1.1 204 No Content\r\n\r\n"
    with pytest.raises(KeyError):
        head["Host"]


def test_setting_keeps_the_other_lines_in_order() -> None:
    head = Head([("A", "1"), ("Via", "x"), ("B", "2"), ("via", "y"), ("C", "3")])
    head["X-New"] = "n"  # a new name goes last
    head["VIA"] = "z"  # every line of a present name is replaced by one, at the end
    assert list(head.get_all()) == [("A", "1"), ("B", "2"), ("C", "3"), ("X-New", "n"), ("VIA", "z")]
    assert head.get("via") == "z"


def test_add_joins_repeated_values() -> None:
    head = Head()
    head.add("Accept", "text/html")
    head.add("accept", "application/json")
    assert head["ACCEPT"] == "text/html,application/json"
    assert len(list(head.get_all())) == 2


def test_contains_only_strings() -> None:
    head = Head([("Host", "a")])
    assert "host" in head
    assert b"Host" not in head and None not in head and 1 not in head


def test_encode_round_trips_through_parse() -> None:
    text = "Host: a\r\nX-Tab: 1\t2\r\nX-Empty: "
    head = parse(text)
    wire = head.encode("GET /x HTTP/1.1")
    start, _, rest = wire.decode("latin1").partition("\r\n")
    assert start == "GET /x HTTP/1.1" and rest.endswith("\r\n\r\n")
    assert list(parse(rest[: -len("\r\n\r\n")]).get_all()) == list(head.get_all())


def test_encode_refuses_a_line_break_in_the_start_line() -> None:
    with pytest.raises(ValueError):
        Head([("Host", "a")]).encode("GET / HTTP/1.1\r\nEvil: 1")


def test_encode_is_latin1_as_tornado_writes_heads() -> None:
    head = Head([("X", "caf\xe9")])
    assert head.encode("GET / HTTP/1.1") == b"GET / HTTP/1.1\r\nX: caf\xe9\r\n\r\n"
