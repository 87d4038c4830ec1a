/*
 * modules/plugin.c - the C half of tide.plugin: CPU and memory budgets for
 * plugin code, enforced by a count hook.
 *
 * Plugin code runs with the JIT off (lua/tide/plugin.lua), so the VM's
 * count hook fires every HOOK_COUNT bytecodes while it runs. LuaJIT's hook
 * is one per state, and while it is set every bytecode of the state goes
 * through the VM's hook dispatch, the host's too: so it is set only while
 * plugin code may run. Invariant: when the hook is not set, no function
 * of a plugin is active (in the running coroutine, or in one that resumed
 * it). It is set on entering plugin code from the host: a call (C.enter),
 * a task's body, a timer's or a module's callback (C.mark, plugin.lua's
 * guard), and the resume of a coroutine that is inside either (C.slice);
 * each of these remembers whether it was set before and puts that back
 * when it ends (C.leave, C.unmark, C.slice(false)), so it is cleared only
 * where the host's code called the plugin's. Besides, the loop entering
 * Lua with no Lua running clears it (tide__sandbox_boundary). Setting it
 * restarts its count, so it is never set again while plugin code runs:
 * the entries above happen only from host code, with the hook cleared.
 *
 * Time is charged per *run*: a run begins when the scheduler resumes a
 * task (core.lua's slice hook), the loop enters Lua
 * (tide__sandbox_boundary) or the hook is set, so time spent waiting is
 * never charged.
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

#define BUDGET_MAGIC 0x62756467u

typedef struct budget {
  unsigned magic;      /* BUDGET_MAGIC: a budget (see to_budget) */
  struct budget *prev; /* the enclosing call in the same task, or NULL */
  const char *name;    /* the plugin's (kept alive by its Lua side) */
  int64_t limit_ns, used_ns, start;
  size_t mem_limit, mem_start;
  int64_t mem_acc;     /* growth over the runs that ended */
  int active;          /* between C.enter and C.leave */
  int was_off;         /* the hook was not set at C.enter */
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
  int hooked;          /* plugins loaded */
  int on;              /* the count hook is set */
  unsigned nslice;     /* resumes C.slice set the hook for, not ended */
  uint64_t slice_was;  /* bit i: the hook was set before the i-th one */
  int ref_marks;       /* thread -> depth of plugin code outside calls */
  int nmarked;         /* threads in ref_marks (one collected while in
                          plugin code stays counted: lookups only) */
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

/* the budget at index i, or NULL. (Budgets reach only plugin.lua, and
 * Lua code cannot write a userdata's bytes without the FFI: the size and
 * the mark tell a budget without a metatable check on every call.) */
static budget *to_budget(lua_State *L, int i) {
  budget *b = lua_touserdata(L, i);
  if (b && lua_type(L, i) == LUA_TUSERDATA && lua_objlen(L, i) == sizeof *b &&
      b->magic == BUDGET_MAGIC)
    return b;
  return NULL;
}

/* Bytes the Lua state holds: LuaJIT's own count, so that the allocator
 * need not count (it does when the host has a memory limit). */
static size_t mem_used(struct tide__sandbox *S) {
  lua_State *L = S->h->L;
  return (size_t)lua_gc(L, LUA_GCCOUNT, 0) * 1024 +
         (size_t)lua_gc(L, LUA_GCCOUNTB, 0);
}

static void run_begin(struct tide__sandbox *S, int64_t now) {
  budget *b;
  S->run_start = now;
  S->run_mem = mem_used(S);
  S->run_killed = 0;
  for (b = S->cur; b; b = b->prev) {
    b->start = now;
    b->mem_start = mem_used(S);
  }
}

static void run_end(struct tide__sandbox *S, int64_t now) {
  budget *b;
  for (b = S->cur; b; b = b->prev) {
    b->used_ns += now - b->start;
    b->mem_acc += (int64_t)mem_used(S) - (int64_t)b->mem_start;
  }
  S->cur = NULL;
}

static void count_hook(lua_State *L, lua_Debug *ar);

/* The hook on, for plugin code about to run; a run begins when it was
 * off (nothing of a plugin's was running). */
static void hook_on(struct tide__sandbox *S, lua_State *L, int64_t now) {
  if (S->on) return;
  S->on = 1;
  lua_sethook(L, count_hook, LUA_MASKCOUNT, HOOK_COUNT);
  S->run_start = now;
  S->run_mem = mem_used(S);
  S->run_killed = 0;
}

