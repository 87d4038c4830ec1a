#!/usr/bin/env bash
# bench/run.sh - tide's micro-benchmarks beside the Node.js and LuaJIT+luv
# peers (see docs/benchmarks.md).
#
# usage: bench/run.sh            (from anywhere; `make bench` runs it too)
#
# Environment (all optional):
#   RUNS=3            repetitions per cell (median, min-max shown); startup
#                     always uses hyperfine's own 5 warm-up + 40 runs
#   TIDE_BIN=...      the tide binary (default: ../build/tide next to this script);
#                     a copy outside the tree keeps a rebuild from changing it mid-run
#   TIDE_SRC=...      text for the header saying which source TIDE_BIN was built from
#   PEER_DIR=../shared/bench   where the peers node/*.js and luv/*.lua live
#   LUA=luajit        interpreter for the luv peer
#   CPU=0             CPU for `taskset -c` (as the peers' run.sh: workload C
#                     and the tide-only task workloads are pinned, startup is not)
#   N=1000000         timers / immediates / spawn+join / sleep(0) count
#   SLEEPERS=100000   tasks for the memory-per-sleeping-task workload
#   FSN=100000        reads of a 4 KiB file, 64 at once (tide.fs.read_file
#                     beside Node's fs.readFile and luv's open/read/close)
#   PN=100000         empty worker-pool round trips (tide.pool.noop beside
#                     luv's uv.new_work), one at a time and 64 at once
#   TMO=120           `timeout` seconds for every single run (hyperfine: 10 x TMO)
#   OUT=/tmp/tide-bench   logs/, results.tsv (every run) and tables.md
#
# Every run is wrapped in `timeout`; a runtime that is not installed (node, or
# luv not loadable by $LUA) gives cells saying "missing", a run that printed no
# RESULT line counts as failed. Exit status: 0, or 1 when tide itself is absent.
set -u
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
TIDE_BIN=${TIDE_BIN:-$HERE/../build/tide}
PEER_DIR=${PEER_DIR:-$ROOT/../shared/bench}
LUA=${LUA:-luajit}
RUNS=${RUNS:-3}
CPU=${CPU:-0}
N=${N:-1000000}
SLEEPERS=${SLEEPERS:-100000}
FSN=${FSN:-100000}        # file reads (the peers' workload D)
PN=${PN:-100000}          # empty pool round trips
TMO=${TMO:-120}
OUT=${OUT:-/tmp/tide-bench}

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

# ---------------------------------------------------------------- tools
# Show the tide binary as `build/tide` when it is this checkout's build.
cd "$ROOT" || exit 1
TIDE=$(cd "$(dirname "$TIDE_BIN")" 2>/dev/null && pwd)/$(basename "$TIDE_BIN")
case $TIDE in "$ROOT"/*) TIDE=${TIDE#"$ROOT"/};; esac
if [ ! -x "$TIDE" ] || ! "$TIDE" -e '' >/dev/null 2>&1; then
  log "tide binary '$TIDE_BIN' missing or broken: build it with 'cmake --build build -j2' or set TIDE_BIN"
  exit 1
fi
HAVE_NODE=0; command -v node >/dev/null 2>&1 && HAVE_NODE=1
[ -f "$PEER_DIR/node/timers.js" ] || HAVE_NODE=0
HAVE_LUV=0; "$LUA" -e 'require"luv"' >/dev/null 2>&1 && [ -f "$PEER_DIR/luv/timers.lua" ] && HAVE_LUV=1
HAVE_LUAJIT=0; command -v luajit >/dev/null 2>&1 && HAVE_LUAJIT=1

TIMEBIN=/usr/bin/time
if [ ! -x "$TIMEBIN" ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    log "installing GNU time (apt-get install -y time) for peak RSS"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq time >/dev/null 2>&1
  fi
  [ -x "$TIMEBIN" ] || { log "no /usr/bin/time: peak RSS not measured"; TIMEBIN=""; }
fi
PIN=(taskset -c "$CPU")
if ! taskset -c "$CPU" true 2>/dev/null; then log "taskset -c $CPU unavailable: not pinning"; PIN=(); fi

short() { awk -v n="$1" 'BEGIN{ if (n % 1000000 == 0) printf "%dM", n / 1000000; else if (n % 1000 == 0) printf "%dk", n / 1000; else print n }'; }
NL=$(short "$N"); FSNL=$(short "$FSN"); PNL=$(short "$PN")
mkdir -p "$OUT/logs"
FSFILE="$OUT/file4k.bin"   # the 4 KiB file workload D reads
head -c 4096 /dev/urandom > "$FSFILE"
RES="$OUT/results.tsv"     # workload runtime metric run value
TABLES="$OUT/tables.md"
printf 'workload\truntime\tmetric\trun\tvalue\n' > "$RES"
: > "$TABLES"

# ---------------------------------------------------------------- helpers
# stats: numbers on stdin -> "median min max" (NA if none)
stats() {
  sort -g | awk '{a[NR]=$1} END {
    if (NR == 0) { print "NA NA NA"; exit }
    m = (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2
    print m, a[1], a[NR] }'
}
declare -A VALS          # "workload|runtime|metric" -> " v1 v2 ..."
declare -A STATE         # "workload|runtime" -> missing | failed (no value at all)
add() { VALS["$1|$2|$3"]="${VALS["$1|$2|$3"]:-} $5"; printf '%s\t%s\t%s\t%s\t%s\n' "$@" >> "$RES"; }
# cell WORKLOAD RUNTIME METRIC FMT -> "median (min–max)", or why there is none
cell() {
  local v=${VALS["$1|$2|$3"]:-}
  if [ -z "$v" ]; then echo "${STATE["$1|$2"]:-failed}"; return; fi
  local s; s=$(printf '%s\n' $v | stats)
  set -- $s "$4"
  if [ "$2" = "$3" ]; then printf "$4" "$1"; else printf "$4 ($4–$4)" "$1" "$2" "$3"; fi
}
med() {
  local v=${VALS["$1|$2|$3"]:-}
  [ -z "$v" ] && return 1
  printf '%s\n' $v | stats | awk '{print $1}'
}
# ratio A B -> A/B with 2 decimals, or n/a
ratio() { [ -n "$1" ] && [ -n "$2" ] && awk -v a="$1" -v b="$2" 'BEGIN{ if (b > 0) printf "%.2f", a / b; else print "n/a" }' || echo "n/a"; }
result_field() { sed -n "s/.*RESULT.*\b$1=\([0-9.]*\).*/\1/p" "$2" | tail -1; }

