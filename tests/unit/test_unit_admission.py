"""uws/passthrough/admission.py in process: the one decision every passthrough entry point asks.
A real ProxyService (real cookie signing) with its target and user caches filled in; the token
service and the job owner lookup are stand-ins (no database)."""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace
from typing import Any

import pytest
from tornado.httputil import parse_cookie

from uws.auth.scopes import CurrentUser
from uws.errors import APIError
from uws.passthrough import ProxyService, SessionHosts, Target, urls
from uws.passthrough.admission import Admission, admit, cookie_value, fast_route
from uws.passthrough.head import Head

OWNER, OTHER, JOB, LABEL, TOKEN = 7, 8, 12, "0123456789abcdef", "t" * 43
HOST = f"j{JOB}-{LABEL}.localhost:8000"


class Tokens:
    async def authenticate(self, header: str) -> CurrentUser:
        # "owner-read": an API token of the owner's with the read scope only.
        users = {
            "Token owner": (OWNER, None),
            "Token other": (OTHER, None),
            "Token owner-read": (OWNER, {"read"}),
        }
        if header not in users:
            raise APIError(401, "Invalid token provided.")
        user_id, scopes = users[header]
        return CurrentUser(user_id, "u", "", "", "", scopes=None if scopes is None else frozenset(scopes))


class Jobs:
    async def owner_of(self, job_id: int) -> int | None:
        return OWNER if job_id in (JOB, JOB + 1) else None


class NoJobs:
    """The database as target() sees it when no job is running: nothing to load."""

    async def run(self, fn: Any) -> None:
        return None


def parts_for(tmp_path: Any, mode: str = "origin", running: bool = True) -> Any:
    proxy = ProxyService(NoJobs(), str(tmp_path), mode, SimpleNamespace(token=lambda job_id: TOKEN))  # type: ignore[arg-type]
    if running:
        proxy.targets[JOB] = Target(
            JOB,
            OWNER,
            "127.0.0.1",
            9,
            TOKEN,
            False,
            "web",
            LABEL,
            None if mode == "origin" else f"/passthrough/{JOB}",
        )
    for user in (OWNER, OTHER):
        proxy._users[user] = (time.monotonic() + 3600, True, 0)
    return SimpleNamespace(
        config=SimpleNamespace(passthrough_mode=mode),
        session_hosts=SessionHosts("localhost"),
        proxy=proxy,
        auth=Tokens(),
        jobs=Jobs(),
        leadership=SimpleNamespace(leading=True),
    )


def head(**headers: str) -> Head:
    return Head((name.replace("_", "-"), value) for name, value in headers.items())


def decide(parts: Any, method: str = "GET", token: str | None = None, **headers: str) -> Admission:
    headers.setdefault("Host", HOST)
    route = parts.session_hosts.job(headers["Host"])
    return asyncio.run(admit(parts, route, method, head(**headers), token))


def refusal(admission: Admission) -> tuple[int, str]:
    assert admission.target is None and admission.refusal is not None
    return admission.refusal.status, admission.refusal.message


def test_the_owner_is_let_in_by_header_or_cookie(tmp_path: Any) -> None:
    parts = parts_for(tmp_path)
    by_header = decide(parts, UWS_Authorization="Token owner")
    assert by_header.target is not None and by_header.target.job_id == JOB and not by_header.set_cookie
    cookie = parts.proxy.make_cookie(JOB, OWNER)
    assert decide(parts, Cookie=f"uws-session-{JOB}={cookie}").target is not None


def test_others_and_strangers_are_refused(tmp_path: Any) -> None:
    parts = parts_for(tmp_path)
    no_access = (403, "You do not have access to this session.")
    assert refusal(decide(parts, UWS_Authorization="Token other")) == no_access
    assert refusal(decide(parts)) == no_access
    assert refusal(decide(parts, UWS_Authorization="Token forged")) == no_access
    # The owner's token without the sessions scope does not reach into the session.
    assert refusal(decide(parts, UWS_Authorization="Token owner-read")) == no_access
    other_job_cookie = parts.proxy.make_cookie(JOB + 1, OWNER)
    assert refusal(decide(parts, Cookie=f"uws-session-{JOB}={other_job_cookie}")) == no_access


def test_the_link_token_is_exchanged_for_a_cookie(tmp_path: Any) -> None:
    parts = parts_for(tmp_path)
    admitted = decide(parts, token=TOKEN)
    assert admitted.target is not None and admitted.set_cookie
    assert refusal(decide(parts, token="x" * 43))[0] == 403


