"""The OpenAPI document (share/uws/openapi.yaml): valid OpenAPI 3, complete, and true.

1. It parses, validates against the official OpenAPI 3.0 schema and is what GET /openapi.yaml serves.
2. Every route of the real Tornado application has a documented path (and the same methods); every
   documented path is routed, in both slash forms.
3. Schemathesis fuzzes every documented operation against a running server as a logged-in user and
   checks: no 5xx, documented status codes, content types, headers and response schemas.
"""

from __future__ import annotations

import functools
import json
import os
import re
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests
import schemathesis
import yaml
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.config import SchemathesisConfig
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
    unsupported_method,
)

from helpers.api import login, unique_name
from helpers.harness import ROOT, Client, Server

DOC_PATH = os.path.join(ROOT, "share", "uws", "openapi.yaml")
HTTP_METHODS = ("get", "put", "post", "delete", "patch", "head", "options", "trace")
# Routes the contract defines that a server version does not serve yet: documented as the
# contract says, reported by the reverse coverage check as expected failures. (Empty: all served.)
CONTRACT_ONLY_PATHS: set[str] = set()
# Examples per operation and generation phase: enough to reach the interesting branches, small
# enough for the whole module to finish in about a minute on two cores.
MAX_EXAMPLES = 25
# The answers that are not JSON: this document, and the metrics in Prometheus' text format.
NOT_JSON = {
    "/openapi.yaml": "application/yaml",
    "/metrics": "text/plain",
    "/workspaces/{id}/files/{path}": "application/octet-stream",
}


def load_document() -> dict[str, Any]:
    with open(DOC_PATH, encoding="utf-8") as f:
        return yaml.safe_load(f)


