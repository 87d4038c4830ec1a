/*
 * spec/c/check_loop.c - the loop and its phases (host/loop.c), tested
 * through host/internal.h and host/tide.h with libcheck.
 *
 * Each test creates a real host and drives it with C callbacks that live in
 * the loop's own structures (tide__deferred for the pending and close
 * phases, tide__ctimer in h->timers, tide__imm in the check FIFO, plain
 * libevent events on a socketpair for the poll phase) or with Lua through
 * tide_lua(h). Every callback appends "name/phase@iteration" to a log, and
 * the tests compare the log with the expected sequence, so that an order,
 * a phase or an iteration that is off shows in the failure message.
 *
 * Iterations in the log are relative to h->iterations when the log was
 * reset (the first iteration of a run is @1).
 */
#define _GNU_SOURCE
#include <check.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <event2/event.h>

#include "internal.h"

/* ---- helpers ------------------------------------------------------------ */

static char logbuf[4096];
static uint64_t iter0;

static void log_reset(tide_host *h) {
  logbuf[0] = '\0';
  iter0 = h->iterations;
}

/* Appends "name/phase@iteration" (space separated). */
static void rec(tide_host *h, const char *name) {
  size_t len = strlen(logbuf);
  snprintf(logbuf + len, sizeof logbuf - len, "%s%s/%s@%llu", len ? " " : "",
           name, tide__phase_names[h->phase],
           (unsigned long long)(h->iterations - iter0));
}

static double seconds(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static tide_host *new_host(void) {
  char err[256] = "";
  tide_host *h = tide_host_new(NULL, err, sizeof err);
  ck_assert_msg(h != NULL, "tide_host_new: %s", err);
  return h;
}

/* Runs Lua code in the host's main state; fails the test on an error. */
static void lua_ok(tide_host *h, const char *code) {
  lua_State *L = tide_lua(h);
  int top = lua_gettop(L);
  if (luaL_dostring(L, code) != 0)
    ck_abort_msg("Lua error: %s\nin: %s", lua_tostring(L, -1), code);
  lua_settop(L, top);
}

/* The string Lua code returns (copied into buf). */
static const char *lua_str(tide_host *h, const char *code, char *buf,
                           size_t n) {
  lua_State *L = tide_lua(h);
  int top = lua_gettop(L);
  if (luaL_dostring(L, code) != 0)
    ck_abort_msg("Lua error: %s\nin: %s", lua_tostring(L, -1), code);
  ck_assert_msg(lua_isstring(L, -1), "no string from: %s", code);
  snprintf(buf, n, "%s", lua_tostring(L, -1));
  lua_settop(L, top);
  return buf;
}

/* Lua twin of rec(): defines rec(name) and the global `order`, with
 * iterations relative to now. lua_log returns the log as a string. */
static void lua_log_reset(tide_host *h) {
  lua_ok(h,
         "order = {}\n"
         "local it0 = tide.stats().iterations\n"
         "function rec(name)\n"
         "  order[#order + 1] = ('%s/%s@%d'):format(name, tide.phase(),\n"
         "    tide.stats().iterations - it0)\n"
         "end");
}

static const char *lua_log(tide_host *h) {
  static char buf[4096];
  return lua_str(h, "return table.concat(order, ' ')", buf, sizeof buf);
}

/* The log without phases and iterations (for timers with a real delay,
 * whose iteration depends on the clock). */
static const char *lua_names(tide_host *h) {
  static char buf[4096];
  return lua_str(h, "return (table.concat(order, ' '):gsub('/%S*', ''))",
                 buf, sizeof buf);
}

/* A socketpair whose first end is made readable by writing to the other. */
typedef struct io {
  tide_host *h;
  int fd[2];
  struct event *ev;
  const char *name;
  void (*then)(struct io *io); /* runs inside the I/O callback */
} io;

static void io_cb(evutil_socket_t fd, short what, void *arg) {
  io *x = arg;
  char c;
  ck_assert_int_eq(what & EV_READ, EV_READ);
  ck_assert_int_eq(read(fd, &c, 1), 1);
  x->h->refs--; /* one-shot event: it no longer keeps the loop alive */
  rec(x->h, x->name);
  if (x->then) x->then(x);
}

/* Registers a one-shot read event (counted in h->refs while registered);
 * with readable, the peer writes one byte so that it fires at the next
 * poll. */
static void io_open(io *x, tide_host *h, const char *name, int readable) {
  memset(x, 0, sizeof *x);
  x->h = h;
  x->name = name;
  ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM, 0, x->fd), 0);
  x->ev = event_new(tide_event_base(h), x->fd[0], EV_READ, io_cb, x);
  ck_assert_ptr_nonnull(x->ev);
  ck_assert_int_eq(event_add(x->ev, NULL), 0);
  h->refs++;
  if (readable) ck_assert_int_eq(write(x->fd[1], "x", 1), 1);
}

