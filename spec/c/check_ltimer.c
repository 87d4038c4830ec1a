/*
 * spec/c/check_ltimer.c - the C side of Lua's timers, immediates and close
 * callbacks (host/ltimer.c), tested with libcheck.
 *
 * Each test creates a real host (tide_host_new), so h->start, h->now,
 * h->timers and h->refs are the loop's own, and calls the functions that
 * lua/tide/core.lua reaches through the FFI directly, as Lua would (Lua
 * itself starts no timer, so it never learns of these slots; one test at
 * the end runs Lua's own timers). The layout of a slot is private to
 * ltimer.c, so what a slot holds is checked through the public calls: the
 * ids start_at returns, the order and the deadlines lt_pop and lt_next
 * report, h->refs and h->timers.count.
 *
 * Times are nanoseconds since the host started, as they cross the FFI;
 * tests move the cached clock by setting h->now = h->start + t.
 */
#define _GNU_SOURCE
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "internal.h"

#define CHUNK 1024 /* slots per chunk in ltimer.c */

/* ---- helpers ------------------------------------------------------------ */

static tide_host *new_host(void) {
  char err[256] = "";
  tide_host *h = tide_host_new(NULL, err, sizeof err);
  ck_assert_msg(h != NULL, "tide_host_new: %s", err);
  /* a fresh host holds no slot and no timer */
  ck_assert_int_eq(h->refs, 0);
  ck_assert_int_eq(h->lt_nchunks, 0);
  ck_assert_int_eq(h->lt_free, 0);
  ck_assert_uint_eq(h->timers.count, 0);
  ck_assert_int_eq(h->lua_imm.queued, 0);
  ck_assert_int_eq(h->lua_close.queued, 0);
  return h;
}

/* start_at that must succeed; returns the slot. */
static int32_t start(tide_host *h, int32_t id, int64_t deadline, int ref) {
  int32_t r = tide__lt_start_at(h, id, (double)deadline, ref);
  ck_assert_msg(r > 0, "tide__lt_start_at(%d, %lld, %d) = %d", id,
                (long long)deadline, ref, r);
  return r;
}

/* Enters a timers phase with the cached clock at `now` (ns since start). */
static void timers_phase(tide_host *h, int64_t now) {
  h->phase = TIDE_PHASE_TIMERS;
  h->now = h->start + now;
  h->timer_fired = 0;
}

/* lt_next as an integer, for exact comparisons (deadlines here are well
 * below 2^53). */
static int64_t next_of(tide_host *h) { return (int64_t)tide__lt_next(h); }

/* A C timer of the host (cb != NULL), armed at an explicit deadline. */
static void c_cb(tide_host *h, tide__ctimer *ct) { (void)h, (void)ct; }

static void c_start(tide_host *h, tide__ctimer *ct, int64_t deadline) {
  tide__timer_init(&ct->t);
  ct->cb = c_cb;
  ck_assert_int_eq(
      tide__timer_start_at(&h->timers, &ct->t, h->start + deadline, 0), 0);
}

/* A C immediate and a C close callback that only count their calls. */
static int c_imm_runs, c_def_runs;
static void c_imm_cb(tide_host *h, tide__imm *im) {
  (void)h, (void)im;
  c_imm_runs++;
}
static void c_def_cb(tide_host *h, tide__deferred *d) {
  (void)h, (void)d;
  c_def_runs++;
}

/* ---- slot ids ------------------------------------------------------------ */

START_TEST(test_ids_start_at_1_lifo) {
  tide_host *h = new_host();
  int32_t a = start(h, 0, 1000, 1), b = start(h, 0, 2000, 1),
          c = start(h, 0, 3000, 1);
  ck_assert_int_eq(a, 1);
  ck_assert_int_eq(b, 2);
  ck_assert_int_eq(c, 3);
  ck_assert_int_eq(h->lt_nchunks, 1);
  ck_assert_uint_eq(h->timers.count, 3);

  tide__lt_stop(h, b);
  ck_assert_uint_eq(h->timers.count, 2);
  ck_assert_int_eq(start(h, 0, 4000, 1), 2); /* the freed slot comes back */

  /* freed 1 then 3: 3 comes out first, then 1, then a new one */
  tide__lt_stop(h, 1);
  tide__lt_stop(h, 3);
  ck_assert_int_eq(start(h, 0, 5000, 0), 3);
  ck_assert_int_eq(start(h, 0, 6000, 0), 1);
  ck_assert_int_eq(start(h, 0, 7000, 0), 4);
  ck_assert_uint_eq(h->timers.count, 4);
  ck_assert_int_eq(h->lt_nchunks, 1);
  tide_host_free(h);
}
END_TEST

/* More than one chunk: ids are dense across chunks, a chunk is added only
 * when every slot is in use, freed slots (also at chunk edges) come back
 * last freed first, and the armed slots of the others keep their
 * deadlines: everything pops at the end in deadline order. */
#define MANY 3000

