/*
 * modules/worker.c - `require "tide.worker.c"`, the C half of tide.worker
 * (lua/tide/worker.lua is the other): Lua functions run on a pool
 * thread's own lua_State.
 *
 *   C.pack(module, fn_name, ...) -> args / nil, message
 *       copies the call into a buffer (the message: what could not be
 *       copied, which the Lua half raises in the caller)
 *   C.run(args) -> status, ...
 *       a blocking call (tide_push_blocking): the task waits while a pool
 *       thread runs the job; status 0 and the results, 1 and the message
 *       of an error in the worker, 2 and the message of a result that
 *       cannot be copied (raised in the caller by the Lua half)
 *
 * Values cross threads only as bytes: the loop thread encodes the
 * arguments into a buffer, the pool thread decodes them into its own state,
 * and the results come back the same way. Nothing is shared, so the two
 * states never touch each other.
 *
 * Each pool thread makes its state on its first job and keeps it (modules
 * stay loaded, module-level upvalues persist); a pthread key's destructor
 * closes it when the thread exits, which tide_host_free makes happen
 * (tide__pool_shutdown joins the threads).
 */
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lualib.h>

#include "internal.h"

#define MAX_DEPTH 100   /* tables nested deeper than this are refused */
#define STR_(x) #x
#define STR(x) STR_(x)
#define MAX_VALUES 7000 /* results of one call (a C function's stack holds
                           LUAI_MAXCSTACK = 8000 slots) */

/* --- the buffer ----------------------------------------------------------
 *
 * A run of values: a uint32 count, then each value as a tag byte and its
 * payload (native byte order: both ends are this process).
 *   'z' nil   'f' false   't' true   'n' double (8 bytes, bit-exact)
 *   's' string: uint64 length, bytes
 *   'T' table: uint32 pairs, uint32 array-size hint, then key, value, ...
 *   'R' uint32 id: the table begun id-th (from 1) again (a shared table)
 */

typedef struct wbuf {
  char *p;
  size_t len, cap;
  int oom;
} wbuf;

static void buf_put(wbuf *b, const void *data, size_t n) {
  if (b->oom) return;
  if (b->cap - b->len < n) {
    size_t cap = b->cap ? b->cap : 256;
    char *p;
    while (cap - b->len < n) {
      if (cap > SIZE_MAX / 2) {
        b->oom = 1;
        return;
      }
      cap *= 2;
    }
    if (!(p = realloc(b->p, cap))) {
      b->oom = 1;
      return;
    }
    b->p = p;
    b->cap = cap;
  }
  memcpy(b->p + b->len, data, n);
  b->len += n;
}

static void buf_tag(wbuf *b, char tag) { buf_put(b, &tag, 1); }
static void buf_u32(wbuf *b, uint32_t v) { buf_put(b, &v, sizeof v); }

static void buf_patch_u32(wbuf *b, size_t at, uint32_t v) {
  if (!b->oom) memcpy(b->p + at, &v, sizeof v);
}

static void buf_free(wbuf *b) {
  free(b->p);
  b->p = NULL;
  b->len = b->cap = 0;
  b->oom = 0;
}

/* --- encoding (either thread, on the state that holds the values) --------- */

#define PATH_MAX_LEN 96

typedef struct enc {
  lua_State *L;
  wbuf *b;
  int seen;         /* stack index of {table = -id while open, id when done} */
  uint32_t ntables; /* tables begun */
  int depth;
  char err[96];     /* what went wrong, once it did */
  char path[PATH_MAX_LEN + 1]; /* where: built backwards while unwinding */
  int pstart;       /* path is path + pstart */
} enc;

static int fail(enc *e, const char *what) {
  snprintf(e->err, sizeof e->err, "%s", what);
  return -1;
}

/* Puts s (n bytes) in front of the path; a path that gets too long keeps
 * its innermost part after "...". */
static void path_prepend(enc *e, const char *s, size_t n) {
  if ((size_t)e->pstart < n + 3) {
    if (e->pstart >= 3 && memcmp(e->path + e->pstart, "...", 3) != 0) {
      e->pstart -= 3;
      memcpy(e->path + e->pstart, "...", 3);
    }
    return;
  }
  e->pstart -= (int)n;
  memcpy(e->path + e->pstart, s, n);
}