static void io_close(io *x) {
  if (event_pending(x->ev, EV_READ, NULL)) x->h->refs--;
  event_free(x->ev);
  close(x->fd[0]);
  close(x->fd[1]);
}

/* C callbacks for the other phases; each knows its name. */
typedef struct cdef {
  tide__deferred d;
  const char *name;
  void (*then)(tide_host *h, struct cdef *c);
  void *arg;
} cdef;

static void cdef_cb(tide_host *h, tide__deferred *d) {
  cdef *c = (cdef *)d;
  rec(h, c->name);
  if (c->then) c->then(h, c);
}

typedef struct ctim {
  tide__ctimer ct;
  const char *name;
  int ref; /* counted in h->refs while armed */
  void (*then)(tide_host *h, struct ctim *t);
  void *arg;
} ctim;

static void ctim_cb(tide_host *h, tide__ctimer *ct) {
  ctim *t = (ctim *)ct;
  if (t->ref) h->refs--;
  rec(h, t->name);
  if (t->then) t->then(h, t);
}

/* Arms t at h->now + delay_ns, as a zero-delay timer does in Lua. */
static void ctim_start(tide_host *h, ctim *t, const char *name,
                       int64_t delay_ns, int ref) {
  memset(t, 0, sizeof *t);
  tide__timer_init(&t->ct.t);
  t->ct.cb = ctim_cb;
  t->name = name;
  t->ref = ref;
  ck_assert_int_eq(tide__timer_start(&h->timers, &t->ct.t, h->now, delay_ns),
                   0);
  if (ref) h->refs++;
}

typedef struct cimm {
  tide__imm im;
  const char *name;
  void (*then)(tide_host *h, struct cimm *m);
  void *arg;
} cimm;

static void cimm_cb(tide_host *h, tide__imm *im) {
  cimm *m = (cimm *)im;
  rec(h, m->name);
  if (m->then) m->then(h, m);
}

static void cimm_push(tide_host *h, cimm *m, const char *name, int ref) {
  memset(m, 0, sizeof *m);
  m->im.cb = cimm_cb;
  m->im.ref = ref;
  m->name = name;
  tide__imm_push(h, &m->im);
}

/* ---- phase order -------------------------------------------------------- */

START_TEST(test_phase_order) {
  tide_host *h = new_host();
  ctim t;
  cdef pend, clo;
  io x;
  cimm m;
  int rc;

  log_reset(h);
  /* queued in reverse order of the phases: the order must come from the
   * loop, not from the order of queueing */
  memset(&clo, 0, sizeof clo);
  clo.name = "close";
  tide__close_later(h, &clo.d, cdef_cb);
  cimm_push(h, &m, "imm", 1);
  io_open(&x, h, "io", 1);
  memset(&pend, 0, sizeof pend);
  pend.name = "pending";
  tide__defer(h, &pend.d, cdef_cb);
  ctim_start(h, &t, "timer", 0, 1);

  rc = tide_loop_run(h, TIDE_RUN_ONCE);
  ck_assert_str_eq(logbuf, "timer/timers@1 pending/pending@1 io/poll@1 "
                           "imm/check@1 close/close@1");
  ck_assert_int_eq(rc, 0); /* nothing referenced remains */
  ck_assert_int_eq(h->refs, 0);
  ck_assert_int_eq(h->phase, TIDE_PHASE_MAIN);
  io_close(&x);
  tide_host_free(h);
}
END_TEST

/* The same through Lua: each kind of callback sees its phase in
 * tide.phase(), and the main chunk runs in "main". */
START_TEST(test_phase_names_lua) {
  tide_host *h = new_host();
  lua_log_reset(h);
  lua_ok(h,
         "rec('chunk')\n"
         "local t = tide.after(10, function() end)\n"
         "tide.immediate(function() rec('imm'); t:close(function()\n"
         "  rec('closecb') end) end)\n"
         "tide.after(0, function() rec('timer') end)");
  ck_assert_int_eq(tide_loop_run(h, TIDE_RUN_DEFAULT), 0);
  ck_assert_str_eq(lua_log(h),
                   "chunk/main@0 timer/timers@1 imm/check@1 closecb/close@1");
  tide_host_free(h);
}
END_TEST

