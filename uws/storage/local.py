"""LocalFileSystemStorage: workspaces at <root_dir>/<storage username>/<workspace id>/."""

from __future__ import annotations

import errno
import os
import re
import stat
from dataclasses import dataclass, field
from typing import Any

from traitlets import Integer, List, Unicode
from traitlets.config import LoggingConfigurable

from ..auth.accounts import Account
from ..errors import APIError
from . import browse, safepath, trees
from .safepath import UnsafePath

# The file system is out of space (or the account out of its file system quota): not the
# client's fault, and not a bad name either.
NO_SPACE = (errno.ENOSPC, errno.EDQUOT)
SCAN_TRIES = 3


def write_error(e: BaseException, kind: str, name: str) -> APIError:
    if isinstance(e, OSError) and e.errno in NO_SPACE:
        return APIError(507, f"Not enough disk space on the server to write {name}.")
    return APIError(400, f"Invalid {kind} specified {name}")


@dataclass
class SymlinkOp:
    parts: list[str]
    source: str


@dataclass
class FileOp:
    parts: list[str]
    content: bytes


@dataclass
class Plan:
    """Everything a create or update will write, validated before any of it is written."""

    symlinks: list[SymlinkOp] = field(default_factory=list)
    files: list[FileOp] = field(default_factory=list)
    request_files: list[dict[str, Any]] = field(default_factory=list)
    request_symlinks: list[dict[str, Any]] = field(default_factory=list)


