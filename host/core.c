/*
 * host/core.c - the C half of `require "tide"`: clocks, timers,
 * immediates, phase, stats and exit. The scheduler (tasks, waits, channels)
 * is lua/tide/core.lua, which receives the primitives defined here.
 *
 * Timers and immediates keep their C struct inside the Lua userdata and
 * their callback (function and arguments) in the userdata's environment
 * table, so they need no __gc: while armed or queued, a registry reference
 * anchors the userdata; once it is neither, the GC may take it.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>

#include <event2/event.h>

#include "internal.h"

#define TIMER_MT "tide.timer"
#define IMM_MT "tide.immediate"
#define MAX_DELAY 1e9 /* seconds (about 31 years); keeps deadlines in int64 */

#define HOST(L) ((tide_host *)lua_touserdata(L, lua_upvalueindex(1)))

/* --- helpers --------------------------------------------------------------- */

/* A delay argument in seconds, as nanoseconds. Negative delays count as 0,
 * as in Node; NaN, infinities and non-numbers are errors. */
static int64_t check_delay(lua_State *L, int arg) {
  double s = luaL_checknumber(L, arg);
  if (s != s || isinf(s))
    luaL_argerror(L, arg, "delay must be a finite number");
  if (s < 0) s = 0;
  if (s > MAX_DELAY) s = MAX_DELAY;
  return (int64_t)(s * 1e9 + 0.5);
}

/* Stores fn and the nargs values after it (stack from..) in the env table of
 * the userdata at ud. */
static void store_callback(lua_State *L, int ud, int from, int nargs) {
  int i;
  if (ud < 0) ud = lua_gettop(L) + ud + 1;
  lua_createtable(L, nargs + 1, 0);
  for (i = 0; i <= nargs; i++) {
    lua_pushvalue(L, from + i);
    lua_rawseti(L, -2, i + 1);
  }
  lua_setfenv(L, ud);
}

/* Pushes fn and its arguments from the env of the userdata on top, which is
 * popped. Returns how many values were pushed. */
static int push_callback(lua_State *L, int nargs) {
  int i;
  lua_getfenv(L, -1);
  lua_replace(L, -2);
  for (i = 1; i <= nargs + 1; i++) lua_rawgeti(L, -i, i);
  lua_remove(L, -(nargs + 2));
  return nargs + 1;
}

static void anchor(tide_host *h, lua_State *L, int idx, int *ref) {
  if (*ref != LUA_NOREF) return;
  *ref = tide__anchor(h, L, idx);
}

static void unanchor(tide_host *h, lua_State *L, int *ref) {
  tide__unanchor(h, L, *ref);
  *ref = LUA_NOREF;
}

/* The userdata at idx if it has the metatable in upvalue 2, else raises
 * (cheaper than luaL_checkudata's lookup by name). */
static void *check_ud(lua_State *L, int idx, const char *what) {
  void *p = lua_touserdata(L, idx);
  if (p && lua_getmetatable(L, idx)) {
    int same = lua_rawequal(L, -1, lua_upvalueindex(2));
    lua_pop(L, 1);
    if (same) return p;
  }
  luaL_typerror(L, idx, what);
  return NULL;
}

/* --- timers ---------------------------------------------------------------- */

typedef struct ltimer {
  tide__ctimer ct;
  tide_host *h;
  int64_t delay;    /* ns: the first delay, or the interval of `every` */
  int nargs;        /* callback arguments after the function */
  int anchor;       /* registry ref while armed or closing */
  unsigned repeat : 1, ref : 1, closed : 1, direct : 1;
  tide__deferred closing;
} ltimer;

static void ltimer_fire(tide_host *h, tide__ctimer *ct);

static ltimer *check_timer(lua_State *L) {
  ltimer *t = check_ud(L, 1, TIMER_MT);
  if (t->closed) luaL_error(L, "attempt to use a closed timer");
  return t;
}

static void ltimer_disarm(lua_State *L, ltimer *t) {
  if (!tide__timer_active(&t->ct.t)) return;
  tide__timer_stop(&t->h->timers, &t->ct.t);
  if (t->ref) t->h->refs--;
  unanchor(t->h, L, &t->anchor);
}

