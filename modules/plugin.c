/*
 * modules/plugin.c - the C half of tide.plugin: CPU and memory budgets for
 * plugin code, enforced by a count hook.
 *
 * Plugin code runs with the JIT off (lua/tide/plugin.lua), so the VM's
 * count hook fires every HOOK_COUNT bytecodes while it runs. LuaJIT's hook
 * is one per state: it fires in host code too, where it only reads the
 * clock. Time is charged per *run*: a run begins when the scheduler
 * resumes a task (core.lua's slice hook) or the loop enters Lua
 * (tide__sandbox_boundary), so time spent waiting is never charged.
 *
 * Two kinds of budget:
 *   - a call's (p:call): C.enter/C.leave bracket the hook; the budget sums
 *     the runs of the calling task while the hook is active, CPU time and
 *     memory growth both;
 *   - plugin code running anywhere else (a task or timer the plugin made)
 *     gets its plugin's limits for each run, found from the code's chunk
 *     name (registered by C.source).
 * An exhausted budget is marked; the error is raised only while plugin
 * code runs (never inside host code, whose state it could tear), and
 * again at every later firing until the call ends, so a plugin's pcall
 * cannot keep it alive (plugin.lua's pcall also re-raises it).
 *
 * The hook cannot see inside one C call, so one allocation could take far
 * more than a call's memory budget (("x"):rep(2^30)) before it fires:
 * while a call runs, the allocator refuses any single growth larger than
 * the budget of the call or of a call that encloses it, and than
 * ALLOC_FLOOR (LuaJIT raises "not enough memory"). That much growth is
 * over the budget whatever garbage a collection could free, so no call
 * within its budget fails.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

#define HOOK_COUNT 1000
#define BUDGET_MT "tide.plugin.budget"
#define SANDBOX_MT "tide.plugin.sandbox"

typedef struct budget {
  struct budget *prev; /* the enclosing call in the same task, or NULL */
  const char *name;    /* the plugin's (kept alive by its Lua side) */
  int64_t limit_ns, used_ns, start;
  size_t mem_limit, mem_start;
  int64_t mem_acc;     /* growth over the runs that ended */
  int active;          /* between C.enter and C.leave */
  int killed;
  char why[192];
} budget;

typedef struct src_entry {
  const char *src;     /* interned chunk name: compared by address */
  int64_t limit_ns;
  size_t mem_limit;
  char name[64];
} src_entry;

struct tide__sandbox {
  tide_host *h;
  int hooked;          /* plugins loaded: the hook is set while > 0 */
  budget *cur;         /* innermost call budget of the running task */
  int64_t run_start;   /* when the current run began */
  size_t run_mem;
  int run_killed;
  char run_why[192];
  src_entry *srcs;
  int nsrc, capsrc;
  int64_t min_ns;      /* the smallest per-run limit of the entries */
  size_t min_mem;
  int ref_calls;       /* thread -> its innermost budget (weak keys) */
  int active;          /* budgets between C.enter and C.leave */
  int ref_names;       /* keeps the registered chunk names alive */
  int in_gc;
  lua_Alloc alloc_f;   /* the allocator sandbox_alloc wraps, once set */
  void *alloc_ud;
};

static struct tide__sandbox *sandbox_of(lua_State *L) {
  return lua_touserdata(L, lua_upvalueindex(1));
}

static void run_begin(struct tide__sandbox *S, int64_t now) {
  budget *b;
  S->run_start = now;
  S->run_mem = S->h->mem_used;
  S->run_killed = 0;
  for (b = S->cur; b; b = b->prev) {
    b->start = now;
    b->mem_start = S->h->mem_used;
  }
}

static void run_end(struct tide__sandbox *S, int64_t now) {
  budget *b;
  for (b = S->cur; b; b = b->prev) {
    b->used_ns += now - b->start;
    b->mem_acc += (int64_t)S->h->mem_used - (int64_t)b->mem_start;
  }
  S->cur = NULL;
}

void tide__sandbox_boundary(tide_host *h) {
  struct tide__sandbox *S = h->sandbox;
  int64_t now = tide__hrtime();
  if (S->cur) run_end(S, now);
  run_begin(S, now);
}

static const src_entry *find_src(struct tide__sandbox *S, const char *src) {
  int i;
  for (i = 0; i < S->nsrc; i++)
    if (S->srcs[i].src == src) return &S->srcs[i];
  return NULL;
}

static int64_t mem_growth(struct tide__sandbox *S, const budget *b) {
  return b->mem_acc + (int64_t)S->h->mem_used - (int64_t)b->mem_start;
}

/* Growths up to this size always pass: a tiny budget must not make the
 * VM's and the scheduler's own small allocations fail (the hook still
 * counts them). */
