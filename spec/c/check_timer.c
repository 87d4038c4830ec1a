/*
 * spec/c/check_timer.c - unit tests for host/timer.c (libcheck).
 *
 * Build: gcc -std=c99 -D_POSIX_C_SOURCE=200809L -Wall -Wextra -O2 \
 *          spec/c/check_timer.c -o check_timer $(pkg-config --cflags --libs check)
 *
 * timer.c is compiled into this file (not linked) so that the tests can
 * (1) see struct tide__tqueue and check the private invariants after every
 * step, and (2) route its allocations through a wrapper that counts them and
 * can make any of them fail.
 */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* ---- allocation wrapper, installed before timer.c is included ---- */

static unsigned long n_allocs;  /* allocation calls seen */
static uint64_t fail_rng;       /* 0: never fail; else xorshift state */
static unsigned fail_one_in;    /* when failing: probability 1/fail_one_in */
static unsigned long n_failed;  /* injected failures */
static unsigned long fail_at;   /* when nonzero: fail allocation #fail_at */

static uint64_t xorshift(uint64_t *s) {
  uint64_t x = *s;
  x ^= x << 13;
  x ^= x >> 7;
  x ^= x << 17;
  return *s = x;
}

static int should_fail(void) {
  n_allocs++;
  if (n_allocs == fail_at) {
    n_failed++;
    return 1;
  }
  if (!fail_rng || xorshift(&fail_rng) % fail_one_in) return 0;
  n_failed++;
  return 1;
}
static void *t_malloc(size_t n) { return should_fail() ? NULL : malloc(n); }
static void *t_calloc(size_t n, size_t m) {
  return should_fail() ? NULL : calloc(n, m);
}
static void *t_realloc(void *p, size_t n) {
  return should_fail() ? NULL : realloc(p, n);
}

#define malloc t_malloc
#define calloc t_calloc
#define realloc t_realloc
#include "../../host/timer.c"
#undef malloc
#undef calloc
#undef realloc

/* ---- helpers ---- */

static uint64_t rng_state;
static uint64_t rnd(void) { return xorshift(&rng_state); }
static uint64_t rnd_below(uint64_t n) { return rnd() % n; }

static void reset_alloc(void) {
  n_allocs = n_failed = fail_at = 0;
  fail_rng = 0;
}

/* ck_assert records its location through a pipe even when it passes, which
 * costs seconds in loops of millions; REQ only calls into check on failure. */
