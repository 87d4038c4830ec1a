#!/bin/sh
# spec/fuzz/http_seeds.sh DIR - the seed corpus of spec/fuzz/http_fuzz.c:
# valid requests, responses and chunked bodies, and the hostile requests
# of spec/http_hostile_spec.lua, one file each.
set -eu
DIR=${1:?usage: http_fuzz_seeds.sh DIR}
mkdir -p "$DIR"
i=0
seed() { i=$((i + 1)); printf "$1" > "$DIR/seed-$i"; }
seed 'GET / HTTP/1.1\r\nHost: a\r\n\r\n'
seed 'GET /a/b?x=1&y=%%20 HTTP/1.1\r\nHost: example.org\r\nUser-Agent: curl/8\r\nAccept: */*\r\nCookie: a=b; c=d\r\n\r\n'
seed 'POST /up HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\nhello'
seed 'PUT / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n0\r\nX-Sum: 5\r\n\r\n'
seed 'GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\nGET /2 HTTP/1.0\r\n\r\n'
seed 'OPTIONS * HTTP/1.1\r\nHost: [::1]:8080\r\nConnection: close\r\n\r\n'
seed 'HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc'
seed 'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n'
seed 'HTTP/1.0 302 Found\r\nLocation: /a\r\n\r\n'
seed 'a;x=y\r\n0123456789\r\n0\r\n\r\n'
seed 'POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n'
seed 'POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd'
seed 'POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +3\r\n\r\nabc'
seed 'POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0x3\r\nabc\r\n0\r\n\r\n'
seed 'POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n'
seed 'POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n'
seed 'GET / HTTP/1.1\r\nHost: a\r\nX-A: one\r\n two\r\n\r\n'
seed 'GET / HTTP/1.1\nHost: a\n\n'
seed 'GET / HTTP/1.1\r\nHost: a\r\nX-A : b\r\n\r\n'
seed 'GET / HTTP/1.1\r\nHost: a\r\nX-A: b\rc\r\n\r\n'
seed 'GET / HTTP/2.0\r\nHost: a\r\n\r\n'
echo "$i seeds in $DIR"