/* The path step of the key at idx: .name, ["str"], [1], [true], [table] */
static void path_key(enc *e, int idx) {
  lua_State *L = e->L;
  char seg[64];
  int n;
  switch (lua_type(L, idx)) {
  case LUA_TSTRING: {
    size_t len, i;
    const char *s = lua_tolstring(L, idx, &len);
    int ident = len > 0 && len <= 40 && !(s[0] >= '0' && s[0] <= '9');
    for (i = 0; ident && i < len; i++) {
      char c = s[i];
      ident = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
              (c >= '0' && c <= '9') || c == '_';
    }
    if (ident) {
      n = snprintf(seg, sizeof seg, ".%.*s", (int)len, s);
    } else {
      char shown[33];
      size_t m = len < 32 ? len : 32;
      for (i = 0; i < m; i++)
        shown[i] = (s[i] >= 32 && s[i] < 127 && s[i] != '"') ? s[i] : '?';
      shown[m] = 0;
      n = snprintf(seg, sizeof seg, "[\"%s%s\"]", shown, len > m ? "..." : "");
    }
    break;
  }
  case LUA_TNUMBER:
    n = snprintf(seg, sizeof seg, "[%.14g]", lua_tonumber(L, idx));
    break;
  case LUA_TBOOLEAN:
    n = snprintf(seg, sizeof seg, "[%s]", lua_toboolean(L, idx) ? "true" : "false");
    break;
  default:
    n = snprintf(seg, sizeof seg, "[%s]", luaL_typename(L, idx));
    break;
  }
  if (n > (int)sizeof seg - 1) n = (int)sizeof seg - 1;
  path_prepend(e, seg, (size_t)n);
}

static int encode_value(enc *e, int idx);

static int encode_table(enc *e, int idx) {
  lua_State *L = e->L;
  wbuf *b = e->b;
  lua_Number mark;
  uint32_t id, pairs = 0;
  size_t at;
  if (!lua_checkstack(L, 6)) return fail(e, "stack overflow");
  lua_pushvalue(L, idx);
  lua_rawget(L, e->seen);
  mark = lua_tonumber(L, -1);
  lua_pop(L, 1);
  if (mark < 0) return fail(e, "cannot copy a table that contains itself");
  if (mark > 0) { /* shared, not a cycle: the copy shares it too */
    buf_tag(b, 'R');
    buf_u32(b, (uint32_t)mark);
    return 0;
  }
  if (e->depth >= MAX_DEPTH)
    return fail(e, "cannot copy tables nested more than " STR(MAX_DEPTH) " deep");
  id = ++e->ntables;
  lua_pushvalue(L, idx);
  lua_pushnumber(L, -(lua_Number)id);
  lua_rawset(L, e->seen);
  e->depth++;
  buf_tag(b, 'T');
  at = b->len;
  buf_u32(b, 0);
  buf_u32(b, (uint32_t)lua_objlen(L, idx));
  lua_pushnil(L);
  while (lua_next(L, idx)) { /* on failure, encode_values resets the stack */
    int key = lua_gettop(L) - 1;
    if (encode_value(e, key) != 0) {
      /* a refused key: the path names the table that holds it */
      if (!e->path[e->pstart] && strlen(e->err) + 14 < sizeof e->err)
        strcat(e->err, " used as a key");
      return -1;
    }
    if (encode_value(e, key + 1) != 0) {
      path_key(e, key);
      return -1;
    }
    pairs++;
    lua_pop(L, 1);
  }
  buf_patch_u32(b, at, pairs);
  e->depth--;
  lua_pushvalue(L, idx);
  lua_pushnumber(L, (lua_Number)id);
  lua_rawset(L, e->seen);
  return 0;
}

static int encode_value(enc *e, int idx) {
  lua_State *L = e->L;
  wbuf *b = e->b;
  switch (lua_type(L, idx)) {
  case LUA_TNIL:
    buf_tag(b, 'z');
    return 0;
  case LUA_TBOOLEAN:
    buf_tag(b, lua_toboolean(L, idx) ? 't' : 'f');
    return 0;
  case LUA_TNUMBER: {
    double d = lua_tonumber(L, idx);
    buf_tag(b, 'n');
    buf_put(b, &d, sizeof d);
    return 0;
  }
  case LUA_TSTRING: {
    size_t len;
    const char *s = lua_tolstring(L, idx, &len);
    uint64_t n = len;
    buf_tag(b, 's');
    buf_put(b, &n, sizeof n);
    buf_put(b, s, len);
    return 0;
  }
  case LUA_TTABLE:
    return encode_table(e, idx < 0 ? lua_gettop(L) + idx + 1 : idx);
  default: /* function, userdata, thread, cdata */
    snprintf(e->err, sizeof e->err, "cannot copy a %s", luaL_typename(L, idx));
    return -1;
  }
}

