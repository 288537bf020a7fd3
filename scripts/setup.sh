#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment in .venv and install swarm-node into it
# with the test extra. Needs Python >= 3.11 and the package registries; nothing else.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-}"
if [[ -z "$PYTHON" ]]; then
    for candidate in python3.11 python3.12 python3.13 python3; do
        if command -v "$candidate" >/dev/null 2>&1 &&
            "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
            PYTHON="$candidate"
            break
        fi
    done
fi
[[ -n "$PYTHON" ]] || { echo "setup: Python 3.11 or newer is needed" >&2; exit 1; }

if [[ ! -x .venv/bin/python ]]; then
    "$PYTHON" -m venv .venv
fi
# Reinstall only when pyproject.toml changed since the last install.
stamp=.venv/.swarm-node-installed
if [[ ! -f "$stamp" || pyproject.toml -nt "$stamp" ]]; then
    .venv/bin/python -m pip install --quiet --upgrade pip 2>&1 | grep -v "^WARNING: Location" || true
    .venv/bin/python -m pip install --quiet -e ".[test]" 2>&1 | grep -v "^WARNING: Location" || true
    .venv/bin/python -c "import node, libp2p, trio, hypercorn" # fail here if the install did
    touch "$stamp"
fi

# js-libp2p for the interop test (tests/interop/): installed from its lock file, again only
# when that changed. Without Node.js that test skips and says why.
interop=tests/interop/js
if command -v npm >/dev/null 2>&1; then
    stamp="$interop/node_modules/.swarm-node-installed"
    if [[ ! -f "$stamp" || "$interop/package-lock.json" -nt "$stamp" ||
        "$interop/package.json" -nt "$stamp" ]]; then
        (cd "$interop" && npm ci --no-audit --no-fund --loglevel=error)
        touch "$stamp"
    fi
else
    echo "setup: npm is not on PATH; the js-libp2p interop test will be skipped" >&2
fi