START_TEST(test_many_slots_across_chunks) {
  tide_host *h = new_host();
  static int64_t dl[4 * CHUNK + 1]; /* expected deadline per id; 0 = free */
  static const int32_t freed[] = {5, 1024, 1025, 2048, 2049, 2999, 3000};
  const int nfreed = (int)(sizeof freed / sizeof freed[0]);
  int32_t i, id, armed = 0, refd = 0;
  int64_t last;

  memset(dl, 0, sizeof dl);
  for (i = 1; i <= MANY; i++) {
    id = start(h, 0, 10 * (int64_t)i, i % 2);
    ck_assert_int_eq(id, i);
    dl[id] = 10 * (int64_t)i;
    armed++;
    refd += i % 2;
  }
  ck_assert_int_eq(h->lt_nchunks, 3);
  ck_assert_uint_eq(h->timers.count, (size_t)armed);
  ck_assert_int_eq(h->refs, refd);
  ck_assert_int_eq(next_of(h), 10);

  for (i = 0; i < nfreed; i++) {
    tide__lt_stop(h, freed[i]);
    refd -= freed[i] % 2;
    dl[freed[i]] = 0;
    armed--;
  }
  ck_assert_uint_eq(h->timers.count, (size_t)armed);
  ck_assert_int_eq(h->refs, refd);

  /* back in reverse order of freeing, with new deadlines after all others */
  for (i = nfreed - 1; i >= 0; i--) {
    int64_t d = 100000 + 10 * (int64_t)i;
    id = start(h, 0, d, 1);
    ck_assert_int_eq(id, freed[i]);
    dl[id] = d;
    armed++;
    refd++;
  }
  ck_assert_int_eq(h->lt_nchunks, 3);

  /* the rest of the third chunk, then the first slot of a fourth */
  for (i = MANY + 1; i <= 3 * CHUNK + 1; i++) {
    id = start(h, 0, 50000 + (int64_t)i, 0);
    ck_assert_int_eq(id, i);
    dl[id] = 50000 + (int64_t)i;
    armed++;
    if (i == 3 * CHUNK) {
      /* the last slot of the last chunk is a valid id: restarting it keeps
       * it, and allocates nothing */
      ck_assert_int_eq(h->lt_nchunks, 3);
      ck_assert_int_eq(start(h, id, 60000, 0), id);
      dl[id] = 60000;
      ck_assert_int_eq(h->lt_nchunks, 3);
    }
  }
  ck_assert_int_eq(h->lt_nchunks, 4);
  ck_assert_uint_eq(h->timers.count, (size_t)armed);
  ck_assert_int_eq(h->refs, refd);

  /* so are the last slot of a full chunk and the first of the next */
  ck_assert_int_eq(start(h, 3 * CHUNK, 60001, 0), 3 * CHUNK);
  dl[3 * CHUNK] = 60001;
  ck_assert_int_eq(start(h, CHUNK, 100000 + 10 * 1, 1), CHUNK);
  ck_assert_int_eq(start(h, CHUNK + 1, 100000 + 10 * 2, 1), CHUNK + 1);
  ck_assert_uint_eq(h->timers.count, (size_t)armed);
  ck_assert_int_eq(h->refs, refd);

  /* pop everything: every id once, at its own deadline, in order */
  timers_phase(h, 1000000);
  last = -1;
  for (i = 0; i < armed; i++) {
    int64_t d = next_of(h);
    id = tide__lt_pop(h);
    ck_assert_int_gt(id, 0);
    ck_assert_int_le(id, 3 * CHUNK + 1);
    ck_assert_msg(dl[id] == d, "slot %d popped at %lld, armed at %lld", id,
                  (long long)d, (long long)dl[id]);
    ck_assert_int_gt(d, last);
    last = d;
    dl[id] = 0;
  }
  ck_assert_int_eq(tide__lt_pop(h), 0);
  ck_assert_uint_eq(h->timers.count, 0);
  ck_assert_int_eq(h->refs, 0);
  ck_assert_uint_eq(h->timer_fired, (uint64_t)armed);
  ck_assert_int_eq(next_of(h), -1);
  tide_host_free(h);
}
END_TEST

/* The table of chunk pointers grows past its first size (16 chunks), and
 * the chunks already there stay where they are. */
START_TEST(test_chunk_table_grows) {
  tide_host *h = new_host();
  const int32_t n = 20 * CHUNK + 1;
  int32_t i;
  void *first;
  for (i = 1; i <= n; i++) ck_assert_int_eq(start(h, 0, 2 * (int64_t)i, 1), i);
  first = h->lt_chunks[0];
  ck_assert_int_eq(h->lt_nchunks, 21);
  ck_assert_int_ge(h->lt_capchunks, 21);
  ck_assert_int_eq(h->refs, n);
  ck_assert_uint_eq(h->timers.count, (size_t)n);
  /* restart some slots in the old and new chunks, out of order */
  ck_assert_int_eq(start(h, 1, 2 * (int64_t)n + 1, 1), 1);
  ck_assert_int_eq(start(h, n, 1, 1), n);
  ck_assert_int_eq(start(h, 16 * CHUNK + 1, 2 * (int64_t)n + 3, 1),
                   16 * CHUNK + 1);
  ck_assert_ptr_eq(h->lt_chunks[0], first);
  timers_phase(h, 4 * (int64_t)n);
  ck_assert_int_eq(tide__lt_pop(h), n);
  for (i = 2; i < n; i++) {
    if (i == 16 * CHUNK + 1) continue;
    ck_assert_int_eq(next_of(h), 2 * (int64_t)i);
    ck_assert_int_eq(tide__lt_pop(h), i);
  }
  ck_assert_int_eq(tide__lt_pop(h), 1);
  ck_assert_int_eq(tide__lt_pop(h), 16 * CHUNK + 1);
  ck_assert_int_eq(tide__lt_pop(h), 0);
  ck_assert_int_eq(h->refs, 0);
  tide_host_free(h);
}
END_TEST

