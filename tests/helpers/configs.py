"""The servers the tests start: session accounts and interpreters, and the configurations that
more than one module (or a benchmark) uses. A module's own configuration stays in the module."""

from __future__ import annotations

import atexit
import glob
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from collections.abc import Iterator

from helpers.harness import IS_ROOT, ROOT, TESTS, Server, running_server


def shared_dir() -> str:
    """A world-readable copy of uws and of the tests' session apps, for sessions that run as
    other OS accounts (this checkout may sit where they cannot read it)."""
    shared = os.path.join(tempfile.gettempdir(), f"uws-helper-lib-{os.getpid()}")
    if not os.path.isdir(shared):
        shutil.copytree(
            os.path.join(ROOT, "uws"),
            os.path.join(shared, "uws"),
            ignore=shutil.ignore_patterns("__pycache__"),
        )
        shutil.copytree(
            os.path.join(TESTS, "apps"),
            os.path.join(shared, "apps"),
            ignore=shutil.ignore_patterns("__pycache__"),
        )
        for dirpath, _, filenames in os.walk(shared):
            os.chmod(dirpath, 0o755)
            for name in filenames:
                os.chmod(os.path.join(dirpath, name), 0o644)
    return shared


SESSION_GROUP = f"uwstg{os.getpid()}"


def session_python_config() -> str:
    """As root, sessions run as other OS accounts (SudoSpawner); those accounts cannot read this
    checkout's virtualenv (often under /root), so helpers run on the system Python (with Debian's
    python3-zmq and python3-psutil, which .ci/run installs) and a world-readable copy of uws."""
    if not IS_ROOT:
        return ""
    probe = subprocess.run(["/usr/bin/python3", "-c", "import zmq, psutil"], capture_output=True)
    if probe.returncode != 0:
        return 'c.UWSApp.spawner_class = "local"\n'
    shared = shared_dir()
    # Only members of the session group reach the session channel; accounts the server creates
    # join it.
    if subprocess.run(["groupadd", "--", SESSION_GROUP], capture_output=True).returncode == 0:
        # Made by this process (a test run, or a benchmark that has no pytest teardown): gone
        # when it exits.
        atexit.register(subprocess.run, ["groupdel", "--", SESSION_GROUP], capture_output=True)
    return (
        f'c.Spawner.python = "/usr/bin/python3"\nc.Spawner.helper_pythonpath = "{shared}"\n'
        f'c.UWSApp.session_group = "{SESSION_GROUP}"\n'
    )


def shared_python() -> str | None:
    """An interpreter every session account can run, with this test run's packages (JupyterLab
    among them): a venv of the system Python whose .pth adds this run's site-packages. A server
    run on it gives JupyterLab sessions of other OS accounts a Python they can use (the test
    run's own may sit where they cannot read, e.g. under /root). None when the system Python is
    another version, or other accounts cannot read this run's site-packages."""
    site_packages = sysconfig.get_paths()["purelib"]
    probe = subprocess.run(
        ["/usr/bin/python3", "-c", "import sys; print(sys.version_info[:2])"], capture_output=True, text=True
    )
    if probe.stdout.strip() != str(sys.version_info[:2]):
        return None
    path = site_packages
    while path != "/":  # every directory on the way must be open to other accounts
        if not os.stat(path).st_mode & 0o005:
            return None
        path = os.path.dirname(path)
    venv = os.path.join(tempfile.gettempdir(), f"uws-shared-python-{os.getpid()}")
    python = os.path.join(venv, "bin", "python")
    if not os.path.exists(python):
        subprocess.run(["/usr/bin/python3", "-m", "venv", "--without-pip", venv], check=True)
        atexit.register(shutil.rmtree, venv, True)
        (own,) = glob.glob(os.path.join(venv, "lib", "python3*", "site-packages"))
        with open(os.path.join(own, "uws-test-run.pth"), "w") as f:
            # addsitedir, not a bare path: the packages' own .pth files (uws's editable install) count.
            f.write(f"import site; site.addsitedir({site_packages!r})\n")
        for dirpath, _, filenames in os.walk(venv):
            os.chmod(dirpath, 0o755)
            for name in filenames:
                # Never through a symlink: bin/python leads to the system's interpreter.
                if not os.path.islink(os.path.join(dirpath, name)):
                    os.chmod(os.path.join(dirpath, name), 0o644)
    return python


