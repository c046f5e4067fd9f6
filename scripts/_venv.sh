# Sourced by scripts/serve and scripts/test: make sure .venv exists and has this checkout installed.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    if ! "$PYTHON" -m venv .venv; then
        echo "Could not create a virtualenv. On Debian: apt-get install python3-venv" >&2
        exit 1
    fi
fi
stamp=.venv/.uws-installed
if [ ! -f "$stamp" ] || [ setup.py -nt "$stamp" ]; then
    .venv/bin/pip install --quiet --disable-pip-version-check -e '.[test]'
    touch "$stamp"
fi
