#!/usr/bin/env bash
# bench/http_run.sh - HTTP/1.1 keep-alive hello world (workload A of
# ../shared/bench): tide.http (bench/http_hello.lua) beside Node.js
# (node/http_hello.js) and nginx + Lua (bench/http_nginx.sh), each under
# `wrk -t1 -cC -dDUR --latency`, the server pinned to CPU and wrk to
# CLI_CPU. Server CPU per request = utime+stime of the server process (all
# its threads; nginx: its worker) over the run, from /proc/PID/stat.
# bench/run.sh runs it (HTTP=1); alone: bench/http_run.sh
#
# Environment: TIDE_BIN (default ../build/tide), PEER_DIR (../shared/bench),
# RUNS=3, DUR=10, CONNS="50 1 1000", CPU=0, CLI_CPU=1, OUT=/tmp/tide-bench,
# RUNTIMES="tide node nginx", IDLE_CONNS=10000 (0: no idle section).
# Prints a markdown section on stdout; logs under $OUT/logs/http-*.
#
# The idle section: IDLE_CONNS keep-alive connections held open, the
# server's VmRSS before and after over their count, twice: connections
# that sent nothing ($PEER_DIR/c/conn_hold.c, the peers' workload F) and
# connections that each made 2 requests first (bench/http_count.c with
# HOLD), the server's input buffers and request state then having been
# used.
set -u
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
TIDE_BIN=${TIDE_BIN:-$ROOT/build/tide}
PEER_DIR=${PEER_DIR:-$ROOT/../shared/bench}
RUNS=${RUNS:-3}
DUR=${DUR:-10}
CONNS=${CONNS:-"50 1 1000"}
CPU=${CPU:-0}
CLI_CPU=${CLI_CPU:-1}
OUT=${OUT:-/tmp/tide-bench}
RUNTIMES=${RUNTIMES:-"tide node nginx"}
IDLE_CONNS=${IDLE_CONNS:-10000}
CLK_TCK=$(getconf CLK_TCK)
mkdir -p "$OUT/logs"
cd "$ROOT" || exit 1

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

command -v wrk >/dev/null || { log "wrk missing (apt-get install wrk): HTTP workload skipped"; exit 0; }

cmd_for() {
  case $1 in
    tide)  echo "$TIDE_BIN bench/http_hello.lua $2";;
    node)  command -v node >/dev/null && [ -f "$PEER_DIR/node/http_hello.js" ] &&
             echo "node $PEER_DIR/node/http_hello.js $2";;
    nginx) command -v nginx >/dev/null && echo "$HERE/http_nginx.sh $2";;
  esac
}

ticks() { sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | awk '{print $12 + $13}'; }
port_free() { ! ss -Hltn "sport = :$1" | grep -q .; }

