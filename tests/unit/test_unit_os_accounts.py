"""The test suite's one-pass removal of its OS accounts, on copies of the account files (never
the machine's own)."""

from __future__ import annotations

import os
from pathlib import Path

from helpers.os_accounts import _rewrite


def drop(name: str) -> bool:
    return name.startswith("uwstab") or name == "uwstgrp1"


def test_entries_and_memberships_of_the_run_are_removed_and_nothing_else(tmp_path: Path) -> None:
    passwd = tmp_path / "passwd"
    passwd.write_text(
        "root:x:0:0::/root:/bin/bash\nuwstabu1:x:1001:1001::/home/uwstabu1:/bin/sh\nuwstzzu1:x:1002:1002::/home/uwstzzu1:/bin/sh\n"
    )
    os.chmod(passwd, 0o644)
    _rewrite(str(passwd), drop, None)
    assert passwd.read_text() == "root:x:0:0::/root:/bin/bash\nuwstzzu1:x:1002:1002::/home/uwstzzu1:/bin/sh\n"
    assert passwd.stat().st_mode & 0o777 == 0o644

    group = tmp_path / "group"
    group.write_text(
        "sudo:x:27:root,uwstabu1\nuwstabu1:x:1001:\nuwstgrp1:x:2000:uwstabu1\nusers:x:100:uwstabu1,uwstzzu1,bob\n"
    )
    _rewrite(str(group), drop, 3)
    assert group.read_text() == "sudo:x:27:root\nusers:x:100:uwstzzu1,bob\n"


def test_gshadow_administrators_are_removed_too(tmp_path: Path) -> None:
    gshadow = tmp_path / "gshadow"
    gshadow.write_text("staff:!:uwstabu1,alice:uwstabu1,bob\n")
    os.chmod(gshadow, 0o640)
    _rewrite(str(gshadow), drop, 3)
    assert gshadow.read_text() == "staff:!:alice:bob\n"
    assert gshadow.stat().st_mode & 0o777 == 0o640


def test_a_file_with_nothing_to_remove_is_left_untouched(tmp_path: Path) -> None:
    subuid = tmp_path / "subuid"
    subuid.write_text("alice:100000:65536\n")
    before = subuid.stat().st_ino
    _rewrite(str(subuid), drop, None)
    assert subuid.stat().st_ino == before
