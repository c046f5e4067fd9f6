"""A small session app for the passthrough tests (run by a session, maybe as another OS user).

    python echo_app.py PORT PREFIX [HOST]    (HOST: the address to listen on, 127.0.0.1 by default)

GET  {prefix}/hello           -> "hello"
POST {prefix}/echo            -> sha256 and length of the body (read as a stream)
GET  {prefix}/big?mb=N        -> N MiB of bytes, streamed
GET  {prefix}/slow?s=N        -> answers after N seconds
GET  {prefix}/in-flight       -> how many /slow requests are under way (a proxy that lets go of a
                                 request its client left ends it, and this goes down)
GET  {prefix}/chunked?n=N     -> "part0;part1;..." sent as N chunks (Transfer-Encoding: chunked)
GET  {prefix}/empty           -> 204 No Content
GET|POST {prefix}/cut?length=1 -> starts an answer (with Content-Length: 1000 when length=1,
                                 chunked otherwise), then drops the connection halfway
GET  {prefix}/both-lengths    -> an answer with both Content-Length and Transfer-Encoding (which
                                 a proxy must not pass on as framed by either)
GET  {prefix}/headers         -> the request headers as JSON
GET  {prefix}/count           -> how many requests reached /hello, /echo and /headers
POST {prefix}/close-listener  -> stops listening and drops connections (the process stays)
WS   {prefix}/ws              -> echoes text and binary; "close:<code>" closes with that code,
                                 "ping:<data>" sends a ping
"""

import asyncio
import hashlib
import json
import sys

from tornado import web, websocket
from tornado.httpserver import HTTPServer

PORT = int(sys.argv[1])
PREFIX = sys.argv[2].rstrip("/") if len(sys.argv) > 2 else ""
HOST = sys.argv[3] if len(sys.argv) > 3 else "127.0.0.1"
SERVER = None
COUNT = 0  # requests received, for tests that check a refused request never arrived


class Counted(web.RequestHandler):
    def prepare(self):
        global COUNT
        COUNT += 1


class Count(web.RequestHandler):
    def get(self):
        self.write(str(COUNT))


class Hello(Counted):
    def get(self):
        self.write("hello")

    head = get


@web.stream_request_body
class Echo(Counted):
    def prepare(self):
        super().prepare()
        self.digest = hashlib.sha256()
        self.length = 0

    def data_received(self, chunk):
        self.digest.update(chunk)
        self.length += len(chunk)

    def post(self):
        self.write({"sha256": self.digest.hexdigest(), "length": self.length})

    put = post


class Big(web.RequestHandler):
    async def get(self):
        block = b"x" * (1 << 20)
        mb = int(self.get_argument("mb", "1"))
        self.set_header("Content-Length", str(mb << 20))
        for _ in range(mb):
            self.write(block)
            await self.flush()


IN_FLIGHT = set()


class Slow(web.RequestHandler):
    async def get(self):
        IN_FLIGHT.add(self)
        try:
            await asyncio.sleep(float(self.get_argument("s", "1")))
            self.write("late")
        finally:
            IN_FLIGHT.discard(self)

    def on_connection_close(self):
        IN_FLIGHT.discard(self)


class InFlight(web.RequestHandler):
    def get(self):
        self.write(str(len(IN_FLIGHT)))


class Chunked(web.RequestHandler):
    async def get(self):
        for i in range(int(self.get_argument("n", "3"))):
            self.write(f"part{i};")
            await self.flush()


class Cut(web.RequestHandler):
    async def get(self):
        if self.get_argument("length", "1") == "1":
            self.set_header("Content-Length", "1000")
        self.write("x" * 100)
        await self.flush()
        self.request.connection.close()
        self._finished = True  # nothing more may be sent: the point is an answer cut short

    post = get


class BothLengths(web.RequestHandler):
    async def get(self):
        stream = self.request.connection.detach()
        await stream.write(
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"A\r\n0123456789\r\n0\r\n\r\n"
        )
        stream.close()


class Empty(web.RequestHandler):
    def get(self):
        self.set_status(204)


class Headers(Counted):
    def get(self):
        self.write(json.dumps(dict(self.request.headers.get_all())))


class CloseListener(web.RequestHandler):
    def post(self):
        SERVER.stop()
        self.write("stopped listening")
        # ...and drop open (keep-alive) connections once this answer is out.
        asyncio.get_running_loop().call_later(
            0.2, lambda: asyncio.ensure_future(SERVER.close_all_connections())
        )


class Echo_WS(websocket.WebSocketHandler):
    def check_origin(self, origin):
        return True

    def select_subprotocol(self, subprotocols):
        return subprotocols[0] if subprotocols else None

    def on_message(self, message):
        if isinstance(message, str) and message.startswith("close:"):
            self.close(int(message[6:]), "asked to")
            return
        if isinstance(message, str) and message.startswith("ping:"):
            self.ping(message[5:].encode())
            return
        self.write_message(message, binary=isinstance(message, bytes))


async def main():
    global SERVER
    app = web.Application(
        [
            (PREFIX + "/hello", Hello),
            (PREFIX + "/echo", Echo),
            (PREFIX + "/big", Big),
            (PREFIX + "/slow", Slow),
            (PREFIX + "/headers", Headers),
            (PREFIX + "/close-listener", CloseListener),
            (PREFIX + "/ws", Echo_WS),
            (PREFIX + "/count", Count),
            (PREFIX + "/chunked", Chunked),
            (PREFIX + "/empty", Empty),
            (PREFIX + "/cut", Cut),
            (PREFIX + "/in-flight", InFlight),
            (PREFIX + "/both-lengths", BothLengths),
        ]
    )
    SERVER = HTTPServer(app, max_body_size=1 << 40, max_buffer_size=1 << 24)
    SERVER.listen(PORT, HOST)
    await asyncio.Event().wait()


asyncio.run(main())
