#!/usr/bin/env bash
# The default study's train -> evaluate -> compare with every process started by another glibc's
# loader, to check that `results/compare/metrics.json` does not depend on the C library (README,
# "Same answer on any machine"). Runs the stages by hand, two cells at a time, not through the
# Prefect flow: the flow's Dask workers would start under this machine's own loader.
#
#   bash scripts/fetch_glibc.sh sid                      # once: Debian unstable's glibc under .cache/glibc/
#   bash scripts/study_under_glibc.sh .cache/glibc/2.43-7 /tmp/study-glibc-2.43
#   sha256sum /tmp/study-glibc-2.43/results/compare/metrics.json results/compare/metrics.json
#
# About the main job's worker time over 2 cores: 7 min on the 2-core AMD EPYC of the README. WORKDIR is emptied first.
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -eq 2 ] || { echo "usage: $0 GLIBC_DIR WORKDIR (GLIBC_DIR: from scripts/fetch_glibc.sh)" >&2; exit 2; }
GLIBC=$(realpath "$1"); WORK=$(realpath -m "$2")
[ -x "$GLIBC/ld-linux-x86-64.so.2" ] || { echo "$GLIBC has no ld-linux-x86-64.so.2; run scripts/fetch_glibc.sh" >&2; exit 2; }
[ -x .venv/bin/python ] || { echo "no .venv: run scripts/main.sh or scripts/test.sh once first" >&2; exit 2; }
rm -rf "$WORK" "$WORK.state" && mkdir -p "$WORK/logs"
export BARRIERNET_STATE_DIR="$WORK.state"  # no checkpoint of this machine's runs is resumed
run=("$GLIBC/ld-linux-x86-64.so.2" --library-path "$GLIBC:/lib/x86_64-linux-gnu:/usr/lib/x86_64-linux-gnu"
     .venv/bin/python -m tasks)
"${run[@]}" numerics-env > /dev/null  # fails here, before any work, if the loader cannot start Python
mapfile -t cells < <(.venv/bin/python -c "
from tasks.params import load_params
tp = load_params().train
print('\n'.join(f'{a} {s}' for a in tp.algos for s in tp.seeds))")
stage_half() {  # $1 stage, $2 parity: every other cell
    local i=0 algo seed
    for cell in "${cells[@]}"; do
        if [ $((i % 2)) -eq "$2" ]; then
            read -r algo seed <<< "$cell"
            "${run[@]}" "$1" --algo "$algo" --seed "$seed" --workdir "$WORK" > "$WORK/logs/$1-$algo-$seed.log" 2>&1 \
                || { echo "$1 $algo-s$seed failed: $WORK/logs/$1-$algo-$seed.log" >&2; return 1; }
        fi
        i=$((i + 1))
    done
}
for stage in train evaluate; do
    stage_half "$stage" 0 & first=$!
    stage_half "$stage" 1 & second=$!
    wait "$first" && wait "$second"
    echo "study_under_glibc: $stage done ($(date -u +%H:%M:%S))"
done
"${run[@]}" compare --workdir "$WORK" > "$WORK/logs/compare.log" 2>&1
sha256sum "$WORK/results/compare/metrics.json" results/compare/metrics.json