/* ---- restart and references ---------------------------------------------- */

START_TEST(test_restart_moves_keeps_one_ref) {
  tide_host *h = new_host();
  int32_t a = start(h, 0, 1000, 1), b = start(h, 0, 2000, 1);
  ck_assert_int_eq(h->refs, 2);
  ck_assert_int_eq(next_of(h), 1000);

  ck_assert_int_eq(start(h, a, 3000, 1), a); /* later: b comes first */
  ck_assert_uint_eq(h->timers.count, 2);
  ck_assert_int_eq(h->refs, 2);
  ck_assert_int_eq(next_of(h), 2000);

  ck_assert_int_eq(start(h, a, 500, 1), a); /* earlier again */
  ck_assert_int_eq(next_of(h), 500);
  ck_assert_int_eq(h->refs, 2);
  ck_assert_uint_eq(h->timers.count, 2);

  /* restarting did not allocate: the next slot is 3 */
  ck_assert_int_eq(start(h, 0, 9000, 0), 3);

  timers_phase(h, 10000);
  ck_assert_int_eq(tide__lt_pop(h), a);
  ck_assert_int_eq(tide__lt_pop(h), b);
  ck_assert_int_eq(tide__lt_pop(h), 3);
  ck_assert_int_eq(tide__lt_pop(h), 0);
  ck_assert_int_eq(h->refs, 0);
  tide_host_free(h);
}
END_TEST

START_TEST(test_ref_accounting) {
  tide_host *h = new_host();
  int32_t u, r, id;

  u = start(h, 0, 1000, 0);
  ck_assert_int_eq(h->refs, 0);
  r = start(h, 0, 2000, 1);
  ck_assert_int_eq(h->refs, 1);
  ck_assert_int_eq(start(h, 0, 2500, 7), 3); /* any nonzero counts once */
  ck_assert_int_eq(h->refs, 2);
  tide__lt_stop(h, 3);
  ck_assert_int_eq(h->refs, 1);

  /* restart with each change of ref */
  ck_assert_int_eq(start(h, r, 2100, 1), r); /* 1 -> 1 */
  ck_assert_int_eq(h->refs, 1);
  ck_assert_int_eq(start(h, r, 2200, 0), r); /* 1 -> 0 */
  ck_assert_int_eq(h->refs, 0);
  ck_assert_int_eq(start(h, r, 2300, 0), r); /* 0 -> 0 */
  ck_assert_int_eq(h->refs, 0);
  ck_assert_int_eq(start(h, u, 1100, 1), u); /* 0 -> 1 */
  ck_assert_int_eq(h->refs, 1);
  ck_assert_int_eq(start(h, r, 2400, 1), r); /* 0 -> 1 */
  ck_assert_int_eq(h->refs, 2);
  ck_assert_int_eq(tide__loop_alive(h), 1);

  /* stop releases the ref it holds, once */
  tide__lt_stop(h, u);
  ck_assert_int_eq(h->refs, 1);
  tide__lt_stop(h, u);
  ck_assert_int_eq(h->refs, 1);

  /* an unreferenced slot does not keep the loop alive */
  ck_assert_int_eq(start(h, r, 2400, 0), r);
  ck_assert_int_eq(h->refs, 0);
  ck_assert_int_eq(tide__loop_alive(h), 0);
  ck_assert_int_eq(start(h, r, 2400, 1), r);

  /* pop releases the ref of the popped slot and frees it */
  u = start(h, 0, 1000, 0); /* slot 1 again (u was freed) */
  ck_assert_int_eq(u, 1);
  timers_phase(h, 5000);
  ck_assert_int_eq(tide__lt_pop(h), u); /* unreferenced: refs unchanged */
  ck_assert_int_eq(h->refs, 1);
  ck_assert_int_eq(tide__lt_pop(h), r);
  ck_assert_int_eq(h->refs, 0);
  ck_assert_int_eq(tide__lt_pop(h), 0);
  h->phase = TIDE_PHASE_MAIN;

  /* popped slots are free: stopping them changes nothing, they come back
   * last popped first, and once each */
  tide__lt_stop(h, r);
  tide__lt_stop(h, u);
  ck_assert_int_eq(h->refs, 0);
  ck_assert_uint_eq(h->timers.count, 0);
  id = start(h, 0, 100, 1);
  ck_assert_int_eq(id, r);
  id = start(h, 0, 100, 1);
  ck_assert_int_eq(id, u);
  ck_assert_int_eq(start(h, 0, 100, 1), 3);
  ck_assert_int_eq(start(h, 0, 100, 1), 4);
  ck_assert_int_eq(h->refs, 4);
  tide_host_free(h);
}
END_TEST

/* ---- lt_pop ------------------------------------------------------------- */

