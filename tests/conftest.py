"""Fixtures: every test talks HTTP to a real `uws` server process (tests/helpers/harness.py).

The helpers the tests share live in tests/helpers/; this file holds only fixtures.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

# The helpers' failed asserts show their operands, as the tests' own do: pytest rewrites only the
# modules it is told about, and must be told before they are imported.
pytest.register_assert_rewrite("helpers")

from helpers.api import ACCOUNT_PREFIX, create, login, start, wait_ready, wait_status  # noqa: E402
from helpers.configs import LOCAL_CONFIG, PROXY_CONFIG, SESSION_GROUP  # noqa: E402
from helpers.harness import BACKENDS, IS_ROOT, Client, Server, running_server  # noqa: E402
from helpers.os_accounts import remove_accounts  # noqa: E402


@pytest.fixture(scope="session", params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(scope="session")
def server(backend: str) -> Iterator[Server]:
    srv = Server(backend, LOCAL_CONFIG).start()
    yield srv
    srv.close()


@pytest.fixture(scope="session")
def client_token(server: Server) -> str:
    return server.new_client_token()


@pytest.fixture
def alice(server: Server, client_token: str) -> Client:
    return login(server, client_token, first_name="Alice", last_name="Liddell")


@pytest.fixture
def bob(server: Server, client_token: str) -> Client:
    return login(server, client_token, first_name="Bob", last_name="Builder")


# The passthrough's server, its user and one running echo session, shared by test_passthrough.py
# and test_front_door.py; module-scoped, so each module gets its own. Modules with a `pserver`
# or `owner` of their own use theirs.
@pytest.fixture(scope="module")
def pserver(backend: str) -> Iterator[Server]:
    yield from running_server(backend, PROXY_CONFIG)


@pytest.fixture(scope="module")
def owner(pserver: Server) -> Client:
    return login(pserver, pserver.client_token)


@pytest.fixture(scope="module")
def session(pserver: Server, owner: Client) -> Iterator[dict]:
    """One running echo session shared by the module's tests."""
    w = create(owner)
    job = start(owner, w["id"], job_type="echo")
    ready = wait_ready(owner, job["id"], 30)
    details = ready["job_details"]["current_job_details"]["connection_details"]
    yield {"id": job["id"], "link": details["url_domain"] + details["url_path"], **details}
    owner.put(f"/jobs/{job['id']}/stop")
    wait_status(owner, job["id"], "complete")


@pytest.fixture(scope="session", autouse=True)
def remove_test_os_accounts() -> Iterator[None]:
    """OS accounts this run made (names start with ACCOUNT_PREFIX) are removed at the end."""
    yield
    if IS_ROOT:
        remove_accounts(ACCOUNT_PREFIX, [SESSION_GROUP])


# Modules whose tests share the one Slurm cluster: they count on its nodes being theirs alone.
SLURM_MODULE_PREFIX = "test_slurm"


def is_slurm_module(module: str) -> bool:
    return module.rsplit("/", 1)[-1].startswith(SLURM_MODULE_PREFIX)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The Slurm modules go first: on several workers they are the longest group (see
    pytest_xdist_make_scheduler), so started last they would be the run's tail."""
    items.sort(key=lambda item: not is_slurm_module(item.nodeid.split("::")[0]))  # stable


# optionalhook: a plain pytest run (without pytest-xdist, or -p no:xdist) does not know the hook.
@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """scripts/test runs the suite on several workers (pytest-xdist). Each module runs whole on
    one worker, as its module-scoped servers expect, and the Slurm modules share one worker."""
    from xdist.scheduler import LoadFileScheduling

    class ModuleScheduling(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            module = super()._split_scope(nodeid)
            return "slurm" if is_slurm_module(module) else module

    return ModuleScheduling(config, log)