#define ALLOC_FLOOR ((size_t)1 << 20)

/* The state's allocator while plugins are loaded: the host's, with
 * single growths past the running call's memory budget refused. */
static void *sandbox_alloc(void *ud, void *ptr, size_t osize, size_t nsize) {
  struct tide__sandbox *S = ud;
  const budget *b;
  if (ptr == NULL) osize = 0;
  if (nsize > osize && nsize - osize > ALLOC_FLOOR)
    for (b = S->cur; b; b = b->prev)
      if (nsize - osize > b->mem_limit) return NULL;
  return S->alloc_f(S->alloc_ud, ptr, osize, nsize);
}

/* A full collection, so that garbage does not count as growth. */
static void collect(struct tide__sandbox *S, lua_State *L) {
  if (S->in_gc) return;
  S->in_gc = 1;
  lua_gc(L, LUA_GCCOLLECT, 0);
  S->in_gc = 0;
}

static void kill_budget(budget *b, int mem) {
  b->killed = 1;
  if (mem)
    snprintf(b->why, sizeof b->why,
             "not enough memory (plugin '%s' is over its limit of %zu bytes)",
             b->name, b->mem_limit);
  else
    snprintf(b->why, sizeof b->why,
             "plugin '%s' ran out of its CPU budget (%g s)", b->name,
             (double)b->limit_ns / 1e9);
}

static void count_hook(lua_State *L, lua_Debug *ar) {
  tide_host *h = tide_from_lua(L);
  struct tide__sandbox *S = h ? h->sandbox : NULL;
  const char *why = NULL;
  const src_entry *e = NULL;
  int looked = 0;
  int64_t now;
  budget *b;
  if (!S) return;
  now = tide__hrtime();
  for (b = S->cur; b; b = b->prev) {
    if (!b->killed && now - b->start + b->used_ns > b->limit_ns)
      kill_budget(b, 0);
    if (!b->killed && mem_growth(S, b) > (int64_t)b->mem_limit) {
      collect(S, L);
      if (mem_growth(S, b) > (int64_t)b->mem_limit) kill_budget(b, 1);
    }
    if (b->killed && !why) why = b->why;
  }
  if (!S->cur && !S->run_killed && S->nsrc &&
      (now - S->run_start > S->min_ns ||
       (int64_t)h->mem_used - (int64_t)S->run_mem > (int64_t)S->min_mem)) {
    /* plugin code outside a call: its plugin's limits, for this run */
    looked = 1;
    if (lua_getinfo(L, "S", ar) && (e = find_src(S, ar->source)) != NULL) {
      if (now - S->run_start > e->limit_ns) {
        S->run_killed = 1;
        snprintf(S->run_why, sizeof S->run_why,
                 "plugin '%s' ran out of its CPU budget (%g s)", e->name,
                 (double)e->limit_ns / 1e9);
      } else if ((int64_t)h->mem_used - (int64_t)S->run_mem >
                 (int64_t)e->mem_limit) {
        collect(S, L);
        if ((int64_t)h->mem_used - (int64_t)S->run_mem >
            (int64_t)e->mem_limit) {
          S->run_killed = 1;
          snprintf(S->run_why, sizeof S->run_why,
                   "not enough memory (plugin '%s' is over its limit of "
                   "%zu bytes)", e->name, e->mem_limit);
        }
      }
    }
  }
  if (!why && S->run_killed) why = S->run_why;
  if (!why) return;
  if (!looked) e = lua_getinfo(L, "S", ar) ? find_src(S, ar->source) : NULL;
  if (e && lua_getinfo(L, "l", ar)) /* only inside plugin code */
    luaL_error(L, "%s:%d: %s", ar->short_src, ar->currentline, why);
}

/* --- Lua functions -------------------------------------------------------- */

/* seconds and bytes from Lua, clamped to what the fields hold (a cast of
 * an out-of-range double is undefined) */
static int64_t to_ns(double s) {
  if (!(s > 0)) return 0;
  if (s >= 9.2e9) return INT64_MAX;
  return (int64_t)(s * 1e9);
}

static size_t to_bytes(double m) {
  if (!(m > 0)) return 0;
  if (m >= (double)(SIZE_MAX / 2)) return SIZE_MAX / 2;
  return (size_t)m;
}

/* C.budget(name, seconds, bytes[, old]) -> budget: a new one, or old
 * (one that is not in use) made new again */
