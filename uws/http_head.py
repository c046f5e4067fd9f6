"""HTTP/1.1 header blocks as the passthrough relays them.

Tornado's HTTPHeaders checks each name and value with its own regular expressions and
normalises every name as it goes; parsing a session app's five-line answer took 20 µs, a fifth
of the server's work for a small proxied request. A relay only needs to filter lines and look
up a handful of names, so `Head` keeps the lines as they came, checked to the same rules (RFC
9110 field names; no control characters in values; no folding).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator

from tornado import httputil

# A field name is an RFC 9110 token; a value may hold no control character but tab. (Separate
# checks, each linear: one pattern for the whole line backtracked quadratically on whitespace.)
_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


class Head:
    """Header lines in their order, looked up without regard to case. Repeated names read as
    their values joined with commas, as with HTTPHeaders."""

    __slots__ = ("_lines", "_index")

    def __init__(self, lines: Iterable[tuple[str, str]] = ()) -> None:
        self._lines: list[tuple[str, str]] = []
        self._index: dict[str, str] = {}
        for name, value in lines:
            self.add(name, value)

    @classmethod
    def parse(cls, text: str) -> Head:
        """The header lines of a head (the text between the start line and the blank line)."""
        head = cls()
        if text:
            for line in text.split("\r\n"):
                name, colon, value = line.partition(":")
                if not colon or _NAME.fullmatch(name) is None or _CONTROL.search(value) is not None:
                    raise httputil.HTTPInputError(f"malformed header line {line[:100]!r}")
                head.add(name, value.strip(" \t"))
        return head

    def add(self, name: str, value: str) -> None:
        self._lines.append((name, value))
        key = name.lower()
        old = self._index.get(key)
        self._index[key] = value if old is None else f"{old},{value}"

    def __setitem__(self, name: str, value: str) -> None:
        key = name.lower()
        if key in self._index:
            self._lines = [line for line in self._lines if line[0].lower() != key]
            del self._index[key]
        self.add(name, value)

    def get(self, name: str, default: str | None = None) -> str | None:
        return self._index.get(name.lower(), default)

    def __getitem__(self, name: str) -> str:
        return self._index[name.lower()]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._index

    def get_all(self) -> Iterator[tuple[str, str]]:
        return iter(self._lines)

    def to_tornado(self) -> httputil.HTTPHeaders:
        """The same lines as Tornado's HTTPHeaders, for Tornado's own writers and clients."""
        headers = httputil.HTTPHeaders()
        for name, value in self._lines:
            headers.add(name, value)
        return headers

    def encode(self, start_line: str) -> bytes:
        """The whole head on the wire: start line, header lines, blank line."""
        text = "\r\n".join([start_line, *(f"{name}: {value}" for name, value in self._lines)])
        # The joins are the only line breaks allowed: a value added by code (not parsed) with a
        # CR or LF of its own would split the head.
        breaks = len(self._lines)
        if text.count("\r") != breaks or text.count("\n") != breaks or text.count("\r\n") != breaks:
            raise ValueError("a header with a line break")
        return (text + "\r\n\r\n").encode("latin1")
