/*
 * modules/dns.c - the C half of `require "tide.dns"` ("tide.dns.c"):
 * getaddrinfo on the worker pool, and libevent's asynchronous resolver
 * (evdns) in the loop. lua/tide/dns.lua checks the arguments and waits on
 * the requests these functions return; docs/dns.md is the user's page.
 *
 *   C.lookup(name, family) -> request      getaddrinfo as a slow pool job
 *   C.is_ip(s) -> 4|6, canonical / false   a numeric address, parsed here
 *   C.resolver(servers, resolv_conf, timeout, tries) -> resolver
 *                                          an evdns_base on the host's
 *                                          event_base
 *   C.query(resolver, name, type) -> request / nil, message, code
 *
 * Lookups are requests of host/request.c (tide_blocking). Queries are
 * requests of this file: a userdata the waiting task holds as its wait's
 * clean-up, anchored from the query until evdns calls back, so its memory
 * outlives every reference evdns holds. evdns calls back exactly once per
 * request, with the answer or with DNS_ERR_CANCEL after
 * evdns_cancel_request, always from a deferred callback of the
 * event_base: in the poll phase, never from inside a Lua call. The
 * callback wakes the task with tide__complete. A wait that ends early
 * (timeout, task:cancel) closes the query, which asks for the cancel; the
 * cancel itself is made in the pending phase (res_cancel_pass).
 *
 * A resolver is anchored while it has queries outstanding (or a deferred
 * callback queued), so it cannot be collected while evdns may still call
 * back. Its evdns_base is freed when nothing is outstanding: in the close
 * phase after close(); in the close phase too for one collected while the
 * loop runs; at once by __gc otherwise, and at lua_close (the host going
 * away) even with queries outstanding, which evdns_base_free(base, 0)
 * then drops without calling back.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <event2/dns.h>
#include <event2/event.h>
#include <event2/util.h>

#include "internal.h"

#define RESOLVER_MT "tide.dns.resolver"
#define QUERY_MT "tide.dns.query"

/* --- errors ---------------------------------------------------------------
 * Messages read "CODE: what happened: name", as tide.fs words them. */

static int push_fail(lua_State *L, const char *code, const char *what,
                     const char *name) {
  lua_pushnil(L);
  lua_pushfstring(L, "%s: %s: %s", code, what, name);
  lua_pushstring(L, code);
  return 3;
}

/* --- numeric addresses ----------------------------------------------------- */

/* C.is_ip(s) -> 4 or 6 and the address in its canonical form, or false.
 * Only what inet_pton takes: dotted quads and RFC 4291 text (no zone). */
static int l_is_ip(lua_State *L) {
  size_t len;
  const char *s = lua_tolstring(L, 1, &len);
  unsigned char buf[sizeof(struct in6_addr)];
  char out[INET6_ADDRSTRLEN];
  int family = 0;
  if (s && len < INET6_ADDRSTRLEN && strlen(s) == len) {
    if (inet_pton(AF_INET, s, buf) == 1)
      family = AF_INET;
    else if (inet_pton(AF_INET6, s, buf) == 1)
      family = AF_INET6;
  }
  if (!family || !inet_ntop(family, buf, out, sizeof out)) {
    lua_pushboolean(L, 0);
    return 1;
  }
  lua_pushinteger(L, family == AF_INET ? 4 : 6);
  lua_pushstring(L, out);
  return 2;
}

/* --- lookup: getaddrinfo on the pool -------------------------------------- */

typedef struct lookup_req {
  int family;     /* AF_UNSPEC, AF_INET or AF_INET6 */
  int gai;        /* getaddrinfo's result */
  int sys_errno;  /* errno, for EAI_SYSTEM */
  int n;          /* addresses found */
  char (*addrs)[INET6_ADDRSTRLEN];
  char name[1];   /* the name asked for (allocated with the struct) */
} lookup_req;

