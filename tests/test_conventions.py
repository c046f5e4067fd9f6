"""Contract section 1: routing, envelope, errors, CORS and authentication headers."""

from __future__ import annotations

import pytest

from helpers.harness import Client, Server

OPEN_PATHS = ["/job_types", "/parameters", "/status"]


@pytest.mark.parametrize(
    "path",
    [
        "/workspaces",
        "/workspaces/",
        "/jobs",
        "/jobs/",
        "/users",
        "/users/",
        "/shared_workspaces",
        "/shared_workspaces/",
    ],
)
def test_both_slash_forms_answer_without_redirect(alice: Client, path: str) -> None:
    r = alice.get(path)
    assert r.status_code == 200, r.text
    assert r.json()["success"] is True
    assert r.headers["Content-Type"].startswith("application/json")


def test_post_without_slash_keeps_body(alice: Client) -> None:
    r = alice.post("/workspaces", {"name": "noslash", "description": ""})
    assert r.status_code == 200, r.text
    assert r.json()["data"]["workspace"]["name"] == "noslash"


@pytest.mark.parametrize("path", ["/nope", "/admin/", "/workspaces/abc/", "/jobs/1x/", "/"])
def test_unknown_route_is_json_404(server: Server, path: str) -> None:
    r = server.client().get(path)
    assert r.status_code == 404
    assert r.json() == {"success": False, "message": "Not found."}
    assert r.headers["Access-Control-Allow-Origin"] == "*"


@pytest.mark.parametrize(
    "method,path,allowed",
    [
        ("DELETE", "/jobs/1/", "GET"),
        ("POST", "/jobs/", "GET"),
        ("GET", "/tokens/", "POST"),
        ("PUT", "/users/", "GET"),
        ("PUT", "/jobs/1/", "GET"),
        ("PUT", "/shared_workspaces/3/", "DELETE"),
        ("POST", "/workspaces/5/", "PUT"),
        ("GET", "/workspaces/5/start/", "PUT"),
        ("PUT", "/workspaces/", "POST"),
    ],
)
def test_wrong_method_is_json_405_with_allow(alice: Client, method: str, path: str, allowed: str) -> None:
    r = alice.request(method, path)
    assert r.status_code == 405
    assert r.json() == {"success": False, "message": f'Method "{method}" not allowed.'}
    assert allowed in r.headers["Allow"]


def test_preflight_on_any_path(server: Server) -> None:
    for path in ["/workspaces/", "/not/a/route", "/tokens"]:
        r = server.client().request(
            "OPTIONS",
            path,
            headers={"Origin": "https://portal.example.org", "Access-Control-Request-Method": "PUT"},
        )
        assert r.status_code == 200
        assert r.content == b""
        assert r.headers["Access-Control-Allow-Methods"] == "DELETE, GET, OPTIONS, PATCH, POST, PUT"
        assert "uws-authorization" in r.headers["Access-Control-Allow-Headers"]
        assert r.headers["Access-Control-Max-Age"] == "86400"
        assert r.headers["Access-Control-Allow-Origin"] == "*"
        assert "Access-Control-Allow-Credentials" not in r.headers


@pytest.mark.parametrize(
    "header,message",
    [
        (None, "Authentication credentials were not provided."),
        ("Token", "Invalid auth header format."),
        ("Token a b", "Invalid auth header format."),
        ("Basic abc", "Invalid auth header format."),
        ("Token " + "0" * 40, "Invalid token provided."),
        ("Bearer " + "0" * 40, "Invalid token provided."),
    ],
)
def test_auth_errors(server: Server, header: str | None, message: str) -> None:
    headers = {"UWS-Authorization": header} if header is not None else {}
    r = server.client().get("/workspaces/", headers=headers)
    assert r.status_code == 401
    assert r.json() == {"success": False, "message": message}
    assert r.headers["WWW-Authenticate"] == "Token"


def test_standard_authorization_header_is_ignored(server: Server, alice: Client) -> None:
    r = server.client().get("/workspaces/", headers={"Authorization": f"Token {alice.token}"})
    assert r.status_code == 401
    assert r.json()["message"] == "Authentication credentials were not provided."


def test_bearer_and_case_insensitive_scheme(server: Server, alice: Client) -> None:
    for scheme in ("Bearer", "token", "TOKEN"):
        r = server.client().get("/workspaces/", headers={"UWS-Authorization": f"{scheme} {alice.token}"})
        assert r.status_code == 200


