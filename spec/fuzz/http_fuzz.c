/*
 * spec/fuzz/http_fuzz.c - a libFuzzer harness for tide.http's parser
 * (modules/http.c, built in here), under ASan and UBSan. Each input goes
 * through every entry point the server and the client use, and the
 * invariants of spec/c/check_http.c are checked: results of the
 * documented shape, positions inside the buffer, and every proper prefix
 * of an accepted request head reported as incomplete.
 *
 *   CC=clang cmake -S . -B build-fuzz -DTIDE_FUZZ=ON -DFUZZ_SECONDS=600
 *   cmake --build build-fuzz --target fuzz-http
 *
 * (the target builds this file with clang -fsanitize=fuzzer,address,
 * undefined, writes the seed corpus with spec/fuzz/http_seeds.sh into
 * build-fuzz/http-corpus and runs the fuzzer on it)
 *
 * The results of a run are recorded in docs/http.md ("The parser").
 */
#include <lualib.h>
#include <stdint.h>
#include <stdlib.h>

#include "../../modules/http.c"

static lua_State *FL;

static void die(const char *what) {
  fprintf(stderr, "invariant broken: %s\n", what);
  abort();
}

/* Calls fn(buf, pos, a, b, c) (nargs of a, b, c): the number of results,
 * from index *base + 1. */
static int fcall(const char *fn, const uint8_t *d, size_t n, long pos, int nargs,
                 double a, double b, double c, int *base) {
  *base = lua_gettop(FL);
  lua_getfield(FL, 1, fn);
  lua_pushlstring(FL, (const char *)d, n);
  lua_pushinteger(FL, pos);
  if (nargs > 0) lua_pushnumber(FL, a);
  if (nargs > 1) lua_pushnumber(FL, b);
  if (nargs > 2) lua_pushnumber(FL, c);
  if (lua_pcall(FL, 2 + nargs, LUA_MULTRET, 0) != 0) die(lua_tostring(FL, -1));
  return lua_gettop(FL) - *base;
}

static void shape(int base, int n, int next_at, size_t len) {
  if (lua_isnil(FL, base + 1)) {
    if (n < 2 || !lua_isstring(FL, base + n)) die("an error without a message");
  } else if (lua_isboolean(FL, base + 1)) {
    if (lua_toboolean(FL, base + 1) && n != 1) die("a bad boolean result");
  } else if (next_at) {
    lua_Integer next = lua_tointeger(FL, base + next_at);
    if (next < 1 || (size_t)next > len + 1) die("a position outside the buffer");
  }
}

int LLVMFuzzerTestOneInput(const uint8_t *d, size_t n) {
  int base, k;
  if (!FL) {
    FL = luaL_newstate();
    luaL_openlibs(FL);
    tide__open_http(FL);
  }
  k = fcall("parse_request", d, n, 1, 3, 8192, 16384, 100, &base);
  shape(base, k, 5, n);
  if (k == 8) { /* accepted: its prefixes are incomplete */
    size_t end = (size_t)lua_tointeger(FL, base + 5) - 1, i;
    int b2;
    lua_settop(FL, base);
    for (i = 0; i < end; i++) {
      fcall("parse_request", d, i, 1, 3, 8192, 16384, 100, &b2);
      if (!lua_isboolean(FL, b2 + 1) || lua_toboolean(FL, b2 + 1))
        die("a prefix of an accepted head was not incomplete");
      lua_settop(FL, b2);
    }
  }
  lua_settop(FL, base);
  k = fcall("parse_request", d, n, 1, 3, 64, 128, 4, &base); /* small limits */
  shape(base, k, 5, n);
  lua_settop(FL, base);
  k = fcall("parse_response", d, n, 1, 2, 65536, 200, 0, &base);
  shape(base, k, 5, n);
  lua_settop(FL, base);
  k = fcall("parse_trailers", d, n, 1, 2, 16384, 100, 0, &base);
  shape(base, k, 2, n);
  lua_settop(FL, base);
  k = fcall("chunk_size", d, n, 1, 0, 0, 0, 0, &base);
  shape(base, k, 2, n);
  lua_settop(FL, base);
  k = fcall("scan_chunks", d, n, 1, 3, 1048576, 16384, 100, &base);
  if (k != 1 && k != 3) die("scan_chunks: a bad result");
  lua_settop(FL, base);
  if (n > 0) { /* and from a position inside */
    k = fcall("parse_request", d, n, 1 + (long)(d[0] % (n + 1)), 3, 8192, 16384, 100, &base);
    shape(base, k, 5, n);
    lua_settop(FL, base);
  }
  if ((n & 63) == 0) lua_gc(FL, LUA_GCSTEP, 0);
  return 0;
}
