/*
 * spec/c/check_http.c - the HTTP message parser of modules/http.c
 * ("tide.http.c"), tested with libcheck through the Lua functions it
 * exports, in a bare lua_State (the parser needs no host).
 *
 * Unit tests pin what the parser returns for valid heads and which
 * status each malformed one gets; the fuzz test feeds it mutated
 * requests and responses (deterministic seed, bounded count; run under
 * ASan+UBSan by the sanitizer build) and checks the invariants that keep
 * the server safe: no crash, a result of the documented shape, `next`
 * inside the buffer, and every proper prefix of an accepted head
 * reported as incomplete, never as another message.
 */
#define _GNU_SOURCE
#include <check.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <lualib.h>

#include "internal.h"

int tide__open_http(lua_State *L);

static lua_State *L;
static int mod; /* index of the module table */

static void setup(void) {
  L = luaL_newstate();
  luaL_openlibs(L);
  ck_assert_int_eq(tide__open_http(L), 1);
  mod = lua_gettop(L);
}

static void teardown(void) { lua_close(L); }

/* Calls mod[fn](buf, pos, args...) leaving its results from index base+1;
 * returns the number of results. */
static int call(const char *fn, const char *buf, size_t len, long pos,
                const double *args, int nargs, int *base) {
  int i, top;
  *base = lua_gettop(L);
  lua_getfield(L, mod, fn);
  lua_pushlstring(L, buf, len);
  lua_pushinteger(L, pos);
  for (i = 0; i < nargs; i++) lua_pushnumber(L, args[i]);
  ck_assert_int_eq(lua_pcall(L, 2 + nargs, LUA_MULTRET, 0), 0);
  top = lua_gettop(L);
  return top - *base;
}

static const double REQ_LIMITS[] = {8192, 16384, 100};

/* parse_request on s: the status of an error, 0 when accepted, -1 when
 * incomplete. */
static int request_status(const char *s, size_t len) {
  int base, n = call("parse_request", s, len, 1, REQ_LIMITS, 3, &base), r;
  if (lua_isnil(L, base + 1)) r = (int)lua_tointeger(L, base + 2);
  else if (lua_toboolean(L, base + 1)) r = 0;
  else r = -1;
  (void)n;
  lua_settop(L, base);
  return r;
}

#define STATUS(s) request_status(s, sizeof(s) - 1)

START_TEST(test_valid_request) {
  static const char req[] = "\r\nPOST /a/b?x=1 HTTP/1.1\r\nHost: example\r\n"
                            "Content-Length: 5\r\nX-Two: a\r\nx-two:  b \r\n"
                            "Connection: close\r\nExpect: 100-continue\r\n\r\nhello";
  int base, n = call("parse_request", req, sizeof req - 1, 1, REQ_LIMITS, 3, &base);
  ck_assert_int_eq(n, 8);
  ck_assert_str_eq(lua_tostring(L, base + 1), "POST");
  ck_assert_str_eq(lua_tostring(L, base + 2), "/a/b?x=1");
  ck_assert_int_eq(lua_tointeger(L, base + 3), 1);
  lua_getfield(L, base + 4, "x-two");
  ck_assert_str_eq(lua_tostring(L, -1), "a, b");
  lua_pop(L, 1);
  lua_getfield(L, base + 4, "host");
  ck_assert_str_eq(lua_tostring(L, -1), "example");
  lua_pop(L, 1);
  ck_assert_int_eq(lua_tointeger(L, base + 5), (lua_Integer)(sizeof req - 1 - 5 + 1));
  lua_getfield(L, mod, "BODY_LENGTH");
  ck_assert_int_eq(lua_tointeger(L, base + 6), lua_tointeger(L, -1));
  lua_pop(L, 1);
  ck_assert_int_eq((int)lua_tonumber(L, base + 7), 5);
  ck_assert_int_eq(lua_tointeger(L, base + 8), 1 | 4); /* F_CLOSE | F_CONTINUE */
  lua_settop(L, base);
}
END_TEST