/* Encodes the values at first..last of L into b. Returns 0, or the
 * position (1-based, among them) of the value refused, with the reason,
 * and where in it, in msg. */
static int encode_values(lua_State *L, int first, int last, wbuf *b,
                         char *msg, size_t msglen) {
  enc e;
  int i;
  memset(&e, 0, sizeof e);
  e.L = L;
  e.b = b;
  e.pstart = PATH_MAX_LEN;
  if (!lua_checkstack(L, 4)) {
    snprintf(msg, msglen, "stack overflow");
    return 1;
  }
  lua_newtable(L);
  e.seen = lua_gettop(L);
  buf_u32(b, (uint32_t)(last - first + 1));
  for (i = first; i <= last; i++) {
    if (encode_value(&e, i) == 0) continue;
    if (!e.err[0]) snprintf(e.err, sizeof e.err, "not enough memory");
    if (e.path[e.pstart])
      snprintf(msg, msglen, "%s (at %s)", e.err, e.path + e.pstart);
    else
      snprintf(msg, msglen, "%s", e.err);
    lua_settop(L, e.seen - 1);
    return i - first + 1;
  }
  lua_settop(L, e.seen - 1);
  if (b->oom) {
    snprintf(msg, msglen, "not enough memory");
    return 1;
  }
  return 0;
}

/* --- decoding --------------------------------------------------------------
 *
 * The buffer was made by encode_values in this process and nobody else
 * touched it; the bounds checks only guard against a bug here. */

typedef struct dec {
  lua_State *L;
  const char *p, *end;
  int refs; /* stack index of {id = table} */
  uint32_t ntables;
} dec;

static int take(dec *d, void *out, size_t n) {
  if ((size_t)(d->end - d->p) < n) return -1;
  memcpy(out, d->p, n);
  d->p += n;
  return 0;
}

static int decode_value(dec *d) {
  lua_State *L = d->L;
  char tag;
  if (take(d, &tag, 1) != 0 || !lua_checkstack(L, 4)) return -1;
  switch (tag) {
  case 'z': lua_pushnil(L); return 0;
  case 'f': lua_pushboolean(L, 0); return 0;
  case 't': lua_pushboolean(L, 1); return 0;
  case 'n': {
    double v;
    if (take(d, &v, sizeof v) != 0) return -1;
    lua_pushnumber(L, v);
    return 0;
  }
  case 's': {
    uint64_t n;
    if (take(d, &n, sizeof n) != 0 || (uint64_t)(d->end - d->p) < n) return -1;
    lua_pushlstring(L, d->p, (size_t)n);
    d->p += n;
    return 0;
  }
  case 'R': {
    uint32_t id;
    if (take(d, &id, sizeof id) != 0 || id == 0 || id > d->ntables) return -1;
    lua_rawgeti(L, d->refs, (int)id);
    return 0;
  }
  case 'T': {
    uint32_t pairs, narr, i;
    int t;
    if (take(d, &pairs, sizeof pairs) != 0 || take(d, &narr, sizeof narr) != 0)
      return -1;
    if (narr > pairs) narr = pairs;
    lua_createtable(L, (int)narr, (int)(pairs - narr));
    t = lua_gettop(L);
    lua_pushvalue(L, t);
    lua_rawseti(L, d->refs, (int)++d->ntables);
    for (i = 0; i < pairs; i++) {
      if (decode_value(d) != 0 || decode_value(d) != 0) return -1;
      lua_rawset(L, t);
    }
    return 0;
  }
  default:
    return -1;
  }
}

/* Pushes the values of b on L: their number, or -1 (L's top unchanged). */
static int decode_values(lua_State *L, const wbuf *b) {
  dec d;
  uint32_t n, i;
  int top = lua_gettop(L);
  d.L = L;
  d.p = b->p;
  d.end = b->p + b->len;
  d.ntables = 0;
  if (take(&d, &n, sizeof n) != 0 || n > MAX_VALUES + 2 ||
      !lua_checkstack(L, (int)n + 8))
    return -1;
  lua_newtable(L);
  d.refs = lua_gettop(L);
  for (i = 0; i < n; i++) {
    if (decode_value(&d) != 0) {
      lua_settop(L, top);
      return -1;
    }
  }
  lua_remove(L, d.refs);
  return (int)n;
}

