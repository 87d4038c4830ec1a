#!/bin/sh
# spec/install/install_embed.sh BUILD_DIR SOURCE_DIR - the installed
# library, as a user outside the source tree gets it:
#   1. cmake --install into a temporary prefix: the command, libtide.so
#      (with its soname), libtide.a, tide.h (and no internal header), and
#      tide.pc;
#   2. pkg-config finds tide there (PKG_CONFIG_PATH only) and its flags
#      point into the prefix;
#   3. a copy of examples/embed, outside the source tree, builds with its
#      own CMakeLists.txt against the installed pkg-config file, and runs;
#   4. the same program links the static library with
#      `pkg-config --static`, and runs without libtide.so;
#   5. the installed command runs a script that uses the plugins module.
# Set TIDE_SANITIZE=ON when the library was built with the sanitizers.
set -eu
build=$(cd "$1" && pwd)
src=$(cd "$2" && pwd)
tmp=$(mktemp -d /tmp/tide-install-XXXXXX)
trap 'rm -rf "$tmp"' EXIT
prefix="$tmp/prefix"

fail() { echo "install test: $*" >&2; exit 1; }

san=""
if [ "${TIDE_SANITIZE:-OFF}" = "ON" ]; then
  san="-fsanitize=address,undefined"
  export ASAN_OPTIONS="detect_leaks=0"
fi

# 1. install
cmake --install "$build" --prefix "$prefix" >/dev/null
test -x "$prefix/bin/tide" || fail "no bin/tide"
test -f "$prefix/include/tide.h" || fail "no include/tide.h"
test ! -e "$prefix/include/internal.h" || fail "internal.h installed"
pc=$(find "$prefix" -name tide.pc)
test -n "$pc" || fail "no tide.pc"
libdir=$(dirname "$(dirname "$pc")")
test -f "$libdir/libtide.a" || fail "no libtide.a in $libdir"
so=$(ls "$libdir"/libtide.so.*.*.* 2>/dev/null | head -n 1)
test -n "$so" || fail "no versioned libtide.so in $libdir"
soname=$(objdump -p "$so" | awk '/SONAME/ {print $2}')
test "$soname" = "libtide.so.0" || fail "soname is '$soname'"
test -L "$libdir/libtide.so" || fail "no libtide.so link"

# 2. pkg-config, from the prefix only
export PKG_CONFIG_PATH="$libdir/pkgconfig"
cflags=$(pkg-config --cflags tide) || fail "pkg-config --cflags tide"
libs=$(pkg-config --libs tide) || fail "pkg-config --libs tide"
echo "pkg-config --cflags --libs tide: $cflags $libs"
case "$cflags" in *"$prefix"*) ;; *) fail "cflags do not point into the prefix: $cflags" ;; esac
case "$cflags" in *luajit*) ;; *) fail "cflags lack LuaJIT's headers: $cflags" ;; esac
case "$libs" in *-ltide*) ;; *) fail "libs lack -ltide: $libs" ;; esac
test "$(pkg-config --modversion tide)" = "$(sed -n 's/^#define TIDE_VERSION "\(.*\)"/\1/p' "$prefix/include/tide.h")" ||
  fail "tide.pc and tide.h disagree on the version"

# 3. examples/embed, outside the source tree, with its own CMakeLists.txt
cp -r "$src/examples/embed" "$tmp/embed"
cmake -S "$tmp/embed" -B "$tmp/embed-build" -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_C_FLAGS="$san" -DCMAKE_EXE_LINKER_FLAGS="$san" >/dev/null ||
  fail "configuring examples/embed"
cmake --build "$tmp/embed-build" >/dev/null || fail "building examples/embed"
out=$(cd "$tmp/embed" && LD_LIBRARY_PATH="$libdir" timeout 20 \
      "$tmp/embed-build/service" -d plugins -m "hello" -m "later 10 done" \
      -m "stats" 2>"$tmp/err") || { cat "$tmp/err" >&2; fail "the service failed"; }
echo "$out"
echo "$out" | grep -q "^greet: hello, cli!$" || fail "no greeting in: $out"
echo "$out" | grep -q "^later: done$" || fail "no delayed reply in: $out"
echo "$out" | grep -q '^stats: {.*"handled":3' || fail "no stats in: $out"
ldd "$tmp/embed-build/service" | grep -q "libtide.so.0 => $libdir" ||
  fail "the example does not use the installed libtide.so"

# 4. static: libtide.a and the private dependencies from pkg-config --static
static_libs=$(pkg-config --static --libs tide | sed 's/-ltide//')
cc $san -o "$tmp/service-static" "$src/examples/embed/service.c" \
  $(pkg-config --cflags tide) "$libdir/libtide.a" $static_libs \
  $(pkg-config --libs libevent_core) || fail "static link"
if ldd "$tmp/service-static" | grep -q libtide; then fail "static build uses libtide.so"; fi
out=$(cd "$tmp/embed" && timeout 20 "$tmp/service-static" -d plugins -m "hello there" 2>"$tmp/err") ||
  { cat "$tmp/err" >&2; fail "the static service failed"; }
test "$out" = "greet: hello, there!" || fail "static service said: $out"

# 5. the installed command
out=$(LD_LIBRARY_PATH="$libdir" timeout 20 "$prefix/bin/tide" -e \
  "print(type(require('tide.plugin').load))") || fail "installed tide failed"
test "$out" = "function" || fail "installed tide said: $out"
echo "install test: ok"
