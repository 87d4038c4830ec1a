/*
 * modules/stream.c - byte streams on a non-blocking descriptor: input and
 * output buffers, the parked read and write of each stream, and the poll
 * phase's callbacks that wake them (see stream.h for the model).
 *
 * The C functions here are the stream's primitives for the Lua half
 * (lua/tide/net.lua), which checks arguments and does the waiting:
 *
 *   s_read(s, kind, a, b)  -> data | nil (end) | nil, msg, code
 *                           | false (parked: wait on the read waiter, which
 *                             is woken with the read's own results)
 *                           | false, true (another task's read is parked)
 *   s_some(s, n)           -> s_read(s, 1, n)
 *   s_write(s, pos, ...)   -> true | nil, msg, code
 *                           | false, pos (parked; pos bytes taken so far)
 *                           | false, -1 (another task's write is parked)
 *   s_flush(s)             -> true | nil, msg, code | false | false, -1
 *   s_shutdown(s)          -> true | nil, msg, code
 *   s_close(s[, {fn, obj}[, reset]]), s_cancel(s, dir), s_bind(s, obj),
 *   s_buffered(s) -> in, out, s_limits(s, ...), s_ref(s, on),
 *   s_linger(s, seconds), s_handshake(s) -> true | nil, msg, code
 *                           | false (parked on the write waiter);
 *   and stream_index, the streams' __index table, where the Lua half
 *   puts the read waiter's close()
 *
 * The waiters: a read waits on the stream userdata itself, a write (or a
 * connect) on obj[TIDE_STREAM_WRITE_WAITER], obj being the Lua half's
 * object for the stream (s_bind makes it the userdata's environment).
 *
 * Invariant: a parked operation (rwait, wwait) exists exactly while a task
 * waits on the direction's waiter: it is set just before the Lua half
 * calls tide._await, and cleared by the wake-up, by the waiter's close()
 * (timeout, cancel; tide._await also closes a waiter whose wait cannot
 * begin) and by close(). So a wake-up always reaches its task, and the
 * read is finished by the wake-up itself (its task gets the read's
 * results; a read that waits for "any data" gets that data directly,
 * without passing through the input buffer). The task usually waits on
 * the stream again before the wake-up returns, so the anchor is let go
 * only after it (settle).
 *
 * While a stream has a parked operation, or flushes in the background
 * after close(), its userdata is anchored (it outlives any Lua reference)
 * and, unless unref'd, keeps the loop alive.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include <event2/event.h>

#include "stream.h"
#include "tls.h"

/* parked reads */
enum { SR_SOME = 1, SR_LINE, SR_EXACT, SR_UNTIL };
/* parked writes */
enum { SW_WRITE = 1, SW_FLUSH, SW_CONNECT, SW_HANDSHAKE };
/* the directions (s_cancel's argument) */
enum { DIR_READ = 1, DIR_WRITE = 2 };

#define KEEP_CAP 1024      /* an emptied buffer up to this size is kept */
#define READ_CHUNK 65536   /* bytes asked of read(2) at a time */
#define DIRECT_ROOM 16384  /* input buffer room worth reading into directly */
#define MAX_IOV 64

/* --- errors ---------------------------------------------------------------- */

const char *tide__errname(int err) {
  switch (err) {
#define E(x) case x: return #x;
    E(EPERM) E(ENOENT) E(EINTR) E(EIO) E(EBADF) E(EAGAIN) E(ENOMEM)
    E(EACCES) E(EFAULT) E(EBUSY) E(EEXIST) E(ENOTDIR) E(EISDIR) E(EINVAL)
    E(ENFILE) E(EMFILE) E(ENOSPC) E(EPIPE) E(ERANGE) E(E2BIG) E(ENAMETOOLONG)
    E(ELOOP) E(EROFS) E(ENOTSOCK) E(EDESTADDRREQ) E(EMSGSIZE) E(EPROTOTYPE)
    E(ENOPROTOOPT) E(EPROTONOSUPPORT) E(EOPNOTSUPP) E(EAFNOSUPPORT)
    E(EADDRINUSE) E(EADDRNOTAVAIL) E(ENETDOWN) E(ENETUNREACH) E(ENETRESET)
    E(ECONNABORTED) E(ECONNRESET) E(ENOBUFS) E(EISCONN) E(ENOTCONN)
    E(ESHUTDOWN) E(ETIMEDOUT) E(ECONNREFUSED) E(EHOSTDOWN) E(EHOSTUNREACH)
    E(EALREADY) E(EINPROGRESS) E(ECANCELED) E(EPROTO)
#undef E
  default: return "EUNKNOWN";
  }
}

int tide__push_errno(lua_State *L, int err) {
  char msg[128];
  snprintf(msg, sizeof msg, "%s", strerror(err));
  /* "Connection refused" -> "connection refused" (not "EOF" and the like) */
  if (msg[0] >= 'A' && msg[0] <= 'Z' && !(msg[1] >= 'A' && msg[1] <= 'Z'))
    msg[0] = (char)(msg[0] - 'A' + 'a');
  lua_pushnil(L);
  lua_pushstring(L, msg);
  lua_pushstring(L, tide__errname(err));
  return 3;
}

static int push_fail(lua_State *L, const char *msg, const char *code) {
  lua_pushnil(L);
  lua_pushstring(L, msg);
  lua_pushstring(L, code);
  return 3;
}