declare -A V # "rt|conns|metric" -> values
add() { V["$1|$2|$3"]="${V["$1|$2|$3"]:-} $4"; }
median() {
  printf '%s\n' $1 | sort -g | awk '{a[NR]=$1} END { if (NR == 0) { print ""; exit }
    m = (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2; print m }'
}
cell() {
  local v=${V["$1|$2|$3"]:-} f=$4
  [ -z "$v" ] && { echo "n/a"; return; }
  local s; s=$(printf '%s\n' $v | sort -g | awk '{a[NR]=$1} END {
    m = (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2
    printf "%s %s %s", m, a[1], a[NR] }')
  set -- $s
  if [ "$2" = "$3" ]; then printf "$f" "$1"; else printf "$f ($f–$f)" "$1" "$2" "$3"; fi
}

PORT=18400
# one_run RT CONNS RUN
one_run() {
  local rt=$1 c=$2 r=$3 cmd pid wpid lf t0 t1 out rps n p99 us
  cmd=$(cmd_for "$rt" 0) || true
  [ -z "$cmd" ] && return
  while ! port_free "$PORT"; do PORT=$((PORT + 1)); done
  cmd=$(cmd_for "$rt" "$PORT")
  lf="$OUT/logs/http-$rt-c$c-r$r"
  ( ulimit -n 20000 2>/dev/null; exec timeout $((DUR + 60)) taskset -c "$CPU" $cmd ) > "$lf.server" 2>&1 &
  pid=$!
  for _ in $(seq 1 100); do ss -Hltn "sport = :$PORT" | grep -q . && break; sleep 0.1; done
  sleep 0.3
  wpid=$(ps -o pid= --ppid "$pid" | head -1 | tr -d ' ')
  [ "$rt" = nginx ] && [ -n "$wpid" ] && wpid=$(ps -o pid= --ppid "$wpid" | head -1 | tr -d ' ')
  [ -z "$wpid" ] && wpid=$pid
  ( ulimit -n 20000 2>/dev/null; exec taskset -c "$CLI_CPU" wrk -t1 -c"$c" -d2s "http://127.0.0.1:$PORT/" ) > "$lf.warmup" 2>&1
  t0=$(ticks "$wpid")
  ( ulimit -n 20000 2>/dev/null; exec taskset -c "$CLI_CPU" wrk -t1 -c"$c" -d"$DUR"s --latency "http://127.0.0.1:$PORT/" ) > "$lf.wrk" 2>&1
  t1=$(ticks "$wpid")
  kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null
  PORT=$((PORT + 1))
  out=$(cat "$lf.wrk")
  rps=$(awk '/^Requests\/sec/ {print $2}' <<<"$out")
  n=$(awk '/requests in/ {print $1}' <<<"$out")
  p99=$(awk '$1 == "99%" { v = $2; if (v ~ /us$/) { sub(/us$/, "", v); v /= 1000 }
             else if (v ~ /ms$/) sub(/ms$/, "", v); else if (v ~ /s$/) { sub(/s$/, "", v); v *= 1000 }
             printf "%.2f", v }' <<<"$out")
  if [ -z "$rps" ] || [ -z "$n" ] || [ -z "$t1" ]; then log "http $rt -c$c run $r: FAILED (see $lf.*)"; return; fi
  us=$(awk -v a="$t0" -v b="$t1" -v n="$n" -v hz="$CLK_TCK" 'BEGIN{ printf "%.2f", 1e6 * (b - a) / hz / n }')
  add "$rt" "$c" rps "$rps"; add "$rt" "$c" p99 "$p99"; add "$rt" "$c" us "$us"
  grep -qE 'Socket errors|Non-2xx' "$lf.wrk" && log "http $rt -c$c: $(grep -E 'Socket errors|Non-2xx' "$lf.wrk" | tr -s ' ')"
  log "http $rt -c$c run $r: $rps req/s, p99 $p99 ms, server CPU $us µs/req"
}

for r in $(seq 1 "$RUNS"); do
  for c in $CONNS; do
    for rt in $RUNTIMES; do one_run "$rt" "$c" "$r"; done
  done
done

# idle: per-connection VmRSS of idle keep-alive connections
vmrss() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status" 2>/dev/null; }
HOLD_BIN="$OUT/conn_hold"; COUNT_BIN="$OUT/http_count"
build_idle() {
  [ "$IDLE_CONNS" -gt 0 ] 2>/dev/null || return 1
  if [ ! -x "$HOLD_BIN" ] || [ "$PEER_DIR/c/conn_hold.c" -nt "$HOLD_BIN" ]; then
    gcc -O2 -o "$HOLD_BIN" "$PEER_DIR/c/conn_hold.c" > "$OUT/logs/http-idle-build.txt" 2>&1 || return 1
  fi
  if [ ! -x "$COUNT_BIN" ] || [ "$HERE/http_count.c" -nt "$COUNT_BIN" ]; then
    gcc -O2 -o "$COUNT_BIN" "$HERE/http_count.c" >> "$OUT/logs/http-idle-build.txt" 2>&1 || return 1
  fi
}
# idle_run RT KIND (KIND: silent | used) -> adds "RT|KIND|idle" KiB per connection
idle_run() {
  local rt=$1 kind=$2 cmd pid wpid hp lf r0 r1 i
  cmd=$(cmd_for "$rt" 0) || true
  [ -z "$cmd" ] && return
  while ! port_free "$PORT"; do PORT=$((PORT + 1)); done
  cmd=$(cmd_for "$rt" "$PORT")
  lf="$OUT/logs/http-idle-$rt-$kind"
  ( ulimit -n $((IDLE_CONNS + 1000)) 2>/dev/null; exec timeout 120 taskset -c "$CPU" $cmd ) > "$lf.server" 2>&1 &
  pid=$!
  for _ in $(seq 1 100); do ss -Hltn "sport = :$PORT" | grep -q . && break; sleep 0.1; done
  sleep 0.5
  wpid=$(ps -o pid= --ppid "$pid" | head -1 | tr -d ' ')
  [ "$rt" = nginx ] && [ -n "$wpid" ] && wpid=$(ps -o pid= --ppid "$wpid" | head -1 | tr -d ' ')
  [ -z "$wpid" ] && wpid=$pid
  r0=$(vmrss "$wpid")
  if [ "$kind" = silent ]; then
    ( ulimit -n $((IDLE_CONNS + 100)) 2>/dev/null; exec taskset -c "$CLI_CPU" "$HOLD_BIN" "$PORT" "$IDLE_CONNS" 30 ) > "$lf.client" 2>&1 &
  else
    ( ulimit -n $((IDLE_CONNS + 100)) 2>/dev/null; exec taskset -c "$CLI_CPU" "$COUNT_BIN" "$PORT" "$IDLE_CONNS" 2 30 ) > "$lf.client" 2>&1 &
  fi
  hp=$!
  for i in $(seq 1 300); do grep -qE '^(OPEN|HOLDING)' "$lf.client" && break; sleep 0.1; done
  # the server has taken them all once its count of established ones is there
  for i in $(seq 1 100); do
    [ "$(ss -Htn state established "( sport = :$PORT )" | wc -l)" -ge "$IDLE_CONNS" ] && break
    sleep 0.1
  done
  sleep 2
  r1=$(vmrss "$wpid")
  kill "$hp" 2>/dev/null; wait "$hp" 2>/dev/null
  kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null
  PORT=$((PORT + 1))
  if ! grep -qE '^(OPEN|HOLDING)' "$lf.client" || [ -z "$r0" ] || [ -z "$r1" ]; then
    log "http idle $rt $kind: FAILED (see $lf.*)"; return
  fi
  add "$rt" "$kind" idle "$(awk -v a="$r0" -v b="$r1" -v n="$IDLE_CONNS" 'BEGIN{ printf "%.2f", (b - a) / n }')"
  log "http idle $rt $kind: VmRSS $r0 -> $r1 KiB for $IDLE_CONNS connections"
}
if build_idle; then
  for rt in $RUNTIMES; do idle_run "$rt" silent; idle_run "$rt" used; done
fi

name() {
  case $1 in
    tide) echo "tide (bench/http_hello.lua, tide.http)";;
    node) echo "Node.js $(node --version 2>/dev/null) (node/http_hello.js)";;
    nginx) echo "nginx $(nginx -v 2>&1 | sed 's#.*/##') + Lua (nginx/nginx.conf.in)";;
  esac
}
echo "### HTTP/1.1 keep-alive hello world (wrk -t1 -dDUR=${DUR}s --latency; server taskset -c $CPU, wrk taskset -c $CLI_CPU; median (min–max) of $RUNS)"
echo
echo "| server | connections | requests/s | p99 ms | server CPU µs / request |"
echo "|---|---|---|---|---|"
for c in $CONNS; do
  for rt in $RUNTIMES; do
    [ "$RUNS" -gt 0 ] 2>/dev/null || continue # (RUNS=0: the idle section only)
    printf '| %s | %s | %s | %s | %s |\n' "$(name "$rt")" "$c" "$(cell "$rt" "$c" rps '%.0f')" \
      "$(cell "$rt" "$c" p99 '%.2f')" "$(cell "$rt" "$c" us '%.2f')"
  done
