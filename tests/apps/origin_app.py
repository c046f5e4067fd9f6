"""A session app for the origin and browser isolation tests (run by a session, maybe as another
OS user).

    python origin_app.py PORT [PREFIX]

GET  {prefix}/page      -> an HTML page holding this session's secret (the job id), for
                           browsers: what another session's page must not be able to read
GET  {prefix}/secret    -> the secret as text
GET  {prefix}/headers   -> the request headers as JSON
GET  {prefix}/tossing   -> an answer that tries to act beyond its session: cookies for "/",
                           for the session's own path, with a Domain, a service worker scope of
                           "/" and Clear-Site-Data
POST {prefix}/poke      -> counts a state-changing request (a form post, say) that got through
GET  {prefix}/pokes     -> how many did
GET  {prefix}/sw.js     -> a service worker script that asks for the scope "/"
WS   {prefix}/ws        -> sends the secret, then echoes
WS   {prefix}/ws-tossing -> the same, its switching answer with /tossing's headers
"""

import asyncio
import json
import os
import sys

from tornado import web, websocket
from tornado.httpserver import HTTPServer

PORT = int(sys.argv[1])
PREFIX = sys.argv[2].rstrip("/") if len(sys.argv) > 2 else ""
SECRET = f"secret of job {os.environ.get('UWS_JOB_ID', '?')}"
POKES = 0


class Page(web.RequestHandler):
    def get(self):
        self.set_header("Content-Type", "text/html; charset=utf-8")
        self.write(f"<!doctype html><title>session</title><p id='secret'>{SECRET}</p>")


class Secret(web.RequestHandler):
    def get(self):
        self.set_header("Content-Type", "text/plain")
        self.write(SECRET)


class Headers(web.RequestHandler):
    def get(self):
        self.write(json.dumps(list(self.request.headers.get_all())))


def toss(handler):
    handler.add_header("Set-Cookie", "tossed-root=1; Path=/")
    handler.add_header("Set-Cookie", f"own-path=1; Path={PREFIX}/")
    handler.add_header("Set-Cookie", "own-default=1")
    handler.add_header("Set-Cookie", "tossed-domain=1; Domain=localhost; Path=/")
    handler.set_header("Service-Worker-Allowed", "/")
    handler.set_header("Clear-Site-Data", '"cookies"')


class Tossing(web.RequestHandler):
    def get(self):
        toss(self)
        self.write("tossing")


class ServiceWorker(web.RequestHandler):
    def get(self):
        self.set_header("Content-Type", "text/javascript")
        self.set_header("Service-Worker-Allowed", "/")
        self.write("self.addEventListener('fetch', () => {});")


class Poke(web.RequestHandler):
    def check_xsrf_cookie(self):
        pass

    def post(self):
        global POKES
        POKES += 1
        self.write("poked")


class Pokes(web.RequestHandler):
    def get(self):
        self.write(str(POKES))


class Socket(websocket.WebSocketHandler):
    def check_origin(self, origin):
        return True  # as a careless app would: the passthrough must not rely on the app

    def open(self):
        self.write_message(SECRET)

    def on_message(self, message):
        self.write_message(message)


class TossingSocket(Socket):
    def prepare(self):
        toss(self)  # in the websocket's switching answer


async def main():
    app = web.Application(
        [
            (PREFIX + "/page", Page),
            (PREFIX + "/secret", Secret),
            (PREFIX + "/headers", Headers),
            (PREFIX + "/tossing", Tossing),
            (PREFIX + "/poke", Poke),
            (PREFIX + "/pokes", Pokes),
            (PREFIX + "/ws", Socket),
            (PREFIX + "/ws-tossing", TossingSocket),
            (PREFIX + "/sw.js", ServiceWorker),
        ]
    )
    HTTPServer(app).listen(PORT, "127.0.0.1")
    await asyncio.Event().wait()


asyncio.run(main())
