#!/usr/bin/env bash
# Install (scripts/setup.sh), then lint, format check, type check and the test suite: what CI
# (.ci/run) runs, then `python -m bench --quick` (smoke test). Tests marked `slow` are left out (run them with: .venv/bin/python -m pytest -m slow);
# `gpu` tests are not deselected: they run where torch sees a CUDA device and skip elsewhere.
# Extra arguments go to pytest (a later -m replaces "not slow").
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy  # packages and options: [tool.mypy] in pyproject.toml
.venv/bin/python -m pytest -q -m "not slow" "$@"
# Every benchmark at small sizes, as a smoke test (no timing is asserted; a few minutes on 2 cores).
.venv/bin/python -m bench --quick --no-markdown --results-dir "$(mktemp -d)"