START_TEST(test_incomplete_and_limits) {
  ck_assert_int_eq(STATUS(""), -1);
  ck_assert_int_eq(STATUS("GET / HTTP/1.1\r\nHost: a\r\n"), -1);
  ck_assert_int_eq(STATUS("GET / HTTP/1.1\r\nHost: a\r\n\r"), -1);
  ck_assert_int_eq(STATUS("GET / HTTP/1.1\r"), -1);
  ck_assert_int_eq(STATUS("GET / HTTP/1.0\r\n\r\n"), 0);
  {
    char big[9000];
    memset(big, 'a', sizeof big);
    memcpy(big, "GET /", 5);
    ck_assert_int_eq(request_status(big, sizeof big), 414); /* no line end yet */
  }
}
END_TEST

START_TEST(test_hostile_requests) {
  ck_assert_int_eq(STATUS("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"), 400);
  ck_assert_int_eq(STATUS("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n"), 400);
  ck_assert_int_eq(STATUS("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\n"), 0);
  ck_assert_int_eq(STATUS("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +3\r\n\r\n"), 400);
  ck_assert_int_eq(STATUS("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1234567890123456\r\n\r\n"), 400);
  ck_assert_int_eq(STATUS("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"), 501);
  ck_assert_int_eq(STATUS("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n"), 400);
  ck_assert_int_eq(STATUS("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: CHUNKED\r\n\r\n"), 0);
  ck_assert_int_eq(STATUS("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n"), 400);
  ck_assert_int_eq(STATUS("GET / HTTP/1.1\r\nHost: a\r\nX: 1\r\n 2\r\n\r\n"), 400);
  ck_assert_int_eq(STATUS("GET / HTTP/1.1\nHost: a\n\n"), 400);
  ck_assert_int_eq(STATUS("GET / HTTP/1.1\r\nHost: a\rX: 1\r\n\r\n"), 400);
  ck_assert_int_eq(request_status("GET / HTTP/1.1\r\nHost: a\r\nX: a\0b\r\n\r\n", 34), 400);
  ck_assert_int_eq(STATUS("GET / HTTP/1.1\r\nHost : a\r\n\r\n"), 400);
  ck_assert_int_eq(STATUS("GET / HTTP/1.1\r\n: a\r\nHost: a\r\n\r\n"), 400);
  ck_assert_int_eq(STATUS("GET / HTTP/1.1\r\n\r\n"), 400);
  ck_assert_int_eq(STATUS("GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"), 400);
  ck_assert_int_eq(STATUS("GET / HTTP/2.0\r\nHost: a\r\n\r\n"), 400);
  ck_assert_int_eq(STATUS("GET / HTTP/1.1\r\nHost: a\r\nExpect: nope\r\n\r\n"), 417);
}
END_TEST

START_TEST(test_chunk_size) {
  static const struct { const char *s; double size; int ok; } cases[] = {
      {"0\r\n", 0, 1}, {"a\r\n", 10, 1}, {"FF;ext=1\r\n", 255, 1},
      {"3 ;x\r\n", 3, 1}, {"0x3\r\n", 0, 0}, {"-0\r\n", 0, 0}, {"+3\r\n", 0, 0},
      {" 3\r\n", 0, 0}, {"3 \r\n", 0, 0}, {"3\n", 0, 0}, {"\r\n", 0, 0},
      {"1000000000000000\r\n", 0, 0}, {"3;\1\r\n", 0, 0}};
  size_t i;
  for (i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    int base;
    call("chunk_size", cases[i].s, strlen(cases[i].s), 1, NULL, 0, &base);
    if (cases[i].ok) {
      ck_assert_msg(lua_isnumber(L, base + 1), "case %s", cases[i].s);
      ck_assert(lua_tonumber(L, base + 1) == cases[i].size);
      ck_assert_int_eq(lua_tointeger(L, base + 2), (lua_Integer)strlen(cases[i].s) + 1);
    } else {
      ck_assert_msg(lua_isnil(L, base + 1), "case %s", cases[i].s);
    }
    lua_settop(L, base);
  }
  {
    int base;
    call("chunk_size", "3", 1, 1, NULL, 0, &base); /* incomplete */
    ck_assert(lua_isboolean(L, base + 1) && !lua_toboolean(L, base + 1));
    lua_settop(L, base);
  }
}
END_TEST

