/*
 * modules/signal.c - `require "tide.signal.c"`, the C half of tide.signal
 * (lua/tide/signal.lua is the other; docs/signal.md the manual).
 *
 *   number(name | number) -> signo, "SIGNAME" | nil     names and numbers
 *   watch(signo, fn, ref) -> watcher   fn("SIGNAME") runs as a task at
 *                                      every delivery, in the poll phase
 *   watcher:close(), watcher:ref(), watcher:unref()
 *   kill(pid, signo) -> true | nil, msg, code
 *   defaults()   the `tide` command's SIGINT and SIGTERM: see below
 *
 * Watchers are libevent signal events (its handler writes to a socket the
 * loop polls, so delivery is in the poll phase, never inside the handler).
 * A watcher is anchored while open: a handler installed with on() lives
 * until closed, even if the script keeps no reference to it. It does not
 * keep the loop alive unless ref'd (as a Node.js signal listener does).
 * libevent delivers a process's signals to one event_base: the host that
 * added a signal event last.
 *
 * The defaults: SIGINT and SIGTERM with no watcher make the host exit
 * with status 128 + signo, after its close callbacks (tide.exit). Our own
 * handler (not libevent's: a watcher's handler replaces it while the
 * watcher is open and libevent puts it back afterwards) wakes the loop
 * through an eventfd. If a second one comes before the loop took the
 * first (a script stuck in a long computation), the handler restores the
 * default disposition and raises it again: the process dies at once.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <event2/event.h>

#include "stream.h"

#define WATCHER_MT "tide.signal.watcher"
#define DEFAULTS_KEY "tide.signal.defaults" /* registry: their clean-up */

/* --- names ---------------------------------------------------------------- */

static const struct {
  const char *name;
  int signo;
} signames[] = {
    {"SIGHUP", SIGHUP},       {"SIGINT", SIGINT},       {"SIGQUIT", SIGQUIT},
    {"SIGILL", SIGILL},       {"SIGTRAP", SIGTRAP},     {"SIGABRT", SIGABRT},
    {"SIGBUS", SIGBUS},       {"SIGFPE", SIGFPE},       {"SIGKILL", SIGKILL},
    {"SIGUSR1", SIGUSR1},     {"SIGSEGV", SIGSEGV},     {"SIGUSR2", SIGUSR2},
    {"SIGPIPE", SIGPIPE},     {"SIGALRM", SIGALRM},     {"SIGTERM", SIGTERM},
    {"SIGCHLD", SIGCHLD},     {"SIGCONT", SIGCONT},     {"SIGSTOP", SIGSTOP},
    {"SIGTSTP", SIGTSTP},     {"SIGTTIN", SIGTTIN},     {"SIGTTOU", SIGTTOU},
    {"SIGURG", SIGURG},       {"SIGXCPU", SIGXCPU},     {"SIGXFSZ", SIGXFSZ},
    {"SIGVTALRM", SIGVTALRM}, {"SIGPROF", SIGPROF},     {"SIGWINCH", SIGWINCH},
    {"SIGIO", SIGIO},         {"SIGPWR", SIGPWR},       {"SIGSYS", SIGSYS},
    {NULL, 0}};

static const char *signame(int signo) {
  int i;
  for (i = 0; signames[i].name; i++)
    if (signames[i].signo == signo) return signames[i].name;
  return NULL;
}

/* number(name | number) -> signo, name | nil: "SIGTERM", "TERM", "term"
 * and 15 are all SIGTERM; 0 (kill's existence probe) is "0". */
static int l_number(lua_State *L) {
  int i;
  if (lua_type(L, 1) == LUA_TNUMBER) {
    lua_Number n = lua_tonumber(L, 1);
    const char *name;
    if (n == 0) {
      lua_pushinteger(L, 0);
      lua_pushliteral(L, "0");
      return 2;
    }
    if (n != (int)n || !(name = signame((int)n))) return 0;
    lua_pushinteger(L, (int)n);
    lua_pushstring(L, name);
    return 2;
  }
  if (lua_type(L, 1) == LUA_TSTRING) {
    const char *s = lua_tostring(L, 1);
    char up[16];
    size_t k, len = lua_objlen(L, 1);
    if (len >= sizeof up - 3) return 0;
    if (len < 3 || strncasecmp(s, "SIG", 3) != 0) {
      memcpy(up, "SIG", 3); /* "TERM" -> "SIGTERM" */
      k = 3;
    } else {
      k = 0;
    }
    for (i = 0; (size_t)i < len; i++) {
      char c = s[i];
      up[k++] = (char)(c >= 'a' && c <= 'z' ? c - 'a' + 'A' : c);
    }
    up[k] = '\0';
    for (i = 0; signames[i].name; i++) {
      if (strcmp(signames[i].name, up) == 0) {
        lua_pushinteger(L, signames[i].signo);
        lua_pushstring(L, signames[i].name);
        return 2;
      }
    }
  }
  return 0;
}

/* --- watchers ------------------------------------------------------------- */

