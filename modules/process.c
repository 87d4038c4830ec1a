/*
 * modules/process.c - `require "tide.process.c"`, the C half of
 * tide.process and of tide's standard streams (lua/tide/process.lua and
 * lua/tide/stdio.lua are the other; docs/process.md the manual).
 *
 *   spawn(file, argv, env|nil, cwd|nil, in, out, err, on_exit, obj)
 *       -> child, stdin, stdout, stderr | nil, msg, code
 *       in/out/err: "pipe", "inherit" or "null" (err also "stdout": 2>&1);
 *       the streams are those of
 *       "pipe" (false otherwise); on_exit(obj, code, signo) runs in the
 *       poll phase (in the main state) when the child has ended
 *   child_kill(child, signo) -> true | nil, msg, code
 *   child_ref(child, on), child_pid(child)
 *   getpid(), environ() -> {NAME = value}, getcwd() -> path | nil, msg,
 *   code, chdir(path) -> true | nil, msg, code
 *   stdio_open(fd) -> kind, stream | kind   (kind: "tty", "pipe",
 *       "socket", "file", "char", "closed", ...; a stream for what can be
 *       polled); stdio_read(fd, n), stdio_write(fd, data): blocking calls
 *       made on the pool (for regular files and devices)
 *
 * Children start with posix_spawn (clone(CLONE_VFORK) in glibc: no copy
 * of the parent's memory, and exec's failure comes back as spawn's
 * error). In the child, descriptors 0-2 are set up and every other one is
 * closed (closefrom), so nothing leaks even from a descriptor opened
 * without O_CLOEXEC; signals are unblocked and SIGPIPE, which tide
 * ignores, is back to its default.
 *
 * Exits are seen through a pidfd per child (Linux 5.3+): readable once
 * the child ended, then reaped with waitpid(pid, WNOHANG) - no polling,
 * no global SIGCHLD handler, any number of hosts. Where pidfd_open fails
 * (an older kernel, a seccomp filter), a SIGCHLD watcher of the host
 * reaps every child on its list instead. A running child is anchored (its
 * exit is always reaped and reported) and, unless unref'd, keeps the loop
 * alive.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <event2/event.h>

#include "stream.h"

#define CHILD_MT "tide.process.child"
#define REAPER_KEY "tide.process.reaper" /* registry: its clean-up */

extern char **environ;

enum { IO_INHERIT, IO_PIPE, IO_NULL, IO_STDOUT };

typedef struct child child;
struct child {
  tide_host *h;
  pid_t pid;
  int pidfd;          /* -1 without one (reaped through SIGCHLD) */
  int anchor;         /* the userdata, while running */
  unsigned running : 1;
  unsigned watched : 1; /* the pidfd's event added */
  unsigned refd : 1;
  unsigned counted : 1;
  child *next, *prev; /* on the reaper's list (no pidfd) */
  struct event *ev;   /* after this struct, in the userdata */
};

static int use_pidfd = 1; /* _use_pidfd(false): the SIGCHLD path, for tests */

/* nil, message, code for errno err (stream.c's names, and ESRCH) */
static int push_errno(lua_State *L, int err) {
  if (err == ESRCH) {
    lua_pushnil(L);
    lua_pushliteral(L, "no such process");
    lua_pushliteral(L, "ESRCH");
    return 3;
  }
  return tide__push_errno(L, err);
}

/* --- the exit ---------------------------------------------------------------- */

/* The SIGCHLD path: children without a pidfd, of every host. One host
 * at a time has the SIGCHLD event (libevent's signals go to one base). */
static struct {
  child *head;
  tide_host *h;
  struct event *ev;
} reaper = {NULL, NULL, NULL};

static void reaper_remove(child *c) {
  if (c->prev) c->prev->next = c->next;
  else if (reaper.head == c) reaper.head = c->next;
  if (c->next) c->next->prev = c->prev;
  c->next = c->prev = NULL;
}

static void stop_watching(child *c) {
  if (c->watched) {
    event_del(c->ev);
    c->watched = 0;
  }
  if (c->pidfd >= 0) {
    close(c->pidfd);
    c->pidfd = -1;
  } else {
    reaper_remove(c);
  }
}

/* The child ended with wait status st (or -1: reaped by someone else):
 * report it to Lua, let the userdata go. */