static int l_budget(lua_State *L) {
  const char *name = luaL_checkstring(L, 1);
  double s = luaL_checknumber(L, 2);
  double m = luaL_checknumber(L, 3);
  budget *b = luaL_testudata(L, 4, BUDGET_MT);
  if (b && !b->active) {
    lua_settop(L, 4);
  } else {
    b = lua_newuserdata(L, sizeof *b);
    luaL_getmetatable(L, BUDGET_MT);
    lua_setmetatable(L, -2);
  }
  memset(b, 0, sizeof *b);
  b->name = name; /* plugin.lua keeps p.name alive while the call runs */
  b->limit_ns = to_ns(s);
  b->mem_limit = to_bytes(m);
  return 1;
}

/* C.enter(budget) -> the enclosing budget of this task, or nil: the
 * calling task's hook call begins */
static int l_enter(lua_State *L) {
  struct tide__sandbox *S = sandbox_of(L);
  budget *b = luaL_checkudata(L, 1, BUDGET_MT);
  if (b->active) return luaL_error(L, "budget already in use");
  b->prev = S->cur;
  b->active = 1;
  S->active++;
  b->start = tide__hrtime();
  b->mem_start = S->h->mem_used;
  S->cur = b;
  lua_settop(L, 1);
  lua_rawgeti(L, LUA_REGISTRYINDEX, S->ref_calls);
  lua_pushthread(L);
  lua_rawget(L, 2); /* 3: the enclosing one */
  lua_pushthread(L);
  lua_pushvalue(L, 1);
  lua_rawset(L, 2);
  return 1;
}

/* C.leave(budget, prev) -> seconds used, bytes grown, message or nil:
 * the call ended; prev is the enclosing budget of this task (or nil) */
static int l_leave(lua_State *L) {
  struct tide__sandbox *S = sandbox_of(L);
  budget *b = luaL_checkudata(L, 1, BUDGET_MT), **pp;
  int64_t now = tide__hrtime();
  if (b->active) {
    for (pp = &S->cur; *pp; pp = &(*pp)->prev) {
      if (*pp == b) {
        b->used_ns += now - b->start;
        b->mem_acc += (int64_t)S->h->mem_used - (int64_t)b->mem_start;
        *pp = b->prev;
        break;
      }
    }
    b->active = 0;
    S->active--;
  }
  lua_rawgeti(L, LUA_REGISTRYINDEX, S->ref_calls);
  lua_pushthread(L);
  if (lua_isuserdata(L, 2))
    lua_pushvalue(L, 2);
  else
    lua_pushnil(L);
  lua_rawset(L, -3);
  lua_pushnumber(L, (double)b->used_ns / 1e9);
  lua_pushnumber(L, (double)b->mem_acc);
  if (b->killed)
    lua_pushstring(L, b->why);
  else
    lua_pushnil(L);
  return 3;
}

/* C.killed() -> the message of the exhausted budget of the running code,
 * or nil */
static int l_killed(lua_State *L) {
  struct tide__sandbox *S = sandbox_of(L);
  budget *b;
  for (b = S->cur; b; b = b->prev)
    if (b->killed) {
      lua_pushstring(L, b->why);
      return 1;
    }
  if (S->run_killed) {
    lua_pushstring(L, S->run_why);
    return 1;
  }
  return 0;
}

/* slice(co) -> whether to call slice(false) when the resume returns;
 * slice(false): core.lua's hook around each resume. A run with a call's
 * budget must be closed at once (the loop may then wait); any other run
 * ends at the next boundary. */
static int l_slice(lua_State *L) {
  struct tide__sandbox *S = sandbox_of(L);
  int64_t now = tide__hrtime();
  if (S->cur) run_end(S, now);
  if (S->active && lua_type(L, 1) == LUA_TTHREAD) {
    lua_rawgeti(L, LUA_REGISTRYINDEX, S->ref_calls);
    lua_pushvalue(L, 1);
    lua_rawget(L, -2);
    S->cur = lua_touserdata(L, -1); /* NULL when it makes no call */
  }
  run_begin(S, now);
  lua_pushboolean(L, S->cur != NULL);
  return 1;
}

static void update_min(struct tide__sandbox *S) {
  int i;
  S->min_ns = INT64_MAX;
  S->min_mem = (size_t)-1;
  for (i = 0; i < S->nsrc; i++) {
    if (S->srcs[i].limit_ns < S->min_ns) S->min_ns = S->srcs[i].limit_ns;
    if (S->srcs[i].mem_limit < S->min_mem) S->min_mem = S->srcs[i].mem_limit;
  }
}

/* C.source(chunkname, plugin name, seconds, bytes): code with this chunk
 * name is plugin code with these limits (a later call updates them) */
