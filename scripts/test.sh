#!/usr/bin/env bash
# Set up a fresh virtual environment and run the whole test suite (what CI runs).
# The end-to-end tests (marked `slow`) run too, with tiny budgets.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# Not --no-compile, although byte-compiling at install costs about 2 min of a 2-core machine: where
# PYTHONDONTWRITEBYTECODE is set (as on our CI machines) no process would ever cache what it
# compiled, and every Python process of the suite compiled torch, prefect and dvc again (the
# suite ran 1.6x longer).
.venv/bin/python -m pip install -q -e ".[dev]"
# Exit code 5 (no tests collected) fails like any other failure.
# One worker per core, fed one test at a time in the order tests/conftest.py sets (longest end-to-end
# runs first); a module with module-scoped fixtures (e.g. the tiny pipeline run of
# test_pipeline_e2e.py) is one xdist_group, kept on one worker, so no fixture runs twice.
exec .venv/bin/python -m pytest -q --durations=20 -n auto --dist loadgroup --no-loadscope-reorder "$@"