static void exited(child *c, int st) {
  tide_host *h = c->h;
  lua_State *L = h->L;
  int top = lua_gettop(L), code = -1, signo = 0;
  if (st != -1) {
    if (WIFEXITED(st)) {
      code = WEXITSTATUS(st);
    } else if (WIFSIGNALED(st)) {
      signo = WTERMSIG(st);
      code = 128 + signo;
    }
  }
  c->running = 0;
  stop_watching(c);
  c->counted = tide__refs_track(h, c->counted, 0);
  tide__push_anchor(h, L, c->anchor);
  tide__unanchor(h, L, c->anchor);
  c->anchor = LUA_NOREF;
  lua_getfenv(L, -1);
  lua_rawgeti(L, -1, 1); /* on_exit */
  lua_rawgeti(L, -2, 2); /* obj */
  if (code < 0) lua_pushnil(L);
  else lua_pushinteger(L, code);
  lua_pushinteger(L, signo);
  tide__call(h, h->ref_run_direct, 4);
  lua_settop(L, top);
}

/* 1 if the child has ended and was reported */
static int try_reap(child *c) {
  int st;
  pid_t r;
  do r = waitpid(c->pid, &st, WNOHANG);
  while (r < 0 && errno == EINTR);
  if (r == 0) return 0;
  exited(c, r == c->pid ? st : -1);
  return 1;
}

static void on_pidfd(evutil_socket_t fd, short what, void *arg) {
  (void)fd, (void)what;
  try_reap(arg);
}

static void on_sigchld(evutil_socket_t fd, short what, void *arg) {
  child *c = reaper.head, *next;
  (void)fd, (void)what, (void)arg;
  while (c) { /* (exited() unlinks c and may spawn: take next first) */
    next = c->next;
    if (c->h == reaper.h) try_reap(c);
    c = next;
  }
}

static int l_reaper_gc(lua_State *L) {
  tide_host *h = *(tide_host **)lua_touserdata(L, 1);
  if (reaper.h == h) {
    event_free(reaper.ev);
    reaper.ev = NULL;
    reaper.h = NULL;
  }
  return 0;
}

/* Puts c on the SIGCHLD path. Returns 0, or an errno. */
static int reaper_add(lua_State *L, child *c) {
  if (reaper.h && reaper.h != c->h) return EBUSY;
  if (!reaper.h) {
    tide_host **hp;
    reaper.ev = evsignal_new(c->h->base, SIGCHLD, on_sigchld, NULL);
    if (!reaper.ev || event_add(reaper.ev, NULL) != 0) {
      if (reaper.ev) event_free(reaper.ev);
      reaper.ev = NULL;
      return ENOMEM;
    }
    reaper.h = c->h;
    /* the event goes before the host's event_base does */
    hp = lua_newuserdata(L, sizeof *hp);
    *hp = c->h;
    lua_newtable(L);
    lua_pushcfunction(L, l_reaper_gc);
    lua_setfield(L, -2, "__gc");
    lua_setmetatable(L, -2);
    lua_setfield(L, LUA_REGISTRYINDEX, REAPER_KEY);
  }
  c->next = reaper.head;
  c->prev = NULL;
  if (reaper.head) reaper.head->prev = c;
  reaper.head = c;
  {
    /* a child that ended before the SIGCHLD handler was there: its signal
     * is lost, so look (WNOWAIT: the status stays for the reaping) and
     * have the poll phase reap it */
    siginfo_t si;
    memset(&si, 0, sizeof si);
    if (waitid(P_PID, (id_t)c->pid, &si, WEXITED | WNOHANG | WNOWAIT) == 0 &&
        si.si_pid == c->pid)
      event_active(reaper.ev, EV_SIGNAL, 1);
  }
  return 0;
}

/* --- spawning ---------------------------------------------------------------- */

static int io_mode(lua_State *L, int idx) {
  const char *s = luaL_checkstring(L, idx);
  if (strcmp(s, "pipe") == 0) return IO_PIPE;
  if (strcmp(s, "null") == 0) return IO_NULL;
  if (strcmp(s, "inherit") == 0) return IO_INHERIT;
  if (strcmp(s, "stdout") == 0 && idx == 7) return IO_STDOUT;
  return luaL_argerror(L, idx, "\"pipe\", \"inherit\" or \"null\" expected");
}

