/*
 * host/host.c - creating, running and freeing a host; the bridge from the
 * loop into the Lua scheduler of lua/tide/core.lua.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <event2/event.h>
#include <event2/thread.h>
#include <lualib.h>

#include "internal.h"

static char host_key; /* registry key of the host's lightuserdata */

int64_t tide__hrtime(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

tide_host *tide_from_lua(lua_State *L) {
  tide_host *h;
  lua_pushlightuserdata(L, &host_key);
  lua_rawget(L, LUA_REGISTRYINDEX);
  h = lua_touserdata(L, -1);
  lua_pop(L, 1);
  return h;
}

lua_State *tide_lua(tide_host *h) { return h->L; }
struct event_base *tide_event_base(tide_host *h) { return h->base; }
int tide_exit_code(const tide_host *h) {
  return h->exiting ? h->exit_code : -1;
}

void tide__exit(tide_host *h, int code) {
  if (h->exiting) return; /* the first reason to exit wins */
  h->exiting = 1;
  h->exit_code = code;
}

void tide__call(tide_host *h, int fn_ref, int nargs) {
  lua_State *L = h->L;
  if (h->phase == TIDE_PHASE_POLL) { /* other phases count in their loop */
    if (!h->poll_woke) h->poll_woke = tide__hrtime();
    h->phase_calls[TIDE_PHASE_POLL]++;
  }
  lua_rawgeti(L, LUA_REGISTRYINDEX, fn_ref);
  lua_insert(L, -(nargs + 1));
  /* run_task and run_direct catch errors of the code they run; what gets
   * here is a failure of the scheduler itself, such as memory. */
  if (lua_pcall(L, nargs, 0, 0) != 0) {
    fprintf(stderr, "tide: %s\n", lua_tostring(L, -1));
    lua_pop(L, 1);
  }
}

int tide__anchor(tide_host *h, lua_State *L, int idx) {
  int slot;
  if (idx < 0) idx = lua_gettop(L) + idx + 1;
  if (h->nfree > 0) {
    slot = h->free_slots[--h->nfree];
  } else {
    slot = ++h->next_slot;
  }
  lua_rawgeti(L, LUA_REGISTRYINDEX, h->ref_anchors);
  lua_pushvalue(L, idx);
  lua_rawseti(L, -2, slot);
  lua_pop(L, 1);
  return slot;
}

void tide__unanchor(tide_host *h, lua_State *L, int slot) {
  if (slot <= 0) return;
  if (h->nfree == h->cap_free) {
    int cap = h->cap_free ? h->cap_free * 2 : 64;
    int *p = realloc(h->free_slots, (size_t)cap * sizeof *p);
    if (!p) { /* keep the slot out of use: a tiny leak, not a crash */
      lua_rawgeti(L, LUA_REGISTRYINDEX, h->ref_anchors);
      lua_pushboolean(L, 0);
      lua_rawseti(L, -2, slot);
      lua_pop(L, 1);
      return;
    }
    h->free_slots = p;
    h->cap_free = cap;
  }
  lua_rawgeti(L, LUA_REGISTRYINDEX, h->ref_anchors);
  lua_pushboolean(L, 0); /* not nil: keeps the table's array part dense */
  lua_rawseti(L, -2, slot);
  lua_pop(L, 1);
  h->free_slots[h->nfree++] = slot;
}

void tide__push_anchor(tide_host *h, lua_State *L, int slot) {
  lua_rawgeti(L, LUA_REGISTRYINDEX, h->ref_anchors);
  lua_rawgeti(L, -1, slot);
  lua_remove(L, -2);
}

int64_t tide__call_count(tide_host *h, int fn_ref) {
  lua_State *L = h->L;
  int64_t n;
  lua_rawgeti(L, LUA_REGISTRYINDEX, fn_ref);
  if (lua_pcall(L, 0, 1, 0) != 0) {
    fprintf(stderr, "tide: %s\n", lua_tostring(L, -1));
    lua_pop(L, 1);
    return 0;
  }
  n = (int64_t)lua_tointeger(L, -1);
  lua_pop(L, 1);
  return n;
}

/* package.preload loader for the Lua files embedded in the binary */
static int load_embedded(lua_State *L) {
  const tide__lua_module *m = lua_touserdata(L, lua_upvalueindex(1));
  if (luaL_loadbuffer(L, (const char *)m->code, m->size, m->name) != 0)
    return lua_error(L);
  lua_pushvalue(L, 1);
  lua_call(L, 1, 1);
  return 1;
}

static void set_paths(lua_State *L, const char *dir) {
  if (!dir) return;
  lua_getglobal(L, "package");
  lua_getfield(L, -1, "path");
  lua_pushfstring(L, "%s/?.lua;%s/?/init.lua;%s", dir, dir,
                  lua_tostring(L, -1));
  lua_setfield(L, -3, "path");
  lua_pop(L, 1);
  lua_getfield(L, -1, "cpath");
  lua_pushfstring(L, "%s/?.so;%s", dir, lua_tostring(L, -1));
  lua_setfield(L, -3, "cpath");
  lua_pop(L, 2);
}

static void set_arg(lua_State *L, const tide_options *o) {
  int i;
  if (!o->argv) return;
  lua_createtable(L, o->argc, 1);
  for (i = 0; i < o->argc; i++) {
    lua_pushstring(L, o->argv[i]);
    lua_rawseti(L, -2, i - o->script_index);
  }
  lua_setglobal(L, "arg");
}

static int open_host(lua_State *L) {
  tide_host *h = lua_touserdata(L, 1);
  const tide__lua_module *m;
  luaL_openlibs(L);
  lua_pushlightuserdata(L, &host_key);
  lua_pushlightuserdata(L, h);
  lua_rawset(L, LUA_REGISTRYINDEX);
  set_paths(L, h->opts.script_dir);
  lua_newtable(L);
  h->ref_anchors = luaL_ref(L, LUA_REGISTRYINDEX);

  lua_getglobal(L, "package");
  lua_getfield(L, -1, "preload");
  for (m = tide__lua_modules; m->name; m++) {
    lua_pushlightuserdata(L, (void *)m);
    lua_pushcclosure(L, load_embedded, 1);
    lua_setfield(L, -2, m->name);
  }
  lua_pushcfunction(L, tide__open_core);
  lua_setfield(L, -2, "tide");
  {
    const luaL_Reg *r;
    for (r = tide__c_modules; r->name; r++) {
      lua_pushcfunction(L, r->func);
      lua_setfield(L, -2, r->name);
    }
  }
  lua_pop(L, 2);

  lua_getglobal(L, "require");
  lua_pushliteral(L, "tide");
  lua_call(L, 1, 1);
  if (!h->opts.no_globals) {
    lua_setglobal(L, "tide");
    set_arg(L, &h->opts);
  }
  return 0;
}

static void use_threads(void) { evthread_use_pthreads(); }

tide_host *tide_host_new(const tide_options *opts, char *err, size_t errlen) {
  static pthread_once_t once = PTHREAD_ONCE_INIT;
  tide_host *h;
  const char *why = NULL;
  const char *env;

  pthread_once(&once, use_threads);
  h = calloc(1, sizeof *h);
  if (!h) {
    if (err) snprintf(err, errlen, "not enough memory");
    return NULL;
  }
  if (opts) h->opts = *opts;
  h->phase = TIDE_PHASE_MAIN;
  h->start = h->now = tide__hrtime();
  h->ref_run_task = h->ref_run_direct = h->ref_start = LUA_NOREF;
  h->ref_complete = h->ref_blocking = h->ref_stop = LUA_NOREF;
  h->threads = h->opts.threads;
  if (h->threads <= 0 && (env = getenv("TIDE_THREADPOOL_SIZE")) != NULL)
    h->threads = atoi(env);
  if (h->threads <= 0) h->threads = 4;
  if (h->threads > 1024) h->threads = 1024;
  tide__timers_init(&h->timers);

  {
    /* PRECISE_TIMER: libevent otherwise times its waits with the coarse
     * clock (4 ms here), and timers would wake milliseconds late.
     * NO_CACHE_TIME: tasks resume inside poll-phase callbacks and may run
     * a while; a module's libevent timeout added then must count from now,
     * not from when the callbacks began. */
    struct event_config *cfg = event_config_new();
    if (cfg) {
      event_config_set_flag(cfg, EVENT_BASE_FLAG_PRECISE_TIMER);
      event_config_set_flag(cfg, EVENT_BASE_FLAG_NO_CACHE_TIME);
      h->base = event_base_new_with_config(cfg);
      event_config_free(cfg);
    }
  }
  if (!h->base) why = "could not create the event base";
  if (!why && !(h->L = luaL_newstate())) why = "not enough memory";
  if (!why) {
    lua_pushcfunction(h->L, open_host);
    lua_pushlightuserdata(h->L, h);
    if (lua_pcall(h->L, 1, 0, 0) != 0) why = lua_tostring(h->L, -1);
  }
  if (why) {
    if (err) snprintf(err, errlen, "%s", why);
    tide_host_free(h);
    return NULL;
  }
  return h;
}

void tide_register(tide_host *h, const char *name, lua_CFunction fn) {
  lua_pushcfunction(h->L, fn);
  lua_setglobal(h->L, name);
}

void tide_register_module(tide_host *h, const char *name, lua_CFunction open) {
  lua_State *L = h->L;
  lua_getglobal(L, "package");
  lua_getfield(L, -1, "preload");
  lua_pushcfunction(L, open);
  lua_setfield(L, -2, name);
  lua_pop(L, 2);
}

int tide_start(tide_host *h, int main) {
  lua_State *L = h->L;
  if (!h->running) h->now = tide__hrtime(); /* the clock of this run */
  lua_rawgeti(L, LUA_REGISTRYINDEX, h->ref_start);
  lua_insert(L, -2);
  lua_pushboolean(L, main);
  if (lua_pcall(L, 2, 0, 0) != 0) return -1;
  return 0;
}

int tide_run_file(tide_host *h, const char *path) {
  if (luaL_loadfile(h->L, path) != 0) return -1;
  return tide_start(h, 0);
}

int tide_run_main(tide_host *h, const char *path) {
  if (luaL_loadfile(h->L, path) != 0) return -1;
  return tide_start(h, 1);
}

int tide_run_string(tide_host *h, const char *code, const char *name) {
  if (luaL_loadbuffer(h->L, code, strlen(code), name ? name : code) != 0)
    return -1;
  return tide_start(h, 0);
}

void tide_host_free(tide_host *h) {
  if (!h) return;
  if (h->L) {
    /* Nothing fires any more; close callbacks (also those of handles the
     * GC closes now) run before the state goes. */
    int exiting = h->exiting, code = h->exit_code;
    h->freeing = 1;
    tide__pool_shutdown(h); /* no completion may run after the host */
    tide__loop_shutdown(h);
    lua_gc(h->L, LUA_GCCOLLECT, 0);
    tide__loop_shutdown(h);
    h->exiting = exiting;
    h->exit_code = code;
    lua_close(h->L);
  }
  tide__timers_free(&h->timers);
  tide__lt_free_all(h);
  if (h->poll_timer) event_free(h->poll_timer);
  if (h->base) event_base_free(h->base);
  free(h->free_slots);
  free(h);
}