SUDO_AVAILABLE = IS_ROOT and "spawner_class" not in session_python_config()

# Most modules reach sessions under /passthrough/<id>/ on the server's own origin (path mode,
# set explicitly as an installation must); test_origins.py, test_browser_isolation.py and
# test_jupyterlab.py run the default, one origin per session, with ORIGIN_MODE.
PATH_MODE = 'c.UWSApp.passthrough_mode = "path"\n'
ORIGIN_MODE = 'c.UWSApp.passthrough_mode = "origin"\n'

# The web interface's modules (test_webui.py over HTTP, test_webui_browser.py in Chromium):
# the development login and local sessions; each module adds its own lines.
WEBUI_CONFIG = """
c.LocalFileSystemStorage.root_dir = "@DIR@/workspaces"
c.UWSApp.spawner_class = "local"
"""


def webui_server(backend: str, extra_config: str) -> Iterator[Server]:
    """The body of the web interface modules' `server` fixtures: `uws --dev` (the development
    login's form signs anyone in) with WEBUI_CONFIG and the module's `extra_config`."""
    yield from running_server(backend, WEBUI_CONFIG + extra_config, extra_args=["--dev"], client_token=False)


# The project's own start-up contract (api-contract 5.3): local logins, OS accounts created on
# demand when the tests run as root; otherwise every user's files belong to the test runner.
LOCAL_CONFIG = (
    """
c.UWSApp.authenticator_class = "local"
c.LocalAuthenticator.create_system_users = {create}
c.UWSApp.storage_accounts_from = "{accounts}"
c.LocalFileSystemStorage.root_dir = "@DIR@/workspaces"
c.UWSApp.max_body_size = 2 * 1024 * 1024
c.UWSApp.job_types = {{
    "local_test_job": {{"name": "Local Test Job", "job_type": "LocalTestJob", "environment_details": {{"main_resource": {{}}}}}},
    "jupyter_lab": {{"name": "Jupyter Lab", "job_type": "JupyterLabJob", "environment_details": {{"main_resource": {{}}}}}},
}}
""".format(create=IS_ROOT, accounts="local" if IS_ROOT else "dev")
    + session_python_config()
    + PATH_MODE
)


# Session apps run as the workspace owner when the tests run as root; that account cannot use
# this checkout's interpreter (often under /root), so they use the system Python.
APP_PYTHON = "/usr/bin/python3" if SUDO_AVAILABLE else sys.executable

# Sessions of every kind, short-lived and failing ones included (test_sessions.py).
SESSION_CONFIG = (
    LOCAL_CONFIG
    + f"""
c.JobService.heartbeat_seconds = 1
c.JobService.reconcile_seconds = 1
c.UWSApp.stop_grace_seconds = 2
c.JobService.max_running_jobs_per_user = 3
c.UWSApp.job_types = {{
    "local_test_job": {{"name": "Local Test Job", "job_type": "LocalTestJob",
                       "environment_details": {{"main_resource": {{"sleep_seconds": "2"}}}}}},
    "web": {{"name": "Web app", "job_type": "CommandJob", "environment_details": {{"main_resource": {{
        "command": ["{APP_PYTHON}", "-m", "http.server", "{{port}}", "--bind", "127.0.0.1"],
        "readiness_path": "/", "url_path": "/?token={{token}}"}}}}}},
    "crash": {{"name": "Crash", "job_type": "CommandJob", "environment_details": {{"main_resource": {{
        "command": ["sh", "-c", "echo boom; exit 3"]}}}}}},
    "short": {{"name": "Short", "job_type": "CommandJob", "environment_details": {{"main_resource": {{
        "command": ["sleep", "600"], "time_limit_seconds": "2"}}}}}},
    "nobinary": {{"name": "No binary", "job_type": "CommandJob", "environment_details": {{"main_resource": {{
        "command": ["/nonexistent/uws-no-such-program"]}}}}}},
    "missing": {{"name": "Missing", "job_type": "CommandJob", "environment_details": {{"other_resource": {{}}}}}},
}}

"""
)

