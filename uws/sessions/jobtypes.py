"""Job types: from a configured job type and a request to the job.json the helper runs.

The command templates live in share/uws/job_templates.json. A job type's settings are its
`environment_details[<main resource>]` object, as in the original config.json.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import sys
from typing import Any
from urllib.parse import urlsplit

KNOWN_TYPES = ("LocalTestJob", "JupyterLabJob", "AppyterJob", "CommandJob", "YACJob")
HELPER_PLACEHOLDERS = ("port", "base_url", "token", "host")
_PLACEHOLDER = re.compile(r"\{(\w+)\}")


class JobTypeError(ValueError):
    pass


def load_templates(share_dir: str) -> dict[str, Any]:
    with open(os.path.join(share_dir, "job_templates.json")) as f:
        return json.load(f)


def fill(text: str, values: dict[str, Any]) -> str:
    """Replace {name} placeholders we know; leave the helper's own ({port}, {host} ...) in place."""

    def sub(match: re.Match[str]) -> str:
        key = match.group(1)
        if key in values and key not in HELPER_PLACEHOLDERS:
            return str(values[key])
        return match.group(0)

    return _PLACEHOLDER.sub(sub, text)


def minutes(value: Any) -> int | None:
    if value is None or value == "":
        return None
    try:
        return int(str(value).strip())
    except ValueError:
        return None


def settings_for(job_type: dict[str, Any], resource_key: str) -> dict[str, Any] | None:
    env = job_type.get("environment_details")
    if not isinstance(env, dict) or not isinstance(env.get(resource_key), dict):
        return None
    return env[resource_key]


def build_spec(
    templates: dict[str, Any],
    job_type: dict[str, Any],
    settings: dict[str, Any],
    *,
    job_id: int,
    workspace_dir: str,
    job_dir: str,
    base_url: str,
    time_limit_minutes: int | None,
    origin: str,
) -> dict[str, Any]:
    kind = job_type.get("job_type")
    template = templates.get(kind) if isinstance(kind, str) else None
    if template is None:
        raise JobTypeError(f"unknown job type class {kind!r}")
    values: dict[str, Any] = dict(template.get("defaults", {}))
    values.update({k: v for k, v in settings.items() if isinstance(v, str | int | float)})
    values.update(
        {"python": sys.executable, "workspace": workspace_dir, "job_dir": job_dir, "origin": origin}
    )
    # The host name browsers reach the session by, which apps that check Host must accept.
    values["host_name"] = urlsplit(origin).hostname or "localhost"
    if kind == "JupyterLabJob":
        values["python"] = jupyter_python(settings, workspace_dir)
    command = template["command"]
    if kind == "CommandJob":
        command = settings.get("command")
        if isinstance(command, str):
            command = shlex.split(command)
        if not isinstance(command, list) or not command or not all(isinstance(c, str) for c in command):
            raise JobTypeError("CommandJob needs a 'command' (a string or a list of strings)")
    if kind == "AppyterJob" and not settings.get("sif_file_path"):
        raise JobTypeError("AppyterJob needs 'sif_file_path'")
    argv = [fill(part, values) for part in command]
    if (
        kind == "JupyterLabJob"
        and values["python"] != sys.executable
        and not settings.get("use_local_environment")
    ):
        argv = virtualenv_wrapper(settings, workspace_dir, argv)
    readiness = template.get("readiness")
    if kind == "CommandJob" and settings.get("readiness_path", "{base_url}") in ("", None):
        readiness = None  # not a web app: running as soon as it has started
    if readiness is not None:
        timeout = fill(str(readiness.get("timeout_seconds", 120)), values)
        readiness = {"path": fill(readiness["path"], values), "timeout_seconds": float(timeout)}
    return {
        "job_id": job_id,
        "job_type": kind,
        "command": argv,
        # The token travels in the environment (readable by the session's account only).
        "env": {
            **{str(k): fill(str(v), values) for k, v in (template.get("env") or {}).items()},
            "UWS_JOB_ID": str(job_id),
            "UWS_SESSION_TOKEN": "{token}",
        },
        "cwd": workspace_dir,
        "log_file": os.path.join(job_dir, "session.log"),
        "readiness": readiness,
        "url_path": fill(template.get("url_path", ""), values),
        "base_url": base_url,
        "time_limit_seconds": seconds_limit(settings, time_limit_minutes),
        "heartbeat_seconds": 5.0,
        "grace_seconds": 5.0,
        "linger_seconds": 120.0,
    }


def seconds_limit(settings: dict[str, Any], time_limit_minutes: int | None) -> int | None:
    """The session's time limit: a job type's `time_limit_seconds` (for short test sessions) or
    the requested/configured minutes."""
    raw = settings.get("time_limit_seconds")
    if raw not in (None, ""):
        try:
            return int(str(raw))
        except ValueError:
            pass
    return time_limit_minutes * 60 if time_limit_minutes else None


def job_type_minutes(settings: dict[str, Any]) -> int | None:
    """A job type's own time limit in whole minutes (what a scheduler is asked for): its
    `time_limit_seconds` rounded up, else its `time_limit`."""
    seconds = seconds_limit(settings, None)
    if seconds:
        return max(1, -(-seconds // 60))
    return minutes(settings.get("time_limit"))


def jupyter_python(settings: dict[str, Any], workspace_dir: str) -> str:
    """The server's own Python (use_local_environment, or no module manager), else a virtualenv
    in the workspace, built on first use."""
    if settings.get("use_local_environment") or settings.get("module_manager") not in ("virtualenv",):
        return sys.executable
    name = settings.get("environment_name") or "JupyterLabJob"
    return os.path.join(workspace_dir, f".{name}_venv", "bin", "python")


def virtualenv_wrapper(settings: dict[str, Any], workspace_dir: str, argv: list[str]) -> list[str]:
    venv_python = argv[0]
    venv = os.path.dirname(os.path.dirname(venv_python))
    # B25: with virtualenv and no python_packages, install `modules`.
    packages = settings.get("python_packages") or settings.get("modules") or ["jupyterlab"]
    base = settings.get("python_version") or "python3"
    script = (
        f"if [ ! -x {shlex.quote(venv_python)} ]; then "
        f"echo 'Building the environment (first use)...'; "
        f"{shlex.quote(base)} -m venv {shlex.quote(venv)} || python3 -m venv {shlex.quote(venv)}; "
        f"{shlex.quote(venv_python)} -m pip install --quiet {' '.join(shlex.quote(p) for p in packages)}; fi; "
        f"exec {' '.join(shlex.quote(a) for a in argv)}"
    )
    return ["sh", "-c", script]
