#!/usr/bin/env bash
# Create .venv (if absent) and install the project with the exact pins of constraints.txt.
# Idempotent: a second run only re-checks the pins.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
# compat mode: a plain .pth path entry, so checkouts and worktrees on sys.path take precedence.
PYTHONWARNINGS=ignore .venv/bin/python -m pip install -q -c constraints.txt -e '.[test]' --config-settings editable_mode=compat
