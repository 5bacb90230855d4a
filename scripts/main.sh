#!/usr/bin/env bash
# The main job: build the decision report through the Prefect deployment train-and-eval/local.
#
#   scripts/main.sh [extra `prefect deployment run` args, e.g. --param overrides='{"train.total_steps": 20000}']
#
# With overrides the run is a DVC experiment named after the flow run (runs/<name>/ is its checkout).
#
# On a fresh machine it creates .venv (python3.11, `pip install -c constraints.txt -e .`), starts
# a local Prefect server (SQLite under .prefect/, 127.0.0.1 only) unless one already answers at PREFECT_API_URL,
# serves the deployment (flows/serve.py), runs it with --watch, prints where the report is and
# the UI address, and stops every process it started. Safe to run again; leaves nothing running.
#
# If the Prefect server dies mid-run (killed, out of memory), the flow run cannot report to it:
# main.sh says so, stops the serve process (and with it the flow run and its Dask workers) and
# exits with status 75. Recovery is one command: run main.sh again with the same arguments. It
# starts a new server if none answers; the new flow run takes over the workspace lock the dead one
# left, and each training cell resumes from its checkpoint in BARRIERNET_STATE_DIR (default
# .cache/train-state; keyed by the training params and code), so finished cells are not retrained.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO="$PWD"