#define REQ(e)                                          \
  do {                                                  \
    if (!(e)) ck_abort_msg("Assertion '%s' failed", #e); \
  } while (0)

/* (deadline, seq) order, written independently of timer.c's. */
static int key_lt(const tide__timer *a, const tide__timer *b) {
  if (a->deadline != b->deadline) return a->deadline < b->deadline;
  return a->seq < b->seq;
}

/* Full structural check, O(timers + map). */
static void check_invariants(const tide__timers *t) {
  size_t i, armed = 0, shared = 0;
  REQ(t->heap_len <= t->heap_cap);
  REQ(t->map_cap == 0 || (t->map_cap & (t->map_cap - 1)) == 0);
  REQ(2 * t->map_len <= t->map_cap);
  for (i = 0; i < t->heap_len; i++) {
    const tide__tqueue *q = t->heap[i];
    const tide__timer *tm, *prev = NULL;
    REQ(q->hidx == i);
    REQ(q->head != NULL);
    if (i > 0) REQ(!key_lt(q->head, t->heap[(i - 1) / 2]->head));
    for (tm = q->head; tm; prev = tm, tm = tm->next) {
      REQ(tm->queue == q);
      REQ(tm->prev == prev);
      if (prev) REQ(key_lt(prev, tm));
      REQ(tm->seq < t->next_seq);
      armed++;
    }
    REQ(q->tail == prev);
    if (q->shared) {
      shared++;
      REQ(map_get(t, q->duration) == q); /* reachable by key */
    }
  }
  REQ(armed == t->count);
  REQ(shared == t->map_len);
  for (i = 0; i < t->map_cap; i++) {
    const tide__tqueue *q = t->map[i];
    if (!q) continue;
    REQ(q->shared);
    REQ(q->hidx < t->heap_len);
    REQ(t->heap[q->hidx] == q); /* only live queues in the map */
  }
}

static tide__timer *pop_all(tide__timers *t) {
  return tide__timers_pop_due(t, INT64_MAX, UINT64_MAX);
}

/* Pops everything and checks it comes out as exp[0..n). */
static void expect_order(tide__timers *t, tide__timer **exp, size_t n) {
  size_t i;
  for (i = 0; i < n; i++) {
    tide__timer *tm = pop_all(t);
    ck_assert_msg(tm == exp[i], "pop %zu: wrong timer", i);
    ck_assert(!tide__timer_active(tm));
    check_invariants(t);
  }
  ck_assert_ptr_null(pop_all(t));
  ck_assert_uint_eq(t->count, 0);
}

/* ---- basic behaviour ---- */

START_TEST(test_empty) {
  tide__timers t;
  tide__timer tm;
  tide__timers_init(&t);
  tide__timer_init(&tm);
  ck_assert_ptr_null(tide__timers_peek(&t));
  ck_assert_ptr_null(pop_all(&t));
  ck_assert_uint_eq(t.count, 0);
  tide__timer_stop(&t, &tm); /* no-op on an unarmed timer */
  ck_assert(!tide__timer_active(&tm));
  check_invariants(&t);
  tide__timers_free(&t);
  tide__timers_free(&t); /* free leaves an empty, reusable structure */
}
END_TEST

START_TEST(test_one_timer) {
  tide__timers t;
  tide__timer tm;
  tide__timers_init(&t);
  tide__timer_init(&tm);
  ck_assert_int_eq(tide__timer_start(&t, &tm, 1000, 50), 0);
  ck_assert(tide__timer_active(&tm));
  ck_assert_int_eq(tm.deadline, 1050);
  ck_assert_int_eq(tm.duration, 50);
  ck_assert_uint_eq(t.count, 1);
  ck_assert_ptr_eq(tide__timers_peek(&t), &tm);
  ck_assert_ptr_null(tide__timers_pop_due(&t, 1049, UINT64_MAX));
  ck_assert(tide__timer_active(&tm));
  ck_assert_ptr_eq(tide__timers_pop_due(&t, 1050, UINT64_MAX), &tm);
  ck_assert(!tide__timer_active(&tm));
  ck_assert_ptr_null(tm.next);
  ck_assert_ptr_null(tm.prev);
  ck_assert_uint_eq(t.count, 0);
  ck_assert_ptr_null(tide__timers_pop_due(&t, 1050, UINT64_MAX));
  check_invariants(&t);
  ck_assert_uint_eq(t.map_len, 0);
  ck_assert_uint_eq(t.heap_len, 0);
  /* saturating now + duration */
  ck_assert_int_eq(tide__timer_start(&t, &tm, INT64_MAX - 5, 10), 0);
  ck_assert_int_eq(tm.deadline, INT64_MAX);
  ck_assert_ptr_null(tide__timers_pop_due(&t, INT64_MAX - 1, UINT64_MAX));
  ck_assert_ptr_eq(tide__timers_pop_due(&t, INT64_MAX, UINT64_MAX), &tm);
  tide__timers_free(&t);
}
END_TEST

START_TEST(test_equal_deadlines_start_order) {
  /* All due at 100, from four different durations, started out of duration
   * order: they fire in start order. */
  tide__timers t;
  tide__timer tm[6], *exp[6];
  int i;
  tide__timers_init(&t);
  for (i = 0; i < 6; i++) tide__timer_init(&tm[i]);
  ck_assert_int_eq(tide__timer_start(&t, &tm[0], 0, 100), 0);
  ck_assert_int_eq(tide__timer_start(&t, &tm[1], 90, 10), 0);
  ck_assert_int_eq(tide__timer_start(&t, &tm[2], 50, 50), 0);
  ck_assert_int_eq(tide__timer_start(&t, &tm[3], 100, 0), 0);
  ck_assert_int_eq(tide__timer_start(&t, &tm[4], 90, 10), 0);
  ck_assert_int_eq(tide__timer_start(&t, &tm[5], 0, 100), 0);
  for (i = 0; i < 6; i++) {
    ck_assert_int_eq(tm[i].deadline, 100);
    ck_assert_uint_eq(tm[i].seq, (uint64_t)i);
    exp[i] = &tm[i];
  }
  ck_assert_uint_eq(t.map_len, 4);
  check_invariants(&t);
  expect_order(&t, exp, 6);
  tide__timers_free(&t);
}
END_TEST

START_TEST(test_mixed_durations_interleave) {
  /* Durations 10 and 15 started at now = 0, 5, 10, 15; expected by hand. */
  tide__timers t;
  tide__timer a[4], b[4];
  tide__timer *exp[8];
  int i;
  tide__timers_init(&t);
  for (i = 0; i < 4; i++) {
    tide__timer_init(&a[i]);
    tide__timer_init(&b[i]);
    ck_assert_int_eq(tide__timer_start(&t, &b[i], 5 * i, 15), 0);
    ck_assert_int_eq(tide__timer_start(&t, &a[i], 5 * i, 10), 0);
  }
  /* deadlines a: 10 15 20 25, b: 15 20 25 30; b[i] started before a[i+1] */
  exp[0] = &a[0];
  exp[1] = &b[0];
  exp[2] = &a[1];
  exp[3] = &b[1];
  exp[4] = &a[2];
  exp[5] = &b[2];
  exp[6] = &a[3];
  exp[7] = &b[3];
  ck_assert_uint_eq(t.heap_len, 2);
  check_invariants(&t);
  /* and only what is due fires */
  ck_assert_ptr_eq(tide__timers_pop_due(&t, 15, UINT64_MAX), exp[0]);
  ck_assert_ptr_eq(tide__timers_pop_due(&t, 15, UINT64_MAX), exp[1]);
  ck_assert_ptr_eq(tide__timers_pop_due(&t, 15, UINT64_MAX), exp[2]);
  ck_assert_ptr_null(tide__timers_pop_due(&t, 19, UINT64_MAX));
  expect_order(&t, exp + 3, 5);
  tide__timers_free(&t);
}
END_TEST

START_TEST(test_seq_limit) {
  tide__timers t;
  tide__timer a, b, c;
  uint64_t limit;
  tide__timers_init(&t);
  tide__timer_init(&a);
  tide__timer_init(&b);
  tide__timer_init(&c);
  ck_assert_int_eq(tide__timer_start(&t, &a, 0, 0), 0);
  limit = t.next_seq; /* the timers phase begins here */
  ck_assert_int_eq(tide__timer_start(&t, &b, 0, 0), 0);
  ck_assert_ptr_eq(tide__timers_pop_due(&t, 0, limit), &a);
  ck_assert_ptr_null(tide__timers_pop_due(&t, 100, limit)); /* b due, late */
  ck_assert(tide__timer_active(&b));
  ck_assert_ptr_eq(tide__timers_pop_due(&t, 0, t.next_seq), &b);
  /* "the first timer": one started after the limit with an earlier deadline
   * blocks an older due one until the next pass */
  ck_assert_int_eq(tide__timer_start(&t, &a, 10, 0), 0);
  limit = t.next_seq;
  ck_assert_int_eq(tide__timer_start_at(&t, &b, 5, 0), 0);
  ck_assert_ptr_null(tide__timers_pop_due(&t, 10, limit));
  ck_assert_ptr_eq(tide__timers_pop_due(&t, 10, t.next_seq), &b);
  ck_assert_ptr_eq(tide__timers_pop_due(&t, 10, limit), &a);
  /* a restart takes a new seq, so it moves past the limit too */
  ck_assert_int_eq(tide__timer_start(&t, &c, 0, 0), 0);
  limit = t.next_seq;
  ck_assert_int_eq(tide__timer_start(&t, &c, 0, 0), 0);
  ck_assert_ptr_null(tide__timers_pop_due(&t, 0, limit));
  check_invariants(&t);
  tide__timers_free(&t);
}
END_TEST

START_TEST(test_stop_positions) {
  tide__timers t;
  tide__timer tm[6], *exp[3];
  int i;
  tide__timers_init(&t);
  for (i = 0; i < 6; i++) {
    tide__timer_init(&tm[i]);
    ck_assert_int_eq(tide__timer_start(&t, &tm[i], i, 100), 0);
  }
  /* deadlines 100..104 for tm[0..4]; tm[5] moves to a queue of its own,
   * due at 101 but started after tm[1] */
  ck_assert_int_eq(tide__timer_start(&t, &tm[5], 0, 101), 0);
  ck_assert_uint_eq(t.heap_len, 2);
  tide__timer_stop(&t, &tm[0]); /* head: tm[1] (101, earlier seq) leads */
  check_invariants(&t);
  ck_assert_ptr_eq(tide__timers_peek(&t), &tm[1]);
  tide__timer_stop(&t, &tm[1]); /* head again: tm[5]'s queue moves up */
  check_invariants(&t);
  ck_assert_ptr_eq(tide__timers_peek(&t), &tm[5]);
  tide__timer_stop(&t, &tm[3]); /* middle */
  check_invariants(&t);
  ck_assert_ptr_eq(tm[2].next, &tm[4]);
  ck_assert_ptr_eq(tm[4].prev, &tm[2]);
  tide__timer_stop(&t, &tm[4]); /* tail */
  check_invariants(&t);
  ck_assert_ptr_eq(tm[2].queue->tail, &tm[2]);
  tide__timer_stop(&t, &tm[4]); /* already stopped: no-op */
  ck_assert_uint_eq(t.count, 2);
  for (i = 0; i < 6; i++)
    if (i != 2 && i != 5) ck_assert(!tide__timer_active(&tm[i]));
  exp[0] = &tm[5];
  exp[1] = &tm[2];
  expect_order(&t, exp, 2);
  ck_assert_uint_eq(t.map_len, 0);
  ck_assert_uint_eq(t.heap_len, 0);
  tide__timers_free(&t);
}
END_TEST

START_TEST(test_private_queue) {
  tide__timers t;
  tide__timer s[3], p, q2, *exp[5];
  tide__tqueue *shared;
  int i;
  tide__timers_init(&t);
  for (i = 0; i < 3; i++) {
    tide__timer_init(&s[i]);
    ck_assert_int_eq(tide__timer_start(&t, &s[i], 100 * i, 100), 0);
  }
  shared = s[0].queue;
  ck_assert(shared->shared);
  ck_assert_ptr_eq(s[2].queue, shared);
  /* deadline 150 is before the shared tail (300): a private queue */
  tide__timer_init(&p);
  ck_assert_int_eq(tide__timer_start_at(&t, &p, 150, 100), 0);
  ck_assert_ptr_ne(p.queue, shared);
  ck_assert(!p.queue->shared);
  ck_assert_uint_eq(t.heap_len, 2);
  ck_assert_uint_eq(t.map_len, 1);
  check_invariants(&t);
  /* stopping it frees the private queue, the shared one stays mapped */
  tide__timer_stop(&t, &p);
  ck_assert_uint_eq(t.heap_len, 1);
  ck_assert_uint_eq(t.map_len, 1);
  check_invariants(&t);
  /* equal to the tail's deadline: later seq, so it appends */
  tide__timer_init(&q2);
  ck_assert_int_eq(tide__timer_start_at(&t, &q2, 300, 100), 0);
  ck_assert_ptr_eq(q2.queue, shared);
  ck_assert_int_eq(tide__timer_start_at(&t, &p, 150, 100), 0);
  ck_assert(!p.queue->shared);
  check_invariants(&t);
  exp[0] = &s[0];
  exp[1] = &p;
  exp[2] = &s[1];
  exp[3] = &s[2];
  exp[4] = &q2;
  expect_order(&t, exp, 5);
  tide__timers_free(&t);
}
END_TEST

START_TEST(test_restart_moves) {
  tide__timers t;
  tide__timer a, b, c, *exp[3];
  unsigned long allocs;
  tide__timers_init(&t);
  reset_alloc();
  tide__timer_init(&a);
  tide__timer_init(&b);
  tide__timer_init(&c);
  ck_assert_int_eq(tide__timer_start(&t, &a, 0, 10), 0);
  ck_assert_int_eq(tide__timer_start(&t, &b, 1, 10), 0);
  ck_assert_int_eq(tide__timer_start(&t, &c, 0, 20), 0);
  ck_assert_ptr_eq(tide__timers_peek(&t), &a);
  /* restart of a head: moves behind b and c */
  ck_assert_int_eq(tide__timer_start(&t, &a, 15, 10), 0);
  ck_assert_uint_eq(t.count, 3);
  ck_assert_uint_eq(a.seq, 3);
  ck_assert_ptr_eq(tide__timers_peek(&t), &b);
  check_invariants(&t);
  /* restart of a tail alone in its queue is done in place: no allocation */
  allocs = n_allocs;
  ck_assert_int_eq(tide__timer_start(&t, &c, 5, 20), 0);
  ck_assert_int_eq(tide__timer_start(&t, &c, 0, 20), 0); /* earlier: fix up */
  ck_assert_int_eq(tide__timer_start(&t, &c, 6, 20), 0);
  ck_assert_uint_eq(n_allocs, allocs);
  check_invariants(&t);
  /* b -> 11, a -> 25, c -> 26 */
  exp[0] = &b;
  exp[1] = &a;
  exp[2] = &c;
  expect_order(&t, exp, 3);
  /* restart under another duration moves it to that duration's queue */
  ck_assert_int_eq(tide__timer_start(&t, &a, 0, 10), 0);
  ck_assert_int_eq(tide__timer_start(&t, &b, 0, 30), 0);
  ck_assert_int_eq(tide__timer_start(&t, &b, 0, 10), 0);
  ck_assert_ptr_eq(a.queue, b.queue);
  ck_assert_uint_eq(t.map_len, 1);
  check_invariants(&t);
  exp[0] = &a;
  exp[1] = &b;
  expect_order(&t, exp, 2);
  tide__timers_free(&t);
}
END_TEST

START_TEST(test_start_at_out_of_order) {
  /* A repeating timer re-armed at "previous deadline + interval" after lag
   * lands before the tail of its duration's queue. */
  tide__timers t;
  tide__timer s[4], r, *exp[5];
  int i;
  tide__timers_init(&t);
  for (i = 0; i < 4; i++) {
    tide__timer_init(&s[i]);
    ck_assert_int_eq(tide__timer_start(&t, &s[i], 1000 + 10 * i, 100), 0);
  }
  tide__timer_init(&r);
  ck_assert_int_eq(tide__timer_start_at(&t, &r, 1110, 100), 0); /* = s[1] */
  ck_assert(!r.queue->shared);
  check_invariants(&t);
  exp[0] = &s[0];
  exp[1] = &s[1]; /* same deadline, started earlier */
  exp[2] = &r;
  exp[3] = &s[2];
  exp[4] = &s[3];
  expect_order(&t, exp, 5);
  tide__timers_free(&t);
}
END_TEST

START_TEST(test_count_and_free_disarms) {
  enum { N = 1000 };
  tide__timers t;
  static tide__timer tm[N];
  int i;
  tide__timers_init(&t);
  rng_state = 42;
  for (i = 0; i < N; i++) {
    tide__timer_init(&tm[i]);
    if (i % 3 == 0)
      ck_assert_int_eq(tide__timer_start_at(&t, &tm[i], rnd_below(500), 7), 0);
    else
      ck_assert_int_eq(tide__timer_start(&t, &tm[i], i, rnd_below(20)), 0);
    ck_assert_uint_eq(t.count, (size_t)i + 1);
  }
  for (i = 0; i < N; i += 2) tide__timer_stop(&t, &tm[i]);
  ck_assert_uint_eq(t.count, N / 2);
  ck_assert_ptr_nonnull(pop_all(&t));
  ck_assert_uint_eq(t.count, N / 2 - 1);
  check_invariants(&t);
  tide__timers_free(&t);
  ck_assert_uint_eq(t.count, 0);
  ck_assert_ptr_null(tide__timers_peek(&t));
  for (i = 0; i < N; i++) {
    ck_assert(!tide__timer_active(&tm[i]));
    ck_assert_ptr_null(tm[i].next);
    ck_assert_ptr_null(tm[i].prev);
  }
  /* usable again after free */
  ck_assert_int_eq(tide__timer_start(&t, &tm[1], 0, 1), 0);
  ck_assert_ptr_eq(pop_all(&t), &tm[1]);
  tide__timers_free(&t);
}
END_TEST

/* ---- map ---- */

START_TEST(test_map_collisions) {
  /* Durations that all hash to one slot of a 64-slot map (the size it has at
   * 20..32 entries), removed in random order: backward-shift deletion must
   * keep the rest reachable. */
  enum { N = 24 };
  tide__timers t;
  tide__timer tm[N];
  int64_t d = 0;
  int i, n = 0, round;
  tide__timers_init(&t);
  while (n < N) {
    if ((hash(d) & 63) == 5 || (hash(d) & 63) == 6) {
      tide__timer_init(&tm[n]);
      ck_assert_int_eq(tide__timer_start(&t, &tm[n], 0, d), 0);
      n++;
    }
    d++;
  }
  ck_assert_uint_eq(t.map_cap, 64);
  ck_assert_uint_eq(t.map_len, N);
  check_invariants(&t);
  rng_state = 7;
  for (round = 0; round < 200; round++) {
    i = (int)rnd_below(N);
    if (tide__timer_active(&tm[i])) tide__timer_stop(&t, &tm[i]);
    else ck_assert_int_eq(tide__timer_start(&t, &tm[i], round, tm[i].duration), 0);
    check_invariants(&t);
  }
  tide__timers_free(&t);
}
END_TEST

/* ---- randomized, against references ---- */

static int cmp_timer(const void *a, const void *b) {
  const tide__timer *x = *(tide__timer *const *)a, *y = *(tide__timer *const *)b;
  return key_lt(x, y) ? -1 : key_lt(y, x) ? 1 : 0;
}

START_TEST(test_many_durations_sorted) {
  enum { N = 10000 };
  tide__timers t;
  tide__timer *tm = calloc(N, sizeof *tm);
  tide__timer **ref = calloc(N, sizeof *ref);
  int64_t now = 0;
  size_t i;
  REQ(tm && ref);
  tide__timers_init(&t);
  rng_state = 0x9e3779b97f4a7c15ULL;
  for (i = 0; i < N; i++) {
    tide__timer_init(&tm[i]);
    now += (int64_t)rnd_below(3);
    if (rnd_below(4) == 0) /* explicit deadlines, often out of order */
      REQ(tide__timer_start_at(&t, &tm[i], (int64_t)rnd_below(200000),
                               (int64_t)rnd_below(1000000)) == 0);
    else
      REQ(tide__timer_start(&t, &tm[i], now, (int64_t)rnd_below(1000000)) == 0);
    ref[i] = &tm[i];
  }
  REQ(t.map_len > 5000); /* really many distinct durations */
  check_invariants(&t);
  qsort(ref, N, sizeof *ref, cmp_timer);
  for (i = 0; i < N; i++) {
    if (pop_all(&t) != ref[i]) ck_abort_msg("pop %zu out of order", i);
    if (i % 997 == 0) check_invariants(&t);
  }
  REQ(pop_all(&t) == NULL);
  REQ(t.map_len == 0);
  tide__timers_free(&t);
  free(tm);
  free(ref);
}
END_TEST

/* Reference model: the armed timers' keys in an array, scanned linearly. */
enum { POOL = 256 };
typedef struct {
  int armed;
  int64_t deadline;
  uint64_t seq;
} model_timer;

static int model_first(const model_timer *m) {
  int i, best = -1;
  for (i = 0; i < POOL; i++)
    if (m[i].armed &&
        (best < 0 || m[i].deadline < m[best].deadline ||
         (m[i].deadline == m[best].deadline && m[i].seq < m[best].seq)))
      best = i;
  return best;
}

static int64_t pick_duration(void) {
  static const int64_t few[] = {0, 1, 10, 100, 1000000};
  return rnd_below(2) ? few[rnd_below(5)] : (int64_t)rnd_below(300);
}

/* ops random operations; with fail_one_in != 0 allocations fail at random
 * and a failed start must leave the timer unarmed. */
static void run_model(unsigned long ops, unsigned fail) {
  tide__timers t;
  static tide__timer tm[POOL];
  static model_timer m[POOL];
  int64_t now = 1000;
  unsigned long op, n_fail_starts = 0;
  size_t armed = 0;
  int i;
  tide__timers_init(&t);
  reset_alloc();
  rng_state = 0xdeadbeefcafef00dULL + fail;
  memset(m, 0, sizeof m);
  for (i = 0; i < POOL; i++) tide__timer_init(&tm[i]);
  for (op = 0; op < ops; op++) {
    uint64_t r = rnd_below(100);
    i = (int)rnd_below(POOL);
    if (fail) { /* bursts of failures, so growth paths fail too */
      fail_rng = rnd_below(8) == 0 ? rnd() | 1 : 0;
      fail_one_in = fail;
    }
    if (r < 40) { /* start or start_at (may restart) */
      uint64_t seq = t.next_seq;
      unsigned long failed = n_failed;
      int64_t dur = pick_duration(), dl;
      int rc;
      if (r < 30) {
        rc = tide__timer_start(&t, &tm[i], now, dur);
        dl = now + dur;
      } else {
        dl = now + (int64_t)rnd_below(400) - 100;
        rc = tide__timer_start_at(&t, &tm[i], dl, dur);
      }
      REQ(t.next_seq == seq + 1);
      armed -= m[i].armed;
      if (rc == 0) {
        m[i].armed = 1;
        m[i].deadline = dl;
        m[i].seq = seq;
        armed++;
        REQ(tm[i].deadline == dl);
        REQ(tm[i].seq == seq);
      } else {
        REQ(rc == -1);
        REQ(n_failed > failed); /* only fails when malloc did */
        m[i].armed = 0;
        n_fail_starts++;
      }
    } else if (r < 55) {
      tide__timer_stop(&t, &tm[i]);
      armed -= m[i].armed;
      m[i].armed = 0;
    } else if (r < 65) {
      now += (int64_t)rnd_below(30);
    } else { /* pop, sometimes with a seq limit in the recent past */
      uint64_t limit = rnd_below(3) ? UINT64_MAX : t.next_seq - rnd_below(20);
      int f = model_first(m);
      tide__timer *got = tide__timers_pop_due(&t, now, limit);
      if (f >= 0 && m[f].deadline <= now && m[f].seq < limit) {
        REQ(got == &tm[f]);
        m[f].armed = 0;
        armed--;
      } else {
        REQ(got == NULL);
      }
    }
    fail_rng = 0;
    /* compare the whole observable state */
    REQ(t.count == armed);
    i = model_first(m);
    REQ(tide__timers_peek(&t) == (i < 0 ? NULL : &tm[i]));
    REQ(tide__timer_active(&tm[op % POOL]) == m[op % POOL].armed);
    if (op % 16 == 0) check_invariants(&t);
  }
  check_invariants(&t);
  if (fail) REQ(n_fail_starts > 100); /* failures were tested */
  tide__timers_free(&t);
  for (i = 0; i < POOL; i++) REQ(!tide__timer_active(&tm[i]));
}

/* Fails each allocation in turn (queue, map growth, heap growth) while
 * starting timers with new durations, out-of-order deadlines and restarts. */
START_TEST(test_each_allocation_fails) {
  enum { N = 80 };
  tide__timers t;
  tide__timer tm[N], *armed[N];
  unsigned long k, total = 0;
  size_t i, n;
  for (k = 0; k == 0 || k <= total; k++) { /* k = 0: no failure, count */
    tide__timers_init(&t);
    reset_alloc();
    fail_at = k;
    for (i = 0; i < N; i++) {
      unsigned long failed = n_failed;
      int rc;
      tide__timer_init(&tm[i]);
      if (i % 5 == 4) /* before its shared queue's tail: private */
        rc = tide__timer_start_at(&t, &tm[i], (int64_t)i, (int64_t)(i - 4));
      else
        rc = tide__timer_start(&t, &tm[i], 100, (int64_t)i);
      if (i % 7 == 6 && rc == 0) /* restart, moving to an existing queue */
        rc = tide__timer_start(&t, &tm[i], 100, 0);
      REQ(rc == 0 || rc == -1);
      REQ((rc == -1) == (n_failed > failed));
      REQ(tide__timer_active(&tm[i]) == (rc == 0));
      check_invariants(&t);
    }
    if (k == 0) total = n_allocs;
    REQ(n_failed == (k >= 1 && k <= n_allocs));
    for (i = n = 0; i < N; i++)
      if (tide__timer_active(&tm[i])) armed[n++] = &tm[i];
    REQ(n == t.count);
    REQ(n == N - n_failed); /* only the timer that hit the failure is off */
    qsort(armed, n, sizeof *armed, cmp_timer);
    for (i = 0; i < n; i++) REQ(pop_all(&t) == armed[i]);
    REQ(pop_all(&t) == NULL);
    tide__timers_free(&t);
  }
  REQ(total > 60); /* queues, map and heap growth were all reached */
}
END_TEST

START_TEST(test_random_vs_model) { run_model(200000, 0); }
END_TEST

START_TEST(test_malloc_failure) { run_model(100000, 3); }
END_TEST

/* ---- scale ---- */

static double seconds(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

START_TEST(test_million_same_duration) {
  enum { N = 1000000 };
  tide__timers t;
  tide__timer *tm = malloc(N * sizeof *tm);
  double t0, t1, t2;
  size_t i;
  ck_assert_ptr_nonnull(tm);
  tide__timers_init(&t);
  reset_alloc();
  for (i = 0; i < N; i++) tide__timer_init(&tm[i]);
  t0 = seconds();
  for (i = 0; i < N; i++)
    if (tide__timer_start(&t, &tm[i], (int64_t)(i / 16), 5000000)) break;
  t1 = seconds();
  ck_assert_uint_eq(i, N);
  ck_assert_uint_eq(n_allocs, 3); /* heap, map, one queue: appends are free */
  ck_assert_uint_eq(t.count, N);
  for (i = 0; i < N; i++)
    if (tide__timers_pop_due(&t, INT64_MAX, UINT64_MAX) != &tm[i]) break;
  t2 = seconds();
  ck_assert_uint_eq(i, N);
  ck_assert_uint_eq(t.count, 0);
  fprintf(stderr, "1e6 same-duration timers: start %.1f ms, pop %.1f ms\n",
          (t1 - t0) * 1e3, (t2 - t1) * 1e3);
  tide__timers_free(&t);
  free(tm);
}
END_TEST

static Suite *timer_suite(void) {
  Suite *s = suite_create("timer");
  TCase *basic = tcase_create("basic"), *big = tcase_create("random");
  tcase_add_test(basic, test_empty);
  tcase_add_test(basic, test_one_timer);
  tcase_add_test(basic, test_equal_deadlines_start_order);
  tcase_add_test(basic, test_mixed_durations_interleave);
  tcase_add_test(basic, test_seq_limit);
  tcase_add_test(basic, test_stop_positions);
  tcase_add_test(basic, test_private_queue);
  tcase_add_test(basic, test_restart_moves);
  tcase_add_test(basic, test_start_at_out_of_order);
  tcase_add_test(basic, test_count_and_free_disarms);
  tcase_add_test(basic, test_map_collisions);
  tcase_add_test(big, test_many_durations_sorted);
  tcase_add_test(big, test_random_vs_model);
  tcase_add_test(big, test_malloc_failure);
  tcase_add_test(big, test_each_allocation_fails);
  tcase_add_test(big, test_million_same_duration);
  tcase_set_timeout(big, 600); /* valgrind; scaled by CK_TIMEOUT_MULTIPLIER */
  suite_add_tcase(s, basic);
  suite_add_tcase(s, big);
  return s;
}

int main(void) {
  SRunner *sr = srunner_create(timer_suite());
  int failed;
  srunner_run_all(sr, CK_NORMAL);
  failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