START_TEST(test_response) {
  static const double lim[] = {65536, 100};
  static const char res[] = "HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n";
  int base;
  call("parse_response", res, sizeof res - 1, 1, lim, 2, &base);
  ck_assert_int_eq(lua_tointeger(L, base + 1), 404);
  ck_assert_str_eq(lua_tostring(L, base + 2), "Not Found");
  lua_getfield(L, mod, "BODY_CHUNKED");
  ck_assert_int_eq(lua_tointeger(L, base + 6), lua_tointeger(L, -1));
  lua_settop(L, base);
  call("parse_response", "HTTP/1.1 200\r\n\r\n", 16, 1, lim, 2, &base);
  ck_assert_int_eq(lua_tointeger(L, base + 1), 200);
  lua_settop(L, base);
  call("parse_response", "HTTP/1.1 2x0 OK\r\n\r\n", 19, 1, lim, 2, &base);
  ck_assert(lua_isnil(L, base + 1));
  lua_settop(L, base);
}
END_TEST

/* --- fuzzing ---------------------------------------------------------------- */

static uint64_t rng = 0x9e3779b97f4a7c15ULL;
static uint32_t next_rand(void) {
  rng ^= rng << 13;
  rng ^= rng >> 7;
  rng ^= rng << 17;
  return (uint32_t)(rng >> 11);
}

static const char *const seeds[] = {
    "GET / HTTP/1.1\r\nHost: a\r\n\r\n",
    "POST /up?x=1 HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello",
    "PUT / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5;e=1\r\nhello\r\n0\r\nT: 1\r\n\r\n",
    "GET /x HTTP/1.0\r\nConnection: keep-alive\r\nAccept: */*\r\n\r\n",
    "OPTIONS * HTTP/1.1\r\nHost: [::1]:80\r\nExpect: 100-continue\r\nCookie: a=b; c=d\r\n\r\n",
    "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc",
    "HTTP/1.0 302 Found\r\nLocation: /a\r\nTransfer-Encoding: gzip\r\n\r\n",
};
static const char tokens[] = "\r\n\0 \t:;,-+0x9fF\x7f\x80";

static size_t mutate(char *out, size_t cap) {
  const char *seed = seeds[next_rand() % (sizeof seeds / sizeof seeds[0])];
  size_t len = strlen(seed), i, n = 1 + next_rand() % 6;
  memcpy(out, seed, len);
  for (i = 0; i < n; i++) {
    size_t at = len ? next_rand() % len : 0;
    switch (next_rand() % 6) {
    case 0: out[at] = (char)(next_rand() & 0xff); break;
    case 1: out[at] = tokens[next_rand() % (sizeof tokens - 1)]; break;
    case 2: /* delete a byte */
      if (len) { memmove(out + at, out + at + 1, len - at - 1); len--; }
      break;
    case 3: /* insert a byte */
      if (len < cap) {
        memmove(out + at + 1, out + at, len - at);
        out[at] = tokens[next_rand() % (sizeof tokens - 1)];
        len++;
      }
      break;
    case 4: /* duplicate a slice */
      {
        size_t sl = 1 + next_rand() % 16;
        if (at + sl <= len && len + sl <= cap) {
          memmove(out + at + sl, out + at, len - at);
          len += sl;
        }
      }
      break;
    default: len = at; /* truncate */
    }
  }
  return len;
}