int tide__stream_push_error(lua_State *L, tide__stream *s, int err) {
  if (err == TIDE_STREAM_ETLS)
    return push_fail(L, s->tls && s->tls->msg ? s->tls->msg : "TLS error",
                     s->tls && s->tls->code ? s->tls->code : "ETLS");
  return tide__push_errno(L, err);
}

/* --- buffers --------------------------------------------------------------- */

static void buf_free(tide__buf *b) {
  free(b->p);
  b->p = NULL;
  b->off = b->len = b->cap = 0;
}

/* Makes room for n more bytes after the data. Returns 0, or -1 (memory). */
static int buf_reserve(tide__buf *b, size_t n) {
  size_t need, cap;
  char *p;
  if (b->cap - b->off - b->len >= n) return 0;
  if (b->off) { /* slide the data to the front first */
    memmove(b->p, b->p + b->off, b->len);
    b->off = 0;
    if (b->cap - b->len >= n) return 0;
  }
  if (n > SIZE_MAX / 2 - b->len) return -1;
  need = b->len + n;
  cap = b->cap ? b->cap : 256;
  while (cap < need) cap *= 2;
  if (!(p = realloc(b->p, cap))) return -1;
  b->p = p;
  b->cap = cap;
  return 0;
}

static int buf_append(tide__buf *b, const char *data, size_t n) {
  if (buf_reserve(b, n) != 0) return -1;
  memcpy(b->p + b->off + b->len, data, n);
  b->len += n;
  return 0;
}

static void buf_consume(tide__buf *b, size_t n) {
  b->off += n;
  b->len -= n;
  if (b->len == 0) {
    b->off = 0;
    if (b->cap > KEEP_CAP) buf_free(b); /* idle connections hold no memory */
  }
}

/* --- the userdata ------------------------------------------------------------ */

#define ALIGN16(n) (((n) + 15) & ~(size_t)15)

size_t tide__event_size(void) { return ALIGN16(event_get_struct_event_size()); }

tide__stream *tide__stream_check(lua_State *L, int idx) {
  tide__stream *s = lua_touserdata(L, idx);
  int ok = 0;
  if (s && lua_getmetatable(L, idx)) {
    luaL_getmetatable(L, TIDE_STREAM_MT);
    ok = lua_rawequal(L, -1, -2);
    lua_pop(L, 2);
  }
  if (!ok) luaL_typerror(L, idx, "stream");
  return s;
}

/* The stream argument of the s_* functions, whose first upvalue is the
 * metatable (no registry lookup on the paths of every read and write). */
static tide__stream *check(lua_State *L) {
  tide__stream *s = lua_touserdata(L, 1);
  int ok = 0;
  if (s && lua_getmetatable(L, 1)) {
    ok = lua_rawequal(L, -1, lua_upvalueindex(1));
    lua_pop(L, 1);
  }
  if (!ok) luaL_typerror(L, 1, "stream");
  return s;
}

static int is_active(const tide__stream *s) {
  return s->rwait || s->wwait || s->lingering;
}

/* Keeps h->refs in step: an active, referenced stream keeps the loop alive. */
static void count(tide__stream *s) {
  s->counted = tide__refs_track(s->h, s->counted, is_active(s) && s->refd);
}

/* From a C function whose argument idx is the stream, once it is active. */
static void activate(lua_State *L, tide__stream *s, int idx) {
  if (s->anchor == LUA_NOREF) s->anchor = tide__anchor(s->h, L, idx);
  count(s);
}

/* After a wait ended: lets the userdata go once nothing is pending (a
 * closed stream's anchor goes in the close phase, see on_closed). */
static void settle(lua_State *L, tide__stream *s) {
  count(s);
  if (!is_active(s) && s->anchor != LUA_NOREF && !s->close_node.queued) {
    tide__unanchor(s->h, L, s->anchor);
    s->anchor = LUA_NOREF;
  }
}

static void arm_read(tide__stream *s) {
  if (!s->rarmed && s->fd >= 0 && !s->eof && !s->rerr &&
      event_add(s->rev, NULL) == 0)
    s->rarmed = 1;
}

static void disarm_read(tide__stream *s) {
  if (s->rarmed) {
    event_del(s->rev);
    s->rarmed = 0;
  }
}

static void on_writable(evutil_socket_t fd, short what, void *arg);

/* The write event is made when first needed: most streams never wait
 * for room in the kernel's buffer, and an idle connection is smaller
 * without it. 0, or -1 (memory). */
static int need_wev(tide__stream *s) {
  if (s->wev) return 0;
  s->wev = event_new(s->h->base, s->fd, EV_WRITE | EV_PERSIST, on_writable, s);
  return s->wev ? 0 : -1;
}

static void arm_write(tide__stream *s) {
  if (!s->warmed && s->fd >= 0 && need_wev(s) == 0 &&
      event_add(s->wev, NULL) == 0)
    s->warmed = 1;
}

static void disarm_write(tide__stream *s) {
  if (s->warmed) {
    event_del(s->wev);
    s->warmed = 0;
  }
}

/* A read that must wait on a TLS stream: the session may hold data read
 * from the socket already (the socket then never becomes readable for
 * it), so the read callback runs once anyway. */
