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
#   NET=1             the network workloads (the peers' B and F); NET=0 skips
#                     them (and the C build) for a quick run
#   DUR=10            seconds per echo-client run (workload echo)
#   IDLE_CONNS=10000  idle connections held open (workload idle)
#   PROC=1            process.run{"true"} x1000, 8 at a time, beside Node's
#                     execFile (bench/process_run.sh); PROC=0 skips it
#   HTTP=1            the HTTP hello world (bench/http_run.sh: wrk against
#                     tide.http, Node.js and nginx + Lua); HTTP=0 skips it
#   CLI_CPU=1         CPU of the C load generators; the servers use CPU
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
NET=${NET:-1}
DUR=${DUR:-10}
IDLE_CONNS=${IDLE_CONNS:-10000}
CLI_CPU=${CLI_CPU:-1}

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
HAVE_LUV_ECHO=0; [ "$HAVE_LUV" = 1 ] && [ -f "$PEER_DIR/luv/echo_server.lua" ] && HAVE_LUV_ECHO=1
HAVE_NODE_ECHO=0; [ "$HAVE_NODE" = 1 ] && [ -f "$PEER_DIR/node/echo_server.js" ] && HAVE_NODE_ECHO=1

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
CPIN=(taskset -c "$CLI_CPU")   # the load generators of echo / idle
if ! taskset -c "$CLI_CPU" true 2>/dev/null; then log "taskset -c $CLI_CPU unavailable: load generators not pinned"; CPIN=(); fi

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
    # servers of workloads echo / idle (the peers' B / F), on 127.0.0.1:$PORT;
    # tide's echo server parks every connection's task in conn:read(), so it
    # serves the idle workload too
    echo:tide|idle:tide) echo "$TIDE bench/echo_server.lua $PORT";;
    echo:c|idle:c)       echo "$CBUILD/echo_server $PORT";;
    echo:luv|idle:luv)   echo "$LUA $PEER_DIR/luv/echo_server.lua $PORT";;
    echo:node|idle:node) echo "node $PEER_DIR/node/echo_server.js $PORT";;
  esac
}
available() {
  case $1 in node) [ "$HAVE_NODE" = 1 ];; luv) [ "$HAVE_LUV" = 1 ];; c) [ "$HAVE_C" = 1 ];; *) true;; esac
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