/* A NULL-terminated array of the strings of the list at idx, in memory
 * owned by the Lua state (a userdata left on the stack). */
static char **string_array(lua_State *L, int idx) {
  size_t n = lua_objlen(L, idx), i;
  char **a = lua_newuserdata(L, (n + 1) * sizeof *a);
  for (i = 0; i < n; i++) {
    lua_rawgeti(L, idx, (int)i + 1);
    a[i] = (char *)lua_tostring(L, -1); /* kept alive by the list */
    lua_pop(L, 1);
  }
  a[n] = NULL;
  return a;
}

/* A descriptor at 3 or above, so that dup2 onto 0-2 never meets itself
 * (dup2(fd, fd) would keep FD_CLOEXEC). Closes fd if it moves it. */
static int above_stdio(int fd) {
  int nfd;
  if (fd > 2) return fd;
  nfd = fcntl(fd, F_DUPFD_CLOEXEC, 3);
  close(fd);
  return nfd;
}

static void close_all(int *fds, int n) {
  int i;
  for (i = 0; i < n; i++)
    if (fds[i] >= 0) {
      close(fds[i]);
      fds[i] = -1;
    }
}

static int l_spawn(lua_State *L) {
  const char *file = luaL_checkstring(L, 1);
  const char *cwd = luaL_optstring(L, 4, NULL);
  int modes[3], i, err = 0;
  int parent[3] = {-1, -1, -1}, kid[3] = {-1, -1, -1};
  char **argv, **envp = environ;
  tide__stream *st[3] = {NULL, NULL, NULL};
  size_t head = (sizeof(child) + 15) & ~(size_t)15;
  posix_spawn_file_actions_t fa;
  posix_spawnattr_t at;
  sigset_t set;
  child *c;
  pid_t pid;

  luaL_checktype(L, 2, LUA_TTABLE);
  for (i = 0; i < 3; i++) modes[i] = io_mode(L, 5 + i);
  luaL_checktype(L, 8, LUA_TFUNCTION);
  lua_settop(L, 9);
  /* every Lua object first: a memory error must not leak a descriptor */
  argv = string_array(L, 2); /* 10 */
  if (lua_istable(L, 3)) envp = string_array(L, 3);
  else lua_pushnil(L); /* 11 */
  c = lua_newuserdata(L, head + tide__event_size()); /* 12 */
  memset(c, 0, head);
  c->h = tide_from_lua(L);
  c->pidfd = -1;
  c->anchor = LUA_NOREF;
  c->refd = 1;
  c->ev = (struct event *)((char *)c + head);
  luaL_getmetatable(L, CHILD_MT);
  lua_setmetatable(L, -2);
  lua_createtable(L, 2, 0);
  lua_pushvalue(L, 8);
  lua_rawseti(L, -2, 1);
  lua_pushvalue(L, 9);
  lua_rawseti(L, -2, 2);
  lua_setfenv(L, -2);
  for (i = 0; i < 3; i++) { /* 13, 14, 15 */
    if (modes[i] == IO_PIPE)
      st[i] = tide__stream_new(L, -1, i == 0 ? TIDE_STREAM_WRITABLE
                                             : TIDE_STREAM_READABLE, NULL);
    else
      lua_pushboolean(L, 0);
  }

  for (i = 0; i < 3 && !err; i++) {
    int p[2];
    if (modes[i] != IO_PIPE) continue;
    if (pipe2(p, O_CLOEXEC) != 0) {
      err = errno;
      break;
    }
    parent[i] = i == 0 ? p[1] : p[0];
    kid[i] = above_stdio(i == 0 ? p[0] : p[1]);
    if (kid[i] < 0 || fcntl(parent[i], F_SETFL, O_NONBLOCK) != 0) err = errno;
  }
  if (err) {
    close_all(parent, 3);
    close_all(kid, 3);
    return tide__push_errno(L, err);
  }

  posix_spawn_file_actions_init(&fa);
  posix_spawnattr_init(&at);
  for (i = 0; i < 3; i++) {
    if (modes[i] == IO_PIPE)
      posix_spawn_file_actions_adddup2(&fa, kid[i], i);
    else if (modes[i] == IO_NULL)
      posix_spawn_file_actions_addopen(&fa, i, "/dev/null",
                                       i == 0 ? O_RDONLY : O_WRONLY, 0);
    else if (modes[i] == IO_STDOUT) /* stderr: where stdout goes (2>&1) */
      posix_spawn_file_actions_adddup2(&fa, 1, 2);
  }
  if (cwd) posix_spawn_file_actions_addchdir_np(&fa, cwd);
  posix_spawn_file_actions_addclosefrom_np(&fa, 3);
  sigemptyset(&set);
  posix_spawnattr_setsigmask(&at, &set);
  sigaddset(&set, SIGPIPE);
  posix_spawnattr_setsigdefault(&at, &set);
  posix_spawnattr_setflags(&at, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);
  err = posix_spawnp(&pid, file, &fa, &at, argv, envp);
  posix_spawn_file_actions_destroy(&fa);
  posix_spawnattr_destroy(&at);
  close_all(kid, 3);
  if (err) {
    close_all(parent, 3);
    lua_pushnil(L);
    if (cwd && err == ENOENT && access(cwd, X_OK) != 0) {
      err = errno;
      lua_pushfstring(L, "%s: %s (the working folder)", cwd, strerror(err));
    } else {
      lua_pushfstring(L, "%s: %s", file, strerror(err));
    }
    lua_pushstring(L, tide__errname(err));
    return 3;
  }

  c->pid = pid;
  c->running = 1;
  for (i = 0; i < 3; i++)
    if (st[i]) tide__stream_set_fd(st[i], parent[i]);
  c->pidfd = use_pidfd ? (int)syscall(SYS_pidfd_open, pid, 0) : -1;
  if (c->pidfd >= 0) {
    fcntl(c->pidfd, F_SETFD, FD_CLOEXEC);
    event_assign(c->ev, c->h->base, c->pidfd, EV_READ | EV_PERSIST, on_pidfd, c);
    if (event_add(c->ev, NULL) == 0) {
      c->watched = 1;
    } else {
      close(c->pidfd);
      c->pidfd = -1;
    }
  }
  if (c->pidfd < 0 && (err = reaper_add(L, c)) != 0) {
    /* no way to learn of its end: it must not run unwatched */
    int st_;
    kill(pid, SIGKILL);
    while (waitpid(pid, &st_, 0) < 0 && errno == EINTR) {}
    c->running = 0;
    lua_pushnil(L);
    lua_pushfstring(L, "%s: cannot watch the child: %s", file, strerror(err));
    lua_pushstring(L, tide__errname(err));
    return 3;
  }
  c->anchor = tide__anchor(c->h, L, 12);
  c->counted = tide__refs_track(c->h, 0, 1);
  for (i = 12; i <= 15; i++) lua_pushvalue(L, i);
  return 4;
}