/* ---- an immediate from an I/O callback runs before a 0 timer ------------ */

static ctim io_timer;
static cimm io_imm;

static void io_queue_both(io *x) {
  ctim_start(x->h, &io_timer, "timer0", 0, 1);
  cimm_push(x->h, &io_imm, "imm", 1);
}

START_TEST(test_io_immediate_before_zero_timer) {
  tide_host *h = new_host();
  io x;
  log_reset(h);
  io_open(&x, h, "io", 1);
  x.then = io_queue_both;
  ck_assert_int_eq(tide_loop_run(h, TIDE_RUN_DEFAULT), 0);
  /* check phase of the same iteration vs timers of the next */
  ck_assert_str_eq(logbuf, "io/poll@1 imm/check@1 timer0/timers@2");
  io_close(&x);
  tide_host_free(h);
}
END_TEST

/* The same with the timer queued first, so that queueing order cannot be
 * what makes the immediate run first. */
static void io_queue_timer_first(io *x) {
  ctim_start(x->h, &io_timer, "timer0", 0, 1);
  cimm_push(x->h, &io_imm, "imm", 1);
}
static void io_queue_imm_first(io *x) {
  cimm_push(x->h, &io_imm, "imm", 1);
  ctim_start(x->h, &io_timer, "timer0", 0, 1);
}

START_TEST(test_io_immediate_before_zero_timer_any_order) {
  tide_host *h = new_host();
  io x;
  int i;
  for (i = 0; i < 2; i++) {
    log_reset(h);
    io_open(&x, h, "io", 1);
    x.then = i ? io_queue_imm_first : io_queue_timer_first;
    ck_assert_int_eq(tide_loop_run(h, TIDE_RUN_DEFAULT), 0);
    ck_assert_str_eq(logbuf, "io/poll@1 imm/check@1 timer0/timers@2");
    io_close(&x);
  }
  tide_host_free(h);
}
END_TEST

/* Through Lua: the libevent callback calls into Lua, which queues
 * tide.after(0) and tide.immediate (the timer first). */
static void io_call_lua(io *x) {
  lua_State *L = tide_lua(x->h);
  if (luaL_dostring(L,
                    "rec('io')\n"
                    "tide.after(0, function() rec('after0') end)\n"
                    "tide.immediate(function() rec('imm') end)\n"
                    "tide.after(0, function() rec('after0b') end)\n"
                    "tide.immediate(function() rec('imm2') end)") != 0)
    ck_abort_msg("Lua error: %s", lua_tostring(L, -1));
}

START_TEST(test_io_immediate_before_zero_timer_lua) {
  tide_host *h = new_host();
  io x;
  lua_log_reset(h);
  log_reset(h);
  io_open(&x, h, "c-io", 1);
  x.then = io_call_lua;
  ck_assert_int_eq(tide_loop_run(h, TIDE_RUN_DEFAULT), 0);
  ck_assert_str_eq(logbuf, "c-io/poll@1");
  ck_assert_str_eq(lua_log(h), "io/poll@1 imm/check@1 imm2/check@1 "
                               "after0/timers@2 after0b/timers@2");
  io_close(&x);
  tide_host_free(h);
}
END_TEST

/* ---- pending ------------------------------------------------------------ */

static cdef pend_b, pend_c;

static void pend_queue_more(tide_host *h, cdef *c) {
  if (c->arg) return; /* second run of A */
  c->arg = c;
  memset(&pend_b, 0, sizeof pend_b);
  pend_b.name = "B";
  tide__defer(h, &pend_b.d, cdef_cb);
  tide__defer(h, &c->d, cdef_cb); /* A queues itself again */
}

START_TEST(test_pending_queued_in_pending_waits) {
  tide_host *h = new_host();
  cdef a;
  log_reset(h);
  memset(&a, 0, sizeof a);
  a.name = "A";
  a.then = pend_queue_more;
  tide__defer(h, &a.d, cdef_cb);
  memset(&pend_c, 0, sizeof pend_c);
  pend_c.name = "C";
  tide__defer(h, &pend_c.d, cdef_cb);
  /* the pending queue alone keeps the loop alive */
  ck_assert_int_eq(tide_loop_run(h, TIDE_RUN_DEFAULT), 0);
  ck_assert_str_eq(logbuf, "A/pending@1 C/pending@1 B/pending@2 A/pending@2");
  ck_assert_uint_eq(h->iterations - iter0, 2);
  tide_host_free(h);
}
END_TEST