# ---------------------------------------------------------------- network workloads
# echo (the peers' B): TCP echo ping-pong, 50 connections x 64 bytes for DUR s,
# the server pinned to CPU, the C client (echo_client) to CLI_CPU; server CPU
# per round-trip from /proc/PID/stat. idle (the peers' F): conn_hold opens
# IDLE_CONNS connections and holds them; VmRSS of the server before and 3 s
# after they are all established. Loopback only; every process is started in
# the background, bounded by `timeout`, and stopped by its own pid.
CBUILD="$OUT/cbuild"
HAVE_C=0
build_c() {
  local f ok=1
  mkdir -p "$CBUILD"
  for f in echo_server echo_client conn_hold; do
    if [ ! -x "$CBUILD/$f" ] || [ "$PEER_DIR/c/$f.c" -nt "$CBUILD/$f" ]; then
      timeout "$TMO" gcc -O2 -Wall -o "$CBUILD/$f" "$PEER_DIR/c/$f.c" -levent > "$OUT/logs/cbuild-$f.txt" 2>&1 \
        || { log "gcc of $PEER_DIR/c/$f.c failed (see $OUT/logs/cbuild-$f.txt)"; ok=0; }
    fi
  done
  [ "$ok" = 1 ] && HAVE_C=1
  # the load generators are needed by every peer
  [ -x "$CBUILD/echo_client" ] && [ -x "$CBUILD/conn_hold" ]
}
CLK_TCK=$(getconf CLK_TCK)
# ticks PID FIELDS -> CPU clock ticks of the process (all threads): utime (14) + stime (15)
cpu_ticks() { sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | awk '{print $12 + $13}'; }
usr_ticks() { sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | awk '{print $12}'; }
vmrss() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status" 2>/dev/null; }
# per_op T0 T1 OPS -> microseconds of CPU per op
per_op() { awk -v a="$1" -v b="$2" -v n="$3" -v hz="$CLK_TCK" 'BEGIN{ if (a == "" || b == "" || n <= 0) exit; printf "%.2f", 1e6 * (b - a) / hz / n }'; }
port_free() { ! ss -Htan "( sport = :$1 or dport = :$1 )" | grep -q .; }
NEXT_PORT=18190
SRV_PID=""; CLI_PID=""
# start_server WL RT LOG -> SRV_PID, SRV_PORT (the server listening), or 1
start_server() {
  local cmd i
  SRV_PID=""
  for i in $(seq 1 50); do
    NEXT_PORT=$((NEXT_PORT + 1)); [ "$NEXT_PORT" -gt 18390 ] && NEXT_PORT=18191
    port_free "$NEXT_PORT" && break
  done
  SRV_PORT=$NEXT_PORT
  cmd=$(PORT=$SRV_PORT; cmd_for "$1" "$2")
  echo "\$ $cmd" > "$3.cmd"
  # a hard limit on every server, too: TMO beyond the time its workload needs
  ( ulimit -n "$NOFILE" 2>/dev/null; exec timeout "$((TMO + DUR + 60))" "${PIN[@]}" $cmd ) > "$3" 2>&1 &
  SRV_PID=$!
  for i in $(seq 1 100); do
    ss -Hltn "sport = :$SRV_PORT" | grep -q . && { sleep 0.3; return 0; }
    kill -0 "$SRV_PID" 2>/dev/null || break
    sleep 0.1
  done
  log "$1 $2: server did not listen on 127.0.0.1:$SRV_PORT (see $3)"
  stop_server; return 1
}
# stop_pid PID: TERM, up to 5 s, then KILL; reaps it
stop_pid() {
  [ -n "$1" ] || return 0
  local i
  kill "$1" 2>/dev/null
  for i in $(seq 1 50); do kill -0 "$1" 2>/dev/null || break; sleep 0.1; done
  kill -9 "$1" 2>/dev/null
  wait "$1" 2>/dev/null
}
# `timeout` runs the server as its child: measure that child, not timeout itself
server_pid() { local c; c=$(ps -o pid= --ppid "$1" 2>/dev/null | head -1 | tr -d ' '); echo "${c:-$1}"; }
# stop_server: the server itself (timeout's child) first, then its timeout
stop_server() { [ -n "$SRV_PID" ] || return 0; stop_pid "$(server_pid "$SRV_PID")"; stop_pid "$SRV_PID"; SRV_PID=""; }
cleanup_net() { stop_pid "$CLI_PID"; CLI_PID=""; stop_server; }
trap cleanup_net EXIT
trap 'cleanup_net; exit 130' INT TERM
# file descriptors for IDLE_CONNS connections (server and conn_hold), within the hard limit
NOFILE=$(( IDLE_CONNS + 1024 ))
HARD=$(ulimit -Hn); [ "$HARD" != unlimited ] && [ "$NOFILE" -gt "$HARD" ] && NOFILE=$HARD

