"""Cost of reading one HTTP/1.1 head, the passthrough's way against Tornado's.

The passthrough reads every relayed request head and every session answer's head. It uses
llhttp through httptools (uws.passthrough.head); the alternative at hand is Tornado's own
parser (httputil.parse_*_start_line and HTTPHeaders.parse), which the server's Tornado side
uses. Both run here side by side, in one process, over the same typical heads.

    python bench/head_bench.py [--rounds 5] [--number 50000]
"""

from __future__ import annotations

import argparse
import statistics
import timeit

from tornado import httputil

from uws.passthrough.head import RequestHeads
from uws.passthrough.upstream import UpstreamConnection

REQUEST = (
    b"GET /static/lab/main.js?v=1 HTTP/1.1\r\nHost: j12-0123456789abcdef.localhost:8000\r\n"
    b"User-Agent: Mozilla/5.0 (X11; Linux x86_64)\r\nAccept: */*\r\nAccept-Encoding: gzip\r\n"
    b"Cookie: uws-session-12=12.3.1700000000000000.abcdef; _xsrf=2|abc\r\n\r\n"
)
RESPONSE = (
    b"HTTP/1.1 200 OK\r\nServer: TornadoServer/6.4\r\nContent-Type: application/javascript\r\n"
    b'Date: Tue, 01 Dec 2026 10:00:00 GMT\r\nEtag: "abc"\r\nCache-Control: no-cache\r\n'
    b"Content-Length: 5\r\n\r\n"
)
# (Tornado's side reads the head only: the relay's llhttp figure includes the 5-byte body.)


def tornado_request() -> object:
    text = REQUEST[: REQUEST.index(b"\r\n\r\n")].decode("latin1")
    first, _, rest = text.partition("\r\n")
    return httputil.parse_request_start_line(first), httputil.HTTPHeaders.parse(rest)


def tornado_response() -> object:
    text = RESPONSE[: RESPONSE.index(b"\r\n\r\n")].decode("latin1")
    first, _, rest = text.partition("\r\n")
    return httputil.parse_response_start_line(first), httputil.HTTPHeaders.parse(rest)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--number", type=int, default=50_000)
    args = parser.parse_args()
    heads = RequestHeads()  # one per connection, as the front door keeps it
    upstream = UpstreamConnection()  # (no socket: the answer is handed to it as if it came)

    def llhttp_response() -> object:
        upstream.begin(False)
        upstream.data_received(RESPONSE + b"hello")
        return upstream.head

    cases = {
        "request head, llhttp (httptools)": lambda: heads.parse(REQUEST),
        "request head, Tornado": tornado_request,
        "answer head and body, llhttp (httptools)": llhttp_response,
        "answer head, Tornado": tornado_response,
    }
    results: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(args.rounds):  # interleaved, so machine noise hits every case alike
        for name, case in cases.items():
            seconds = timeit.timeit(case, number=args.number)
            results[name].append(seconds / args.number * 1e6)
    for name, values in results.items():
        print(f"{name:42s} median {statistics.median(values):6.2f} µs  (min {min(values):.2f})")


if __name__ == "__main__":
    main()
