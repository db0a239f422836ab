#!/usr/bin/env bash
# Create .venv in the checkout and install the package with its test, data and benchmark (peer init) extras.
# torch is pinned first to the CPU build (torch==2.13.*), so pip does not pull a CUDA build.
# pip runs only when something it depends on changed: the stamp .venv/.setup-stamp holds a hash
# of pyproject.toml, this script and the Python version (delete it to force a reinstall).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
stamp=.venv/.setup-stamp
wanted="$(cat pyproject.toml scripts/setup.sh <(.venv/bin/python -V 2>&1) | sha256sum | cut -d' ' -f1)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$wanted" ] && .venv/bin/python -c "import lightning_lyapunov" 2>/dev/null; then
    exit 0
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet "torch==2.13.*"
.venv/bin/python -m pip install --quiet -e ".[dev,data,benchmarks]"
echo "$wanted" > "$stamp"