@pytest.mark.parametrize("path", OPEN_PATHS)
def test_open_endpoints_ignore_garbled_header(server: Server, path: str) -> None:
    r = server.client().get(path, headers={"UWS-Authorization": "garbage value here"})
    assert r.status_code == 200
    assert r.json()["success"] is True


def test_job_types_and_parameters(server: Server) -> None:
    r = server.client().get("/job_types")
    assert r.json() == {
        "message": "Successful.",
        "success": True,
        "data": {
            "job_types": {
                "local_test_job": {"id": "local_test_job", "name": "Local Test Job"},
                "jupyter_lab": {"id": "jupyter_lab", "name": "Jupyter Lab"},
            }
        },
    }
    assert list(r.json()["data"]["job_types"]) == ["local_test_job", "jupyter_lab"]
    params = server.client().get("/parameters/").json()["data"]["parameters"]
    assert [p["variable_name"] for p in params] == ["num_cpus", "memory_mb", "time_limit_min", "gpu_enabled"]
    assert params[0]["validation"] == {"type": "int", "min": 1, "max": 4, "required": False}


def test_status_shape(server: Server) -> None:
    r = server.client().get("/status")
    body = r.json()
    assert list(body) == ["message", "success", "version", "build", "dependencies", "role"]
    assert body["message"] == "" and body["success"] is True and body["role"] == "leader"
    assert body["version"]
    deps = body["dependencies"]
    assert deps["main_resource"] == {"connected": True, "message": "Connected successfully."}
    assert deps["storage_methods"]["main_storage"] == {
        "connected": True,
        "message": "Connected successfully.",
    }
    assert set(deps) == {
        "main_resource",
        "api_user_authentication",
        "resources",
        "storage_methods",
        "user_authentication_methods",
    }


@pytest.mark.parametrize(
    "raw,message",
    [
        ("", "Invalid JSON: Expecting value: line 1 column 1 (char 0)"),
        (
            "{not json",
            "Invalid JSON: Expecting property name enclosed in double quotes: line 1 column 2 (char 1)",
        ),
        ("[1, 2]", "Invalid JSON: expected a JSON object."),
    ],
)
def test_bad_json(alice: Client, raw: str, message: str) -> None:
    r = alice.request("POST", "/workspaces/", raw=raw, headers={"Content-Type": "text/plain"})
    assert r.status_code == 400
    assert r.json() == {"success": False, "message": message}


def test_oversize_body_is_413(alice: Client) -> None:
    r = alice.request("POST", "/workspaces/", raw=b"x" * (3 * 1024 * 1024))
    assert r.status_code == 413
    assert r.json() == {"success": False, "message": "Request body too large."}
    # Nothing was created and the server still answers.
    assert alice.get("/workspaces/").status_code == 200


@pytest.mark.parametrize("key,value", [("workspace_id", "abc"), ("resource_job_id", "1.5")])
def test_bad_query_values(alice: Client, key: str, value: str) -> None:
    r = alice.get(f"/jobs/?{key}={value}")
    assert r.status_code == 400
    assert r.json() == {"success": False, "message": f"Invalid value for query parameter {key}: {value}"}


def test_security_headers(alice: Client) -> None:
    r = alice.get("/workspaces/")
    assert r.headers["X-Content-Type-Options"] == "nosniff"
    assert r.headers["X-Frame-Options"] == "DENY"
    assert r.headers["Vary"] == "Origin"


def test_absurd_ids_match_nothing(alice: Client) -> None:
    huge = "9" * 25
    r = alice.get(f"/workspaces/{huge}/")
    assert r.status_code == 200 and r.json()["data"]["workspaces"] == []
    r = alice.put(f"/workspaces/{huge}/", {"name": "x"})
    assert r.status_code == 404 and r.json()["message"] == f"Workspace {huge} not found for user."
    assert alice.get(f"/jobs/{huge}").json()["data"]["jobs"] == []
    assert alice.put(f"/jobs/{huge}/stop").status_code == 404
    assert alice.delete(f"/shared_workspaces/{huge}").status_code == 404
    r = alice.get(f"/jobs/?workspace_id={huge}")
    assert (
        r.status_code == 400
        and r.json()["message"] == f"Invalid value for query parameter workspace_id: {huge}"
    )