typedef struct watcher {
  tide_host *h;
  int signo;
  int anchor;          /* the userdata, while open */
  unsigned open : 1;
  unsigned refd : 1;
  unsigned counted : 1;
  struct event *ev;    /* after this struct, in the userdata */
} watcher;

/* open watchers of each signal, in the whole process (the defaults step
 * aside for a signal somebody watches) */
static volatile int nwatch[NSIG];

static void on_signal(evutil_socket_t signo, short what, void *arg) {
  watcher *w = arg;
  tide_host *h = w->h;
  lua_State *L = h->L;
  int top = lua_gettop(L);
  (void)what;
  tide__push_anchor(h, L, w->anchor);
  lua_getfenv(L, -1);
  lua_rawgeti(L, -1, 1);
  lua_pushstring(L, signame((int)signo));
  tide__call(h, h->ref_run_task, 2);
  lua_settop(L, top);
}

static watcher *check_watcher(lua_State *L) {
  return luaL_checkudata(L, 1, WATCHER_MT);
}

static void w_close(lua_State *L, watcher *w) {
  if (!w->open) return;
  w->open = 0;
  event_del(w->ev);
  nwatch[w->signo]--;
  w->counted = tide__refs_track(w->h, w->counted, 0);
  if (w->anchor != LUA_NOREF && L) tide__unanchor(w->h, L, w->anchor);
  w->anchor = LUA_NOREF;
}

/* watch(signo, fn, ref) -> watcher | nil, msg, code */
static int l_watch(lua_State *L) {
  int signo = (int)luaL_checkinteger(L, 1);
  size_t head = (sizeof(watcher) + 15) & ~(size_t)15;
  watcher *w;
  luaL_checktype(L, 2, LUA_TFUNCTION);
  if (signo <= 0 || signo >= NSIG) return luaL_argerror(L, 1, "bad signal");
  w = lua_newuserdata(L, head + tide__event_size());
  memset(w, 0, head);
  w->h = tide_from_lua(L);
  w->signo = signo;
  w->anchor = LUA_NOREF;
  w->ev = (struct event *)((char *)w + head);
  luaL_getmetatable(L, WATCHER_MT);
  lua_setmetatable(L, -2);
  lua_createtable(L, 1, 0);
  lua_pushvalue(L, 2);
  lua_rawseti(L, -2, 1);
  lua_setfenv(L, -2);
  event_assign(w->ev, w->h->base, signo, EV_SIGNAL | EV_PERSIST, on_signal, w);
  if (event_add(w->ev, NULL) != 0) {
    lua_pushnil(L);
    lua_pushfstring(L, "cannot watch %s", signame(signo));
    lua_pushliteral(L, "EINVAL");
    return 3;
  }
  w->open = 1;
  nwatch[signo]++;
  w->anchor = tide__anchor(w->h, L, -1);
  w->refd = lua_toboolean(L, 3);
  w->counted = tide__refs_track(w->h, 0, w->refd);
  return 1;
}

static int l_watcher_close(lua_State *L) {
  w_close(L, check_watcher(L));
  return 0;
}

static int set_ref(lua_State *L, int on) {
  watcher *w = check_watcher(L);
  if (!w->open) return luaL_error(L, "attempt to use a closed watcher");
  w->refd = (unsigned)on;
  w->counted = tide__refs_track(w->h, w->counted, w->refd);
  lua_settop(L, 1);
  return 1;
}

/* ref(), unref() -> watcher: whether it keeps the loop alive */
static int l_watcher_ref(lua_State *L) { return set_ref(L, 1); }
static int l_watcher_unref(lua_State *L) { return set_ref(L, 0); }

static int l_watcher_tostring(lua_State *L) {
  watcher *w = check_watcher(L);
  if (w->open)
    lua_pushfstring(L, "tide.signal.watcher (%s)", signame(w->signo));
  else
    lua_pushliteral(L, "tide.signal.watcher (closed)");
  return 1;
}

static int l_watcher_gc(lua_State *L) {
  watcher *w = lua_touserdata(L, 1);
  /* (an open watcher is anchored: this runs at lua_close) */
  w_close(NULL, w);
  return 0;
}

/* kill(pid, signo) -> true | nil, msg, code */
static int l_kill(lua_State *L) {
  pid_t pid = (pid_t)luaL_checkinteger(L, 1);
  int signo = (int)luaL_checkinteger(L, 2);
  if (kill(pid, signo) != 0) {
    if (errno == ESRCH) {
      lua_pushnil(L);
      lua_pushliteral(L, "no such process");
      lua_pushliteral(L, "ESRCH");
      return 3;
    }
    return tide__push_errno(L, errno);
  }
  lua_pushboolean(L, 1);
  return 1;
}

/* --- the defaults of SIGINT and SIGTERM ----------------------------------- */

static struct {
  tide_host *h;       /* the host that installed them, or NULL */
  int fd;             /* eventfd the handler writes to */
  struct event *ev;
  struct sigaction old_int, old_term;
} defaults; /* (fd and ev are valid while h is set) */

static volatile sig_atomic_t caught[NSIG];

