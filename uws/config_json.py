"""Reading an existing deployment's config.json (the original server's format), and the way back.

The file is validated as a whole (uws.config_validation) and every problem is reported at once,
each naming its key path. What is valid is mapped onto the same traitlets options a
`uws_config.py` would set, so the rest of the server never knows which format it was started
with. The way back: UWSApp's embedded defaults, and its options in the original form
(original_form), which is what is validated and what /status/ reports.
"""

from __future__ import annotations

import copy
import json
import os
from typing import Any, Protocol

from traitlets.config import Config

from .config_validation import AUTH_TYPES, STORAGE_TYPES, session_domain, validate

# The other way: UWSApp's class names as the original's types (the development login is local).
ORIGINAL_AUTH_NAMES = {name: kind for kind, name in AUTH_TYPES.items()} | {"dev": "LocalUserAuthentication"}
ORIGINAL_STORAGE_NAMES = {name: kind for kind, name in STORAGE_TYPES.items()}


class ConfigError(ValueError):
    """An invalid configuration; `problems` lists every issue found."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("Invalid configuration:\n" + "\n".join(f"  - {p}" for p in problems))


def load(path: str) -> tuple[Config, list[str]]:
    """Read and validate an original-format file; return traitlets config and warnings."""
    try:
        with open(path, encoding="utf-8") as f:
            raw = json.load(f)
    except json.JSONDecodeError as e:
        raise ConfigError([f"{path} is not valid JSON: {e}"]) from None
    except OSError as e:
        raise ConfigError([f"cannot read {path}: {e.strerror}"]) from None
    problems, warnings = validate(raw)
    if problems:
        raise ConfigError(problems)
    return to_traitlets(raw, os.path.dirname(os.path.abspath(path))), warnings


def to_traitlets(raw: dict[str, Any], base_dir: str) -> Config:
    c = Config()
    auth_key = raw["api_user_authentication"]
    storage_key = raw["main_storage"]
    storage = raw["available_storage"][storage_key]
    storage_auth_key = storage["user_authentication"]

    c.UWSApp.api_auth_key = auth_key
    c.UWSApp.storage_key = storage_key
    c.UWSApp.main_resource_key = raw["main_resource"]
    c.UWSApp.user_authentication_methods = raw["available_user_authentication"]
    c.UWSApp.storage_methods = raw["available_storage"]
    c.UWSApp.resources = raw["available_resources"]
    c.UWSApp.job_types = raw["available_job_types"]
    c.UWSApp.parameters = raw["parameters"]

    auth = raw["available_user_authentication"][auth_key]
    c.UWSApp.authenticator_class = AUTH_TYPES[auth["user_authentication_type"]]
    details = auth.get("connection_details") or {}
    kind = auth["user_authentication_type"]
    if kind == "LocalUserAuthentication":
        c.LocalAuthenticator.create_system_users = bool(details.get("create_external_users", False)) and (
            details.get("operating_system") == "linux"
        )
    elif kind == "GlobusUserAuthentication":
        c.GlobusAuthenticator.client_id = details.get("client_id", "")
        c.GlobusAuthenticator.client_secret = details.get("client_secret", "")
        c.GlobusAuthenticator.mode = details.get("authentication_type", "token")
        c.GlobusAuthenticator.allowed_globus_groups = details.get("allowed_globus_groups", [])
        c.GlobusAuthenticator.health_check_url = details.get("health_check_url", "")
    elif kind == "PSCAPIUserAuthentication":
        c.PSCAuthenticator.health_check_url = details.get("health_check_url", "")

    resource = raw["available_resources"][raw["main_resource"]]
    domain = session_domain(resource.get("passthrough_domain") or "")
    if domain:
        # The original served sessions from host names under this domain; so does UWS.
        c.UWSApp.session_host = domain
    if resource["resource_type"] == "SlurmAPIResource":
        # The original submitted through PSC's job-control service (root_url, api_token); UWS
        # talks to slurmrestd itself, so those two do not carry over (set SlurmRestSpawner.url).
        c.UWSApp.spawner_class = "slurm_rest"
        c.SlurmBase.partition = resource.get("cpu_partition") or ""
        c.SlurmBase.gpu_partition = resource.get("gpu_partition") or ""
        details = resource.get("connection_details") or {}
        c.SlurmRestSpawner.token_lifespan = int(float(details.get("token_lifespan", "3600")))
        if resource.get("time_pending_catch") is not None:
            c.SlurmBase.pending_notice_seconds = float(resource["time_pending_catch"])

    storage_auth = raw["available_user_authentication"][storage_auth_key]
    c.UWSApp.storage_accounts_from = AUTH_TYPES[storage_auth["user_authentication_type"]]
    c.UWSApp.storage_class = STORAGE_TYPES[storage["storage_type"]]
    root = storage["root_dir"]
    if not os.path.isabs(root):
        root = os.path.normpath(os.path.join(base_dir, root))
    storage_cls = (
        "HubmapLocalFileSystemStorage"
        if storage["storage_type"] == "HubmapLocalFileSystemStorage"
        else "LocalFileSystemStorage"
    )
    c[storage_cls].root_dir = root
    if storage.get("allowed_symlink_roots"):
        c[storage_cls].allowed_symlink_roots = storage["allowed_symlink_roots"]
    if storage_cls == "HubmapLocalFileSystemStorage":
        c.HubmapLocalFileSystemStorage.entity_api_url = storage["connection_details"]["root_url"]
    return c


DEFAULT_PARAMETERS = [
    {
        "display_name": "Number of CPUs",
        "description": "",
        "variable_name": "num_cpus",
        "default_value": 1,
        "validation": {"type": "int", "min": 1, "max": 4, "required": False},
    },
    {
        "display_name": "Memory (MB)",
        "description": "",
        "variable_name": "memory_mb",
        "default_value": 1024,
        "validation": {"type": "int", "min": 1024, "max": 8192, "required": False},
    },
    {
        "display_name": "Time Limit (minutes)",
        "description": "",
        "variable_name": "time_limit_min",
        "default_value": 180,
        "validation": {"type": "int", "min": 1, "max": 480, "required": False},
    },
    {
        "display_name": "GPU Enabled",
        "description": "",
        "variable_name": "gpu_enabled",
        "default_value": False,
        "validation": {"type": "bool", "required": False},
    },
]
DEFAULT_MAPPING = {
    "num_cpus": "cpus_per_task",
    "memory_mb": "memory_per_node",
    "time_limit_min": "time_limit",
}


# The embedded defaults of UWSApp.resources, job_types and parameters: this machine, one test job.
def default_resources(main_resource_key: str) -> dict[str, Any]:
    return {
        main_resource_key: {
            "name": "Local Resource",
            "resource_type": "LocalResource",
            "passthrough_domain": "",
            "connection_details": {},
            "parameter_mapping": dict(DEFAULT_MAPPING),
        }
    }


def default_job_types(main_resource_key: str) -> dict[str, Any]:
    return {
        "local_test_job": {
            "name": "Local Test Job",
            "job_type": "LocalTestJob",
            "environment_details": {main_resource_key: {}},
        }
    }


def default_parameters() -> list[Any]:
    return copy.deepcopy(DEFAULT_PARAMETERS)


class ConfiguredOptions(Protocol):
    """The options of UWSApp (under its names) that the original format is made from."""

    @property
    def api_auth_key(self) -> str: ...
    @property
    def authenticator_class(self) -> str: ...
    @property
    def user_authentication_methods(self) -> dict[str, Any]: ...
    @property
    def storage_key(self) -> str: ...
    @property
    def storage_class(self) -> str: ...
    @property
    def storage_methods(self) -> dict[str, Any]: ...
    @property
    def main_resource_key(self) -> str: ...
    @property
    def resources(self) -> dict[str, Any]: ...
    @property
    def job_types(self) -> dict[str, Any]: ...
    @property
    def parameters(self) -> list[Any]: ...


def original_form(app: ConfiguredOptions) -> dict[str, Any]:
    """UWSApp's configuration in the original format, so one validator (and /status/) serves
    both formats."""
    auths = dict(app.user_authentication_methods) or {
        app.api_auth_key: {
            "name": app.api_auth_key,
            "user_authentication_type": ORIGINAL_AUTH_NAMES.get(
                app.authenticator_class, "LocalUserAuthentication"
            ),
            "connection_details": {},
        },
    }
    storages = dict(app.storage_methods) or {
        app.storage_key: {
            "name": app.storage_key,
            "storage_type": ORIGINAL_STORAGE_NAMES.get(app.storage_class, "LocalFileSystemStorage"),
            "user_authentication": app.api_auth_key,
            "root_dir": "/",
            "connection_details": {"root_url": "configured"},
        },
    }
    resources = {}
    for key, entry in app.resources.items():
        entry = dict(entry)
        entry.setdefault("storage", app.storage_key)
        entry.setdefault("user_authentication", app.api_auth_key)
        resources[key] = entry
    return {
        "api_user_authentication": app.api_auth_key,
        "main_storage": app.storage_key,
        "main_resource": app.main_resource_key,
        "available_user_authentication": auths,
        "available_storage": storages,
        "available_resources": resources,
        "available_job_types": app.job_types,
        "parameters": app.parameters,
    }