static void kick_read(tide__stream *s) {
  arm_read(s);
  if (s->rarmed && s->ssl && tide__tls_pending(s))
    event_active(s->rev, EV_READ, 1);
}

/* Output waits: for writability, or, when the TLS session's write needs
 * to read first, for readability. */
static void want_output(tide__stream *s) {
  if (s->w_on_r) {
    disarm_write(s);
    arm_read(s);
  } else {
    arm_write(s);
  }
}

/* Nothing more to send: write interest off, unless the TLS session's
 * read waits for writability. */
static void output_idle(tide__stream *s) {
  if (!s->r_on_w) disarm_write(s);
}

static void clear_read(tide__stream *s) {
  s->rwait = 0;
  free(s->rsep);
  s->rsep = NULL;
  s->rseplen = 0;
}

static void close_fd(tide__stream *s) {
  disarm_read(s);
  disarm_write(s);
  if (s->wev) {
    event_free(s->wev);
    s->wev = NULL;
  }
  if (s->ssl) tide__tls_free(s); /* (close_notify, when it may) */
  if (s->fd >= 0) {
    close(s->fd); /* a socket's close never blocks without SO_LINGER */
    s->fd = -1;
  }
}

/* Wakes the task parked in direction dir with the nvals values on top of
 * h->L, from a loop callback; the parked operation has been cleared. */
static void wake(tide__stream *s, int dir, int nvals) {
  tide_host *h = s->h;
  lua_State *L = h->L;
  int base = lua_gettop(L) - nvals;
  if (nvals == 0) {
    lua_pushboolean(L, 1);
    nvals = 1;
  }
  tide__push_anchor(h, L, s->anchor); /* on the stack: alive through the call */
  lua_insert(L, base + 1);
  if (dir == DIR_READ) { /* the userdata is the read waiter */
    lua_pushvalue(L, base + 1);
  } else {
    lua_getfenv(L, base + 1);
    lua_rawgeti(L, -1, TIDE_STREAM_WRITE_WAITER);
    lua_remove(L, -2);
  }
  lua_insert(L, base + 2); /* ud, waiter, values... */
  /* The task runs inside this call, and usually waits on the stream again
   * before it returns: the anchor stays for that wait (settle after). */
  tide__complete(h, nvals + 1); /* the waiter and its results */
  settle(L, s);
  if (dir == DIR_READ && s->rqueued) { /* the next queued reader's turn */
    lua_getfenv(L, base + 1);
    if (lua_istable(L, -1)) {
      lua_rawgeti(L, -1, TIDE_STREAM_READ_QUEUE);
      if (lua_istable(L, -1)) {
        lua_getfield(L, -1, "signal");
        lua_insert(L, -2);
        tide__call(h, h->ref_run_direct, 2); /* run_direct(q.signal, q) */
      }
    }
  }
  lua_settop(L, base);
}

/* --- reading ----------------------------------------------------------------- */

/* Where sep occurs in the input from byte `from`, within its first `limit`
 * bytes; or -1. */
static ptrdiff_t search(const tide__stream *s, size_t from, size_t limit,
                        const char *sep, size_t seplen) {
  const char *p = s->in.p + s->in.off, *hit;
  size_t end = s->in.len < limit ? s->in.len : limit;
  if (from >= end) return -1;
  if (seplen == 1)
    hit = memchr(p + from, sep[0], end - from);
  else
    hit = memmem(p + from, end - from, sep, seplen);
  return hit ? hit - p : -1;
}

static int read_ready(tide__stream *s, int kind, size_t n, const char *sep,
                      size_t seplen, size_t *scan) {
  size_t limit, from;
  if (s->eof || s->rerr) return 1;
  switch (kind) {
  case SR_SOME:
    return s->in.len > 0;
  case SR_EXACT:
    return s->in.len >= n;
  case SR_LINE:
    sep = "\n";
    seplen = 1;
    /* fall through */
  default: /* SR_LINE, SR_UNTIL: the separator, or the limit passed */
    limit = n + (kind == SR_LINE ? 2 : seplen); /* "\r\n" counts as a line end */
    if (s->in.len >= limit) return 1;
    from = scan && *scan >= seplen ? *scan - (seplen - 1) : 0;
    if (search(s, from, limit, sep, seplen) >= 0) return 1;
    if (scan) *scan = s->in.len;
    return 0;
  }
}

static void push_consume(lua_State *L, tide__stream *s, size_t n, size_t skip) {
  lua_pushlstring(L, s->in.p + s->in.off, n);
  buf_consume(&s->in, n + skip);
}

