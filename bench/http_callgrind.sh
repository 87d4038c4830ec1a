#!/usr/bin/env bash
# bench/http_callgrind.sh - instructions per keep-alive HTTP request of a
# server, counted by valgrind's callgrind: a deterministic figure on a
# machine too noisy for CPU times (docs/benchmarks.md, "HTTP hello world").
#
# usage: bench/http_callgrind.sh SERVER-COMMAND...   (the port is appended)
#   e.g. bench/http_callgrind.sh build/tide bench/http_hello.lua
#
# bench/http_count.c (built here with cc) makes NC connections that each
# send ROUNDS requests one after the other, then close. The server runs
# under callgrind twice, with ROUNDS1 and ROUNDS2, and the difference of
# the two instruction counts over the difference in requests leaves out
# start-up and shutdown. Environment: NC (default 1: one connection, one
# event per loop iteration, repeatable to about 1 %), ROUNDS1 (2000),
# ROUNDS2 (10000), OUT (default /tmp/tide-http-callgrind). User-space
# instructions only: the kernel's share of a request is the system calls
# (count them with strace -c).
set -u
HERE=$(cd "$(dirname "$0")" && pwd)
NC=${NC:-1}; ROUNDS1=${ROUNDS1:-2000}; ROUNDS2=${ROUNDS2:-10000}
OUT=${OUT:-/tmp/tide-http-callgrind}
[ $# -ge 1 ] || { echo "usage: $0 SERVER-COMMAND..." >&2; exit 2; }
command -v valgrind >/dev/null || { echo "valgrind is not installed" >&2; exit 1; }
mkdir -p "$OUT"
CLIENT="$OUT/http_count"
if [ ! -x "$CLIENT" ] || [ "$HERE/http_count.c" -nt "$CLIENT" ]; then
  cc -O2 -Wall -o "$CLIENT" "$HERE/http_count.c" || exit 1
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
  if ! timeout 600 "$CLIENT" "$port" "$NC" "$rounds" > "$OUT/client.$rounds.log" 2>&1; then
    echo "the client failed (see $OUT/client.$rounds.log)" >&2
    kill "$vp"; wait "$vp"; return 1
  fi
  kill -TERM "$vp"; wait "$vp" # (callgrind writes its counts as the server ends)
  sed -n 's/^summary: //p' "$file"
}
a=$(count "$ROUNDS1" "$@") || exit 1
b=$(count "$ROUNDS2" "$@") || exit 1
rts=$(( (ROUNDS2 - ROUNDS1) * NC ))
echo "RESULT ir_per_request=$(( (b - a) / rts )) requests=$rts nc=$NC ir1=$a ir2=$b"
