/*
 * host/core.c - the C half of `require "tide"`: clocks, phase, stats, exit,
 * and the function pointers of ltimer.c for the FFI. The scheduler (tasks,
 * waits, timers, immediates, channels) is lua/tide/core.lua, which receives
 * the primitives defined here.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/time.h>

#include <event2/event.h>

#include "internal.h"


#define HOST(L) ((tide_host *)lua_touserdata(L, lua_upvalueindex(1)))

/* --- readiness of a descriptor (the REPL's stdin) ------------------------ */

typedef struct lreadable {
  tide_host *h;
  struct event *ev; /* NULL once closed */
  int ref;          /* registry ref of {fn, arg, self} while armed */
} lreadable;

#define READABLE_MT "tide.readable"

static void readable_disarm(lua_State *L, lreadable *r) {
  if (r->ref == LUA_NOREF) return;
  r->h->refs--;
  luaL_unref(L, LUA_REGISTRYINDEX, r->ref);
  r->ref = LUA_NOREF;
}

static void readable_cb(evutil_socket_t fd, short what, void *p) {
  lreadable *r = p;
  tide_host *h = r->h;
  lua_State *L = h->L;
  (void)fd, (void)what;
  lua_rawgeti(L, LUA_REGISTRYINDEX, r->ref);
  readable_disarm(L, r);
  lua_rawgeti(L, -1, 1);
  lua_rawgeti(L, -2, 2);
  lua_remove(L, -3);
  tide__call(h, h->ref_run_direct, 2);
}

/* C.when_readable(fd, fn, arg) -> watcher: fn(arg) runs in the poll phase
 * once fd is readable. The watcher keeps the loop alive until then;
 * watcher:close() (also its __gc) cancels it. Returns false for a regular
 * file, which is always readable and cannot be polled. */
static int l_when_readable(lua_State *L) {
  tide_host *h = HOST(L);
  int fd = (int)luaL_checkinteger(L, 1);
  lreadable *r;
  struct stat st;
  luaL_checktype(L, 2, LUA_TFUNCTION);
  lua_settop(L, 3);
  if (fstat(fd, &st) == 0 && S_ISREG(st.st_mode)) {
    lua_pushboolean(L, 0);
    return 1;
  }
  r = lua_newuserdata(L, sizeof *r);
  r->h = h;
  r->ref = LUA_NOREF;
  r->ev = event_new(h->base, fd, EV_READ, readable_cb, r);
  luaL_getmetatable(L, READABLE_MT);
  lua_setmetatable(L, -2);
  if (!r->ev || event_add(r->ev, NULL) != 0)
    return luaL_error(L, "cannot watch descriptor %d", fd);
  lua_createtable(L, 3, 0);
  lua_pushvalue(L, 2);
  lua_rawseti(L, -2, 1);
  lua_pushvalue(L, 3);
  lua_rawseti(L, -2, 2);
  lua_pushvalue(L, 4);
  lua_rawseti(L, -2, 3);
  r->ref = luaL_ref(L, LUA_REGISTRYINDEX);
  h->refs++;
  return 1;
}

static int l_readable_close(lua_State *L) {
  lreadable *r = luaL_checkudata(L, 1, READABLE_MT);
  readable_disarm(L, r);
  if (r->ev) {
    event_free(r->ev); /* also removes it from the base */
    r->ev = NULL;
  }
  return 0;
}

/* --- ltimer.c for interpreted code ---------------------------------------
 * The FFI is fast from compiled code and slow from the interpreter, where
 * the scheduler's own paths run (coroutine switches end traces): these are
 * the same calls through the Lua C API. */

/* C.pop() -> slot, cached clock, next deadline (see tide__lt_pop) */
static int l_lt_pop(lua_State *L) {
  tide_host *h = HOST(L);
  lua_pushinteger(L, tide__lt_pop(h));
  lua_pushnumber(L, tide__lt_cached(h));
  lua_pushnumber(L, tide__lt_next(h));
  return 3;
}

static int l_lt_start_at(lua_State *L) {
  lua_pushinteger(L, tide__lt_start_at(HOST(L), (int32_t)lua_tointeger(L, 1),
                                       lua_tonumber(L, 2),
                                       lua_toboolean(L, 3)));
  return 1;
}

static int l_lt_stop(lua_State *L) {
  tide__lt_stop(HOST(L), (int32_t)lua_tointeger(L, 1));
  return 0;
}

/* C.clock(cached) -> the clock now, or the iteration's cached one */
static int l_lt_clock(lua_State *L) {
  tide_host *h = HOST(L);
  lua_pushnumber(L, lua_toboolean(L, 1) ? tide__lt_cached(h)
                                        : tide__lt_clock(h));
  return 1;
}

