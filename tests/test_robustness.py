"""Failures stay contained: a stuck database does not stall other requests, a failing storage
step leaves a clear `error` status, and HuBMAP dataset links come only from the entity service."""

from __future__ import annotations

import json
import os
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests

from helpers.api import create, get_ws, login, wait_for, ws_dir
from helpers.configs import LOCAL_CONFIG
from helpers.harness import PG_URL, Client, Server


def test_blocked_database_does_not_stall_the_loop(server: Server, alice: Client) -> None:
    """While one request waits on a database lock held elsewhere, others are still answered."""
    results: dict[str, object] = {}
    if server.backend == "sqlite":
        import sqlite3

        holder = sqlite3.connect(server.db_url[len("sqlite:///") :], timeout=30, isolation_level=None)
        holder.execute("BEGIN EXCLUSIVE")
    else:
        import psycopg

        holder = psycopg.connect(PG_URL.replace("postgresql+psycopg://", "postgresql://"))
        holder.execute(f"SET search_path TO {server.schema}")
        holder.execute("LOCK TABLE workspaces IN ACCESS EXCLUSIVE MODE")

    def slow_request() -> None:
        results["slow"] = alice.post("/workspaces/", {"name": "waits", "description": ""}).status_code

    thread = threading.Thread(target=slow_request)
    thread.start()
    try:
        time.sleep(0.3)
        assert thread.is_alive(), "the request should be waiting for the database lock"
        r = requests.get(server.base + "/job_types/", timeout=5)
        assert r.status_code == 200
        assert thread.is_alive(), "the open endpoint answered while the database was locked"
    finally:
        if server.backend == "sqlite":
            holder.execute("ROLLBACK")
        else:
            holder.rollback()
        holder.close()
    thread.join(30)
    assert results["slow"] == 200


def test_failed_deletion_leaves_error_with_message(server: Server, alice: Client) -> None:
    w = create(alice)
    # A directory outside the storage root can never be deleted by the server.
    server.sql(f"UPDATE workspaces SET file_path = '/etc' WHERE id = {w['id']}")
    r = alice.delete(f"/workspaces/{w['id']}")
    assert r.status_code == 500
    assert r.json()["message"] == (
        "Please contact a system administrator there is a failure with the workspace directory "
        "that will not allow for this workspace to be deleted."
    )
    assert get_ws(alice, w["id"])["status"] == "error"
    assert os.path.isdir("/etc")
    # Once the path is repaired, a workspace in `error` may be deleted again.
    server.sql(f"UPDATE workspaces SET file_path = '{ws_dir(server, alice, w['id'])}' WHERE id = {w['id']}")
    assert alice.delete(f"/workspaces/{w['id']}").status_code == 200
    wait_for(lambda: get_ws(alice, w["id"]) is None)


class EntityService(BaseHTTPRequestHandler):
    """A stand-in for HuBMAP's entity API (an external service that cannot exist here)."""

    paths: dict[str, str] = {}
    seen_tokens: list[str] = []

    def do_POST(self) -> None:  # noqa: N802
        length = int(self.headers.get("Content-Length", 0))
        uuids = json.loads(self.rfile.read(length))
        self.seen_tokens.append(self.headers.get("Authorization", ""))
        reply = [
            {"uuid": u, "path": self.paths[u]} if u in self.paths else {"uuid": u, "error": f"{u} not found"}
            for u in uuids
        ]
        body = json.dumps(reply).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def hubmap(backend: str, tmp_path_factory: pytest.TempPathFactory):
    datasets = tmp_path_factory.mktemp("datasets")
    os.chmod(datasets, 0o755)
    os.chmod(datasets.parent, 0o755)
    os.chmod(datasets.parent.parent, 0o755)
    (datasets / "abc123").mkdir()
    EntityService.paths = {"abc123": str(datasets / "abc123"), "etc": "/etc"}
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), EntityService)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    config = LOCAL_CONFIG.replace("LocalFileSystemStorage", "HubmapLocalFileSystemStorage") + (
        f'\nc.UWSApp.storage_class = "hubmap"\n'
        f'c.HubmapLocalFileSystemStorage.entity_api_url = "http://127.0.0.1:{httpd.server_port}"\n'
        f'c.HubmapLocalFileSystemStorage.allowed_symlink_roots = ["{datasets}"]\n'
    )
    srv = Server(backend, config).start()
    yield srv
    srv.close()
    httpd.shutdown()


def test_hubmap_dataset_links(hubmap: Server) -> None:
    ct = hubmap.new_client_token()
    c = login(hubmap, ct)
    link = {"name": "datasets/abc123", "dataset_uuid": "abc123", "source_path": "/etc"}
    r = c.post("/workspaces/", {"name": "x", "description": "", "workspace_details": {"symlinks": [link]}})
    assert r.json()["message"] == "No globus_groups_token passed when trying to use dataset_uuid."
    w = create(c, workspace_details={"globus_groups_token": "groups-token", "symlinks": [link]})
    assert EntityService.seen_tokens[-1] == "Bearer groups-token"
    # the client's source_path was ignored: the link points where the entity service said
    target = os.readlink(os.path.join(ws_dir(hubmap, c, w["id"]), "datasets", "abc123"))
    assert target == EntityService.paths["abc123"]
    assert w["workspace_details"]["request_workspace_details"]["symlinks"] == [link]
    r = c.post(
        "/workspaces/",
        {
            "name": "x",
            "description": "",
            "workspace_details": {
                "globus_groups_token": "t",
                "symlinks": [{"name": "d/zzz", "dataset_uuid": "zzz"}],
            },
        },
    )
    assert r.status_code == 400
    assert (
        r.json()["message"]
        == "Errors encountered when attempting to gather UUID information: ['zzz not found']"
    )
    # a dataset path outside the allowed roots is refused like any other source
    r = c.post(
        "/workspaces/",
        {
            "name": "x",
            "description": "",
            "workspace_details": {
                "globus_groups_token": "t",
                "symlinks": [{"name": "d/etc", "dataset_uuid": "etc"}],
            },
        },
    )
    assert r.status_code == 400
    assert r.json()["message"] == "Invalid symlink source path specified /etc"
