"""A hostile session app: answers that break HTTP/1.1 framing on purpose (Python stdlib only, so
it runs on the system Python as another OS account, as sessions do).

    python hostile_app.py PORT PREFIX

GET {prefix}/hello              -> "hello" (readiness; a well-formed answer)
GET {prefix}/chunk?size=S       -> a chunked answer whose first chunk size line is S as given
                                   (e.g. -5, +5, 0x5, 5_0), then "ab"
GET {prefix}/upgrade            -> 101 Switching Protocols to a plain GET, then bytes that look
                                   like a second answer of the app's choosing
GET {prefix}/big-head           -> a head of 100 KiB that never ends
GET {prefix}/truncated          -> Content-Length: 1000 and 10 bytes, then the connection drops
GET {prefix}/garbage            -> bytes that are no HTTP at all
GET {prefix}/bare-lf            -> an answer whose head lines end in a bare LF
GET {prefix}/slow?s=N           -> the head a byte at a time, N seconds in all (at most 30)
GET {prefix}/interim            -> 100 Continue forever (bounded: 1000 of them, then closes)
GET {prefix}/random?seed=N      -> one of the above, chosen by the seed (slow at most 2 s)
WS  {prefix}/flood?mb=N         -> a websocket that sends N MiB (at most 1024) in 512 KiB binary
                                   messages as fast as the connection takes them, then closes

Every answer ends the connection, so each request meets the app afresh.
"""

import asyncio
import base64
import hashlib
import random
import sys
from urllib.parse import parse_qs, urlsplit

PORT = int(sys.argv[1])
PREFIX = sys.argv[2].rstrip("/") if len(sys.argv) > 2 else ""

HELLO = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Type: text/plain\r\n\r\nhello"
INJECTED = b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\nX-Injected: yes\r\n\r\nINJECTED!"


async def chunk(writer, size=b"-5"):
    writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + size + b"\r\nab")
    await writer.drain()
    await asyncio.sleep(1)  # hold the connection open: a broken relay keeps waiting for more


async def upgrade(writer):
    writer.write(b"HTTP/1.1 101 Switching Protocols\r\n\r\n" + INJECTED)
    await writer.drain()
    await asyncio.sleep(1)


async def big_head(writer):
    writer.write(b"HTTP/1.1 200 OK\r\n" + b"X-Filler: " + b"y" * 100_000 + b"\r\n")
    await writer.drain()
    await asyncio.sleep(1)


async def truncated(writer):
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n0123456789")
    await writer.drain()


async def garbage(writer):
    writer.write(bytes(random.randrange(256) for _ in range(200)) + b"\r\n\r\n")
    await writer.drain()


async def bare_lf(writer):
    writer.write(b"HTTP/1.1 200 OK\nContent-Length: 2\n\nok")
    await writer.drain()
    await asyncio.sleep(1)


async def slow(writer, seconds=2.0):
    seconds = min(max(seconds, 0.0), 30.0)
    data = HELLO
    for i in range(len(data)):
        writer.write(data[i : i + 1])
        await writer.drain()
        await asyncio.sleep(seconds / len(data))


async def interim(writer):
    for _ in range(1000):
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    await writer.drain()


async def negative_chunk(writer):
    await chunk(writer, b"-5")


async def prefixed_chunk(writer):
    await chunk(writer, random.choice([b"+5", b"0x5", b"5_0", b" 5", b"", b"zz", b"f" * 40]))


async def huge_chunk(writer):
    await chunk(writer, b"7fffffffffffffff")


BEHAVIOURS = [
    negative_chunk,
    prefixed_chunk,
    huge_chunk,
    upgrade,
    big_head,
    truncated,
    garbage,
    bare_lf,
    slow,
    interim,
]


async def flood(writer, head, megabytes):
    """A websocket handshake answer, then binary frames (unmasked, as a server sends them)."""
    key = b""
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"sec-websocket-key":
            key = value.strip()
    accept = base64.b64encode(hashlib.sha1(key + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest())
    writer.write(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n"
    )
    block = b"f" * (512 << 10)
    frame = b"\x82\x7f" + len(block).to_bytes(8, "big") + block
    for _ in range(min(max(megabytes, 0), 1024) * 2):
        writer.write(frame)
        await writer.drain()
    writer.write(b"\x88\x02\x03\xe8")  # close, 1000
    await writer.drain()
    await asyncio.sleep(1)


async def handle(reader, writer):
    try:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
        target = head.split(b" ", 2)[1].decode("latin1")
        url = urlsplit(target)
        path = url.path[len(PREFIX) :] if url.path.startswith(PREFIX) else url.path
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        if path == "/hello":
            writer.write(HELLO)
            await writer.drain()
        elif path == "/chunk":
            await chunk(writer, query.get("size", "-5").encode())
        elif path == "/upgrade":
            await upgrade(writer)
        elif path == "/big-head":
            await big_head(writer)
        elif path == "/truncated":
            await truncated(writer)
        elif path == "/garbage":
            await garbage(writer)
        elif path == "/bare-lf":
            await bare_lf(writer)
        elif path == "/slow":
            await slow(writer, float(query.get("s", "2")))
        elif path == "/interim":
            await interim(writer)
        elif path == "/flood":
            await flood(writer, head, int(query.get("mb", "1")))
        elif path == "/random":
            random.seed(query.get("seed", "0"))
            await random.choice(BEHAVIOURS)(writer)
        else:
            writer.write(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
            await writer.drain()
    except (TimeoutError, OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
        pass
    finally:
        writer.close()


async def main():
    server = await asyncio.start_server(handle, "127.0.0.1", PORT)
    async with server:
        await server.serve_forever()


asyncio.run(main())