START_TEST(test_pop_deadline_order) {
  tide_host *h = new_host();
  /* deadlines out of start order; ties pop in start order */
  static const int64_t d[] = {5000, 1000, 3000, 1000, 4000, 2000, 3000, 0};
  static const int32_t want[] = {8, 2, 4, 6, 3, 7, 5, 1};
  int i, n = (int)(sizeof d / sizeof d[0]);
  for (i = 0; i < n; i++) ck_assert_int_eq(start(h, 0, d[i], 1), i + 1);
  ck_assert_int_eq(h->refs, n);
  ck_assert_int_eq(next_of(h), 0);

  timers_phase(h, 5000); /* deadline == now is due */
  for (i = 0; i < n; i++) {
    ck_assert_int_eq(tide__lt_pop(h), want[i]);
    ck_assert_int_eq(h->refs, n - i - 1);
    ck_assert_uint_eq(h->timers.count, (size_t)(n - i - 1));
  }
  ck_assert_int_eq(tide__lt_pop(h), 0);
  ck_assert_int_eq(tide__lt_pop(h), 0);
  ck_assert_uint_eq(h->timer_fired, (uint64_t)n);
  tide_host_free(h);
}
END_TEST

START_TEST(test_pop_not_due) {
  tide_host *h = new_host();
  int32_t a = start(h, 0, 1000, 1), b = start(h, 0, 2000, 1);

  timers_phase(h, 999);
  ck_assert_int_eq(tide__lt_pop(h), 0);
  ck_assert_uint_eq(h->timers.count, 2);
  ck_assert_uint_eq(h->timer_fired, 0);

  timers_phase(h, 1999);
  ck_assert_int_eq(tide__lt_pop(h), a);
  ck_assert_int_eq(tide__lt_pop(h), 0); /* b is 1 ns away */
  ck_assert_uint_eq(h->timers.count, 1);
  ck_assert_int_eq(h->refs, 1);
  ck_assert_int_eq(next_of(h), 2000);

  h->now = h->start + 2000;
  ck_assert_int_eq(tide__lt_pop(h), b);
  ck_assert_int_eq(tide__lt_pop(h), 0);
  ck_assert_int_eq(h->refs, 0);
  tide_host_free(h);
}
END_TEST

START_TEST(test_pop_stops_at_c_timer) {
  tide_host *h = new_host();
  tide__ctimer c1, c2;
  int32_t a, b;

  /* a C timer first: nothing for Lua, and the C timer stays armed */
  c_start(h, &c1, 500);
  a = start(h, 0, 1000, 1);
  timers_phase(h, 5000);
  ck_assert_int_eq(tide__lt_pop(h), 0);
  ck_assert_int_eq(tide__timer_active(&c1.t), 1);
  ck_assert_uint_eq(h->timers.count, 2);
  ck_assert_uint_eq(h->timer_fired, 0);

  /* Lua, C, Lua: the run of Lua's timers ends at the C one */
  tide__timer_stop(&h->timers, &c1.t);
  c_start(h, &c2, 1500);
  b = start(h, 0, 2000, 1);
  ck_assert_int_eq(tide__lt_pop(h), a);
  ck_assert_int_eq(tide__lt_pop(h), 0);
  ck_assert_int_eq(tide__timer_active(&c2.t), 1);
  ck_assert_int_eq(h->refs, 1);
  ck_assert_int_eq(next_of(h), 1500);

  /* the loop fires the C timer; then Lua's next list is due */
  tide__timer_stop(&h->timers, &c2.t);
  ck_assert_int_eq(tide__lt_pop(h), b);
  ck_assert_int_eq(tide__lt_pop(h), 0);
  ck_assert_uint_eq(h->timers.count, 0);
  ck_assert_int_eq(h->refs, 0);
  tide_host_free(h);
}
END_TEST

/* Nothing pops while the loop stops or exits, or outside the timers
 * phase; nothing is taken or counted either. */
START_TEST(test_pop_only_in_timers_phase_running) {
  tide_host *h = new_host();
  int32_t a = start(h, 0, 1000, 1);
  int p;

  timers_phase(h, 5000);
  h->stop = 1;
  ck_assert_int_eq(tide__lt_pop(h), 0);
  h->stop = 0;
  h->exiting = 1;
  ck_assert_int_eq(tide__lt_pop(h), 0);
  h->exiting = 0;
  for (p = 0; p <= TIDE_PHASE_MAIN; p++) {
    if (p == TIDE_PHASE_TIMERS) continue;
    h->phase = p;
    ck_assert_msg(tide__lt_pop(h) == 0, "popped in phase %s",
                  tide__phase_names[p]);
  }
  ck_assert_uint_eq(h->timers.count, 1);
  ck_assert_int_eq(h->refs, 1);
  ck_assert_uint_eq(h->timer_fired, 0);
  ck_assert_int_eq(next_of(h), 1000);

  h->phase = TIDE_PHASE_TIMERS;
  ck_assert_int_eq(tide__lt_pop(h), a);
  tide_host_free(h);
}
END_TEST

