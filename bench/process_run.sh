#!/usr/bin/env bash
# bench/process_run.sh - process.run{"true"} N times, K at a time, in tide
# (bench/process_run.lua) beside Node.js's child_process.execFile
# (bench/process_run.js), alternating, RUNS times each; prints a markdown
# section with the median and range of runs/s. bench/run.sh runs it
# (PROC=1); alone: bench/process_run.sh
# Environment: TIDE_BIN (default ../build/tide), RUNS=3, N=1000, K=8.
set -u
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
TIDE_BIN=${TIDE_BIN:-$ROOT/build/tide}
RUNS=${RUNS:-3}
PN=${PN:-1000}
K=${K:-8}
cd "$ROOT" || exit 1

declare -A V
for _ in $(seq "$RUNS"); do
  V[tide]="${V[tide]:-} $(timeout 120 "$TIDE_BIN" bench/process_run.lua "$PN" "$K" | sed -n 's/^RESULT runs_per_s=//p')"
  if command -v node >/dev/null; then
    V[node]="${V[node]:-} $(timeout 120 node bench/process_run.js "$PN" "$K" | sed -n 's/^RESULT runs_per_s=//p')"
  fi
done

cell() {
  [ -z "${V[$1]:-}" ] && { echo "n/a"; return; }
  printf '%s\n' ${V[$1]} | sort -g | awk '{a[NR]=$1} END {
    m = (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2
    printf "%d (%d–%d)", m, a[1], a[NR] }'
}

echo "### process.run{\"true\"} ×$PN, $K at a time"
echo
echo "| runtime | runs/s, median (min–max) of $RUNS |"
echo "| --- | --- |"
echo "| tide \`process.run\` | $(cell tide) |"
echo "| Node.js \`execFile\` | $(cell node) |"
echo