/* The hook off: no plugin code is active (see the invariant above). A
 * hook of the program's own, set since, is left alone. */
static void hook_off(struct tide__sandbox *S, lua_State *L) {
  if (!S->on) return;
  S->on = 0;
  if (lua_gethook(L) == count_hook) lua_sethook(L, NULL, 0, 0);
}

/* The loop enters Lua. With no plugin code run since the last boundary
 * there is nothing to account, and no clock to read. */
void tide__sandbox_boundary(tide_host *h) {
  struct tide__sandbox *S = h->sandbox;
  lua_Debug ar;
  int64_t now;
  if (!S->cur && !S->on) return;
  now = tide__hrtime();
  if (S->cur) run_end(S, now);
  if (S->on && !lua_getstack(h->L, 0, &ar)) {
    /* no Lua function is running at all, so none of a plugin's */
    hook_off(S, h->L);
    S->nslice = 0;
  } else {
    run_begin(S, now);
  }
}

static const src_entry *find_src(struct tide__sandbox *S, const char *src) {
  int i;
  for (i = 0; i < S->nsrc; i++)
    if (S->srcs[i].src == src) return &S->srcs[i];
  return NULL;
}

static int64_t mem_growth(struct tide__sandbox *S, const budget *b) {
  return b->mem_acc + (int64_t)mem_used(S) - (int64_t)b->mem_start;
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
       (int64_t)mem_used(S) - (int64_t)S->run_mem > (int64_t)S->min_mem)) {
    /* plugin code outside a call: its plugin's limits, for this run */
    looked = 1;
    if (lua_getinfo(L, "S", ar) && (e = find_src(S, ar->source)) != NULL) {
      if (now - S->run_start > e->limit_ns) {
        S->run_killed = 1;
        snprintf(S->run_why, sizeof S->run_why,
                 "plugin '%s' ran out of its CPU budget (%g s)", e->name,
                 (double)e->limit_ns / 1e9);
      } else if ((int64_t)mem_used(S) - (int64_t)S->run_mem >
                 (int64_t)e->mem_limit) {
        collect(S, L);
        if ((int64_t)mem_used(S) - (int64_t)S->run_mem >
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
  if (!why) {
    if (lua_gethookcount(L) != HOOK_COUNT) /* (see enforce) */
      lua_sethook(L, count_hook, LUA_MASKCOUNT, HOOK_COUNT);
    return;
  }
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

/* C.enter(old, name, seconds, bytes) -> budget, the enclosing budget of
 * this task or nil: the calling task's hook call begins, with a new
 * budget, or old (one that is not in use, or nil) made new again */
static int l_enter(lua_State *L) {
  struct tide__sandbox *S = sandbox_of(L);
  budget *b = to_budget(L, 1);
  const char *name = luaL_checkstring(L, 2);
  double s = luaL_checknumber(L, 3);
  double m = luaL_checknumber(L, 4);
  int64_t now;
  if (!b || b->active) {
    b = lua_newuserdata(L, sizeof *b);
    lua_pushvalue(L, lua_upvalueindex(2));
    lua_setmetatable(L, -2);
    lua_replace(L, 1);
  }
  memset(b, 0, sizeof *b);
  b->magic = BUDGET_MAGIC;
  b->name = name; /* plugin.lua keeps p.name alive while the call runs */
  b->limit_ns = to_ns(s);
  b->mem_limit = to_bytes(m);
  now = tide__hrtime();
  b->was_off = !S->on;
  hook_on(S, L, now);
  b->prev = S->cur;
  b->active = 1;
  S->active++;
  b->start = now;
  b->mem_start = mem_used(S);
  S->cur = b;
  lua_settop(L, 1);
  lua_pushvalue(L, lua_upvalueindex(3)); /* thread -> budget */
  lua_pushthread(L);
  lua_rawget(L, 2); /* 3: the enclosing one */
  lua_pushthread(L);
  lua_pushvalue(L, 1);
  lua_rawset(L, 2);
  lua_remove(L, 2);
  return 2;
}

/* C.leave(budget, prev) -> the message of its exhausted budget, or
 * nothing: the call ended; prev is the enclosing budget of this task (or
 * nil) */
static int l_leave(lua_State *L) {
  struct tide__sandbox *S = sandbox_of(L);
  budget *b = to_budget(L, 1), **pp;
  if (!b) return luaL_argerror(L, 1, "budget expected");
  if (b->active) { /* (its time and growth are of no more use) */
    for (pp = &S->cur; *pp; pp = &(*pp)->prev) {
      if (*pp == b) {
        *pp = b->prev;
        break;
      }
    }
    b->active = 0;
    S->active--;
    if (b->was_off) hook_off(S, L);
  }
  lua_pushvalue(L, lua_upvalueindex(3));
  lua_pushthread(L);
  if (lua_type(L, 2) == LUA_TUSERDATA)
    lua_pushvalue(L, 2);
  else
    lua_pushnil(L);
  lua_rawset(L, -3);
  if (!b->killed) return 0;
  lua_pushstring(L, b->why);
  return 1;
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

/* A task in a call is resumed: a budget its past runs exhausted is marked
 * now, and the hook set to fire at once, as the task's runs may each be
 * too short for the hook to fire in (it restarts its count when set). */
static void enforce(struct tide__sandbox *S, lua_State *L) {
  budget *b;
  int killed = 0;
  for (b = S->cur; b; b = b->prev) {
    if (!b->killed && b->used_ns > b->limit_ns) kill_budget(b, 0);
    if (!b->killed && b->mem_acc > (int64_t)b->mem_limit) {
      collect(S, L);
      if (mem_growth(S, b) > (int64_t)b->mem_limit) kill_budget(b, 1);
    }
    killed |= b->killed;
  }
  if (killed) lua_sethook(L, count_hook, LUA_MASKCOUNT, 1);
}

/* slice(co) -> whether to call slice(false) when the resume returns;
 * slice(false): core.lua's hook around each resume. A coroutine inside a
 * call or inside plugin code (C.mark) runs with the hook set, and its run
 * is closed at once when the resume returns (the loop may then wait); any
 * other run ends at the next boundary. For any other coroutine, with the
 * hook off and no call's run open, there is nothing to do. */
static int l_slice(lua_State *L) {
  struct tide__sandbox *S = sandbox_of(L);
  int64_t now;
  if (lua_type(L, 1) == LUA_TTHREAD) {
    budget *b = NULL;
    int marked = 0;
    if (S->active) {
      lua_rawgeti(L, LUA_REGISTRYINDEX, S->ref_calls);
      lua_pushvalue(L, 1);
      lua_rawget(L, -2);
      b = lua_touserdata(L, -1); /* NULL when it makes no call */
      lua_pop(L, 2);
    }
    if (!b && S->nmarked) {
      lua_rawgeti(L, LUA_REGISTRYINDEX, S->ref_marks);
      lua_pushvalue(L, 1);
      lua_rawget(L, -2);
      marked = !lua_isnil(L, -1);
      lua_pop(L, 2);
    }
    if (b || marked) {
      now = tide__hrtime();
      if (S->cur) run_end(S, now);
      if (S->nslice < 64) {
        uint64_t bit = (uint64_t)1 << S->nslice;
        S->slice_was = S->on ? S->slice_was | bit : S->slice_was & ~bit;
      }
      S->nslice++;
      hook_on(S, L, now);
      S->cur = b;
      run_begin(S, now);
      if (b) enforce(S, L);
      lua_pushboolean(L, 1);
      return 1;
    }
    if (S->cur || S->on) {
      now = tide__hrtime();
      if (S->cur) run_end(S, now);
      run_begin(S, now);
    }
    return 0;
  }
  now = tide__hrtime();
  if (S->cur) run_end(S, now);
  run_begin(S, now);
  if (S->nslice > 0 && --S->nslice < 64 &&
      !(S->slice_was >> S->nslice & 1))
    hook_off(S, L);
  return 0;
}

/* C.mark() -> whether the hook was set: plugin code outside a call (a
 * task's body, a timer's or a module's callback) begins in the running
 * coroutine; the hook is set, and found set again whenever the scheduler
 * resumes the coroutine until C.unmark */
static int l_mark(lua_State *L) {
  struct tide__sandbox *S = sandbox_of(L);
  lua_Integer n;
  lua_settop(L, 0);
  lua_rawgeti(L, LUA_REGISTRYINDEX, S->ref_marks);
  lua_pushthread(L);
  lua_pushvalue(L, 2);
  lua_rawget(L, 1);
  n = lua_tointeger(L, 3);
  lua_pop(L, 1);
  lua_pushinteger(L, n + 1);
  lua_rawset(L, 1);
  if (n == 0) S->nmarked++;
  lua_pushboolean(L, S->on);
  hook_on(S, L, S->on ? 0 : tide__hrtime());
  return 1;
}

/* C.unmark(was_set, ...) -> ...: the plugin code C.mark announced ended;
 * the hook is as it was before */
static int l_unmark(lua_State *L) {
  struct tide__sandbox *S = sandbox_of(L);
  int was_set = lua_toboolean(L, 1);
  lua_Integer n;
  lua_rawgeti(L, LUA_REGISTRYINDEX, S->ref_marks);
  lua_pushthread(L);
  lua_pushvalue(L, -1);
  lua_rawget(L, -3);
  n = lua_tointeger(L, -1);
  lua_pop(L, 1);
  if (n > 1) {
    lua_pushinteger(L, n - 1);
  } else {
    lua_pushnil(L);
    if (n == 1) S->nmarked--;
  }
  lua_rawset(L, -3);
  lua_pop(L, 1);
  if (!was_set) hook_off(S, L);
  lua_remove(L, 1);
  return lua_gettop(L);
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

/* C.hook(on): one more (true) or one less (false) loaded plugin; the
 * allocator is wrapped from the first one on. (The count hook comes and
 * goes with plugin code running: see the top of this file.) */
static int l_hook(lua_State *L) {
  struct tide__sandbox *S = sandbox_of(L);
  if (lua_toboolean(L, 1)) {
    if (!S->alloc_f) {
      S->alloc_f = lua_getallocf(L, &S->alloc_ud);
      lua_setallocf(L, sandbox_alloc, S);
    }
    S->hooked++;
  } else if (S->hooked > 0) {
    S->hooked--;
  }
  lua_pushinteger(L, S->hooked);
  return 1;
}

/* C.hooked() -> whether the count hook is set (for the tests) */
static int l_hooked(lua_State *L) {
  struct tide__sandbox *S = sandbox_of(L);
  lua_pushboolean(L, S->on && lua_gethook(L) == count_hook);
  return 1;
}

/* C.memory() -> bytes the host's Lua state holds */
static int l_memory(lua_State *L) {
  lua_pushnumber(L, (double)mem_used(sandbox_of(L)));
  return 1;
}

static int l_sandbox_gc(lua_State *L) {
  struct tide__sandbox *S = luaL_checkudata(L, 1, SANDBOX_MT);
  void *ud;
  /* the state is closing: its last frees go straight to the host's
   * allocator, or through the host's counting one (set over ours when
   * the memory limit came after the first plugin) */
  if (S->alloc_f && lua_getallocf(L, &ud) == sandbox_alloc && ud == S) {
    lua_setallocf(L, S->alloc_f, S->alloc_ud);
  } else if (S->alloc_f && S->h && S->h->alloc_f == sandbox_alloc &&
             S->h->alloc_ud == S) {
    S->h->alloc_f = S->alloc_f;
    S->h->alloc_ud = S->alloc_ud;
  }
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
      {"mark", l_mark},     {"unmark", l_unmark}, {"hooked", l_hooked},
      {"memory", l_memory}, {NULL, NULL}};
  const luaL_Reg *r;
  if (!h) return luaL_error(L, "tide.plugin needs a tide host");
  if (h->sandbox) return luaL_error(L, "tide.plugin.c is already open");
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
  lua_pushvalue(L, -1);
  S->ref_calls = luaL_ref(L, LUA_REGISTRYINDEX);
  lua_insert(L, -2); /* (the functions' third upvalue) */
  lua_newtable(L); /* thread -> depth, weak keys */
  lua_createtable(L, 0, 1);
  lua_pushliteral(L, "k");
  lua_setfield(L, -2, "__mode");
  lua_setmetatable(L, -2);
  S->ref_marks = luaL_ref(L, LUA_REGISTRYINDEX);
  lua_newtable(L);
  S->ref_names = luaL_ref(L, LUA_REGISTRYINDEX);
  lua_pushvalue(L, -1);
  luaL_ref(L, LUA_REGISTRYINDEX); /* the sandbox lives as long as the state */
  h->sandbox = S;
  run_begin(S, tide__hrtime());

  luaL_newmetatable(L, BUDGET_MT); /* calls, sandbox, metatable */
  lua_newtable(L);
  for (r = fns; r->name; r++) {
    lua_pushvalue(L, -3);
    lua_pushvalue(L, -3);
    lua_pushvalue(L, -6);
    lua_pushcclosure(L, r->func, 3);
    lua_setfield(L, -2, r->name);
  }
  return 1;
}
