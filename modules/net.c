/*
 * modules/net.c - `require "tide.net.c"`, the C half of tide.net
 * (lua/tide/net.lua is the other; docs/net.md the manual): TCP and Unix
 * sockets. Connections are streams (stream.c); this file makes them
 * (connect, accept) and owns the listening servers.
 *
 *   parse_host(host) -> "inet" | "inet6" | nil      numeric addresses only
 *   connect(family, host|path, port, nodelay, limits...)
 *       -> s, true (connected) | s, false (in progress: wait on the write
 *          waiter, which gets true or nil, msg, code) | nil, msg, code
 *   listen(family, host|path, port, backlog, reuseport, nodelay, limits...)
 *       -> server | nil, msg, code
 *   serve(server, on_accept, obj)   handler mode: on_accept(obj, s,
 *                                   address, port, local address, local
 *                                   port) runs for every connection
 *   accept(server) -> s, address, port, local address, local port
 *                   | false (parked) | false, true (another task waits)
 *                   | nil, msg, code
 *   server_close(server[, {fn, obj}]), server_cancel(server),
 *   server_ref(server, on), server_set_waiter(server, w)
 *   address(s or server, peer) -> address, port
 *   nodelay(s, on), keepalive(s, on, idle) -> true | nil, msg, code
 *   udp_* (modules/udp.c): UDP sockets
 *   tls_* (modules/tls.c): TLS sessions on streams
 *
 * Accepting never busy-loops: when accept(2) runs out of descriptors
 * (EMFILE, ENFILE) or memory, the server stops watching its socket for a
 * back-off (10 ms, doubling up to 500 ms) and tries again; connections
 * wait in the kernel's backlog meanwhile and are served once descriptors
 * free up, as nginx does.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <net/if.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <event2/event.h>

#include "stream.h"
#include "tls.h"

#define SERVER_MT "tide.net.server"
#define BACKOFF_MIN_MS 10
#define BACKOFF_MAX_MS 500
#define ACCEPT_BATCH 64 /* connections accepted per readiness, at most */
#define W_SERVER 3      /* the acceptor's waiter: slot in the environment */

void tide__udp_register(lua_State *L); /* udp.c: UDP sockets */

/* --- addresses --------------------------------------------------------------- */

typedef struct addr {
  struct sockaddr_storage ss;
  socklen_t len;
} addr;

/* A numeric IPv4 or IPv6 address ("::1", "[::1]", "fe80::1%eth0") and a
 * port; returns the family, or 0. */
static int parse_ip(const char *host, int port, addr *a) {
  char buf[INET6_ADDRSTRLEN + IF_NAMESIZE + 4];
  size_t n = strlen(host);
  char *zone;
  memset(a, 0, sizeof *a);
  if (n >= sizeof buf) return 0;
  {
    struct sockaddr_in *in = (struct sockaddr_in *)&a->ss;
    if (inet_pton(AF_INET, host, &in->sin_addr) == 1) {
      in->sin_family = AF_INET;
      in->sin_port = htons((uint16_t)port);
      a->len = sizeof *in;
      return AF_INET;
    }
  }
  if (n >= 2 && host[0] == '[' && host[n - 1] == ']') {
    memcpy(buf, host + 1, n - 2);
    buf[n - 2] = 0;
  } else {
    memcpy(buf, host, n + 1);
  }
  {
    struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)&a->ss;
    if ((zone = strchr(buf, '%')) != NULL) *zone++ = 0;
    if (inet_pton(AF_INET6, buf, &in6->sin6_addr) != 1) return 0;
    if (zone) {
      char *end;
      unsigned long id = strtoul(zone, &end, 10);
      if (!*zone || *end) id = if_nametoindex(zone);
      if (!id) return 0;
      in6->sin6_scope_id = (uint32_t)id;
    }
    in6->sin6_family = AF_INET6;
    in6->sin6_port = htons((uint16_t)port);
    a->len = sizeof *in6;
    return AF_INET6;
  }
}

static int parse_unix(const char *path, addr *a) {
  struct sockaddr_un *un = (struct sockaddr_un *)&a->ss;
  size_t n = strlen(path);
  memset(a, 0, sizeof *a);
  if (n == 0 || n >= sizeof un->sun_path) return 0;
  un->sun_family = AF_UNIX;
  memcpy(un->sun_path, path, n + 1);
  a->len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n + 1);
  return AF_UNIX;
}

