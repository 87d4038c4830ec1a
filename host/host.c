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

#include <errno.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <event2/event.h>
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
  if (h->sandbox) tide__sandbox_boundary(h);
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

/* Puts prefix (ending in ';') in front of package[field]. */
static void prepend_path(lua_State *L, const char *field, const char *prefix) {
  lua_getglobal(L, "package");
  lua_getfield(L, -1, field);
  lua_pushfstring(L, "%s%s", prefix, lua_tostring(L, -1));
  lua_setfield(L, -3, field);
  lua_pop(L, 2);
}

static void set_paths(lua_State *L, const tide_options *o) {
  const char *dir = o->script_dir;
  if (o->cpath) {
    lua_pushfstring(L, "%s;", o->cpath);
    prepend_path(L, "cpath", lua_tostring(L, -1));
    lua_pop(L, 1);
  }
  if (o->path) {
    lua_pushfstring(L, "%s;", o->path);
    prepend_path(L, "path", lua_tostring(L, -1));
    lua_pop(L, 1);
  }
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
  set_paths(L, &h->opts);
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

/* The Lua state's allocator: LuaJIT's own (fast, and in the address range
 * the VM needs), wrapped to count the bytes in use and refuse growth past
 * the limit. LuaJIT turns a refused allocation into the error "not enough
 * memory"; shrinking and freeing always pass. */
static void *limited_alloc(void *ud, void *ptr, size_t osize, size_t nsize) {
  tide_host *h = ud;
  void *p;
  if (ptr == NULL) osize = 0;
  if (nsize > osize && h->mem_limit &&
      h->mem_used + (nsize - osize) > h->mem_limit)
    return NULL;
  p = h->alloc_f(h->alloc_ud, ptr, osize, nsize);
  if (p != NULL || nsize == 0) h->mem_used = h->mem_used - osize + nsize;
  return p;
}

static int post_init(tide_host *h);

tide_host *tide_host_new(const tide_options *opts, char *err, size_t errlen) {
  tide_host *h;
  const char *why = NULL;
  const char *env;

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
  if (!why && h->opts.memory_limit) tide__count_memory(h);
  if (!why && post_init(h) != 0) why = "could not create the post queue";
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
  /* the limit applies from here: the libraries are loaded */
  h->mem_limit = h->opts.memory_limit;
  return h;
}

static size_t gc_bytes(lua_State *L) {
  return (size_t)lua_gc(L, LUA_GCCOUNT, 0) * 1024 +
         (size_t)lua_gc(L, LUA_GCCOUNTB, 0);
}

/* Counting goes through limited_alloc from the first memory limit or
 * plugin sandbox on; until then the state calls LuaJIT's allocator
 * directly, as the wrapper costs every allocation. (The wrapper forwards
 * to that same allocator, so blocks from before are freed alike.) */
void tide__count_memory(tide_host *h) {
  if (h->alloc_f) return;
  h->alloc_f = lua_getallocf(h->L, &h->alloc_ud);
  h->mem_used = gc_bytes(h->L);
  lua_setallocf(h->L, limited_alloc, h);
}

size_t tide_memory_used(const tide_host *h) {
  return h->alloc_f ? h->mem_used : gc_bytes(h->L);
}

void tide_set_memory_limit(tide_host *h, size_t bytes) {
  if (bytes) tide__count_memory(h);
  h->mem_limit = bytes;
}

void tide_ref(tide_host *h) { h->refs++; }
void tide_unref(tide_host *h) {
  if (h->refs > 0) h->refs--;
}

/* host.c's own state beside the host struct: tide_post's queue (below),
 * and tide_call's calls in flight. */
typedef struct post_item {
  struct post_item *next;
  tide_post_fn fn;
  void *arg;
} post_item;

struct tide__posts {
  struct call_rec *calls; /* tide_call's calls in flight (loop thread) */
  pthread_mutex_t lock;
  post_item *head, *tail; /* (lock) */
  int wake_pending;       /* the eventfd was written (lock; read without it
                             by the poll phase, see tide__posts_waiting) */
  int closed;             /* the host is being freed (lock) */
  int fd;
  struct event *ev;
};

/* --- tide_call: a Lua function as a task, its end to a C callback --------
 * start(rec, fn, ...) hands run(rec, fn, ...) to core.lua's tide._call,
 * which runs it as a task; run calls fn under xpcall and gives what it
 * returned (or its error) to deliver(rec, ...), which calls the callback.
 * rec is a C record on the host's list of calls in flight: those whose
 * task never ends get their callback at tide_host_free, so it runs
 * exactly once. */

typedef struct call_rec {
  struct call_rec *next, *prev;
  tide_result_fn cb;
  void *ud;
  tide_host *h;
} call_rec;

static const char tramp_code[] =
    "local xpcall, deliver, traceback, type, call = ...\n"
    "local function handler(e)\n"
    "  if type(e) == 'string' then return traceback(e, 2) end\n"
    "  return e\n"
    "end\n"
    "local function run(rec, fn, ...)\n"
    "  return deliver(rec, xpcall(fn, handler, ...))\n"
    "end\n"
    "return function(rec, fn, ...) return call(run, rec, fn, ...) end\n";

/* The task a result callback runs in: tide_call from the callback pushes
 * there (one host per thread, so one such state per thread). */
static __thread lua_State *callback_L;
static __thread tide_host *callback_h;

static void call_unlink(tide_host *h, call_rec *r) {
  if (r->prev)
    r->prev->next = r->next;
  else
    h->posts->calls = r->next;
  if (r->next) r->next->prev = r->prev;
}

/* the callback, with the values on top of L; then r is freed */
static void run_callback(call_rec *r, lua_State *L, int status, int n) {
  lua_State *prev = callback_L;
  tide_host *prev_h = callback_h;
  call_unlink(r->h, r);
  callback_L = L;
  callback_h = r->h;
  r->cb(r->h, L, status, n, r->ud);
  callback_L = prev;
  callback_h = prev_h;
  free(r);
}

/* deliver(rec, ok, ...): the C callback gets the results, or the error
 * as a string */
static int l_call_deliver(lua_State *L) {
  call_rec *r = lua_touserdata(L, 1);
  int n = lua_gettop(L) - 2;
  if (lua_toboolean(L, 2)) {
    run_callback(r, L, TIDE_OK, n);
    return 0;
  }
  lua_settop(L, 3);
  if (!lua_isstring(L, 3)) {
    lua_pushfstring(L, "(error object is a %s value)", luaL_typename(L, 3));
    lua_replace(L, 3);
  }
  run_callback(r, L, TIDE_ERROR, 1);
  return 0;
}

/* tide_host_free: the calls whose task never ended */
static void calls_abandon(tide_host *h) {
  while (h->posts && h->posts->calls) {
    lua_pushliteral(h->L, "the call did not finish: the host was freed");
    run_callback(h->posts->calls, h->L, TIDE_ERROR, 1);
    lua_pop(h->L, 1);
  }
}

/* pushes h's start function, made on first use */
static int push_start(tide_host *h, lua_State *L) {
  if (h->ref_call > 0) {
    lua_rawgeti(L, LUA_REGISTRYINDEX, h->ref_call);
    return 0;
  }
  if (luaL_loadbuffer(L, tramp_code, sizeof tramp_code - 1, "=tide_call") != 0)
    return -1;
  lua_getglobal(L, "xpcall");
  lua_pushcfunction(L, l_call_deliver);
  lua_getglobal(L, "debug");
  lua_getfield(L, -1, "traceback");
  lua_remove(L, -2);
  lua_getglobal(L, "type");
  lua_getglobal(L, "require");
  lua_pushliteral(L, "tide");
  if (lua_pcall(L, 1, 1, 0) != 0) return -1;
  lua_getfield(L, -1, "_call");
  lua_remove(L, -2);
  if (lua_pcall(L, 5, 1, 0) != 0) return -1;
  lua_pushvalue(L, -1);
  h->ref_call = luaL_ref(L, LUA_REGISTRYINDEX);
  return 0;
}

int tide_call(tide_host *h, int nargs, tide_result_fn cb, void *ud) {
  int inside = callback_L && callback_h == h;
  lua_State *L = inside ? callback_L : h->L;
  int fn = lua_gettop(L) - nargs, top = fn - 1;
  call_rec *r;
  if (fn < 1 || !cb) {
    lua_settop(L, top > 0 ? top : 0);
    lua_pushstring(L, "tide_call: no function on the stack, or no callback");
    return -1;
  }
  if (h->freeing) {
    lua_settop(L, top);
    lua_pushliteral(L, "tide_call: the host is being freed");
    return -1;
  }
  if (!lua_isfunction(L, fn) &&
      !(luaL_getmetafield(L, fn, "__call") && (lua_pop(L, 1), 1))) {
    lua_pushfstring(L, "tide_call: attempt to call a %s value",
                    luaL_typename(L, fn));
    lua_replace(L, top + 1);
    lua_settop(L, top + 1);
    return -1;
  }
  if (push_start(h, L) != 0) { /* its message is on top */
    lua_replace(L, top + 1);
    lua_settop(L, top + 1);
    return -1;
  }
  if (!(r = malloc(sizeof *r))) {
    lua_settop(L, top);
    lua_pushliteral(L, "not enough memory");
    return -1;
  }
  r->cb = cb;
  r->ud = ud;
  r->h = h;
  r->prev = NULL;
  r->next = h->posts->calls;
  if (r->next) r->next->prev = r;
  h->posts->calls = r;
  lua_insert(L, fn); /* start, rec under fn and its arguments */
  lua_pushlightuserdata(L, r);
  lua_insert(L, fn + 1);
  if (h->sandbox && !inside) tide__sandbox_boundary(h);
  if (lua_pcall(L, nargs + 2, 0, 0) != 0) {
    /* the scheduler itself failed (memory), as tide__call reports it; the
     * callback still comes, at the latest at tide_host_free */
    fprintf(stderr, "tide: %s\n", lua_tostring(L, -1));
    lua_settop(L, top);
  }
  return 0;
}

/* --- tide_post: work from other threads, run on the loop thread ----------
 * A locked FIFO and one eventfd; the first post after the loop drained the
 * queue writes it, so a burst of posts costs one wake-up. Only the loop
 * thread calls libevent (so its event base needs no locks): the eventfd's
 * read event is added at start, as a quiet event (host/loop.c): the poll
 * phase does not poll for it alone unless a post is waiting. */

static void run_posts(tide_host *h) {
  struct tide__posts *q = h->posts;
  post_item *list;
  pthread_mutex_lock(&q->lock);
  list = q->head;
  q->head = q->tail = NULL;
  __atomic_store_n(&q->wake_pending, 0, __ATOMIC_RELEASE);
  pthread_mutex_unlock(&q->lock);
  while (list) {
    post_item *it = list;
    list = it->next;
    it->fn(h, it->arg);
    free(it);
  }
}

static void on_post(evutil_socket_t fd, short what, void *arg) {
  tide_host *h = arg;
  uint64_t n;
  (void)what;
  while (read(fd, &n, sizeof n) < 0 && errno == EINTR) {}
  if (h->phase == TIDE_PHASE_POLL && !h->poll_woke)
    h->poll_woke = tide__hrtime();
  run_posts(h);
}

static int post_init(tide_host *h) {
  struct tide__posts *q = calloc(1, sizeof *q);
  if (!q) return -1;
  q->fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (q->fd < 0 || pthread_mutex_init(&q->lock, NULL) != 0 ||
      !(q->ev = event_new(h->base, q->fd, EV_READ | EV_PERSIST, on_post, h)) ||
      event_add(q->ev, NULL) != 0) {
    if (q->ev) event_free(q->ev);
    if (q->fd >= 0) close(q->fd);
    free(q);
    return -1;
  }
  h->posts = q;
  h->quiet_events++;
  return 0;
}

int tide__posts_waiting(const tide_host *h) {
  return h->posts && __atomic_load_n(&h->posts->wake_pending, __ATOMIC_ACQUIRE);
}

int tide_post(tide_host *h, tide_post_fn fn, void *arg) {
  struct tide__posts *q = h->posts;
  post_item *it = malloc(sizeof *it);
  int wake;
  if (!it || !fn) {
    free(it);
    return -1;
  }
  it->next = NULL;
  it->fn = fn;
  it->arg = arg;
  pthread_mutex_lock(&q->lock);
  if (q->closed) {
    pthread_mutex_unlock(&q->lock);
    free(it);
    return -1;
  }
  if (q->tail)
    q->tail->next = it;
  else
    q->head = it;
  q->tail = it;
  wake = !q->wake_pending;
  __atomic_store_n(&q->wake_pending, 1, __ATOMIC_RELEASE);
  pthread_mutex_unlock(&q->lock);
  if (wake) {
    uint64_t one = 1;
    while (write(q->fd, &one, sizeof one) < 0 && errno == EINTR) {}
  }
  return 0;
}

/* At free: no more posts; those queued run now, while the state lives. */
static void posts_close(tide_host *h) {
  struct tide__posts *q = h->posts;
  if (!q) return;
  pthread_mutex_lock(&q->lock);
  q->closed = 1;
  pthread_mutex_unlock(&q->lock);
  if (h->L) run_posts(h);
}

static void posts_free(tide_host *h) {
  struct tide__posts *q = h->posts;
  if (!q) return;
  event_free(q->ev);
  close(q->fd);
  pthread_mutex_destroy(&q->lock);
  free(q);
  h->posts = NULL;
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
  posts_close(h);
  if (h->L) {
    /* Nothing fires any more; close callbacks (also those of handles the
     * GC closes now) run before the state goes. */
    int exiting = h->exiting, code = h->exit_code;
    h->freeing = 1;
    h->mem_limit = 0; /* clean-up must not fail for memory */
    tide__pool_shutdown(h); /* no completion may run after the host */
    tide__loop_shutdown(h);
    lua_gc(h->L, LUA_GCCOLLECT, 0);
    tide__loop_shutdown(h);
    h->exiting = exiting;
    h->exit_code = code;
    calls_abandon(h); /* no task runs any more */
    lua_close(h->L);
  }
  tide__timers_free(&h->timers);
  tide__lt_free_all(h);
  posts_free(h);
  if (h->poll_timer) event_free(h->poll_timer);
  if (h->base) event_base_free(h->base);
  free(h->free_slots);
  free(h);
}
