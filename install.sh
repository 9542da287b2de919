#!/usr/bin/env bash
# Install accessd from scratch: a venv in .venv, the dependencies, the package
# itself (the `accessd` command) and the MediaPipe detector models.
set -euo pipefail
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -r requirements-dev.txt
.venv/bin/python -m pip install --quiet --no-deps -e .
.venv/bin/python -m accessd.provision --dest models/detector
echo "installed: .venv/bin/accessd"
