#!/usr/bin/env bash
# Create .venv in the checkout and install the package with its test and data extras.
# torch is pinned first to the CPU build (torch==2.13.*), so pip does not pull a CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet "torch==2.13.*"
.venv/bin/python -m pip install --quiet -e ".[dev,data]"
