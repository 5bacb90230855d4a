#!/usr/bin/env bash
# Set up a fresh virtual environment and run the whole test suite (what CI runs).
# The end-to-end tests (marked `slow`) run too, with tiny budgets.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# Byte-compile on every core, not in pip's one process (164 s of a 2-core install, against 52 s for
# the rest). Compiled it must be: where PYTHONDONTWRITEBYTECODE is set (our CI machines) no process
# caches what it compiles, and every Python process of the suite would compile torch, prefect and
# dvc again (`import torch, prefect`: 11.1 s against 5.4 s). compileall's status is not checked:
# a few packages ship files that are not Python 3.11 (pip skips them too).
.venv/bin/python -m pip install -q --no-compile -c constraints.txt -e ".[dev]"
SITE=.venv/lib/python3.11/site-packages
.venv/bin/python -m compileall -q -j 0 "$SITE" > /dev/null || true
[ -f "$SITE/torch/__pycache__/__init__.cpython-311.pyc" ] || { echo "test.sh: byte-compiling $SITE failed" >&2; exit 1; }
# Exit code 5 (no tests collected) fails like any other failure.
# One worker per core, fed one test at a time in the order tests/conftest.py sets (longest end-to-end
# runs first); a module with module-scoped fixtures (e.g. the tiny pipeline run of
# test_pipeline_e2e.py) is one xdist_group, kept on one worker, so no fixture runs twice.
exec .venv/bin/python -m pytest -q --durations=20 -n auto --dist loadgroup --no-loadscope-reorder "$@"