/* Pushes the results of a read that read_ready found ready. */
static int read_finish(lua_State *L, tide__stream *s, int kind, size_t n,
                       const char *sep, size_t seplen) {
  ptrdiff_t at;
  switch (kind) {
  case SR_SOME:
    if (s->in.len) {
      push_consume(L, s, s->in.len < n ? s->in.len : n, 0);
      return 1;
    }
    break;
  case SR_EXACT:
    if (s->in.len >= n) {
      push_consume(L, s, n, 0);
      return 1;
    }
    break;
  case SR_LINE:
    at = search(s, 0, n + 2, "\n", 1);
    if (at >= 0) {
      size_t len = (size_t)at;
      if (len > 0 && s->in.p[s->in.off + len - 1] == '\r') len--;
      if (len > n) return push_fail(L, "line too long", "E2BIG");
      push_consume(L, s, len, (size_t)at + 1 - len);
      return 1;
    }
    if (s->in.len >= n + 2) return push_fail(L, "line too long", "E2BIG");
    if (s->eof && s->in.len) { /* the last line, without its end */
      push_consume(L, s, s->in.len, 0);
      return 1;
    }
    break;
  case SR_UNTIL:
    at = search(s, 0, n + seplen, sep, seplen);
    if (at >= 0) {
      push_consume(L, s, (size_t)at, seplen);
      return 1;
    }
    if (s->in.len >= n + seplen) return push_fail(L, "line too long", "E2BIG");
    break;
  }
  if (s->rerr) return tide__stream_push_error(L, s, s->rerr);
  lua_pushnil(L); /* the end of the stream (what is left stays buffered) */
  return 1;
}

/* s_read(s, kind, a, b): kind 1 read(a = n), 2 read_line(a = max),
 * 3 read_exactly(a = n), 4 read_until(a = sep, b = max); a nil max is
 * the stream's max_line */
static int do_read(lua_State *L, tide__stream *s, int kind, size_t n,
                   const char *sep, size_t seplen) {
  if (s->rwait) { /* another task waits to read: this one queues */
    s->rqueued = 1;
    lua_pushboolean(L, 0);
    lua_pushboolean(L, 1);
    return 2;
  }
  if (s->closed) return push_fail(L, "closed", "ECANCELED");
  if (!(s->flags & TIDE_STREAM_READABLE))
    return push_fail(L, "not open for reading", "EBADF");
  if (read_ready(s, kind, n, sep, seplen, NULL))
    return read_finish(L, s, kind, n, sep, seplen);
  if (sep) {
    if (!(s->rsep = malloc(seplen))) return tide__push_errno(L, ENOMEM);
    memcpy(s->rsep, sep, seplen);
    s->rseplen = seplen;
  }
  s->rwait = kind;
  s->rn = n;
  s->rscan = 0;
  kick_read(s);
  activate(L, s, 1);
  lua_pushboolean(L, 0);
  return 1;
}

static int l_read(lua_State *L) {
  tide__stream *s = check(L);
  int kind = (int)lua_tointeger(L, 2);
  size_t n, seplen = 0;
  const char *sep = NULL;
  int nidx = kind == SR_UNTIL ? 4 : 3;
  if (kind == SR_UNTIL) sep = lua_tolstring(L, 3, &seplen);
  /* no limit given: the stream's own (read_line, read_until) */
  n = lua_isnoneornil(L, nidx) ? s->lim.max_line : (size_t)lua_tonumber(L, nidx);
  return do_read(L, s, kind, n, sep, seplen);
}

/* s_some(s, n): s_read(s, 1, n) in two arguments (read(), the common
 * call: a task parked in it has a smaller stack) */
static int l_some(lua_State *L) {
  tide__stream *s = check(L);
  return do_read(L, s, SR_SOME, (size_t)lua_tonumber(L, 2), NULL, 0);
}

enum { RD_NONE, RD_WAKE, RD_DATA };

/* Data or raw records still inside a TLS session (they come without the
 * socket becoming readable again). */
static int session_holds(tide__stream *s) {
  return s->ssl && !s->eof && !s->rerr && !s->handshaking &&
         tide__tls_pending(s);
}

/* One read(2) (on TLS, SSL_read: as many as the session holds). A read
 * that waits for any data gets it directly (pushed on h->L: RD_DATA);
 * else the data goes to the input buffer. The 64 KiB buffer lives on the
 * stack of this function only, not through the call into Lua that may
 * follow. */
static __attribute__((noinline)) int fill(tide__stream *s) {
  char chunk[READ_CHUNK];
  tide__buf *in = &s->in;
  for (;;) {
    int direct = s->rwait == SR_SOME && in->len == 0, err = 0;
    char *dst = chunk;
    size_t room = sizeof chunk;
    ssize_t n;
    if (!direct && in->cap - in->off - in->len >= DIRECT_ROOM) {
      dst = in->p + in->off + in->len;
      room = in->cap - in->off - in->len;
    }
    if (s->ssl) {
      n = tide__tls_recv(s, dst, room, &err);
    } else {
      do n = read(s->fd, dst, room);
      while (n < 0 && errno == EINTR);
      if (n < 0) err = errno;
    }
    if (n < 0) {
      if (err == EAGAIN || err == EWOULDBLOCK) {
        if (s->r_on_w) arm_write(s); /* the session must write first */
        return RD_NONE;
      }
      s->rerr = err;
    } else if (n == 0) {
      s->eof = 1;
    } else if (dst != chunk) {
      in->len += (size_t)n;
    } else if (direct) {
      size_t give = (size_t)n < s->rn ? (size_t)n : s->rn;
      if (give < (size_t)n && buf_append(in, chunk + give, (size_t)n - give) != 0)
        s->rerr = ENOMEM;
      lua_pushlstring(s->h->L, chunk, give);
      return RD_DATA;
    } else if (buf_append(in, chunk, (size_t)n) != 0) {
      s->rerr = ENOMEM;
    }
    if (s->eof || s->rerr) disarm_read(s); /* level-triggered: never again */
    if (s->rwait &&
        !read_ready(s, s->rwait, s->rn, s->rsep, s->rseplen, &s->rscan)) {
      if (session_holds(s)) continue;
      return RD_NONE; /* it needs more: read on */
    }
    /* nobody waits (or the wait ends now): pause at the high-water mark;
     * the next read that must wait arms it again */
    if (in->len >= s->lim.read_high) {
      disarm_read(s);
    } else if (!s->rwait && session_holds(s)) {
      continue; /* empty the session: the socket will not tell again */
    }
    return s->rwait ? RD_WAKE : RD_NONE;
  }
}

