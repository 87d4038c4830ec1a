/*
 * host/loop.c - the loop and its phases.
 *
 * tide_loop_run is the whole loop: one iteration runs the five phases in
 * the order of Node.js (timers, pending, poll, check, close). libevent is
 * entered only in the poll phase. Every callback into Lua goes through
 * tide__call, whose Lua side drains the ready queue (tasks made runnable,
 * tide.next callbacks) before it returns, so the ready queue is always empty
 * between two callbacks.
 */
#include <event2/event.h>

#include "internal.h"

const char *const tide__phase_names[] = {"timers", "pending", "poll",
                                         "check",  "close",   "main"};

#define HALTED(h) ((h)->stop || (h)->exiting)

/* --- deferred callbacks: the pending and close phases ------------------- */

static void dlist_push(tide__dlist *l, tide__deferred *d) {
  d->next = NULL;
  if (l->tail)
    l->tail->next = d;
  else
    l->head = d;
  l->tail = d;
}

void tide__defer(tide_host *h, tide__deferred *d, tide__deferred_cb cb) {
  if (d->queued) return;
  d->cb = cb;
  d->queued = 1;
  dlist_push(&h->pending, d);
}

void tide__close_later(tide_host *h, tide__deferred *d, tide__deferred_cb cb) {
  if (d->queued) return;
  d->cb = cb;
  d->queued = 1;
  dlist_push(&h->closing, d);
}

/* Runs the callbacks that were queued before the phase started; those
 * queued by them wait for the next iteration. Returns how many ran. */
static uint64_t dlist_run(tide_host *h, tide__dlist *l) {
  tide__dlist batch = *l;
  uint64_t n = 0;
  l->head = l->tail = NULL;
  while (batch.head) {
    tide__deferred *d = batch.head;
    batch.head = d->next;
    d->queued = 0;
    d->cb(h, d);
    n++;
    if (HALTED(h)) break;
  }
  if (batch.head) { /* halted: put the rest back in front, in order */
    tide__deferred *last = batch.head;
    while (last->next) last = last->next;
    last->next = l->head;
    if (!l->head) l->tail = last;
    l->head = batch.head;
  }
  return n;
}

/* --- immediates: the check phase's FIFO --------------------------------- */

void tide__imm_push(tide_host *h, tide__imm *im) {
  if (im->queued) return;
  im->queued = 1;
  im->seq = h->imm_seq++;
  im->next = NULL;
  im->prev = h->imm_tail;
  if (h->imm_tail)
    h->imm_tail->next = im;
  else
    h->imm_head = im;
  h->imm_tail = im;
  h->imm_count++;
  if (im->ref) h->refs++;
}

void tide__imm_remove(tide_host *h, tide__imm *im) {
  if (!im->queued) return;
  if (im->prev)
    im->prev->next = im->next;
  else
    h->imm_head = im->next;
  if (im->next)
    im->next->prev = im->prev;
  else
    h->imm_tail = im->prev;
  im->next = im->prev = NULL;
  im->queued = 0;
  h->imm_count--;
  if (im->ref) h->refs--;
}

/* --- the phases ----------------------------------------------------------- */

int tide__loop_alive(const tide_host *h) {
  return h->refs > 0 || h->pending.head || h->closing.head;
}

static void phase_end(tide_host *h, int phase, uint64_t calls, int64_t t0) {
  h->phase_calls[phase] += calls;
  if (calls) h->phase_ns[phase] += tide__hrtime() - t0;
}

/* 1. Timers due at the cached clock, in (deadline, start order). The seq
 * limit keeps out timers started while the phase runs, even with a zero
 * delay, so a timer that restarts itself cannot starve the loop. A run of
 * Lua's timers goes to Lua in one call (see ltimer.c). */