static void lookup_free(void *p) {
  lookup_req *r = p;
  free(r->addrs);
  free(r);
}

/* pool thread: no lua_State here */
static void lookup_work(void *p) {
  lookup_req *r = p;
  struct addrinfo hints, *res = NULL, *ai;
  int count = 0;
  memset(&hints, 0, sizeof hints);
  hints.ai_family = r->family;
  hints.ai_socktype = SOCK_STREAM; /* one entry per address */
  r->gai = getaddrinfo(r->name, NULL, &hints, &res);
  if (r->gai != 0) {
    r->sys_errno = errno;
    return;
  }
  for (ai = res; ai; ai = ai->ai_next) count++;
  r->addrs = calloc(count ? (size_t)count : 1, sizeof *r->addrs);
  if (!r->addrs) {
    r->gai = EAI_MEMORY;
    freeaddrinfo(res);
    return;
  }
  for (ai = res; ai; ai = ai->ai_next) {
    const void *a;
    char text[INET6_ADDRSTRLEN];
    int i, seen = 0;
    if (ai->ai_family == AF_INET)
      a = &((const struct sockaddr_in *)ai->ai_addr)->sin_addr;
    else if (ai->ai_family == AF_INET6)
      a = &((const struct sockaddr_in6 *)ai->ai_addr)->sin6_addr;
    else
      continue;
    if (!inet_ntop(ai->ai_family, a, text, sizeof text)) continue;
    for (i = 0; i < r->n && !seen; i++) seen = strcmp(r->addrs[i], text) == 0;
    if (!seen) memcpy(r->addrs[r->n++], text, sizeof text);
  }
  freeaddrinfo(res);
  if (r->n == 0) r->gai = EAI_NONAME; /* only families we do not know */
}

/* getaddrinfo's failures in Node's words and codes */
static int push_gai_fail(lua_State *L, lookup_req *r) {
  switch (r->gai) {
  case EAI_NONAME:
#ifdef EAI_NODATA
  case EAI_NODATA:
#endif
#ifdef EAI_ADDRFAMILY
  case EAI_ADDRFAMILY:
#endif
    return push_fail(L, "ENOTFOUND", "no such host", r->name);
  case EAI_AGAIN:
    return push_fail(L, "EAI_AGAIN",
                     "temporary failure in name resolution", r->name);
  case EAI_FAIL:
    return push_fail(L, "EAI_FAIL",
                     "non-recoverable failure in name resolution", r->name);
  case EAI_MEMORY:
    return push_fail(L, "ENOMEM", "out of memory", r->name);
  case EAI_SYSTEM: {
    char what[160];
    snprintf(what, sizeof what, "system error in name resolution (%s)",
             strerror(r->sys_errno));
    return push_fail(L, "EAI_SYSTEM", what, r->name);
  }
  default:
    return push_fail(L, "EAI_FAIL", gai_strerror(r->gai), r->name);
  }
}

/* loop thread: the list of addresses, or the failure */
static int lookup_push(lua_State *L, void *p) {
  lookup_req *r = p;
  int i;
  if (r->gai != 0) return push_gai_fail(L, r);
  lua_createtable(L, r->n, 0);
  for (i = 0; i < r->n; i++) {
    lua_pushstring(L, r->addrs[i]);
    lua_rawseti(L, -2, i + 1);
  }
  return 1;
}

/* C.lookup(name, family) -> request (for tide._await). dns.lua has checked
 * the arguments: a string without NUL bytes; family 0, 4 or 6. */
static int l_lookup(lua_State *L) {
  size_t len;
  const char *name = luaL_checklstring(L, 1, &len);
  int family = (int)luaL_optinteger(L, 2, 0);
  lookup_req *r = malloc(sizeof *r + len);
  if (!r) return luaL_error(L, "not enough memory");
  memset(r, 0, sizeof *r);
  memcpy(r->name, name, len + 1);
  r->family = family == 4 ? AF_INET : family == 6 ? AF_INET6 : AF_UNSPEC;
  return tide_blocking(L, r, lookup_work, lookup_push, lookup_free, 1);
}