# cmd_for WORKLOAD RUNTIME -> command line, or nothing when the runtime lacks it
cmd_for() {
  case "$1:$2" in
    timers:tide)     echo "$TIDE bench/timers.lua $N";;
    burst:tide)      echo "$TIDE bench/immediate.lua burst $N";;
    chain:tide)      echo "$TIDE bench/immediate.lua chain $N";;
    spawn_join:tide) echo "$TIDE bench/spawn_join.lua $N";;
    sleep0:tide)     echo "$TIDE bench/sleep0.lua $N";;
    sleepers:tide)   echo "$TIDE bench/sleepers.lua $SLEEPERS";;
    timers:node)     echo "node $PEER_DIR/node/timers.js $N";;
    burst:node|chain:node) echo "node $PEER_DIR/node/immediate.js $1 $N";;
    timers:luv)      echo "$LUA $PEER_DIR/luv/timers.lua $N";;
    burst:luv|chain:luv) echo "$LUA $PEER_DIR/luv/immediate.lua $1 $N";;
    fsread:tide)     echo "$TIDE bench/fsread.lua $FSFILE $FSN 64";;
    fsread:node)     echo "node $PEER_DIR/node/fsread.js readFile $FSFILE $FSN 64";;
    fsread_orc:node) echo "node $PEER_DIR/node/fsread.js orc $FSFILE $FSN 64";;
    fsread:luv)      echo "$LUA $PEER_DIR/luv/fsread.lua $FSFILE $FSN 64";;
    pool1:tide)      echo "$TIDE bench/pool_noop.lua $PN 1";;
    pool64:tide)     echo "$TIDE bench/pool_noop.lua $PN 64";;
    pool1:luv)       echo "$LUA bench/luv_work.lua $PN 1";;
    pool64:luv)      echo "$LUA bench/luv_work.lua $PN 64";;
  esac
}
available() {
  case $1 in node) [ "$HAVE_NODE" = 1 ];; luv) [ "$HAVE_LUV" = 1 ];; *) true;; esac
}