/* --- the job -------------------------------------------------------------- */

enum { ST_OK = 0, ST_FAILED = 1, ST_REFUSED = 2 };

typedef struct wjob {
  char *path, *cpath; /* the host's package.path and cpath at submit */
  wbuf in;  /* module, fn_name, arguments... */
  wbuf out; /* results..., or the message (status not ST_OK) */
  int status;
} wjob;

static void job_free(void *data) {
  wjob *j = data;
  buf_free(&j->in);
  buf_free(&j->out);
  free(j->path);
  free(j->cpath);
  free(j);
}

/* Replaces j->out with one string: the message of a failure. */
static void job_message(wjob *j, int status, const char *msg, size_t len) {
  uint64_t n = len;
  j->status = status;
  buf_free(&j->out);
  buf_u32(&j->out, 1);
  buf_tag(&j->out, 's');
  buf_put(&j->out, &n, sizeof n);
  buf_put(&j->out, msg, len);
}

/* --- the pool thread's state ---------------------------------------------- */

typedef struct wstate {
  lua_State *L;
  char *path, *cpath; /* what package.path and cpath were set to */
} wstate;

static pthread_key_t state_key;
static pthread_once_t state_once = PTHREAD_ONCE_INIT;
static int state_key_ok;

/* The thread exits (tide__pool_shutdown joined it): close its state. */
static void state_free(void *p) {
  wstate *w = p;
  if (w->L) lua_close(w->L);
  free(w->path);
  free(w->cpath);
  free(w);
}

static void make_key(void) {
  state_key_ok = pthread_key_create(&state_key, state_free) == 0;
}

/* require "tide" in a worker: the loop's functions belong to the host's
 * thread and its state; a worker has neither. */
static int l_no_tide(lua_State *L) {
  return luaL_error(L, "module 'tide' is not available in a tide.worker "
                       "state: the loop belongs to the host's thread");
}

/* A searcher after preload: require "tide.<x>" in a worker explains why it
 * finds nothing (a file of that name on package.path still loads). */
static int l_tide_searcher(lua_State *L) {
  const char *name = luaL_checkstring(L, 1);
  if (strncmp(name, "tide.", 5) == 0)
    lua_pushfstring(L, "\n\tno module '%s' in a tide.worker state "
                       "(tide's own modules live on the host's thread)", name);
  else
    lua_pushnil(L);
  return 1;
}

static int open_state(lua_State *L) {
  luaL_openlibs(L);
  lua_getglobal(L, "package");
  lua_getfield(L, -1, "preload");
  lua_pushcfunction(L, l_no_tide);
  lua_setfield(L, -2, "tide");
  lua_pop(L, 1);
  lua_getfield(L, -1, "loaders"); /* 5.1's name for searchers */
  if (lua_istable(L, -1)) {
    int i, n = (int)lua_objlen(L, -1);
    for (i = n; i >= 2; i--) { /* insert at 2, right after preload */
      lua_rawgeti(L, -1, i);
      lua_rawseti(L, -2, i + 1);
    }
    lua_pushcfunction(L, l_tide_searcher);
    lua_rawseti(L, -2, 2);
  }
  lua_pop(L, 2);
  return 0;
}

/* This thread's state, made on first use; NULL without memory. */
static wstate *thread_state(void) {
  wstate *w;
  pthread_once(&state_once, make_key);
  if (!state_key_ok) return NULL;
  if ((w = pthread_getspecific(state_key)) != NULL) return w;
  if (!(w = calloc(1, sizeof *w))) return NULL;
  if (!(w->L = luaL_newstate()) || lua_cpcall(w->L, open_state, NULL) != 0 ||
      pthread_setspecific(state_key, w) != 0) {
    state_free(w);
    return NULL;
  }
  return w;
}

/* Sets package[field] to s if it is not that already. */
static void set_path(lua_State *L, char **cur, const char *field, const char *s) {
  char *copy;
  if (!s || (*cur && strcmp(*cur, s) == 0)) return;
  if (!(copy = strdup(s))) return;
  free(*cur);
  *cur = copy;
  lua_getglobal(L, "package");
  lua_pushstring(L, s);
  lua_setfield(L, -2, field);
  lua_pop(L, 1);
}

