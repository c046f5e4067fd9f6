"""A real JupyterLab (from PyPI) launched by the spawner and used through the passthrough: the
Lab page, the kernels REST API, code run over the kernel websocket, a notebook opened by path,
headless Chromium rendering the UI, and idle culling that respects a busy kernel. Another user is
refused at every step."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
import uuid
from typing import Any

import pytest
from tornado.httpclient import HTTPClientError

from helpers.api import at, create, get_job, login, start, wait_ready, wait_status
from helpers.configs import CHROMIUM_ARGS, LOCAL_CONFIG, ORIGIN_MODE
from helpers.harness import Client, Server, running_server
from helpers.jupyter import run_code

pytest.importorskip("jupyterlab", reason="JupyterLab is installed with the test extras")

# JupyterLab comes from this checkout's virtualenv, so these sessions run as the server's own
# user (LocalProcessSpawner); SudoSpawner is covered by test_sessions.py. Each session on an
# origin of its own (the default), reached as test_origins.py explains.
LAB_CONFIG = (
    LOCAL_CONFIG
    + ORIGIN_MODE
    + """
c.UWSApp.spawner_class = "local"
c.JobService.heartbeat_seconds = 1
c.UWSApp.cull_interval_seconds = 1
c.UWSApp.idle_warning_seconds = 2
c.UWSApp.job_types = {
    "jupyter_lab": {"name": "Jupyter Lab", "job_type": "JupyterLabJob",
                    "environment_details": {"main_resource": {"use_local_environment": True}}},
    "jupyter_idle": {"name": "Jupyter Lab (culled)", "job_type": "JupyterLabJob",
                     "environment_details": {"main_resource": {"use_local_environment": True,
                                                               "idle_timeout_seconds": "6"}}},
}
"""
)


@pytest.fixture(scope="module")
def lserver(backend: str):
    yield from running_server(backend, LAB_CONFIG)


@pytest.fixture(scope="module")
def owner(lserver: Server) -> Client:
    return login(lserver, lserver.client_token)


@pytest.fixture(scope="module")
def stranger(lserver: Server) -> Client:
    return login(lserver, lserver.client_token)


def launch(owner: Client, job_type: str, files: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    w = create(owner, workspace_details={"files": files or []})
    job = start(owner, w["id"], job_type=job_type)
    ready = wait_ready(owner, job["id"], 120)
    details = ready["job_details"]["current_job_details"]["connection_details"]
    token = details["url_path"].split("token=")[1]
    return {"id": job["id"], "workspace": w["id"], "token": token, **details}


@pytest.fixture(scope="module")
def lab(owner: Client):
    notebook = {"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}
    session = launch(owner, "jupyter_lab", [{"name": "analysis/nb.ipynb", "content": json.dumps(notebook)}])
    yield session
    owner.put(f"/jobs/{session['id']}/stop")
    wait_status(owner, session["id"], "complete")


def test_link_opens_lab(lab: dict[str, Any]) -> None:
    assert lab["url_path"] == f"/lab?token={lab['token']}"
    assert lab["url_domain"].startswith(f"http://j{lab['id']}-")
    r = at(lab["url_domain"] + lab["url_path"])
    assert r.status_code == 200
    assert "JupyterLab" in r.text
    assert any(c.startswith(f"uws-session-{lab['id']}=") for c in r.raw.headers.getlist("Set-Cookie"))


def test_notebook_opens_by_path(lab: dict[str, Any]) -> None:
    base, query = lab["url_path"].split("?")
    r = at(f"{lab['url_domain']}{base}/tree/analysis/nb.ipynb?{query}")
    assert r.status_code == 200 and "JupyterLab" in r.text
    r = at(f"{lab['url_domain']}/api/contents/analysis/nb.ipynb?{query}")
    assert r.status_code == 200
    assert r.json()["type"] == "notebook" and r.json()["content"]["nbformat"] == 4


def test_kernel_runs_code_over_websocket(lab: dict[str, Any]) -> None:
    api = f"{lab['url_domain']}/api/kernels"
    r = at(f"{api}?token={lab['token']}", "POST", json={"name": "python3"})
    assert r.status_code == 201, r.text
    kernel = r.json()["id"]
    url = api.replace("http", "ws") + f"/{kernel}/channels?token={lab['token']}"
    assert run_code(url, "print(6 * 7)") == "42\n"
    at(f"{api}/{kernel}?token={lab['token']}", "DELETE")


def test_stranger_refused_at_every_step(lab: dict[str, Any], stranger: Client) -> None:
    base = lab["url_domain"]
    h = stranger.headers()
    for r in (
        at(f"{base}/lab", headers=h),
        at(f"{base}/lab/tree/analysis/nb.ipynb", headers=h),
        at(f"{base}/api/kernels", "POST", headers=h, json={"name": "python3"}),
        at(f"{base}/api/contents/analysis/nb.ipynb", headers=h),
        at(f"{base}/api/kernels?token=not-the-token"),
    ):
        assert r.status_code == 403
        assert r.json()["message"] == "You do not have access to this session."
    with pytest.raises(HTTPClientError) as info:
        run_code(f"{base.replace('http', 'ws')}/api/kernels/{uuid.uuid4()}/channels", "1", headers=h)
    assert info.value.code == 403


@pytest.mark.skipif(not shutil.which("chromium"), reason="needs Debian's chromium package")
def test_chromium_renders_lab(lab: dict[str, Any]) -> None:
    profile = tempfile.mkdtemp(prefix="uws-chromium-")
    shot = os.path.join(os.path.dirname(profile), f"uws-lab-{lab['id']}.png")
    args = [
        "chromium",
        *CHROMIUM_ARGS,
        f"--user-data-dir={profile}",
        "--window-size=1280,800",
        "--virtual-time-budget=20000",
    ]
    link = lab["url_domain"] + lab["url_path"]
    try:
        dom = subprocess.run([*args, "--dump-dom", link], capture_output=True, text=True, timeout=120).stdout
        subprocess.run([*args, f"--screenshot={shot}", link], capture_output=True, timeout=120)
    finally:
        shutil.rmtree(profile, ignore_errors=True)
    # Rendered by JupyterLab's JavaScript (not in the served HTML): the app shell and its menus.
    assert 'id="jp-main-dock-panel"' in dom or "jp-LabShell" in dom, dom[:2000]
    assert os.path.getsize(shot) > 10_000


def test_busy_kernel_keeps_session_alive_then_culled(owner: Client) -> None:
    session = launch(owner, "jupyter_idle")
    api = f"{session['url_domain']}/api/kernels"
    kernel = at(f"{api}?token={session['token']}", "POST", json={"name": "python3"}).json()["id"]
    url = api.replace("http", "ws") + f"/{kernel}/channels?token={session['token']}"
    started = time.time()
    # Busy for 12 s, twice the idle timeout: the session must survive it.
    run_code(url, "import time; time.sleep(12); print('done')")
    assert time.time() - started >= 11
    assert get_job(owner, session["id"])["status"] == "running"
    done = wait_status(owner, session["id"], "complete", timeout=40)
    assert (
        done["job_details"]["current_job_details"]["message"] == "Stopped after 6 seconds without activity."
    )
