"""uws/passthrough/head.py, the header blocks the passthrough parses and writes: the same rules as
Tornado's HTTPHeaders for what gets through (a pure function: tested directly)."""

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
