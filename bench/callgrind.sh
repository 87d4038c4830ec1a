#!/usr/bin/env bash
# bench/callgrind.sh KIND SERVER-COMMAND... - user-space instructions per
# operation of a server, counted by valgrind's callgrind: a deterministic
# figure on a machine too noisy for CPU times (docs/benchmarks.md).
#
#   KIND echo: round trips of MSG bytes (bench/echo_count.c), "TCP echo"
#   KIND http: keep-alive requests (bench/http_count.c), "HTTP hello world"
#
# usage: bench/callgrind.sh KIND SERVER-COMMAND...   (the port is appended)
#   e.g. bench/callgrind.sh echo build/tide bench/echo_server.lua
#        bench/callgrind.sh echo luajit ../shared/bench/luv/echo_server.lua
#        bench/callgrind.sh http build/tide bench/http_hello.lua
#
# The client (built here with cc) makes NC connections that each do ROUNDS
# operations one after the other, then close. The server runs under
# callgrind twice, with ROUNDS1 and ROUNDS2, and the difference of the two
# instruction counts over the difference in operations leaves out start-up
# and shutdown. Environment: NC (default 1: one connection, one event per
# loop iteration: the count repeats to about 1 %; with 50 the batching of
# events varies between runs), ROUNDS1 (2000), ROUNDS2 (10000), MSG (echo
# only, 64), OUT (default /tmp/tide-callgrind-KIND). The kernel's share of
# an operation is the system calls (count them with strace -c).
set -u
HERE=$(cd "$(dirname "$0")" && pwd)
[ $# -ge 2 ] || { echo "usage: $0 echo|http SERVER-COMMAND..." >&2; exit 2; }
KIND=$1
shift
case $KIND in
  echo) MSG=${MSG:-64}; CLIENT_SRC=echo_count; CLIENT_ARGS=("$MSG"); UNIT=roundtrip;;
  http) CLIENT_SRC=http_count; CLIENT_ARGS=(); UNIT=request;;
  *) echo "KIND must be echo or http, not $KIND" >&2; exit 2;;
esac
NC=${NC:-1}; ROUNDS1=${ROUNDS1:-2000}; ROUNDS2=${ROUNDS2:-10000}
OUT=${OUT:-/tmp/tide-callgrind-$KIND}
command -v valgrind >/dev/null || { echo "valgrind is not installed" >&2; exit 1; }
mkdir -p "$OUT"
CLIENT="$OUT/$CLIENT_SRC"
if [ ! -x "$CLIENT" ] || [ "$HERE/$CLIENT_SRC.c" -nt "$CLIENT" ]; then
  cc -O2 -Wall -o "$CLIENT" "$HERE/$CLIENT_SRC.c" || exit 1
fi
port_free() { ! ss -Htan "( sport = :$1 or dport = :$1 )" | grep -q .; }
# one ROUNDS: prints the program's total instruction count
count() {
  local rounds=$1 port i vp file
  shift
  for i in $(seq 1 50); do port=$((19000 + RANDOM % 1000)); port_free "$port" && break; done
  file="$OUT/callgrind.out.$rounds.$$"
  timeout 600 valgrind --tool=callgrind --callgrind-out-file="$file" "$@" "$port" \
    > "$OUT/server.$rounds.log" 2>&1 &
  vp=$!
  for i in $(seq 1 300); do
    ss -Hltn "sport = :$port" | grep -q . && break
    kill -0 "$vp" 2>/dev/null || { echo "the server did not start (see $OUT/server.$rounds.log)" >&2; return 1; }
    sleep 0.1
  done
  if ! timeout 600 "$CLIENT" "$port" "$NC" "$rounds" "${CLIENT_ARGS[@]}" \
       > "$OUT/client.$rounds.log" 2>&1; then
    echo "the client failed (see $OUT/client.$rounds.log)" >&2
    kill "$vp"; wait "$vp"; return 1
  fi
  kill -TERM "$vp"; wait "$vp" # (callgrind writes its counts as the server ends)
  sed -n 's/^summary: //p' "$file"
}
a=$(count "$ROUNDS1" "$@") || exit 1
b=$(count "$ROUNDS2" "$@") || exit 1
ops=$(( (ROUNDS2 - ROUNDS1) * NC ))
echo "RESULT ir_per_$UNIT=$(( (b - a) / ops )) ${UNIT}s=$ops nc=$NC ir1=$a ir2=$b"