# run_one WORKLOAD RUNTIME RUN: one pinned, timed-out run; records its RESULT
# fields and the peak RSS.
run_one() {
  local wl=$1 rt=$2 r=$3 cmd lf rc f v rss
  local -a PIN=("${PIN[@]}")
  case $wl in fsread*|pool*) PIN=();; esac # the pool uses both cores
  cmd=$(cmd_for "$wl" "$rt")
  lf="$OUT/logs/$wl-$rt-r$r.txt"
  echo "\$ $cmd" > "$lf.cmd"
  if [ -n "$TIMEBIN" ]; then
    timeout "$TMO" "$TIMEBIN" -f '%M' -o "$lf.time" "${PIN[@]}" $cmd > "$lf" 2>&1
  else
    timeout "$TMO" "${PIN[@]}" $cmd > "$lf" 2>&1
  fi
  rc=$?
  if ! grep -q RESULT "$lf"; then
    log "$wl $rt run $r: FAILED (exit $rc, see $lf)"; return
  fi
  for f in ms ops_per_s rss_before_kib rss_after_kib bytes_per_task; do
    v=$(result_field "$f" "$lf"); [ -n "$v" ] && add "$wl" "$rt" "$f" "$r" "$v"
  done
  v=$(sed -n 's/.*lua_heap_bytes_per_task=\([0-9.]*\).*/\1/p' "$lf"); [ -n "$v" ] && add "$wl" "$rt" lua_bytes_per_task "$r" "$v"
  rss=$([ -f "$lf.time" ] && grep -E '^[0-9]+$' "$lf.time" | tail -1)
  [ -n "$rss" ] && add "$wl" "$rt" maxrss_mib "$r" "$(awk -v k="$rss" 'BEGIN{printf "%.1f", k/1024}')"
  log "$wl $rt run $r: $(grep RESULT "$lf" | tail -1)${rss:+, peak RSS $rss KiB}"
}