class LocalFileSystemStorage(LoggingConfigurable):
    """Workspace directories on a local (or network-mounted) file system."""

    root_dir = Unicode(
        "",
        config=True,
        help="""Directory holding every workspace, as <root_dir>/<username>/<workspace id>/.
        Created at start if missing. A relative path in an original config.json is resolved
        against the directory of that file. Default: ./uws-data/workspaces.""",
    )
    allowed_symlink_roots = List(
        Unicode(),
        config=True,
        help="""Absolute directories that workspace symlinks may point into (for example a
        read-only dataset mount). When empty, a symlink may point at anything outside the
        storage root (or inside the owner's own directory) that the owner's OS account could
        read anyway.""",
    )
    max_upload_bytes = Integer(
        0,
        config=True,
        help="""Largest total size of one upload request, in bytes; 0 means the server's
        request body limit (UWSApp.max_body_size) is the only limit.""",
    )
    max_path_depth = Integer(
        64,
        config=True,
        help="""Most components (directories plus the name) a file or symlink path given to the
        API may have; deeper ones are refused with 400. Workspace file lists also stop listing
        names below this depth (their bytes still count towards disk use).""",
    )
    max_listing_entries = Integer(
        10000,
        config=True,
        help="""Most entries one directory listing (GET /workspaces/<id>/files/?path=) returns; a
        directory with more is listed in part, with `truncated: true`.""",
    )
    max_share_recipients = Integer(
        20,
        config=True,
        help="""Most users one share request may name: each gets a full copy of the workspace,
        charged to their disk quota.""",
    )

    def real_root(self) -> str:
        return os.path.realpath(self.root_dir)

    def ensure_root(self) -> None:
        os.makedirs(self.root_dir, exist_ok=True)

    # ---- directories ---------------------------------------------------------------------
    def user_dir(self, account: Account) -> str:
        return os.path.join(self.real_root(), account.username)

    def workspace_dir(self, account: Account, workspace_id: int) -> str:
        return os.path.join(self.user_dir(account), str(workspace_id))

    def valid_workspace_dir(self, path: str) -> bool:
        """Strictly inside the storage root, and not a symlink itself."""
        if not path:
            return False
        root = self.real_root()
        norm = os.path.normpath(path)
        return norm != root and safepath.inside(norm, root) and not os.path.islink(norm)

    def ensure_user_dir(self, account: Account) -> str:
        udir = self.user_dir(account)
        try:
            os.mkdir(udir, 0o700)
            trees.chown_tree(udir, account)
        except FileExistsError:
            if os.path.islink(udir) or not os.path.isdir(udir):
                raise APIError(
                    500, "Please report this error to your system administrator and try again."
                ) from None
        return udir

    def create_staging_dir(self, account: Account) -> str:
        """A hidden directory in the user's directory where a new workspace is built before it
        gets its id: the database transaction then only has to rename it."""
        import secrets

        path = os.path.join(self.ensure_user_dir(account), f".creating-{secrets.token_hex(8)}")
        os.mkdir(path, 0o755)
        trees.chown_tree(path, account)
        return path

    def adopt_staging_dir(self, staging: str, account: Account, workspace_id: int) -> str:
        # The staging directory is in the user's directory (create_staging_dir): its sibling is
        # workspace_dir's answer without resolving the root again, since this runs inside the
        # create's transaction, while it holds SQLite's write lock.
        path = os.path.join(os.path.dirname(staging), str(workspace_id))
        os.rename(staging, path)
        return path

    def create_workspace_dir(self, account: Account, workspace_id: int) -> str:
        self.ensure_user_dir(account)
        path = self.workspace_dir(account, workspace_id)
        os.mkdir(path, 0o755)
        trees.chown_tree(path, account)
        return path

    def remove_staging_dir(self, path: str) -> None:
        if os.path.basename(path).startswith(".creating-") and safepath.inside(path, self.real_root()):
            try:
                trees.remove_tree(path)
            except OSError:
                pass  # a leftover hidden directory; the create's own error is what matters

    def delete_dir(self, path: str) -> None:
        """Remove a workspace directory, however deep, never following links."""
        if not os.path.lexists(path):
            return
        if not self.valid_workspace_dir(path):
            raise OSError(f"refusing to delete {path!r}: not a workspace directory")
        trees.remove_tree(path)

    # ---- validation (contract 2.8) ---------------------------------------------------------
    def symlink_source_allowed(self, real: str, account: Account) -> bool:
        if self.allowed_symlink_roots:
            return any(safepath.inside(real, os.path.realpath(r)) for r in self.allowed_symlink_roots)
        root = self.real_root()
        if safepath.inside(real, root) and not safepath.inside(real, self.user_dir(account)):
            return False
        return safepath.readable_by(real, account)

    def resolve_symlink_sources(self, symlinks: list[dict[str, Any]], details: dict[str, Any]) -> None:
        """Hook for storages that look sources up elsewhere (HuBMAP datasets)."""

    def plan(self, account: Account, details: dict[str, Any], workspace_dir: str | None) -> Plan:
        plan = Plan()
        symlinks = details.get("symlinks", [])
        if not isinstance(symlinks, list):
            raise APIError(400, "'symlinks' index must contain a list.")
        for entry in symlinks:
            if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
                raise APIError(400, "Each symlink must be an object with a string 'name'.")
        self.resolve_symlink_sources(symlinks, details)
        for entry in symlinks:
            name = entry["name"]
            if ".." in name:
                raise APIError(400, "Symlink name cannot contain double dots.")
            parts = self._destination(name, workspace_dir, "Invalid symlink destination path specified")
            source = entry.get("_resolved_source", entry.get("source_path"))
            if (
                not isinstance(source, str)
                or not source
                or not os.path.isabs(source)
                or not os.path.exists(source)
            ):
                raise APIError(400, f"Symlink path not found: {source}")
            real = os.path.realpath(source)
            if not self.symlink_source_allowed(real, account):
                raise APIError(400, f"Invalid symlink source path specified {source}")
            plan.symlinks.append(SymlinkOp(parts, real))
            plan.request_symlinks.append({k: v for k, v in entry.items() if not k.startswith("_")})
        files = details.get("files", [])
        if not isinstance(files, list):
            raise APIError(400, "'files' index must contain a list.")
        for entry in files:
            if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
                raise APIError(400, "Each file must be an object with a string 'name'.")
            name = entry["name"]
            if ".." in name:
                raise APIError(400, "File name cannot contain double dots.")
            parts = self._destination(name, workspace_dir, "Invalid file path specified")
            content = entry.get("content")
            if content is not None and not isinstance(content, str):
                raise APIError(400, "File content must be a string.")
            data = (content or "").encode("utf-8", "surrogatepass")
            plan.files.append(FileOp(parts, data))
            plan.request_files.append({"name": name})
        return plan

    def _destination(self, name: str, workspace_dir: str | None, message: str) -> list[str]:
        try:
            parts = safepath.split_destination(name)
        except UnsafePath:
            raise APIError(400, f"{message} {name}") from None
        if len(parts) > self.max_path_depth:
            raise APIError(400, f"{message}: a path may have at most {self.max_path_depth} components.")
        if workspace_dir and not safepath.existing_parent_is_safe(workspace_dir, parts):
            raise APIError(400, f"{message} {name}")
        return parts

    def apply(self, account: Account, workspace_dir: str, plan: Plan) -> None:
        """Write a validated plan. Raises APIError when the file system says no."""
        if not plan.symlinks and not plan.files:
            return
        try:
            writer = safepath.DirWriter(workspace_dir, account)
        except (UnsafePath, OSError) as e:
            first = plan.symlinks[0].parts if plan.symlinks else plan.files[0].parts
            kind = "symlink destination path" if plan.symlinks else "file path"
            raise write_error(e, kind, "/".join(first)) from None
        with writer:
            for link in plan.symlinks:
                try:
                    writer.make_symlink(link.parts, link.source)
                except (UnsafePath, OSError) as e:
                    raise write_error(e, "symlink destination path", "/".join(link.parts)) from None
            for file in plan.files:
                try:
                    writer.write_file(file.parts, file.content)
                except (UnsafePath, OSError) as e:
                    raise write_error(e, "file path", "/".join(file.parts)) from None

    # ---- uploads ---------------------------------------------------------------------------
    @staticmethod
    def upload_name(filename: str) -> str:
        return re.split(r"[/\\]", filename)[-1]

    def validate_uploads(self, workspace_dir: str, names: list[str], folder: list[str] | None = None) -> None:
        """Every upload's destination, checked before anything is written: `folder` (its
        components; [] or None for the top) as check_upload_folder says, each name a file there."""
        folder = folder or []
        self.check_upload_folder(workspace_dir, folder)
        for original in names:
            try:
                parts = safepath.split_destination("/".join([*folder, self.upload_name(original)]))
            except UnsafePath:
                raise APIError(400, f"Invalid file path specified {original}") from None
            if len(parts) > self.max_path_depth:
                message = f"a path may have at most {self.max_path_depth} components"
                raise APIError(400, f"Invalid file path specified: {message}.")
            if not safepath.existing_parent_is_safe(workspace_dir, parts):
                raise APIError(400, f"Invalid file path specified {original}")

    @staticmethod
    def check_upload_folder(workspace_dir: str, folder: list[str]) -> None:
        """Uploads go into a folder of the workspace itself: one that exists and is reached
        without a symlink (a link to a dataset may be read, never written through). A job
        directory (.<id> at the top) is hidden, so it is missing here as in listings. (The write
        walks the folder again without following symlinks: one swapped in since is refused.)"""
        shown = "/".join(folder)
        if folder and safepath.RESERVED_FIRST.match(folder[0]):
            raise APIError(404, f"Folder not found in workspace: {shown}.")
        path = workspace_dir
        for part in folder:
            path = os.path.join(path, part)
            try:
                st = os.lstat(path)
            except (FileNotFoundError, NotADirectoryError):
                raise APIError(404, f"Folder not found in workspace: {shown}.") from None
            if stat.S_ISLNK(st.st_mode):
                raise APIError(
                    400, f"Uploads go into the workspace's own folders: {shown} goes through a symlink."
                )
            if not stat.S_ISDIR(st.st_mode):
                raise APIError(400, f"Not a directory: {shown}.")

    def save_uploads(
        self,
        account: Account,
        workspace_dir: str,
        uploads: list[tuple[str, bytes]],
        folder: list[str] | None = None,
    ) -> None:
        if not uploads:
            return
        try:
            writer = safepath.DirWriter(workspace_dir, account)
        except (UnsafePath, OSError) as e:
            raise write_error(e, "file path", uploads[0][0]) from None
        with writer:
            for original, body in uploads:
                name = self.upload_name(original)
                try:
                    writer.write_file([*(folder or []), name], body)
                except (UnsafePath, OSError) as e:
                    raise write_error(e, "file path", original) from None

    # ---- scanning and copying --------------------------------------------------------------
    def scan(self, workspace_dir: str) -> tuple[int, dict[str, Any]]:
        # A session moving directories around can spoil a walk: a few tries, then say so.
        for _ in range(SCAN_TRIES):
            try:
                total, files, links = trees.scan(workspace_dir, self.max_path_depth)
                return total, {"files": files, "symlinks": links}
            except trees.TreeChanged:
                pass
        raise APIError(409, "The workspace's files changed while they were being listed; try again.")

    def copy_workspace(self, src: str, dst: str, account: Account, max_bytes: int | None = None) -> None:
        def keep_link(target: str) -> bool:
            if not os.path.isabs(target) or not os.path.exists(target):
                return False
            return self.symlink_source_allowed(os.path.realpath(target), account)

        trees.copy_tree(src, dst, account, keep_link, max_bytes)

    # ---- reading for the API ------------------------------------------------------------
    def browse_place(self, account: Account, workspace_dir: str) -> browse.Place:
        """Where listings and downloads of this workspace may read (uws.storage.browse)."""
        return browse.Place(
            os.path.normpath(workspace_dir),
            tuple(os.path.realpath(r) for r in self.allowed_symlink_roots),
            self.real_root(),
            account,
        )

    # ---- health ----------------------------------------------------------------------------
    def health(self) -> tuple[bool, str]:
        root = self.root_dir
        if os.path.isdir(root) and os.access(root, os.R_OK | os.W_OK | os.X_OK):
            return True, "Connected successfully."
        return False, "Could not access critical directories."
