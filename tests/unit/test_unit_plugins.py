"""uws/plugins.py and the spawner factory in process: class names resolve through the installed
entry points (faked here with monkeypatch, because the shared test environment's install of uws
may predate the groups), through the built-in table when the metadata has no such group, and
through import paths."""

from __future__ import annotations

import ast
import os
from collections.abc import Iterator
from importlib.metadata import EntryPoint

import pytest
from traitlets.config import Config, Configurable

from uws import plugins
from uws.auth.accounts import Account
from uws.auth.base import DevAuthenticator
from uws.spawners import SpawnerFactory
from uws.spawners.local import LocalProcessSpawner, SudoSpawner
from uws.storage.local import LocalFileSystemStorage

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ME = Account("me", os.getuid(), os.getgid(), frozenset())


@pytest.fixture(scope="session")
def remove_test_os_accounts() -> Iterator[None]:
    """Overrides tests/conftest.py's: in-process tests create no OS accounts, and must not
    remove those of an end-to-end run going on at the same time."""
    yield


def fake_entry_points(groups: dict[str, dict[str, str]]):
    def entry_points(group: str) -> list[EntryPoint]:
        return [EntryPoint(name, value, group) for name, value in groups.get(group, {}).items()]

    return entry_points


def test_installed_entry_points_name_the_classes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        plugins,
        "entry_points",
        fake_entry_points({plugins.SPAWNERS: {"mine": "uws.spawners.local:SudoSpawner"}}),
    )
    assert plugins.load_class(plugins.SPAWNERS, "mine") is SudoSpawner
    # The metadata has the group: its names are the whole list, the built-in table is not used.
    with pytest.raises(plugins.PluginError, match="use one of mine"):
        plugins.load_class(plugins.SPAWNERS, "local")
    assert plugins.all_classes(plugins.SPAWNERS) == [SudoSpawner]


def test_built_in_names_when_the_metadata_lacks_the_group(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(plugins, "entry_points", fake_entry_points({}))
    assert plugins.load_class(plugins.SPAWNERS, "local") is LocalProcessSpawner
    assert plugins.load_class(plugins.SPAWNERS, "SudoSpawner") is SudoSpawner
    assert plugins.load_class(plugins.AUTHENTICATORS, "dev") is DevAuthenticator
    assert plugins.load_class(plugins.STORAGE, "local") is LocalFileSystemStorage


def test_import_paths_still_work() -> None:
    assert plugins.load_class(plugins.SPAWNERS, "uws.spawners.local.SudoSpawner") is SudoSpawner
    assert plugins.load_class(plugins.AUTHENTICATORS, "uws.auth.base:DevAuthenticator") is DevAuthenticator


def test_unknown_names_are_a_clear_error() -> None:
    with pytest.raises(
        plugins.PluginError, match="unknown name 'nope' in uws.storage: use one of hubmap, local"
    ):
        plugins.load_class(plugins.STORAGE, "nope")
    with pytest.raises(plugins.PluginError, match="cannot import 'uws.nowhere.Nothing'"):
        plugins.load_class(plugins.STORAGE, "uws.nowhere.Nothing")
    with pytest.raises(plugins.PluginError, match="is not a class"):
        plugins.load_class(plugins.STORAGE, "uws.plugins.BUILTIN")


def test_setup_py_declares_the_built_in_names() -> None:
    """The fallback table and setup.py's entry points are the same names for the same classes."""
    with open(os.path.join(ROOT, "setup.py"), encoding="utf-8") as f:
        tree = ast.parse(f.read())
    setup_call = next(
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "setup"
    )
    declared = ast.literal_eval(next(k.value for k in setup_call.keywords if k.arg == "entry_points"))
    for group, table in plugins.BUILTIN.items():
        lines = [line.split("=", 1) for line in declared[group]]
        assert {name.strip(): value.strip() for name, value in lines} == table, group


def test_spawner_factory(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(plugins, "entry_points", fake_entry_points({}))
    config = Config()
    config.Spawner.grace_seconds = 7.0
    config.SudoSpawner.grace_seconds = 9.0
    parent = Configurable(config=config)
    factory = SpawnerFactory(parent, "local", "ipc:///nowhere")
    spawner = factory.make(12, ME, "/tmp/ws")
    assert type(spawner) is LocalProcessSpawner
    assert (spawner.job_id, spawner.job_dir, spawner.channel_url) == (12, "/tmp/ws/.12", "ipc:///nowhere")
    assert factory.grace_seconds(spawner) == 7.0
    # A job keeps the class it started with (recorded in its state), whatever is configured now.
    again = factory.make(12, ME, "/tmp/ws", "SudoSpawner")
    assert type(again) is SudoSpawner and factory.grace_seconds(again) == 9.0
    # With no class configured: the server's own account runs sessions itself, others need sudo.
    assert type(SpawnerFactory(parent, "", "").make(1, ME, "/w")) is LocalProcessSpawner
    other = Account("someone", os.getuid() + 1, os.getgid(), frozenset())
    assert type(SpawnerFactory(parent, "", "").make(1, other, "/w")) is SudoSpawner
