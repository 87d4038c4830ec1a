/*
 * bench/http_parsers.c - the evidence behind tide.http's choice of parser
 * (docs/http.md, "The parser"): tide's own (modules/http.c, built in here)
 * beside Debian's libhttp-parser 2.9.4 (strict build), on
 *
 *   1. the hostile requests of spec/http_hostile_spec.lua that a parser
 *      alone can see: which does each one accept;
 *   2. speed: a typical browser-sized request and wrk's small one, parsed
 *      N times. tide's parser is timed as tide runs it, called from Lua's
 *      C API and building the Lua strings and headers table; http_parser
 *      with empty callbacks, the least any use of it would cost.
 *
 *   apt-get install libhttp-parser-dev   (for this comparison only: tide
 *                                         does not link it)
 *   cc -O2 -Ihost -Imodules bench/http_parsers.c -o /tmp/http_parsers \
 *      $(pkg-config --cflags --libs luajit) -lhttp_parser && /tmp/http_parsers
 */
#define _GNU_SOURCE
#include <http_parser.h>
#include <lualib.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "../modules/http.c"

typedef struct { const char *name, *req; size_t len; } hcase;
#define C(n, s) {n, s, sizeof(s) - 1}

static const hcase cases[] = {
  C("Content-Length with Transfer-Encoding", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
  C("differing duplicate Content-Length", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd"),
  C("Content-Length +3", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +3\r\n\r\nabc"),
  C("Content-Length 0x3", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0x3\r\n\r\nabc"),
  C("Content-Length with an inner space", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1 2\r\n\r\nabc"),
  C("chunk size 0x3", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0x3\r\nabc\r\n0\r\n\r\n"),
  C("chunk size -0", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n-0\r\n\r\n"),
  C("chunk size with a trailing space", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3 \r\nabc\r\n0\r\n\r\n"),
  C("Transfer-Encoding chunked, gzip", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n"),
  C("Transfer-Encoding chunked twice", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n"),
  C("Transfer-Encoding xchunked", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n"),
  C("Transfer-Encoding on HTTP/1.0", "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
  C("obs-fold", "GET / HTTP/1.1\r\nHost: a\r\nX-A: one\r\n two\r\n\r\n"),
  C("bare LF line endings", "GET / HTTP/1.1\nHost: a\n\n"),
  C("bare LF after a field", "GET / HTTP/1.1\r\nHost: a\nX-A: b\r\n\r\n"),
  C("bare CR in a value", "GET / HTTP/1.1\r\nHost: a\r\nX-A: b\rc\r\n\r\n"),
  C("NUL in a value", "GET / HTTP/1.1\r\nHost: a\r\nX-A: b\0c\r\n\r\n"),
  C("control character in a value", "GET / HTTP/1.1\r\nHost: a\r\nX-A: b\1c\r\n\r\n"),
  C("DEL in a value", "GET / HTTP/1.1\r\nHost: a\r\nX-A: b\177c\r\n\r\n"),
  C("space before the colon", "GET / HTTP/1.1\r\nHost: a\r\nX-A : b\r\n\r\n"),
  C("empty header name", "GET / HTTP/1.1\r\nHost: a\r\n: b\r\n\r\n"),
  C("HTTP/1.1 without Host", "GET / HTTP/1.1\r\nX-A: b\r\n\r\n"),
  C("two Host fields", "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"),
  C("HTTP/2.0", "GET / HTTP/2.0\r\nHost: a\r\n\r\n"),
  C("HTTP/1.2", "GET / HTTP/1.2\r\nHost: a\r\n\r\n"),
  C("two spaces after the method", "GET  / HTTP/1.1\r\nHost: a\r\n\r\n"),
};

static int on_any_cb(http_parser *p) { (void)p; return 0; }
static int on_any_data(http_parser *p, const char *at, size_t n) { (void)p; (void)at; (void)n; return 0; }

/* 1: http_parser accepted the whole message (its head and body) */
static int hp_accepts(const char *s, size_t len) {
  http_parser p;
  http_parser_settings st;
  size_t n;
  memset(&st, 0, sizeof st);
  st.on_message_begin = st.on_headers_complete = st.on_message_complete = on_any_cb;
  st.on_url = st.on_header_field = st.on_header_value = st.on_body = on_any_data;
  http_parser_init(&p, HTTP_REQUEST);
  n = http_parser_execute(&p, &st, s, len);
  return n == len && HTTP_PARSER_ERRNO(&p) == HPE_OK;
}

static lua_State *L;

/* tide's status for s: 0 accepted (head, and any buffered chunked body),
 * or the status it answers */
static int tide_status(const char *s, size_t len) {
  int top = lua_gettop(L), r;
  lua_getfield(L, 1, "parse_request");
  lua_pushlstring(L, s, len);
  lua_pushinteger(L, 1);
  lua_pushnumber(L, 8192);
  lua_pushnumber(L, 16384);
  lua_pushnumber(L, 100);
  lua_call(L, 5, 8);
  if (lua_isnil(L, top + 1)) {
    r = (int)lua_tointeger(L, top + 2);
  } else {
    r = 0;
    if (lua_tointeger(L, top + 6) == BODY_CHUNKED) {
      lua_Integer next = lua_tointeger(L, top + 5);
      lua_settop(L, top);
      lua_getfield(L, 1, "scan_chunks");
      lua_pushlstring(L, s, len);
      lua_pushinteger(L, next);
      lua_pushnumber(L, 1048576);
      lua_pushnumber(L, 16384);
      lua_pushnumber(L, 100);
      lua_call(L, 5, 3);
      if (lua_isnil(L, top + 1)) r = (int)lua_tointeger(L, top + 2);
    }
  }
  lua_settop(L, top);
  return r;
}

static double seconds(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static void bench(const char *what, const char *req, size_t len, int n) {
  double t0, t_tide, t_hp;
  int i;
  http_parser p;
  http_parser_settings st;
  lua_getfield(L, 1, "parse_request");
  lua_pushlstring(L, req, len); /* the buffer stays one Lua string, as in tide */
  t0 = seconds();
  for (i = 0; i < n; i++) {
    lua_pushvalue(L, -2);
    lua_pushvalue(L, -2);
    lua_pushinteger(L, 1);
    lua_pushnumber(L, 8192);
    lua_pushnumber(L, 16384);
    lua_pushnumber(L, 100);
    lua_call(L, 5, 8);
    lua_pop(L, 8);
    if ((i & 1023) == 0) lua_gc(L, LUA_GCSTEP, 0);
  }
  t_tide = seconds() - t0;
  lua_pop(L, 2);
  memset(&st, 0, sizeof st);
  st.on_message_begin = st.on_headers_complete = st.on_message_complete = on_any_cb;
  st.on_url = st.on_header_field = st.on_header_value = st.on_body = on_any_data;
  t0 = seconds();
  for (i = 0; i < n; i++) {
    http_parser_init(&p, HTTP_REQUEST);
    if (http_parser_execute(&p, &st, req, len) != len) { puts("http_parser failed"); return; }
  }
  t_hp = seconds() - t0;
  printf("| %s (%zu bytes) | %.0f | %.0f |\n", what, len, 1e9 * t_tide / n, 1e9 * t_hp / n);
}

int main(void) {
  size_t i;
  int hp_bad = 0, tide_bad = 0;
  static const char browser[] =
      "GET /articles/2024/http-parsers?utm_source=feed&ref=home HTTP/1.1\r\n"
      "Host: www.example.org\r\n"
      "User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:120.0) Gecko/20100101 Firefox/120.0\r\n"
      "Accept: text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8\r\n"
      "Accept-Language: en-US,en;q=0.5\r\n"
      "Accept-Encoding: gzip, deflate, br\r\n"
      "Connection: keep-alive\r\n"
      "Cookie: session=4f1c2e9a8b7d6c5e; theme=dark; consent=yes\r\n"
      "Upgrade-Insecure-Requests: 1\r\n"
      "Sec-Fetch-Dest: document\r\n"
      "Sec-Fetch-Mode: navigate\r\n"
      "Sec-Fetch-Site: none\r\n"
      "If-None-Match: \"5f3a-1b2c\"\r\n\r\n";
  static const char small[] = "GET / HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n\r\n";
  L = luaL_newstate();
  luaL_openlibs(L);
  tide__open_http(L);
  printf("| hostile request | http_parser 2.9.4 (strict) | tide |\n|---|---|---|\n");
  for (i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    int a = hp_accepts(cases[i].req, cases[i].len), t = tide_status(cases[i].req, cases[i].len);
    hp_bad += a;
    tide_bad += t == 0;
    printf("| %s | %s | %s |\n", cases[i].name, a ? "**accepted**" : "rejected",
           t == 0 ? "**accepted**" : (t == 501 ? "501" : t == 400 ? "400" : "other"));
  }
  printf("\naccepted: http_parser %d of %zu, tide %d of %zu\n\n", hp_bad,
         sizeof cases / sizeof cases[0], tide_bad, sizeof cases / sizeof cases[0]);
  printf("| request | tide ns/parse (with the Lua strings and table) | http_parser ns/parse (empty callbacks) |\n|---|---|---|\n");
  bench("browser-like, 13 fields", browser, sizeof browser - 1, 1000000);
  bench("wrk's, 1 field", small, sizeof small - 1, 2000000);
  lua_close(L);
  return 0;
}
