"""What a configuration must be, checked in the original config.json form: every problem found at
once, each naming its key path, and warnings for what the server can start with. A uws_config.py
is checked in that form too (UWSApp.as_original_config), so one set of rules serves both formats.
Also the format's vocabulary: its top-level keys and the types it names."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

from .hostnames import session_domain_name

TOP_LEVEL_KEYS = (
    "api_user_authentication",
    "main_storage",
    "main_resource",
    "available_user_authentication",
    "available_storage",
    "available_resources",
    "available_job_types",
    "parameters",
)

AUTH_TYPES = {
    "LocalUserAuthentication": "local",
    "GlobusUserAuthentication": "globus",
    "PSCAPIUserAuthentication": "psc",
}
STORAGE_TYPES = {
    "LocalFileSystemStorage": "local",
    "HubmapLocalFileSystemStorage": "hubmap",
}
RESOURCE_TYPES = ("LocalResource", "SlurmAPIResource")
JOB_TYPES = ("LocalTestJob", "JupyterLabJob", "AppyterJob", "YACJob", "CommandJob")


def _is_numeric(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return True
    return isinstance(value, str) and value.strip().isascii() and value.strip().isdigit()


class _Findings:
    """What validation found: problems refuse the file, warnings are reported and the server starts."""

    def __init__(self) -> None:
        self.problems: list[str] = []
        self.warnings: list[str] = []

    def entries(self, section: str, entries: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
        """(path, entry) of each entry of a section that is an object; the others are problems."""
        for key, entry in entries.items():
            path = f"{section}.{key}"
            if isinstance(entry, dict):
                yield path, entry
            else:
                self.problems.append(f"{path} must be an object")

    def check_ref(self, path: str, value: Any, target: dict[str, Any], target_name: str) -> None:
        if not isinstance(value, str) or value not in target:
            self.problems.append(f"{path} {value!r} not found in {target_name}")


def validate(raw: Any) -> tuple[list[str], list[str]]:
    """Return (problems, warnings) for a decoded original-format config."""
    found = _Findings()
    if not isinstance(raw, dict):
        return ["the top level must be a JSON object"], found.warnings
    for key in TOP_LEVEL_KEYS:
        if key not in raw:
            found.problems.append(f"missing top-level key '{key}'")

    def section(name: str) -> dict[str, Any]:
        value = raw.get(name, {})
        if not isinstance(value, dict):
            found.problems.append(f"{name} must be an object")
            return {}
        return value

    auths = section("available_user_authentication")
    storages = section("available_storage")
    resources = section("available_resources")
    job_types = section("available_job_types")

    if "api_user_authentication" in raw:
        found.check_ref(
            "api_user_authentication", raw["api_user_authentication"], auths, "available_user_authentication"
        )
    if "main_storage" in raw:
        found.check_ref("main_storage", raw["main_storage"], storages, "available_storage")
    if "main_resource" in raw:
        found.check_ref("main_resource", raw["main_resource"], resources, "available_resources")

    _check_authentication(auths, found)
    _check_storage(storages, auths, found)
    _check_resources(resources, storages, auths, found)
    _check_job_types(job_types, raw.get("main_resource"), found)
    _check_parameters(raw.get("parameters", []), found)
    return found.problems, found.warnings


def _check_authentication(auths: dict[str, Any], found: _Findings) -> None:
    for path, entry in found.entries("available_user_authentication", auths):
        kind = entry.get("user_authentication_type")
        if not isinstance(kind, str) or kind not in AUTH_TYPES:
            found.problems.append(f"{path}.user_authentication_type: unknown type {kind!r}")
        details = entry.get("connection_details", {})
        if not isinstance(details, dict):
            found.problems.append(f"{path}.connection_details must be an object")
            continue
        if kind == "GlobusUserAuthentication":
            mode = details.get("authentication_type", "token")
            if mode not in ("token", "oauth"):
                found.problems.append(
                    f"{path}.connection_details.authentication_type must be 'token' or 'oauth'"
                )
            groups = details.get("allowed_globus_groups", [])
            if not isinstance(groups, list) or not all(isinstance(g, str) for g in groups):
                found.problems.append(
                    f"{path}.connection_details.allowed_globus_groups must be a list of group ids"
                )
        if kind == "PSCAPIUserAuthentication":
            for field in ("root_url", "jwt_token", "grant_number", "resource_name"):
                if not details.get(field):
                    found.problems.append(f"{path}.connection_details.{field} is required")


def _check_storage(storages: dict[str, Any], auths: dict[str, Any], found: _Findings) -> None:
    for path, entry in found.entries("available_storage", storages):
        kind = entry.get("storage_type")
        if not isinstance(kind, str) or kind not in STORAGE_TYPES:
            found.problems.append(f"{path}.storage_type: unknown type {kind!r}")
        if not isinstance(entry.get("root_dir"), str) or not entry.get("root_dir"):
            found.problems.append(f"{path}.root_dir is required")
        found.check_ref(
            f"{path}.user_authentication",
            entry.get("user_authentication"),
            auths,
            "available_user_authentication",
        )
        details = entry.get("connection_details", {})
        if kind == "HubmapLocalFileSystemStorage" and not (
            isinstance(details, dict) and details.get("root_url")
        ):
            found.problems.append(f"{path}.connection_details.root_url is required")
        roots = entry.get("allowed_symlink_roots", [])
        if not isinstance(roots, list) or not all(isinstance(r, str) and os.path.isabs(r) for r in roots):
            found.problems.append(f"{path}.allowed_symlink_roots must be a list of absolute directories")
        auth_key = entry.get("user_authentication")
        auth_type = auths.get(auth_key, {}) if isinstance(auth_key, str) else {}
        if (
            isinstance(auth_type, dict)
            and auth_type.get("user_authentication_type") == "GlobusUserAuthentication"
        ):
            found.warnings.append(
                f"{path}.user_authentication names a Globus method, which cannot provide storage "
                "accounts: workspace operations will answer 'User could not be found/created on "
                "main storage system.'"
            )


def _check_resources(
    resources: dict[str, Any], storages: dict[str, Any], auths: dict[str, Any], found: _Findings
) -> None:
    for path, entry in found.entries("available_resources", resources):
        kind = entry.get("resource_type")
        if kind not in RESOURCE_TYPES:
            found.problems.append(f"{path}.resource_type: unknown type {kind!r}")
        found.check_ref(f"{path}.storage", entry.get("storage"), storages, "available_storage")
        found.check_ref(
            f"{path}.user_authentication",
            entry.get("user_authentication"),
            auths,
            "available_user_authentication",
        )
        details = entry.get("connection_details", {})
        if not isinstance(details, dict):
            found.problems.append(f"{path}.connection_details must be an object")
            details = {}
        mapping = entry.get("parameter_mapping", {})
        if not isinstance(mapping, dict) or not all(isinstance(v, str) for v in mapping.values()):
            found.problems.append(f"{path}.parameter_mapping must map option names to strings")
        if not isinstance(entry.get("passthrough_domain", ""), str):
            found.problems.append(f"{path}.passthrough_domain must be a string")
        elif entry.get("passthrough_domain") and session_domain(entry["passthrough_domain"]) is None:
            found.warnings.append(
                f"{path}.passthrough_domain {entry['passthrough_domain']!r} is not a domain name: "
                "sessions get host names under UWSApp.session_host instead"
            )
        if kind == "SlurmAPIResource":
            _check_slurm_resource(path, entry, details, found)


def _check_slurm_resource(
    path: str, entry: dict[str, Any], details: dict[str, Any], found: _Findings
) -> None:
    for field in ("root_url", "api_token"):
        if not details.get(field):
            found.problems.append(f"{path}.connection_details.{field} is required")
    lifespan = details.get("token_lifespan", "3600")
    if not _is_numeric(lifespan):
        found.problems.append(f"{path}.connection_details.token_lifespan must be a number of seconds")
    catch = entry.get("time_pending_catch")
    if catch is not None and not _is_numeric(catch):
        found.problems.append(f"{path}.time_pending_catch must be a number of seconds")
    found.warnings.append(
        f"{path}: UWS submits to slurmrestd directly, not through PSC's job-control "
        "service, so connection_details.root_url and api_token are not used; set "
        "SlurmRestSpawner.url (default http://127.0.0.1:6820) instead"
    )


def _check_job_types(job_types: dict[str, Any], main_resource: Any, found: _Findings) -> None:
    for path, entry in found.entries("available_job_types", job_types):
        if entry.get("job_type") not in JOB_TYPES:
            found.problems.append(f"{path}.job_type: unknown type {entry.get('job_type')!r}")
        if not isinstance(entry.get("name"), str):
            found.problems.append(f"{path}.name is required")
        env = entry.get("environment_details")
        if not isinstance(env, dict):
            found.problems.append(f"{path}.environment_details must be an object keyed by resource")
            continue
        for rkey, settings in env.items():
            if not isinstance(settings, dict):
                found.problems.append(f"{path}.environment_details.{rkey} must be an object")
                continue
            limit = settings.get("time_limit")
            if limit is not None and not _is_numeric(limit):
                found.problems.append(f"{path}.environment_details.{rkey}.time_limit must be minutes")
            if "{token}" in json.dumps(settings.get("command")):
                found.warnings.append(
                    f"{path}.environment_details.{rkey}.command puts {{token}} on the command line, "
                    "where every account on the host can read it; the app gets it as "
                    "$UWS_SESSION_TOKEN instead"
                )
        if isinstance(main_resource, str) and main_resource not in env:
            found.warnings.append(
                f"{path}.environment_details has no entry for main_resource '{main_resource}': "
                "starting this job type will be refused"
            )


def _check_parameters(params: Any, found: _Findings) -> None:
    if not isinstance(params, list):
        found.problems.append("parameters must be a list")
        return
    for i, param in enumerate(params):
        path = f"parameters[{i}]"
        if not isinstance(param, dict):
            found.problems.append(f"{path} must be an object")
            continue
        if not isinstance(param.get("variable_name"), str) or not param.get("variable_name"):
            found.problems.append(f"{path}.variable_name is required")
        if not isinstance(param.get("validation", {}), dict):
            found.problems.append(f"{path}.validation must be an object")


def session_domain(value: str) -> str | None:
    """The host name part of a passthrough_domain (which may carry a scheme or port), or None
    for an address or anything else that cannot have session host names under it."""
    try:
        host = urlsplit(value if "://" in value else "//" + value).hostname or ""
    except ValueError:
        return None
    return session_domain_name(host)