# echo_one RT RUN
echo_one() {
  local rt=$1 r=$2 lf sp t0 t1 u0 u1 n rps us uus pct
  lf="$OUT/logs/echo-$rt-r$r.txt"
  start_server echo "$rt" "$lf.server" || return
  sp=$(server_pid "$SRV_PID")
  # 1 s warm-up (JITs, buffers), not measured
  timeout $((TMO)) "${CPIN[@]}" "$CBUILD/echo_client" "$SRV_PORT" 50 1 64 > "$lf.warmup" 2>&1
  t0=$(cpu_ticks "$sp"); u0=$(usr_ticks "$sp")
  timeout $((DUR + 30)) "${CPIN[@]}" "$CBUILD/echo_client" "$SRV_PORT" 50 "$DUR" 64 > "$lf" 2>&1
  t1=$(cpu_ticks "$sp"); u1=$(usr_ticks "$sp")
  stop_server
  rps=$(result_field rps "$lf"); n=$(result_field roundtrips "$lf")
  if [ -z "$rps" ] || [ -z "$t1" ]; then log "echo $rt run $r: FAILED (see $lf, $lf.server)"; return; fi
  us=$(per_op "$t0" "$t1" "$n"); uus=$(per_op "$u0" "$u1" "$n")
  pct=$(awk -v a="$t0" -v b="$t1" -v s="$(result_field seconds "$lf")" -v hz="$CLK_TCK" 'BEGIN{ if (s > 0) printf "%.0f", 100 * (b - a) / hz / s }')
  add echo "$rt" rtps "$r" "$rps"
  [ -n "$us" ] && add echo "$rt" srv_us_per_rt "$r" "$us"
  [ -n "$uus" ] && add echo "$rt" srv_user_us_per_rt "$r" "$uus"
  [ -n "$pct" ] && add echo "$rt" srv_cpu_pct "$r" "$pct"
  log "echo $rt run $r: $rps rt/s, server CPU ${pct}% ${us} us/rt (user $uus)"
}
# idle_one RT RUN
idle_one() {
  local rt=$1 r=$2 lf sp r0 r1 est i per open
  lf="$OUT/logs/idle-$rt-r$r.txt"
  start_server idle "$rt" "$lf.server" || return
  sp=$(server_pid "$SRV_PID")
  sleep 1
  r0=$(vmrss "$sp")
  # hold 120 s at most; it is stopped (by pid) as soon as the RSS is read
  ( ulimit -n "$NOFILE" 2>/dev/null; exec timeout 150 "${CPIN[@]}" "$CBUILD/conn_hold" "$SRV_PORT" "$IDLE_CONNS" 120 ) > "$lf" 2>&1 &
  CLI_PID=$!
  for i in $(seq 1 600); do grep -q '^OPEN' "$lf" && break; kill -0 "$CLI_PID" 2>/dev/null || break; sleep 0.1; done
  for i in $(seq 1 100); do
    est=$(ss -Htn state established "( sport = :$SRV_PORT )" | wc -l)
    [ "$est" -ge "$IDLE_CONNS" ] && break; sleep 0.1
  done
  sleep 3
  r1=$(vmrss "$sp")
  est=$(ss -Htn state established "( sport = :$SRV_PORT )" | wc -l)
  open=$(sed -n 's/^OPEN \([0-9]*\).*/\1/p' "$lf")
  stop_pid "$CLI_PID"; CLI_PID=""
  stop_server
  if [ -z "$r0" ] || [ -z "$r1" ] || [ "${open:-0}" -lt "$IDLE_CONNS" ] || [ "$est" -lt "$IDLE_CONNS" ]; then
    log "idle $rt run $r: FAILED (RSS '$r0' -> '$r1' KiB, OPEN ${open:-none}, $est established; see $lf, $lf.server)"; return
  fi
  per=$(awk -v a="$r0" -v b="$r1" -v n="$IDLE_CONNS" 'BEGIN{ printf "%.2f", (b - a) / n }')
  add idle "$rt" rss_before_kib "$r" "$r0"; add idle "$rt" rss_after_kib "$r" "$r1"
  add idle "$rt" kib_per_conn "$r" "$per"; add idle "$rt" established "$r" "$est"
  log "idle $rt run $r: $r0 -> $r1 KiB, $per KiB/conn, $est established"
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
  echo "Pinning: ${PIN[*]:-none} for the 1M-callback and task workloads$([ "$NET" = 1 ] && echo " and the echo / idle servers (load generators: ${CPIN[*]:-unpinned})"); startup unpinned."
  echo
} >> "$TABLES"

# ---------------------------------------------------------------- measurements
for rt in node luv; do
  available "$rt" || { for wl in timers burst chain fsread fsread_orc pool1 pool64; do STATE["$wl|$rt"]=missing; done; log "$rt missing: its cells say so"; }
done
NETRT=""
if [ "$NET" = 1 ]; then
  if build_c; then
    NETRT="tide c luv node"
    [ "$HAVE_C" = 1 ] || { STATE["echo|c"]=missing; STATE["idle|c"]=missing; }
    [ "$HAVE_LUV_ECHO" = 1 ] || { STATE["echo|luv"]=missing; STATE["idle|luv"]=missing; }
    [ "$HAVE_NODE_ECHO" = 1 ] || { STATE["echo|node"]=missing; STATE["idle|node"]=missing; }
  else
    log "the C load generators did not build: echo / idle skipped"
  fi
