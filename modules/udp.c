/*
 * modules/udp.c - UDP sockets for tide.net (lua/tide/net.lua is the Lua
 * half, docs/net.md the manual); registered into "tide.net.c" by
 * tide__open_net (modules/net.c).
 *
 *   udp_open(family, host, port, queue) -> u | nil, msg, code
 *   udp_send(u, data, family, host, port) -> true | nil, msg, code
 *   udp_recv(u, waiter) -> data, host, port | false (parked: the waiter
 *       gets true when a datagram comes) | false, true (another task
 *       waits) | nil, "closed", "ECANCELED"
 *   udp_cancel(u)           the waiter's wait ended early
 *   udp_close(u), udp_ref(u, on), udp_stats(u) -> queued, drops, received
 *   udp_address(u) -> local address, port
 *   udp_total_drops() -> what every socket of this Lua state dropped
 *
 * The socket is watched while it is open: the poll phase moves datagrams
 * into a bounded queue (a ring of `queue` entries) whether or not a task
 * waits, and drops (and counts) those that come while it is full.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <event2/event.h>

#include "stream.h"

#define UDP_MT "tide.net.udp"
#define UDP_MAX 65535     /* the largest datagram send_to takes */
#define RECV_BATCH 256    /* datagrams read per readiness, at most */

/* from net.c */
int tide__net_parse_ip(const char *host, int port, struct sockaddr_storage *ss,
                       socklen_t *len);
int tide__net_push_sockaddr(lua_State *L, const struct sockaddr_storage *ss,
                            socklen_t len);

typedef struct dgram {
  struct sockaddr_storage from;
  socklen_t fromlen;
  size_t len;
  char data[1];
} dgram;

typedef struct udp_totals {
  double drops;
} udp_totals;

typedef struct udp_sock {
  tide_host *h;
  int fd;
  int family;
  unsigned closed : 1;
  unsigned awaiting : 1;
  unsigned refd : 1;
  unsigned counted : 1;
  unsigned armed : 1;
  int waiter; /* anchor of the waiting task's waiter, or LUA_NOREF */
  dgram **ring;
  size_t cap, head, count;
  double drops, received;
  udp_totals *totals;
  struct event *ev;
} udp_sock;

static udp_sock *check_udp(lua_State *L, int idx) {
  return luaL_checkudata(L, idx, UDP_MT);
}

static void udp_count(udp_sock *u) {
  u->counted = tide__refs_track(u->h, u->counted, !u->closed && u->refd);
}

static void udp_unwait(lua_State *L, udp_sock *u) {
  u->awaiting = 0;
  if (u->waiter != LUA_NOREF) {
    tide__unanchor(u->h, L, u->waiter);
    u->waiter = LUA_NOREF;
  }
}

static void udp_release(lua_State *L, udp_sock *u) {
  size_t i;
  if (u->armed) {
    event_del(u->ev);
    u->armed = 0;
  }
  if (u->fd >= 0) {
    close(u->fd);
    u->fd = -1;
  }
  if (u->ring) {
    for (i = 0; i < u->count; i++) free(u->ring[(u->head + i) % u->cap]);
    free(u->ring);
    u->ring = NULL;
  }
  u->count = u->head = 0;
  if (L) udp_unwait(L, u);
  u->closed = 1;
  udp_count(u);
}

static void on_readable(evutil_socket_t fd, short what, void *arg) {
  udp_sock *u = arg;
  char buf[UDP_MAX + 1];
  int i;
  (void)what;
  for (i = 0; i < RECV_BATCH && !u->closed; i++) {
    struct sockaddr_storage ss;
    socklen_t len = sizeof ss;
    ssize_t n = recvfrom(fd, buf, sizeof buf, MSG_DONTWAIT,
                         (struct sockaddr *)&ss, &len);
    dgram *d;
    if (n < 0) {
      if (errno == EINTR) continue;
      break; /* EAGAIN, or an ICMP error reported on the socket: go on */
    }
    if (u->count == u->cap) {
      u->drops++;
      u->totals->drops++;
      continue;
    }
    d = malloc(offsetof(dgram, data) + (size_t)n + 1);
    if (!d) {
      u->drops++;
      u->totals->drops++;
      continue;
    }
    memcpy(&d->from, &ss, sizeof ss);
    d->fromlen = len;
    d->len = (size_t)n;
    memcpy(d->data, buf, (size_t)n);
    u->ring[(u->head + u->count) % u->cap] = d;
    u->count++;
    u->received++;
  }
  if (u->awaiting && u->count > 0) {
    tide_host *h = u->h;
    lua_State *L = h->L;
    int top = lua_gettop(L);
    tide__push_anchor(h, L, u->waiter);
    udp_unwait(L, u);
    lua_pushboolean(L, 1);
    tide__complete(h, 2); /* the waiter, true */
    lua_settop(L, top);
  }
}

