/*
 * host/timer.h - tide's timer structure (internal).
 *
 * Timers that share a duration are kept in one FIFO queue per duration, as
 * Node does: since the loop clock only moves forward, appending to a queue
 * keeps it sorted, so starting and firing a timer is O(1) for the common case
 * of many timers with few distinct durations. A binary min-heap orders the
 * non-empty queues by their head timer, so finding the next timer to fire is
 * O(1) and moving past it is O(log q) for q distinct durations.
 *
 * A timer whose deadline would break its queue's order (a repeating timer
 * re-armed to "previous deadline + interval" after loop lag, or one started
 * with an explicit deadline) gets a queue of its own instead, which is freed
 * when it empties.
 *
 * Order is (deadline, seq): equal deadlines fire in the order the timers were
 * started. `seq` is taken from a counter at every start, so a caller can tell
 * timers started before a point in time from those started after it (the
 * timers phase uses this so that a timer started while the phase runs never
 * fires in the same pass).
 *
 * The caller owns the tide__timer memory (it is usually inside a Lua
 * userdata) and must keep it alive while the timer is armed.
 */
#ifndef TIDE_TIMER_H
#define TIDE_TIMER_H

#include <stddef.h>
#include <stdint.h>

typedef struct tide__tqueue tide__tqueue;

typedef struct tide__timer {
  struct tide__timer *next, *prev; /* links inside its queue */
  tide__tqueue *queue;             /* NULL while not armed */
  int64_t deadline;                /* monotonic nanoseconds */
  int64_t duration;                /* nanoseconds; the queue key */
  uint64_t seq;                    /* start order; ties on deadline */
} tide__timer;

typedef struct tide__timers {
  tide__tqueue **heap; /* min-heap of non-empty queues, keyed by their head */
  size_t heap_len, heap_cap;
  tide__tqueue **map; /* open-addressing table: duration -> shared queue */
  size_t map_len, map_cap;
  uint64_t next_seq; /* seq given to the next started timer */
  size_t count;      /* armed timers */
} tide__timers;

void tide__timers_init(tide__timers *t);
/* Disarms every timer and frees the structure's own memory. */
void tide__timers_free(tide__timers *t);

void tide__timer_init(tide__timer *tm);
/* Arms tm to fire at now + duration (restarting it if armed). Returns 0, or
 * -1 when memory ran out (tm is then not armed). duration >= 0. */
int tide__timer_start(tide__timers *t, tide__timer *tm, int64_t now,
                      int64_t duration);
/* Arms tm at an explicit deadline; duration only picks the queue to try. */
int tide__timer_start_at(tide__timers *t, tide__timer *tm, int64_t deadline,
                         int64_t duration);
/* Disarms tm; a no-op when it is not armed. */
void tide__timer_stop(tide__timers *t, tide__timer *tm);
static inline int tide__timer_active(const tide__timer *tm) {
  return tm->queue != NULL;
}

/* The armed timer that fires first, or NULL. */
tide__timer *tide__timers_peek(const tide__timers *t);
/* Disarms and returns the first timer if deadline <= now and seq < seq_limit,
 * else NULL. */
tide__timer *tide__timers_pop_due(tide__timers *t, int64_t now,
                                  uint64_t seq_limit);

#endif
