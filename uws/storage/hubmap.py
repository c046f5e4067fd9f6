"""HubmapLocalFileSystemStorage: local storage whose dataset links come from HuBMAP's entity API."""

from __future__ import annotations

from typing import Any

from traitlets import Float, Unicode

from ..errors import APIError
from .local import LocalFileSystemStorage


class HubmapLocalFileSystemStorage(LocalFileSystemStorage):
    """Symlinks with a `dataset_uuid` get their source only from the entity service."""

    entity_api_url = Unicode(
        "",
        config=True,
        help="HuBMAP entity API root; POST <url>/datasets/file-system-abs-path resolves datasets.",
    )
    connect_timeout = Float(5.0, config=True, help="Seconds to connect to the entity API.")
    read_timeout = Float(30.0, config=True, help="Seconds to wait for the entity API's answer.")

    def resolve_symlink_sources(self, symlinks: list[dict[str, Any]], details: dict[str, Any]) -> None:
        wanted = [s for s in symlinks if "dataset_uuid" in s]
        if not wanted:
            return
        token = details.get("globus_groups_token")
        if not token:
            raise APIError(400, "No globus_groups_token passed when trying to use dataset_uuid.")
        import requests

        try:
            response = requests.post(
                self.entity_api_url.rstrip("/") + "/datasets/file-system-abs-path",
                json=[s["dataset_uuid"] for s in wanted],
                headers={"Authorization": f"Bearer {token}"},
                timeout=(self.connect_timeout, self.read_timeout),
            )
            items = response.json()
        except Exception as e:
            raise APIError(500, f"Server side error: {e}") from None
        if not isinstance(items, list):
            raise APIError(500, f"Server side error: {items}")
        paths = {}
        errors = []
        for item in items:
            if isinstance(item, dict) and "path" in item:
                paths[item.get("uuid")] = item["path"]
            elif isinstance(item, dict):
                errors.append(item.get("error", str(item)))
        if errors:
            raise APIError(400, f"Errors encountered when attempting to gather UUID information: {errors!r}")
        for s in wanted:
            s["_resolved_source"] = paths.get(s["dataset_uuid"])