def operations(doc: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in doc["paths"].items():
        for method, op in item.items():
            if method in HTTP_METHODS:
                yield path, method, op


def concrete(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "7", path)


def resolve(doc: dict[str, Any], node: Any) -> Any:
    while isinstance(node, dict) and "$ref" in node:
        ref = node["$ref"]
        assert ref.startswith("#/"), ref
        node = doc
        for part in ref[2:].split("/"):
            node = node[part]
    return node


# ---- 1. the document itself ------------------------------------------------------------------


def test_document_is_valid_openapi3() -> None:
    from schemathesis.specs.openapi.definitions import OPENAPI_30_VALIDATOR

    doc = load_document()
    assert isinstance(doc, dict)
    assert str(doc["openapi"]).startswith("3.0."), doc["openapi"]
    errors = [str(e) for e in OPENAPI_30_VALIDATOR.iter_errors(doc)]
    assert not errors, "\n\n".join(errors[:5])
    # Schemathesis accepts it too, and every operation in it can be built.
    schema = schemathesis.openapi.from_dict(doc)
    schema.validate()
    for result in schema.get_all_operations():
        result.ok()

    # Every $ref resolves.
    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if "$ref" in node:
                resolve(doc, node)
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(doc)


def test_document_structure() -> None:
    doc = load_document()
    scheme = doc["components"]["securitySchemes"]["UWSToken"]
    assert scheme == {**scheme, "type": "apiKey", "in": "header", "name": "UWS-Authorization"}
    assert doc["security"] == [{"UWSToken": []}]
    open_ops = {
        ("post", "/tokens/"),
        ("get", "/job_types/"),
        ("get", "/parameters/"),
        ("get", "/status/"),
        ("get", "/status/leader"),
        ("get", "/openapi.yaml"),
    }
    error_schema = doc["components"]["schemas"]["Error"]
    assert error_schema["required"] == ["success", "message"]
    assert error_schema["properties"]["success"]["enum"] == [False]
    dt = doc["components"]["schemas"]["DateTime"]["pattern"]
    assert dt == r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$"
    for path, method, op in operations(doc):
        label = f"{method.upper()} {path}"
        if path.startswith("/passthrough/"):
            # The session app's own answers pass through; the proxy's own are errors.
            assert {"default", "403", "502", "503", "504"} <= set(op["responses"]), label
            continue
        is_open = (method, path) in open_ops
        assert (op.get("security") == []) == is_open, f"{label}: wrong security"
        responses = op["responses"]
        assert "200" in responses, label
        assert not any(code.startswith("2") and code != "200" for code in responses), f"{label}: only 200"
        if not is_open:
            assert "401" in responses, f"{label}: 401 not documented"
        if path != "/status/":
            assert "500" in responses, f"{label}: 500 not documented"
        if "{id}" in path:
            assert "404" in responses, f"{label}: 404 (non-integer id) not documented"
        if "requestBody" in op:
            assert "413" in responses and "400" in responses, f"{label}: 400/413 not documented"
        for code, response in responses.items():
            response = resolve(doc, response)
            content = response.get("content", {})
            if path in NOT_JSON and code == "200":
                assert list(content) == [NOT_JSON[path]]
                continue
            assert list(content) == ["application/json"], f"{label} {code}: {list(content)}"
            schema = resolve(doc, content["application/json"]["schema"])
            if not code.startswith("2"):
                # Every error is the error envelope.
                refs = [schema] + schema.get("allOf", [])
                assert (
                    any(r.get("$ref") == "#/components/schemas/Error" for r in refs)
                    or content["application/json"]["schema"].get("$ref") == "#/components/schemas/Error"
                ), f"{label} {code}: not the error envelope"
    # The contract's exceptional error codes are used where the contract has them.
    paths = doc["paths"]
    assert "422" in paths["/workspaces/{id}/start/"]["put"]["responses"]
    assert "403" in paths["/shared_workspaces/{id}/"]["delete"]["responses"]
    assert "WWW-Authenticate" in doc["components"]["responses"]["Unauthorized"]["headers"]
    assert "Allow" in doc["components"]["responses"]["MethodNotAllowed"]["headers"]
    # Websocket routes are described, not listed as operations.
    assert "Upgrade: websocket" in doc["info"]["description"]


def test_served_document_is_the_file(server: Server) -> None:
    r = requests.get(server.base + "/openapi.yaml", timeout=10)
    assert r.status_code == 200
    assert r.headers["Content-Type"].startswith("application/yaml")
    with open(DOC_PATH, "rb") as f:
        assert r.content == f.read()


@functools.lru_cache(maxsize=1)
def _loaded_schema() -> Any:
    return schemathesis.openapi.from_dict(load_document())


def conforms(path: str, method: str, status: int, body: Any) -> bool:
    """Whether the document accepts this response (status and JSON body) for the operation."""
    from schemathesis.core.failures import Failure, FailureGroup
    from schemathesis.core.transport import Response

    operation = _loaded_schema()[path][method]
    request = requests.Request(method, "http://127.0.0.1" + concrete(path)).prepare()
    response = Response(
        status_code=status,
        headers={"Content-Type": ["application/json"]},
        content=json.dumps(body).encode(),
        request=request,
        elapsed=0.0,
        verify=False,
        message="",
        encoding="utf-8",
        http_version="1.1",
    )
    try:
        operation.validate_response(response)
    except (Failure, FailureGroup):
        return False
    return True


WORKSPACE = {  # the contract's example W (2.2)
    "id": 2,
    "name": "bench ws",
    "description": "baseline workspace",
    "disk_space": 24,
    "datetime_created": "2026-11-25T23:48:47.332Z",
    "datetime_last_modified": None,
    "datetime_last_job_launch": None,
    "workspace_details": {
        "request_workspace_details": {
            "files": [{"name": "hello.txt"}],
            "symlinks": [{"name": "datasets/abc123", "dataset_uuid": "abc123"}],
        },
        "current_workspace_details": {
            "files": [{"name": "/hello.txt"}],
            "symlinks": [{"name": "/datasets/abc123"}],
        },
    },
    "status": "idle",
    "default_job_type": "jupyter_lab",
}
JOB = {
    "id": 7,
    "workspace_id": 2,
    "resource_job_id": 4242,
    "job_type": "jupyter_lab",
    "status": "running",
    "datetime_created": "2026-11-25T23:48:47.332Z",
    "datetime_start": "2026-11-25T23:48:50.001Z",
    "datetime_end": None,
    "core_hours": "0.00275",
    "job_details": {
        "metrics": {"time_pending": 0.197746, "time_init": 12.5},
        "request_job_details": {"resource_options": {"num_cpus": 2}},
        "current_job_details": {
            "message": "Webserver ready.",
            "time_left": 10740,
            "proxy_details": {"hostname": "node01", "port": "53012", "path": "/passthrough/lab?token=abc"},
            "connection_details": {
                "url_domain": "https://node01-53012.workspaces.example.org",
                "url_path": "/passthrough/lab?token=abc",
            },
        },
    },
}
LISTING = {
    "path": "data",
    "truncated": False,
    "entries": [
        {"name": "raw", "type": "directory", "size": None, "modified": "2026-11-25T23:48:47.332Z"},
        {
            "name": "dataset",
            "type": "symlink",
            "size": None,
            "modified": "2026-11-25T23:48:47.332Z",
            "target_allowed": True,
            "target_type": "directory",
        },
        {"name": "a.csv", "type": "file", "size": 12, "modified": "2026-11-25T23:48:47.332Z"},
    ],
}
SHARED_WS = {
    "id": 3,
    "name": "n",
    "description": "",
    "workspace_details": WORKSPACE["workspace_details"],
    "user_id": {"username": "bob", "first_name": "Bob", "last_name": "Builder", "email": "bob@example.org"},
}
SHARE = {
    "original_workspace_id": None,
    "shared_workspace_id": SHARED_WS,
    "last_resource_options": {},
    "last_job_type": "",
    "is_accepted": False,
    "datetime_share_created": "2026-11-25T23:48:47.332Z",
}


def ok(data: dict[str, Any], message: str = "Successful.") -> dict[str, Any]:
    return {"message": message, "success": True, "data": data}


@pytest.mark.parametrize(
    "path,method,status,body,accepted",
    [
        ("/workspaces/{id}/", "GET", 200, ok({"workspaces": [WORKSPACE]}), True),
        (
            "/workspaces/{id}/",
            "GET",
            200,
            ok({"workspaces": []}, "Workspace matching given parameters could not be found."),
            True,
        ),
        ("/workspaces/{id}/", "GET", 200, ok({"workspaces": []}), False),  # empty needs the not-found message
        (
            "/workspaces/{id}/",
            "GET",
            200,
            ok({"workspaces": [WORKSPACE, WORKSPACE]}),
            False,
        ),  # by id: one element
        ("/workspaces/{id}/", "GET", 200, ok({"workspaces": [{**WORKSPACE, "status": "deleted"}]}), False),
        (
            "/workspaces/{id}/",
            "GET",
            200,
            ok({"workspaces": [{**WORKSPACE, "datetime_created": "2026-11-25T23:48:47.332"}]}),
            False,
        ),
        (
            "/workspaces/{id}/",
            "GET",
            200,
            ok({"workspaces": [{**WORKSPACE, "datetime_created": "2026-11-25T23:48:47.332123Z"}]}),
            False,
        ),
        (
            "/workspaces/{id}/",
            "GET",
            200,
            ok({"workspaces": [{**WORKSPACE, "datetime_created": None}]}),
            False,
        ),
        (
            "/workspaces/{id}/",
            "GET",
            200,
            ok({"workspaces": [{k: v for k, v in WORKSPACE.items() if k != "default_job_type"}]}),
            False,
        ),
        ("/workspaces/{id}/", "GET", 200, ok({"workspaces": [{**WORKSPACE, "extra": 1}]}), False),
        ("/workspaces/{id}/", "GET", 404, {"success": False, "message": "Not found."}, True),
        ("/workspaces/{id}/", "GET", 404, {"success": False, "message": "Not found.", "data": {}}, False),
        ("/workspaces/", "POST", 200, ok({"workspace": WORKSPACE}), True),
        ("/workspaces/{id}/files/", "GET", 200, ok(LISTING), True),
        (
            "/workspaces/{id}/files/",
            "GET",
            200,
            ok({k: v for k, v in LISTING.items() if k != "truncated"}),
            False,
        ),
        (
            "/workspaces/{id}/files/",
            "GET",
            200,
            ok({**LISTING, "entries": [{**LISTING["entries"][0], "type": "fifo"}]}),
            False,
        ),
        (
            "/workspaces/{id}/files/{path}",
            "GET",
            404,
            {"success": False, "message": "File not found in workspace."},
            True,
        ),
        ("/workspaces/{id}/files/{path}", "GET", 404, {"success": False, "message": "No such file."}, False),
        ("/workspaces/", "POST", 400, {"success": False, "message": "Missing required fields."}, True),
        ("/workspaces/", "POST", 400, {"success": False, "message": ["a", "b"]}, False),
        ("/workspaces/", "POST", 401, {"success": False, "message": "Invalid token provided."}, True),
        ("/workspaces/", "POST", 401, {"success": False, "message": "Unauthorized"}, False),
        (
            "/workspaces/{id}/",
            "DELETE",
            200,
            {"message": "Workspace 5 queued for deletion.", "success": True},
            True,
        ),
        (
            "/workspaces/{id}/",
            "PUT",
            404,
            {"success": False, "message": "Workspace 5 not found for user."},
            True,
        ),
        (
            "/workspaces/{id}/start/",
            "PUT",
            200,
            ok({"job": {**JOB, "status": "pending", "datetime_start": None}}, "Successful start."),
            True,
        ),
        (
            "/workspaces/{id}/start/",
            "PUT",
            200,
            ok({"job": {**JOB, "core_hours": 0}}, "Successful start."),
            False,
        ),
        (
            "/workspaces/{id}/start/",
            "PUT",
            422,
            {"success": False, "message": "Invalid resource options found: ['Missing required: test_param']"},
            True,
        ),
        ("/jobs/", "GET", 200, ok({"jobs": [JOB]}), True),
        ("/jobs/", "GET", 200, ok({"jobs": [{**JOB, "status": "cancelled"}]}), False),
        ("/jobs/", "GET", 200, ok({"jobs": [{**JOB, "core_hours": "0.0027"}]}), False),
        (
            "/jobs/{id}/",
            "GET",
            200,
            ok({"jobs": []}, "Job matching given parameters could not be found."),
            True,
        ),
        ("/jobs/{id}/stop/", "PUT", 200, {"message": "Job queued to stop.", "success": True}, True),
        ("/jobs/{id}/stop/", "PUT", 404, {"success": False, "message": "Job 7 not found for user."}, True),
        (
            "/shared_workspaces/",
            "GET",
            200,
            ok({"original_workspaces": [], "shared_workspaces": [SHARE]}),
            True,
        ),
        (
            "/shared_workspaces/",
            "GET",
            200,
            ok(
                {
                    "original_workspaces": [{**SHARE, "original_workspace_id": SHARED_WS}],
                    "shared_workspaces": [],
                }
            ),
            True,
        ),
        (
            "/shared_workspaces/",
            "GET",
            200,
            ok(
                {
                    "original_workspaces": [{**SHARE, "original_workspace_id": {"id": 1}}],
                    "shared_workspaces": [],
                }
            ),
            False,
        ),
        (
            "/shared_workspaces/",
            "GET",
            200,
            ok(
                {
                    "original_workspaces": [
                        {**SHARE, "datetime_share_created": "2026-11-25T23:48:47.332123"}
                    ],
                    "shared_workspaces": [],
                }
            ),
            False,
        ),
        (
            "/shared_workspaces/",
            "GET",
            200,
            ok(
                {"original_workspaces": [], "shared_workspaces": []},
                "Shared workspace matching given parameters could not be found.",
            ),
            True,
        ),
        (
            "/tokens/",
            "POST",
            200,
            {"success": True, "message": "Successful authentication.", "token": "0" * 40},
            True,
        ),
        ("/tokens/", "POST", 200, {"auth_uri": "https://auth.globus.org/authorize"}, True),
        (
            "/tokens/",
            "POST",
            200,
            {"success": True, "message": "Successful authentication.", "token": "X" * 40},
            False,
        ),
        (
            "/status/",
            "GET",
            200,
            {
                "message": "",
                "success": True,
                "version": "1.0.0",
                "build": "8ebb9b4",
                "dependencies": {
                    "main_resource": {"connected": True, "message": "Connected successfully."},
                    "api_user_authentication": {"connected": True, "message": "Connected successfully."},
                    "resources": {"r": {"connected": True, "message": "Connected successfully."}},
                    "storage_methods": {
                        "s": {"connected": False, "message": "Could not access critical directories."}
                    },
                    "user_authentication_methods": {"a": {"status": True, "message": "x"}},
                },
            },
            False,
        ),  # `status` key: original bug
        (
            "/quota/",
            "GET",
            200,
            ok(
                {
                    "quota": {
                        "disk_bytes": {"used": 0, "maximum": None},
                        "core_hours": {"used": "0.00000", "maximum": "10.00000"},
                    }
                }
            ),
            True,
        ),
    ],
)
def test_document_is_exact(path: str, method: str, status: int, body: Any, accepted: bool) -> None:
    """The response schemas accept the contract's shapes and reject its known violations."""
    assert conforms(path, method, status, body) is accepted


# ---- 2. route coverage ------------------------------------------------------------------------


def server_rules() -> list[tuple[re.Pattern[str], type]]:
    """(path regex, handler class) of every route the server serves on its own host name, in the
    default passthrough mode: the route table imports without building the application."""
    from tornado.routing import PathMatches, Rule

    from uws.app import UWSApp
    from uws.handlers import api_host_routes

    rules: list[tuple[re.Pattern[str], type]] = []
    for route in api_host_routes(UWSApp().passthrough_mode):
        rule = route if isinstance(route, Rule) else Rule(PathMatches(route[0]), route[1])
        assert isinstance(rule.matcher, PathMatches)
        rules.append((rule.matcher.regex, rule.target))
    assert rules, "no routes found"
    return rules


def handler_methods(handler: type) -> set[str]:
    from tornado import web

    return {
        m
        for m in ("get", "put", "post", "delete", "patch", "head")
        if getattr(handler, m, None) is not getattr(web.RequestHandler, m)
    }


def is_websocket(handler: type) -> bool:
    from tornado.websocket import WebSocketHandler

    return isinstance(handler, type) and issubclass(handler, WebSocketHandler)


def test_every_server_route_is_documented() -> None:
    doc = load_document()
    documented = {path: {m for m in item if m in HTTP_METHODS} for path, item in doc["paths"].items()}
    problems = []
    rules = server_rules()
    rest_rules = [(regex, handler) for regex, handler in rules if not is_websocket(handler)]

    def routed(path: str, regex: re.Pattern[str]) -> bool:
        """Whether `regex`'s rule serves `path`: the first REST rule matching a path takes it
        (/jobs/{id}/log/ is JobLogHandler's, tried before /jobs/{id}/<action>/)."""
        first = next((r for r, _ in rest_rules if r.fullmatch(concrete(path))), None)
        return first is regex

    for regex, handler in rules:
        matching = [p for p in documented if regex.fullmatch(concrete(p)) and routed(p, regex)]
        if is_websocket(handler):
            # Websocket routes are described in the text, not as operations.
            if not any(
                regex.fullmatch(concrete(p)) for p in re.findall(r"`(/[^`\s]*)`", doc["info"]["description"])
            ):
                problems.append(f"websocket route {regex.pattern} ({handler.__name__}) is not described")
            continue
        if not matching:
            problems.append(f"route {regex.pattern} ({handler.__name__}) has no documented path")
            continue
        served = handler_methods(handler)
        for path in matching:
            if documented[path] - served and path not in CONTRACT_ONLY_PATHS:
                problems.append(
                    f"{path}: documents {sorted(documented[path] - served)} that "
                    f"{handler.__name__} does not implement"
                )
        missing = served - set().union(*(documented[p] for p in matching))
        if missing:
            problems.append(
                f"route {regex.pattern} ({handler.__name__}) serves {sorted(missing)}, "
                f"not documented on {matching}"
            )
    assert not problems, "\n".join(problems)


def _doc_paths() -> list[Any]:
    params = []
    for path in load_document()["paths"]:
        marks = []
        if path in CONTRACT_ONLY_PATHS:
            marks.append(
                pytest.mark.xfail(
                    reason="in the contract, not served by this server version yet", strict=False
                )
            )
        params.append(pytest.param(path, marks=marks, id=path))
    return params


@pytest.mark.parametrize("path", _doc_paths())
def test_every_documented_path_is_routed(path: str) -> None:
    rules = server_rules()
    forms = [concrete(path)]
    if path.endswith("/"):
        forms.append(concrete(path)[:-1])  # the contract's slash-less form
    for form in forms:
        assert any(regex.fullmatch(form) for regex, _ in rules), f"{form} matches no server route"


def test_undocumented_methods_get_405(server: Server) -> None:
    """The live server agrees with the document about which methods each path supports."""
    doc = load_document()
    for path, item in doc["paths"].items():
        if path in CONTRACT_ONLY_PATHS:
            continue
        documented = {m.upper() for m in item if m in HTTP_METHODS}
        for method in ("GET", "POST", "PUT", "DELETE", "PATCH"):
            if method in documented:
                continue
            r = requests.request(method, server.base + concrete(path), timeout=10, allow_redirects=False)
            assert r.status_code == 405, f"{method} {path}: {r.status_code} {r.text}"
            assert r.json() == {"success": False, "message": f'Method "{method}" not allowed.'}
            allowed = {m.strip() for m in r.headers["Allow"].split(",")}
            assert allowed == documented | {"OPTIONS"}, f"{path}: Allow {allowed}, documented {documented}"


# ---- 3. schemathesis against the running server -----------------------------------------------


def as_id(value: Any) -> int | None:
    """A generated value that is a valid id (int64, non-negative; an int or ASCII digits), else None.

    Out-of-range values are left alone so that the server still sees them."""
    if isinstance(value, str) and value.isascii() and value.isdigit():
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**63:
        return value
    return None


class World:
    """Users and resources for the fuzzer, so generated ids sometimes hit real objects."""

    def __init__(self, server: Server, client_token: str) -> None:
        self.server = server
        self.client_token = client_token
        self.user = login(server, client_token, unique_name("oa"), first_name="Fuzz", last_name="Openapi")
        self.other = login(server, client_token, unique_name("ob"), first_name="Other", last_name="Openapi")
        # The logout user only ever serves DELETE /tokens/ (which may revoke all of its keys).
        self.logout_username = unique_name("oc")
        login(server, client_token, self.logout_username)
        # /users/ never lists the caller, so each side looks the other up.
        self.other_id = self.find_user(self.user, "Other Openapi", self.other.username)  # type: ignore[attr-defined]
        my_id = self.find_user(self.other, "Fuzz Openapi", self.user.username)  # type: ignore[attr-defined]

        def workspace(client: Client, name: str) -> int:
            r = client.post(
                "/workspaces/",
                {
                    "name": name,
                    "description": "openapi fuzzing",
                    "workspace_details": {"files": [{"name": "hello.txt", "content": "hello"}]},
                },
            )
            assert r.status_code == 200, r.text
            return r.json()["data"]["workspace"]["id"]

        def share(client: Client, ws_id: int, to: int) -> int:
            r = client.post(
                "/shared_workspaces/", {"original_workspace_id": str(ws_id), "shared_user_ids": [to]}
            )
            assert r.status_code == 200, r.text
            return r.json()["data"]["shared_workspaces"][0]["shared_workspace_id"]["id"]

        u = self.user
        self.stable = [workspace(u, "stable 1"), workspace(u, "stable 2")]
        self.deletable = [workspace(u, "delete 1"), workspace(u, "delete 2")]
        self.with_pending_share = workspace(u, "shared out")
        self.copy_out = share(u, self.with_pending_share, self.other_id)  # owned by other
        self.copy_out_cancel = share(u, self.deletable[1], self.other_id)  # owned by other
        self.copy_in = share(self.other, workspace(self.other, "theirs 1"), my_id)  # ours, unaccepted
        self.copy_in_accept = share(self.other, workspace(self.other, "theirs 2"), my_id)  # ours, unaccepted
        # Jobs, so that job operations find some (best effort: starting needs a working spawner).
        self.jobs = []
        for _ in range(2):
            r = u.put(f"/workspaces/{self.stable[1]}/start/", {"job_type": "local_test_job"})
            if r.status_code == 200:
                self.jobs.append(r.json()["data"]["job"]["id"])
        self.pools: dict[tuple[str, str], list[int]] = {
            ("GET", "/jobs/{id}/"): self.jobs,
            ("GET", "/jobs/{id}/log/"): self.jobs,
            ("PUT", "/jobs/{id}/stop/"): self.jobs,
            ("GET", "/workspaces/{id}/"): [*self.stable, self.copy_in],
            ("PUT", "/workspaces/{id}/"): [*self.stable, self.copy_in],
            ("DELETE", "/workspaces/{id}/"): [*self.deletable, self.with_pending_share, self.copy_in],
            ("PUT", "/workspaces/{id}/upload/"): [*self.stable, self.copy_in],
            ("PUT", "/workspaces/{id}/start/"): [*self.stable, self.copy_in],
            ("GET", "/workspaces/{id}/files/"): [*self.stable, self.copy_in],
            ("GET", "/workspaces/{id}/files/{path}"): [*self.stable, self.copy_in],
            ("GET", "/shared_workspaces/{id}/"): [self.copy_out, self.copy_in],
            ("DELETE", "/shared_workspaces/{id}/"): [self.copy_out_cancel, self.copy_out],
            ("PUT", "/shared_workspaces/{id}/accept/"): [self.copy_in_accept, self.copy_out],
        }

    def stop_jobs(self) -> None:
        """Stop the sessions the fuzzing started, so that none outlives the test server."""
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            jobs = self.user.get("/jobs/").json()["data"]["jobs"]
            active = [j for j in jobs if j["status"] in ("pending", "running", "stopping")]
            if not active:
                return
            for job in active:
                if job["status"] != "stopping":
                    self.user.put(f"/jobs/{job['id']}/stop/")
            time.sleep(0.2)
        raise AssertionError(f"sessions still active after the test: {[j['id'] for j in active]}")

    @staticmethod
    def find_user(looker: Client, search: str, username: str) -> int:
        r = looker.get("/users/", params={"search": search})
        assert r.status_code == 200, r.text
        return next(u["id"] for u in r.json()["data"]["users"] if u["username"] == username)

    def map_case(self, case: Any) -> None:
        """Point most generated ids at real objects, deterministically from the generated values."""
        key = (case.method.upper(), case.operation.path)
        pool = self.pools.get(key)
        value = as_id((case.path_parameters or {}).get("id"))
        if pool and value is not None and value % 5 != 4:
            case.path_parameters["id"] = pool[value % len(pool)]
            if key == ("GET", "/workspaces/{id}/files/{path}") and value % 3 == 0:
                case.path_parameters["path"] = "hello.txt"  # a file that is there
        if key == ("POST", "/shared_workspaces/") and isinstance(case.body, dict):
            original = as_id(case.body.get("original_workspace_id"))
            if original is not None and original % 2 == 0:
                case.body["original_workspace_id"] = self.stable[original % 4 // 2]
            users = case.body.get("shared_user_ids")
            if isinstance(users, list):
                case.body["shared_user_ids"] = [
                    self.other_id if (as_id(u) or 1) % 2 == 0 else u for u in users
                ]

    def headers_for(self, case: Any) -> dict[str, str]:
        if case.method.upper() == "DELETE" and case.operation.path in ("/tokens/", "/tokens/api/{id}/"):
            # Logging out (or revoking a token by id) must not log the fuzzing user out: a fresh
            # key of a separate user.
            token = login(self.server, self.client_token, self.logout_username).token
        else:
            token = self.user.token
        return {"UWS-Authorization": f"Token {token}"}


@pytest.fixture(scope="module")
def world(server: Server, client_token: str) -> Iterator[World]:
    w = World(server, client_token)
    yield w
    w.stop_jobs()


SCHEMATHESIS_CONFIG = {
    "request-timeout": 30,
    "generation": {
        "mode": "all",  # valid and invalid inputs
        "max-examples": MAX_EXAMPLES,
        "deterministic": True,
        "with-security-parameters": False,  # the real header is sent instead
        "database": "none",
    },
    "phases": {
        "examples": {"enabled": True},
        "coverage": {"enabled": True, "unexpected-methods": ["PATCH"]},
        "fuzzing": {"enabled": True},
        "stateful": {"enabled": False},
    },
}

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    unsupported_method,
]


def test_schemathesis_loads_the_served_document(server: Server) -> None:
    config = SchemathesisConfig.from_dict({**SCHEMATHESIS_CONFIG, "base-url": server.base})
    served = schemathesis.openapi.from_url(server.base + "/openapi.yaml", config=config)
    assert served.raw_schema == load_document()
    assert served.get_base_url() == server.base


# Loaded at import so that each operation is its own test item. (schemathesis.pytest.from_fixture
# would load it from the running server, but does not work with pytest 9.)
try:
    # The passthrough answers whatever the session app answers (its 502/503/504 are gateway
    # answers); it has its own tests in test_passthrough.py.
    SCHEMA = schemathesis.openapi.from_path(
        DOC_PATH, config=SchemathesisConfig.from_dict(SCHEMATHESIS_CONFIG)
    ).exclude(path_regex="^/passthrough/")
    LOAD_ERROR: Exception | None = None
except Exception as e:  # reported by the test below instead of breaking collection
    SCHEMA, LOAD_ERROR = None, e

if SCHEMA is not None:

    @SCHEMA.parametrize()
    @settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
    )
    def test_api_conforms(case: Any, world: World, server: Server) -> None:
        world.map_case(case)
        session = requests.Session()
        session.trust_env = False  # 127.0.0.1 only: never a proxy from the environment
        case.call_and_validate(
            base_url=server.base, session=session, headers=world.headers_for(case), checks=CHECKS
        )

else:

    def test_api_conforms() -> None:
        pytest.fail(f"{DOC_PATH} could not be loaded: {LOAD_ERROR!r}")
