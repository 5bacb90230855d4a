#!/usr/bin/env bash
# Set up a fresh virtual environment and run the whole test suite (what CI runs).
# The end-to-end tests (marked `slow`) run too, with tiny budgets.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# --no-compile: byte-compiling every installed module (torch, prefect, dvc...) took 167 s of a
# 2-core machine's install against 52 s without; a process compiles what it imports, once.
.venv/bin/python -m pip install -q --no-compile -e ".[dev]"
# Exit code 5 (no tests collected) fails like any other failure.
# One worker per core, fed one test at a time in the order tests/conftest.py sets (longest end-to-end
# runs first); a module with module-scoped fixtures (e.g. the tiny pipeline run of
# test_pipeline_e2e.py) is one xdist_group, kept on one worker, so no fixture runs twice.
exec .venv/bin/python -m pytest -q --durations=20 -n auto --dist loadgroup --no-loadscope-reorder "$@"