PY="${PYTHON:-python3.11}"
if [ ! -x .venv/bin/python ]; then
    echo "main: creating .venv with $PY and installing the project"
    "$PY" -m venv .venv
    .venv/bin/python -m pip install -q --upgrade pip
    .venv/bin/python -m pip install -q -c constraints.txt -e .  # byte-compiled here: PYTHONDONTWRITEBYTECODE may forbid it later
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
        # a killed process still holds its files (the workspace lock) until the kernel is done with it
        for _ in $(seq 1 40); do
            kill -0 -- "-$pgid" 2>/dev/null || break
            sleep 0.25
        done
    done
    STARTED=()
}
shell_quote() {   # the arguments as a shell would need them typed: 'it'\''s' for anything unusual
    local arg out=""
    for arg in "$@"; do
        if [[ "$arg" =~ ^[A-Za-z0-9_./:=@%+-]+$ ]]; then
            out+=" $arg"
        else
            out+=" '${arg//\'/\'\\\'\'}'"
        fi
    done
    printf '%s' "$out"
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

# The numba loops compile once per fresh clone (model/kernel_cache.py): compiled here, on the core
# the server's start leaves idle, the Dask workers load them instead of each compiling its own.
# Not waited for: a worker that gets there first compiles, as it would without this.
setsid "$VENV_BIN/python" -m tasks warm-kernels >"$LOGS/warm-kernels.log" 2>&1 &
STARTED+=("$!")

SERVER_PID=""   # set when this script starts the server
if healthy; then
    echo "main: using the Prefect server that answers at $PREFECT_API_URL"
else
    echo "main: starting a Prefect server on 127.0.0.1:$PORT (log: $LOGS/server.log)"
    setsid "$VENV_BIN/prefect" server start --host 127.0.0.1 --port "$PORT" >>"$LOGS/server.log" 2>&1 &
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
    grep -Eq "(is|are) being served" "$LOGS/serve.log" 2>/dev/null && break
    if ! kill -0 "$SERVE_PID" 2>/dev/null; then
        echo "main: flows/serve.py exited; last lines of $LOGS/serve.log:" >&2
        tail -n 30 "$LOGS/serve.log" >&2
        exit 1
    fi
    sleep 1
done

echo "main: Prefect UI: $PREFECT_UI_URL"
# --watch in the background, shown through tail, so that a server this script started and that
# dies is noticed at once (--watch alone gives up only after its event stream times out).
: >"$LOGS/last-run.log"
"$VENV_BIN/prefect" deployment run train-and-eval/local --watch "$@" >"$LOGS/last-run.log" 2>&1 &
WATCH_PID=$!
tail -n +1 -f --pid="$WATCH_PID" "$LOGS/last-run.log" &
TAIL_PID=$!
while kill -0 "$WATCH_PID" 2>/dev/null; do
    if [ -n "$SERVER_PID" ] && ! kill -0 "$SERVER_PID" 2>/dev/null; then
        kill -TERM "$WATCH_PID" 2>/dev/null || true
        break
    fi
    sleep 1
done
RC=0
wait "$WATCH_PID" || RC=$?
wait "$TAIL_PID" 2>/dev/null || true

RUN_NAME=$(sed -n "s/.*Created flow run '\([^']*\)'.*/\1/p" "$LOGS/last-run.log" | head -n 1)

# Did the run fail because the Prefect server went away? (`--watch` then exits non-zero while the
# flow run may still be training in the serve process; it cannot report to a lost server, so it
# is stopped with everything else this script started, and the message says how to recover.)
SERVER_LOST=""
if [ "$RC" -ne 0 ]; then
    if [ -n "$SERVER_PID" ] && ! kill -0 "$SERVER_PID" 2>/dev/null; then
        SERVER_STATUS=0
        wait "$SERVER_PID" 2>/dev/null || SERVER_STATUS=$?
        SERVER_LOST="the Prefect server this script started (pid $SERVER_PID) exited with status $SERVER_STATUS"
        [ "$SERVER_STATUS" -gt 128 ] && SERVER_LOST="$SERVER_LOST (signal $((SERVER_STATUS - 128)))"
        SERVER_LOST="$SERVER_LOST; log: $LOGS/server.log"
    elif ! healthy; then
        SERVER_LOST="the Prefect server at $PREFECT_API_URL stopped answering"
    fi
fi
if [ -n "$SERVER_LOST" ]; then
    STATE_DIR="${BARRIERNET_STATE_DIR:-$REPO/.cache/train-state}"
    RERUN="bash scripts/main.sh"
    [ "$#" -gt 0 ] && RERUN="$RERUN$(shell_quote "$@")"
    {
        echo
        echo "main: SERVER LOST: $SERVER_LOST during flow run ${RUN_NAME:+'$RUN_NAME'}."
        echo "main: the flow run cannot report to a lost server: stopping it (serve process, flow run, Dask workers)."
        stop_started
        echo "main: stopped. To recover, run the same command again (from $REPO); it starts a new Prefect server if none answers:"
        echo
        echo "    $RERUN"
        echo
        echo "main: training cells resume from their checkpoints in $STATE_DIR (keyed by the training params and code):"
        echo "main: finished cells are not retrained, interrupted ones continue from their last checkpoint; the dead run's"
        echo "main: workspace lock is taken over. Flow run ${RUN_NAME:+'$RUN_NAME' }stays Running in the server's database"
        echo "main: until flows/serve.py marks it Crashed at the next start."
    } >&2
    exit 75   # EX_TEMPFAIL: run again
fi
REPORT="$REPO/reports/decision_report.md"
EXPERIMENT=""
if [ -n "$RUN_NAME" ] && [ -f "$REPO/runs/$RUN_NAME/reports/decision_report.md" ]; then
    REPORT="$REPO/runs/$RUN_NAME/reports/decision_report.md"   # a run with overrides: a DVC experiment
    EXPERIMENT="$RUN_NAME"
fi
echo
if [ "$RC" -eq 0 ]; then
    echo "main: decision report: $REPORT"
    [ -n "$EXPERIMENT" ] && echo "main: DVC experiment '$EXPERIMENT': \`dvc exp show\` lists it, \`dvc exp apply $EXPERIMENT\` restores it"
else
    echo "main: the flow run ${RUN_NAME:+'$RUN_NAME' }failed (exit $RC); see $LOGS/last-run.log and $LOGS/serve.log" >&2
fi
echo "main: Prefect UI: $PREFECT_UI_URL${RUN_NAME:+ (flow run '$RUN_NAME')}"
exit "$RC"