/* Fills a from the arguments (family, host|path, port) at idx. */
static int parse_args(lua_State *L, int idx, addr *a) {
  const char *fam = luaL_checkstring(L, idx);
  const char *where = luaL_checkstring(L, idx + 1);
  int port = (int)luaL_optinteger(L, idx + 2, 0);
  int f = strcmp(fam, "unix") == 0 ? parse_unix(where, a) : parse_ip(where, port, a);
  if (!f) luaL_argerror(L, idx + 1, "not a numeric address or a usable path");
  return f;
}

/* Pushes address, port (a Unix socket: its path or nil, and nil). */
static int push_sockaddr(lua_State *L, const struct sockaddr_storage *ss,
                         socklen_t len) {
  char buf[INET6_ADDRSTRLEN + IF_NAMESIZE + 2];
  switch (ss->ss_family) {
  case AF_INET: {
    const struct sockaddr_in *in = (const struct sockaddr_in *)ss;
    inet_ntop(AF_INET, &in->sin_addr, buf, sizeof buf);
    lua_pushstring(L, buf);
    lua_pushinteger(L, ntohs(in->sin_port));
    return 2;
  }
  case AF_INET6: {
    const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)ss;
    inet_ntop(AF_INET6, &in6->sin6_addr, buf, sizeof buf);
    if (in6->sin6_scope_id) {
      size_t n = strlen(buf);
      char name[IF_NAMESIZE];
      if (if_indextoname(in6->sin6_scope_id, name))
        snprintf(buf + n, sizeof buf - n, "%%%s", name);
      else
        snprintf(buf + n, sizeof buf - n, "%%%u", (unsigned)in6->sin6_scope_id);
    }
    lua_pushstring(L, buf);
    lua_pushinteger(L, ntohs(in6->sin6_port));
    return 2;
  }
  case AF_UNIX: {
    const struct sockaddr_un *un = (const struct sockaddr_un *)ss;
    size_t off = offsetof(struct sockaddr_un, sun_path);
    if (len > off && un->sun_path[0])
      lua_pushlstring(L, un->sun_path, strnlen(un->sun_path, len - off));
    else
      lua_pushnil(L); /* unnamed (a client's end) */
    lua_pushnil(L);
    return 2;
  }
  }
  lua_pushnil(L);
  lua_pushnil(L);
  return 2;
}

/* for udp.c */
int tide__net_parse_ip(const char *host, int port, struct sockaddr_storage *ss,
                       socklen_t *len) {
  addr a;
  int f = parse_ip(host, port, &a);
  if (f) {
    memcpy(ss, &a.ss, sizeof a.ss);
    *len = a.len;
  }
  return f;
}

int tide__net_push_sockaddr(lua_State *L, const struct sockaddr_storage *ss,
                            socklen_t len) {
  return push_sockaddr(L, ss, len);
}

static int l_parse_host(lua_State *L) {
  addr a;
  switch (parse_ip(luaL_checkstring(L, 1), 0, &a)) {
  case AF_INET: lua_pushliteral(L, "inet"); break;
  case AF_INET6: lua_pushliteral(L, "inet6"); break;
  default: lua_pushnil(L);
  }
  return 1;
}

/* limits from the arguments at idx: read_high, write_high, write_low, max_line */
static void get_limits(lua_State *L, int idx, tide__stream_limits *lim) {
  lim->read_high = (size_t)luaL_optnumber(L, idx, TIDE_STREAM_READ_HIGH);
  lim->write_high = (size_t)luaL_optnumber(L, idx + 1, TIDE_STREAM_WRITE_HIGH);
  lim->write_low = (size_t)luaL_optnumber(L, idx + 2, TIDE_STREAM_WRITE_LOW);
  lim->max_line = (size_t)luaL_optnumber(L, idx + 3, TIDE_STREAM_MAX_LINE);
}

static void set_nodelay(int fd, int on) {
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &on, sizeof on);
}

/* --- connecting ---------------------------------------------------------------- */

/* connect(family, host|path, port, nodelay, read_high, write_high,
 * write_low, max_line) */