/* --- resolvers: evdns in the loop ----------------------------------------- */

typedef struct dns_res dns_res;
typedef struct dns_query dns_query;

struct dns_query {
  dns_res *r;
  struct evdns_request *ev; /* while outstanding (until evdns calls back) */
  dns_query *prev, *next;   /* the resolver's outstanding queries */
  int anchor;               /* the userdata, while outstanding */
  int cancel_wanted;        /* its wait ended early: cancel it */
  int cancelled;            /* evdns_cancel_request was called */
  int counted;              /* counted in h->refs */
  int type;                 /* DNS_IPv4_A, DNS_IPv6_AAAA or DNS_PTR */
  char name[256];           /* what was asked about, for messages */
};

struct dns_res {
  tide_host *h;
  struct evdns_base *base; /* NULL once released */
  dns_query *queries;      /* outstanding */
  int nqueries;
  int anchor;              /* the userdata, while queries are outstanding
                              or a node below is queued */
  int refd;                /* ref()/unref() */
  int closed;
  int cancel_queued;       /* cancel_node is in the pending phase's queue */
  int release_queued;      /* close_node is in the close phase's queue */
  tide__deferred cancel_node, close_node;
};

/* A query keeps the loop alive while outstanding, if its resolver is
 * referenced; one being cancelled always does, until evdns calls back in
 * the next poll phase (so libevent's own memory for it is freed too). */
static void query_count(dns_query *q) {
  q->counted = (int)tide__refs_track(q->r->h, (unsigned)q->counted,
                                      q->ev && (q->r->refd || q->cancel_wanted));
}

/* Close phase, after close(): the evdns_base goes (nothing of it is
 * outstanding), then the userdata may be collected. */
static void res_release(tide_host *h, tide__deferred *d) {
  dns_res *r = (dns_res *)((char *)d - offsetof(dns_res, close_node));
  int slot = r->anchor;
  r->release_queued = 0;
  if (r->base) {
    evdns_base_free(r->base, 0);
    r->base = NULL;
  }
  r->anchor = LUA_NOREF;
  tide__unanchor(h, h->L, slot); /* may be the last reference */
}

/* Nothing outstanding and nothing queued any more: a closed resolver is
 * released in the close phase (still anchored until then); an open one
 * may be collected. */
static void res_idle(dns_res *r) {
  if (r->nqueries > 0 || r->cancel_queued || r->release_queued) return;
  if (r->closed && r->base) {
    r->release_queued = 1;
    tide__close_later(r->h, &r->close_node, res_release);
  } else if (r->anchor != LUA_NOREF) {
    int slot = r->anchor;
    r->anchor = LUA_NOREF;
    tide__unanchor(r->h, r->h->L, slot); /* may be the last reference */
  }
}

/* Pending phase: evdns_cancel_request for the queries whose waits ended
 * (as DESIGN.md has it: an abandoned operation is cleaned up in the
 * pending phase). evdns calls back with DNS_ERR_CANCEL in the poll phase
 * after. When the host is being freed (the loop no longer runs) nothing is
 * cancelled: evdns_base_free drops outstanding queries cleanly at
 * lua_close, while a cancelled one would leave its callback, and
 * libevent's memory for it, in an event_base that never runs again. */
static void res_cancel_pass(tide_host *h, tide__deferred *d) {
  dns_res *r = (dns_res *)((char *)d - offsetof(dns_res, cancel_node));
  dns_query *q;
  r->cancel_queued = 0;
  if (h->running && r->base) {
    for (q = r->queries; q; q = q->next) {
      if (!q->cancel_wanted || q->cancelled) continue;
      q->cancelled = 1;
      /* the callback comes later, with DNS_ERR_CANCEL (or with the
       * answer, if it arrived already): never from in here */
      evdns_cancel_request(r->base, q->ev);
    }
  }
  res_idle(r);
}

