#!/usr/bin/env bash
# The main job: build the decision report through the Prefect deployment train-and-eval/local.
#
#   scripts/main.sh [extra `prefect deployment run` args, e.g. --param overrides='{"train.total_steps": 20000}']
#
# On a fresh machine it creates .venv (python3.11, `pip install -e .`), starts a local Prefect
# server (SQLite under .prefect/, 127.0.0.1 only) unless one already answers at PREFECT_API_URL,
# serves the deployment (flows/serve.py), runs it with --watch, prints where the report is and
# the UI address, and stops every process it started. Safe to run again; leaves nothing running.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO="$PWD"

PY="${PYTHON:-python3.11}"
if [ ! -x .venv/bin/python ]; then
    echo "main: creating .venv with $PY and installing the project"
    "$PY" -m venv .venv
    .venv/bin/python -m pip install -q --upgrade pip
    .venv/bin/python -m pip install -q -e .
fi
VENV_BIN="$REPO/.venv/bin"
export PATH="$VENV_BIN:$PATH"   # dvc.yaml's `python` and the flow's `dvc` are the venv's

PORT="${PREFECT_PORT:-4200}"
export PREFECT_HOME="${PREFECT_HOME:-$REPO/.prefect}"
export PREFECT_API_URL="http://127.0.0.1:$PORT/api"
export PREFECT_SERVER_ANALYTICS_ENABLED=false
export PREFECT_UI_URL="http://127.0.0.1:$PORT"
export DVC_NO_ANALYTICS=1
mkdir -p "$PREFECT_HOME"
LOGS="$PREFECT_HOME/logs"
mkdir -p "$LOGS"

STARTED=()   # process-group ids of what this script started (each runs under setsid)
stop_started() {
    local pgid i
    for ((i = ${#STARTED[@]} - 1; i >= 0; i--)); do
        pgid="${STARTED[$i]}"
        kill -TERM -- "-$pgid" 2>/dev/null || continue
        for _ in $(seq 1 40); do
            kill -0 -- "-$pgid" 2>/dev/null || break
            sleep 0.5
        done
        kill -KILL -- "-$pgid" 2>/dev/null || true
    done
    STARTED=()
}
trap stop_started EXIT
trap 'exit 130' INT TERM

healthy() {
    "$VENV_BIN/python" - "$PREFECT_API_URL" <<'PYEOF'
import sys, urllib.request
try:
    with urllib.request.urlopen(sys.argv[1].rstrip("/") + "/health", timeout=3) as r:
        sys.exit(0 if r.status == 200 else 1)
except Exception:
    sys.exit(1)
PYEOF
}

if healthy; then
    echo "main: using the Prefect server that answers at $PREFECT_API_URL"
else
    echo "main: starting a Prefect server on 127.0.0.1:$PORT (log: $LOGS/server.log)"
    setsid "$VENV_BIN/prefect" server start --host 127.0.0.1 --port "$PORT" >"$LOGS/server.log" 2>&1 &
    SERVER_PID=$!
    STARTED+=("$SERVER_PID")
    for _ in $(seq 1 240); do
        healthy && break
        if ! kill -0 "$SERVER_PID" 2>/dev/null; then
            echo "main: the Prefect server exited; last lines of $LOGS/server.log:" >&2
            tail -n 30 "$LOGS/server.log" >&2
            exit 1
        fi
        sleep 1
    done
    healthy || { echo "main: no Prefect server answers at PREFECT_API_URL=$PREFECT_API_URL after 240 s (log: $LOGS/server.log)" >&2; exit 1; }
fi

echo "main: serving train-and-eval/local (log: $LOGS/serve.log)"
setsid "$VENV_BIN/python" flows/serve.py >"$LOGS/serve.log" 2>&1 &
SERVE_PID=$!
STARTED+=("$SERVE_PID")
for _ in $(seq 1 240); do
    grep -q "is being served" "$LOGS/serve.log" 2>/dev/null && break
    if ! kill -0 "$SERVE_PID" 2>/dev/null; then
        echo "main: flows/serve.py exited; last lines of $LOGS/serve.log:" >&2
        tail -n 30 "$LOGS/serve.log" >&2
        exit 1
    fi
    sleep 1
done

echo "main: Prefect UI: $PREFECT_UI_URL"
set +e
"$VENV_BIN/prefect" deployment run train-and-eval/local --watch "$@" 2>&1 | tee "$LOGS/last-run.log"
RC=${PIPESTATUS[0]}
set -e

RUN_NAME=$(sed -n "s/.*Created flow run '\([^']*\)'.*/\1/p" "$LOGS/last-run.log" | head -n 1)
REPORT="$REPO/reports/decision_report.md"
if [ -n "$RUN_NAME" ] && [ -f "$REPO/runs/$RUN_NAME/reports/decision_report.md" ]; then
    REPORT="$REPO/runs/$RUN_NAME/reports/decision_report.md"   # a run with overrides
fi
echo
if [ "$RC" -eq 0 ]; then
    echo "main: decision report: $REPORT"
else
    echo "main: the flow run ${RUN_NAME:+'$RUN_NAME' }failed (exit $RC); see $LOGS/last-run.log and $LOGS/serve.log" >&2
fi
echo "main: Prefect UI: $PREFECT_UI_URL${RUN_NAME:+ (flow run '$RUN_NAME')}"
exit "$RC"