/* The message handler of the worker's calls: the message and the
 * traceback of its Lua frames. The C frames at the bottom (require, this
 * file's run_protected) are dropped, and a traceback with nothing else
 * (a module not found) is dropped whole. */
static int l_traceback(lua_State *L) {
  const char *msg = lua_tostring(L, 1), *s, *nl;
  size_t len;
  if (!msg) {
    if (luaL_callmeta(L, 1, "__tostring") && lua_isstring(L, -1))
      msg = lua_tostring(L, -1);
    else
      msg = lua_pushfstring(L, "(error object is a %s value)",
                            luaL_typename(L, 1));
  }
  luaL_traceback(L, L, msg, 1);
  s = lua_tolstring(L, -1, &len);
  for (;;) {
    for (nl = s + len; nl > s && nl[-1] != '\n'; nl--) {}
    if (nl == s) break;
    if (strncmp(nl, "\t[C]:", 5) == 0) {
      len = (size_t)(nl - 1 - s);
    } else if (strncmp(nl, "stack traceback:", 16) == 0) {
      len = (size_t)(nl - 1 - s);
      break;
    } else {
      break;
    }
  }
  lua_pushlstring(L, s, len);
  return 1;
}

typedef struct run_ctx {
  wstate *w;
  wjob *j;
} run_ctx;

/* (protected) The message on top of L is the job's answer. */
static int answer(lua_State *L, wjob *j, int status) {
  size_t len;
  const char *m = lua_tolstring(L, -1, &len);
  job_message(j, status, m ? m : "?", m ? len : 1);
  return 0;
}

/* (protected, on the worker state) require, look up, call, encode. The
 * stack: handler, module name, function name, arguments... */
static int run_protected(lua_State *L) {
  run_ctx *c = lua_touserdata(L, 1);
  wjob *j = c->j;
  int n, nargs, bad;
  const char *mod, *name;
  char msg[256];
  lua_settop(L, 0);
  set_path(L, &c->w->path, "path", j->path);
  set_path(L, &c->w->cpath, "cpath", j->cpath);
  lua_pushcfunction(L, l_traceback);
  if ((n = decode_values(L, &j->in)) < 2)
    return luaL_error(L, "tide.worker: the job's arguments are damaged");
  nargs = n - 2;
  mod = lua_tostring(L, 2);
  name = lua_tostring(L, 3);

  lua_getglobal(L, "require");
  lua_pushvalue(L, 2);
  if (lua_pcall(L, 1, 1, 1) != 0) return answer(L, j, ST_FAILED);
  if (!lua_istable(L, -1) && !lua_isuserdata(L, -1)) {
    lua_pushfstring(L, "module '%s' returned a %s, not a table of functions",
                    mod, luaL_typename(L, -1));
    return answer(L, j, ST_FAILED);
  }
  lua_pushvalue(L, 3);
  lua_gettable(L, -2);
  if (!lua_isfunction(L, -1)) {
    if (!luaL_getmetafield(L, -1, "__call")) {
      lua_pushfstring(L, "module '%s' has no function '%s'", mod, name);
      return answer(L, j, ST_FAILED);
    }
    lua_pop(L, 1); /* callable: pcall calls through __call */
  }
  lua_remove(L, -2); /* the module */
  lua_insert(L, 4);  /* the function, before the arguments */
  if (lua_pcall(L, nargs, LUA_MULTRET, 1) != 0) return answer(L, j, ST_FAILED);
  n = lua_gettop(L) - 3; /* the results, from 4 */
  if (n > MAX_VALUES) {
    lua_pushfstring(L, "bad result from worker '%s.%s' (more than %d results)",
                    mod, name, MAX_VALUES);
    return answer(L, j, ST_REFUSED);
  }
  bad = encode_values(L, 4, 3 + n, &j->out, msg, sizeof msg);
  if (bad) {
    lua_pushfstring(L, "bad result #%d from worker '%s.%s' (%s)", bad, mod,
                    name, msg);
    return answer(L, j, ST_REFUSED);
  }
  j->status = ST_OK;
  return 0;
}