/* udp_open(family, host, port, queue) */
static int l_udp_open(lua_State *L) {
  struct sockaddr_storage ss;
  socklen_t len;
  const char *host = luaL_checkstring(L, 2);
  int port = (int)luaL_checkinteger(L, 3);
  lua_Number q = luaL_checknumber(L, 4);
  int family = tide__net_parse_ip(host, port, &ss, &len), fd, err;
  size_t head = (sizeof(udp_sock) + 15) & ~(size_t)15;
  udp_sock *u;
  if (!family) return luaL_argerror(L, 2, "not a numeric address");
  u = lua_newuserdata(L, head + tide__event_size());
  memset(u, 0, head);
  u->h = tide_from_lua(L);
  u->fd = -1;
  u->closed = 1;
  u->refd = 1;
  u->waiter = LUA_NOREF;
  u->ev = (struct event *)((char *)u + head);
  lua_pushvalue(L, lua_upvalueindex(1));
  u->totals = lua_touserdata(L, -1);
  lua_pop(L, 1);
  luaL_getmetatable(L, UDP_MT);
  lua_setmetatable(L, -2);
  /* the totals live as long as any socket */
  lua_createtable(L, 1, 0);
  lua_pushvalue(L, lua_upvalueindex(1));
  lua_rawseti(L, -2, 1);
  lua_setfenv(L, -2);
  u->cap = (size_t)q;
  u->ring = calloc(u->cap, sizeof *u->ring);
  if (!u->ring) return tide__push_errno(L, ENOMEM);
  fd = socket(family, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return tide__push_errno(L, errno);
  if (bind(fd, (struct sockaddr *)&ss, len) < 0) {
    err = errno;
    close(fd);
    return tide__push_errno(L, err);
  }
  u->fd = fd;
  u->family = family;
  u->closed = 0;
  event_assign(u->ev, u->h->base, fd, EV_READ | EV_PERSIST, on_readable, u);
  if (event_add(u->ev, NULL) == 0) u->armed = 1;
  udp_count(u);
  return 1;
}

/* udp_send(u, data, host, port) */
static int l_udp_send(lua_State *L) {
  udp_sock *u = check_udp(L, 1);
  size_t n;
  const char *data = luaL_checklstring(L, 2, &n);
  const char *host = luaL_checkstring(L, 3);
  int port = (int)luaL_checkinteger(L, 4);
  struct sockaddr_storage ss;
  socklen_t len;
  ssize_t r;
  if (u->closed) return luaL_error(L, "attempt to use a closed socket");
  if (!tide__net_parse_ip(host, port, &ss, &len))
    return luaL_argerror(L, 3, "not a numeric address");
  if (u->family == AF_INET6 && ss.ss_family == AF_INET) {
    /* an IPv6 socket reaches IPv4 peers at their IPv4-mapped address */
    struct sockaddr_in in = *(struct sockaddr_in *)&ss;
    struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)&ss;
    memset(&ss, 0, sizeof ss);
    in6->sin6_family = AF_INET6;
    in6->sin6_port = in.sin_port;
    in6->sin6_addr.s6_addr[10] = in6->sin6_addr.s6_addr[11] = 0xff;
    memcpy(&in6->sin6_addr.s6_addr[12], &in.sin_addr, 4);
    len = sizeof *in6;
  }
  do {
    r = sendto(u->fd, data, n, MSG_DONTWAIT | MSG_NOSIGNAL,
               (struct sockaddr *)&ss, len);
  } while (r < 0 && errno == EINTR);
  if (r < 0) return tide__push_errno(L, errno);
  lua_pushboolean(L, 1);
  return 1;
}

