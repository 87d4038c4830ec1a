/*
 * modules/pool.c - `require "tide.pool"`: the worker pool seen from Lua,
 * and the smallest complete example of a module that makes blocking C
 * calls waitable (docs/pool.md walks through it).
 *
 *   pool.sleep(s[, {slow=true}])  blocks a pool thread for s seconds; the
 *                                 calling task waits, the loop does not
 *   pool.noop()                   an empty round trip through the pool
 *   pool.stats()                  {threads=, size=, queued=, running=}
 */
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <time.h>

#include "internal.h"

typedef struct sleep_req {
  double seconds;
  double slept; /* measured on the pool thread */
} sleep_req;

/* pool thread: no lua_State here */
static void sleep_work(void *data) {
  sleep_req *r = data;
  struct timespec ts, t0, t1;
  ts.tv_sec = (time_t)r->seconds;
  ts.tv_nsec = (long)((r->seconds - (double)ts.tv_sec) * 1e9);
  clock_gettime(CLOCK_MONOTONIC, &t0);
  while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {}
  clock_gettime(CLOCK_MONOTONIC, &t1);
  r->slept = (double)(t1.tv_sec - t0.tv_sec) +
             (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
}

/* loop thread: the results of the call */
static int sleep_push(lua_State *L, void *data) {
  lua_pushnumber(L, ((sleep_req *)data)->slept);
  return 1;
}

/* pool.sleep(s[, opts]) -> seconds slept (the start function) */
static int start_sleep(lua_State *L) {
  double s = luaL_checknumber(L, 1);
  int slow = 0;
  sleep_req *r;
  if (s != s || isinf(s) || s < 0 || s > 1e9)
    return luaL_argerror(L, 1, "seconds must be a number from 0 to 1e9");
  if (!lua_isnoneornil(L, 2)) {
    luaL_checktype(L, 2, LUA_TTABLE);
    lua_getfield(L, 2, "slow");
    slow = lua_toboolean(L, -1);
    lua_pop(L, 1);
  }
  r = malloc(sizeof *r);
  if (!r) return luaL_error(L, "not enough memory");
  r->seconds = s;
  r->slept = 0;
  return tide_blocking(L, r, sleep_work, sleep_push, free, slow);
}

static void noop_work(void *data) { (void)data; }
static int noop_push(lua_State *L, void *data) {
  (void)L, (void)data;
  return 0;
}

/* pool.noop(): nothing to allocate, so data is NULL and there is no free */
static int start_noop(lua_State *L) {
  return tide_blocking(L, NULL, noop_work, noop_push, NULL, 0);
}

static int l_stats(lua_State *L) {
  tide_host *h = tide_from_lua(L);
  int threads, running;
  size_t queued;
  tide__pool_stats(h, &threads, &queued, &running);
  lua_createtable(L, 0, 4);
  lua_pushinteger(L, threads);
  lua_setfield(L, -2, "threads");
  lua_pushinteger(L, h->threads);
  lua_setfield(L, -2, "size");
  lua_pushinteger(L, (lua_Integer)queued);
  lua_setfield(L, -2, "queued");
  lua_pushinteger(L, running);
  lua_setfield(L, -2, "running");
  return 1;
}

TIDE_MODULE("tide.pool", tide__open_pool) {
  lua_newtable(L);
  tide_push_blocking(L, start_sleep, "sleep");
  lua_setfield(L, -2, "sleep");
  tide_push_blocking(L, start_noop, "noop");
  lua_setfield(L, -2, "noop");
  lua_pushcfunction(L, l_stats);
  lua_setfield(L, -2, "stats");
  return 1;
}