/* The query's wait ended early (a timeout, task:cancel, close()). */
static void query_cancel(dns_query *q) {
  dns_res *r = q->r;
  if (!q->ev || q->cancel_wanted) return;
  q->cancel_wanted = 1;
  query_count(q);
  if (!r->cancel_queued) { /* r is anchored: q is outstanding */
    r->cancel_queued = 1;
    tide__defer(r->h, &r->cancel_node, res_cancel_pass);
  }
}

/* What evdns called back with, for push_answer. */
typedef struct answer {
  dns_query *q;
  int result, type, count, ttl;
  void *addrs;
} answer;

static const char *type_name(int type) {
  return type == DNS_IPv6_AAAA ? "AAAA" : type == DNS_PTR ? "PTR" : "A";
}

/* (protected) the results of a query: its records, or the failure */
static int push_answer(lua_State *L) {
  answer *a = lua_touserdata(L, 1);
  dns_query *q = a->q;
  char what[64];
  int i;
  lua_pop(L, 1);
  switch (a->result) {
  case DNS_ERR_NONE:
    break;
  case DNS_ERR_NOTEXIST:
    return push_fail(L, "ENOTFOUND", "no such host", q->name);
  case DNS_ERR_NODATA:
    snprintf(what, sizeof what, "no %s record", type_name(q->type));
    return push_fail(L, "ENODATA", what, q->name);
  case DNS_ERR_TIMEOUT: /* libevent 2.1 also ends a SERVFAIL here */
    return push_fail(L, "ETIMEDOUT", "DNS query timed out", q->name);
  case DNS_ERR_SERVERFAILED:
    return push_fail(L, "ESERVFAIL", "DNS server failed", q->name);
  case DNS_ERR_REFUSED:
    return push_fail(L, "EREFUSED", "DNS server refused the query", q->name);
  case DNS_ERR_NOTIMPL:
    return push_fail(L, "ENOTIMP",
                     "DNS server does not implement the query", q->name);
  case DNS_ERR_FORMAT:
    return push_fail(L, "EFORMERR", "DNS server could not parse the query",
                     q->name);
  case DNS_ERR_CANCEL:
  case DNS_ERR_SHUTDOWN:
    /* the resolver was closed (a wait that timed out or was cancelled
     * gets here too, but nobody waits for that answer any more) */
    lua_pushnil(L);
    lua_pushliteral(L, "closed");
    lua_pushliteral(L, "ECANCELED");
    return 3;
  default: /* DNS_ERR_TRUNCATED, DNS_ERR_UNKNOWN */
    return push_fail(L, "EBADRESP", evdns_err_to_string(a->result), q->name);
  }
  lua_createtable(L, a->count, 1);
  for (i = 0; i < a->count; i++) {
    char text[INET6_ADDRSTRLEN];
    if (a->type == DNS_IPv4_A) {
      if (!inet_ntop(AF_INET, (const uint32_t *)a->addrs + i, text,
                     sizeof text))
        continue;
      lua_pushstring(L, text);
    } else if (a->type == DNS_IPv6_AAAA) {
      if (!inet_ntop(AF_INET6, (const struct in6_addr *)a->addrs + i, text,
                     sizeof text))
        continue;
      lua_pushstring(L, text);
    } else if (a->type == DNS_PTR) {
      lua_pushstring(L, ((char **)a->addrs)[i]);
    } else {
      continue;
    }
    lua_rawseti(L, -2, (int)lua_objlen(L, -2) + 1);
  }
  lua_pushinteger(L, a->ttl);
  lua_setfield(L, -2, "ttl");
  return 1;
}