START_TEST(test_pop_lag_stats) {
  tide_host *h = new_host();
  h->lag_ns = h->lag_max_ns = 0;
  start(h, 0, 1000, 0);
  start(h, 0, 2000, 0);
  start(h, 0, 2500, 0);

  timers_phase(h, 5000);
  ck_assert_int_eq(tide__lt_pop(h), 1);
  ck_assert_int_eq(h->lag_ns, 4000);
  ck_assert_int_eq(h->lag_max_ns, 4000);
  ck_assert_uint_eq(h->timer_fired, 1);
  ck_assert_int_eq(tide__lt_pop(h), 2); /* only the first one sets lag */
  ck_assert_int_eq(h->lag_ns, 4000);
  ck_assert_uint_eq(h->timer_fired, 2);
  h->phase = TIDE_PHASE_MAIN;

  /* next phase: a smaller lag, the maximum stays */
  timers_phase(h, 2600);
  ck_assert_int_eq(tide__lt_pop(h), 3);
  ck_assert_int_eq(h->lag_ns, 100);
  ck_assert_int_eq(h->lag_max_ns, 4000);
  ck_assert_uint_eq(h->timer_fired, 1);

  /* a larger one raises it */
  start(h, 0, 3000, 0);
  timers_phase(h, 10000);
  ck_assert_int_eq(tide__lt_pop(h), 3);
  ck_assert_int_eq(h->lag_ns, 7000);
  ck_assert_int_eq(h->lag_max_ns, 7000);

  /* a C timer fired first in this phase (timer_fired > 0): the Lua timer
   * does not overwrite its lag */
  start(h, 0, 9000, 0);
  timers_phase(h, 10000);
  h->timer_fired = 1;
  h->lag_ns = 42;
  ck_assert_int_eq(tide__lt_pop(h), 3);
  ck_assert_int_eq(h->lag_ns, 42);
  ck_assert_uint_eq(h->timer_fired, 2);
  tide_host_free(h);
}
END_TEST

/* ---- lt_next, clocks ----------------------------------------------------- */

START_TEST(test_next_any_timer) {
  tide_host *h = new_host();
  tide__ctimer c;
  int32_t a, b;

  ck_assert(tide__lt_next(h) == -1.0);
  c_start(h, &c, 7000);
  ck_assert(tide__lt_next(h) == 7000.0); /* a C timer counts */
  a = start(h, 0, 9000, 0);
  ck_assert(tide__lt_next(h) == 7000.0);
  b = start(h, 0, 3000, 1);
  ck_assert(tide__lt_next(h) == 3000.0);
  tide__lt_stop(h, b);
  ck_assert(tide__lt_next(h) == 7000.0);
  tide__timer_stop(&h->timers, &c.t);
  ck_assert(tide__lt_next(h) == 9000.0);
  ck_assert_int_eq(start(h, a, 0, 0), a);
  ck_assert(tide__lt_next(h) == 0.0); /* due at the start: 0, not -1 */
  tide__lt_stop(h, a);
  ck_assert(tide__lt_next(h) == -1.0);

  /* relative to h->start, whatever the cached clock */
  h->now = h->start + 123456789;
  start(h, 0, 2000000000, 0);
  ck_assert(tide__lt_next(h) == 2000000000.0);
  tide_host_free(h);
}
END_TEST

START_TEST(test_clocks) {
  tide_host *h = new_host();
  struct timespec ts = {0, 3000000}; /* 3 ms */
  double cached, c0, c1, lo, hi;

  cached = tide__lt_cached(h);
  ck_assert(cached == (double)(h->now - h->start));
  ck_assert(cached >= 0);
  ck_assert(tide__lt_now(h) == (double)h->now / 1e9);

  /* the clock read now lies between two reads around it */
  lo = (double)(tide__hrtime() - h->start);
  c0 = tide__lt_clock(h);
  hi = (double)(tide__hrtime() - h->start);
  ck_assert(lo <= c0 && c0 <= hi);

  clock_nanosleep(CLOCK_MONOTONIC, 0, &ts, NULL);
  c1 = tide__lt_clock(h);
  ck_assert_msg(c1 >= c0 + 3e6, "clock %.0f then %.0f", c0, c1);
  /* the cached clock did not move */
  ck_assert(tide__lt_cached(h) == cached);
  ck_assert(c1 > tide__lt_cached(h));

  /* it follows h->now */
  h->now = h->start + 12345;
  ck_assert(tide__lt_cached(h) == 12345.0);
  ck_assert(tide__lt_now(h) == (double)(h->start + 12345) / 1e9);
  h->now = tide__hrtime();
  ck_assert(tide__lt_clock(h) >= tide__lt_cached(h));
  tide_host_free(h);
}
END_TEST

/* ---- invalid ids --------------------------------------------------------- */

