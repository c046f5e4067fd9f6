"""uws/passthrough/head.py, the header blocks the passthrough parses and writes: the same rules as
Tornado's HTTPHeaders for what gets through and how it reads, and the edits a relay makes keep
the other lines as they were (pure functions: tested directly)."""

from __future__ import annotations

import pytest
from tornado import httputil

from uws.passthrough.head import Head, HeadError, parse_response_head


def parse(text: str) -> Head:
    """Header lines as the passthrough reads them from a session's answer (llhttp)."""
    lines = (text + "\r\n" if text else "").encode("latin1")
    return parse_response_head(b"HTTP/1.1 204 No Content\r\n" + lines + b"\r\n").headers


def test_parse_keeps_order_and_finds_names_in_any_case() -> None:
    head = parse("Host: a\r\nSet-Cookie: x=1\r\nX-Pad:  v \t\r\nset-cookie: y=2")
    assert list(head.get_all()) == [
        ("Host", "a"),
        ("Set-Cookie", "x=1"),
        ("X-Pad", "v"),
        ("set-cookie", "y=2"),
    ]
    assert head.get("HOST") == "a" and head["x-pad"] == "v" and "SET-COOKIE" in head
    assert head.get("set-cookie") == "x=1,y=2"  # repeated names read joined, as HTTPHeaders
    assert head.get("missing", "d") == "d" and "missing" not in head


@pytest.mark.parametrize(
    "text",
    [
        "X : y",
        " X: y",
        "\tX: y",
        "X",
        "X: a\x00b",
        "X: a\rb",
        "X: a\nb",
        "X\x7f: y",
        "X(: y",
        ": y",
        "X: a\x1fb",
    ],
)
def test_parse_refuses_what_tornado_refuses(text: str) -> None:
    with pytest.raises(httputil.HTTPInputError):
        httputil.HTTPHeaders.parse(text)  # the rule being matched
    with pytest.raises(HeadError):
        parse(text)


def test_encode_writes_the_head_and_refuses_line_breaks() -> None:
    head = parse("Host: a")
    head["X-Forwarded-For"] = "10.0.0.1"
    head["x-forwarded-for"] = "10.0.0.2"  # replaces, whatever the case
    assert head.encode("GET / HTTP/1.1") == b"GET / HTTP/1.1\r\nHost: a\r\nx-forwarded-for: 10.0.0.2\r\n\r\n"
    for value in ("a\r\nEvil: 1", "a\nEvil: 1", "a\rEvil: 1"):
        bad = Head([("Host", "a")])
        bad.add("X", value)
        with pytest.raises(ValueError):
            bad.encode("GET / HTTP/1.1")


def test_to_tornado_keeps_repeated_lines() -> None:
    headers = parse("Set-Cookie: a=1\r\nSet-Cookie: b=2").to_tornado()
    assert headers.get_list("Set-Cookie") == ["a=1", "b=2"]


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