/* evdns's callback (a deferred callback of the event_base: poll phase) */
static void on_answer(int result, char type, int count, int ttl,
                      void *addrs, void *arg) {
  dns_query *q = arg;
  dns_res *r = q->r;
  tide_host *h = r->h;
  lua_State *L = h->L;
  answer a;
  int slot = q->anchor, base, n;

  /* the query is over: off the resolver's list, not counted */
  q->ev = NULL;
  query_count(q);
  if (q->prev)
    q->prev->next = q->next;
  else
    r->queries = q->next;
  if (q->next) q->next->prev = q->prev;
  q->prev = q->next = NULL;
  r->nqueries--;
  q->anchor = LUA_NOREF;

  a.q = q;
  a.result = result;
  a.type = type;
  a.count = count;
  a.ttl = ttl;
  a.addrs = addrs;
  tide__push_anchor(h, L, slot); /* the query, for tide__complete */
  tide__unanchor(h, L, slot);
  base = lua_gettop(L);
  lua_pushcfunction(L, push_answer);
  lua_pushlightuserdata(L, &a);
  if (lua_pcall(L, 1, LUA_MULTRET, 0) != 0) { /* memory */
    lua_pushnil(L);
    lua_insert(L, -2); /* nil, message */
  }
  n = lua_gettop(L) - base;
  tide__complete(h, 1 + n); /* the task runs: it may query or close r */
  res_idle(r);              /* r is anchored until this */
}

static dns_res *check_res(lua_State *L, int idx) {
  return luaL_checkudata(L, idx, RESOLVER_MT);
}

/* evdns's log lines would go to stderr; its failures reach the caller as
 * results, so they are dropped (a process-wide setting of libevent). */
static void quiet_log(int is_warning, const char *msg) {
  (void)is_warning, (void)msg;
}

/* C.resolver(servers, resolv_conf, timeout, tries) -> resolver
 *   / nil, message, code (an unreadable resolv_conf)
 *   / nil, false, i (servers[i] is not an address; dns.lua raises)
 * dns.lua has checked the types: servers a list of strings or nil,
 * resolv_conf a string or nil, timeout >= 0.001 or nil, tries 1..255 or
 * nil. Without servers the name servers and options come from resolv_conf
 * (default /etc/resolv.conf). */
static int l_resolver(lua_State *L) {
  static int quiet;
  tide_host *h = tide_from_lua(L);
  const char *conf = luaL_optstring(L, 2, NULL);
  dns_res *r;
  char buf[64];
  lua_settop(L, 4);
  if (!quiet) {
    quiet = 1;
    evdns_set_log_fn(quiet_log);
  }
  r = lua_newuserdata(L, sizeof *r);
  memset(r, 0, sizeof *r);
  r->h = h;
  r->anchor = LUA_NOREF;
  r->refd = 1;
  luaL_getmetatable(L, RESOLVER_MT);
  lua_setmetatable(L, -2);
  r->base = evdns_base_new(h->base, EVDNS_BASE_DISABLE_WHEN_INACTIVE);
  if (!r->base) return luaL_error(L, "cannot create a DNS resolver");
  if (lua_istable(L, 1)) {
    int i, n = (int)lua_objlen(L, 1);
    for (i = 1; i <= n; i++) {
      int rc;
      lua_rawgeti(L, 1, i);
      rc = evdns_base_nameserver_ip_add(r->base, lua_tostring(L, -1));
      lua_pop(L, 1);
      if (rc != 0 && rc != 3) { /* 3: the same server twice */
        lua_pushnil(L);
        lua_pushboolean(L, 0);
        lua_pushinteger(L, i);
        return 3; /* the userdata's __gc frees the base */
      }
    }
  } else {
    const char *path = conf ? conf : "/etc/resolv.conf";
    int rc;
    /* a file named explicitly must be there (evdns would fall back to
     * 127.0.0.1 without a word, as it does for a missing default file) */
    if (conf && access(conf, R_OK) != 0) {
      int e = errno;
      char what[160];
      snprintf(what, sizeof what, "cannot read the resolver configuration (%s)",
               strerror(e));
      /* strerror in lower case, as tide.fs words it */
      {
        char *c = strchr(what, '(') + 1;
        if (*c >= 'A' && *c <= 'Z' && !(c[1] >= 'A' && c[1] <= 'Z'))
          *c = (char)(*c - 'A' + 'a');
      }
      return push_fail(L, e == ENOENT ? "ENOENT" : e == EACCES ? "EACCES" : "EIO",
                       what, path);
    }
    rc = evdns_base_resolv_conf_parse(
        r->base, DNS_OPTION_NAMESERVERS | DNS_OPTION_MISC, path);
    /* 0: read; 1: no file and 6: no nameserver line, both with 127.0.0.1
     * as the server (as libc does); 2, 3, 5: unreadable; 4: memory */
    if (rc == 4) return luaL_error(L, "not enough memory");
    if ((rc != 0 && rc != 1 && rc != 6) ||
        evdns_base_count_nameservers(r->base) == 0)
      return push_fail(L, "EIO", rc == 3 ? "resolver configuration too large"
                                         : "cannot read the resolver configuration",
                       path);
  }
  if (!lua_isnil(L, 3)) {
    snprintf(buf, sizeof buf, "%.6f", (double)lua_tonumber(L, 3));
    evdns_base_set_option(r->base, "timeout:", buf);
  }
  if (!lua_isnil(L, 4)) {
    snprintf(buf, sizeof buf, "%d", (int)lua_tointeger(L, 4));
    evdns_base_set_option(r->base, "attempts:", buf);
  }
  return 1;
}