/* Arms the timer at index idx to fire after t->delay. */
static void ltimer_arm(lua_State *L, int idx, ltimer *t) {
  tide_host *h = t->h;
  int was = tide__timer_active(&t->ct.t);
  if (tide__timer_start(&h->timers, &t->ct.t, h->now, t->delay) != 0) {
    if (was) { /* a failed restart leaves the timer disarmed */
      if (t->ref) h->refs--;
      unanchor(h, L, &t->anchor);
    }
    luaL_error(L, "not enough memory");
  }
  if (!was) {
    if (t->ref) h->refs++;
    anchor(h, L, idx, &t->anchor);
  }
}

static ltimer *new_timer(lua_State *L, tide_host *h, int64_t delay) {
  ltimer *t = lua_newuserdata(L, sizeof *t);
  memset(t, 0, sizeof *t);
  tide__timer_init(&t->ct.t);
  t->ct.cb = ltimer_fire;
  t->h = h;
  t->delay = delay;
  t->anchor = LUA_NOREF;
  t->ref = 1;
  lua_pushvalue(L, lua_upvalueindex(2));
  lua_setmetatable(L, -2);
  return t;
}

/* after(s, fn, ...) and every(s, fn, ...) */
static int start_timer(lua_State *L, int repeat) {
  tide_host *h = HOST(L);
  int64_t delay = check_delay(L, 1);
  int nargs = lua_gettop(L) - 2;
  ltimer *t;
  luaL_checktype(L, 2, LUA_TFUNCTION);
  if (repeat && delay <= 0) luaL_argerror(L, 1, "interval must be positive");
  t = new_timer(L, h, delay);
  t->repeat = repeat;
  t->nargs = nargs;
  store_callback(L, -1, 2, nargs);
  ltimer_arm(L, -1, t);
  return 1;
}

static int l_after(lua_State *L) { return start_timer(L, 0); }
static int l_every(lua_State *L) { return start_timer(L, 1); }

/* C.timer(fn, arg): an unarmed timer for the scheduler's own waits; fn(arg)
 * runs in the main state (never waits) when it fires. */
static int l_wait_timer(lua_State *L) {
  ltimer *t;
  luaL_checktype(L, 1, LUA_TFUNCTION);
  lua_settop(L, 2);
  t = new_timer(L, HOST(L), 0);
  t->direct = 1;
  t->nargs = 1;
  store_callback(L, 3, 1, 1);
  return 1;
}

static void ltimer_fire(tide_host *h, tide__ctimer *ct) {
  ltimer *t = (ltimer *)ct;
  lua_State *L = h->L;
  tide__push_anchor(h, L, t->anchor);
  if (t->repeat) {
    /* No drift: the next deadline is the previous one plus the interval,
     * skipping beats that are already past. */
    int64_t next = ct->t.deadline + t->delay;
    if (next <= h->now) next += ((h->now - next) / t->delay + 1) * t->delay;
    if (tide__timer_start_at(&h->timers, &ct->t, next, t->delay) != 0) {
      if (t->ref) h->refs--;
      unanchor(h, L, &t->anchor);
    }
  } else {
    if (t->ref) h->refs--;
    unanchor(h, L, &t->anchor);
  }
  tide__call(h, t->direct ? h->ref_run_direct : h->ref_run_task,
             push_callback(L, t->nargs));
}

static int l_timer_stop(lua_State *L) {
  ltimer *t = check_ud(L, 1, TIMER_MT);
  ltimer_disarm(L, t);
  return 0;
}

/* timer:again([s]): restart from now, optionally with a new delay (for
 * `every`, the new interval). */
static int l_timer_again(lua_State *L) {
  ltimer *t = check_timer(L);
  if (!lua_isnoneornil(L, 2)) {
    int64_t d = check_delay(L, 2);
    if (t->repeat && d <= 0) luaL_argerror(L, 2, "interval must be positive");
    t->delay = d;
  }
  ltimer_arm(L, 1, t);
  return 0;
}

static int l_timer_active(lua_State *L) {
  ltimer *t = check_ud(L, 1, TIMER_MT);
  lua_pushboolean(L, tide__timer_active(&t->ct.t));
  return 1;
}

static int l_timer_ref(lua_State *L) {
  ltimer *t = check_timer(L);
  int want = lua_isnoneornil(L, 2) ? 1 : lua_toboolean(L, 2);
  if (want != (int)t->ref && tide__timer_active(&t->ct.t))
    t->h->refs += want ? 1 : -1;
  t->ref = want;
  lua_settop(L, 1);
  return 1;
}