static void run_timers(tide_host *h) {
  tide__timer *t;
  h->phase = TIDE_PHASE_TIMERS;
  h->timer_limit = h->timers.next_seq;
  h->timer_fired = 0;
  while (!HALTED(h) && (t = tide__timers_peek(&h->timers)) != NULL &&
         t->deadline <= h->now) {
    tide__ctimer *ct = (tide__ctimer *)t;
    if (!ct->cb) { /* Lua's lists, never due in the pass that armed them */
      uint64_t before = h->timer_fired;
      h->phase_calls[TIDE_PHASE_TIMERS] +=
          tide__call_count(h, h->ref_run_timers);
      if (h->timer_fired == before) break; /* Lua could not run them */
      continue;
    }
    if (t->seq >= h->timer_limit) break; /* started during this phase */
    tide__timers_pop_due(&h->timers, h->now, h->timer_limit);
    if (!h->timer_fired++) {
      h->lag_ns = h->now - t->deadline;
      if (h->lag_ns > h->lag_max_ns) h->lag_max_ns = h->lag_ns;
    }
    h->phase_calls[TIDE_PHASE_TIMERS]++;
    ct->cb(h, ct);
  }
  if (h->timer_fired) h->phase_ns[TIDE_PHASE_TIMERS] += tide__hrtime() - h->now;
}

/* 2. Callbacks deferred from the previous iteration. */
static void run_pending(tide_host *h) {
  int64_t t0 = h->pending.head ? tide__hrtime() : 0;
  if (HALTED(h)) return;
  h->phase = TIDE_PHASE_PENDING;
  phase_end(h, TIDE_PHASE_PENDING, dlist_run(h, &h->pending), t0);
}

/* How long poll may wait, in ns; -1 = until an event arrives. When it is
 * until a timer, *deadline is the timer's. */
static int64_t poll_timeout(tide_host *h, tide_run_mode mode, int64_t *deadline) {
  tide__timer *next;
  int64_t now;
  if (mode == TIDE_RUN_NOWAIT || HALTED(h) || h->imm_count ||
      h->pending.head || h->closing.head || !tide__loop_alive(h))
    return 0;
  next = tide__timers_peek(&h->timers);
  if (!next) return -1;
  /* due within a microsecond of the cached clock (a zero delay): no wait,
   * and no clock to read; else from the clock now, since callbacks took
   * time since the iteration began */
  if (next->deadline - h->now <= 1000) return 0;
  now = tide__hrtime();
  *deadline = next->deadline;
  return next->deadline > now ? next->deadline - now : 0;
}

volatile sig_atomic_t tide__poll_wanted;

static void poll_timer_cb(evutil_socket_t fd, short what, void *arg) {
  tide_host *h = arg;
  (void)fd, (void)what;
  h->poll_deadline = 0; /* it only ends the wait */
}

/* 3. Wait for I/O and run its callbacks. When no event is registered with
 * libevent and there is nothing to wait for, the system call is skipped.
 * A wait until a timer arms the poll timer, which stays armed while the
 * next wait is until the same deadline (usually: a server's timers lie
 * further ahead than one iteration), rather than an add and a delete of a
 * libevent timer per iteration. */