# Echo sessions behind the passthrough (test_passthrough.py, test_front_door.py).
ECHO_APP = os.path.join(shared_dir(), "apps", "echo_app.py")
PROXY_CONFIG = (
    LOCAL_CONFIG
    + f"""
c.JobService.heartbeat_seconds = 1
c.UWSApp.proxy_request_timeout = 3
c.UWSApp.cull_interval_seconds = 0.5
c.UWSApp.idle_warning_seconds = 2
c.UWSApp.job_types = {{
    "echo": {{"name": "Echo", "job_type": "CommandJob", "environment_details": {{"main_resource": {{
        "command": ["{APP_PYTHON}", "{ECHO_APP}", "{{port}}", "{{base_url}}"],
        "readiness_path": "{{base_url}}hello", "url_path": "{{base_url}}hello"}}}}}},
    "echo_idle": {{"name": "Echo, culled when idle", "job_type": "CommandJob", "environment_details": {{"main_resource": {{
        "command": ["{APP_PYTHON}", "{ECHO_APP}", "{{port}}", "{{base_url}}"], "idle_timeout_seconds": "4",
        "readiness_path": "{{base_url}}hello", "url_path": "{{base_url}}hello"}}}}}},
    "echo_root": {{"name": "Echo at /", "job_type": "CommandJob", "environment_details": {{"main_resource": {{
        "command": ["{APP_PYTHON}", "{ECHO_APP}", "{{port}}"], "readiness_path": "/hello", "url_path": "/hello"}}}}}},
}}
"""
)

# Pages that tell whose session they are, on origins of their own or on paths of the server's
# (test_origins.py, test_browser_isolation.py).
ORIGIN_APP = os.path.join(shared_dir(), "apps", "origin_app.py")
PAGE_JOB_TYPES = f"""
c.JobService.heartbeat_seconds = 1
c.UWSApp.job_types = {{
    "page": {{"name": "Page", "job_type": "CommandJob", "environment_details": {{"main_resource": {{
        "command": ["{APP_PYTHON}", "{ORIGIN_APP}", "{{port}}", "{{base_url}}"],
        "readiness_path": "{{base_url}}secret", "url_path": "{{base_url}}page"}}}}}},
}}
"""
ORIGIN_CONFIG = LOCAL_CONFIG + ORIGIN_MODE + PAGE_JOB_TYPES
PATH_CONFIG = LOCAL_CONFIG + PAGE_JOB_TYPES  # the harness's LOCAL_CONFIG asks for path mode

# A session app that answers with broken HTTP, beside a well-behaved one (test_hostile_app.py,
# bench/hostile_bench.py).
HOSTILE_APP = os.path.join(shared_dir(), "apps", "hostile_app.py")
WEBSOCKET_CAP = 3
MESSAGE_CAP = 1 << 20
HOSTILE_CONFIG = (
    LOCAL_CONFIG
    + f"""
c.JobService.heartbeat_seconds = 1
c.UWSApp.proxy_request_timeout = 3
c.WebSocketCounter.max_per_user = {WEBSOCKET_CAP}
c.FrontServer.trusted_proxies = ["127.0.0.1/32", "10.9.9.0/24"]
c.UWSApp.job_types = {{
    "hostile": {{"name": "Hostile", "job_type": "CommandJob", "environment_details": {{"main_resource": {{
        "command": ["{APP_PYTHON}", "{HOSTILE_APP}", "{{port}}", "{{base_url}}"],
        "readiness_path": "{{base_url}}hello", "url_path": "{{base_url}}hello"}}}}}},
    "echo": {{"name": "Echo", "job_type": "CommandJob", "environment_details": {{"main_resource": {{
        "command": ["{APP_PYTHON}", "{ECHO_APP}", "{{port}}", "{{base_url}}"],
        "readiness_path": "{{base_url}}hello", "url_path": "{{base_url}}hello"}}}}}},
}}
"""
)

# Headless Chromium as this machine can run it: no sandbox as root, and no background
# connections (the network is closed; Chromium would try, and fail, at every start).
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--headless",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