static int l_timer_unref(lua_State *L) {
  lua_settop(L, 1);
  lua_pushboolean(L, 0);
  return l_timer_ref(L);
}

static void ltimer_closed(tide_host *h, tide__deferred *d) {
  ltimer *t = (ltimer *)((char *)d - offsetof(ltimer, closing));
  lua_State *L = h->L;
  tide__push_anchor(h, L, t->anchor);
  unanchor(h, L, &t->anchor);
  lua_getfenv(L, -1);
  lua_getfield(L, -1, "close");
  lua_replace(L, -3);
  lua_pop(L, 1);
  tide__call(h, h->ref_run_task, 1);
}

/* timer:close([fn]): stop for good; fn runs in the close phase. */
static int l_timer_close(lua_State *L) {
  ltimer *t = check_ud(L, 1, TIMER_MT);
  if (t->closed) return 0;
  ltimer_disarm(L, t);
  t->closed = 1;
  if (!lua_isnoneornil(L, 2)) {
    luaL_checktype(L, 2, LUA_TFUNCTION);
    lua_getfenv(L, 1);
    lua_pushvalue(L, 2);
    lua_setfield(L, -2, "close");
    anchor(t->h, L, 1, &t->anchor);
    tide__close_later(t->h, &t->closing, ltimer_closed);
  }
  return 0;
}

static int l_timer_tostring(lua_State *L) {
  ltimer *t = check_ud(L, 1, TIMER_MT);
  lua_pushfstring(L, "tide.timer (%s): %p",
                  t->closed ? "closed"
                  : tide__timer_active(&t->ct.t) ? "active" : "idle",
                  (void *)t);
  return 1;
}

static const luaL_Reg timer_methods[] = {
    {"stop", l_timer_stop},   {"again", l_timer_again},
    {"active", l_timer_active}, {"ref", l_timer_ref},
    {"unref", l_timer_unref}, {"close", l_timer_close},
    {NULL, NULL}};

/* --- immediates ------------------------------------------------------------ */

typedef struct limm {
  tide__imm im;
  tide_host *h;
  int nargs;
  int anchor; /* registry ref while queued */
} limm;

static void limm_run(tide_host *h, tide__imm *im) {
  limm *m = (limm *)im;
  lua_State *L = h->L;
  tide__push_anchor(h, L, m->anchor);
  unanchor(h, L, &m->anchor);
  tide__call(h, h->ref_run_task, push_callback(L, m->nargs));
}

static int l_immediate(lua_State *L) {
  tide_host *h = HOST(L);
  int nargs = lua_gettop(L) - 1;
  limm *m;
  luaL_checktype(L, 1, LUA_TFUNCTION);
  m = lua_newuserdata(L, sizeof *m);
  memset(m, 0, sizeof *m);
  m->h = h;
  m->nargs = nargs;
  m->im.cb = limm_run;
  m->im.ref = 1;
  lua_pushvalue(L, lua_upvalueindex(2));
  lua_setmetatable(L, -2);
  store_callback(L, -1, 1, nargs);
  m->anchor = LUA_NOREF;
  anchor(h, L, -1, &m->anchor);
  tide__imm_push(h, &m->im);
  return 1;
}

static int l_imm_stop(lua_State *L) {
  limm *m = check_ud(L, 1, IMM_MT);
  if (m->im.queued) {
    tide__imm_remove(m->h, &m->im);
    unanchor(m->h, L, &m->anchor);
  }
  return 0;
}

static int l_imm_ref(lua_State *L) {
  limm *m = check_ud(L, 1, IMM_MT);
  int want = lua_isnoneornil(L, 2) ? 1 : lua_toboolean(L, 2);
  if (want != m->im.ref && m->im.queued) m->h->refs += want ? 1 : -1;
  m->im.ref = want;
  lua_settop(L, 1);
  return 1;
}

static int l_imm_unref(lua_State *L) {
  lua_settop(L, 1);
  lua_pushboolean(L, 0);
  return l_imm_ref(L);
}

static int l_imm_active(lua_State *L) {
  limm *m = check_ud(L, 1, IMM_MT);
  lua_pushboolean(L, m->im.queued);
  return 1;
}

