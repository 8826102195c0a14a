#!/usr/bin/env bash
# Set up notebooks/.venv (once) and execute every notebook headless against the committed
# sample results. Used by the test suite (tests/notebooks.rs) and CI.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
bash "$here/setup.sh"
JUPYTER_PATH="$here/.venv/share/jupyter" exec "$here/.venv/bin/python" "$here/run_all.py"