/* pool thread: runs the job on this thread's state */
static void work(void *data) {
  wjob *j = data;
  wstate *w = thread_state();
  run_ctx c;
  if (!w) {
    static const char m[] = "tide.worker: cannot create a Lua state (memory)";
    job_message(j, ST_FAILED, m, sizeof m - 1);
    return;
  }
  c.w = w;
  c.j = j;
  if (lua_cpcall(w->L, run_protected, &c) != 0) { /* memory, mostly */
    size_t len = 0;
    const char *m = lua_tolstring(w->L, -1, &len);
    if (!m) m = "tide.worker: unknown error", len = strlen(m);
    job_message(j, ST_FAILED, m, len);
  }
  lua_settop(w->L, 0);
  buf_free(&j->in); /* decoded: not needed until the job is freed */
  if (j->out.oom) {
    static const char m[] = "tide.worker: not enough memory for the results";
    job_message(j, ST_FAILED, m, sizeof m - 1);
  }
}

/* loop thread: status, then the results or the message */
static int push(lua_State *L, void *data) {
  wjob *j = data;
  int n;
  lua_pushinteger(L, j->status);
  n = decode_values(L, &j->out);
  if (n < 0) {
    lua_pop(L, 1);
    lua_pushinteger(L, ST_FAILED);
    lua_pushliteral(L, "tide.worker: cannot unpack the results (memory)");
    return 2;
  }
  return 1 + n;
}

static char *copy_field(lua_State *L, const char *field) {
  const char *s;
  char *copy = NULL;
  lua_getglobal(L, "package");
  if (lua_istable(L, -1)) {
    lua_getfield(L, -1, field);
    if ((s = lua_tostring(L, -1)) != NULL) copy = strdup(s);
    lua_pop(L, 1);
  }
  lua_pop(L, 1);
  return copy;
}

/* The arguments of a call, encoded, between C.pack and C.run. */
#define ARGS_MT "tide.worker.args"

typedef struct largs {
  wjob *j; /* NULL once sent */
} largs;

static int l_args_gc(lua_State *L) {
  largs *a = luaL_checkudata(L, 1, ARGS_MT);
  if (a->j) job_free(a->j);
  a->j = NULL;
  return 0;
}

/* C.pack(module, fn_name, ...) -> args / nil, message: the module name,
 * function name and arguments copied into a buffer, with the host's
 * package.path and cpath. */
static int l_pack(lua_State *L) {
  char msg[256];
  int top = lua_gettop(L), bad;
  largs *a;
  luaL_checktype(L, 1, LUA_TSTRING);
  luaL_checktype(L, 2, LUA_TSTRING);
  if (top - 2 > MAX_VALUES) {
    lua_pushnil(L);
    lua_pushfstring(L, "bad argument #%d to 'run' (more than %d arguments)",
                    MAX_VALUES + 3, MAX_VALUES);
    return 2;
  }
  a = lua_newuserdata(L, sizeof *a); /* first: a job is never left unowned */
  a->j = NULL;
  luaL_getmetatable(L, ARGS_MT);
  lua_setmetatable(L, -2);
  if (!(a->j = calloc(1, sizeof *a->j))) return luaL_error(L, "not enough memory");
  bad = encode_values(L, 1, top, &a->j->in, msg, sizeof msg);
  if (bad) {
    job_free(a->j);
    a->j = NULL;
    lua_pushnil(L);
    lua_pushfstring(L, "bad argument #%d to 'run' (%s)", bad, msg);
    return 2;
  }
  a->j->path = copy_field(L, "path");
  a->j->cpath = copy_field(L, "cpath");
  return 1;
}

/* C.run(args) -> status, ...: the start function of the blocking call
 * (tide_push_blocking has checked that it runs in a task). The job leaves
 * args for the request. */
static int start_run(lua_State *L) {
  largs *a = luaL_checkudata(L, 1, ARGS_MT);
  wjob *j = a->j;
  if (!j) return luaL_argerror(L, 1, "arguments sent already");
  a->j = NULL;
  return tide_blocking(L, j, work, push, job_free, 0);
}

TIDE_MODULE("tide.worker.c", tide__open_worker) {
  luaL_newmetatable(L, ARGS_MT);
  lua_pushcfunction(L, l_args_gc);
  lua_setfield(L, -2, "__gc");
  lua_pop(L, 1);
  lua_newtable(L);
  lua_pushcfunction(L, l_pack);
  lua_setfield(L, -2, "pack");
  tide_push_blocking(L, start_run, "run");
  lua_setfield(L, -2, "run");
  lua_pushinteger(L, MAX_DEPTH);
  lua_setfield(L, -2, "max_depth");
  return 1;
}