static int l_source(lua_State *L) {
  struct tide__sandbox *S = sandbox_of(L);
  const char *src = luaL_checkstring(L, 1);
  const char *name = luaL_checkstring(L, 2);
  double s = luaL_checknumber(L, 3), m = luaL_checknumber(L, 4);
  src_entry *e = (src_entry *)find_src(S, src);
  if (!e) {
    if (S->nsrc == S->capsrc) {
      int cap = S->capsrc ? S->capsrc * 2 : 8;
      src_entry *p = realloc(S->srcs, (size_t)cap * sizeof *p);
      if (!p) return luaL_error(L, "not enough memory");
      S->srcs = p;
      S->capsrc = cap;
    }
    e = &S->srcs[S->nsrc++];
    e->src = src;
    lua_rawgeti(L, LUA_REGISTRYINDEX, S->ref_names);
    lua_pushvalue(L, 1);
    lua_pushboolean(L, 1);
    lua_rawset(L, -3); /* the string lives as long as the host */
    lua_pop(L, 1);
  }
  snprintf(e->name, sizeof e->name, "%s", name);
  e->limit_ns = to_ns(s);
  e->mem_limit = to_bytes(m);
  update_min(S);
  return 0;
}

/* C.hook(on): one more (true) or one less (false) loaded plugin; the count
 * hook is set while there is any */
static int l_hook(lua_State *L) {
  struct tide__sandbox *S = sandbox_of(L);
  if (lua_toboolean(L, 1)) {
    if (!S->alloc_f) {
      S->alloc_f = lua_getallocf(L, &S->alloc_ud);
      lua_setallocf(L, sandbox_alloc, S);
    }
    if (S->hooked++ == 0) {
      run_begin(S, tide__hrtime());
      lua_sethook(L, count_hook, LUA_MASKCOUNT, HOOK_COUNT);
    }
  } else if (S->hooked > 0 && --S->hooked == 0) {
    lua_sethook(L, NULL, 0, 0);
  }
  lua_pushinteger(L, S->hooked);
  return 1;
}

/* C.memory() -> bytes the host's Lua state holds */
static int l_memory(lua_State *L) {
  lua_pushnumber(L, (double)sandbox_of(L)->h->mem_used);
  return 1;
}

static int l_sandbox_gc(lua_State *L) {
  struct tide__sandbox *S = luaL_checkudata(L, 1, SANDBOX_MT);
  void *ud;
  /* the state is closing: its last frees go straight to the host's */
  if (S->alloc_f && lua_getallocf(L, &ud) == sandbox_alloc && ud == S)
    lua_setallocf(L, S->alloc_f, S->alloc_ud);
  S->cur = NULL; /* (alloc_f stays: a wrapper set over ours still calls it) */
  if (S->h && S->h->sandbox == S) S->h->sandbox = NULL;
  free(S->srcs);
  S->srcs = NULL;
  S->nsrc = S->capsrc = 0;
  return 0;
}

TIDE_MODULE("tide.plugin.c", tide__open_plugin) {
  tide_host *h = tide_from_lua(L);
  struct tide__sandbox *S;
  static const luaL_Reg fns[] = {
      {"enter", l_enter},   {"leave", l_leave},   {"killed", l_killed},
      {"slice", l_slice},   {"source", l_source}, {"hook", l_hook},
      {"memory", l_memory}, {NULL, NULL}};
  const luaL_Reg *r;
  if (!h) return luaL_error(L, "tide.plugin needs a tide host");
  if (h->sandbox) return luaL_error(L, "tide.plugin.c is already open");
  luaL_newmetatable(L, BUDGET_MT);
  lua_pop(L, 1);
  S = lua_newuserdata(L, sizeof *S);
  memset(S, 0, sizeof *S);
  S->h = h;
  S->min_ns = INT64_MAX;
  S->min_mem = (size_t)-1;
  luaL_newmetatable(L, SANDBOX_MT);
  lua_pushcfunction(L, l_sandbox_gc);
  lua_setfield(L, -2, "__gc");
  lua_setmetatable(L, -2);
  lua_newtable(L); /* thread -> budget, weak keys */
  lua_createtable(L, 0, 1);
  lua_pushliteral(L, "k");
  lua_setfield(L, -2, "__mode");
  lua_setmetatable(L, -2);
  S->ref_calls = luaL_ref(L, LUA_REGISTRYINDEX);
  lua_newtable(L);
  S->ref_names = luaL_ref(L, LUA_REGISTRYINDEX);
  lua_pushvalue(L, -1);
  luaL_ref(L, LUA_REGISTRYINDEX); /* the sandbox lives as long as the state */
  tide__count_memory(h); /* (budgets read h->mem_used) */
  h->sandbox = S;
  run_begin(S, tide__hrtime());

  lua_newtable(L);
  lua_pushcfunction(L, l_budget);
  lua_setfield(L, -2, "budget");
  for (r = fns; r->name; r++) {
    lua_pushvalue(L, -2);
    lua_pushcclosure(L, r->func, 1);
    lua_setfield(L, -2, r->name);
  }
  return 1;
}