def test_a_wrong_label_is_refused_even_to_the_owner(tmp_path: Any) -> None:
    parts = parts_for(tmp_path)
    assert (
        refusal(decide(parts, Host=f"j{JOB}-ffffffffffffffff.localhost", UWS_Authorization="Token owner"))[0]
        == 403
    )


def test_a_session_that_is_not_running(tmp_path: Any) -> None:
    parts = parts_for(tmp_path, running=False)
    assert refusal(decide(parts, UWS_Authorization="Token owner")) == (
        503,
        "The session is not running or not ready yet.",
    )
    assert refusal(decide(parts, UWS_Authorization="Token other"))[0] == 403
    assert refusal(decide(parts, token=TOKEN))[0] == 403  # no token opens a stopped session


def test_no_session_at_this_address(tmp_path: Any) -> None:
    assert refusal(decide(parts_for(tmp_path), Host="localhost:8000")) == (
        404,
        "No session has this address.",
    )


def test_cross_origin_websockets_and_posts_do_not_ride_on_the_cookie(tmp_path: Any) -> None:
    parts = parts_for(tmp_path)
    cookie = f"uws-session-{JOB}={parts.proxy.make_cookie(JOB, OWNER)}"
    sibling = "http://j99-aaaa.localhost:8000"
    assert refusal(decide(parts, Cookie=cookie, Origin=sibling, Upgrade="websocket"))[0] == 403
    assert refusal(decide(parts, "POST", Cookie=cookie, Origin=sibling))[0] == 403
    assert decide(parts, "POST", Cookie=cookie, Origin=f"http://{HOST}").target is not None
    assert decide(parts, Cookie=cookie, Origin=sibling).target is not None  # a read: the SOP's job