START_TEST(test_start_at_invalid_id_allocates) {
  tide_host *h = new_host();
  static const int32_t bad[] = {-1, -1024, INT32_MIN, CHUNK + 1, 5 * CHUNK,
                                INT32_MAX};
  int i, n = (int)(sizeof bad / sizeof bad[0]);
  int32_t id;

  ck_assert_int_eq(start(h, 0, 1000, 1), 1);
  ck_assert_int_eq(start(h, 0, 2000, 1), 2);
  ck_assert_int_eq(start(h, 0, 3000, 1), 3);

  for (i = 0; i < n; i++) {
    id = start(h, bad[i], 100 + i, 0);
    ck_assert_msg(id == 4 + i, "start_at(%d) gave %d, not %d", bad[i], id,
                  4 + i);
  }
  /* never used, inside the allocated chunk */
  ck_assert_int_eq(start(h, 500, 200, 0), 4 + n);
  ck_assert_uint_eq(h->timers.count, (size_t)(4 + n));
  ck_assert_int_eq(h->refs, 3);

  /* freed ids: 2 then 1; start_at(2) gets the free list's head (1) and
   * leaves slot 2 free, to come next */
  tide__lt_stop(h, 2);
  tide__lt_stop(h, 1);
  ck_assert_int_eq(h->refs, 1);
  id = start(h, 2, 50, 0);
  ck_assert_int_eq(id, 1);
  ck_assert_uint_eq(h->timers.count, (size_t)(3 + n));
  ck_assert_int_eq(start(h, 0, 60, 0), 2);
  ck_assert_int_eq(start(h, 0, 70, 0), 5 + n);
  ck_assert_int_eq(h->refs, 1);

  /* the others kept their deadlines: pop order by deadline */
  timers_phase(h, 1000000);
  ck_assert_int_eq(tide__lt_pop(h), 1);      /* 50 */
  ck_assert_int_eq(tide__lt_pop(h), 2);      /* 60 */
  ck_assert_int_eq(tide__lt_pop(h), 5 + n);  /* 70 */
  for (i = 0; i < n; i++) ck_assert_int_eq(tide__lt_pop(h), 4 + i);
  ck_assert_int_eq(tide__lt_pop(h), 4 + n);  /* 200 */
  ck_assert_int_eq(tide__lt_pop(h), 3);      /* 3000 */
  ck_assert_int_eq(tide__lt_pop(h), 0);
  ck_assert_int_eq(h->refs, 0);
  tide_host_free(h);
}
END_TEST

START_TEST(test_stop_invalid_id_noop) {
  tide_host *h = new_host();
  static const int32_t bad[] = {0, -1, INT32_MIN, 4, 500, CHUNK,
                                CHUNK + 1, 3 * CHUNK, INT32_MAX};
  int i, n = (int)(sizeof bad / sizeof bad[0]);

  tide__lt_stop(h, 1); /* no chunk yet */
  tide__lt_stop(h, 0);
  ck_assert_int_eq(h->lt_nchunks, 0);
  ck_assert_int_eq(start(h, 0, 1000, 1), 1);
  ck_assert_int_eq(start(h, 0, 2000, 1), 2);
  ck_assert_int_eq(start(h, 0, 3000, 1), 3);
  for (i = 0; i < n; i++) tide__lt_stop(h, bad[i]);
  ck_assert_uint_eq(h->timers.count, 3);
  ck_assert_int_eq(h->refs, 3);
  ck_assert_int_eq(next_of(h), 1000);

  /* stopped twice: freed once */
  tide__lt_stop(h, 2);
  tide__lt_stop(h, 2);
  ck_assert_int_eq(h->refs, 2);
  ck_assert_uint_eq(h->timers.count, 2);
  ck_assert_int_eq(start(h, 0, 10, 0), 2);
  ck_assert_int_eq(start(h, 0, 20, 0), 4);
  ck_assert_int_eq(start(h, 0, 30, 0), 5);

  timers_phase(h, 10000);
  ck_assert_int_eq(tide__lt_pop(h), 2);
  ck_assert_int_eq(tide__lt_pop(h), 4);
  ck_assert_int_eq(tide__lt_pop(h), 5);
  ck_assert_int_eq(tide__lt_pop(h), 1);
  ck_assert_int_eq(tide__lt_pop(h), 3);
  ck_assert_int_eq(tide__lt_pop(h), 0);
  ck_assert_int_eq(h->refs, 0);
  tide_host_free(h);
}
END_TEST

/* ---- Lua's immediate node and close node --------------------------------- */

START_TEST(test_imm_set_refs) {
  tide_host *h = new_host();
  tide__imm *im = &h->lua_imm;

  tide__lua_imm_set(h, 0, 0); /* nothing queued: nothing to do */
  ck_assert_int_eq(im->queued, 0);
  ck_assert_uint_eq(h->imm_count, 0);
  ck_assert_int_eq(h->refs, 0);

  tide__lua_imm_set(h, 3, 2); /* 0 -> n referenced */
  ck_assert_int_eq(im->queued, 1);
  ck_assert_ptr_eq(h->imm_head, im);
  ck_assert_ptr_eq(h->imm_tail, im);
  ck_assert_uint_eq(h->imm_count, 1);
  ck_assert_int_eq(h->refs, 1);
  ck_assert_ptr_nonnull(im->cb);

  tide__lua_imm_set(h, 5, 4); /* more: still one node, one ref */
  ck_assert_uint_eq(h->imm_count, 1);
  ck_assert_int_eq(h->refs, 1);

  tide__lua_imm_set(h, 5, 0); /* n -> 0 referenced, still queued */
  ck_assert_int_eq(im->queued, 1);
  ck_assert_ptr_eq(h->imm_head, im);
  ck_assert_uint_eq(h->imm_count, 1);
  ck_assert_int_eq(h->refs, 0);
  ck_assert_int_eq(tide__loop_alive(h), 0);

  tide__lua_imm_set(h, 4, 0);
  ck_assert_uint_eq(h->imm_count, 1);
  ck_assert_int_eq(h->refs, 0);

  tide__lua_imm_set(h, 4, 1); /* 0 -> n again */
  ck_assert_int_eq(h->refs, 1);
  ck_assert_int_eq(tide__loop_alive(h), 1);

  tide__lua_imm_set(h, 0, 0); /* n -> 0 and nothing queued */
  ck_assert_int_eq(im->queued, 0);
  ck_assert_ptr_null(h->imm_head);
  ck_assert_ptr_null(h->imm_tail);
  ck_assert_uint_eq(h->imm_count, 0);
  ck_assert_int_eq(h->refs, 0);

  tide__lua_imm_set(h, 2, 0); /* queued, never referenced */
  ck_assert_int_eq(im->queued, 1);
  ck_assert_int_eq(h->refs, 0);
  tide__lua_imm_set(h, 0, 0);
  ck_assert_int_eq(im->queued, 0);
  ck_assert_int_eq(h->refs, 0);
  tide__lua_imm_set(h, 0, 0);
  ck_assert_int_eq(h->refs, 0);
  ck_assert_uint_eq(h->imm_count, 0);
  tide_host_free(h);
}
END_TEST