/* --- the child handle ---------------------------------------------------------- */

static child *check_child(lua_State *L) {
  return luaL_checkudata(L, 1, CHILD_MT);
}

static int l_child_pid(lua_State *L) {
  lua_pushinteger(L, check_child(L)->pid);
  return 1;
}

/* child_kill(child, signo): an ended child is ESRCH (its pid may be
 * someone else's by now) */
static int l_child_kill(lua_State *L) {
  child *c = check_child(L);
  int signo = (int)luaL_checkinteger(L, 2), r;
  if (!c->running) return push_errno(L, ESRCH);
  if (c->pidfd >= 0) {
    r = (int)syscall(SYS_pidfd_send_signal, c->pidfd, signo, NULL, 0);
    if (r != 0 && errno == ENOSYS) r = kill(c->pid, signo);
  } else {
    r = kill(c->pid, signo);
  }
  if (r != 0) return push_errno(L, errno);
  lua_pushboolean(L, 1);
  return 1;
}

static int l_child_ref(lua_State *L) {
  child *c = check_child(L);
  c->refd = lua_toboolean(L, 2);
  c->counted = tide__refs_track(c->h, c->counted, c->running && c->refd);
  return 0;
}

static int l_child_gc(lua_State *L) {
  child *c = lua_touserdata(L, 1);
  /* (a running child is anchored: this runs for it only at lua_close,
   * and the process ends without reaping it) */
  if (c->running) {
    c->running = 0;
    stop_watching(c);
    if (c->counted) c->h->refs--;
    c->counted = 0;
  }
  return 0;
}

static int l_use_pidfd(lua_State *L) {
  use_pidfd = lua_toboolean(L, 1);
  return 0;
}

/* --- the process --------------------------------------------------------------- */