static void check_shape(const char *fn, int base, int n, size_t len) {
  if (lua_isnil(L, base + 1)) {
    ck_assert_msg(n >= 2 && lua_isstring(L, base + n), "%s: error without a message", fn);
  } else if (lua_isboolean(L, base + 1)) {
    ck_assert_msg(!lua_toboolean(L, base + 1) || n == 1, "%s: bad boolean result", fn);
  } else {
    int at = strcmp(fn, "parse_trailers") == 0 ? 2
           : strcmp(fn, "chunk_size") == 0 ? 2 : 5;
    lua_Integer next = lua_tointeger(L, base + at);
    ck_assert_msg(next >= 1 && (size_t)next <= len + 1, "%s: next %ld out of range",
                  fn, (long)next);
  }
}

/* Runs the Lua chunk src with the module as its first argument and buf
 * (len bytes) as its second; leaves its results on the stack from base+1. */
static int run_lua(const char *src, const char *buf, size_t len, int *base) {
  *base = lua_gettop(L);
  ck_assert_int_eq(luaL_loadstring(L, src), 0);
  lua_pushvalue(L, mod);
  lua_pushlstring(L, buf, len);
  ck_assert_msg(lua_pcall(L, 2, LUA_MULTRET, 0) == 0, "%s", lua_tostring(L, -1));
  return lua_gettop(L) - *base;
}

/* parse_request's lazy form gives the same results, and headers() at the
 * position it gives the same table as the eager form's. */
static const char SAME_LAZY[] =
    "local H, b = ...\n"
    "local e = {H.parse_request(b, 1, 8192, 16384, 100)}\n"
    "local l = {H.parse_request(b, 1, 8192, 16384, 100, true)}\n"
    "if not e[1] then return l[1] == e[1] and l[2] == e[2] and l[3] == e[3] end\n"
    "for i = 1, 8 do if i ~= 4 and e[i] ~= l[i] then return false, 'slot ' .. i end end\n"
    "if type(l[4]) ~= 'number' then return false, 'not a position' end\n"
    "local h = H.headers(b, l[4], 100)\n"
    "if getmetatable(h) ~= H.headers_mt then return false, 'metatable' end\n"
    "for k, v in pairs(e[4]) do if h[k] ~= v then return false, k end end\n"
    "for k, v in pairs(h) do if e[4][k] ~= v then return false, k end end\n"
    "return true\n";

/* The FFI entry (parse_ffi) gives what parse_request's lazy form gives:
 * the same results, the same incomplete, the same status and message. */
static const char SAME_FFI[] =
    "local H, b, pos, ml, mh, mf = ...\n"
    "local ffi = require 'ffi'\n"
    "if not FFI_PARSE then\n"
    "  FFI_RES = ffi.new(H.parse_ffi_result)\n"
    "  FFI_PARSE = ffi.cast(ffi.typeof('int (*)(const char *, double, double, double, '\n"
    "    .. 'double, double, $ *)', ffi.typeof(FFI_RES)), H.parse_ffi)\n"
    "end\n"
    "local p = FFI_RES\n"
    "local r = FFI_PARSE(b, #b, pos, ml, mh, mf, p)\n"
    "local l = {H.parse_request(b, pos, ml, mh, mf, true)}\n"
    "if r == 0 then return l[1] == false, 'incomplete' end\n"
    "if r == -1 then\n"
    "  return l[1] == nil and l[2] == p.status and l[3] == ffi.string(p.msg), 'error'\n"
    "end\n"
    "if r ~= 1 then return false, 'result ' .. r end\n"
    "local f = {b:sub(p.m_from, p.m_to), b:sub(p.t_from, p.t_to), p.minor, p.hpos,\n"
    "           p.next, p.body, p.length, p.flags}\n"
    "for i = 1, 8 do if f[i] ~= l[i] then return false, 'slot ' .. i end end\n"
    "return true\n";