def test_logout_ends_cookies_issued_before_it(tmp_path: Any) -> None:
    parts = parts_for(tmp_path)
    cookie = f"uws-session-{JOB}={parts.proxy.make_cookie(JOB, OWNER)}"
    assert decide(parts, Cookie=cookie).target is not None
    # The user's stamp (users.cookies_not_before, as any process's logout writes it)...
    parts.proxy._users[OWNER] = (time.monotonic() + 3600, True, time.time_ns() // 1000 + 1)
    assert refusal(decide(parts, Cookie=cookie))[0] == 403
    # ...and the job's, as earlier versions stamped it.
    parts.proxy._users[OWNER] = (time.monotonic() + 3600, True, 0)
    parts.proxy.targets[JOB].cookies_not_before = time.time_ns() // 1000 + 1
    assert refusal(decide(parts, Cookie=cookie))[0] == 403


@pytest.mark.parametrize(
    ("method", "path", "headers", "expected"),
    [
        ("GET", "/a.js", {"Host": HOST}, ((JOB, LABEL), False)),
        ("HEAD", "/a.js", {"Host": HOST}, ((JOB, LABEL), False)),
        ("GET", "/ws", {"Host": HOST, "Upgrade": "websocket", "Connection": "Upgrade"}, ((JOB, LABEL), True)),
        ("GET", "/ws", {"Host": HOST, "Upgrade": "websocket"}, None),  # no Connection: upgrade
        ("GET", "/ws", {"Host": HOST, "Upgrade": "h2c", "Connection": "Upgrade"}, None),
        ("POST", "/a", {"Host": HOST}, None),
        ("GET", "/a", {"Host": HOST, "Content-Length": "0"}, None),
        ("GET", "/a", {"Host": HOST, "Transfer-Encoding": "chunked"}, None),
        ("GET", "/a?token=x", {"Host": HOST}, None),  # a token to exchange: the full handler
        ("GET", "/a", {"Host": f"{HOST},{HOST}"}, None),
        ("GET", "/a", {"Host": "localhost:8000"}, None),  # not a session's host
    ],
)
def test_what_the_fast_paths_take(
    tmp_path: Any, method: str, path: str, headers: dict[str, str], expected: Any
) -> None:
    assert fast_route(parts_for(tmp_path), method, path, Head(headers.items())) == expected


def test_a_standby_relays_nothing_itself(tmp_path: Any) -> None:
    """Every request to a standby goes to the full handlers, which answer its 503."""
    parts = parts_for(tmp_path)
    assert fast_route(parts, "GET", "/x", Head([("Host", HOST)])) is not None
    parts.leadership.leading = False
    assert fast_route(parts, "GET", "/x", Head([("Host", HOST)])) is None


def test_path_mode_routes_by_path(tmp_path: Any) -> None:
    parts = parts_for(tmp_path, mode="path")
    assert fast_route(parts, "GET", f"/passthrough/{JOB}/x", Head([("Host", "api")])) == ((JOB, None), False)
    assert fast_route(parts, "GET", "/passthrough/1x/x", Head([("Host", "api")])) is None
    assert fast_route(parts, "GET", "/passthrough/" + "9" * 19 + "/", Head([("Host", "api")])) is None
    route = (JOB, None)
    admitted = asyncio.run(admit(parts, route, "GET", head(Host="api", UWS_Authorization="Token owner")))
    assert admitted.target is not None


@pytest.mark.parametrize(
    "cookies",
    [
        "a=1; uws-session-12=abc; b=2",
        "uws-session-12=abc",
        "uws-session-12=first; uws-session-12=last",  # the last counts
        " uws-session-12 = spaced ;x=y",
        'uws-session-12="quoted\\"value"',
        'uws-session-12="',
        "xuws-session-12=other; uws-session-120=longer",
        "uws-session-12",  # no value: a cookie with an empty name
        "uws-session-12=a=b=c",
        ";;;uws-session-12=;",
        "other=1; mention uws-session-12 in a value=2",
    ],
)
def test_the_session_cookie_is_read_as_tornado_reads_it(cookies: str) -> None:
    assert cookie_value(cookies, f"uws-session-{JOB}") == parse_cookie(cookies).get(f"uws-session-{JOB}")


def test_a_remembered_cookie_still_ends_at_logout_and_deactivation(tmp_path: Any) -> None:
    """The signature of a cookie is checked once; what a logout or deactivation changes is not
    remembered with it."""
    parts = parts_for(tmp_path)
    cookie = f"uws-session-{JOB}={parts.proxy.make_cookie(JOB, OWNER)}"
    assert decide(parts, Cookie=cookie).target is not None
    assert decide(parts, Cookie=cookie).target is not None  # (remembered)
    parts.proxy._users[OWNER] = (time.monotonic(), False, 0)
    assert refusal(decide(parts, Cookie=cookie))[0] == 403
    parts.proxy._users[OWNER] = (time.monotonic(), True, 0)
    assert decide(parts, Cookie=cookie).target is not None
    parts.proxy.targets[JOB].cookies_not_before = time.time_ns() // 1000 + 1
    assert refusal(decide(parts, Cookie=cookie))[0] == 403


def test_a_forged_cookie_stays_refused(tmp_path: Any) -> None:
    parts = parts_for(tmp_path)
    genuine = parts.proxy.make_cookie(JOB, OWNER)
    forged = genuine[:-1] + ("0" if genuine[-1] != "0" else "1")
    for _ in range(2):
        assert refusal(decide(parts, Cookie=f"uws-session-{JOB}={forged}"))[0] == 403
    assert decide(parts, Cookie=f"uws-session-{JOB}={genuine}").target is not None
    # Forgeries are not remembered: a client sending endless ones (up to a head's size each)
    # grows nothing; only the one genuine cookie is kept.
    for i in range(50):
        decide(parts, Cookie=f"uws-session-{JOB}={genuine}{i:0>1000}")
    assert list(parts.proxy._claims) == [genuine]


def test_session_hosts_remember_a_bounded_number_of_names(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(urls, "MEMO_SIZE", 3)
    hosts = SessionHosts("localhost")
    for _ in range(2):
        assert hosts.job(HOST) == (JOB, LABEL)
        assert hosts.job("J12-ABC.LocalHost") == (12, "abc")
        assert hosts.job("localhost:8000") is None
        assert hosts.job("j12-abc.localhost.evil") is None
    assert len(hosts._jobs) <= 3
    # Names that are no session's, and over-long heads, however many a client makes up, are
    # worked out each time and never kept.
    hosts = SessionHosts("localhost")
    for i in range(50):
        assert hosts.job(f"x{i}.localhost") is None
        assert hosts.job(f"{HOST}:{i:0>1000}") in (None, (JOB, LABEL))
    assert list(hosts._jobs) == []


def test_forgotten_cache_is_read_again(tmp_path: Any) -> None:
    """A process that serves again after another did re-reads its targets: the job may have
    ended meanwhile (here the database holds no running job any more)."""
    parts = parts_for(tmp_path)
    cookie = f"uws-session-{JOB}={parts.proxy.make_cookie(JOB, OWNER)}"
    assert decide(parts, Cookie=cookie).target is not None
    parts.proxy.forget_cache()
    assert refusal(decide(parts, Cookie=cookie))[0] == 403
