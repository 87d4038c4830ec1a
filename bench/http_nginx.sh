#!/bin/sh
# bench/http_nginx.sh PORT - the nginx + Lua peer of the HTTP hello world
# (../shared/bench/nginx): Debian's nginx with libnginx-mod-http-lua and
# its LuaJIT extracted under $NGX by ../shared/bench/nginx/setup.sh (never
# installed: that package would remove the LuaJIT tide builds against).
# Runs nginx in the foreground, one worker, on 127.0.0.1:PORT.
set -eu
PORT=${1:?usage: http_nginx.sh PORT}
HERE=$(cd "$(dirname "$0")" && pwd)
PEER_DIR=${PEER_DIR:-$HERE/../../shared/bench}
NGX=${NGX:-/tmp/ngxlua}
command -v nginx >/dev/null || { echo "nginx is not installed (apt-get install nginx libnginx-mod-http-ndk)" >&2; exit 2; }
NGX=$NGX sh "$PEER_DIR/nginx/setup.sh" >/dev/null 2>&1 || { echo "$PEER_DIR/nginx/setup.sh failed" >&2; exit 2; }
mkdir -p "$NGX/conf" "$NGX/logs" "$NGX/tmp"
sed -e "s#@NGX@#$NGX#g" -e "s#@PORT@#$PORT#g" "$PEER_DIR/nginx/nginx.conf.in" > "$NGX/conf/nginx-$PORT.conf"
sed -i "s#^pid .*#pid $NGX/nginx-$PORT.pid;#" "$NGX/conf/nginx-$PORT.conf"
exec env LD_LIBRARY_PATH="$NGX/root/usr/lib/x86_64-linux-gnu" \
  nginx -p "$NGX/" -e "$NGX/logs/error.log" -c "$NGX/conf/nginx-$PORT.conf" -g 'daemon off;'
