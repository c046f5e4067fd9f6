"""What the end-to-end tests and the benchmarks share; no test module imports another.

- harness: a real `uws` server process (Server) and an HTTP client for it (Client);
- configs: the session accounts and the server configurations used by more than one module;
- api: calls on a running server (login, create, start) and waiting for their effects.

Import from the submodules (`from helpers.api import create`): importing harness alone stays
free of the side effects configs has as root (a session group, a world-readable copy of uws).
"""