static void run_poll(tide_host *h, tide_run_mode mode) {
  int64_t deadline = 0, timeout = poll_timeout(h, mode, &deadline), t0, t1;
  uint64_t calls0 = h->phase_calls[TIDE_PHASE_POLL];
  if (HALTED(h)) return;
  h->phase = TIDE_PHASE_POLL;
  tide__pool_flush(h); /* jobs submitted since: queued before we wait */
  h->poll_end = 0;
  if (timeout == 0 && !tide__poll_wanted && !tide__posts_waiting(h) &&
      event_base_get_num_events(h->base, EVENT_BASE_COUNT_ADDED) ==
          h->quiet_events + (h->poll_deadline != 0))
    return;
  t0 = tide__hrtime();
  h->poll_woke = 0;
  if (timeout == 0) {
    event_base_loop(h->base, EVLOOP_NONBLOCK);
  } else {
    if (timeout > 0 && deadline != h->poll_deadline) {
      struct timeval tv = {(time_t)(timeout / 1000000000),
                           (suseconds_t)((timeout % 1000000000 + 999) / 1000)};
      if (!h->poll_timer)
        h->poll_timer = evtimer_new(h->base, poll_timer_cb, h);
      if (h->poll_timer && evtimer_add(h->poll_timer, &tv) == 0)
        h->poll_deadline = deadline;
    } else if (timeout < 0 && h->poll_deadline) { /* no timer left */
      evtimer_del(h->poll_timer);
      h->poll_deadline = 0;
    }
    event_base_loop(h->base, EVLOOP_ONCE);
  }
  h->poll_end = t1 = tide__hrtime();
  /* Idle time ends at the first callback (tide__call marks it). */
  h->idle_ns += (h->poll_woke ? h->poll_woke : t1) - t0;
  if (h->phase_calls[TIDE_PHASE_POLL] != calls0)
    h->phase_ns[TIDE_PHASE_POLL] += t1 - (h->poll_woke ? h->poll_woke : t1);
}

/* 4. Immediates queued before the phase started, FIFO. */
static void run_check(tide_host *h) {
  uint64_t limit = h->imm_seq, n = 0;
  int64_t t0 = h->imm_head ? (h->poll_end ? h->poll_end : h->now) : 0;
  if (HALTED(h)) return;
  h->phase = TIDE_PHASE_CHECK;
  while (!HALTED(h) && h->imm_head && h->imm_head->seq < limit) {
    tide__imm *im = h->imm_head;
    tide__imm_remove(h, im);
    im->cb(h, im);
    n++;
  }
  phase_end(h, TIDE_PHASE_CHECK, n, t0);
}

/* 5. Close callbacks of handles closed during this iteration. */
static void run_closing(tide_host *h) {
  int64_t t0 = h->closing.head ? tide__hrtime() : 0;
  if (HALTED(h)) return;
  h->phase = TIDE_PHASE_CLOSE;
  phase_end(h, TIDE_PHASE_CLOSE, dlist_run(h, &h->closing), t0);
}

static void stop_batches(tide_host *h, int on);

int tide_loop_run(tide_host *h, tide_run_mode mode) {
  int alive = tide__loop_alive(h);
  if (h->stop) stop_batches(h, 0);
  h->stop = 0;
  h->running++;
  while (alive && !HALTED(h)) {
    h->now = tide__hrtime();
    h->iterations++;
    run_timers(h);
    run_pending(h);
    run_poll(h, mode);
    run_check(h);
    run_closing(h);
    alive = tide__loop_alive(h);
    if (mode != TIDE_RUN_DEFAULT) break;
  }
  h->running--;
  h->phase = TIDE_PHASE_MAIN;
  if (h->exiting) return -1;
  return alive ? 1 : 0;
}

/* Lua's batches (a run of timers, the immediates of a check phase) are
 * told too, or they would go on to their end. */
static void stop_batches(tide_host *h, int on) {
  if (!h->L || h->ref_stop == LUA_NOREF) return;
  lua_rawgeti(h->L, LUA_REGISTRYINDEX, h->ref_stop);
  lua_pushboolean(h->L, on);
  if (lua_pcall(h->L, 1, 0, 0) != 0) lua_pop(h->L, 1);
}

void tide_stop(tide_host *h) {
  h->stop = 1;
  stop_batches(h, 1);
}

/* For tide_host_free: nothing fires or polls any more; the deferred
 * callbacks (clean-ups of requests and handles) still run. */
void tide__loop_shutdown(tide_host *h) {
  tide__timers_free(&h->timers);
  tide__timers_init(&h->timers);
  while (h->imm_head) tide__imm_remove(h, h->imm_head);
  h->stop = h->exiting = 0;
  while (h->pending.head || h->closing.head) {
    run_pending(h);
    run_closing(h);
  }
  h->phase = TIDE_PHASE_MAIN;
}