/* udp_recv(u, waiter) */
static int l_udp_recv(lua_State *L) {
  udp_sock *u = check_udp(L, 1);
  if (u->closed) {
    lua_pushnil(L);
    lua_pushliteral(L, "closed");
    lua_pushliteral(L, "ECANCELED");
    return 3;
  }
  if (u->awaiting) {
    lua_pushboolean(L, 0);
    lua_pushboolean(L, 1);
    return 2;
  }
  if (u->count > 0) {
    dgram *d = u->ring[u->head];
    struct sockaddr_storage ss;
    socklen_t len;
    /* (the data is pushed before the datagram leaves the queue: a memory
     * error leaves it queued, not leaked) */
    lua_pushlstring(L, d->data, d->len);
    u->ring[u->head] = NULL;
    u->head = (u->head + 1) % u->cap;
    u->count--;
    ss = d->from;
    len = d->fromlen;
    free(d);
    return 1 + tide__net_push_sockaddr(L, &ss, len);
  }
  luaL_checkany(L, 2);
  u->waiter = tide__anchor(u->h, L, 2);
  u->awaiting = 1;
  lua_pushboolean(L, 0);
  return 1;
}

static int l_udp_cancel(lua_State *L) {
  udp_unwait(L, check_udp(L, 1));
  return 0;
}

static int l_udp_close(lua_State *L) {
  udp_sock *u = check_udp(L, 1);
  udp_release(L, u);
  return 0;
}

static int l_udp_gc(lua_State *L) {
  udp_sock *u = lua_touserdata(L, 1);
  /* (an anchored waiter keeps the socket's table, not the userdata: the
   * anchor slot is released with the anchors table itself at exit) */
  udp_release(NULL, u);
  return 0;
}

static int l_udp_ref(lua_State *L) {
  udp_sock *u = check_udp(L, 1);
  u->refd = lua_toboolean(L, 2) ? 1 : 0;
  udp_count(u);
  return 0;
}

static int l_udp_stats(lua_State *L) {
  udp_sock *u = check_udp(L, 1);
  lua_pushnumber(L, (lua_Number)u->count);
  lua_pushnumber(L, u->drops);
  lua_pushnumber(L, u->received);
  return 3;
}

static int l_udp_address(lua_State *L) {
  udp_sock *u = check_udp(L, 1);
  struct sockaddr_storage ss;
  socklen_t len = sizeof ss;
  memset(&ss, 0, sizeof ss);
  if (u->fd < 0 || getsockname(u->fd, (struct sockaddr *)&ss, &len) < 0) return 0;
  return tide__net_push_sockaddr(L, &ss, len);
}

static int l_udp_total_drops(lua_State *L) {
  udp_totals *t = lua_touserdata(L, lua_upvalueindex(1));
  lua_pushnumber(L, t->drops);
  return 1;
}

/* Adds the udp_* functions to the table on top. */
void tide__udp_register(lua_State *L) {
  static const luaL_Reg fns[] = {
      {"udp_open", l_udp_open},     {"udp_send", l_udp_send},
      {"udp_recv", l_udp_recv},     {"udp_cancel", l_udp_cancel},
      {"udp_close", l_udp_close},   {"udp_ref", l_udp_ref},
      {"udp_stats", l_udp_stats},   {"udp_total_drops", l_udp_total_drops},
      {"udp_address", l_udp_address},
      {NULL, NULL}};
  const luaL_Reg *f;
  udp_totals *t;
  if (luaL_newmetatable(L, UDP_MT)) {
    lua_pushcfunction(L, l_udp_gc);
    lua_setfield(L, -2, "__gc");
    lua_pushliteral(L, UDP_MT);
    lua_setfield(L, -2, "__metatable");
  }
  lua_pop(L, 1);
  t = lua_newuserdata(L, sizeof *t);
  t->drops = 0;
  for (f = fns; f->name; f++) {
    lua_pushvalue(L, -1);
    lua_pushcclosure(L, f->func, 1);
    lua_setfield(L, -3, f->name);
  }
  lua_pop(L, 1);
  lua_pushinteger(L, UDP_MAX);
  lua_setfield(L, -2, "UDP_MAX");
}
