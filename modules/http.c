/*
 * modules/http.c - `require "tide.http.c"`, the C half of tide.http
 * (lua/tide/http.lua is the other; docs/http.md the manual): a strict
 * HTTP/1.1 message-head parser and the chunked-coding framing, run over
 * the Lua string that holds a connection's unparsed input.
 *
 *   parse_request(buf, pos, max_line, max_head, max_fields[, lazy])
 *       -> method, target, minor, headers, next, body, length, flags
 *        | false (incomplete) | nil, status, message
 *       (lazy: headers is the position of the field lines instead, for
 *       headers(); a request whose handler never looks at its headers
 *       costs no table and no strings for them)
 *   headers(buf, pos, max_fields) -> headers | nil, status, message
 *   date_line() -> "Date: <IMF-fixdate>\r\n", formatted once a second
 *   parse_response(buf, pos, max_head, max_fields)
 *       -> status, reason, minor, headers, next, body, length, flags
 *        | false | nil, 0, message
 *   parse_trailers(buf, pos, max_head, max_fields)
 *       -> trailers, next | false | nil, status, message
 *   chunk_size(buf, pos) -> size, next | false | nil, message
 *   scan_chunks(buf, pos, max_body, max_head, max_fields)
 *       -> true | nil, status, message
 *   check_field(name, value) -> 0 | 1 (bad name) | 2 (bad value)
 *   peer_gone(stream) -> boolean: the peer closed or reset the connection
 *   idle_usable(stream) -> boolean: a pooled client connection may be reused
 *   headers_mt: the metatable of every headers table made here (the Lua
 *   half gives it its case-insensitive __index)
 *
 * and, for the server's path of every request, functions the Lua half
 * calls through the FFI (a call through the Lua C API ends the JIT's
 * trace; these are compiled into it): parse_ffi, parse_request's lazy
 * form with its results in a struct (parse_ffi_result: the struct's
 * declaration), and head_start_ffi, head_field_ffi and head_end_ffi,
 * which build the head of an answer a handler returned (see
 * tide__http_head_start). They take no lua_State.
 *
 * Positions are 1-based, as Lua's; `next` is the first byte after what
 * was parsed. `body` is BODY_NONE, BODY_LENGTH (length bytes) or
 * BODY_CHUNKED; flags are F_CLOSE (Connection: close), F_KEEPALIVE
 * (Connection: keep-alive), F_CONTINUE (Expect: 100-continue) and, in a
 * response, F_UNTIL_CLOSE (a Transfer-Encoding that is not chunked: the
 * body runs to the end of the connection).
 *
 * Header names become lower case keys; repeated fields are joined with
 * ", ". One pass over the bytes checks the grammar of RFC 9112 with no
 * leniency: a line ends with CR LF only (a bare LF or CR is an error), a
 * field line never begins with white space (obs-fold), the name is a
 * token followed at once by the colon, and a value holds no control
 * character but HT. What is let through is what request smuggling needs
 * rejected: Content-Length with Transfer-Encoding, differing lengths, a
 * length that is not plain digits, a Transfer-Encoding whose final coding
 * is not chunked (or on HTTP/1.0), HTTP/1.1 without exactly one Host.
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#include "stream.h"

enum { BODY_NONE = 0, BODY_LENGTH = 1, BODY_CHUNKED = 2 };
enum { F_CLOSE = 1, F_KEEPALIVE = 2, F_CONTINUE = 4, F_UNTIL_CLOSE = 8 };

#define MAX_DIGITS 15        /* lengths and chunk sizes stay below 2^53 */
#define MAX_CHUNK_LINE 4096  /* a chunk-size line with its extensions */
#define FIELDS_ON_STACK 128

/* byte classes */
enum { C_TOKEN = 1, C_FIELD = 2, C_TARGET = 4, C_HEX = 8 };
static unsigned char cls[256];