# ---------------------------------------------------------------- header
{
  echo "## tide benchmarks ($(date -u '+%Y-%m-%d %H:%M UTC'), RUNS=$RUNS)"
  echo
  echo "Machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | sed 's/.*: //'), $(uname -sr)."
  echo "Versions: tide $("$TIDE" -v 2>/dev/null | head -1 | sed 's/^tide //');" \
       "node $([ "$HAVE_NODE" = 1 ] && node --version || echo missing);" \
       "$([ "$HAVE_LUAJIT" = 1 ] && luajit -v | sed 's/ --.*//' || echo 'luajit missing');" \
       "luv $([ "$HAVE_LUV" = 1 ] && "$LUA" -e 'io.write((require"luv").version_string())' || echo missing);" \
       "libevent $(pkg-config --modversion libevent 2>/dev/null || echo '?')."
  case $TIDE in
    /*) echo "Source: TIDE_BIN=$TIDE (${TIDE_SRC:-its source state is not known to run.sh; set TIDE_SRC to describe it}), built $(date -u -r "$TIDE" '+%Y-%m-%d %H:%M UTC')." ;;
    *) rev=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null) && \
         { git -C "$ROOT" diff --quiet HEAD -- host lua CMakeLists.txt 2>/dev/null || rev="$rev + uncommitted changes"; }
       echo "Source: commit ${rev:-unknown}; binary $TIDE built $(date -u -r "$TIDE" '+%Y-%m-%d %H:%M UTC')." ;;
  esac
  echo "Pinning: ${PIN[*]:-none} for the 1M-callback and task workloads; startup unpinned."
  echo
} >> "$TABLES"

# ---------------------------------------------------------------- measurements
for rt in node luv; do
  available "$rt" || { for wl in timers burst chain fsread fsread_orc pool1 pool64; do STATE["$wl|$rt"]=missing; done; log "$rt missing: its cells say so"; }
done
log "tide=$TIDE RUNS=$RUNS N=$N SLEEPERS=$SLEEPERS OUT=$OUT"
# Repetitions are interleaved (run 1 of everything, then run 2, ...) so slow
# drift of this noisy VM spreads over all runtimes alike.
for r in $(seq 1 "$RUNS"); do
  for wl in timers burst chain; do
    for rt in tide node luv; do
      available "$rt" && run_one "$wl" "$rt" "$r"
    done
  done
  for wl in spawn_join sleep0 sleepers; do run_one "$wl" tide "$r"; done
  for wl in fsread fsread_orc pool1 pool64; do
    for rt in tide node luv; do
      available "$rt" && [ -n "$(cmd_for "$wl" "$rt")" ] && run_one "$wl" "$rt" "$r"
    done
  done
done

# Startup: hyperfine over the empty scripts (unpinned, as the peers' workload E).
HF_CMDS=("$TIDE bench/empty.lua" "$TIDE -e ''")
[ "$HAVE_NODE" = 1 ] && HF_CMDS+=("node -e ''")
[ "$HAVE_LUAJIT" = 1 ] && HF_CMDS+=("luajit -e ''")
HF_CSV="$OUT/startup.csv"
rm -f "$HF_CSV"
declare -A START   # command -> "median min max" in ms
if command -v hyperfine >/dev/null; then
  log "startup: hyperfine -N --warmup 5 --runs 40 (${#HF_CMDS[@]} commands)"
  timeout $((10 * TMO)) hyperfine -N --warmup 5 --runs 40 --export-csv "$HF_CSV" "${HF_CMDS[@]}" \
    > "$OUT/logs/startup-hyperfine.txt" 2>&1 || log "hyperfine failed (see $OUT/logs/startup-hyperfine.txt)"
  if [ -f "$HF_CSV" ]; then
    # command,mean,stddev,median,user,system,min,max (seconds); the command may hold commas
    while IFS=$'\t' read -r c med mn mx; do
      START["$c"]="$med $mn $mx"
      add startup "$c" median_ms 1 "$med"; add startup "$c" min_ms 1 "$mn"; add startup "$c" max_ms 1 "$mx"
    done < <(awk -F, 'NR > 1 { c = $1; for (i = 2; i <= NF - 7; i++) c = c "," $i; gsub(/^"|"$/, "", c)
                  printf "%s\t%.2f\t%.2f\t%.2f\n", c, $(NF-4)*1000, $(NF-1)*1000, $NF*1000 }' "$HF_CSV")
  fi
else
  log "hyperfine missing: startup not measured"
fi

# ---------------------------------------------------------------- tables
{
  echo "### $NL callbacks: wall ms inside the process (${PIN[*]:-unpinned}; median (min–max) of $RUNS)"
  echo
  echo "| workload | tide | Node.js | LuaJIT + luv | tide / Node |"
  echo "|---|---|---|---|---|"
  for wl in timers burst chain; do
    case $wl in
      timers) d="$NL one-shot 1 ms timers (tide.after / setTimeout / uv timer)";;
      burst)  d="$NL immediates, burst (queued at once)";;
      chain)  d="$NL immediates, chain (each queues the next)";;
    esac
    printf '| %s | %s | %s | %s | %s |\n' "$d" "$(cell $wl tide ms '%.0f')" \
      "$(cell $wl node ms '%.0f')" "$(cell $wl luv ms '%.0f')" \
      "$(ratio "$(med $wl tide ms)" "$(med $wl node ms)")"
  done
  echo
  echo "### Peak RSS of those runs, MiB (/usr/bin/time %M; median (min–max))"
  echo
  echo "| workload | tide | Node.js | LuaJIT + luv |"
  echo "|---|---|---|---|"
  for wl in timers burst chain; do
    printf '| %s | %s | %s | %s |\n' "$wl" "$(cell $wl tide maxrss_mib '%.0f')" \
      "$(cell $wl node maxrss_mib '%.0f')" "$(cell $wl luv maxrss_mib '%.0f')"
  done
  echo
  echo "### Startup (hyperfine -N --warmup 5 --runs 40; unpinned)"
  echo
  echo "| command | median ms (min–max) | / node -e '' |"
  echo "|---|---|---|"
  node_med=$(echo "${START["node -e ''"]:-}" | awk '{print $1}')
  for c in "${HF_CMDS[@]}"; do
    s=${START["$c"]:-}
    if [ -z "$s" ]; then printf '| `%s` | failed | |\n' "$c"; continue; fi
    set -- $s
    rr=""; case $c in "$TIDE"*) rr=$(ratio "$1" "$node_med");; esac
    printf '| `%s` | %s (%s–%s) | %s |\n' "$c" "$1" "$2" "$3" "$rr"
  done
  [ "$HAVE_NODE" = 1 ] || echo "| \`node -e ''\` | missing | |"
  echo
  echo "### Tasks (tide only; ${PIN[*]:-unpinned}; median (min–max) of $RUNS)"
  echo
  echo "| workload | wall ms | ops/s | peak RSS MiB |"
  echo "|---|---|---|---|"
  printf '| %s | %s | %s | %s |\n' "$NL × tide.spawn + task:join" "$(cell spawn_join tide ms '%.0f')" \
    "$(cell spawn_join tide ops_per_s '%.0f')" "$(cell spawn_join tide maxrss_mib '%.0f')"
  printf '| %s | %s | %s | %s |\n' "$NL × tide.sleep(0) in one task" "$(cell sleep0 tide ms '%.0f')" \
    "$(cell sleep0 tide ops_per_s '%.0f')" "$(cell sleep0 tide maxrss_mib '%.0f')"
  echo
  echo "### The worker pool (unpinned; median (min–max) of $RUNS), ops/s"
  echo
  echo "| workload | tide | Node.js | LuaJIT + luv | tide / Node | tide / luv |"
  echo "|---|---|---|---|---|---|"
  printf '| %s | %s | %s | %s | %s | %s |\n' "$FSNL reads of a 4 KiB file, 64 at once (read_file / fs.readFile / open+read+close)" \
    "$(cell fsread tide ops_per_s '%.0f')" "$(cell fsread node ops_per_s '%.0f')" "$(cell fsread luv ops_per_s '%.0f')" \
    "$(ratio "$(med fsread tide ops_per_s)" "$(med fsread node ops_per_s)")" \
    "$(ratio "$(med fsread tide ops_per_s)" "$(med fsread luv ops_per_s)")"
  printf '| %s | | %s | | | |\n' "the same with Node's fs.open/read/close" "$(cell fsread_orc node ops_per_s '%.0f')"
  printf '| %s | %s | | %s | | %s |\n' "$PNL empty pool round trips, one at a time (pool.noop / uv.new_work)" \
    "$(cell pool1 tide ops_per_s '%.0f')" "$(cell pool1 luv ops_per_s '%.0f')" \
    "$(ratio "$(med pool1 tide ops_per_s)" "$(med pool1 luv ops_per_s)")"
  printf '| %s | %s | | %s | | %s |\n' "$PNL empty pool round trips, 64 at once" \
    "$(cell pool64 tide ops_per_s '%.0f')" "$(cell pool64 luv ops_per_s '%.0f')" \
    "$(ratio "$(med pool64 tide ops_per_s)" "$(med pool64 luv ops_per_s)")"
  echo
  echo "### $SLEEPERS tasks sleeping at once (VmRSS before / after creating them, after a full GC)"
  echo
  echo "| RSS before KiB | RSS after KiB | bytes / task (RSS) | bytes / task (Lua heap) |"
  echo "|---|---|---|---|"
  printf '| %s | %s | %s | %s |\n' "$(cell sleepers tide rss_before_kib '%.0f')" "$(cell sleepers tide rss_after_kib '%.0f')" \
    "$(cell sleepers tide bytes_per_task '%.0f')" "$(cell sleepers tide lua_bytes_per_task '%.0f')"
  echo
  echo "### Targets"
  echo
  echo "| target | measured (medians) | met? |"
  echo "|---|---|---|"
  verdict() { [ -z "$1" ] && { echo "unknown"; return; }; awk -v x="$1" -v lim="$2" 'BEGIN{ print (x + 0 <= lim + 0) ? "**met**" : "**missed**" }'; }
  verdict_lt() { [ -z "$1" ] && { echo "unknown"; return; }; awk -v x="$1" -v lim="$2" 'BEGIN{ print (x + 0 < lim + 0) ? "**met**" : "**missed**" }'; }
  for wl in timers burst chain; do
    rr=$(ratio "$(med $wl tide ms)" "$(med $wl node ms)"); [ "$rr" = n/a ] && rr=""
    printf '| %s %s ≤ 0.5 × Node | tide %s ms / node %s ms = %s | %s |\n' "$NL" \
      "$(case $wl in timers) echo timers;; *) echo "immediates ($wl)";; esac)" \
      "$(med $wl tide ms || echo '?')" "$(med $wl node ms || echo '?')" "${rr:-n/a}" "$(verdict "$rr" 0.5)"
  done
  sm=$(echo "${START["$TIDE -e ''"]:-}" | awk '{print $1}')
  printf "| \`tide -e ''\` startup < 5 ms | %s ms | %s |\n" "${sm:-?}" "$(verdict_lt "$sm" 5)"
  bp=$(med sleepers tide bytes_per_task || true)
  printf '| %s sleeping tasks < 1 KiB RSS each | %s bytes/task | %s |\n' "$SLEEPERS" "${bp:-?}" "$(verdict_lt "$bp" 1024)"
  ft=$(med fsread tide ops_per_s || true); fn=$(med fsread node ops_per_s || true); fl=$(med fsread luv ops_per_s || true)
  rr=$(ratio "$fn" "$ft"); [ "$rr" = n/a ] && rr=""
  printf '| %s read_file ≥ 2 × Node fs.readFile | tide %s / node %s ops/s | %s |\n' "$FSNL" "${ft:-?}" "${fn:-?}" "$(verdict "$rr" 0.5)"
  rr=$(ratio "$fl" "$ft"); [ "$rr" = n/a ] && rr=""
  printf '| %s read_file ahead of luv open/read/close | tide %s / luv %s ops/s | %s |\n' "$FSNL" "${ft:-?}" "${fl:-?}" "$(verdict_lt "$rr" 1)"
  echo
} >> "$TABLES"

echo
cat "$TABLES"
log "every run: $RES; logs: $OUT/logs"
