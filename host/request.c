/*
 * host/request.c - blocking C calls made callable from Lua (tide_blocking,
 * tide_push_blocking): a request is a pool job inside a Lua userdata that
 * the calling task waits on.
 *
 * While the job is in flight the userdata is anchored, so its memory (which
 * a pool thread writes) outlives any Lua reference to it. The waiting task
 * holds the request as its wait's clean-up: a timeout or a cancellation
 * closes it, which takes a queued job off the pool's queue or, once a
 * thread runs it, makes its results be dropped when it finishes.
 */
#include <string.h>

#include "internal.h"

#define REQUEST_MT "tide.request"

typedef struct lreq {
  tide_job job;
  tide_host *h;
  void *data;
  void (*work)(void *data);
  tide_push_fn push;
  void (*free_fn)(void *data);
  int anchor;    /* while in flight */
  int abandoned; /* closed while a thread ran it: drop its results */
} lreq;

static void req_work(tide_job *j) {
  lreq *r = (lreq *)j;
  r->work(r->data);
}

static void req_release(lreq *r) {
  if (r->free_fn && r->data) r->free_fn(r->data);
  r->data = NULL;
}

/* push(L, data), in protected mode: a push that runs out of memory must
 * not escape the poll phase */
static int push_results(lua_State *L) {
  lreq *r = lua_touserdata(L, 1);
  lua_pop(L, 1);
  return r->push(L, r->data);
}

/* Loop thread: hand the results to core.lua's complete(req, ...), which
 * wakes the waiting task. */
static void req_done(tide_job *j, int cancelled) {
  lreq *r = (lreq *)j;
  tide_host *h = r->h;
  lua_State *L = h->L;
  int anchor = r->anchor, n, base;
  r->anchor = LUA_NOREF;
  if (cancelled || r->abandoned) {
    req_release(r);
    tide__unanchor(h, L, anchor);
    return;
  }
  lua_rawgeti(L, LUA_REGISTRYINDEX, h->ref_complete);
  tide__push_anchor(h, L, anchor);
  tide__unanchor(h, L, anchor);
  base = lua_gettop(L);
  lua_pushcfunction(L, push_results);
  lua_pushlightuserdata(L, r);
  if (lua_pcall(L, 1, LUA_MULTRET, 0) != 0) { /* push failed (memory) */
    lua_pushnil(L); /* the task gets nil, message */
    lua_insert(L, -2);
  }
  n = lua_gettop(L) - base;
  req_release(r);
  tide__call(h, h->ref_run_direct, 2 + n);
}

int tide_blocking(lua_State *L, void *data, void (*work)(void *data),
                  tide_push_fn push, void (*free_fn)(void *data), int slow) {
  tide_host *h = tide_from_lua(L);
  lreq *r = lua_newuserdata(L, sizeof *r);
  memset(r, 0, sizeof *r);
  r->h = h;
  r->data = data;
  r->work = work;
  r->push = push;
  r->free_fn = free_fn;
  r->job.work = req_work;
  r->job.done = req_done;
  r->job.slow = slow;
  luaL_getmetatable(L, REQUEST_MT);
  lua_setmetatable(L, -2);
  r->anchor = tide__anchor(h, L, -1);
  if (tide_pool_submit(h, &r->job) != 0) {
    tide__unanchor(h, L, r->anchor);
    r->anchor = LUA_NOREF;
    req_release(r);
    return luaL_error(L, "cannot start the worker pool");
  }
  return 1;
}

/* request:close() (and __gc): give up on the call. */
static int l_req_close(lua_State *L) {
  lreq *r = luaL_checkudata(L, 1, REQUEST_MT);
  if (r->anchor == LUA_NOREF || r->abandoned) return 0;
  if (!tide_pool_cancel(r->h, &r->job)) r->abandoned = 1;
  return 0;
}

void tide_push_blocking(lua_State *L, lua_CFunction start, const char *name) {
  tide_host *h = tide_from_lua(L);
  lua_rawgeti(L, LUA_REGISTRYINDEX, h->ref_blocking);
  lua_pushcfunction(L, start);
  lua_pushstring(L, name);
  lua_call(L, 2, 1);
}

void tide__open_requests(lua_State *L) {
  luaL_newmetatable(L, REQUEST_MT);
  lua_pushcfunction(L, l_req_close);
  lua_setfield(L, -2, "__gc");
  lua_newtable(L);
  lua_pushcfunction(L, l_req_close);
  lua_setfield(L, -2, "close");
  lua_setfield(L, -2, "__index");
  lua_pop(L, 1);
}

void tide__complete(tide_host *h, int nargs) {
  lua_State *L = h->L;
  lua_rawgeti(L, LUA_REGISTRYINDEX, h->ref_complete);
  lua_insert(L, -(nargs + 1));
  tide__call(h, h->ref_run_direct, nargs + 1);
}