static void same_ffi(const char *buf, size_t len, long pos, const double *lim) {
  int base = lua_gettop(L), i;
  ck_assert_int_eq(luaL_loadbuffer(L, SAME_FFI, sizeof SAME_FFI - 1, "same_ffi"), 0);
  lua_pushvalue(L, mod);
  lua_pushlstring(L, buf, len);
  lua_pushinteger(L, pos);
  for (i = 0; i < 3; i++) lua_pushnumber(L, lim[i]);
  ck_assert_msg(lua_pcall(L, 6, 2, 0) == 0, "%s", lua_tostring(L, -1));
  ck_assert_msg(lua_toboolean(L, base + 1), "parse_ffi differs (%s) on %.*s",
                lua_tostring(L, base + 2), (int)len, buf);
  lua_settop(L, base);
}

START_TEST(test_fuzz) {
  static const double rlim[] = {8192, 16384, 100}, slim[] = {65536, 100},
                      clim[] = {1048576, 16384, 100};
  char buf[512];
  int iter, accepted = 0;
  for (iter = 0; iter < 30000; iter++) {
    size_t len = mutate(buf, sizeof buf);
    long pos = 1 + (long)(next_rand() % 4);
    int base, n;
    n = call("parse_request", buf, len, 1, rlim, 3, &base);
    check_shape("parse_request", base, n, len);
    {
      static const double small[] = {64, 128, 4};
      same_ffi(buf, len, 1, rlim);
      same_ffi(buf, len, pos, rlim);
      same_ffi(buf, len, 1, small);
    }
    if (lua_isstring(L, base + 1) && !lua_isnumber(L, base + 1)) {
      /* accepted: every proper prefix of the head is incomplete */
      size_t end = (size_t)lua_tointeger(L, base + 5) - 1, k;
      accepted++;
      lua_settop(L, base);
      {
        int b3;
        run_lua(SAME_LAZY, buf, len, &b3);
        ck_assert_msg(lua_toboolean(L, b3 + 1), "lazy differs: %s", lua_tostring(L, b3 + 2));
        lua_settop(L, b3);
      }
      for (k = 0; k < end; k += 1 + k / 8) {
        int b2;
        call("parse_request", buf, k, 1, rlim, 3, &b2);
        ck_assert_msg(lua_isboolean(L, b2 + 1) && !lua_toboolean(L, b2 + 1),
                      "prefix %zu of an accepted head was not incomplete", k);
        lua_settop(L, b2);
      }
    }
    lua_settop(L, base);
    n = call("parse_response", buf, len, pos, slim, 2, &base);
    check_shape("parse_response", base, n, len);
    lua_settop(L, base);
    n = call("parse_trailers", buf, len, pos, slim, 2, &base);
    check_shape("parse_trailers", base, n, len);
    lua_settop(L, base);
    n = call("chunk_size", buf, len, pos, NULL, 0, &base);
    check_shape("chunk_size", base, n, len);
    lua_settop(L, base);
    n = call("scan_chunks", buf, len, pos, clim, 3, &base);
    ck_assert(n == 1 || n == 3);
    lua_settop(L, base);
  }
  /* the mutations keep some requests valid: the accepting paths ran */
  ck_assert_int_gt(accepted, 100);
}
END_TEST

