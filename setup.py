"""Packaging for UWS, the User Workspaces Server."""

import os

from setuptools import find_packages, setup

here = os.path.dirname(os.path.abspath(__file__))
version = {}
with open(os.path.join(here, "uws", "__init__.py")) as f:
    exec(f.read(), version)



def share_files() -> list[tuple[str, list[str]]]:
    """share/uws and its subdirectories (the web interface's templates and static files), each
    directory's files installed under the same relative path."""
    found = []
    for dirpath, dirnames, filenames in os.walk(os.path.join(here, "share", "uws")):
        dirnames.sort()
        relative = os.path.relpath(dirpath, here)
        files = [os.path.join(relative, n) for n in sorted(filenames)]
        if files:
            found.append((relative, files))
    return found


setup(
    name="uws",
    version=version["__version__"],
    description="User Workspaces Server: workspaces and interactive sessions over HTTP",
    packages=find_packages(include=["uws", "uws.*"]),
    package_data={"uws": ["alembic/*.py", "alembic/*.mako", "alembic/versions/*.py"]},
    data_files=share_files(),
    python_requires=">=3.11",
    install_requires=[
        "tornado>=6.4",
        "traitlets>=5.14",
        "sqlalchemy>=2.0",
        "alembic>=1.13",
        "globus-sdk>=3.40",
        "pyzmq>=25",
        "psutil>=5.9",
        "psycopg[binary]>=3.1",
        "requests>=2.31",
        "pyyaml>=6",
        "uvloop>=0.19",
        # llhttp (the HTTP/1.1 parser of Node.js and uvicorn): the passthrough reads heads with it.
        "httptools>=0.6",
        # GET /metrics: Prometheus' own client library, as JupyterHub uses.
        "prometheus_client>=0.17",
        # The web interface's pages: server-rendered templates, autoescaped (as JupyterHub's).
        "jinja2>=3.1",
    ],
    extras_require={
        # jupyterlab: the passthrough's end-to-end tests run a real JupyterLab.
        # playwright: drives the system's Chromium in the browser isolation tests.
        # axe-playwright-python: ships axe-core (MPL-2.0), the web interface's accessibility check.
        # mypy and types-psutil (psutil's type hints): scripts/test type-checks uws first.
        "test": [
            "pytest>=8",
            # pytest-xdist: scripts/test runs the suite on several worker processes.
            "pytest-xdist>=3.5",
            "schemathesis>=3.30",
            "ruff>=0.5",
            "jupyterlab>=4",
            "playwright>=1.40",
            "axe-playwright-python>=0.1.8",
            "mypy>=1.8",
            "types-psutil",
        ],
    },
    # Pluggable classes by name (c.UWSApp.spawner_class = "slurm"), as JupyterHub names its
    # spawners: another package adds one with an entry point in the same group. uws/plugins.py
    # keeps the same table for a checkout that is not installed.
    entry_points={
        "console_scripts": ["uws = uws.app:cli", "uws-session-helper = uws.sessions.helper:main"],
        "uws.spawners": [
            "local = uws.spawners.local:LocalProcessSpawner",
            "LocalProcessSpawner = uws.spawners.local:LocalProcessSpawner",
            "sudo = uws.spawners.local:SudoSpawner",
            "SudoSpawner = uws.spawners.local:SudoSpawner",
            "slurm = uws.spawners.slurm:SlurmSpawner",
            "SlurmSpawner = uws.spawners.slurm:SlurmSpawner",
            "slurm_rest = uws.spawners.slurm_rest:SlurmRestSpawner",
            "SlurmRestSpawner = uws.spawners.slurm_rest:SlurmRestSpawner",
        ],
        "uws.authenticators": [
            "local = uws.auth.base:LocalAuthenticator",
            "dev = uws.auth.base:DevAuthenticator",
            "psc = uws.auth.base:PSCAuthenticator",
            "globus = uws.auth.globus:GlobusAuthenticator",
        ],
        "uws.storage": [
            "local = uws.storage.local:LocalFileSystemStorage",
            "hubmap = uws.storage.hubmap:HubmapLocalFileSystemStorage",
        ],
    },
)