done
echo
tr=$(median "${V["tide|50|rps"]:-}"); nr=$(median "${V["node|50|rps"]:-}"); xr=$(median "${V["nginx|50|rps"]:-}")
tu=$(median "${V["tide|50|us"]:-}"); xu=$(median "${V["nginx|50|us"]:-}"); nu=$(median "${V["node|50|us"]:-}")
ratio() { [ -n "$1" ] && [ -n "$2" ] && awk -v a="$1" -v b="$2" 'BEGIN{ printf "%.2f", a / b }' || echo "n/a"; }
echo "At 50 connections: tide / Node requests/s = $(ratio "$tr" "$nr"), tide / nginx = $(ratio "$tr" "$xr");" \
     "server CPU per request tide / Node = $(ratio "$tu" "$nu"), tide / nginx = $(ratio "$tu" "$xu")."
echo
if [ -n "${V["tide|silent|idle"]:-}${V["tide|used|idle"]:-}" ]; then
  echo "Idle keep-alive connections ($IDLE_CONNS; VmRSS after − before, over the count): KiB per connection"
  echo
  echo "| server | sent nothing (conn_hold) | after 2 requests each (http_count) |"
  echo "|---|---|---|"
  for rt in $RUNTIMES; do
    printf '| %s | %s | %s |\n' "$(name "$rt")" "$(cell "$rt" silent idle '%.2f')" "$(cell "$rt" used idle '%.2f')"
  done
  echo
fi