static void handshake_step(tide__stream *s);

static void on_readable(evutil_socket_t fd, short what, void *arg) {
  tide__stream *s = arg;
  int r, n;
  (void)what;
  if (s->ssl) {
    if (s->handshaking) {
      handshake_step(s);
      return;
    }
    if (s->w_on_r) { /* the session's write waited for this */
      s->w_on_r = 0;
      on_writable(fd, EV_WRITE, s);
      if (s->fd < 0 || !s->rarmed) return;
    }
  }
  r = fill(s);
  if (r == RD_NONE) return;
  /* the read finishes here: its task gets the results of its read call */
  n = r == RD_DATA ? 1
                   : read_finish(s->h->L, s, s->rwait, s->rn, s->rsep, s->rseplen);
  clear_read(s);
  wake(s, DIR_READ, n);
}

/* --- writing ------------------------------------------------------------------- */

/* -1 with errno set on failure (TIDE_STREAM_ETLS: a TLS failure) */
static ssize_t send_iov(tide__stream *s, struct iovec *iov, int n) {
  ssize_t r;
  if (s->ssl) {
    int err = 0;
    r = tide__tls_send(s, iov, n, &err);
    if (r < 0) errno = err;
    return r;
  }
  do {
    if (s->flags & TIDE_STREAM_SOCKET) {
      if (n == 1) {
        r = send(s->fd, iov[0].iov_base, iov[0].iov_len, MSG_NOSIGNAL);
      } else {
        struct msghdr m;
        memset(&m, 0, sizeof m);
        m.msg_iov = iov;
        m.msg_iovlen = (size_t)n;
        r = sendmsg(s->fd, &m, MSG_NOSIGNAL);
      }
    } else {
      r = n == 1 ? write(s->fd, iov[0].iov_base, iov[0].iov_len)
                 : writev(s->fd, iov, n);
    }
  } while (r < 0 && errno == EINTR);
  return r;
}

/* shutdown() comes after what is queued and what a parked write has yet
 * to queue. */
static void maybe_shutdown(tide__stream *s) {
  if (!s->shut_pending || s->out.len || s->wwait || s->werr) return;
  if (s->ssl && s->fd >= 0 && !s->tls_shut && tide__tls_shutdown(s) == 1) {
    arm_write(s); /* close_notify waits for room: flush_some comes back */
    return;
  }
  s->shut_pending = 0;
  s->shut_done = 1;
  if (s->fd < 0) return;
  if (s->flags & TIDE_STREAM_SOCKET)
    shutdown(s->fd, SHUT_WR);
  else if (!(s->flags & TIDE_STREAM_READABLE))
    close_fd(s); /* a pipe's write end: the reader sees the end */
}

/* One send of the output buffer (write interest fired). */
static void flush_some(tide__stream *s) {
  struct iovec iov;
  ssize_t n;
  if (s->out.len == 0 || s->werr) {
    output_idle(s);
    maybe_shutdown(s);
    return;
  }
  iov.iov_base = s->out.p + s->out.off;
  iov.iov_len = s->out.len;
  n = send_iov(s, &iov, 1);
  if (n > 0) {
    buf_consume(&s->out, (size_t)n);
  } else if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK) {
    s->werr = errno;
    buf_free(&s->out);
  }
  if (s->w_on_r && s->out.len) want_output(s); /* the session reads first */
  if (s->out.len == 0) {
    output_idle(s);
    maybe_shutdown(s);
  }
}

/* The closed stream's background flush ends: drained, failed, or out of
 * time (then the peer gets a reset, not a clean end: data was lost). */
