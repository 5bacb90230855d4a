#!/usr/bin/env bash
# Start a local Prefect server in the foreground: SQLite under .prefect/, loopback only, no analytics.
# Then, in another shell: export PREFECT_API_URL=http://127.0.0.1:4200/api
set -euo pipefail
cd "$(dirname "$0")/.."
export PREFECT_HOME="${PREFECT_HOME:-$PWD/.prefect}"
export PREFECT_SERVER_ANALYTICS_ENABLED=false
PORT="${PREFECT_PORT:-4200}"
PREFECT=prefect
[ -x .venv/bin/prefect ] && PREFECT=.venv/bin/prefect
echo "Prefect server: UI http://127.0.0.1:$PORT, API http://127.0.0.1:$PORT/api (PREFECT_HOME=$PREFECT_HOME)"
exec "$PREFECT" server start --host 127.0.0.1 --port "$PORT"