/* C.query(resolver, name, type) -> query / nil, message, code. dns.lua has
 * checked that the resolver is open, the name (an IP address for DNS_PTR)
 * and the type. */
static int l_query(lua_State *L) {
  dns_res *r = check_res(L, 1);
  size_t len;
  const char *name = luaL_checklstring(L, 2, &len);
  int type = (int)luaL_checkinteger(L, 3);
  tide_host *h = r->h;
  struct evdns_request *ev = NULL;
  dns_query *q;
  if (!r->base || r->closed) return luaL_error(L, "attempt to use a closed resolver");
  if (len >= sizeof q->name || strlen(name) != len)
    return push_fail(L, "EBADNAME", "invalid name", name);
  q = lua_newuserdata(L, sizeof *q);
  memset(q, 0, sizeof *q);
  q->r = r;
  q->type = type;
  q->anchor = LUA_NOREF;
  memcpy(q->name, name, len + 1);
  luaL_getmetatable(L, QUERY_MT);
  lua_setmetatable(L, -2);
  /* evdns arms a libevent timer for the query's timeout, measured from
   * libevent's cached clock. In the poll phase that is the time its
   * wait returned, and the task asking may have run long since (a
   * blocking call, a busy loop): the timer would fire that much early. */
  event_base_update_cache_time(h->base);
  /* anchored before evdns knows it: its callback finds it alive */
  q->anchor = tide__anchor(h, L, -1);
  if (r->anchor == LUA_NOREF) r->anchor = tide__anchor(h, L, 1);
  if (type == DNS_PTR) {
    struct in_addr a4;
    struct in6_addr a6;
    if (inet_pton(AF_INET, name, &a4) == 1)
      ev = evdns_base_resolve_reverse(r->base, &a4, DNS_QUERY_NO_SEARCH,
                                      on_answer, q);
    else if (inet_pton(AF_INET6, name, &a6) == 1)
      ev = evdns_base_resolve_reverse_ipv6(r->base, &a6, DNS_QUERY_NO_SEARCH,
                                           on_answer, q);
  } else if (type == DNS_IPv6_AAAA) {
    ev = evdns_base_resolve_ipv6(r->base, name, DNS_QUERY_NO_SEARCH,
                                 on_answer, q);
  } else {
    q->type = DNS_IPv4_A;
    ev = evdns_base_resolve_ipv4(r->base, name, DNS_QUERY_NO_SEARCH,
                                 on_answer, q);
  }
  if (!ev) { /* evdns refused the name (a label over 63 bytes), or memory */
    int slot = q->anchor;
    q->anchor = LUA_NOREF;
    tide__unanchor(h, L, slot);
    res_idle(r);
    return push_fail(L, "EBADNAME", "invalid name", name);
  }
  q->ev = ev;
  q->next = r->queries;
  if (r->queries) r->queries->prev = q;
  r->queries = q;
  r->nqueries++;
  query_count(q);
  return 1;
}