START_TEST(test_lazy_headers) {
  static const char req[] = "GET /x HTTP/1.1\r\nHost: example\r\nX-Two: a\r\n"
                            "x-two:  b \r\nAccept: */*\r\n\r\nrest";
  int base, n = call("parse_request", req, sizeof req - 1, 1, REQ_LIMITS, 3, &base);
  ck_assert_int_eq(n, 8);
  lua_settop(L, base);
  /* the position is that of the first field line */
  n = run_lua("local H, b = ... return select(4, H.parse_request(b, 1, 8192, 16384, 100, true))",
              req, sizeof req - 1, &base);
  ck_assert_int_eq(lua_tointeger(L, base + 1), (lua_Integer)(strlen("GET /x HTTP/1.1\r\n") + 1));
  lua_settop(L, base);
  n = run_lua("local H, b = ... local h = H.headers(b, 18, 100) "
              "return h['x-two'], h.host, h.accept, h['X-TWO']", req, sizeof req - 1, &base);
  ck_assert_int_eq(n, 4);
  ck_assert_str_eq(lua_tostring(L, base + 1), "a, b");
  ck_assert_str_eq(lua_tostring(L, base + 2), "example");
  ck_assert_str_eq(lua_tostring(L, base + 3), "*/*");
  ck_assert(lua_isnil(L, base + 4)); /* (the case-insensitive __index is the Lua half's) */
  lua_settop(L, base);
  n = run_lua(SAME_LAZY, req, sizeof req - 1, &base);
  ck_assert_msg(lua_toboolean(L, base + 1), "lazy differs: %s", lua_tostring(L, base + 2));
  lua_settop(L, base);
  /* a block that does not end, or a bad line: an error, not a table */
  n = run_lua("local H, b = ... local h, st = H.headers('Host: a\\r\\n', 1, 100) "
              "local h2, st2 = H.headers('Host a\\r\\n\\r\\n', 1, 100) return h, st, h2, st2",
              "", 0, &base);
  ck_assert(lua_isnil(L, base + 1));
  ck_assert_int_eq(lua_tointeger(L, base + 2), 400);
  ck_assert(lua_isnil(L, base + 3));
  ck_assert_int_eq(lua_tointeger(L, base + 4), 400);
  lua_settop(L, base);
}
END_TEST

/* The FFI functions of the response head (modules/http.c), called here
 * as the C functions they are. */
double tide__http_head_start(char *out, double cap, const char *st, double sl);
double tide__http_head_field(char *out, double cap, double at, const char *n, double nl,
                             const char *v, double vl);
double tide__http_head_end(char *out, double cap, double at, double length, int tail,
                           const char *body, double bl);

/* the date line as date_line() gives it: "Date: " IMF-fixdate CR LF */
static int date_shaped(const char *d, size_t n) {
  static const char *const days[] = {"Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"};
  static const char *const months[] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                       "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
  char want[64];
  time_t t = time(NULL), k;
  for (k = t - 2; k <= t; k++) { /* (the second may have changed since) */
    struct tm tm;
    gmtime_r(&k, &tm);
    snprintf(want, sizeof want, "Date: %s, %02d %s %04d %02d:%02d:%02d GMT\r\n",
             days[tm.tm_wday], tm.tm_mday, months[tm.tm_mon], tm.tm_year + 1900,
             tm.tm_hour, tm.tm_min, tm.tm_sec);
    if (strlen(want) == n && memcmp(want, d, n) == 0) return 1;
  }
  return 0;
}

START_TEST(test_date_line) {
  int base, n = run_lua("local H = ... return H.date_line(), H.date_line()", "", 0, &base);
  size_t len;
  const char *d = lua_tolstring(L, base + 1, &len);
  ck_assert_int_eq(n, 2);
  ck_assert_msg(date_shaped(d, len), "date line %s", d);
  lua_settop(L, base);
}
END_TEST