static void linger_end(tide__stream *s, int timed_out) {
  if (timed_out && s->fd >= 0) {
    struct linger lg = {1, 0};
    s->tls_fatal = 1; /* no close_notify after lost data */
    setsockopt(s->fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
  }
  close_fd(s);
  buf_free(&s->out);
  s->lingering = 0;
  settle(s->h->L, s);
}

static void connect_done(tide__stream *s) {
  int err = 0;
  socklen_t len = sizeof err;
  if (getsockopt(s->fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0) err = errno;
  if (err == EINPROGRESS || err == EINTR) return; /* not yet */
  s->connecting = 0;
  disarm_write(s);
  if (s->wwait != SW_CONNECT) return;
  s->wwait = 0;
  if (err) {
    s->werr = err;
    wake(s, DIR_WRITE, tide__push_errno(s->h->L, err));
  } else {
    wake(s, DIR_WRITE, 0);
  }
}

static void on_writable(evutil_socket_t fd, short what, void *arg) {
  tide__stream *s = arg;
  (void)fd;
  if (what & EV_TIMEOUT) {
    if (s->lingering) linger_end(s, 1);
    return;
  }
  if (s->connecting) {
    connect_done(s);
    return;
  }
  if (s->ssl) {
    if (s->handshaking) {
      handshake_step(s);
      return;
    }
    if (s->r_on_w) { /* the session's read waited for this */
      s->r_on_w = 0;
      if (s->out.len == 0 && !s->shut_pending) disarm_write(s);
      on_readable(fd, EV_READ, s);
      if (s->fd < 0) return;
    }
  }
  flush_some(s);
  if (s->lingering) {
    if (s->out.len == 0 || s->werr) linger_end(s, 0);
    return;
  }
  if ((s->wwait == SW_WRITE && (s->out.len <= s->lim.write_low || s->werr)) ||
      (s->wwait == SW_FLUSH && (s->out.len == 0 || s->werr))) {
    int flushed = s->wwait == SW_FLUSH; /* (a write still has data to queue) */
    s->wwait = 0;
    if (flushed) maybe_shutdown(s);
    wake(s, DIR_WRITE, 0);
  }
}

/* s_write(s, pos, data...): sends what the kernel takes now, queues what
 * fits under the high-water mark, and parks for the rest. pos counts the
 * bytes of the data (all arguments in a row) already taken. */
static int l_write(lua_State *L) {
  tide__stream *s = check(L);
  size_t pos = (size_t)lua_tonumber(L, 2), total = 0, skip, len;
  int i, top = lua_gettop(L);
  const char *p;
  if (s->wwait) {
    lua_pushboolean(L, 0);
    lua_pushinteger(L, -1);
    return 2;
  }
  if (s->closed) return push_fail(L, "closed", "ECANCELED");
  if (!(s->flags & TIDE_STREAM_WRITABLE))
    return push_fail(L, "not open for writing", "EBADF");
  if (s->werr) return tide__stream_push_error(L, s, s->werr);
  for (i = 3; i <= top; i++) {
    lua_tolstring(L, i, &len);
    total += len;
  }
  if (s->out.len == 0 && pos < total) { /* nothing queued: straight out */
    struct iovec iov[MAX_IOV];
    int niov = 0;
    ssize_t n;
    skip = pos;
    for (i = 3; i <= top && niov < MAX_IOV; i++) {
      p = lua_tolstring(L, i, &len);
      if (skip >= len) {
        skip -= len;
        continue;
      }
      iov[niov].iov_base = (void *)(p + skip);
      iov[niov].iov_len = len - skip;
      niov++;
      skip = 0;
    }
    n = send_iov(s, iov, niov);
    if (n < 0) {
      if (errno != EAGAIN && errno != EWOULDBLOCK) {
        s->werr = errno;
        return tide__stream_push_error(L, s, s->werr);
      }
    } else {
      pos += (size_t)n;
    }
  }
  if (pos < total && s->out.len < s->lim.write_high) { /* queue what fits */
    size_t room = s->lim.write_high - s->out.len;
    /* a TLS write to repeat needs at least the bytes it was given */
    if (s->ssl && s->tls->retry > room) room = s->tls->retry;
    skip = pos;
    for (i = 3; i <= top && room > 0; i++) {
      size_t take;
      p = lua_tolstring(L, i, &len);
      if (skip >= len) {
        skip -= len;
        continue;
      }
      take = len - skip < room ? len - skip : room;
      if (buf_append(&s->out, p + skip, take) != 0)
        return tide__push_errno(L, ENOMEM);
      pos += take;
      room -= take;
      skip = 0;
    }
  }
  if (s->out.len && need_wev(s) != 0) { /* no event to flush it with */
    s->werr = ENOMEM;
    return tide__push_errno(L, ENOMEM);
  }
  if (s->out.len) want_output(s);
  if (pos >= total) {
    maybe_shutdown(s);
    lua_pushboolean(L, 1);
    return 1;
  }
  s->wwait = SW_WRITE;
  activate(L, s, 1);
  lua_pushboolean(L, 0);
  lua_pushnumber(L, (lua_Number)pos);
  return 2;
}

/* s_flush(s): true once everything queued went to the kernel */
static int l_flush(lua_State *L) {
  tide__stream *s = check(L);
  if (s->wwait) {
    lua_pushboolean(L, 0);
    lua_pushinteger(L, -1);
    return 2;
  }
  if (s->closed) return push_fail(L, "closed", "ECANCELED");
  if (s->werr) return tide__stream_push_error(L, s, s->werr);
  if (s->out.len == 0) {
    lua_pushboolean(L, 1);
    return 1;
  }
  s->wwait = SW_FLUSH;
  activate(L, s, 1);
  lua_pushboolean(L, 0);
  return 1;
}

/* s_shutdown(s): the end of the output, after what is queued */
static int l_shutdown(lua_State *L) {
  tide__stream *s = check(L);
  if (s->werr) return tide__stream_push_error(L, s, s->werr);
  if (!s->shut_done) {
    s->shut_pending = 1;
    maybe_shutdown(s);
  }
  lua_pushboolean(L, 1);
  return 1;
}

/* --- the TLS handshake ---------------------------------------------------------- */

/* One step: 1 done, 0 waiting (the direction it needs is armed), -1
 * failed (rerr and werr hold why). */
static int handshake_try(tide__stream *s) {
  switch (tide__tls_handshake(s)) {
  case TIDE_TLS_DONE:
    s->handshaking = 0;
    if (s->out.len == 0) disarm_write(s);
    if (s->rwait) kick_read(s); /* (a read parked through starttls) */
    return 1;
  case TIDE_TLS_WANT_READ:
    disarm_write(s);
    arm_read(s);
    return 0;
  case TIDE_TLS_WANT_WRITE:
    disarm_read(s);
    arm_write(s);
    return 0;
  default:
    disarm_read(s);
    disarm_write(s);
    return -1;
  }
}

/* From the events: the handshake goes on; its end wakes the write waiter */
static void handshake_step(tide__stream *s) {
  int r = handshake_try(s);
  if (r == 0 || s->wwait != SW_HANDSHAKE) return;
  s->wwait = 0;
  if (r < 0)
    wake(s, DIR_WRITE, tide__stream_push_error(s->h->L, s, s->werr));
  else
    wake(s, DIR_WRITE, 0);
}

/* s_handshake(s): after tls_attach (tls.c) */
static int l_handshake(lua_State *L) {
  tide__stream *s = check(L);
  int r;
  if (s->closed) return push_fail(L, "closed", "ECANCELED");
  if (!s->ssl) return luaL_error(L, "not a TLS stream");
  if (s->werr) return tide__stream_push_error(L, s, s->werr);
  if (!s->handshaking) {
    lua_pushboolean(L, 1);
    return 1;
  }
  if (s->wwait) return luaL_error(L, "the stream's output is busy");
  if (need_wev(s) != 0) return tide__push_errno(L, ENOMEM);
  r = handshake_try(s);
  if (r < 0) return tide__stream_push_error(L, s, s->werr);
  if (r > 0) {
    lua_pushboolean(L, 1);
    return 1;
  }
  s->wwait = SW_HANDSHAKE;
  activate(L, s, 1);
  lua_pushboolean(L, 0);
  return 1;
}

void tide__stream_connect_wait(lua_State *L, tide__stream *s, int idx) {
  if (need_wev(s) != 0) luaL_error(L, "not enough memory");
  s->connecting = 1;
  s->wwait = SW_CONNECT;
  arm_write(s);
  activate(L, s, idx);
}

/* --- closing ----------------------------------------------------------------- */

/* Close phase: lets the userdata go (unless it still flushes), then runs
 * close(fn)'s fn(obj) as a task. */
static void on_closed(tide_host *h, tide__deferred *d) {
  tide__stream *s = (tide__stream *)((char *)d - offsetof(tide__stream, close_node));
  lua_State *L = h->L;
  int cb = s->close_cb;
  s->close_cb = LUA_NOREF;
  if (cb != LUA_NOREF) tide__push_anchor(h, L, cb); /* before s may go */
  settle(L, s);
  if (cb != LUA_NOREF) {
    tide__unanchor(h, L, cb);
    lua_rawgeti(L, -1, 1);
    lua_rawgeti(L, -2, 2);
    lua_remove(L, -3);
    tide__call(h, h->ref_run_task, 2);
  }
}

/* s_close(s[, {fn, obj}[, reset]]): idempotent. What write() queued is
 * flushed in the background for up to s->linger seconds of no progress;
 * reset: drop it, and the peer gets a reset (SO_LINGER 0) instead of an
 * end of stream. The Lua half wakes the tasks that wait on the stream. */
static int l_close(lua_State *L) {
  tide__stream *s = check(L);
  int reset = lua_toboolean(L, 3);
  if (s->closed) return 0;
  s->closed = 1;
  clear_read(s);
  s->wwait = 0;
  disarm_read(s);
  buf_free(&s->in);
  if (reset && s->fd >= 0 && (s->flags & TIDE_STREAM_SOCKET)) {
    struct linger lg = {1, 0};
    s->tls_fatal = 1; /* an abort: no close_notify */
    setsockopt(s->fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
  } else if (s->fd >= 0 && s->out.len && !s->werr && !s->connecting &&
             s->linger > 0) {
    struct timeval tv;
    tv.tv_sec = (time_t)s->linger;
    tv.tv_usec = (suseconds_t)((s->linger - (double)tv.tv_sec) * 1e6);
    disarm_write(s);
    if (need_wev(s) == 0 && event_add(s->wev, &tv) == 0) {
      s->warmed = 1;
      s->lingering = 1;
    }
  }
  if (!s->lingering) {
    close_fd(s);
    buf_free(&s->out);
  }
  if (lua_istable(L, 2)) s->close_cb = tide__anchor(s->h, L, 2);
  if (s->lingering) activate(L, s, 1);
  count(s);
  if (s->close_cb != LUA_NOREF || s->anchor != LUA_NOREF)
    tide__close_later(s->h, &s->close_node, on_closed);
  return 0;
}

/* __gc: never waits; a forgotten stream loses what it had queued. Runs
 * only for a stream that is not anchored, or at lua_close. */
static int l_gc(lua_State *L) {
  tide__stream *s = lua_touserdata(L, 1);
  s->closed = 1;
  s->lingering = 0;
  clear_read(s);
  s->wwait = 0;
  close_fd(s);
  buf_free(&s->in);
  buf_free(&s->out);
  if (s->tls) {
    free(s->tls->msg);
    free(s->tls);
    s->tls = NULL;
  }
  if (s->counted) {
    s->h->refs--;
    s->counted = 0;
  }
  return 0;
}

/* s_cancel(s, dir): the waiter's close(): the wait ended early (timeout,
 * cancel). Buffered data stays; an abandoned connect closes the socket. */
static int l_cancel(lua_State *L) {
  tide__stream *s = check(L);
  if (lua_tointeger(L, 2) == DIR_READ) {
    clear_read(s);
  } else {
    if (s->wwait == SW_CONNECT) {
      s->connecting = 0;
      close_fd(s);
      s->werr = ECANCELED;
    } else if (s->wwait == SW_HANDSHAKE) { /* abandoned: the session is done */
      disarm_read(s);
      disarm_write(s);
      s->rerr = s->werr = ECANCELED;
    }
    s->wwait = 0;
    maybe_shutdown(s);
  }
  settle(L, s);
  return 0;
}

/* --- the rest ------------------------------------------------------------------ */

/* s_bind(s, obj): obj is the Lua half's object for s (see the waiters) */
static int l_bind(lua_State *L) {
  check(L);
  luaL_checktype(L, 2, LUA_TTABLE);
  lua_settop(L, 2);
  lua_setfenv(L, 1);
  return 0;
}

static int l_buffered(lua_State *L) {
  tide__stream *s = check(L);
  lua_pushnumber(L, (lua_Number)s->in.len);
  lua_pushnumber(L, (lua_Number)s->out.len);
  return 2;
}

/* s_limits(s, read_high, write_high, write_low, max_line): checked by the
 * Lua half; a parked write sees the new marks at its next wake-up. */
static int l_limits(lua_State *L) {
  tide__stream *s = check(L);
  s->lim.read_high = (size_t)lua_tonumber(L, 2);
  s->lim.write_high = (size_t)lua_tonumber(L, 3);
  s->lim.write_low = (size_t)lua_tonumber(L, 4);
  s->lim.max_line = (size_t)lua_tonumber(L, 5);
  return 0;
}

static int l_ref(lua_State *L) {
  tide__stream *s = check(L);
  s->refd = lua_toboolean(L, 2) ? 1 : 0;
  count(s);
  return 0;
}

static int l_linger(lua_State *L) {
  tide__stream *s = check(L);
  s->linger = lua_tonumber(L, 2);
  return 0;
}

tide__stream *tide__stream_new(lua_State *L, int fd, unsigned flags,
                               const tide__stream_limits *lim) {
  size_t head = ALIGN16(sizeof(tide__stream)), esz = tide__event_size();
  tide__stream *s = lua_newuserdata(L, head + esz);
  tide_host *h = tide_from_lua(L);
  memset(s, 0, head);
  s->h = h;
  s->fd = fd;
  s->flags = flags;
  s->refd = 1;
  s->anchor = s->close_cb = LUA_NOREF;
  s->linger = TIDE_STREAM_LINGER;
  if (lim) {
    s->lim = *lim;
  } else {
    s->lim.read_high = TIDE_STREAM_READ_HIGH;
    s->lim.write_high = TIDE_STREAM_WRITE_HIGH;
    s->lim.write_low = TIDE_STREAM_WRITE_LOW;
    s->lim.max_line = TIDE_STREAM_MAX_LINE;
  }
  s->rev = (struct event *)((char *)s + head);
  s->wev = NULL; /* (need_wev) */
  tide__stream_set_fd(s, fd);
  luaL_getmetatable(L, TIDE_STREAM_MT);
  lua_setmetatable(L, -2);
  return s;
}

void tide__stream_set_fd(tide__stream *s, int fd) {
  struct event_base *base = s->h->base;
  s->fd = fd;
  event_assign(s->rev, base, fd, EV_READ | EV_PERSIST, on_readable, s);
  if (s->wev)
    event_assign(s->wev, base, fd, EV_WRITE | EV_PERSIST, on_writable, s);
}

void tide__stream_abort(tide__stream *s) {
  s->closed = 1;
  close_fd(s);
}

void tide__stream_register(lua_State *L) {
  static const luaL_Reg fns[] = {
      {"s_read", l_read},       {"s_some", l_some},
      {"s_write", l_write},
      {"s_flush", l_flush},     {"s_shutdown", l_shutdown},
      {"s_close", l_close},     {"s_cancel", l_cancel},
      {"s_bind", l_bind},       {"s_buffered", l_buffered},
      {"s_limits", l_limits},   {"s_ref", l_ref},
      {"s_linger", l_linger},   {"s_handshake", l_handshake},
      {NULL, NULL}};
  const luaL_Reg *f;
  if (luaL_newmetatable(L, TIDE_STREAM_MT)) {
    lua_pushcfunction(L, l_gc);
    lua_setfield(L, -2, "__gc");
    lua_pushliteral(L, "tide.stream");
    lua_setfield(L, -2, "__metatable");
    lua_newtable(L);
    lua_setfield(L, -2, "__index");
  }
  lua_getfield(L, -1, "__index");
  lua_setfield(L, -3, "stream_index");
  for (f = fns; f->name; f++) {
    lua_pushvalue(L, -1);
    lua_pushcclosure(L, f->func, 1);
    lua_setfield(L, -3, f->name);
  }
  lua_pop(L, 1);
}
