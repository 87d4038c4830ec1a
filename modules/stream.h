/*
 * modules/stream.h - byte streams on a non-blocking descriptor (sockets
 * today; pipes, stdio and TLS later), shared by the modules that make them.
 *
 * A stream is a Lua userdata ("tide.stream") holding this struct and its
 * read event (libevent's; the write event is made the first time the
 * stream waits for room to write, see need_wev). Its Lua face (read, read_line, write, ...) is in
 * lua/tide/net.lua, which drives the C functions of stream.c: they never
 * block and never wait; when a call must wait they record what it waits
 * for (a parked operation) and return false, and the Lua half waits with
 * tide._await on the direction's waiter object. The event callbacks run in
 * the poll phase and wake the waiter (tide__complete) once the parked
 * operation can finish: a parked read is finished there, and its task
 * gets the read's results with the wake-up.
 *
 * Writing follows libuv: data goes to the kernel at once, and only what the
 * kernel does not take is copied to the output buffer, with write interest
 * armed until it drains. Read interest is armed by the first read that
 * must wait and stays armed while the input buffer is under its
 * high-water mark, so a connection being read costs no epoll_ctl per
 * message.
 *
 * A stream may carry a TLS session (modules/tls.c): then the session's
 * SSL_read and SSL_write take the place of read(2) and send(2) under the
 * same buffers, parked operations and events, and a session that needs
 * the other direction's readiness (a read that must write, a write that
 * must read) arms that direction's event for it.
 */
#ifndef TIDE_STREAM_H
#define TIDE_STREAM_H

#include <stddef.h>
#include <sys/types.h>

#include "internal.h"

#define TIDE_STREAM_MT "tide.stream"

/* The slots of the write waiter and of the queue of tasks waiting for
 * their turn to read (a tide.cond) in the Lua object bound to a stream
 * (stream.c, s_bind); lua/tide/net.lua lays its connections out so. */
#define TIDE_STREAM_WRITE_WAITER 6
#define TIDE_STREAM_READ_QUEUE 7

/* flags of a stream (tide__stream_new) */
#define TIDE_STREAM_SOCKET 1   /* send/sendmsg with MSG_NOSIGNAL, shutdown */
#define TIDE_STREAM_READABLE 2
#define TIDE_STREAM_WRITABLE 4

/* default limits (docs/net.md, "Buffers and watermarks") */
#define TIDE_STREAM_READ_HIGH 65536
#define TIDE_STREAM_WRITE_HIGH 65536
#define TIDE_STREAM_WRITE_LOW 16384
#define TIDE_STREAM_MAX_LINE 65536
#define TIDE_STREAM_LINGER 30.0 /* seconds close() flushes in the background */

/* rerr / werr of a stream whose TLS session failed: the message and code
 * are in the stream's TLS state (tls->msg, tls->code) */
#define TIDE_STREAM_ETLS (-1)

struct ssl_st;

typedef struct tide__buf {
  char *p;
  size_t off, len, cap; /* the data is p[off .. off + len) */
} tide__buf;

typedef struct tide__stream_limits {
  size_t read_high;  /* stop reading from the kernel at this much input */
  size_t write_high; /* write() queues at most this much output */
  size_t write_low;  /* a parked write() resumes at this much output */
  size_t max_line;   /* read_line's limit, read_until's default */
} tide__stream_limits;