/* A deferred callback queued twice runs once. */
START_TEST(test_defer_twice_runs_once) {
  tide_host *h = new_host();
  cdef a;
  log_reset(h);
  memset(&a, 0, sizeof a);
  a.name = "A";
  tide__defer(h, &a.d, cdef_cb);
  tide__defer(h, &a.d, cdef_cb);
  ck_assert_int_eq(tide_loop_run(h, TIDE_RUN_DEFAULT), 0);
  ck_assert_str_eq(logbuf, "A/pending@1");
  tide_host_free(h);
}
END_TEST

/* ---- close -------------------------------------------------------------- */

/* Close callbacks queued from every phase of an iteration run after that
 * iteration's check phase, in the order they were queued; one queued while
 * the close phase runs waits for the next iteration. */
static cdef cl[5];
static cimm cl_imm, cl_imm2;
static cdef cl_pend;

static void queue_close(tide_host *h, int i, const char *name) {
  memset(&cl[i], 0, sizeof cl[i]);
  cl[i].name = name;
  tide__close_later(h, &cl[i].d, cdef_cb);
}
static void close_from_close(tide_host *h, cdef *c) {
  (void)c;
  queue_close(h, 4, "close-late");
}
static void imm_queues_close(tide_host *h, cimm *m) {
  (void)m;
  queue_close(h, 3, "close-check");
  cl[3].then = close_from_close;
}
static void pend_queues_close(tide_host *h, cdef *c) {
  (void)c;
  queue_close(h, 1, "close-pending");
}
static void io_queues_close(io *x) { queue_close(x->h, 2, "close-poll"); }
static void timer_queues_close(tide_host *h, ctim *t) {
  (void)t;
  queue_close(h, 0, "close-timers");
  memset(&cl_pend, 0, sizeof cl_pend);
  cl_pend.name = "pending";
  cl_pend.then = pend_queues_close;
  tide__defer(h, &cl_pend.d, cdef_cb);
  cimm_push(h, &cl_imm, "imm", 1);
  cl_imm.then = imm_queues_close;
}

START_TEST(test_close_after_check) {
  tide_host *h = new_host();
  ctim t;
  io x;
  log_reset(h);
  ctim_start(h, &t, "timer", 0, 1);
  t.then = timer_queues_close;
  io_open(&x, h, "io", 1);
  x.then = io_queues_close;
  ck_assert_int_eq(tide_loop_run(h, TIDE_RUN_DEFAULT), 0);
  ck_assert_str_eq(logbuf,
                   "timer/timers@1 pending/pending@1 io/poll@1 imm/check@1 "
                   "close-timers/close@1 close-pending/close@1 "
                   "close-poll/close@1 close-check/close@1 "
                   "close-late/close@2");
  io_close(&x);
  tide_host_free(h);
}
END_TEST

/* An immediate queued with a close callback from the same (check) phase
 * waits for the next iteration; the close callback does not. */
static void imm_queues_imm_and_close(tide_host *h, cimm *m) {
  (void)m;
  cimm_push(h, &cl_imm2, "imm2", 1);
  queue_close(h, 0, "close");
}

START_TEST(test_check_queued_in_check_waits) {
  tide_host *h = new_host();
  cimm a, b;
  log_reset(h);
  cimm_push(h, &a, "immA", 1);
  a.then = imm_queues_imm_and_close;
  cimm_push(h, &b, "immB", 0); /* unreferenced, but already queued */
  ck_assert_int_eq(tide_loop_run(h, TIDE_RUN_DEFAULT), 0);
  ck_assert_str_eq(logbuf,
                   "immA/check@1 immB/check@1 close/close@1 imm2/check@2");
  tide_host_free(h);
}
END_TEST

/* timer:close(fn) from a timer callback: fn runs after the immediates
 * queued in the same iteration, in the close phase. */
START_TEST(test_close_after_check_lua) {
  tide_host *h = new_host();
  lua_log_reset(h);
  lua_ok(h,
         "local idle = tide.after(10, function() rec('never') end)\n"
         "tide.after(0, function()\n"
         "  rec('timer')\n"
         "  idle:close(function() rec('closed') end)\n"
         "  tide.immediate(function() rec('imm') end)\n"
         "end)");
  ck_assert_int_eq(tide_loop_run(h, TIDE_RUN_DEFAULT), 0);
  ck_assert_str_eq(lua_log(h), "timer/timers@1 imm/check@1 closed/close@1");
  tide_host_free(h);
}
END_TEST