static int l_connect(lua_State *L) {
  addr a;
  int family = parse_args(L, 1, &a), fd, r;
  tide__stream_limits lim;
  tide__stream *s;
  get_limits(L, 5, &lim);
  /* the userdata first: a memory error then leaks no descriptor */
  s = tide__stream_new(L, -1, TIDE_STREAM_SOCKET | TIDE_STREAM_READABLE |
                                  TIDE_STREAM_WRITABLE, &lim);
  fd = socket(family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return tide__push_errno(L, errno);
  if (family != AF_UNIX && lua_toboolean(L, 4)) set_nodelay(fd, 1);
  tide__stream_set_fd(s, fd);
  r = connect(fd, (struct sockaddr *)&a.ss, a.len);
  if (r == 0) {
    lua_pushboolean(L, 1);
    return 2;
  }
  if (errno == EINPROGRESS || errno == EINTR) { /* EINTR: it goes on */
    tide__stream_connect_wait(L, s, lua_gettop(L));
    lua_pushboolean(L, 0);
    return 2;
  }
  r = errno;
  tide__stream_abort(s);
  return tide__push_errno(L, r);
}

/* --- servers ------------------------------------------------------------------- */

typedef struct net_server {
  tide_host *h;
  int fd;
  int family;
  unsigned closed : 1;
  unsigned handler : 1;  /* serve(): accepts on its own */
  unsigned awaiting : 1; /* a task waits in accept() */
  unsigned armed : 1;
  unsigned paused : 1;   /* backing off after EMFILE and the like */
  unsigned refd : 1;
  unsigned counted : 1;
  unsigned nodelay : 1;
  int backoff_ms;
  int anchor;
  int close_cb;
  tide__stream_limits lim;
  struct sockaddr_storage bound; /* the local address of what it accepts, */
  socklen_t boundlen;            /* unless bound to a wildcard (boundlen 0) */
  char *path; /* a Unix socket's file, removed by close() */
  dev_t dev;
  ino_t ino;
  tide__deferred close_node;
  struct event *ev, *timer;
} net_server;

static net_server *check_server(lua_State *L, int idx) {
  return luaL_checkudata(L, idx, SERVER_MT);
}

static int server_active(const net_server *sv) {
  return !sv->closed && (sv->handler || sv->awaiting);
}

static void server_count(net_server *sv) {
  sv->counted = tide__refs_track(sv->h, sv->counted,
                                 server_active(sv) && sv->refd);
}

static void server_activate(lua_State *L, net_server *sv, int idx) {
  if (sv->anchor == LUA_NOREF) sv->anchor = tide__anchor(sv->h, L, idx);
  server_count(sv);
}

static void server_settle(lua_State *L, net_server *sv) {
  server_count(sv);
  if (!server_active(sv) && sv->anchor != LUA_NOREF && !sv->close_node.queued) {
    tide__unanchor(sv->h, L, sv->anchor);
    sv->anchor = LUA_NOREF;
  }
}

static void server_arm(net_server *sv) {
  if (!sv->armed && !sv->paused && !sv->closed && event_add(sv->ev, NULL) == 0)
    sv->armed = 1;
}

static void server_disarm(net_server *sv) {
  if (sv->armed) {
    event_del(sv->ev);
    sv->armed = 0;
  }
}

/* Out of descriptors or memory: stop watching the socket for a while. */
static void server_pause(net_server *sv) {
  struct timeval tv;
  sv->backoff_ms = sv->backoff_ms ? sv->backoff_ms * 2 : BACKOFF_MIN_MS;
  if (sv->backoff_ms > BACKOFF_MAX_MS) sv->backoff_ms = BACKOFF_MAX_MS;
  tv.tv_sec = sv->backoff_ms / 1000;
  tv.tv_usec = (sv->backoff_ms % 1000) * 1000;
  server_disarm(sv);
  sv->paused = 1;
  evtimer_add(sv->timer, &tv);
}

static void on_backoff(evutil_socket_t fd, short what, void *arg) {
  net_server *sv = arg;
  (void)fd, (void)what;
  sv->paused = 0;
  if (server_active(sv)) server_arm(sv);
}

enum { ACC_OK, ACC_RETRY, ACC_AGAIN, ACC_PAUSE, ACC_FAIL };

/* What to do after accept(2) failed with err. */
static int accept_error(net_server *sv, int err) {
  switch (err) {
  case EAGAIN:
#if EWOULDBLOCK != EAGAIN
  case EWOULDBLOCK:
#endif
    return ACC_AGAIN;
  case EINTR: case ECONNABORTED: case EPROTO: case ENETDOWN: case ENOPROTOOPT:
  case EHOSTDOWN: case ENONET: case EHOSTUNREACH: case EOPNOTSUPP:
  case ENETUNREACH: case EPERM: /* (a firewall rule) */
    return ACC_RETRY; /* that connection failed; the next may not */
  case EMFILE: case ENFILE: case ENOBUFS: case ENOMEM:
    server_pause(sv);
    return ACC_PAUSE;
  default:
    return ACC_FAIL;
  }
}

/* accept(2) until a connection or a reason to stop: ACC_OK with *fd */
static int do_accept(net_server *sv, int *fd, struct sockaddr_storage *ss,
                     socklen_t *len) {
  int r;
  do {
    *len = sizeof *ss;
    *fd = accept4(sv->fd, (struct sockaddr *)ss, len,
                  SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (*fd >= 0) {
      sv->backoff_ms = 0;
      if (sv->nodelay && sv->family != AF_UNIX) set_nodelay(*fd, 1);
      return ACC_OK;
    }
  } while ((r = accept_error(sv, errno)) == ACC_RETRY);
  return r;
}

/* Pushes the local address and port of fd, accepted by sv: the server's
 * own, unless it listens on a wildcard address (then getsockname). */
static int push_local(lua_State *L, net_server *sv, int fd) {
  struct sockaddr_storage ss;
  socklen_t len = sizeof ss;
  if (sv->boundlen) return push_sockaddr(L, &sv->bound, sv->boundlen);
  memset(&ss, 0, sizeof ss);
  if (getsockname(fd, (struct sockaddr *)&ss, &len) < 0) {
    lua_pushnil(L);
    lua_pushnil(L);
    return 2;
  }
  return push_sockaddr(L, &ss, len);
}

static unsigned conn_flags(void) {
  return TIDE_STREAM_SOCKET | TIDE_STREAM_READABLE | TIDE_STREAM_WRITABLE;
}

/* Handler mode: on_accept(obj, s, address, port, local address, local
 * port) for each connection
 * waiting, up to a batch (then other events get their turn). */
static void serve_batch(net_server *sv) {
  tide_host *h = sv->h;
  lua_State *L = h->L;
  int top = lua_gettop(L), i, fd, r;
  struct sockaddr_storage ss;
  socklen_t len;
  tide__push_anchor(h, L, sv->anchor); /* alive through the calls */
  for (i = 0; i < ACCEPT_BATCH && !sv->closed && sv->handler; i++) {
    r = do_accept(sv, &fd, &ss, &len);
    if (r == ACC_FAIL) server_pause(sv); /* unexpected: never spin on it */
    if (r != ACC_OK) break;
    lua_getfenv(L, top + 1);
    lua_rawgeti(L, -1, 1);
    lua_rawgeti(L, -2, 2);
    lua_remove(L, -3);
    tide__stream_new(L, fd, conn_flags(), &sv->lim);
    push_sockaddr(L, &ss, len);
    push_local(L, sv, fd);
    tide__call(h, h->ref_run_direct, 7);
  }
  lua_settop(L, top);
}

static void server_wake(net_server *sv) {
  tide_host *h = sv->h;
  lua_State *L = h->L;
  int top = lua_gettop(L);
  tide__push_anchor(h, L, sv->anchor);
  lua_getfenv(L, -1);
  lua_rawgeti(L, -1, W_SERVER);
  lua_remove(L, -2);
  sv->awaiting = 0;
  server_settle(L, sv);
  lua_pushboolean(L, 1);
  tide__complete(h, 2); /* the waiter, true */
  lua_settop(L, top);
}

static void on_acceptable(evutil_socket_t fd, short what, void *arg) {
  net_server *sv = arg;
  (void)fd, (void)what;
  if (sv->handler)
    serve_batch(sv);
  else if (sv->awaiting)
    server_wake(sv); /* it accepts (and stays armed for the next) */
  else
    server_disarm(sv); /* nobody accepts: the backlog holds them */
}

static int is_wildcard(const struct sockaddr_storage *ss) {
  if (ss->ss_family == AF_INET)
    return ((const struct sockaddr_in *)ss)->sin_addr.s_addr == htonl(INADDR_ANY);
  if (ss->ss_family == AF_INET6)
    return IN6_IS_ADDR_UNSPECIFIED(&((const struct sockaddr_in6 *)ss)->sin6_addr);
  return 0;
}

/* listen(family, host|path, port, backlog, reuseport, nodelay, limits...) */
static int l_listen(lua_State *L) {
  addr a;
  int family = parse_args(L, 1, &a), fd, one = 1, err;
  int backlog = (int)luaL_optinteger(L, 4, 511);
  size_t head = (sizeof(net_server) + 15) & ~(size_t)15;
  net_server *sv = lua_newuserdata(L, head + 2 * tide__event_size());
  memset(sv, 0, head);
  sv->h = tide_from_lua(L);
  sv->fd = -1;
  sv->closed = 1; /* until it listens */
  sv->family = family;
  sv->refd = 1;
  sv->nodelay = lua_toboolean(L, 6);
  sv->anchor = sv->close_cb = LUA_NOREF;
  get_limits(L, 7, &sv->lim);
  sv->ev = (struct event *)((char *)sv + head);
  sv->timer = (struct event *)((char *)sv + head + tide__event_size());
  luaL_getmetatable(L, SERVER_MT);
  lua_setmetatable(L, -2);
  if (family == AF_UNIX && !(sv->path = strdup(lua_tostring(L, 2))))
    return tide__push_errno(L, ENOMEM);

  fd = socket(family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return tide__push_errno(L, errno);
  if (family != AF_UNIX) {
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (lua_toboolean(L, 5) &&
        setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one) < 0)
      goto fail;
  }
  if (bind(fd, (struct sockaddr *)&a.ss, a.len) < 0) {
    int probe;
    struct stat st;
    /* a Unix socket file nobody listens on (a server that died) is stale:
     * replace it (a socket: never any other kind of file) */
    if (family != AF_UNIX || errno != EADDRINUSE) goto fail;
    if (lstat(sv->path, &st) < 0 || !S_ISSOCK(st.st_mode)) {
      errno = EADDRINUSE;
      goto fail;
    }
    probe = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (probe < 0) goto fail;
    err = connect(probe, (struct sockaddr *)&a.ss, a.len) < 0 ? errno : 0;
    close(probe);
    if (err != ECONNREFUSED) {
      errno = EADDRINUSE;
      goto fail;
    }
    unlink(sv->path);
    if (bind(fd, (struct sockaddr *)&a.ss, a.len) < 0) goto fail;
  }
  if (listen(fd, backlog) < 0) goto fail;
  if (family == AF_UNIX) {
    struct stat st;
    if (stat(sv->path, &st) == 0) {
      sv->dev = st.st_dev;
      sv->ino = st.st_ino;
    }
  }
  {
    socklen_t blen = sizeof sv->bound;
    if (getsockname(fd, (struct sockaddr *)&sv->bound, &blen) == 0 &&
        !is_wildcard(&sv->bound))
      sv->boundlen = blen;
  }
  sv->fd = fd;
  sv->closed = 0;
  event_assign(sv->ev, sv->h->base, fd, EV_READ | EV_PERSIST, on_acceptable, sv);
  evtimer_assign(sv->timer, sv->h->base, on_backoff, sv);
  return 1;
fail:
  err = errno;
  close(fd);
  free(sv->path); /* not ours to remove */
  sv->path = NULL;
  return tide__push_errno(L, err);
}

/* serve(server, on_accept, obj) */
static int l_serve(lua_State *L) {
  net_server *sv = check_server(L, 1);
  luaL_checktype(L, 2, LUA_TFUNCTION);
  if (sv->closed) return luaL_error(L, "attempt to use a closed server");
  lua_createtable(L, 3, 0);
  lua_pushvalue(L, 2);
  lua_rawseti(L, -2, 1);
  lua_pushvalue(L, 3);
  lua_rawseti(L, -2, 2);
  lua_setfenv(L, 1);
  sv->handler = 1;
  server_arm(sv);
  server_activate(L, sv, 1);
  return 0;
}

static int l_server_set_waiter(lua_State *L) {
  check_server(L, 1);
  lua_getfenv(L, 1);
  if (!lua_istable(L, -1)) {
    lua_pop(L, 1);
    lua_createtable(L, 3, 0);
    lua_pushvalue(L, -1);
    lua_setfenv(L, 1);
  }
  lua_pushvalue(L, 2);
  lua_rawseti(L, -2, W_SERVER);
  return 0;
}

/* accept(server) */
static int l_accept(lua_State *L) {
  net_server *sv = check_server(L, 1);
  struct sockaddr_storage ss;
  socklen_t len;
  int fd, r;
  if (sv->awaiting) {
    lua_pushboolean(L, 0);
    lua_pushboolean(L, 1);
    return 2;
  }
  if (sv->closed) {
    lua_pushnil(L);
    lua_pushliteral(L, "closed");
    lua_pushliteral(L, "ECANCELED");
    return 3;
  }
  if (!sv->paused) {
    r = do_accept(sv, &fd, &ss, &len);
    if (r == ACC_OK) {
      tide__stream_new(L, fd, conn_flags(), &sv->lim);
      push_sockaddr(L, &ss, len);
      return 3 + push_local(L, sv, fd);
    }
    if (r == ACC_FAIL) return tide__push_errno(L, errno);
  }
  sv->awaiting = 1;
  server_arm(sv); /* (paused: on_backoff arms it) */
  server_activate(L, sv, 1);
  lua_pushboolean(L, 0);
  return 1;
}

/* server_cancel(server): the acceptor's wait ended early */
static int l_server_cancel(lua_State *L) {
  net_server *sv = check_server(L, 1);
  sv->awaiting = 0;
  server_settle(L, sv);
  return 0;
}

static void server_closed(tide_host *h, tide__deferred *d) {
  net_server *sv = (net_server *)((char *)d - offsetof(net_server, close_node));
  lua_State *L = h->L;
  int cb = sv->close_cb;
  sv->close_cb = LUA_NOREF;
  if (cb != LUA_NOREF) tide__push_anchor(h, L, cb);
  server_settle(L, sv);
  if (cb != LUA_NOREF) {
    tide__unanchor(h, L, cb);
    lua_rawgeti(L, -1, 1);
    lua_rawgeti(L, -2, 2);
    lua_remove(L, -3);
    tide__call(h, h->ref_run_task, 2);
  }
}

static void server_release(net_server *sv) {
  server_disarm(sv);
  if (sv->timer && sv->paused) evtimer_del(sv->timer);
  sv->paused = 0;
  if (sv->fd >= 0) {
    close(sv->fd);
    sv->fd = -1;
  }
  if (sv->path) { /* remove our socket file, not one put there since */
    struct stat st;
    if (sv->ino && stat(sv->path, &st) == 0 && S_ISSOCK(st.st_mode) &&
        st.st_dev == sv->dev && st.st_ino == sv->ino)
      unlink(sv->path);
    free(sv->path);
    sv->path = NULL;
  }
}

/* server_close(server[, {fn, obj}]) */
static int l_server_close(lua_State *L) {
  net_server *sv = check_server(L, 1);
  if (sv->closed) return 0;
  sv->closed = 1;
  sv->handler = sv->awaiting = 0;
  server_release(sv);
  if (lua_istable(L, 2)) sv->close_cb = tide__anchor(sv->h, L, 2);
  server_count(sv);
  if (sv->close_cb != LUA_NOREF || sv->anchor != LUA_NOREF)
    tide__close_later(sv->h, &sv->close_node, server_closed);
  return 0;
}

static int l_server_gc(lua_State *L) {
  net_server *sv = lua_touserdata(L, 1);
  sv->closed = 1;
  server_release(sv);
  if (sv->counted) {
    sv->h->refs--;
    sv->counted = 0;
  }
  return 0;
}

static int l_server_ref(lua_State *L) {
  net_server *sv = check_server(L, 1);
  sv->refd = lua_toboolean(L, 2) ? 1 : 0;
  server_count(sv);
  return 0;
}

/* --- both ---------------------------------------------------------------------- */

static int fd_of(lua_State *L, int idx) {
  void *p = lua_touserdata(L, idx);
  if (p && lua_getmetatable(L, idx)) {
    int is_server;
    luaL_getmetatable(L, SERVER_MT);
    is_server = lua_rawequal(L, -1, -2);
    lua_pop(L, 2);
    if (is_server) return ((net_server *)p)->fd;
  }
  return tide__stream_check(L, idx)->fd;
}

/* address(s or server, peer) -> address, port (nil, nil once closed) */
static int l_address(lua_State *L) {
  int fd = fd_of(L, 1), r;
  struct sockaddr_storage ss;
  socklen_t len = sizeof ss;
  if (fd < 0) return 0;
  memset(&ss, 0, sizeof ss);
  r = lua_toboolean(L, 2) ? getpeername(fd, (struct sockaddr *)&ss, &len)
                          : getsockname(fd, (struct sockaddr *)&ss, &len);
  if (r < 0) return 0;
  return push_sockaddr(L, &ss, len);
}

static int setopt_result(lua_State *L, int r) {
  if (r < 0) return tide__push_errno(L, errno);
  lua_pushboolean(L, 1);
  return 1;
}

static int l_nodelay(lua_State *L) {
  tide__stream *s = tide__stream_check(L, 1);
  int on = lua_toboolean(L, 2);
  return setopt_result(L, setsockopt(s->fd, IPPROTO_TCP, TCP_NODELAY, &on,
                                     sizeof on));
}

/* keepalive(s, on, idle): idle seconds before the first probe, or nil */
static int l_keepalive(lua_State *L) {
  tide__stream *s = tide__stream_check(L, 1);
  int on = lua_toboolean(L, 2);
  if (setsockopt(s->fd, SOL_SOCKET, SO_KEEPALIVE, &on, sizeof on) < 0)
    return setopt_result(L, -1);
  if (on && !lua_isnoneornil(L, 3)) {
    int idle = (int)lua_tointeger(L, 3);
    if (idle < 1) idle = 1;
    return setopt_result(L, setsockopt(s->fd, IPPROTO_TCP, TCP_KEEPIDLE,
                                       &idle, sizeof idle));
  }
  return setopt_result(L, 0);
}

TIDE_MODULE("tide.net.c", tide__open_net) {
  static const luaL_Reg fns[] = {
      {"parse_host", l_parse_host},   {"connect", l_connect},
      {"listen", l_listen},           {"serve", l_serve},
      {"accept", l_accept},           {"server_close", l_server_close},
      {"server_cancel", l_server_cancel}, {"server_ref", l_server_ref},
      {"server_set_waiter", l_server_set_waiter},
      {"address", l_address},         {"nodelay", l_nodelay},
      {"keepalive", l_keepalive},     {NULL, NULL}};
  const luaL_Reg *f;
  if (luaL_newmetatable(L, SERVER_MT)) {
    lua_pushcfunction(L, l_server_gc);
    lua_setfield(L, -2, "__gc");
    lua_pushliteral(L, "tide.net.server");
    lua_setfield(L, -2, "__metatable");
  }
  lua_pop(L, 1);
  lua_newtable(L);
  for (f = fns; f->name; f++) {
    lua_pushcfunction(L, f->func);
    lua_setfield(L, -2, f->name);
  }
  tide__stream_register(L);
  tide__udp_register(L);
  tide__tls_register(L);
  lua_pushinteger(L, TIDE_STREAM_READ_HIGH);
  lua_setfield(L, -2, "READ_HIGH");
  lua_pushinteger(L, TIDE_STREAM_WRITE_HIGH);
  lua_setfield(L, -2, "WRITE_HIGH");
  lua_pushinteger(L, TIDE_STREAM_WRITE_LOW);
  lua_setfield(L, -2, "WRITE_LOW");
  lua_pushinteger(L, TIDE_STREAM_MAX_LINE);
  lua_setfield(L, -2, "MAX_LINE");
  lua_pushnumber(L, TIDE_STREAM_LINGER);
  lua_setfield(L, -2, "LINGER");
  return 1;
}