/* The node shares the FIFO with other nodes; taking it out or moving it
 * keeps their links. */
START_TEST(test_imm_set_among_other_nodes) {
  tide_host *h = new_host();
  tide__imm a, b, *im = &h->lua_imm;
  memset(&a, 0, sizeof a);
  memset(&b, 0, sizeof b);
  a.cb = b.cb = c_imm_cb;
  a.ref = 1;

  tide__imm_push(h, &a);
  tide__lua_imm_set(h, 1, 1);
  tide__imm_push(h, &b);
  ck_assert_ptr_eq(h->imm_head, &a);
  ck_assert_ptr_eq(a.next, im);
  ck_assert_ptr_eq(im->next, &b);
  ck_assert_uint_eq(h->imm_count, 3);
  ck_assert_int_eq(h->refs, 2);

  tide__lua_imm_set(h, 1, 0); /* unreferenced: still queued once */
  ck_assert_int_eq(im->queued, 1);
  ck_assert_uint_eq(h->imm_count, 3);
  ck_assert_int_eq(h->refs, 1);

  tide__lua_imm_set(h, 0, 0);
  ck_assert_ptr_eq(h->imm_head, &a);
  ck_assert_ptr_eq(a.next, &b);
  ck_assert_ptr_eq(b.prev, &a);
  ck_assert_ptr_eq(h->imm_tail, &b);
  ck_assert_uint_eq(h->imm_count, 2);
  ck_assert_int_eq(h->refs, 1);

  tide__imm_remove(h, &a);
  tide__imm_remove(h, &b);
  ck_assert_int_eq(h->refs, 0);
  tide_host_free(h);
}
END_TEST

/* The loop runs the node: Lua's queue is empty, so run_immediates reports
 * nothing queued and the node is not put back (and its ref is gone). */
START_TEST(test_imm_node_run_by_loop) {
  tide_host *h = new_host();
  tide__lua_imm_set(h, 1, 1);
  ck_assert_int_eq(h->refs, 1);
  ck_assert_int_eq(tide_loop_run(h, TIDE_RUN_NOWAIT), 0);
  ck_assert_int_eq(h->lua_imm.queued, 0);
  ck_assert_uint_eq(h->imm_count, 0);
  ck_assert_int_eq(h->refs, 0);
  tide_host_free(h);
}
END_TEST

START_TEST(test_close_arm_once) {
  tide_host *h = new_host();
  tide__deferred d;
  memset(&d, 0, sizeof d);
  c_def_runs = 0;

  tide__close_later(h, &d, c_def_cb);
  tide__lua_close_arm(h);
  tide__lua_close_arm(h);
  ck_assert_int_eq(h->lua_close.queued, 1);
  ck_assert_ptr_eq(h->closing.head, &d);
  ck_assert_ptr_eq(d.next, &h->lua_close);
  ck_assert_ptr_eq(h->closing.tail, &h->lua_close);
  ck_assert_ptr_null(h->lua_close.next);
  ck_assert_ptr_nonnull(h->lua_close.cb);
  ck_assert_int_eq(tide__loop_alive(h), 1);

  /* the close phase runs it (Lua's close queue is empty) */
  ck_assert_int_eq(tide_loop_run(h, TIDE_RUN_NOWAIT), 0);
  ck_assert_int_eq(c_def_runs, 1);
  ck_assert_int_eq(h->lua_close.queued, 0);
  ck_assert_ptr_null(h->closing.head);

  /* and it can be armed again */
  tide__lua_close_arm(h);
  tide__lua_close_arm(h);
  ck_assert_ptr_eq(h->closing.head, &h->lua_close);
  ck_assert_ptr_eq(h->closing.tail, &h->lua_close);
  ck_assert_int_eq(h->lua_close.queued, 1);
  tide_host_free(h);
}
END_TEST

/* ---- freeing ------------------------------------------------------------- */

/* Armed slots in several chunks, stopped and popped ones, a C timer, the
 * immediate node and the close node: freeing the host is clean (the
 * sanitizer build reports leaks and use after free). */
START_TEST(test_host_free_with_armed_slots) {
  tide_host *h = new_host();
  tide__ctimer c;
  int32_t i;
  for (i = 1; i <= 2 * CHUNK + 10; i++) start(h, 0, 1000 + i, i % 3 == 0);
  for (i = 1; i <= 2 * CHUNK + 10; i += 7) tide__lt_stop(h, i);
  timers_phase(h, 1005);
  while (tide__lt_pop(h)) {
  }
  c_start(h, &c, 500000);
  tide__lua_imm_set(h, 2, 1);
  tide__lua_close_arm(h);
  ck_assert_int_gt(h->refs, 0);
  ck_assert_int_eq(h->lt_nchunks, 3);
  tide_host_free(h);
}
END_TEST