/* ---- when the loop ends ------------------------------------------------- */

START_TEST(test_loop_ends_when_nothing_referenced) {
  tide_host *h = new_host();
  uint64_t it;
  /* nothing at all: returns at once, without an iteration */
  it = h->iterations;
  ck_assert_int_eq(tide_loop_run(h, TIDE_RUN_DEFAULT), 0);
  ck_assert_int_eq(tide_loop_run(h, TIDE_RUN_ONCE), 0);
  ck_assert_int_eq(tide_loop_run(h, TIDE_RUN_NOWAIT), 0);
  ck_assert_uint_eq(h->iterations, it);

  /* a referenced timer keeps it alive until it fired */
  lua_log_reset(h);
  lua_ok(h, "tide.after(0.005, function() rec('t') end)");
  ck_assert_int_eq(tide_loop_run(h, TIDE_RUN_DEFAULT), 0);
  ck_assert_str_eq(lua_names(h), "t");
  ck_assert_int_eq(h->refs, 0);
  tide_host_free(h);
}
END_TEST

START_TEST(test_unref_timer_does_not_keep_alive) {
  tide_host *h = new_host();
  double t0, dt;
  lua_log_reset(h);
  lua_ok(h, "tide.after(10, function() rec('unref') end):unref()");
  t0 = seconds();
  ck_assert_int_eq(tide_loop_run(h, TIDE_RUN_DEFAULT), 0);
  dt = seconds() - t0;
  ck_assert_msg(dt < 1.0, "loop ran %.3f s for an unref'd timer", dt);
  ck_assert_str_eq(lua_log(h), "");
  ck_assert_uint_eq(h->timers.count, 1); /* still armed, just not counted */

  /* with a referenced short timer beside it, the loop runs until the short
   * one fired, then ends without waiting for the long one */
  lua_ok(h, "tide.after(0.01, function() rec('ref') end)");
  t0 = seconds();
  ck_assert_int_eq(tide_loop_run(h, TIDE_RUN_DEFAULT), 0);
  dt = seconds() - t0;
  ck_assert_msg(dt >= 0.009 && dt < 1.0, "loop ran %.3f s", dt);
  ck_assert_str_eq(lua_names(h), "ref");

  /* ref() again: it keeps the loop alive once more */
  lua_ok(h, "local t = tide.after(10, function() end)\n"
            "t:unref(); t:unref(); t:ref(); t:ref(); t:unref(); t:ref()");
  ck_assert_int_eq(h->refs, 1);
  ck_assert_int_eq(tide_loop_run(h, TIDE_RUN_NOWAIT), 1);
  tide_host_free(h);
}
END_TEST

/* An unref'd every() whose callback runs while a referenced timer keeps the
 * loop alive does not extend the loop's life. */
START_TEST(test_unref_every_fires_while_alive) {
  tide_host *h = new_host();
  char buf[64];
  lua_ok(h, "n = 0\n"
            "tide.every(0.002, function() n = n + 1 end):unref()\n"
            "tide.after(0.03, function() done = true end)");
  ck_assert_int_eq(tide_loop_run(h, TIDE_RUN_DEFAULT), 0);
  ck_assert_str_eq(lua_str(h, "return tostring(done)", buf, sizeof buf),
                   "true");
  lua_str(h, "return tostring(n >= 3)", buf, sizeof buf);
  ck_assert_str_eq(buf, "true");
  tide_host_free(h);
}
END_TEST

/* ---- run modes ------------------------------------------------------------ */

START_TEST(test_nowait_does_not_block) {
  tide_host *h = new_host();
  io x;
  double t0, dt;
  int i;
  lua_log_reset(h);
  lua_ok(h, "tide.after(5, function() rec('late') end)");
  t0 = seconds();
  for (i = 0; i < 3; i++) ck_assert_int_eq(tide_loop_run(h, TIDE_RUN_NOWAIT), 1);
  dt = seconds() - t0;
  ck_assert_msg(dt < 0.5, "3 x NOWAIT took %.3f s", dt);
  ck_assert_uint_eq(h->iterations - iter0, 3);
  ck_assert_str_eq(lua_log(h), "");

  /* with an event registered in libevent (so that the poll phase enters
   * event_base_loop) that is not ready */
  log_reset(h);
  io_open(&x, h, "io", 0);
  t0 = seconds();
  ck_assert_int_eq(tide_loop_run(h, TIDE_RUN_NOWAIT), 1);
  dt = seconds() - t0;
  ck_assert_msg(dt < 0.5, "NOWAIT with an idle event took %.3f s", dt);
  ck_assert_str_eq(logbuf, "");
  /* once it is readable, NOWAIT runs it */
  ck_assert_int_eq(write(x.fd[1], "x", 1), 1);
  ck_assert_int_eq(tide_loop_run(h, TIDE_RUN_NOWAIT), 1); /* timer left */
  ck_assert_str_eq(logbuf, "io/poll@2");
  io_close(&x);
  tide_host_free(h);
}
END_TEST