static const luaL_Reg imm_methods[] = {
    {"stop", l_imm_stop},   {"close", l_imm_stop}, {"ref", l_imm_ref},
    {"unref", l_imm_unref}, {"active", l_imm_active}, {NULL, NULL}};

/* --- readiness of a descriptor (the REPL's stdin) ------------------------ */

typedef struct lreadable {
  tide_host *h;
  struct event *ev;
  int ref; /* registry ref of {fn, arg} */
} lreadable;

static void readable_cb(evutil_socket_t fd, short what, void *p) {
  lreadable *r = p;
  tide_host *h = r->h;
  lua_State *L = h->L;
  (void)fd, (void)what;
  h->refs--;
  lua_rawgeti(L, LUA_REGISTRYINDEX, r->ref);
  luaL_unref(L, LUA_REGISTRYINDEX, r->ref);
  lua_rawgeti(L, -1, 1);
  lua_rawgeti(L, -2, 2);
  lua_remove(L, -3);
  event_free(r->ev);
  free(r);
  tide__call(h, h->ref_run_direct, 2);
}

/* C.when_readable(fd, fn, arg): fn(arg) runs in the poll phase once fd is
 * readable. Keeps the loop alive meanwhile. */
static int l_when_readable(lua_State *L) {
  tide_host *h = HOST(L);
  int fd = (int)luaL_checkinteger(L, 1);
  lreadable *r;
  luaL_checktype(L, 2, LUA_TFUNCTION);
  lua_settop(L, 3);
  r = malloc(sizeof *r);
  if (!r) return luaL_error(L, "not enough memory");
  r->h = h;
  r->ev = event_new(h->base, fd, EV_READ, readable_cb, r);
  if (!r->ev || event_add(r->ev, NULL) != 0) {
    if (r->ev) event_free(r->ev);
    free(r);
    return luaL_error(L, "cannot watch descriptor %d", fd);
  }
  lua_createtable(L, 2, 0);
  lua_pushvalue(L, 2);
  lua_rawseti(L, -2, 1);
  lua_pushvalue(L, 3);
  lua_rawseti(L, -2, 2);
  r->ref = luaL_ref(L, LUA_REGISTRYINDEX);
  h->refs++;
  return 0;
}

/* --- clocks, phase, stats, exit ------------------------------------------ */

static int l_now(lua_State *L) {
  tide_host *h = HOST(L);
  if (!h->running) h->now = tide__hrtime(); /* outside the loop: read it */
  lua_pushnumber(L, (double)h->now / 1e9);
  return 1;
}

static int l_hrtime(lua_State *L) {
  lua_pushnumber(L, (double)tide__hrtime() / 1e9);
  return 1;
}

static int l_time(lua_State *L) {
  struct timeval tv;
  gettimeofday(&tv, NULL);
  lua_pushnumber(L, (double)tv.tv_sec + (double)tv.tv_usec / 1e6);
  return 1;
}

static int l_phase(lua_State *L) {
  lua_pushstring(L, tide__phase_names[HOST(L)->phase]);
  return 1;
}

static void set_num(lua_State *L, const char *k, double v) {
  lua_pushnumber(L, v);
  lua_setfield(L, -2, k);
}

static int l_stats(lua_State *L) {
  tide_host *h = HOST(L);
  int64_t wall = tide__hrtime() - h->start;
  int i;
  lua_createtable(L, 0, 8);
  set_num(L, "iterations", (double)h->iterations);
  lua_createtable(L, 0, TIDE_PHASE_COUNT_LOOP);
  for (i = 0; i < TIDE_PHASE_COUNT_LOOP; i++) {
    lua_createtable(L, 0, 2);
    set_num(L, "callbacks", (double)h->phase_calls[i]);
    set_num(L, "seconds", (double)h->phase_ns[i] / 1e9);
    lua_setfield(L, -2, tide__phase_names[i]);
  }
  lua_setfield(L, -2, "phases");
  set_num(L, "lag", (double)h->lag_ns / 1e9);
  set_num(L, "lag_max", (double)h->lag_max_ns / 1e9);
  set_num(L, "utilization",
          wall > 0 ? (double)(wall - h->idle_ns) / (double)wall : 0);
  set_num(L, "timers", (double)h->timers.count);
  set_num(L, "immediates", (double)h->imm_count);
  set_num(L, "refs", (double)h->refs);
  /* the worker pool starts on first use; none of its work exists yet */
  lua_createtable(L, 0, 4);
  set_num(L, "threads", 0);
  set_num(L, "size", h->threads);
  set_num(L, "queued", 0);
  set_num(L, "running", 0);
  lua_setfield(L, -2, "pool");
  return 1;
}