/* The same while stopping, in the middle of a timers phase. */
START_TEST(test_host_free_stopping_in_timers_phase) {
  tide_host *h = new_host();
  int32_t i;
  for (i = 0; i < 100; i++) start(h, 0, 1000 * (i % 5), 1);
  timers_phase(h, 2000);
  ck_assert_int_gt(tide__lt_pop(h), 0);
  h->stop = 1;
  ck_assert_int_eq(tide__lt_pop(h), 0);
  tide_host_free(h);
}
END_TEST

/* lt_free_all with nothing armed returns to the state of a new host. */
START_TEST(test_free_all_then_reuse) {
  tide_host *h = new_host();
  int32_t i;
  for (i = 1; i <= CHUNK + 1; i++) start(h, 0, i, 1);
  for (i = 1; i <= CHUNK + 1; i++) tide__lt_stop(h, i);
  ck_assert_int_eq(h->refs, 0);
  ck_assert_uint_eq(h->timers.count, 0);
  tide__lt_free_all(h);
  ck_assert_ptr_null(h->lt_chunks);
  ck_assert_int_eq(h->lt_nchunks, 0);
  ck_assert_int_eq(h->lt_capchunks, 0);
  ck_assert_int_eq(h->lt_free, 0);
  tide__lt_stop(h, 1); /* no chunk: no-op */
  ck_assert_int_eq(start(h, 1, 10, 1), 1);
  ck_assert_int_eq(start(h, 0, 20, 1), 2);
  ck_assert_int_eq(h->lt_nchunks, 1);
  ck_assert_int_eq(h->refs, 2);
  tide_host_free(h);
}
END_TEST

/* ---- with Lua ------------------------------------------------------------ */

/* Lua's timers take slots from the same table: a tide.after list holds
 * a referenced slot, an unref'd one does not count, and the loop hands
 * them to Lua and frees them. The unref'd timer has a zero delay (due at
 * the first pass, from the cached clock), so it fires before the loop ends
 * however slow the machine is. */
START_TEST(test_lua_timers_use_slots) {
  tide_host *h = new_host();
  lua_State *L = tide_lua(h);
  ck_assert_int_eq(
      luaL_dostring(L, "n = 0\n"
                       "tide.after(0.002, function() n = n + 1 end)\n"
                       "local t = tide.after(0, function() n = n + 10 end)\n"
                       "t:unref()"),
      0);
  ck_assert_int_eq(h->lt_nchunks, 1);
  ck_assert_uint_eq(h->timers.count, 2);
  ck_assert_int_eq(h->refs, 1);
  ck_assert(tide__lt_next(h) > 0);
  ck_assert_int_eq(tide_loop_run(h, TIDE_RUN_DEFAULT), 0);
  ck_assert_uint_eq(h->timers.count, 0);
  ck_assert_int_eq(h->refs, 0);
  lua_getglobal(L, "n");
  ck_assert_int_eq(lua_tointeger(L, -1), 11);
  lua_pop(L, 1);
  tide_host_free(h);
}
END_TEST

static Suite *ltimer_suite(void) {
  Suite *s = suite_create("ltimer");
  TCase *slots = tcase_create("slots"), *pop = tcase_create("pop"),
        *nodes = tcase_create("nodes"), *life = tcase_create("lifetime");
  tcase_add_test(slots, test_ids_start_at_1_lifo);
  tcase_add_test(slots, test_many_slots_across_chunks);
  tcase_add_test(slots, test_chunk_table_grows);
  tcase_add_test(slots, test_restart_moves_keeps_one_ref);
  tcase_add_test(slots, test_ref_accounting);
  tcase_add_test(slots, test_start_at_invalid_id_allocates);
  tcase_add_test(slots, test_stop_invalid_id_noop);
  tcase_add_test(pop, test_pop_deadline_order);
  tcase_add_test(pop, test_pop_not_due);
  tcase_add_test(pop, test_pop_stops_at_c_timer);
  tcase_add_test(pop, test_pop_only_in_timers_phase_running);
  tcase_add_test(pop, test_pop_lag_stats);
  tcase_add_test(pop, test_next_any_timer);
  tcase_add_test(pop, test_clocks);
  tcase_add_test(nodes, test_imm_set_refs);
  tcase_add_test(nodes, test_imm_set_among_other_nodes);
  tcase_add_test(nodes, test_imm_node_run_by_loop);
  tcase_add_test(nodes, test_close_arm_once);
  tcase_add_test(life, test_host_free_with_armed_slots);
  tcase_add_test(life, test_host_free_stopping_in_timers_phase);
  tcase_add_test(life, test_free_all_then_reuse);
  tcase_add_test(life, test_lua_timers_use_slots);
  suite_add_tcase(s, slots);
  suite_add_tcase(s, pop);
  suite_add_tcase(s, nodes);
  suite_add_tcase(s, life);
  return s;
}

int main(void) {
  SRunner *sr = srunner_create(ltimer_suite());
  int failed;
  srunner_run_all(sr, CK_NORMAL);
  failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