/* TIDE_RUN_ONCE waits in poll for the nearest timer, but runs it only in the
 * next iteration's timers phase; it returns 0 once nothing remains. */
START_TEST(test_once_steps) {
  tide_host *h = new_host();
  int rc, n = 0;
  lua_log_reset(h);
  lua_ok(h, "local k = 0\n"
            "local function step() k = k + 1; rec('imm' .. k)\n"
            "  if k < 3 then tide.immediate(step) end end\n"
            "tide.immediate(step)");
  do {
    rc = tide_loop_run(h, TIDE_RUN_ONCE);
    n++;
  } while (rc == 1 && n < 10);
  ck_assert_int_eq(rc, 0);
  ck_assert_int_eq(n, 3);
  ck_assert_str_eq(lua_log(h), "imm1/check@1 imm2/check@2 imm3/check@3");
  tide_host_free(h);
}
END_TEST

/* The poll phase sleeps until the nearest timer instead of spinning. */
START_TEST(test_poll_waits_for_timer) {
  tide_host *h = new_host();
  double t0, dt;
  uint64_t it = h->iterations;
  t0 = seconds(); /* before the timer starts: it waits 50 ms from then on */
  lua_ok(h, "tide.after(0.05, function() fired = tide.now() end)");
  ck_assert_int_eq(tide_loop_run(h, TIDE_RUN_DEFAULT), 0);
  dt = seconds() - t0;
  ck_assert_msg(dt >= 0.049 && dt < 1.0, "50 ms timer after %.3f s", dt);
  /* a spinning loop would count thousands; allow early wake-ups of a
   * coarse clock */
  ck_assert_msg(h->iterations - it <= 5, "%llu iterations for one timer",
                (unsigned long long)(h->iterations - it));
  tide_host_free(h);
}
END_TEST

/* ---- tide_stop -------------------------------------------------------------- */

static int l_stop(lua_State *L) {
  tide_stop(tide_from_lua(L));
  return 0;
}

START_TEST(test_stop_from_lua_callback) {
  tide_host *h = new_host();
  char buf[256];
  tide_register(h, "stop", l_stop);
  lua_ok(h, "n = 0\n"
            "tk = tide.every(0.001, function()\n"
            "  n = n + 1\n"
            "  if n == 3 or n == 5 then stop() end\n"
            "  if n == 6 then tk:close() end\n"
            "end)");
  ck_assert_int_eq(tide_loop_run(h, TIDE_RUN_DEFAULT), 1);
  ck_assert_str_eq(lua_str(h, "return tostring(n)", buf, sizeof buf), "3");
  /* the next run goes on where the last one stopped */
  ck_assert_int_eq(tide_loop_run(h, TIDE_RUN_DEFAULT), 1);
  ck_assert_str_eq(lua_str(h, "return tostring(n)", buf, sizeof buf), "5");
  ck_assert_int_eq(tide_loop_run(h, TIDE_RUN_DEFAULT), 0);
  ck_assert_str_eq(lua_str(h, "return tostring(n)", buf, sizeof buf), "6");
  tide_host_free(h);
}
END_TEST

/* "Makes tide_loop_run return after the callback that is running": once a
 * timer callback called tide_stop, no other callback of any phase runs
 * before tide_loop_run returns; the next run runs them in phase order. */
static void timer_stops(tide_host *h, ctim *t) {
  (void)t;
  tide_stop(h);
}