/* C.exit(code): mark the host as exiting; the loop stops after the running
 * callback. The Lua side then parks the calling task for good. */
static int l_exit(lua_State *L) {
  tide_host *h = HOST(L);
  int code = (int)luaL_optinteger(L, 1, 0);
  if (lua_isboolean(L, 1)) code = lua_toboolean(L, 1) ? 0 : 1;
  tide__exit(h, code);
  return 0;
}

/* C.set_runners(run_task, run_direct, start): the scheduler's entry
 * points (see tide__call and tide_run_file). */
static int l_set_runners(lua_State *L) {
  tide_host *h = HOST(L);
  luaL_checktype(L, 1, LUA_TFUNCTION);
  luaL_checktype(L, 2, LUA_TFUNCTION);
  luaL_checktype(L, 3, LUA_TFUNCTION);
  lua_settop(L, 3);
  h->ref_start = luaL_ref(L, LUA_REGISTRYINDEX);
  h->ref_run_direct = luaL_ref(L, LUA_REGISTRYINDEX);
  h->ref_run_task = luaL_ref(L, LUA_REGISTRYINDEX);
  return 0;
}

/* Registers fns as closures over (host, mt) into the table on top. */
static void set_funcs(lua_State *L, tide_host *h, int mt, const luaL_Reg *r) {
  for (; r->name; r++) {
    lua_pushlightuserdata(L, h);
    lua_pushvalue(L, mt);
    lua_pushcclosure(L, r->func, 2);
    lua_setfield(L, -2, r->name);
  }
}

/* A metatable whose methods (and __tostring) are closures over (host, mt),
 * so that check_ud can compare metatables directly. */
static int new_metatable(lua_State *L, tide_host *h, const char *name,
                         const luaL_Reg *m, lua_CFunction tostring) {
  int mt;
  luaL_newmetatable(L, name);
  mt = lua_gettop(L);
  lua_newtable(L);
  set_funcs(L, h, mt, m);
  lua_setfield(L, mt, "__index");
  if (tostring) {
    lua_pushlightuserdata(L, h);
    lua_pushvalue(L, mt);
    lua_pushcclosure(L, tostring, 2);
    lua_setfield(L, mt, "__tostring");
  }
  lua_pushliteral(L, "locked");
  lua_setfield(L, mt, "__metatable");
  return mt;
}

int tide__open_core(lua_State *L) {
  tide_host *h = tide_from_lua(L);
  int timer_mt =
      new_metatable(L, h, TIMER_MT, timer_methods, l_timer_tostring);
  int imm_mt = new_metatable(L, h, IMM_MT, imm_methods, NULL);
  static const luaL_Reg timer_fns[] = {
      {"after", l_after}, {"every", l_every}, {"timer", l_wait_timer},
      {NULL, NULL}};
  static const luaL_Reg imm_fns[] = {{"immediate", l_immediate}, {NULL, NULL}};
  static const luaL_Reg plain_fns[] = {
      {"now", l_now},     {"hrtime", l_hrtime},   {"time", l_time},
      {"phase", l_phase}, {"stats", l_stats},     {"exit", l_exit},
      {"set_runners", l_set_runners}, {"when_readable", l_when_readable},
      {NULL, NULL}};

  lua_newtable(L); /* the primitives handed to core.lua */
  set_funcs(L, h, timer_mt, timer_fns);
  set_funcs(L, h, imm_mt, imm_fns);
  set_funcs(L, h, timer_mt, plain_fns);
  lua_pushliteral(L, TIDE_VERSION);
  lua_setfield(L, -2, "version");

  lua_getglobal(L, "require");
  lua_pushliteral(L, "tide.core");
  lua_call(L, 1, 1);     /* core.lua returns function(C) -> tide */
  lua_pushvalue(L, -2);
  lua_call(L, 1, 1);
  return 1;
}
