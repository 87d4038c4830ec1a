/*
 * host/timer.c - tide's timer structure; see timer.h for the design.
 *
 * Invariants (checked by spec/c/check_timer.c):
 *  - every queue is non-empty, its timers are linked head to tail in strictly
 *    increasing (deadline, seq) order, and it sits in the heap at
 *    heap[q->hidx]; the heap is ordered by each queue's head;
 *  - the map holds exactly the shared queues, at most one per duration;
 *    private queues live only in the heap;
 *  - a timer is armed iff its queue field points at the queue that links it,
 *    and count is the number of armed timers.
 * A queue is freed the moment it empties, so no empty queue ever reaches the
 * heap and peek is just the head of heap[0].
 */
#include "timer.h"

#include <stdlib.h>

struct tide__tqueue {
  tide__timer *head, *tail;
  int64_t duration; /* map key (shared) or the duration asked for (private) */
  size_t hidx;      /* position in t->heap */
  int shared;       /* 1: the map's queue for duration; 0: private */
};

/* (deadline, seq) order; seqs are unique so this is a strict total order. */
static int before(const tide__timer *a, const tide__timer *b) {
  return a->deadline < b->deadline ||
         (a->deadline == b->deadline && a->seq < b->seq);
}

/* ---- heap of queues, keyed by their head timer ---- */

static int qless(const tide__tqueue *a, const tide__tqueue *b) {
  return before(a->head, b->head);
}

static void heap_set(tide__timers *t, size_t i, tide__tqueue *q) {
  t->heap[i] = q;
  q->hidx = i;
}

static void sift_up(tide__timers *t, tide__tqueue *q) {
  size_t i = q->hidx;
  while (i > 0 && qless(q, t->heap[(i - 1) / 2])) {
    heap_set(t, i, t->heap[(i - 1) / 2]);
    i = (i - 1) / 2;
  }
  heap_set(t, i, q);
}

static void sift_down(tide__timers *t, tide__tqueue *q) {
  size_t i = q->hidx, n = t->heap_len;
  for (;;) {
    size_t c = 2 * i + 1;
    if (c >= n) break;
    if (c + 1 < n && qless(t->heap[c + 1], t->heap[c])) c++;
    if (!qless(t->heap[c], q)) break;
    heap_set(t, i, t->heap[c]);
    i = c;
  }
  heap_set(t, i, q);
}

/* Restores order after q's head changed in an unknown direction. */
static void heap_fix(tide__timers *t, tide__tqueue *q) {
  sift_up(t, q);
  sift_down(t, q);
}

/* Makes room for one more queue; done before any change so that a failure
 * leaves everything as it was. */
static int heap_reserve(tide__timers *t) {
  size_t cap;
  tide__tqueue **h;
  if (t->heap_len < t->heap_cap) return 0;
  cap = t->heap_cap ? 2 * t->heap_cap : 8;
  if (cap > SIZE_MAX / sizeof *h) return -1;
  h = realloc(t->heap, cap * sizeof *h);
  if (!h) return -1;
  t->heap = h;
  t->heap_cap = cap;
  return 0;
}

static void heap_push(tide__timers *t, tide__tqueue *q) {
  heap_set(t, t->heap_len++, q);
  sift_up(t, q);
}

static void heap_remove(tide__timers *t, tide__tqueue *q) {
  tide__tqueue *last = t->heap[--t->heap_len];
  if (last != q) {
    heap_set(t, q->hidx, last);
    heap_fix(t, last);
  }
}

/* ---- map: duration -> shared queue, linear probing, power-of-two size ---- */

static size_t hash(int64_t d) {
  uint64_t x = (uint64_t)d; /* murmur3's finalizer: durations are often
                               multiples of 1e6, which need mixing */
  x ^= x >> 33;
  x *= 0xff51afd7ed558ccdULL;
  x ^= x >> 33;
  x *= 0xc4ceb9fe1a85ec53ULL;
  x ^= x >> 33;
  return (size_t)x;
}

/* The slot holding d, or the empty slot ending its probe run. The map is at
 * most half full, so the run always ends. */
static size_t map_slot(const tide__timers *t, int64_t d) {
  size_t mask = t->map_cap - 1, i = hash(d) & mask;
  while (t->map[i] && t->map[i]->duration != d) i = (i + 1) & mask;
  return i;
}

static tide__tqueue *map_get(const tide__timers *t, int64_t d) {
  return t->map_cap ? t->map[map_slot(t, d)] : NULL;
}

/* Makes room for one more entry, keeping the load at most 1/2. */
static int map_reserve(tide__timers *t) {
  size_t cap, i, old_cap = t->map_cap;
  tide__tqueue **m, **old = t->map;
  if (2 * (t->map_len + 1) <= old_cap) return 0;
  cap = old_cap ? 2 * old_cap : 8;
  if (cap > SIZE_MAX / sizeof *m) return -1;
  m = calloc(cap, sizeof *m);
  if (!m) return -1;
  t->map = m;
  t->map_cap = cap;
  for (i = 0; i < old_cap; i++)
    if (old[i]) t->map[map_slot(t, old[i]->duration)] = old[i];
  free(old);
  return 0;
}

