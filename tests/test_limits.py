"""Request body limits (JSON small, uploads large), deep JSON, and caps on what is stored as sent.

The test server (LOCAL_CONFIG) keeps uploads at 2 MiB and JSON bodies at the 1 MiB default.
"""

from __future__ import annotations

import json
import socket
import threading
import time

import pytest
import requests

from helpers.api import unique_name
from helpers.harness import Client, Server

MiB = 1024 * 1024
TOO_LARGE = {"success": False, "message": "Request body too large."}
TOO_DEEP = {"success": False, "message": "Invalid JSON: nested too deeply."}


def padded_login(client_token: str, username: str, size: int) -> bytes:
    """A valid login body of exactly `size` bytes (an unknown key carries the padding)."""
    body = {"client_token": client_token, "user_info": {"username": username, "email": "p@x.org"}, "pad": ""}
    raw = json.dumps(body).encode()
    return raw.replace(b'"pad": ""', b'"pad": "' + b"x" * (size - len(raw)) + b'"')


def user_count(server: Server, username: str) -> int:
    return server.sql(f"SELECT COUNT(*) FROM users WHERE username = '{username}'")[0][0]


def test_two_mib_login_body_is_413_and_other_requests_keep_answering(
    server: Server, client_token: str
) -> None:
    name = unique_name("big")
    raw = padded_login(client_token, name, 2 * MiB)
    assert len(raw) == 2 * MiB
    answers: list[requests.Response] = []

    def big() -> None:
        answers.append(requests.post(server.base + "/tokens/", data=raw, timeout=30))

    thread = threading.Thread(target=big)
    thread.start()
    # Bounded: at most 200 requests or 30 s, while the big one is under way.
    deadline = time.monotonic() + 30
    for _ in range(200):
        assert requests.get(server.base + "/job_types/", timeout=10).status_code == 200
        if not thread.is_alive() or time.monotonic() > deadline:
            break
    thread.join(30)
    assert answers and answers[0].status_code == 413, answers and answers[0].text
    assert answers[0].json() == TOO_LARGE
    assert user_count(server, name) == 0


def test_json_body_just_under_the_limit_is_read(server: Server, client_token: str) -> None:
    name = unique_name("edge")
    r = server.client().request("POST", "/tokens/", raw=padded_login(client_token, name, MiB))
    assert r.status_code == 200, r.text
    assert user_count(server, name) == 1


def send_chunked(port: int, body: bytes, terminate: bool) -> bytes:
    """POST /tokens/ with a chunked body (no Content-Length to check up front); the answer."""
    piece = 65536
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        sock.sendall(b"POST /tokens/ HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\n")
        try:
            for i in range(0, len(body), piece):
                part = body[i : i + piece]
                sock.sendall(b"%x\r\n%s\r\n" % (len(part), part))
            if terminate:
                sock.sendall(b"0\r\n\r\n")
        except OSError:
            pass  # the server may stop reading once it has answered
        answer = b""
        while not (b"\r\n\r\n" in answer and answer.endswith(b"}")):
            data = sock.recv(65536)
            if not data:
                break
            answer += data
    return answer


def assert_413(answer: bytes) -> None:
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413 "), answer[:300]
    assert json.loads(body) == TOO_LARGE


def test_chunked_json_body_over_the_limit_is_413(server: Server, client_token: str) -> None:
    name = unique_name("chunk")
    assert_413(send_chunked(server.port, padded_login(client_token, name, 2 * MiB), terminate=True))
    assert user_count(server, name) == 0


def test_endless_chunked_body_is_cut_off(server: Server) -> None:
    """Far over the limit the server stops reading: 413 at once, without the body's end."""
    from uws.handlers.base import DRAIN_BYTES

    # Just past what is read and dropped: the client has sent everything when the server closes.
    assert_413(send_chunked(server.port, b"x" * (MiB + DRAIN_BYTES + 65536), terminate=False))


