"""Pluggable classes (spawners, authenticators, storage) by name, through entry points.

The names are entry points in setup.py (groups uws.spawners, uws.authenticators, uws.storage),
as JupyterHub names its spawners, so another package can add one without changing UWS. An
import path (package.module.Class) works as well.
"""

from __future__ import annotations

import importlib
import logging
from importlib.metadata import entry_points

log = logging.getLogger("uws.plugins")

SPAWNERS = "uws.spawners"
AUTHENTICATORS = "uws.authenticators"
STORAGE = "uws.storage"

# The same names as setup.py's entry points, for a checkout run without installing it (or an
# install older than the groups): used only when the installed metadata has no such group.
BUILTIN: dict[str, dict[str, str]] = {
    SPAWNERS: {
        "local": "uws.spawners.local:LocalProcessSpawner",
        "LocalProcessSpawner": "uws.spawners.local:LocalProcessSpawner",
        "sudo": "uws.spawners.local:SudoSpawner",
        "SudoSpawner": "uws.spawners.local:SudoSpawner",
        "slurm": "uws.spawners.slurm:SlurmSpawner",
        "SlurmSpawner": "uws.spawners.slurm:SlurmSpawner",
        "slurm_rest": "uws.spawners.slurm_rest:SlurmRestSpawner",
        "SlurmRestSpawner": "uws.spawners.slurm_rest:SlurmRestSpawner",
    },
    AUTHENTICATORS: {
        "local": "uws.auth.base:LocalAuthenticator",
        "dev": "uws.auth.base:DevAuthenticator",
        "psc": "uws.auth.base:PSCAuthenticator",
        "globus": "uws.auth.globus:GlobusAuthenticator",
    },
    STORAGE: {
        "local": "uws.storage.local:LocalFileSystemStorage",
        "hubmap": "uws.storage.hubmap:HubmapLocalFileSystemStorage",
    },
}


class PluginError(ValueError):
    """A configured class name that is neither an entry point nor an importable path."""


def names(group: str) -> dict[str, str]:
    """Entry-point name -> "module:attr" for a group, from the installed metadata when it has
    the group, else from the built-in table."""
    found = {ep.name: ep.value for ep in entry_points(group=group)}
    if found:
        return found
    log.debug("No installed entry points in %s; using the built-in names", group)
    return dict(BUILTIN.get(group, {}))


def _load(target: str) -> type:
    module, _, attr = target.partition(":") if ":" in target else target.rpartition(".")
    obj = importlib.import_module(module)
    for part in attr.split("."):
        obj = getattr(obj, part)
    if not isinstance(obj, type):
        raise PluginError(f"{target} is not a class")
    return obj


def load_class(group: str, name: str) -> type:
    """The class a config names: an entry point of `group`, or an import path."""
    known = names(group)
    if name in known:
        return _load(known[name])
    if "." in name:
        try:
            return _load(name)
        except (ImportError, AttributeError) as e:
            raise PluginError(f"cannot import {name!r}: {e}") from e
    raise PluginError(
        f"unknown name {name!r} in {group}: use one of {', '.join(sorted(known))} or an import path"
    )


def all_classes(group: str) -> list[type]:
    """Every class a group names, once each (for generate-config)."""
    seen: list[type] = []
    for target in names(group).values():
        cls = _load(target)
        if cls not in seen:
            seen.append(cls)
    return seen
