"""uws/config_validation.py and config_json.py in process: an existing deployment's config.json
validated as a whole (every problem listed, each naming its key path) and mapped onto the
traitlets options a uws_config.py would set. The shipped example_config.json and
tests/data/test_config.json are the inputs."""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Callable
from typing import Any

import pytest
from traitlets.config import Config

from uws.app import UWSApp
from uws.config_json import ConfigError, load, to_traitlets
from uws.config_validation import session_domain, validate

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EXAMPLE = os.path.join(ROOT, "example_config.json")
TEST_CONFIG = os.path.join(ROOT, "tests", "data", "test_config.json")
GLOBUS_STORAGE_WARNING = "cannot provide storage accounts"
# Both shipped files give their resource an address as passthrough_domain, which cannot have
# session host names under it (UWSApp.session_host): a warning, and no session_host is set.
ADDRESS = "127.0.0.1:8000"


def address_warning(resource: str, value: str = ADDRESS) -> str:
    return (
        f"available_resources.{resource}.passthrough_domain {value!r} is not a domain name: "
        "sessions get host names under UWSApp.session_host instead"
    )


TEST_WARNINGS = [address_warning("test_resource")]


def read(path: str) -> dict[str, Any]:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


@pytest.fixture
def raw() -> dict[str, Any]:
    """A fresh copy of tests/data/test_config.json (local auth, local storage, local resource)."""
    return read(TEST_CONFIG)