static void init_classes(void) {
  int c;
  const char *p;
  if (cls['a']) return;
  for (c = 0; c < 256; c++) {
    unsigned char k = 0;
    if ((c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'))
      k |= C_TOKEN;
    if (c == '\t' || (c >= 0x20 && c != 0x7f)) k |= C_FIELD; /* with obs-text */
    if (c > 0x20 && c < 0x7f) k |= C_TARGET;
    if ((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F'))
      k |= C_HEX;
    cls[c] = k;
  }
  for (p = "!#$%&'*+-.^_`|~"; *p; p++) cls[(unsigned char)*p] |= C_TOKEN;
}

#define IS(c, k) (cls[(unsigned char)(c)] & (k))

/* An error: the status to answer (0 in a response) and why. */
typedef struct perr {
  int status;
  const char *msg;
} perr;

typedef struct field {
  size_t name, nlen, val, vlen; /* offsets into the buffer */
} field;

/* What the semantic checks of the fields found. */
typedef struct meta {
  int64_t length;     /* Content-Length, or -1 */
  int te;             /* a Transfer-Encoding field was seen */
  int te_chunked;     /* times chunked appeared */
  int te_last_chunked;
  int te_other;       /* another coding appeared */
  int te_bad;         /* a malformed list */
  int hosts;
  int flags;
  int expect_bad;     /* an expectation other than 100-continue */
} meta;

static int fail(perr *e, int status, const char *msg) {
  e->status = status;
  e->msg = msg;
  return -1;
}

/* p[0..n) is lower[0..ln) in any case (ASCII; inline: most names differ
 * at their first byte, and a call of strncasecmp costs more than that) */
static inline int name_is(const char *p, size_t n, const char *lower, size_t ln) {
  size_t i;
  if (n != ln) return 0;
  for (i = 0; i < n; i++) {
    unsigned char c = (unsigned char)p[i];
    if (c >= 'A' && c <= 'Z') c = (unsigned char)(c + 32);
    if (c != (unsigned char)lower[i]) return 0;
  }
  return 1;
}

/* Content-Length: 1 to MAX_DIGITS digits, nothing else. */
static int parse_length(const char *v, size_t n, int64_t *out) {
  int64_t x = 0;
  size_t i;
  if (n == 0 || n > MAX_DIGITS) return -1;
  for (i = 0; i < n; i++) {
    if (v[i] < '0' || v[i] > '9') return -1;
    x = x * 10 + (v[i] - '0');
  }
  *out = x;
  return 0;
}

static void trim(const char *b, size_t *s, size_t *e) {
  while (*s < *e && (b[*s] == ' ' || b[*s] == '\t')) (*s)++;
  while (*e > *s && (b[*e - 1] == ' ' || b[*e - 1] == '\t')) (*e)--;
}

/* The elements of a comma-separated list, fn(element) for each. */
static void te_element(meta *m, const char *b, size_t s, size_t e) {
  size_t i, tok;
  trim(b, &s, &e);
  if (s == e) { m->te_bad = 1; return; }
  for (i = s; i < e && IS(b[i], C_TOKEN); i++) {}
  tok = i - s;
  if (tok == 0) { m->te_bad = 1; return; }
  if (name_is(b + s, tok, "chunked", 7)) {
    if (i != e) m->te_bad = 1; /* chunked takes no parameters */
    m->te_chunked++;
    m->te_last_chunked = 1;
  } else {
    m->te_other = 1;
    m->te_last_chunked = 0;
  }
}

static void conn_element(meta *m, const char *b, size_t s, size_t e) {
  trim(b, &s, &e);
  if (name_is(b + s, e - s, "close", 5)) m->flags |= F_CLOSE;
  else if (name_is(b + s, e - s, "keep-alive", 10)) m->flags |= F_KEEPALIVE;
}

static void each_element(meta *m, const char *b, size_t s, size_t e,
                         void (*fn)(meta *, const char *, size_t, size_t)) {
  size_t i, from = s;
  for (i = s; i <= e; i++) {
    if (i == e || b[i] == ',') {
      fn(m, b, from, i);
      from = i + 1;
    }
  }
}

/* The semantics of one field (both directions). */
static int field_meta(meta *m, const char *b, const field *f, perr *e) {
  const char *n = b + f->name;
  switch (f->nlen) {
  case 4:
    if (name_is(n, 4, "host", 4)) m->hosts++;
    break;
  case 6:
    if (name_is(n, 6, "expect", 6)) {
      if (name_is(b + f->val, f->vlen, "100-continue", 12)) m->flags |= F_CONTINUE;
      else m->expect_bad = 1;
    }
    break;
  case 10:
    if (name_is(n, 10, "connection", 10))
      each_element(m, b, f->val, f->val + f->vlen, conn_element);
    break;
  case 14:
    if (name_is(n, 14, "content-length", 14)) {
      int64_t len;
      if (parse_length(b + f->val, f->vlen, &len) != 0)
        return fail(e, 400, "malformed Content-Length");
      if (m->length >= 0 && m->length != len)
        return fail(e, 400, "differing Content-Length values");
      m->length = len;
    }
    break;
  case 17:
    if (name_is(n, 17, "transfer-encoding", 17)) {
      m->te = 1;
      each_element(m, b, f->val, f->val + f->vlen, te_element);
    }
    break;
  }
  return 0;
}

/* The field lines from offset i to the empty line that ends them.
 * start: where the head began (for max_head). Returns the offset after
 * the empty line, 0 when the buffer ends first, -1 on an error. */
static long parse_fields(const char *b, size_t len, size_t i, size_t start,
                         size_t max_head, int max_fields, field *fs,
                         int *nfs, perr *e) {
  int n = 0;
  for (;;) {
    const char *nl;
    size_t end, j, vs, ve, colon;
    if (i >= len) break;
    if (b[i] == '\r') {
      if (i + 1 >= len) break;
      if (b[i + 1] != '\n') return fail(e, 400, "bare CR in the header");
      if (i + 2 - start > max_head) return fail(e, 431, "header too large");
      *nfs = n;
      return (long)(i + 2);
    }
    if (b[i] == '\n') return fail(e, 400, "bare LF in the header");
    if (b[i] == ' ' || b[i] == '\t')
      return fail(e, 400, "folded header line (obs-fold)");
    nl = memchr(b + i, '\n', len - i);
    if (!nl) break;
    end = (size_t)(nl - b);
    if (end + 1 - start > max_head) return fail(e, 431, "header too large");
    if (b[end - 1] != '\r') return fail(e, 400, "bare LF in the header");
    end--; /* the CR */
    for (j = i; j < end && IS(b[j], C_TOKEN); j++) {}
    if (j == end || b[j] != ':') {
      if (j < end && (b[j] == ' ' || b[j] == '\t'))
        return fail(e, 400, "white space before a header's colon");
      return fail(e, 400, j == end ? "header line without a colon"
                                   : "invalid character in a header name");
    }
    if (j == i) return fail(e, 400, "empty header name");
    colon = j;
    vs = j + 1;
    ve = end;
    for (j = vs; j < ve; j++)
      if (!IS(b[j], C_FIELD)) return fail(e, 400, "invalid character in a header value");
    trim(b, &vs, &ve);
    if (n >= max_fields) return fail(e, 431, "too many header fields");
    fs[n].name = i;
    fs[n].nlen = colon - i;
    fs[n].val = vs;
    fs[n].vlen = ve - vs;
    n++;
    i = end + 2;
  }
  /* incomplete */
  if (len - start > max_head) return fail(e, 431, "header too large");
  return 0;
}

/* Pushes the headers table of fields fs[0..n). */
static void push_headers(lua_State *L, const char *b, const field *fs, int n) {
  int i;
  lua_createtable(L, 0, n);
  for (i = 0; i < n; i++) {
    const field *f = &fs[i];
    char small[64];
    size_t k;
    if (f->nlen <= sizeof small) {
      for (k = 0; k < f->nlen; k++) {
        char c = b[f->name + k];
        small[k] = (c >= 'A' && c <= 'Z') ? (char)(c + 32) : c;
      }
      lua_pushlstring(L, small, f->nlen);
    } else {
      luaL_Buffer lb;
      luaL_buffinit(L, &lb);
      for (k = 0; k < f->nlen; k++) {
        char c = b[f->name + k];
        luaL_addchar(&lb, (c >= 'A' && c <= 'Z') ? (char)(c + 32) : c);
      }
      luaL_pushresult(&lb);
    }
    lua_pushvalue(L, -1);
    lua_rawget(L, -3);
    if (lua_isnil(L, -1)) {
      lua_pop(L, 1);
      lua_pushlstring(L, b + f->val, f->vlen);
    } else {
      lua_pushliteral(L, ", ");
      lua_pushlstring(L, b + f->val, f->vlen);
      lua_concat(L, 3);
    }
    lua_rawset(L, -3);
  }
  lua_pushvalue(L, lua_upvalueindex(1));
  lua_setmetatable(L, -2);
}

static int push_error(lua_State *L, const perr *e) {
  lua_pushnil(L);
  lua_pushinteger(L, e->status);
  lua_pushstring(L, e->msg);
  return 3;
}

/* The common arguments: buffer, 1-based position. */
static const char *arg_buf(lua_State *L, size_t *len, size_t *pos) {
  const char *b = luaL_checklstring(L, 1, len);
  lua_Integer p = luaL_optinteger(L, 2, 1);
  if (p < 1) p = 1;
  *pos = (size_t)p - 1;
  if (*pos > *len) *pos = *len;
  return b;
}

static size_t arg_size(lua_State *L, int idx) {
  lua_Number n = luaL_checknumber(L, idx);
  if (!(n > 0)) return 0; /* (and NaN) */
  return n > 1e15 ? (size_t)1e15 : (size_t)n;
}

static int arg_fields(lua_State *L, int idx) {
  lua_Integer n = luaL_checkinteger(L, idx);
  if (n < 0 || n > 100000) luaL_argerror(L, idx, "field count out of range");
  return (int)n;
}

/* "HTTP/" DIGIT "." DIGIT at b[i..i+8): the minor version 0 or 1; -2 for
 * another version in that form; -1 for anything else. */
static int parse_version(const char *b, size_t i, size_t end) {
  if (end - i != 8 || memcmp(b + i, "HTTP/", 5) != 0 || b[i + 6] != '.' ||
      b[i + 5] < '0' || b[i + 5] > '9' || b[i + 7] < '0' || b[i + 7] > '9')
    return -1;
  if (b[i + 5] != '1' || (b[i + 7] != '0' && b[i + 7] != '1')) return -2;
  return b[i + 7] - '0';
}

typedef struct fieldbuf {
  field stack[FIELDS_ON_STACK];
  field *fs;
} fieldbuf;

static field *fields_for(lua_State *L, fieldbuf *fb, int max_fields) {
  fb->fs = fb->stack;
  if (max_fields > FIELDS_ON_STACK)
    fb->fs = lua_newuserdata(L, sizeof(field) * (size_t)max_fields);
  return fb->fs;
}

/* A parsed request head, as parse_head gives it to l_parse_request and
 * to the FFI entry tide__http_parse_ffi. Positions are 1-based;
 * the fields are doubles and 32-bit integers, which LuaJIT reads as
 * numbers. The same text is the FFI's declaration (preq_decl, which the
 * module gives Lua as parse_ffi_result). */
#define PREQ_FIELDS(...) __VA_ARGS__
#define PREQ_BODY                                                               \
  PREQ_FIELDS(double m_from, m_to, t_from, t_to, hpos, next, length;            \
              int32_t minor, body, flags, status; const char *msg;)
typedef struct preq {
  PREQ_BODY
} preq;
#define STRINGIFY_(...) #__VA_ARGS__
#define STRINGIFY(...) STRINGIFY_(__VA_ARGS__)
static const char preq_decl[] = "struct { " STRINGIFY(PREQ_BODY) " }";

/* The request head at b[i..len): 1 (r filled, its fields in fs[0 ..
 * *nfs_out)), 0 (incomplete) or -1 (an error in e). fs: room for
 * max_fields fields. */
static int parse_head(const char *b, size_t len, size_t i, size_t max_line,
                      size_t max_head, int max_fields, field *fs, int *nfs_out,
                      preq *r, perr *e) {
  size_t start, line_end, m_end, t_start, t_end;
  const char *nl;
  int minor, nfs = 0, body = BODY_NONE, k;
  long next;
  meta m;
  /* empty lines before a request are ignored (RFC 9112, 2.2) */
  for (k = 0; k < 8 && i + 1 < len && b[i] == '\r' && b[i + 1] == '\n'; k++) i += 2;
  start = i;
  if (i >= len) return 0;
  nl = memchr(b + i, '\n', len - i < max_line + 2 ? len - i : max_line + 2);
  if (!nl) {
    if (len - i >= max_line + 2) return fail(e, 414, "request line too long");
    return 0;
  }
  line_end = (size_t)(nl - b);
  if (line_end == i || b[line_end - 1] != '\r')
    return fail(e, 400, "bare LF in the request line");
  line_end--;
  if (line_end - i > max_line) return fail(e, 414, "request line too long");
  for (m_end = i; m_end < line_end && IS(b[m_end], C_TOKEN); m_end++) {}
  if (m_end == i || m_end == line_end || b[m_end] != ' ')
    return fail(e, 400, "malformed request line");
  t_start = m_end + 1;
  for (t_end = t_start; t_end < line_end && IS(b[t_end], C_TARGET); t_end++) {}
  if (t_end == t_start || t_end == line_end || b[t_end] != ' ')
    return fail(e, 400, "malformed request line");
  minor = parse_version(b, t_end + 1, line_end);
  if (minor < 0)
    return fail(e, 400, minor == -2 ? "unsupported HTTP version" : "malformed request line");
  next = parse_fields(b, len, line_end + 2, start, max_head, max_fields, fs, &nfs, e);
  if (next < 0) return -1;
  if (next == 0) return 0;
  memset(&m, 0, sizeof m);
  m.length = -1;
  for (k = 0; k < nfs; k++)
    if (field_meta(&m, b, &fs[k], e) != 0) return -1;
  if (m.te) {
    if (minor == 0) return fail(e, 400, "Transfer-Encoding in an HTTP/1.0 request");
    if (m.length >= 0) return fail(e, 400, "both Content-Length and Transfer-Encoding");
    if (m.te_bad || m.te_chunked != 1 || !m.te_last_chunked)
      return fail(e, 400, "Transfer-Encoding must end with chunked, once");
    if (m.te_other) return fail(e, 501, "unsupported transfer coding");
    body = BODY_CHUNKED;
  } else if (m.length > 0) {
    body = BODY_LENGTH;
  }
  if (minor == 1 && m.hosts != 1)
    return fail(e, 400, m.hosts ? "more than one Host header" : "HTTP/1.1 request without Host");
  if (minor == 0) m.flags &= ~F_CONTINUE;
  else if (m.expect_bad) return fail(e, 417, "unsupported expectation");
  r->m_from = (double)(i + 1);
  r->m_to = (double)m_end;
  r->t_from = (double)(t_start + 1);
  r->t_to = (double)t_end;
  r->hpos = (double)(line_end + 2 + 1);
  r->next = (double)(next + 1);
  r->length = (double)(m.length > 0 ? m.length : 0);
  r->minor = minor;
  r->body = body;
  r->flags = m.flags;
  *nfs_out = nfs;
  return 1;
}

static int l_parse_request(lua_State *L) {
  size_t len, i, max_line = arg_size(L, 3), max_head = arg_size(L, 4);
  const char *b = arg_buf(L, &len, &i);
  int max_fields = arg_fields(L, 5), lazy = lua_toboolean(L, 6), nfs = 0, rc;
  perr e = {0, NULL};
  preq r;
  fieldbuf fb;
  field *fs = fields_for(L, &fb, max_fields);
  rc = parse_head(b, len, i, max_line, max_head, max_fields, fs, &nfs, &r, &e);
  if (rc < 0) return push_error(L, &e);
  if (rc == 0) {
    lua_pushboolean(L, 0);
    return 1;
  }
  lua_pushlstring(L, b + (size_t)r.m_from - 1, (size_t)(r.m_to - r.m_from + 1));
  lua_pushlstring(L, b + (size_t)r.t_from - 1, (size_t)(r.t_to - r.t_from + 1));
  lua_pushinteger(L, r.minor);
  if (lazy) lua_pushnumber(L, r.hpos);
  else push_headers(L, b, fs, nfs);
  lua_pushnumber(L, r.next);
  lua_pushinteger(L, r.body);
  lua_pushnumber(L, r.length);
  lua_pushinteger(L, r.flags);
  return 8;
}

/* parse_request's lazy form for the FFI (lua/tide/http.lua calls it from
 * compiled code, where a call through the Lua C API would end the
 * trace): b and len the buffer, pos 1-based, the limits as
 * parse_request's; returns 1 (r filled), 0 (incomplete) or -1 (r->status
 * and r->msg). Uses no lua_State. */
int tide__http_parse_ffi(const char *b, double len, double pos, double max_line,
                         double max_head, double max_fields, preq *r);
int tide__http_parse_ffi(const char *b, double len, double pos, double max_line,
                         double max_head, double max_fields, preq *r) {
  field stack[FIELDS_ON_STACK], *fs = stack;
  perr e = {0, NULL};
  int nfs = 0;
  size_t n = len > 0 ? (size_t)len : 0, i = pos > 1 ? (size_t)pos - 1 : 0;
  int nf = max_fields > 0 ? (max_fields < 100000 ? (int)max_fields : 100000) : 0, rc;
  if (i > n) i = n;
  if (nf > FIELDS_ON_STACK) {
    fs = malloc(sizeof(field) * (size_t)nf);
    if (!fs) {
      r->status = 503;
      r->msg = "out of memory";
      return -1;
    }
  }
  rc = parse_head(b, n, i, max_line > 0 ? (max_line < 1e15 ? (size_t)max_line : (size_t)1e15) : 0,
                  max_head > 0 ? (max_head < 1e15 ? (size_t)max_head : (size_t)1e15) : 0,
                  nf, fs, &nfs, r, &e);
  if (fs != stack) free(fs);
  if (rc < 0) {
    r->status = e.status;
    r->msg = e.msg;
  }
  return rc;
}

static int l_parse_response(lua_State *L) {
  size_t len, i, start, max_head = arg_size(L, 3), line_end, j;
  const char *b = arg_buf(L, &len, &i), *nl;
  int max_fields = arg_fields(L, 4), minor, nfs = 0, body = BODY_NONE, k;
  int status;
  long next;
  perr e = {0, NULL};
  meta m;
  fieldbuf fb;
  field *fs = fields_for(L, &fb, max_fields);
  start = i;
  if (i >= len) goto incomplete;
  nl = memchr(b + i, '\n', len - i);
  if (!nl) {
    if (len - i > max_head) return fail(&e, 0, "response head too large"), push_error(L, &e);
    goto incomplete;
  }
  line_end = (size_t)(nl - b);
  if (line_end == i || b[line_end - 1] != '\r') {
    fail(&e, 0, "malformed status line");
    return push_error(L, &e);
  }
  line_end--;
  if (line_end - i < 12 || b[i + 8] != ' ' ||
      (minor = parse_version(b, i, i + 8)) < 0) {
    fail(&e, 0, "malformed status line");
    return push_error(L, &e);
  }
  status = 0;
  for (j = i + 9; j < i + 12; j++) {
    if (b[j] < '0' || b[j] > '9') {
      fail(&e, 0, "malformed status code");
      return push_error(L, &e);
    }
    status = status * 10 + (b[j] - '0');
  }
  if (status < 100 || (line_end > i + 12 && b[i + 12] != ' ')) {
    fail(&e, 0, "malformed status line");
    return push_error(L, &e);
  }
  for (j = i + 12; j < line_end; j++)
    if (!IS(b[j], C_FIELD)) {
      fail(&e, 0, "malformed status line");
      return push_error(L, &e);
    }
  next = parse_fields(b, len, line_end + 2, start, max_head, max_fields, fs, &nfs, &e);
  if (next < 0) {
    e.status = 0;
    return push_error(L, &e);
  }
  if (next == 0) goto incomplete;
  memset(&m, 0, sizeof m);
  m.length = -1;
  for (k = 0; k < nfs; k++)
    if (field_meta(&m, b, &fs[k], &e) != 0) {
      e.status = 0;
      return push_error(L, &e);
    }
  if (m.te) {
    if (m.te_chunked == 1 && m.te_last_chunked && !m.te_bad && !m.te_other)
      body = BODY_CHUNKED;
    else if (m.te_chunked == 0 && !m.te_bad)
      m.flags |= F_UNTIL_CLOSE; /* RFC 9112, 6.3: read until the close */
    else {
      fail(&e, 0, "malformed Transfer-Encoding");
      return push_error(L, &e);
    }
  } else if (m.length >= 0) {
    body = BODY_LENGTH;
  } else {
    m.flags |= F_UNTIL_CLOSE;
  }
  lua_pushinteger(L, status);
  lua_pushlstring(L, b + i + 13 > b + line_end ? b + line_end : b + i + 13,
                  line_end > i + 13 ? line_end - i - 13 : 0);
  lua_pushinteger(L, minor);
  push_headers(L, b, fs, nfs);
  lua_pushinteger(L, next + 1);
  lua_pushinteger(L, body);
  lua_pushnumber(L, (lua_Number)(m.length > 0 ? m.length : 0));
  lua_pushinteger(L, m.flags);
  return 8;
incomplete:
  lua_pushboolean(L, 0);
  return 1;
}

/* The trailer section after the last chunk: fields, then the empty line. */
static int l_parse_trailers(lua_State *L) {
  size_t len, i, max_head = arg_size(L, 3);
  const char *b = arg_buf(L, &len, &i);
  int max_fields = arg_fields(L, 4), nfs = 0;
  long next;
  perr e = {0, NULL};
  fieldbuf fb;
  field *fs = fields_for(L, &fb, max_fields);
  next = parse_fields(b, len, i, i, max_head, max_fields, fs, &nfs, &e);
  if (next < 0) return push_error(L, &e);
  if (next == 0) {
    lua_pushboolean(L, 0);
    return 1;
  }
  push_headers(L, b, fs, nfs);
  lua_pushinteger(L, next + 1);
  return 2;
}

/* chunk-size [ chunk-ext ] CRLF at b[i..len): 1 to MAX_DIGITS hex
 * digits; extensions (BWS ";" ...) are let through and ignored. Returns
 * the offset after the line (with *size), 0 when incomplete, -1 if bad. */
static long chunk_line(const char *b, size_t len, size_t i, int64_t *size) {
  size_t j, end, lim = len - i < MAX_CHUNK_LINE ? len - i : MAX_CHUNK_LINE;
  const char *nl = memchr(b + i, '\n', lim);
  int64_t x = 0;
  if (!nl) return len - i >= MAX_CHUNK_LINE ? -1 : 0;
  end = (size_t)(nl - b);
  if (end == i || b[end - 1] != '\r') return -1;
  end--;
  for (j = i; j < end && IS(b[j], C_HEX); j++) {
    int c = b[j], d = c <= '9' ? c - '0' : (c | 0x20) - 'a' + 10;
    if (j - i >= MAX_DIGITS) return -1;
    x = x * 16 + d;
  }
  if (j == i) return -1;
  if (j < end) {
    size_t k = j;
    while (k < end && (b[k] == ' ' || b[k] == '\t')) k++;
    if (k == end || b[k] != ';') return -1;
    for (; k < end; k++)
      if (!IS(b[k], C_FIELD)) return -1;
  }
  *size = x;
  return (long)(end + 2);
}

static int l_chunk_size(lua_State *L) {
  size_t len, i;
  const char *b = arg_buf(L, &len, &i);
  int64_t size = 0;
  long next = chunk_line(b, len, i, &size);
  if (next < 0) {
    lua_pushnil(L);
    lua_pushliteral(L, "malformed chunk size");
    return 2;
  }
  if (next == 0) {
    lua_pushboolean(L, 0);
    return 1;
  }
  lua_pushnumber(L, (lua_Number)size);
  lua_pushinteger(L, (lua_Integer)next + 1);
  return 2;
}

/* scan_chunks(buf, pos, max_body, max_head, max_fields) -> true
 * | nil, status, message: checks the chunked framing already buffered
 * (without consuming it), so that a malformed body that came with its
 * head is refused before any handler runs. */
static int l_scan_chunks(lua_State *L) {
  size_t len, i, max_body = arg_size(L, 3), max_head = arg_size(L, 4);
  const char *b = arg_buf(L, &len, &i);
  int max_fields = arg_fields(L, 5), nfs = 0;
  size_t total = 0;
  perr e = {0, NULL};
  for (;;) {
    int64_t size = 0;
    long next = chunk_line(b, len, i, &size);
    if (next < 0) {
      fail(&e, 400, "malformed chunk size");
      return push_error(L, &e);
    }
    if (next == 0) break;
    i = (size_t)next;
    if (size == 0) {
      fieldbuf fb;
      field *fs = fields_for(L, &fb, max_fields);
      if (parse_fields(b, len, i, i, max_head, max_fields, fs, &nfs, &e) < 0)
        return push_error(L, &e);
      break;
    }
    if ((uint64_t)size > max_body - total || total + (size_t)size > max_body) {
      fail(&e, 413, "request body too large");
      return push_error(L, &e);
    }
    total += (size_t)size;
    if (len - i < (size_t)size + 2) break;
    i += (size_t)size;
    if (b[i] != '\r' || b[i + 1] != '\n') {
      fail(&e, 400, "chunk data without its CRLF");
      return push_error(L, &e);
    }
    i += 2;
  }
  lua_pushboolean(L, 1);
  return 1;
}

/* headers(buf, pos, max_fields) -> the headers table of the field lines
 * at pos (as parse_request's `lazy` fields offset gave it; parse_request
 * has checked them), or nil, status, message. */
static int l_headers(lua_State *L) {
  size_t len, i;
  const char *b = arg_buf(L, &len, &i);
  int max_fields = arg_fields(L, 3), nfs = 0;
  long next;
  perr e = {0, NULL};
  fieldbuf fb;
  field *fs = fields_for(L, &fb, max_fields);
  next = parse_fields(b, len, i, i, (size_t)-1 / 2, max_fields, fs, &nfs, &e);
  if (next < 0) return push_error(L, &e);
  if (next == 0) {
    fail(&e, 400, "incomplete header");
    return push_error(L, &e);
  }
  push_headers(L, b, fs, nfs);
  return 1;
}

/* "Date: Thu, 26 Nov 2026 18:06:00 GMT\r\n" for the current second,
 * formatted once a second (per thread: a host's loop is one thread), in
 * English whatever the locale. */
static const char *date_line(size_t *len) {
  static const char days[] = "SunMonTueWedThuFriSat";
  static const char months[] = "JanFebMarAprMayJunJulAugSepOctNovDec";
  static _Thread_local time_t sec = (time_t)-1;
  static _Thread_local char line[64];
  static _Thread_local size_t n;
  time_t t = time(NULL);
  if (t != sec) {
    struct tm tm;
    int k;
    if (!gmtime_r(&t, &tm)) memset(&tm, 0, sizeof tm);
    k = snprintf(line, sizeof line, "Date: %.3s, %02d %.3s %04d %02d:%02d:%02d GMT\r\n",
                 days + 3 * (tm.tm_wday % 7), tm.tm_mday, months + 3 * (tm.tm_mon % 12),
                 tm.tm_year + 1900, tm.tm_hour, tm.tm_min, tm.tm_sec);
    n = k > 0 && (size_t)k < sizeof line ? (size_t)k : 0;
    sec = t;
  }
  *len = n;
  return line;
}

/* date_line() -> "Date: ...\r\n" (as tide__http_head_start puts it) */
static int l_date_line(lua_State *L) {
  size_t n;
  const char *d = date_line(&n);
  lua_pushlstring(L, d, n);
  return 1;
}

/* The head of a response a handler returned as (status, body, headers),
 * with the body when it is small, in one string: built in a buffer of
 * the caller's (out, cap bytes) by three calls, each returning the
 * length so far or a negative value (the caller then takes its general
 * path):
 *   tide__http_head_start(out, cap, status_line, sl): the status line
 *     and date_line()'s line;
 *   tide__http_head_field(out, cap, at, name, nl, value, vl): appends
 *     "name: value\r\n"; -1 for a header the server frames itself
 *     (Content-Length, Connection, Transfer-Encoding, Date, any case),
 *     -2 for a name that is not a token or a value with CR, LF or NUL;
 *   tide__http_head_end(out, cap, at, length, tail, body, bl):
 *     "Content-Length: " length, then the tail (TAIL_*: the end of that
 *     line and, for 1 and 2, a Connection field, then the empty line),
 *     then the body when bl >= 0.
 * -3 from any of them: out is too small. Lengths are doubles (the FFI
 * passes Lua numbers as they are). */
enum { TAIL_KEEP = 0, TAIL_KEEP10 = 1, TAIL_CLOSE = 2 };

static int framed_name(const char *n, size_t nl) {
  return (nl == 4 && name_is(n, nl, "date", 4)) ||
         (nl == 10 && name_is(n, nl, "connection", 10)) ||
         (nl == 14 && name_is(n, nl, "content-length", 14)) ||
         (nl == 17 && name_is(n, nl, "transfer-encoding", 17));
}

double tide__http_head_start(char *out, double cap, const char *st, double sl);
double tide__http_head_start(char *out, double cap, const char *st, double sl) {
  size_t dl, n = (size_t)sl;
  const char *d = date_line(&dl);
  if (sl < 0 || (double)(n + dl) > cap) return -3;
  memcpy(out, st, n);
  memcpy(out + n, d, dl);
  return (double)(n + dl);
}

double tide__http_head_field(char *out, double cap, double at, const char *n, double nl,
                             const char *v, double vl);
double tide__http_head_field(char *out, double cap, double at, const char *n, double nl,
                             const char *v, double vl) {
  size_t a = (size_t)at, ln = (size_t)nl, lv = (size_t)vl, i;
  if (ln == 0) return -2;
  for (i = 0; i < ln; i++)
    if (!IS(n[i], C_TOKEN)) return -2;
  for (i = 0; i < lv; i++)
    if (v[i] == '\r' || v[i] == '\n' || v[i] == '\0') return -2;
  if (framed_name(n, ln)) return -1;
  if (at < 0 || (double)(a + ln + lv + 4) > cap) return -3;
  memcpy(out + a, n, ln);
  a += ln;
  out[a++] = ':';
  out[a++] = ' ';
  memcpy(out + a, v, lv);
  a += lv;
  out[a++] = '\r';
  out[a++] = '\n';
  return (double)a;
}

double tide__http_head_end(char *out, double cap, double at, double length, int tail,
                           const char *body, double bl);
double tide__http_head_end(char *out, double cap, double at, double length, int tail,
                           const char *body, double bl) {
  static const struct { const char *s; size_t n; } tails[] = {
      {"\r\n\r\n", 4},
      {"\r\nConnection: keep-alive\r\n\r\n", 28},
      {"\r\nConnection: close\r\n\r\n", 23}};
  size_t a = (size_t)at, b = bl > 0 ? (size_t)bl : 0, k = 0, t;
  char rev[24];
  uint64_t x;
  if (!(length >= 0 && length < 1e15) || tail < 0 || tail > 2 || at < 0) return -3;
  t = tails[tail].n;
  x = (uint64_t)length;
  do rev[k++] = (char)('0' + x % 10), x /= 10;
  while (x);
  if ((double)(a + 16 + k + t + b) > cap) return -3;
  memcpy(out + a, "Content-Length: ", 16);
  a += 16;
  while (k) out[a++] = rev[--k];
  memcpy(out + a, tails[tail].s, t);
  a += t;
  if (bl >= 0 && b) memcpy(out + a, body, b);
  return (double)(a + b);
}

/* check_field(name, value) -> 0 (a token and a value without CR, LF or
 * NUL), 1 (a bad name) or 2 (a bad value): what a handler may send */
static int l_check_field(lua_State *L) {
  size_t nl, vl, i;
  const char *n = lua_tolstring(L, 1, &nl), *v = lua_tolstring(L, 2, &vl);
  int r = 0;
  if (!n || nl == 0 || lua_type(L, 1) != LUA_TSTRING) r = 1;
  for (i = 0; r == 0 && i < nl; i++)
    if (!IS(n[i], C_TOKEN)) r = 1;
  if (r == 0 && !v) r = 2;
  for (i = 0; r == 0 && i < vl; i++)
    if (v[i] == '\r' || v[i] == '\n' || v[i] == '\0') r = 2;
  lua_pushinteger(L, r);
  return 1;
}

/* What a peek at s's socket finds, without consuming anything: 1 bytes
 * wait to be read, 0 the peer closed it (or s is closed), -1 it reset or
 * failed, -2 nothing yet (open and quiet). */
static int peek(const tide__stream *s) {
  char c;
  ssize_t n;
  if (s->fd < 0 || s->eof) return 0;
  do n = recv(s->fd, &c, 1, MSG_PEEK | MSG_DONTWAIT);
  while (n < 0 && errno == EINTR);
  if (n > 0) return 1;
  if (n == 0) return 0;
  return errno == EAGAIN || errno == EWOULDBLOCK ? -2 : -1;
}

/* peer_gone(stream) -> true when the peer closed or reset the connection
 * (pipelined bytes stay), false while it is open or when something is
 * waiting to be read */
static int l_peer_gone(lua_State *L) {
  int p = peek(tide__stream_check(L, 1));
  lua_pushboolean(L, p == 0 || p == -1);
  return 1;
}

/* idle_usable(stream) -> whether an idle pooled client connection may
 * carry the next request: open, nothing buffered, and nothing arrived
 * since its last response (bytes a server sends unasked would be taken
 * for the next answer). On a TLS stream the socket may hold records that
 * are not data (a session ticket): only its end counts there. */
static int l_idle_usable(lua_State *L) {
  tide__stream *s = tide__stream_check(L, 1);
  int p = s->rerr || s->in.len ? 0 : peek(s);
  lua_pushboolean(L, p == -2 || (p == 1 && s->ssl != NULL));
  return 1;
}

TIDE_MODULE("tide.http.c", tide__open_http) {
  static const luaL_Reg fns[] = {{"parse_request", l_parse_request},
                                 {"parse_response", l_parse_response},
                                 {"parse_trailers", l_parse_trailers},
                                 {"headers", l_headers},
                                 {NULL, NULL}};
  const luaL_Reg *f;
  init_classes();
  lua_newtable(L);
  lua_newtable(L); /* the headers' metatable, an upvalue of the parsers */
  for (f = fns; f->name; f++) {
    lua_pushvalue(L, -1);
    lua_pushcclosure(L, f->func, 1);
    lua_setfield(L, -3, f->name);
  }
  lua_setfield(L, -2, "headers_mt");
  lua_pushcfunction(L, l_chunk_size);
  lua_setfield(L, -2, "chunk_size");
  lua_pushcfunction(L, l_scan_chunks);
  lua_setfield(L, -2, "scan_chunks");
  lua_pushcfunction(L, l_check_field);
  lua_setfield(L, -2, "check_field");
  lua_pushcfunction(L, l_date_line);
  lua_setfield(L, -2, "date_line");
  lua_pushlightuserdata(L, (void *)tide__http_parse_ffi);
  lua_setfield(L, -2, "parse_ffi");
  lua_pushlightuserdata(L, (void *)tide__http_head_start);
  lua_setfield(L, -2, "head_start_ffi");
  lua_pushlightuserdata(L, (void *)tide__http_head_field);
  lua_setfield(L, -2, "head_field_ffi");
  lua_pushlightuserdata(L, (void *)tide__http_head_end);
  lua_setfield(L, -2, "head_end_ffi");
  lua_pushstring(L, preq_decl);
  lua_setfield(L, -2, "parse_ffi_result");
  lua_pushcfunction(L, l_peer_gone);
  lua_setfield(L, -2, "peer_gone");
  lua_pushcfunction(L, l_idle_usable);
  lua_setfield(L, -2, "idle_usable");
  lua_pushinteger(L, BODY_NONE);
  lua_setfield(L, -2, "BODY_NONE");
  lua_pushinteger(L, BODY_LENGTH);
  lua_setfield(L, -2, "BODY_LENGTH");
  lua_pushinteger(L, BODY_CHUNKED);
  lua_setfield(L, -2, "BODY_CHUNKED");
  lua_pushinteger(L, F_CLOSE);
  lua_setfield(L, -2, "F_CLOSE");
  lua_pushinteger(L, F_KEEPALIVE);
  lua_setfield(L, -2, "F_KEEPALIVE");
  lua_pushinteger(L, F_CONTINUE);
  lua_setfield(L, -2, "F_CONTINUE");
  lua_pushinteger(L, F_UNTIL_CLOSE);
  lua_setfield(L, -2, "F_UNTIL_CLOSE");
  return 1;
}