START_TEST(test_stop_runs_nothing_more) {
  tide_host *h = new_host();
  ctim t1, t2;
  cdef pend, clo;
  cimm m;
  io x;
  log_reset(h);
  ctim_start(h, &t1, "t1", 0, 1);
  t1.then = timer_stops;
  ctim_start(h, &t2, "t2", 0, 1);
  memset(&pend, 0, sizeof pend);
  pend.name = "pending";
  tide__defer(h, &pend.d, cdef_cb);
  io_open(&x, h, "io", 1);
  cimm_push(h, &m, "imm", 1);
  memset(&clo, 0, sizeof clo);
  clo.name = "close";
  tide__close_later(h, &clo.d, cdef_cb);

  ck_assert_int_eq(tide_loop_run(h, TIDE_RUN_DEFAULT), 1);
  ck_assert_str_eq(logbuf, "t1/timers@1");
  ck_assert_int_eq(tide_loop_run(h, TIDE_RUN_DEFAULT), 0);
  ck_assert_str_eq(logbuf, "t1/timers@1 t2/timers@2 pending/pending@2 "
                           "io/poll@2 imm/check@2 close/close@2");
  io_close(&x);
  tide_host_free(h);
}
END_TEST

/* The same from a pending callback: the rest of the pending queue, and the
 * other phases, wait for the next run. */
static void pend_stops(tide_host *h, cdef *c) {
  (void)c;
  tide_stop(h);
}

START_TEST(test_stop_in_pending_keeps_rest) {
  tide_host *h = new_host();
  cdef a, b, clo;
  cimm m;
  log_reset(h);
  memset(&a, 0, sizeof a);
  a.name = "A";
  a.then = pend_stops;
  tide__defer(h, &a.d, cdef_cb);
  memset(&b, 0, sizeof b);
  b.name = "B";
  tide__defer(h, &b.d, cdef_cb);
  cimm_push(h, &m, "imm", 1);
  memset(&clo, 0, sizeof clo);
  clo.name = "close";
  tide__close_later(h, &clo.d, cdef_cb);
  ck_assert_int_eq(tide_loop_run(h, TIDE_RUN_DEFAULT), 1);
  ck_assert_str_eq(logbuf, "A/pending@1");
  ck_assert_int_eq(tide_loop_run(h, TIDE_RUN_DEFAULT), 0);
  ck_assert_str_eq(logbuf, "A/pending@1 B/pending@2 imm/check@2 "
                           "close/close@2");
  tide_host_free(h);
}
END_TEST

/* ---- timers -------------------------------------------------------------- */

START_TEST(test_equal_deadlines_start_order) {
  tide_host *h = new_host();
  static const char *names[] = {"a", "b", "c", "d", "e", "f"};
  ctim t[6];
  int i;
  log_reset(h);
  /* same duration */
  for (i = 0; i < 3; i++) ctim_start(h, &t[i], names[i], 2000000, 1);
  /* equal deadline, other durations: now+2ms from different starts */
  ctim_start(h, &t[3], "d", 0, 1);
  ck_assert_int_eq(tide__timer_start(&h->timers, &t[3].ct.t, h->now + 1000000,
                                     1000000), 0);
  ctim_start(h, &t[4], "e", 0, 1);
  ck_assert_int_eq(
      tide__timer_start_at(&h->timers, &t[4].ct.t, h->now + 2000000, 5), 0);
  /* an earlier deadline started last fires first */
  ctim_start(h, &t[5], "f", 1000000, 1);
  ck_assert_int_eq(tide_loop_run(h, TIDE_RUN_DEFAULT), 0);
  /* all due in one timers phase or the 1 ms one first: compare names only */
  {
    char names_only[256] = "", *p = logbuf, *q;
    while (*p) {
      q = strchr(p, '/');
      strncat(names_only, p, (size_t)(q - p));
      p = strchr(q, ' ');
      if (!p) break;
      p++;
    }
    ck_assert_str_eq(names_only, "fabcde");
  }
  tide_host_free(h);
}
END_TEST

START_TEST(test_equal_deadlines_start_order_lua) {
  tide_host *h = new_host();
  char buf[256];
  /* outside the loop the cached clock does not move, so these share a
   * deadline; the 0.001 ones are earlier and fire first */
  lua_ok(h, "s = {}\n"
            "for i = 1, 8 do tide.after(0.003, function() s[#s + 1] = i end)\n"
            "  if i % 3 == 0 then\n"
            "    tide.after(0.001, function() s[#s + 1] = -i end) end end");
  ck_assert_int_eq(tide_loop_run(h, TIDE_RUN_DEFAULT), 0);
  ck_assert_str_eq(lua_str(h, "return table.concat(s, ' ')", buf, sizeof buf),
                   "-3 -6 1 2 3 4 5 6 7 8");
  tide_host_free(h);
}
END_TEST

/* A timer started in the timers phase with delay 0 fires in the next
 * iteration, even though its deadline (the cached clock) has passed. */
static ctim zt_b, zt_c;

static void timer_starts_zero(tide_host *h, ctim *t) {
  (void)t;
  ctim_start(h, &zt_b, "B", 0, 1);
}