START_TEST(test_head_ffi) {
  char out[256];
  const char *sl = "HTTP/1.1 200 OK\r\n";
  double n = tide__http_head_start(out, sizeof out, sl, (double)strlen(sl)), m, date_len;
  char want[512];
  ck_assert(n > (double)strlen(sl));
  ck_assert_int_eq(memcmp(out, sl, strlen(sl)), 0);
  date_len = n - (double)strlen(sl);
  ck_assert(date_shaped(out + strlen(sl), (size_t)date_len));
  n = tide__http_head_field(out, sizeof out, n, "Content-Type", 12, "text/plain", 10);
  ck_assert(n > 0);
  n = tide__http_head_end(out, sizeof out, n, 11, 0, "hello world", 11);
  snprintf(want, sizeof want, "%s%.*sContent-Type: text/plain\r\nContent-Length: 11\r\n\r\n"
           "hello world", sl, (int)date_len, out + strlen(sl));
  ck_assert_int_eq((int)n, (int)strlen(want));
  ck_assert_int_eq(memcmp(out, want, strlen(want)), 0);
  /* the tails, a length of several digits, a body left out (bl < 0) */
  m = tide__http_head_end(out, sizeof out, 0, 1234567890, 1, "x", -1);
  ck_assert_int_eq((int)m, (int)strlen("Content-Length: 1234567890\r\nConnection: keep-alive\r\n\r\n"));
  ck_assert_int_eq(memcmp(out, "Content-Length: 1234567890\r\nConnection: keep-alive\r\n\r\n",
                          (size_t)m), 0);
  m = tide__http_head_end(out, sizeof out, 0, 0, 2, "", 0);
  ck_assert_int_eq((int)m, (int)strlen("Content-Length: 0\r\nConnection: close\r\n\r\n"));
  ck_assert_int_eq(memcmp(out, "Content-Length: 0\r\nConnection: close\r\n\r\n", (size_t)m), 0);
  /* headers the server frames itself, in any case: -1 */
  ck_assert(tide__http_head_field(out, sizeof out, 0, "content-LENGTH", 14, "3", 1) == -1);
  ck_assert(tide__http_head_field(out, sizeof out, 0, "Date", 4, "x", 1) == -1);
  ck_assert(tide__http_head_field(out, sizeof out, 0, "CONNECTION", 10, "close", 5) == -1);
  ck_assert(tide__http_head_field(out, sizeof out, 0, "Transfer-Encoding", 17, "chunked", 7) == -1);
  /* what a handler may not send: -2 (also before a framed name's -1) */
  ck_assert(tide__http_head_field(out, sizeof out, 0, "Bad Name", 8, "x", 1) == -2);
  ck_assert(tide__http_head_field(out, sizeof out, 0, "", 0, "x", 1) == -2);
  ck_assert(tide__http_head_field(out, sizeof out, 0, "X", 1, "a\r\nb", 4) == -2);
  ck_assert(tide__http_head_field(out, sizeof out, 0, "X", 1, "a\0b", 3) == -2);
  ck_assert(tide__http_head_field(out, sizeof out, 0, "Date", 4, "a\nb", 3) == -2);
  /* what does not fit: -3, nothing written past cap */
  memset(out, '#', sizeof out);
  ck_assert(tide__http_head_start(out, 10, sl, (double)strlen(sl)) == -3);
  ck_assert(tide__http_head_field(out, 20, 10, "X-Long", 6, "0123456789", 10) == -3);
  ck_assert(tide__http_head_end(out, 30, 10, 5, 0, "hello", 5) == -3);
  ck_assert(tide__http_head_end(out, sizeof out, 0, -1, 0, "", 0) == -3);
  ck_assert(tide__http_head_end(out, sizeof out, 0, 1, 3, "x", 1) == -3);
  ck_assert_int_eq(out[0], '#');
  /* exactly full */
  ck_assert(tide__http_head_field(out, 12, 0, "X-A", 3, "12345", 5) == 12);
  ck_assert_int_eq(memcmp(out, "X-A: 12345\r\n", 12), 0);
}
END_TEST

static Suite *http_suite(void) {
  Suite *s = suite_create("http");
  TCase *tc = tcase_create("parser");
  tcase_add_checked_fixture(tc, setup, teardown);
  tcase_set_timeout(tc, 120);
  tcase_add_test(tc, test_valid_request);
  tcase_add_test(tc, test_incomplete_and_limits);
  tcase_add_test(tc, test_hostile_requests);
  tcase_add_test(tc, test_chunk_size);
  tcase_add_test(tc, test_response);
  tcase_add_test(tc, test_fuzz);
  tcase_add_test(tc, test_lazy_headers);
  tcase_add_test(tc, test_date_line);
  tcase_add_test(tc, test_head_ffi);
  suite_add_tcase(s, tc);
  return s;
}

int main(void) {
  SRunner *sr = srunner_create(http_suite());
  int failed;
  srunner_run_all(sr, CK_NORMAL);
  failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