/* query:close(): the wait ended early (timeout, task:cancel) */
static int l_query_close(lua_State *L) {
  query_cancel(luaL_checkudata(L, 1, QUERY_MT));
  return 0;
}

/* resolver:close(): outstanding queries are cancelled (their tasks get
 * nil, "closed", "ECANCELED"); the evdns_base goes in the close phase once
 * evdns has called back for each of them. */
static int l_res_close(lua_State *L) {
  dns_res *r = check_res(L, 1);
  dns_query *q;
  if (r->closed) return 0;
  r->closed = 1;
  for (q = r->queries; q; q = q->next) query_cancel(q);
  if (r->anchor == LUA_NOREF) r->anchor = tide__anchor(r->h, L, 1);
  res_idle(r); /* with nothing outstanding: released in the close phase */
  return 0;
}

/* resolver:ref() / unref() -> resolver: whether its queries keep the
 * loop alive (the upvalue says which of the two this is) */
static int l_res_ref(lua_State *L) {
  dns_res *r = check_res(L, 1);
  dns_query *q;
  if (r->closed) return luaL_error(L, "attempt to use a closed resolver");
  r->refd = lua_toboolean(L, lua_upvalueindex(1));
  for (q = r->queries; q; q = q->next) query_count(q);
  lua_settop(L, 1);
  return 1;
}

/* resolver:closed() -> boolean */
static int l_res_closed(lua_State *L) {
  lua_pushboolean(L, check_res(L, 1)->closed);
  return 1;
}

/* resolver:pending() -> how many queries evdns has not answered yet
 * (including cancelled ones until evdns calls back) */
static int l_res_pending(lua_State *L) {
  lua_pushinteger(L, check_res(L, 1)->nqueries);
  return 1;
}

/* resolver:servers() -> {"ip:port", ...} */
static int l_res_servers(lua_State *L) {
  dns_res *r = check_res(L, 1);
  int i, n;
  lua_newtable(L);
  if (!r->base || r->closed) return 1;
  n = evdns_base_count_nameservers(r->base);
  for (i = 0; i < n; i++) {
    struct sockaddr_storage ss;
    char text[INET6_ADDRSTRLEN];
    int len = evdns_base_get_nameserver_addr(
        r->base, i, (struct sockaddr *)&ss, sizeof ss);
    if (len <= 0 || len > (int)sizeof ss) continue;
    if (ss.ss_family == AF_INET) {
      const struct sockaddr_in *s = (const struct sockaddr_in *)&ss;
      if (!inet_ntop(AF_INET, &s->sin_addr, text, sizeof text)) continue;
      lua_pushfstring(L, "%s:%d", text, (int)ntohs(s->sin_port));
    } else if (ss.ss_family == AF_INET6) {
      const struct sockaddr_in6 *s = (const struct sockaddr_in6 *)&ss;
      if (!inet_ntop(AF_INET6, &s->sin6_addr, text, sizeof text)) continue;
      lua_pushfstring(L, "[%s]:%d", text, (int)ntohs(s->sin6_port));
    } else {
      continue;
    }
    lua_rawseti(L, -2, (int)lua_objlen(L, -2) + 1);
  }
  return 1;
}