static void map_put(tide__timers *t, tide__tqueue *q) {
  t->map[map_slot(t, q->duration)] = q;
  t->map_len++;
}

/* Backward-shift deletion instead of tombstones: every later entry of the
 * probe run whose home slot is not cyclically in (hole, entry] moves into the
 * hole, so each entry stays reachable from its home slot with no gap. */
static void map_del(tide__timers *t, tide__tqueue *q) {
  size_t mask = t->map_cap - 1, hole = map_slot(t, q->duration), j = hole;
  for (;;) {
    size_t home;
    j = (j + 1) & mask;
    if (!t->map[j]) break;
    home = hash(t->map[j]->duration) & mask;
    if (((j - home) & mask) >= ((j - hole) & mask)) {
      t->map[hole] = t->map[j];
      hole = j;
    }
  }
  t->map[hole] = NULL;
  t->map_len--;
}

/* ---- timers ---- */

void tide__timers_init(tide__timers *t) {
  t->heap = NULL;
  t->heap_len = t->heap_cap = 0;
  t->map = NULL;
  t->map_len = t->map_cap = 0;
  t->next_seq = 0;
  t->count = 0;
}

void tide__timers_free(tide__timers *t) {
  size_t i;
  for (i = 0; i < t->heap_len; i++) { /* every queue is in the heap */
    tide__tqueue *q = t->heap[i];
    tide__timer *tm = q->head, *next;
    for (; tm; tm = next) {
      next = tm->next;
      tm->next = tm->prev = NULL;
      tm->queue = NULL;
    }
    free(q);
  }
  free(t->heap);
  free(t->map);
  tide__timers_init(t);
}

void tide__timer_init(tide__timer *tm) {
  tm->next = tm->prev = NULL;
  tm->queue = NULL;
  tm->deadline = tm->duration = 0;
  tm->seq = 0;
}

static void link_tail(tide__tqueue *q, tide__timer *tm) {
  tm->queue = q;
  tm->next = NULL;
  tm->prev = q->tail;
  if (q->tail) q->tail->next = tm;
  else q->head = tm;
  q->tail = tm;
}

int tide__timer_start(tide__timers *t, tide__timer *tm, int64_t now,
                      int64_t duration) {
  /* Saturate rather than overflow: a huge duration means "never". */
  int64_t deadline =
      now > 0 && duration > INT64_MAX - now ? INT64_MAX : now + duration;
  return tide__timer_start_at(t, tm, deadline, duration);
}

int tide__timer_start_at(tide__timers *t, tide__timer *tm, int64_t deadline,
                         int64_t duration) {
  tide__tqueue *q = tm->queue, *shared;
  /* The new seq is the largest yet, so a timer stays sorted as the tail of
   * its queue iff its deadline is not before its predecessor's. Restarting
   * it in place then skips freeing and re-allocating a queue it was alone in
   * (the usual debounce / interval case). */
  if (q && tm == q->tail && q->duration == duration &&
      (!tm->prev || tm->prev->deadline <= deadline)) {
    tm->deadline = deadline;
    tm->duration = duration;
    tm->seq = t->next_seq++;
    if (tm == q->head) heap_fix(t, q);
    return 0;
  }
  tide__timer_stop(t, tm);
  tm->deadline = deadline;
  tm->duration = duration;
  tm->seq = t->next_seq++;

  /* Common path: append to the shared queue, no allocation, and no heap work
   * since the head is unchanged. Shared queues are never empty. */
  shared = map_get(t, duration);
  if (shared && shared->tail->deadline <= deadline) {
    link_tail(shared, tm);
    t->count++;
    return 0;
  }

  /* New queue: shared when the duration has none yet, else private because
   * tm would break the shared queue's order. Reserve everything first. */
  if (heap_reserve(t) || (!shared && map_reserve(t))) return -1;
  q = malloc(sizeof *q);
  if (!q) return -1;
  q->head = q->tail = NULL;
  q->duration = duration;
  q->shared = !shared;
  if (q->shared) map_put(t, q);
  link_tail(q, tm);
  heap_push(t, q);
  t->count++;
  return 0;
}

void tide__timer_stop(tide__timers *t, tide__timer *tm) {
  tide__tqueue *q = tm->queue;
  int was_head;
  if (!q) return;
  was_head = tm == q->head;
  if (tm->prev) tm->prev->next = tm->next;
  else q->head = tm->next;
  if (tm->next) tm->next->prev = tm->prev;
  else q->tail = tm->prev;
  tm->next = tm->prev = NULL;
  tm->queue = NULL;
  t->count--;
  if (!q->head) {
    heap_remove(t, q);
    if (q->shared) map_del(t, q);
    free(q);
  } else if (was_head) {
    sift_down(t, q); /* the new head is later, so the key only grew */
  }
}

tide__timer *tide__timers_peek(const tide__timers *t) {
  return t->heap_len ? t->heap[0]->head : NULL;
}

tide__timer *tide__timers_pop_due(tide__timers *t, int64_t now,
                                  uint64_t seq_limit) {
  tide__timer *tm = tide__timers_peek(t);
  if (!tm || tm->deadline > now || tm->seq >= seq_limit) return NULL;
  tide__timer_stop(t, tm);
  return tm;
}