def test_json_body_over_the_limit_to_any_route_is_413(alice: Client) -> None:
    r = alice.request("POST", "/workspaces/", raw=b'{"name": "x", "description": "' + b"y" * MiB + b'"}')
    assert r.status_code == 413 and r.json() == TOO_LARGE
    assert [w for w in alice.get("/workspaces/").json()["data"]["workspaces"] if w["name"] == "x"] == []


def test_uploads_keep_their_larger_limit(alice: Client) -> None:
    w = alice.post("/workspaces/", {"name": "up", "description": ""}).json()["data"]["workspace"]
    url = f"{alice.base}/workspaces/{w['id']}/upload/"
    big = b"z" * (MiB + MiB // 2)
    r = alice.session.put(url, files=[("f", ("big.bin", big))], headers=alice.headers(), timeout=30)
    assert r.status_code == 200, r.text
    got = alice.get(f"/workspaces/{w['id']}/").json()["data"]["workspaces"][0]
    assert got["disk_space"] == len(big)
    # The upload limit is for uploads only: the same size as JSON to start/ is 413.
    r = alice.put(f"/workspaces/{w['id']}/start/", raw=b'{"job_details": "' + big + b'"}')
    assert r.status_code == 413 and r.json() == TOO_LARGE


@pytest.mark.parametrize("path", ["/tokens/", "/workspaces/"])
def test_deeply_nested_json_is_400(alice: Client, path: str) -> None:
    raw = "[" * 100_000 + "]" * 100_000
    r = alice.request("POST", path, raw=raw)
    assert r.status_code == 400, r.text
    assert r.json() == TOO_DEEP
    r = alice.request("POST", path, raw='{"a":' * 50_000 + "1" + "}" * 50_000)
    assert r.status_code == 400 and r.json() == TOO_DEEP


def test_description_is_capped(alice: Client) -> None:
    long = "d" * 10_001
    r = alice.post("/workspaces/", {"name": "long", "description": long})
    assert r.status_code == 400
    assert r.json() == {"success": False, "message": "description must be at most 10000 characters."}
    assert [w for w in alice.get("/workspaces/").json()["data"]["workspaces"] if w["name"] == "long"] == []
    w = alice.post("/workspaces/", {"name": "ok", "description": "d" * 10_000}).json()["data"]["workspace"]
    r = alice.put(f"/workspaces/{w['id']}/", {"description": long})
    assert r.status_code == 400
    assert r.json()["message"] == "description must be at most 10000 characters."
    got = alice.get(f"/workspaces/{w['id']}/").json()["data"]["workspaces"][0]
    assert got["description"] == "d" * 10_000


def test_workspace_details_are_capped_but_file_content_is_not_counted(alice: Client) -> None:
    link = {"name": "l", "source_path": "/etc/hostname", "note": "n" * 70_000}
    r = alice.post(
        "/workspaces/", {"name": "det", "description": "", "workspace_details": {"symlinks": [link]}}
    )
    assert r.status_code == 400
    assert r.json() == {"success": False, "message": "workspace_details must be at most 65536 bytes of JSON."}
    files = [{"name": "a.txt", "content": "c" * 200_000}]
    r = alice.post("/workspaces/", {"name": "det", "description": "", "workspace_details": {"files": files}})
    assert r.status_code == 200, r.text
    ws_id = r.json()["data"]["workspace"]["id"]
    r = alice.put(f"/workspaces/{ws_id}/", {"workspace_details": {"symlinks": [link]}})
    assert r.status_code == 400
    assert r.json()["message"] == "workspace_details must be at most 65536 bytes of JSON."


def test_job_details_are_capped(alice: Client) -> None:
    w = alice.post("/workspaces/", {"name": "jd", "description": ""}).json()["data"]["workspace"]
    body = {"job_type": "local_test_job", "job_details": {"note": "j" * 70_000}}
    r = alice.put(f"/workspaces/{w['id']}/start/", body)
    assert r.status_code == 400, r.text
    assert r.json() == {"success": False, "message": "job_details must be at most 65536 bytes of JSON."}
    assert alice.get("/jobs/", params={"workspace_id": w["id"]}).json()["data"]["jobs"] == []