/* An evdns_base whose resolver was collected while the loop ran: freed in
 * the close phase, not in the middle of the poll phase's callbacks, some
 * of which may be evdns's own (a probe of a failed server). */
typedef struct base_free {
  tide__deferred node;
  struct evdns_base *base;
} base_free;

static void free_base_later(tide_host *h, tide__deferred *d) {
  base_free *b = (base_free *)((char *)d - offsetof(base_free, node));
  (void)h;
  evdns_base_free(b->base, 0);
  free(b);
}

/* __gc: an anchored resolver is never collected while the host runs, so
 * this is one forgotten while idle, one whose close phase has passed, or
 * any at lua_close (the host going away: outstanding queries are dropped
 * without callbacks, and their tasks go with the host). */
static int l_res_gc(lua_State *L) {
  dns_res *r = check_res(L, 1);
  dns_query *q;
  base_free *b;
  r->closed = 1;
  for (q = r->queries; q; q = q->next) {
    q->ev = NULL;
    query_count(q);
  }
  r->queries = NULL;
  r->nqueries = 0;
  if (!r->base) return 0;
  if (r->h->running && (b = malloc(sizeof *b)) != NULL) {
    memset(b, 0, sizeof *b);
    b->base = r->base;
    tide__close_later(r->h, &b->node, free_base_later);
  } else {
    evdns_base_free(r->base, 0); /* no dispatch in progress */
  }
  r->base = NULL;
  return 0;
}

static int l_res_tostring(lua_State *L) {
  dns_res *r = check_res(L, 1);
  lua_pushfstring(L, "tide.dns.resolver (%s)", r->closed ? "closed" : "open");
  return 1;
}

TIDE_MODULE("tide.dns.c", tide__open_dns) {
  static const luaL_Reg methods[] = {{"close", l_res_close},
                                     {"closed", l_res_closed},
                                     {"pending", l_res_pending},
                                     {"servers", l_res_servers},
                                     {NULL, NULL}};
  const luaL_Reg *m;
  luaL_newmetatable(L, QUERY_MT);
  lua_newtable(L);
  lua_pushcfunction(L, l_query_close);
  lua_setfield(L, -2, "close");
  lua_setfield(L, -2, "__index");
  lua_pop(L, 1);

  lua_newtable(L); /* the module */
  luaL_newmetatable(L, RESOLVER_MT);
  lua_pushcfunction(L, l_res_gc);
  lua_setfield(L, -2, "__gc");
  lua_pushcfunction(L, l_res_tostring);
  lua_setfield(L, -2, "__tostring");
  lua_newtable(L); /* methods; dns.lua adds resolve and reverse */
  for (m = methods; m->name; m++) {
    lua_pushcfunction(L, m->func);
    lua_setfield(L, -2, m->name);
  }
  lua_pushboolean(L, 1);
  lua_pushcclosure(L, l_res_ref, 1);
  lua_setfield(L, -2, "ref");
  lua_pushboolean(L, 0);
  lua_pushcclosure(L, l_res_ref, 1);
  lua_setfield(L, -2, "unref");
  lua_setfield(L, -2, "__index");
  lua_setfield(L, -2, "resolver_mt");

  lua_pushcfunction(L, l_is_ip);
  lua_setfield(L, -2, "is_ip");
  lua_pushcfunction(L, l_lookup);
  lua_setfield(L, -2, "lookup");
  lua_pushcfunction(L, l_resolver);
  lua_setfield(L, -2, "resolver");
  lua_pushcfunction(L, l_query);
  lua_setfield(L, -2, "query");
  lua_createtable(L, 0, 3);
  lua_pushinteger(L, DNS_IPv4_A);
  lua_setfield(L, -2, "A");
  lua_pushinteger(L, DNS_IPv6_AAAA);
  lua_setfield(L, -2, "AAAA");
  lua_pushinteger(L, DNS_PTR);
  lua_setfield(L, -2, "PTR");
  lua_setfield(L, -2, "types");
  return 1;
}