static int l_getpid(lua_State *L) {
  lua_pushinteger(L, getpid());
  return 1;
}

/* environ() -> {NAME = value, ...} */
static int l_environ(lua_State *L) {
  char **e;
  lua_newtable(L);
  for (e = environ; *e; e++) {
    const char *eq = strchr(*e, '=');
    if (!eq || eq == *e) continue;
    lua_pushlstring(L, *e, (size_t)(eq - *e));
    lua_pushstring(L, eq + 1);
    lua_rawset(L, -3);
  }
  return 1;
}

static int l_getcwd(lua_State *L) {
  char buf[4096];
  if (!getcwd(buf, sizeof buf)) return tide__push_errno(L, errno);
  lua_pushstring(L, buf);
  return 1;
}

static int l_chdir(lua_State *L) {
  const char *path = luaL_checkstring(L, 1);
  if (chdir(path) != 0) {
    int err = errno;
    lua_pushnil(L);
    lua_pushfstring(L, "%s: %s", path, strerror(err));
    lua_pushstring(L, tide__errname(err));
    return 3;
  }
  lua_pushboolean(L, 1);
  return 1;
}

/* --- standard streams ------------------------------------------------------ */

static const char *kind_of(int fd, struct stat *sb) {
  if (fstat(fd, sb) != 0) return "closed";
  if (isatty(fd)) return "tty";
  switch (sb->st_mode & S_IFMT) {
  case S_IFIFO: return "pipe";
  case S_IFSOCK: return "socket";
  case S_IFREG: return "file";
  case S_IFCHR: return "char";
  case S_IFBLK: return "block";
  case S_IFDIR: return "directory";
  default: return "other";
  }
}

/* The saved flags of a standard descriptor made non-blocking (sockets,
 * and what could not be opened anew): put back when the state closes. */
static int saved_flags[3] = {-1, -1, -1};

static int l_restore_gc(lua_State *L) {
  int i;
  (void)L;
  for (i = 0; i < 3; i++)
    if (saved_flags[i] >= 0) {
      fcntl(i, F_SETFL, saved_flags[i]);
      saved_flags[i] = -1;
    }
  return 0;
}

/* stdio_open(fd) -> kind, stream | kind. A terminal or a pipe is opened
 * anew through /proc/self/fd, for a file description of our own that can
 * be non-blocking without making the shell's terminal, or a pipe shared
 * with other processes, non-blocking too. A socket cannot be reopened: a
 * duplicate is made non-blocking, and the flags are restored when the Lua
 * state closes. Regular files and other devices cannot be polled: the
 * caller uses the pool for them (no stream). */
static int l_stdio_open(lua_State *L) {
  int fd = (int)luaL_checkinteger(L, 1), nfd = -1, fl;
  unsigned flags = fd == 0 ? TIDE_STREAM_READABLE : TIDE_STREAM_WRITABLE;
  struct stat sb;
  const char *kind = kind_of(fd, &sb);
  tide__stream *s;
  luaL_argcheck(L, fd >= 0 && fd <= 2, 1, "0, 1 or 2 expected");
  lua_pushstring(L, kind);
  if (strcmp(kind, "tty") && strcmp(kind, "pipe") && strcmp(kind, "socket"))
    return 1;
  s = tide__stream_new(L, -1, strcmp(kind, "socket") ? flags
                                  : flags | TIDE_STREAM_SOCKET, NULL);
  if (strcmp(kind, "socket") != 0) {
    char path[32];
    snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
    nfd = open(path, (fd == 0 ? O_RDONLY : O_WRONLY) | O_NONBLOCK |
                         O_CLOEXEC | O_NOCTTY);
    /* (a pipe whose reader has gone cannot be opened for writing: the
     * pool's write will report EPIPE) */
    if (nfd < 0 && errno == ENXIO) {
      lua_pop(L, 1);
      return 1;
    }
  }
  if (nfd < 0) {
    if ((fl = fcntl(fd, F_GETFL)) < 0 ||
        (nfd = fcntl(fd, F_DUPFD_CLOEXEC, 3)) < 0) {
      lua_pop(L, 1);
      return 1;
    }
    if (!(fl & O_NONBLOCK)) {
      if (saved_flags[fd] < 0) {
        saved_flags[fd] = fl;
        lua_getfield(L, LUA_REGISTRYINDEX, "tide.stdio.restore");
        if (lua_isnil(L, -1)) {
          lua_newuserdata(L, 1);
          lua_newtable(L);
          lua_pushcfunction(L, l_restore_gc);
          lua_setfield(L, -2, "__gc");
          lua_setmetatable(L, -2);
          lua_setfield(L, LUA_REGISTRYINDEX, "tide.stdio.restore");
        }
        lua_pop(L, 1);
      }
      fcntl(nfd, F_SETFL, fl | O_NONBLOCK);
    }
  }
  tide__stream_set_fd(s, nfd);
  return 2;
}

