"""HTTP/1.1 heads as the passthrough reads and writes them.

Reading is llhttp's, through httptools (the parser uvicorn uses): strict RFC 9112 framing, RFC
9110 field names, no control characters in values, no folding, one Content-Length, no
Content-Length beside Transfer-Encoding, hex-only chunk sizes. It reads a request head several
times faster than Tornado's own parser (`bench/head_bench.py` runs both side by side). `Head`
keeps the lines as they came, so a relay filters them and looks up the few names it needs
without rebuilding anything.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import overload

import httptools
from tornado import httputil

# The longest head read, as Tornado's max_header_size: a longer request head goes to Tornado,
# which refuses it; a longer answer head ends its request (502).
MAX_HEAD = 65536


class HeadError(Exception):
    """A head that is not HTTP/1.1 as RFC 9112 has it (a client's: 400; a session's: 502)."""


class Head:
    """Header lines in their order, looked up without regard to case. Repeated names read as
    their values joined with commas, as with Tornado's HTTPHeaders."""

    __slots__ = ("_lines", "_index")

    def __init__(self, lines: Iterable[tuple[str, str]] = ()) -> None:
        self._lines: list[tuple[str, str]] = []
        self._index: dict[str, str] = {}
        for name, value in lines:
            self.add(name, value)

    @classmethod
    def from_raw(cls, lines: Iterable[tuple[bytes, bytes]]) -> Head:
        """Lines as the parser gave them (checked already), decoded as HTTP has it: Latin-1.
        (llhttp leaves the whitespace after a value, which is not part of it: RFC 9110 5.5.)"""
        head = cls()
        # add(), inlined: this runs for every request and every answer the passthrough relays.
        own, index = head._lines, head._index
        for raw_name, raw_value in lines:
            name = raw_name.decode("latin1")
            value = raw_value.rstrip(b" \t").decode("latin1")
            own.append((name, value))
            key = name.lower()
            old = index.get(key)
            index[key] = value if old is None else f"{old},{value}"
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

    @overload
    def get(self, name: str) -> str | None: ...
    @overload
    def get(self, name: str, default: str) -> str: ...
    def get(self, name: str, default: str | None = None) -> str | None:
        return self._index.get(name.lower(), default)

    def __getitem__(self, name: str) -> str:
        return self._index[name.lower()]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._index

    def get_all(self) -> Iterator[tuple[str, str]]:
        return iter(self._lines)

    def to_tornado(self) -> httputil.HTTPHeaders:
        """The same lines as Tornado's HTTPHeaders, for Tornado's own writers."""
        headers = httputil.HTTPHeaders()
        for name, value in self._lines:
            headers.add(name, value)
        return headers

    def encode(self, start_line: str) -> bytes:
        """The whole head on the wire: start line, header lines, blank line."""
        text = "\r\n".join([start_line, *(f"{name}: {value}" for name, value in self._lines)])
        # The joins are the only line breaks allowed: a value added by code (not parsed) with a
        # CR or LF of its own would split the head. The joins make one CR and one LF each, so
        # any other would make a count exceed theirs.
        breaks = len(self._lines)
        if text.count("\r") != breaks or text.count("\n") != breaks:
            raise ValueError("a header with a line break")
        return (text + "\r\n\r\n").encode("latin1")


@dataclass(slots=True)
class RequestHead:
    method: str
    path: str  # the request target as sent: path and query
    version: str  # "1.1", "1.0"
    headers: Head
    upgrade: bool  # the client asks to switch protocols (a websocket)


class RequestHeads:
    """Request heads from one client connection, one after another (keep-alive)."""

    def __init__(self) -> None:
        self._parser = httptools.HttpRequestParser(self)
        self._reusable = True
        self._lines: list[tuple[bytes, bytes]] = []
        self._url = b""
        self._complete = False

    # llhttp's callbacks
    def on_message_begin(self) -> None:
        self._lines = []
        self._url = b""
        self._complete = False

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._lines.append((name, value))

    def on_headers_complete(self) -> None:
        self._complete = True

    def parse(self, data: bytes) -> RequestHead:
        """The request whose head is `data`, up to and including its blank line. A request with
        a body, or an upgrade, leaves the parser expecting what follows: the caller must not
        parse from this connection again (it hands the connection on)."""
        if not self._reusable:
            self._parser = httptools.HttpRequestParser(self)
        self._reusable = False
        upgrade = False
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            upgrade = True
        except httptools.HttpParserError as e:
            raise HeadError(str(e)) from None
        if not self._complete:
            raise HeadError("incomplete request head")
        request = RequestHead(
            self._parser.get_method().decode("latin1"),
            self._url.decode("latin1"),
            self._parser.get_http_version(),
            Head.from_raw(self._lines),
            upgrade,
        )
        # Bodyless and not an upgrade: llhttp has finished the message and waits for the next.
        self._reusable = not upgrade and "Content-Length" not in request.headers
        self._reusable = self._reusable and "Transfer-Encoding" not in request.headers
        return request


@dataclass(slots=True)
class ResponseHead:
    code: int
    reason: str
    version: str
    headers: Head


class AnswerHeads:
    """llhttp's callbacks that collect each answer's head (status, reason, header lines, but not
    a chunked body's trailers), for a class that reads answers with an HttpResponseParser made
    on itself (`_parser`). Its on_headers_complete calls `_take_head()`."""

    _parser: httptools.HttpResponseParser
    _lines: list[tuple[bytes, bytes]]
    _reason: bytes
    _in_head: bool

    def _clear_head(self) -> None:
        self._lines = []
        self._reason = b""
        self._in_head = True

    def on_message_begin(self) -> None:
        self._clear_head()

    def on_status(self, reason: bytes) -> None:
        self._reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._in_head:
            self._lines.append((name, value))

    def _take_head(self) -> ResponseHead:
        """The head just completed (and no more header lines: what follows is trailers)."""
        self._in_head = False
        parser = self._parser
        return ResponseHead(
            parser.get_status_code(),
            self._reason.decode("latin1"),
            parser.get_http_version(),
            Head.from_raw(self._lines),
        )


class _OneAnswerHead(AnswerHeads):
    def __init__(self) -> None:
        self._clear_head()
        self._parser = httptools.HttpResponseParser(self)
        self.head: ResponseHead | None = None

    def on_headers_complete(self) -> None:
        self.head = self._take_head()


def parse_response_head(data: bytes) -> ResponseHead:
    """The answer whose head is `data` (up to its blank line, or with the start of a body): for
    tests and one-off reads. Relays read answers as they stream (uws.passthrough.upstream)."""
    reader = _OneAnswerHead()
    try:
        reader._parser.feed_data(data)
    except httptools.HttpParserUpgrade:
        pass
    except httptools.HttpParserError as e:
        raise HeadError(str(e)) from None
    if reader.head is None:
        raise HeadError("incomplete response head")
    return reader.head