typedef struct tide__stream tide__stream;
typedef struct tide__stream_tls tide__stream_tls;
struct tide__stream {
  tide_host *h;
  int fd;                 /* -1 once closed */
  unsigned flags;         /* TIDE_STREAM_* */
  unsigned closed : 1;    /* close() or __gc: Lua can no longer use it */
  unsigned eof : 1;       /* read() met the end of the stream */
  unsigned rarmed : 1;    /* read event added */
  unsigned warmed : 1;    /* write event added */
  unsigned connecting : 1;
  unsigned shut_pending : 1; /* shutdown() once the output drains */
  unsigned shut_done : 1;
  unsigned lingering : 1; /* closed, flushing its output in the background */
  unsigned refd : 1;      /* ref()/unref() */
  unsigned counted : 1;   /* counted in h->refs */
  unsigned rqueued : 1;   /* a task has queued behind another's read */
  /* TLS (modules/tls.c) */
  unsigned handshaking : 1;  /* the handshake has not finished */
  unsigned r_on_w : 1;       /* the session's read waits for writability */
  unsigned w_on_r : 1;       /* the session's write waits for readability */
  unsigned tls_fatal : 1;    /* the session failed: no close_notify */
  unsigned tls_shut : 1;     /* close_notify sent */
  int rerr, werr;         /* sticky errno of the read / write side */
  tide__buf in, out;
  tide__stream_limits lim;
  double linger;          /* seconds (close()'s background flush) */

  /* the parked read: what it waits for */
  int rwait;              /* SR_* in stream.c, 0 when none */
  size_t rn;              /* read(n)'s n, read_exactly's n, a limit */
  char *rsep;             /* read_until's separator (a copy) */
  size_t rseplen;
  size_t rscan;           /* input already searched for it */
  int wwait;              /* SW_* in stream.c, 0 when none */

  int anchor;             /* the userdata's anchor while active */
  int close_cb;           /* anchor of {fn, obj} for close(fn), or LUA_NOREF */
  tide__deferred close_node;
  struct event *rev;      /* inside the userdata, after this struct */
  struct event *wev;      /* made when first needed (event_new), or NULL */

  /* TLS (modules/tls.c): both NULL on a plain stream. The session's
   * other state is allocated apart, so that plain streams (most) do not
   * carry it. */
  struct ssl_st *ssl;
  tide__stream_tls *tls;  /* made with the session, kept after it for its
                             error (freed with the stream) */
};

struct tide__stream_tls {
  size_t retry;           /* a write to repeat has this many bytes */
  tide__buf in;           /* input that came before the session began:
                             the session reads it first */
  char *msg;              /* TIDE_STREAM_ETLS's message (malloc'd) */
  const char *code;       /* and code ("ETLS", "ECERT", ...) */
};

/* Pushes a new stream on fd (already non-blocking; the stream owns it
 * from now on), or on -1 (see tide__stream_set_fd). */
tide__stream *tide__stream_new(lua_State *L, int fd, unsigned flags,
                               const tide__stream_limits *lim);

/* Gives a stream made with fd -1 its descriptor (make the userdata
 * first, so that a memory error leaks no descriptor). */
void tide__stream_set_fd(tide__stream *s, int fd);

/* Closes a stream that never reached Lua (a failed connect). */
void tide__stream_abort(tide__stream *s);

/* The stream at idx, or raises a type error naming argument idx. */
tide__stream *tide__stream_check(lua_State *L, int idx);

/* Adds the stream's functions to the table on top of the stack (the C
 * half of a module whose Lua half wraps streams). */
void tide__stream_register(lua_State *L);

/* Connecting: the stream waits for writability, then reports the outcome
 * to its write waiter as true or nil, message, code. Called by net.c from
 * a function whose argument idx is the stream (raises when there is no
 * memory for the write event). */
void tide__stream_connect_wait(lua_State *L, tide__stream *s, int idx);

/* Pushes nil, message, code for a stream's sticky error err (an errno
 * or TIDE_STREAM_ETLS). Returns 3. */
int tide__stream_push_error(lua_State *L, tide__stream *s, int err);

/* Pushes nil, message, code for errno err (message: strerror in lower
 * case, the code: "ECONNREFUSED" and so on). Returns 3. */
int tide__push_errno(lua_State *L, int err);
const char *tide__errname(int err);

/* An event's memory, after the owning struct in its userdata */
size_t tide__event_size(void);

#endif
