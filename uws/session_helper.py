"""The per-session helper's old module path, kept because sites' sudoers rules and the spawners'
command line name it (`python -I -m uws.session_helper ...`): the helper is uws.sessions.helper."""

import sys

from uws.sessions.helper import *  # noqa: F403
from uws.sessions.helper import main

if __name__ == "__main__":
    sys.exit(main())