typedef struct io_req {
  int fd;
  int err;
  size_t len, done;
  char *buf; /* the data to write, or room for what is read */
} io_req;

static void io_free(void *data) {
  io_req *r = data;
  free(r->buf);
  free(r);
}

static void read_work(void *data) {
  io_req *r = data;
  ssize_t n;
  do n = read(r->fd, r->buf, r->len);
  while (n < 0 && errno == EINTR);
  if (n < 0) r->err = errno;
  else r->done = (size_t)n;
}

static void write_work(void *data) {
  io_req *r = data;
  while (r->done < r->len) {
    ssize_t n = write(r->fd, r->buf + r->done, r->len - r->done);
    if (n < 0) {
      if (errno == EINTR) continue;
      r->err = errno;
      return;
    }
    r->done += (size_t)n;
  }
}

/* read: data | nil (end of file) | nil, msg, code; write: true | ... */
static int read_push(lua_State *L, void *data) {
  io_req *r = data;
  if (r->err) return tide__push_errno(L, r->err);
  if (r->done == 0) {
    lua_pushnil(L);
    return 1;
  }
  lua_pushlstring(L, r->buf, r->done);
  return 1;
}

static int write_push(lua_State *L, void *data) {
  io_req *r = data;
  if (r->err) return tide__push_errno(L, r->err);
  lua_pushboolean(L, 1);
  return 1;
}

static io_req *io_new(lua_State *L, size_t len) {
  int fd = (int)luaL_checkinteger(L, 1);
  io_req *r;
  luaL_argcheck(L, fd >= 0 && fd <= 2, 1, "0, 1 or 2 expected");
  r = calloc(1, sizeof *r);
  if (!r || !(r->buf = malloc(len ? len : 1))) {
    free(r);
    luaL_error(L, "not enough memory");
  }
  r->fd = fd;
  r->len = len;
  return r;
}

/* stdio_read(fd, n) */
static int start_read(lua_State *L) {
  lua_Number n = luaL_checknumber(L, 2);
  io_req *r;
  luaL_argcheck(L, n >= 1 && n <= 1 << 30, 2, "count out of range");
  r = io_new(L, (size_t)n);
  return tide_blocking(L, r, read_work, read_push, io_free, 0);
}

/* stdio_write(fd, data) */
static int start_write(lua_State *L) {
  size_t len;
  const char *p = luaL_checklstring(L, 2, &len);
  io_req *r = io_new(L, len);
  memcpy(r->buf, p, len);
  return tide_blocking(L, r, write_work, write_push, io_free, 0);
}

TIDE_MODULE("tide.process.c", tide__open_process) {
  static const luaL_Reg fns[] = {
      {"spawn", l_spawn},           {"child_kill", l_child_kill},
      {"child_ref", l_child_ref},   {"child_pid", l_child_pid},
      {"getpid", l_getpid},         {"getcwd", l_getcwd},
      {"chdir", l_chdir},           {"stdio_open", l_stdio_open},
      {"environ", l_environ},       {"_use_pidfd", l_use_pidfd},
      {NULL, NULL}};
  const luaL_Reg *f;
  if (luaL_newmetatable(L, CHILD_MT)) {
    lua_pushcfunction(L, l_child_gc);
    lua_setfield(L, -2, "__gc");
  }
  lua_pop(L, 1);
  lua_newtable(L);
  for (f = fns; f->name; f++) {
    lua_pushcfunction(L, f->func);
    lua_setfield(L, -2, f->name);
  }
  tide_push_blocking(L, start_read, "read");
  lua_setfield(L, -2, "stdio_read");
  tide_push_blocking(L, start_write, "write");
  lua_setfield(L, -2, "stdio_write");
  return 1;
}