static int l_imm_set(lua_State *L) {
  tide__lua_imm_set(HOST(L), (int32_t)lua_tointeger(L, 1),
                    (int32_t)lua_tointeger(L, 2));
  return 0;
}

/* --- clocks, phase, stats, exit ------------------------------------------ */

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
  set_num(L, "refs", (double)h->refs);
  { /* the worker pool: threads stay 0 until its first job */
    int threads, running;
    size_t queued;
    tide__pool_stats(h, &threads, &queued, &running);
    lua_createtable(L, 0, 4);
    set_num(L, "threads", threads);
    set_num(L, "size", h->threads);
    set_num(L, "queued", (double)queued);
    set_num(L, "running", running);
    lua_setfield(L, -2, "pool");
  }
  return 1;
}

/* C.exit(code): mark the host as exiting; the loop stops after the running
 * callback. The Lua side then parks the calling task for good. */
static int l_exit(lua_State *L) {
  tide_host *h = HOST(L);
  int code = lua_isboolean(L, 1) ? !lua_toboolean(L, 1)
                                  : (int)luaL_optinteger(L, 1, 0);
  tide__exit(h, code);
  return 0;
}

/* C.set_runners(run_task, run_direct, start, run_timers, run_immediates,
 * run_closing, complete, blocking, stop): the scheduler's entry points
 * (see tide__call, request.c and tide_stop). */
static int l_set_runners(lua_State *L) {
  tide_host *h = HOST(L);
  int *refs[] = {&h->ref_run_task,   &h->ref_run_direct,
                 &h->ref_start,      &h->ref_run_timers,
                 &h->ref_run_immediates, &h->ref_run_closing,
                 &h->ref_complete,   &h->ref_blocking,
                 &h->ref_stop};
  int i, n = (int)(sizeof refs / sizeof refs[0]);
  for (i = 1; i <= n; i++) luaL_checktype(L, i, LUA_TFUNCTION);
  for (i = n; i >= 1; i--) {
    lua_settop(L, i);
    *refs[i - 1] = luaL_ref(L, LUA_REGISTRYINDEX);
  }
  return 0;
}

static void set_funcs(lua_State *L, tide_host *h, const luaL_Reg *r) {
  for (; r->name; r++) {
    lua_pushlightuserdata(L, h);
    lua_pushcclosure(L, r->func, 1);
    lua_setfield(L, -2, r->name);
  }
}

int tide__open_core(lua_State *L) {
  tide_host *h = tide_from_lua(L);
  tide__open_requests(L);
  luaL_newmetatable(L, READABLE_MT);
  lua_pushcfunction(L, l_readable_close);
  lua_setfield(L, -2, "__gc");
  lua_pushvalue(L, -1);
  lua_setfield(L, -2, "__index");
  lua_pushcfunction(L, l_readable_close);
  lua_setfield(L, -2, "close");
  lua_pop(L, 1);
  static const luaL_Reg fns[] = {
      {"hrtime", l_hrtime},   {"time", l_time},
      {"phase", l_phase}, {"stats", l_stats},     {"exit", l_exit},
      {"set_runners", l_set_runners}, {"when_readable", l_when_readable},
      {"pop", l_lt_pop}, {"start_at", l_lt_start_at}, {"stop", l_lt_stop},
      {"clock", l_lt_clock}, {"imm_set", l_imm_set},
      {NULL, NULL}};
  /* ltimer.c's functions, called from Lua through the FFI */
  static const struct { const char *name; void *fn; } ffi[] = {
      {"lt_start_at", (void *)tide__lt_start_at},
      {"lt_stop", (void *)tide__lt_stop},
      {"lt_pop", (void *)tide__lt_pop},
      {"lt_next", (void *)tide__lt_next},
      {"lt_clock", (void *)tide__lt_clock},
      {"lt_cached", (void *)tide__lt_cached},
      {"lt_now", (void *)tide__lt_now},
      {"imm_set", (void *)tide__lua_imm_set},
      {"close_arm", (void *)tide__lua_close_arm},
      {NULL, NULL}};
  int i;

  lua_newtable(L); /* the primitives handed to core.lua */
  set_funcs(L, h, fns);
  lua_pushliteral(L, TIDE_VERSION);
  lua_setfield(L, -2, "version");
  lua_pushlightuserdata(L, h);
  lua_setfield(L, -2, "host");
  lua_newtable(L);
  for (i = 0; ffi[i].name; i++) {
    lua_pushlightuserdata(L, ffi[i].fn);
    lua_setfield(L, -2, ffi[i].name);
  }
  lua_setfield(L, -2, "ffi");

  lua_getglobal(L, "require");
  lua_pushliteral(L, "tide.core");
  lua_call(L, 1, 1);     /* core.lua returns function(C) -> tide */
  lua_pushvalue(L, -2);
  lua_call(L, 1, 1);
  return 1;
}