fi
net_ok() { case $1 in tide) true;; c) [ "$HAVE_C" = 1 ];; luv) [ "$HAVE_LUV_ECHO" = 1 ];; node) [ "$HAVE_NODE_ECHO" = 1 ];; esac; }
log "tide=$TIDE RUNS=$RUNS N=$N SLEEPERS=$SLEEPERS NET=$NET DUR=$DUR IDLE_CONNS=$IDLE_CONNS OUT=$OUT"
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
  for rt in $NETRT; do net_ok "$rt" && echo_one "$rt" "$r"; done
  for rt in $NETRT; do net_ok "$rt" && idle_one "$rt" "$r"; done
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
  if [ -n "$NETRT" ]; then
    IL=$(echo "$IDLE_CONNS" | sed ':a;s/\B[0-9]\{3\}\>/,&/;ta')
    echo "### TCP echo: 50 connections × 64-byte ping-pong, ${DUR} s (server ${PIN[*]:-unpinned}, C echo_client ${CPIN[*]:-unpinned}; median (min–max) of $RUNS)"
    echo
    echo "Server CPU = utime+stime of the server process over the run (/proc/PID/stat). One client core against one server core: round-trips/s can be client-bound, CPU µs per round-trip is not."
    echo
    echo "| server | round-trips/s | server CPU % | server CPU µs / round-trip | of which user | tide / peer (µs/rt) |"
    echo "|---|---|---|---|---|---|"
    tu=$(med echo tide srv_us_per_rt || true)
    for rt in tide c luv node; do
      case $rt in tide) d="tide (bench/echo_server.lua)";; c) d="C libevent bufferevent (c/echo_server.c)";;
                  luv) d="LuaJIT + luv (luv/echo_server.lua)";; node) d="Node.js (node/echo_server.js)";; esac
      rr=""; [ "$rt" != tide ] && rr=$(ratio "$tu" "$(med echo $rt srv_us_per_rt)")
      printf '| %s | %s | %s | %s | %s | %s |\n' "$d" "$(cell echo $rt rtps '%.0f')" "$(cell echo $rt srv_cpu_pct '%.0f')" \
        "$(cell echo $rt srv_us_per_rt '%.2f')" "$(cell echo $rt srv_user_us_per_rt '%.2f')" "$rr"
    done
    echo
    echo "### $IL idle TCP connections (conn_hold; VmRSS of the server before / 3 s after all are established; median (min–max) of $RUNS)"
    echo
    echo "| server | RSS before KiB | RSS after KiB | KiB / connection | tide / peer |"
    echo "|---|---|---|---|---|"
    tk=$(med idle tide kib_per_conn || true)
    for rt in tide c luv node; do
      case $rt in tide) d="tide (bench/echo_server.lua: a task parked in conn:read() per connection)";; c) d="C libevent bufferevent";;
                  luv) d="LuaJIT + luv";; node) d="Node.js";; esac
      rr=""; [ "$rt" != tide ] && rr=$(ratio "$tk" "$(med idle $rt kib_per_conn)")
      printf '| %s | %s | %s | %s | %s |\n' "$d" "$(cell idle $rt rss_before_kib '%.0f')" "$(cell idle $rt rss_after_kib '%.0f')" \
        "$(cell idle $rt kib_per_conn '%.2f')" "$rr"
    done
    echo
  fi
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
  if [ -n "$NETRT" ]; then
    eu=$(med echo tide srv_us_per_rt || true); el=$(med echo luv srv_us_per_rt || true)
    rr=$(ratio "$eu" "$el"); [ "$rr" = n/a ] && rr=""
    printf "| TCP echo server CPU per round-trip ≤ luv's | tide %s / luv %s µs = %s | %s |\n" "${eu:-?}" "${el:-?}" "${rr:-n/a}" "$(verdict "$rr" 1)"
    ik=$(med idle tide kib_per_conn || true)
    printf '| %s idle connections ≤ 1.5 KiB RSS each | %s KiB/connection | %s |\n' "$IL" "${ik:-?}" "$(verdict "$ik" 1.5)"
  fi
  echo
} >> "$TABLES"

# ---------------------------------------------------------------- processes
if [ "${PROC:-1}" = 1 ]; then
  log "process: bench/process_run.sh (process.run beside Node's execFile)"
  TIDE_BIN="$TIDE" RUNS="$RUNS" "$HERE/process_run.sh" >> "$TABLES"
fi

# ---------------------------------------------------------------- HTTP hello world
# (the peers' workload A; bench/http_run.sh measures and writes its section)
if [ "${HTTP:-1}" = 1 ] && [ "$NET" = 1 ]; then
  log "http: bench/http_run.sh (tide.http, Node.js, nginx + Lua under wrk)"
  TIDE_BIN="$TIDE" PEER_DIR="$PEER_DIR" RUNS="$RUNS" DUR="$DUR" CPU="$CPU" \
    CLI_CPU="$CLI_CPU" OUT="$OUT" "$HERE/http_run.sh" >> "$TABLES"
fi

echo
cat "$TABLES"
log "every run: $RES; logs: $OUT/logs"