START_TEST(test_zero_timer_from_timers_phase_next_iteration) {
  tide_host *h = new_host();
  ctim a;
  log_reset(h);
  ctim_start(h, &a, "A", 0, 1);
  a.then = timer_starts_zero;
  ctim_start(h, &zt_c, "C", 0, 1); /* due with A: same pass */
  ck_assert_int_eq(tide_loop_run(h, TIDE_RUN_DEFAULT), 0);
  ck_assert_str_eq(logbuf, "A/timers@1 C/timers@1 B/timers@2");
  tide_host_free(h);
}
END_TEST

START_TEST(test_zero_timer_from_timers_phase_next_iteration_lua) {
  tide_host *h = new_host();
  lua_log_reset(h);
  /* a timer that restarts itself with 0 cannot starve the loop: the
   * immediate queued meanwhile gets its turn after the first pass */
  lua_ok(h, "local n = 0\n"
            "local function again() n = n + 1; rec('t' .. n)\n"
            "  if n < 3 then tide.after(0, again) end end\n"
            "tide.after(0, again)\n"
            "tide.after(0, function() rec('u')\n"
            "  tide.immediate(function() rec('imm') end) end)");
  ck_assert_int_eq(tide_loop_run(h, TIDE_RUN_DEFAULT), 0);
  ck_assert_str_eq(lua_log(h), "t1/timers@1 u/timers@1 imm/check@1 "
                               "t2/timers@2 t3/timers@3");
  tide_host_free(h);
}
END_TEST

/* tide.next callbacks and spawned tasks run before the next timer. */
START_TEST(test_ready_queue_drained_between_callbacks) {
  tide_host *h = new_host();
  lua_log_reset(h);
  lua_ok(h, "tide.after(0, function() rec('t1')\n"
            "  tide.next(function() rec('next') end)\n"
            "  tide.spawn(function() rec('spawned') end)\n"
            "  tide.immediate(function() rec('imm') end) end)\n"
            "tide.after(0, function() rec('t2') end)");
  ck_assert_int_eq(tide_loop_run(h, TIDE_RUN_DEFAULT), 0);
  ck_assert_str_eq(lua_log(h), "t1/timers@1 next/timers@1 spawned/timers@1 "
                               "t2/timers@1 imm/check@1");
  tide_host_free(h);
}
END_TEST

static Suite *loop_suite(void) {
  Suite *s = suite_create("loop");
  TCase *ph = tcase_create("phases"), *life = tcase_create("lifetime"),
        *tm = tcase_create("timers");
  tcase_add_test(ph, test_phase_order);
  tcase_add_test(ph, test_phase_names_lua);
  tcase_add_test(ph, test_io_immediate_before_zero_timer);
  tcase_add_test(ph, test_io_immediate_before_zero_timer_any_order);
  tcase_add_test(ph, test_io_immediate_before_zero_timer_lua);
  tcase_add_test(ph, test_pending_queued_in_pending_waits);
  tcase_add_test(ph, test_defer_twice_runs_once);
  tcase_add_test(ph, test_close_after_check);
  tcase_add_test(ph, test_check_queued_in_check_waits);
  tcase_add_test(ph, test_close_after_check_lua);
  tcase_add_test(ph, test_ready_queue_drained_between_callbacks);
  tcase_add_test(life, test_loop_ends_when_nothing_referenced);
  tcase_add_test(life, test_unref_timer_does_not_keep_alive);
  tcase_add_test(life, test_unref_every_fires_while_alive);
  tcase_add_test(life, test_nowait_does_not_block);
  tcase_add_test(life, test_once_steps);
  tcase_add_test(life, test_poll_waits_for_timer);
  tcase_add_test(life, test_stop_from_lua_callback);
  tcase_add_test(life, test_stop_runs_nothing_more);
  tcase_add_test(life, test_stop_in_pending_keeps_rest);
  tcase_add_test(tm, test_equal_deadlines_start_order);
  tcase_add_test(tm, test_equal_deadlines_start_order_lua);
  tcase_add_test(tm, test_zero_timer_from_timers_phase_next_iteration);
  tcase_add_test(tm, test_zero_timer_from_timers_phase_next_iteration_lua);
  suite_add_tcase(s, ph);
  suite_add_tcase(s, life);
  suite_add_tcase(s, tm);
  return s;
}

int main(void) {
  SRunner *sr = srunner_create(loop_suite());
  int failed;
  srunner_run_all(sr, CK_NORMAL);
  failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