static void on_default_signal(int signo) {
  int saved = errno;
  uint64_t one = 1;
  ssize_t r;
  if (caught[signo]) { /* the loop never took the last one: it is stuck */
    signal(signo, SIG_DFL);
    raise(signo);
  }
  caught[signo] = 1;
  tide__poll_wanted = 1;
  r = write(defaults.fd, &one, sizeof one);
  (void)r;
  errno = saved;
}

static void on_default_wake(evutil_socket_t fd, short what, void *arg) {
  tide_host *h = arg;
  lua_State *L = h->L;
  uint64_t n;
  int i, top = lua_gettop(L);
  static const int sigs[] = {SIGINT, SIGTERM};
  ssize_t r;
  tide__poll_wanted = 0; /* (before the read: a signal after it polls again) */
  r = read((int)fd, &n, sizeof n);
  (void)r, (void)what;
  for (i = 0; i < 2; i++) {
    int signo = sigs[i];
    if (!caught[signo]) continue;
    caught[signo] = 0;
    if (nwatch[signo]) continue; /* a watcher came since: it is theirs */
    /* tide.exit(128 + signo), in the main state */
    lua_getfield(L, LUA_REGISTRYINDEX, "_LOADED");
    lua_getfield(L, -1, "tide");
    lua_getfield(L, -1, "exit");
    lua_pushinteger(L, 128 + signo);
    tide__call(h, h->ref_run_direct, 2);
    lua_settop(L, top);
    break;
  }
}

static void defaults_remove(void) {
  if (!defaults.h) return;
  sigaction(SIGINT, &defaults.old_int, NULL);
  sigaction(SIGTERM, &defaults.old_term, NULL);
  defaults.h->quiet_events--;
  event_free(defaults.ev);
  close(defaults.fd);
  defaults.h = NULL;
  defaults.ev = NULL;
  defaults.fd = -1;
  caught[SIGINT] = caught[SIGTERM] = 0;
}

static int l_defaults_gc(lua_State *L) {
  (void)L;
  defaults_remove();
  return 0;
}

/* defaults() -> true: installs the default exits of SIGINT and SIGTERM
 * for this host (once per process; the first host to ask has them, until
 * its Lua state closes). */
static int l_defaults(lua_State *L) {
  tide_host *h = tide_from_lua(L);
  struct sigaction sa;
  if (defaults.h) {
    lua_pushboolean(L, defaults.h == h);
    return 1;
  }
  defaults.fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (defaults.fd < 0) return tide__push_errno(L, errno);
  defaults.ev = event_new(h->base, defaults.fd, EV_READ | EV_PERSIST,
                          on_default_wake, h);
  if (!defaults.ev || event_add(defaults.ev, NULL) != 0) {
    if (defaults.ev) event_free(defaults.ev);
    close(defaults.fd);
    defaults.ev = NULL;
    defaults.fd = -1;
    return tide__push_errno(L, ENOMEM);
  }
  defaults.h = h;
  h->quiet_events++; /* polled only once a signal came (host/loop.c) */
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_default_signal;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = SA_RESTART;
  /* a signal ignored from the start stays ignored (as in a shell's
   * background job, or under nohup) */
  sigaction(SIGINT, NULL, &defaults.old_int);
  sigaction(SIGTERM, NULL, &defaults.old_term);
  if (defaults.old_int.sa_handler != SIG_IGN) sigaction(SIGINT, &sa, NULL);
  if (defaults.old_term.sa_handler != SIG_IGN) sigaction(SIGTERM, &sa, NULL);
  /* removed when this state closes (before its event_base is freed) */
  lua_newuserdata(L, 1);
  lua_newtable(L);
  lua_pushcfunction(L, l_defaults_gc);
  lua_setfield(L, -2, "__gc");
  lua_setmetatable(L, -2);
  lua_setfield(L, LUA_REGISTRYINDEX, DEFAULTS_KEY);
  lua_pushboolean(L, 1);
  return 1;
}

TIDE_MODULE("tide.signal.c", tide__open_signal) {
  static const luaL_Reg fns[] = {{"number", l_number},
                                 {"watch", l_watch},
                                 {"kill", l_kill},
                                 {"defaults", l_defaults},
                                 {NULL, NULL}};
  static const luaL_Reg wfns[] = {{"close", l_watcher_close},
                                  {"ref", l_watcher_ref},
                                  {"unref", l_watcher_unref},
                                  {NULL, NULL}};
  const luaL_Reg *f;
  if (luaL_newmetatable(L, WATCHER_MT)) {
    lua_pushcfunction(L, l_watcher_gc);
    lua_setfield(L, -2, "__gc");
    lua_pushcfunction(L, l_watcher_tostring);
    lua_setfield(L, -2, "__tostring");
    lua_pushliteral(L, "tide.signal.watcher");
    lua_setfield(L, -2, "__metatable");
    lua_newtable(L);
    for (f = wfns; f->name; f++) {
      lua_pushcfunction(L, f->func);
      lua_setfield(L, -2, f->name);
    }
    lua_setfield(L, -2, "__index");
  }
  lua_pop(L, 1);
  lua_newtable(L);
  for (f = fns; f->name; f++) {
    lua_pushcfunction(L, f->func);
    lua_setfield(L, -2, f->name);
  }
  return 1;
}