def slurm_resource(raw: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """Make the main resource a SlurmAPIResource, as at PSC."""
    resource = raw["available_resources"]["test_resource"]
    resource.update(
        {
            "resource_type": "SlurmAPIResource",
            "connection_details": {
                "root_url": "https://jobs.example.org/",
                "api_token": "secret",
                "token_lifespan": "7200",
            },
            "cpu_partition": "RM-shared",
            "gpu_partition": "GPU-shared",
            **extra,
        }
    )
    return raw


# ---- the shipped files ---------------------------------------------------------------------------


def test_shipped_test_config_is_valid_and_warns_only_about_its_address() -> None:
    raw = read(TEST_CONFIG)
    assert raw["available_resources"]["test_resource"]["passthrough_domain"] == ADDRESS
    assert validate(raw) == ([], TEST_WARNINGS)


def test_shipped_example_is_valid_and_warns_about_globus_storage_and_its_address() -> None:
    raw = read(EXAMPLE)
    problems, warnings = validate(raw)
    assert problems == []
    assert len(warnings) == 2
    assert warnings[0].startswith("available_storage.main_storage.user_authentication names a Globus method")
    assert GLOBUS_STORAGE_WARNING in warnings[0]
    main = raw["main_resource"]
    assert raw["available_resources"][main]["passthrough_domain"] == ADDRESS
    assert warnings[1] == address_warning(main)


def test_load_test_config(tmp_path: Any) -> None:
    c, warnings = load(TEST_CONFIG)
    raw = read(TEST_CONFIG)
    assert warnings == TEST_WARNINGS
    assert "session_host" not in c.UWSApp  # an address does not become the session domain
    assert c.UWSApp.api_auth_key == "test_auth"
    assert c.UWSApp.storage_key == "test_storage"
    assert c.UWSApp.main_resource_key == "test_resource"
    assert c.UWSApp.authenticator_class == "local"
    assert c.UWSApp.storage_accounts_from == "local"
    assert c.UWSApp.storage_class == "local"
    assert c.UWSApp.resources == raw["available_resources"]
    assert c.UWSApp.job_types == raw["available_job_types"]
    assert c.UWSApp.parameters == raw["parameters"]
    assert c.UWSApp.user_authentication_methods == raw["available_user_authentication"]
    assert c.UWSApp.storage_methods == raw["available_storage"]
    # root_dir "." is relative to the file, not to where the server starts
    assert c.LocalFileSystemStorage.root_dir == os.path.join(ROOT, "tests", "data")
    assert c.LocalAuthenticator.create_system_users is False
    assert "spawner_class" not in c.UWSApp  # a LocalResource keeps the default spawner
    assert "allowed_symlink_roots" not in c.LocalFileSystemStorage


def test_load_example_globus() -> None:
    c, warnings = load(EXAMPLE)
    assert c.UWSApp.authenticator_class == "globus"
    assert c.UWSApp.storage_accounts_from == "globus"
    assert c.GlobusAuthenticator.mode == "token"
    assert c.GlobusAuthenticator.client_id == "" and c.GlobusAuthenticator.client_secret == ""
    assert c.GlobusAuthenticator.allowed_globus_groups == []
    assert c.LocalFileSystemStorage.root_dir == ROOT
    assert len(warnings) == 2 and "session_host" not in c.UWSApp


def test_mapping_of_a_slurm_resource(raw: dict[str, Any]) -> None:
    slurm_resource(raw, time_pending_catch="600")
    problems, warnings = validate(raw)
    assert problems == []
    assert any(w.startswith("available_resources.test_resource: UWS submits to slurmrestd") for w in warnings)
    c = to_traitlets(raw, "/srv/uws")
    assert c.UWSApp.spawner_class == "slurm_rest"
    assert c.SlurmBase.partition == "RM-shared" and c.SlurmBase.gpu_partition == "GPU-shared"
    assert c.SlurmRestSpawner.token_lifespan == 7200
    assert c.SlurmBase.pending_notice_seconds == 600.0
    assert "url" not in c.SlurmRestSpawner  # PSC's root_url is not slurmrestd's


def test_slurm_resource_defaults(raw: dict[str, Any]) -> None:
    slurm_resource(raw)
    resource = raw["available_resources"]["test_resource"]
    del resource["connection_details"]["token_lifespan"], resource["cpu_partition"], resource["gpu_partition"]
    assert validate(raw)[0] == []
    c = to_traitlets(raw, "/srv/uws")
    assert c.SlurmRestSpawner.token_lifespan == 3600
    assert c.SlurmBase.partition == "" and c.SlurmBase.gpu_partition == ""
    assert "pending_notice_seconds" not in c.SlurmBase
    resource["connection_details"]["token_lifespan"] = 900  # a JSON number is as good
    assert validate(raw)[0] == [] and to_traitlets(raw, "/").SlurmRestSpawner.token_lifespan == 900


def test_mapping_of_hubmap_storage(raw: dict[str, Any]) -> None:
    storage = raw["available_storage"]["test_storage"]
    storage.update(
        {
            "storage_type": "HubmapLocalFileSystemStorage",
            "root_dir": "/data/workspaces",
            "connection_details": {"root_url": "https://entity.api.hubmapconsortium.org/"},
            "allowed_symlink_roots": ["/hive/hubmap/data"],
        }
    )
    assert validate(raw) == ([], TEST_WARNINGS)
    c = to_traitlets(raw, "/elsewhere")
    assert c.UWSApp.storage_class == "hubmap"
    assert c.HubmapLocalFileSystemStorage.root_dir == "/data/workspaces"  # absolute: kept
    assert c.HubmapLocalFileSystemStorage.entity_api_url == "https://entity.api.hubmapconsortium.org/"
    assert c.HubmapLocalFileSystemStorage.allowed_symlink_roots == ["/hive/hubmap/data"]
    assert "root_dir" not in c.LocalFileSystemStorage


def test_relative_root_dir_is_relative_to_the_file(raw: dict[str, Any]) -> None:
    raw["available_storage"]["test_storage"]["root_dir"] = "../workspaces"
    assert to_traitlets(raw, "/etc/uws").LocalFileSystemStorage.root_dir == "/etc/workspaces"


@pytest.mark.parametrize(
    "details, create",
    [
        ({"create_external_users": True, "operating_system": "linux"}, True),
        ({"create_external_users": True, "operating_system": "darwin"}, False),
        ({"create_external_users": False, "operating_system": "linux"}, False),
        ({}, False),
    ],
)
def test_local_accounts_are_created_only_on_linux(raw: dict[str, Any], details: dict, create: bool) -> None:
    raw["available_user_authentication"]["test_auth"]["connection_details"] = details
    assert to_traitlets(raw, "/").LocalAuthenticator.create_system_users is create


def test_globus_api_auth_with_local_storage_accounts(raw: dict[str, Any]) -> None:
    """API users come from Globus; storage accounts from the local method (no warning then)."""
    raw["available_user_authentication"]["globus"] = {
        "user_authentication_type": "GlobusUserAuthentication",
        "connection_details": {
            "client_id": "cid",
            "client_secret": "csecret",
            "authentication_type": "oauth",
            "allowed_globus_groups": ["g-1", "g-2"],
            "health_check_url": "https://auth.globus.org/",
        },
    }
    raw["api_user_authentication"] = "globus"
    assert validate(raw) == ([], TEST_WARNINGS)
    c = to_traitlets(raw, "/")
    assert c.UWSApp.authenticator_class == "globus" and c.UWSApp.storage_accounts_from == "local"
    g = c.GlobusAuthenticator
    assert (g.client_id, g.client_secret, g.mode) == ("cid", "csecret", "oauth")
    assert g.allowed_globus_groups == ["g-1", "g-2"] and g.health_check_url == "https://auth.globus.org/"


def test_psc_api_auth(raw: dict[str, Any]) -> None:
    raw["available_user_authentication"]["psc"] = {
        "user_authentication_type": "PSCAPIUserAuthentication",
        "connection_details": {
            "root_url": "https://api.psc.edu/",
            "jwt_token": "t",
            "grant_number": "abc123",
            "resource_name": "bridges2",
            "health_check_url": "https://api.psc.edu/health",
        },
    }
    raw["api_user_authentication"] = "psc"
    assert validate(raw) == ([], TEST_WARNINGS)
    c = to_traitlets(raw, "/")
    assert c.UWSApp.authenticator_class == "psc"
    assert c.PSCAuthenticator.health_check_url == "https://api.psc.edu/health"


def test_result_is_a_traitlets_config(raw: dict[str, Any]) -> None:
    c = to_traitlets(raw, "/")
    assert isinstance(c, Config)
    merged = Config()
    merged.merge(c)  # usable as any other config
    assert merged.UWSApp.storage_class == "local"


# ---- passthrough_domain -> UWSApp.session_host ------------------------------------------------------


@pytest.mark.parametrize(
    "value, domain",
    [
        ("sessions.example.org", "sessions.example.org"),
        ("sessions.example.org:8443", "sessions.example.org"),  # the port is not the domain's
        ("https://sessions.example.org:8443/", "sessions.example.org"),
        ("http://sessions.example.org/passthrough", "sessions.example.org"),
        ("Sessions.Example.ORG", "sessions.example.org"),  # host names are case-blind
        ("sessions.example.org.", "sessions.example.org"),  # the root's dot
        ("localhost:8000", "localhost"),
        ("xn--bcher-kva.example", "xn--bcher-kva.example"),
    ],
)
def test_a_domain_becomes_the_session_host(raw: dict[str, Any], value: str, domain: str) -> None:
    raw["available_resources"]["test_resource"]["passthrough_domain"] = value
    assert session_domain(value) == domain
    assert validate(raw) == ([], [])
    c = to_traitlets(raw, "/")
    assert c.UWSApp.session_host == domain
    assert UWSApp(config=c).session_host == domain  # the server's own check takes it


@pytest.mark.parametrize(
    "value",
    [
        ADDRESS,
        "127.0.0.1",
        "10.1.2.3:80",
        "http://192.168.0.1:8000/",
        "[::1]:8000",
        "*.example.org",
        "bad name",
    ],
)
def test_an_address_or_other_non_domain_is_a_warning_and_not_mapped(raw: dict[str, Any], value: str) -> None:
    raw["available_resources"]["test_resource"]["passthrough_domain"] = value
    assert session_domain(value) is None
    assert validate(raw) == ([], [address_warning("test_resource", value)])
    assert "session_host" not in to_traitlets(raw, "/").UWSApp


@pytest.mark.parametrize(
    "edit", [lambda r: r.update(passthrough_domain=""), lambda r: r.pop("passthrough_domain")]
)
def test_no_passthrough_domain_keeps_the_default_session_host(raw: dict[str, Any], edit: Any) -> None:
    edit(raw["available_resources"]["test_resource"])
    assert validate(raw) == ([], [])
    assert "session_host" not in to_traitlets(raw, "/").UWSApp


def test_only_the_main_resource_gives_the_session_host(raw: dict[str, Any]) -> None:
    """Every resource's passthrough_domain is checked; only the main resource's is mapped."""
    resources = raw["available_resources"]
    resources["test_resource"]["passthrough_domain"] = "sessions.example.org"
    resources["other"] = {
        **copy.deepcopy(resources["test_resource"]),
        "passthrough_domain": "other.example.org",
    }
    assert validate(raw) == ([], [])
    assert to_traitlets(raw, "/").UWSApp.session_host == "sessions.example.org"
    resources["other"]["passthrough_domain"] = "10.0.0.1"
    assert validate(raw) == ([], [address_warning("other", "10.0.0.1")])
    del resources["test_resource"]["passthrough_domain"]
    raw["main_resource"] = "other"
    assert "session_host" not in to_traitlets(raw, "/").UWSApp


@pytest.mark.parametrize(
    "value", ["-sessions.example.org", "sessions-.example.org", "a" * 64 + ".example.org"]
)
def test_what_session_domain_accepts_the_server_accepts(raw: dict[str, Any], value: str) -> None:
    raw["available_resources"]["test_resource"]["passthrough_domain"] = value
    problems, warnings = validate(raw)
    if not problems and not warnings:
        assert UWSApp(config=to_traitlets(raw, "/")).session_host


@pytest.mark.parametrize("value", ["127.1", "2130706433:8000", "0x7f.1"])
def test_shorthand_ipv4_is_an_address(raw: dict[str, Any], value: str) -> None:
    raw["available_resources"]["test_resource"]["passthrough_domain"] = value
    assert validate(raw)[1] == [address_warning("test_resource", value)]


# ---- bad input: every problem, with its key path --------------------------------------------------

Mutation = Callable[[dict[str, Any]], Any]


def setting(*path_and_value: Any) -> Mutation:
    *path, value = path_and_value

    def mutate(raw: dict[str, Any]) -> None:
        target = raw
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value

    return mutate


def removing(*path: Any) -> Mutation:
    def mutate(raw: dict[str, Any]) -> None:
        target = raw
        for key in path[:-1]:
            target = target[key]
        del target[path[-1]]

    return mutate


AUTH = ("available_user_authentication", "test_auth")
STORAGE = ("available_storage", "test_storage")
RESOURCE = ("available_resources", "test_resource")
JOB = ("available_job_types", "test_job")


@pytest.mark.parametrize(
    "mutate, expected",
    [
        (removing("parameters"), ["missing top-level key 'parameters'"]),
        (setting("main_storage", "nope"), ["main_storage 'nope' not found in available_storage"]),
        (setting("main_resource", 3), ["main_resource 3 not found in available_resources"]),
        (
            setting(*AUTH, "user_authentication_type", "Kerberos"),
            ["available_user_authentication.test_auth.user_authentication_type: unknown type 'Kerberos'"],
        ),
        (
            setting(*AUTH, "connection_details", "none"),
            ["available_user_authentication.test_auth.connection_details must be an object"],
        ),
        (setting(*AUTH, 5), ["available_user_authentication.test_auth must be an object"]),
        (
            setting(*STORAGE, "storage_type", "S3"),
            ["available_storage.test_storage.storage_type: unknown type 'S3'"],
        ),
        (setting(*STORAGE, "root_dir", ""), ["available_storage.test_storage.root_dir is required"]),
        (removing(*STORAGE, "root_dir"), ["available_storage.test_storage.root_dir is required"]),
        (
            setting(*STORAGE, "user_authentication", "other"),
            [
                "available_storage.test_storage.user_authentication 'other' not found in "
                "available_user_authentication"
            ],
        ),
        (
            setting(*STORAGE, "storage_type", "HubmapLocalFileSystemStorage"),
            ["available_storage.test_storage.connection_details.root_url is required"],
        ),
        (
            setting(*STORAGE, "allowed_symlink_roots", ["/data", "relative/dir"]),
            ["available_storage.test_storage.allowed_symlink_roots must be a list of absolute directories"],
        ),
        (
            setting(*RESOURCE, "resource_type", "KubernetesResource"),
            ["available_resources.test_resource.resource_type: unknown type 'KubernetesResource'"],
        ),
        (
            setting(*RESOURCE, "storage", "nope"),
            ["available_resources.test_resource.storage 'nope' not found in available_storage"],
        ),
        (
            setting(*RESOURCE, "connection_details", []),
            ["available_resources.test_resource.connection_details must be an object"],
        ),
        (
            setting(*RESOURCE, "parameter_mapping", {"num_cpus": 4}),
            ["available_resources.test_resource.parameter_mapping must map option names to strings"],
        ),
        (
            setting(*RESOURCE, "passthrough_domain", 8000),
            ["available_resources.test_resource.passthrough_domain must be a string"],
        ),
        (
            setting(*JOB, "job_type", "Nope"),
            ["available_job_types.test_job.job_type: unknown type 'Nope'"],
        ),
        (removing(*JOB, "name"), ["available_job_types.test_job.name is required"]),
        (
            setting(*JOB, "environment_details", []),
            ["available_job_types.test_job.environment_details must be an object keyed by resource"],
        ),
        (
            setting(*JOB, "environment_details", "test_resource", []),
            ["available_job_types.test_job.environment_details.test_resource must be an object"],
        ),
        (
            setting(*JOB, "environment_details", "test_resource", "time_limit", "1h"),
            ["available_job_types.test_job.environment_details.test_resource.time_limit must be minutes"],
        ),
        (setting("parameters", {"num_cpus": 1}), ["parameters must be a list"]),
        (setting("parameters", 0, "x"), ["parameters[0] must be an object"]),
        (setting("parameters", 1, "variable_name", ""), ["parameters[1].variable_name is required"]),
        (setting("parameters", 2, "validation", "int"), ["parameters[2].validation must be an object"]),
        (setting("available_job_types", []), ["available_job_types must be an object"]),
    ],
)
def test_one_problem_each(raw: dict[str, Any], mutate: Mutation, expected: list[str]) -> None:
    mutate(raw)
    assert validate(raw)[0] == expected


def test_reference_to_a_missing_section(raw: dict[str, Any]) -> None:
    del raw["available_storage"]
    problems, _ = validate(raw)
    assert problems == [
        "missing top-level key 'available_storage'",
        "main_storage 'test_storage' not found in available_storage",
        "available_resources.test_resource.storage 'test_storage' not found in available_storage",
    ]


def test_globus_details_checked(raw: dict[str, Any]) -> None:
    raw["available_user_authentication"]["test_auth"] = {
        "user_authentication_type": "GlobusUserAuthentication",
        "connection_details": {"authentication_type": "implicit", "allowed_globus_groups": "g-1"},
    }
    problems, warnings = validate(raw)
    path = "available_user_authentication.test_auth.connection_details"
    assert problems == [
        f"{path}.authentication_type must be 'token' or 'oauth'",
        f"{path}.allowed_globus_groups must be a list of group ids",
    ]
    assert any(GLOBUS_STORAGE_WARNING in w for w in warnings)


def test_psc_details_required(raw: dict[str, Any]) -> None:
    raw["available_user_authentication"]["test_auth"] = {
        "user_authentication_type": "PSCAPIUserAuthentication",
        "connection_details": {"root_url": "https://api.psc.edu/", "grant_number": ""},
    }
    path = "available_user_authentication.test_auth.connection_details"
    assert validate(raw)[0] == [
        f"{path}.jwt_token is required",
        f"{path}.grant_number is required",
        f"{path}.resource_name is required",
    ]


def test_slurm_resource_details_checked(raw: dict[str, Any]) -> None:
    slurm_resource(raw, time_pending_catch="soon")
    details = raw["available_resources"]["test_resource"]["connection_details"]
    del details["api_token"]
    details["token_lifespan"] = "1h"
    path = "available_resources.test_resource"
    assert validate(raw)[0] == [
        f"{path}.connection_details.api_token is required",
        f"{path}.connection_details.token_lifespan must be a number of seconds",
        f"{path}.time_pending_catch must be a number of seconds",
    ]
    details["token_lifespan"] = True  # a boolean is no number of seconds
    assert f"{path}.connection_details.token_lifespan must be a number of seconds" in validate(raw)[0]


def test_job_type_without_the_main_resource_is_a_warning(raw: dict[str, Any]) -> None:
    raw["available_job_types"]["test_job"]["environment_details"] = {"other_resource": {}}
    problems, warnings = validate(raw)
    assert problems == []
    assert warnings == [
        *TEST_WARNINGS,
        "available_job_types.test_job.environment_details has no entry for main_resource "
        "'test_resource': starting this job type will be refused",
    ]


def test_many_problems_listed_at_once(raw: dict[str, Any]) -> None:
    bad = copy.deepcopy(raw)
    bad["api_user_authentication"] = "missing_auth"
    bad["available_user_authentication"]["test_auth"]["user_authentication_type"] = "Kerberos"
    bad["available_storage"]["test_storage"]["root_dir"] = 7
    bad["available_job_types"]["test_job"]["job_type"] = "Nope"
    problems, _ = validate(bad)
    assert problems == [
        "api_user_authentication 'missing_auth' not found in available_user_authentication",
        "available_user_authentication.test_auth.user_authentication_type: unknown type 'Kerberos'",
        "available_storage.test_storage.root_dir is required",
        "available_job_types.test_job.job_type: unknown type 'Nope'",
    ]


@pytest.mark.parametrize("top", [[], "config", None, 3])
def test_top_level_must_be_an_object(top: Any) -> None:
    assert validate(top) == (["the top level must be a JSON object"], [])


def test_load_refuses_with_every_problem(tmp_path: Any, raw: dict[str, Any]) -> None:
    raw["main_storage"] = "nope"
    del raw["parameters"]
    path = tmp_path / "config.json"
    path.write_text(json.dumps(raw))
    with pytest.raises(ConfigError) as raised:
        load(str(path))
    assert raised.value.problems == validate(raw)[0]
    assert len(raised.value.problems) == 2
    assert str(raised.value) == "Invalid configuration:\n" + "\n".join(
        f"  - {p}" for p in raised.value.problems
    )
    assert isinstance(raised.value, ValueError)


def test_load_unreadable_or_not_json(tmp_path: Any) -> None:
    broken = tmp_path / "broken.json"
    broken.write_text('{"api_user_authentication": ')
    with pytest.raises(ConfigError) as raised:
        load(str(broken))
    assert len(raised.value.problems) == 1
    assert raised.value.problems[0].startswith(f"{broken} is not valid JSON: ")
    missing = tmp_path / "missing.json"
    with pytest.raises(ConfigError) as raised:
        load(str(missing))
    assert raised.value.problems == [f"cannot read {missing}: No such file or directory"]


# ---- crashes instead of listed problems -------------------------------------------------------------


@pytest.mark.parametrize(
    "mutate",
    [
        setting(*AUTH, "user_authentication_type", ["LocalUserAuthentication"]),
        setting(*STORAGE, "storage_type", {"type": "LocalFileSystemStorage"}),
        setting(*STORAGE, "user_authentication", ["test_auth"]),
    ],
    ids=["auth-type-list", "storage-type-object", "storage-auth-list"],
)
def test_unhashable_names_are_problems_not_crashes(raw: dict[str, Any], mutate: Mutation) -> None:
    mutate(raw)
    problems, _ = validate(raw)
    assert problems


def test_what_validate_accepts_maps(raw: dict[str, Any]) -> None:
    slurm_resource(raw)
    raw["available_resources"]["test_resource"]["connection_details"]["token_lifespan"] = "3600²"
    problems, _ = validate(raw)
    if not problems:
        to_traitlets(raw, "/")
