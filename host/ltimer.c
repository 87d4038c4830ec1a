/*
 * host/ltimer.c - the C side of the timers, immediates and close callbacks
 * that Lua creates (tide.after, tide.every, tide.immediate, handle:close).
 *
 * These are the hottest calls of the core, so lua/tide/core.lua calls them
 * through LuaJIT's FFI (function pointers handed over by core.c) instead of
 * the Lua C API: they take and return plain numbers and never touch a
 * lua_State.
 *
 * A Lua timer is a numbered slot here (the number is its index in Lua's
 * slot table, which holds the callback). Slots live in chunks that never
 * move, because the timer structure links them; free slots form a list.
 * The timers phase hands a run of due Lua timers to Lua in one call:
 * tide__lt_pop gives them one at a time, and gives 0 at the first timer that
 * is not due, not Lua's, or when the loop is stopping.
 *
 * Immediates and close callbacks queue in Lua; Lua keeps one node in the
 * check phase's FIFO (and one in the close list) armed while its own queue
 * has work, and the loop calls Lua once per node.
 */
#include <stdlib.h>

#include "internal.h"

#define CHUNK 1024
#define MAX_DELAY 1e9 /* seconds (about 31 years); keeps deadlines in int64 */

typedef struct lt {
  tide__ctimer ct; /* ct.cb == NULL marks a Lua timer */
  int64_t interval; /* ns; 0 = one-shot */
  int32_t id;
  int32_t next_free;
  unsigned char ref, used;
} lt;

static lt *slot(tide_host *h, int32_t id) {
  return &((lt *)h->lt_chunks[(id - 1) / CHUNK])[(id - 1) % CHUNK];
}

static int32_t slot_alloc(tide_host *h) {
  int32_t id;
  lt *s;
  if (!h->lt_free) {
    int32_t n = h->lt_nchunks, i;
    lt *chunk;
    if (n == h->lt_capchunks) {
      int cap = n ? n * 2 : 16;
      void **p = realloc(h->lt_chunks, (size_t)cap * sizeof *p);
      if (!p) return -1;
      h->lt_chunks = p;
      h->lt_capchunks = cap;
    }
    chunk = malloc(CHUNK * sizeof *chunk);
    if (!chunk) return -1;
    h->lt_chunks[n] = chunk;
    h->lt_nchunks = n + 1;
    for (i = CHUNK; i > 0; i--) { /* push so that low ids come out first */
      chunk[i - 1].id = n * CHUNK + i;
      chunk[i - 1].used = 0;
      chunk[i - 1].next_free = h->lt_free;
      h->lt_free = n * CHUNK + i;
    }
  }
  id = h->lt_free;
  s = slot(h, id);
  h->lt_free = s->next_free;
  tide__timer_init(&s->ct.t);
  s->ct.cb = NULL;
  s->used = 1;
  return id;
}

static void slot_free(tide_host *h, int32_t id, lt *s) {
  s->used = 0;
  s->next_free = h->lt_free;
  h->lt_free = id;
}

static int64_t to_ns(double s) {
  if (!(s > 0)) return 0; /* negative and NaN: 0 (Lua rejects NaN first) */
  if (s > MAX_DELAY) s = MAX_DELAY;
  return (int64_t)(s * 1e9 + 0.5);
}

static lt *valid(tide_host *h, int32_t id) {
  lt *s;
  if (id <= 0 || id > h->lt_nchunks * CHUNK) return NULL;
  s = slot(h, id);
  return s->used ? s : NULL;
}

/* Arms slot id (0: a new slot) to fire after delay seconds; with repeat,
 * then every delay seconds. Returns the slot, or -1 when memory ran out
 * (a slot that was armed is then freed). */
int32_t tide__lt_start(tide_host *h, int32_t id, double delay, int32_t repeat,
                       int32_t ref) {
  int64_t ns = to_ns(delay);
  lt *s = id ? valid(h, id) : NULL;
  int was;
  if (!s) {
    if ((id = slot_alloc(h)) < 0) return -1;
    s = slot(h, id);
  }
  was = tide__timer_active(&s->ct.t);
  /* From the clock read now, not the iteration's cached one (as Node does
   * for setTimeout): a task that ran long before it sleeps still sleeps the
   * whole delay. The timers phase compares with the cached clock, so such
   * a timer never fires in the pass that started it. */
  if (tide__timer_start(&h->timers, &s->ct.t, tide__hrtime(), ns) != 0) {
    if (was && s->ref) h->refs--;
    slot_free(h, id, s);
    return -1;
  }
  if (was && s->ref) h->refs--;
  s->ref = ref != 0;
  if (s->ref) h->refs++;
  s->interval = repeat ? (ns > 0 ? ns : 1) : 0;
  return id;
}

/* Disarms slot id and frees it. */
void tide__lt_stop(tide_host *h, int32_t id) {
  lt *s = valid(h, id);
  if (!s) return;
  if (tide__timer_active(&s->ct.t)) {
    tide__timer_stop(&h->timers, &s->ct.t);
    if (s->ref) h->refs--;
  }
  slot_free(h, id, s);
}

void tide__lt_ref(tide_host *h, int32_t id, int32_t ref) {
  lt *s = valid(h, id);
  ref = ref != 0;
  if (!s || s->ref == ref) return;
  if (tide__timer_active(&s->ct.t)) h->refs += ref ? 1 : -1;
  s->ref = (unsigned char)ref;
}

/* The next due Lua timer of this timers phase: id while it stays armed (a
 * repeating timer, re-armed), -id when its slot was freed (one-shot), 0
 * when the run of due Lua timers ends. */
int32_t tide__lt_pop(tide_host *h) {
  tide__timer *t;
  lt *s;
  int32_t id;
  int64_t deadline;
  if (h->stop || h->exiting || h->phase != TIDE_PHASE_TIMERS) return 0;
  t = tide__timers_peek(&h->timers);
  if (!t || t->deadline > h->now || t->seq >= h->timer_limit ||
      ((tide__ctimer *)t)->cb)
    return 0;
  deadline = t->deadline;
  tide__timers_pop_due(&h->timers, h->now, h->timer_limit);
  s = (lt *)t;
  id = s->id;
  if (!h->timer_fired++) {
    h->lag_ns = h->now - deadline;
    if (h->lag_ns > h->lag_max_ns) h->lag_max_ns = h->lag_ns;
  }
  h->phase_calls[TIDE_PHASE_TIMERS]++;
  if (s->interval) {
    /* no drift: previous deadline plus the interval, past beats skipped */
    int64_t next = deadline + s->interval;
    if (next <= h->now)
      next += ((h->now - next) / s->interval + 1) * s->interval;
    if (tide__timer_start_at(&h->timers, &s->ct.t, next, s->interval) == 0)
      return id;
  }
  if (s->ref) h->refs--;
  slot_free(h, id, s);
  return -id;
}

int32_t tide__lt_active(tide_host *h, int32_t id) {
  lt *s = valid(h, id);
  return s && tide__timer_active(&s->ct.t);
}

double tide__lt_now(tide_host *h) { return (double)h->now / 1e9; }

void tide__lt_free_all(tide_host *h) {
  int32_t c;
  for (c = 0; c < h->lt_nchunks; c++) free(h->lt_chunks[c]);
  free(h->lt_chunks);
  h->lt_chunks = NULL;
  h->lt_nchunks = h->lt_capchunks = 0;
  h->lt_free = 0;
}

/* --- Lua's immediates and close callbacks --------------------------------- */

static void imm_node_run(tide_host *h, tide__imm *im) {
  (void)im;
  /* the loop counted this node as one callback; Lua ran n */
  h->phase_calls[TIDE_PHASE_CHECK] += tide__call_count(h, h->ref_run_immediates) - 1;
}

/* Lua's immediate queue holds `queued` immediates, `refd` of them
 * referenced: keep the node in the check phase's FIFO while any are. */
void tide__lua_imm_set(tide_host *h, int32_t queued, int32_t refd) {
  tide__imm *im = &h->lua_imm;
  im->cb = imm_node_run;
  if (im->queued && (queued == 0 || im->ref != (refd > 0)))
    tide__imm_remove(h, im);
  im->ref = refd > 0;
  if (queued > 0) tide__imm_push(h, im);
}

static void close_node_run(tide_host *h, tide__deferred *d) {
  (void)d;
  h->phase_calls[TIDE_PHASE_CLOSE] += tide__call_count(h, h->ref_run_closing) - 1;
}

/* Lua queued a close callback: run Lua's close queue in the close phase. */
void tide__lua_close_arm(tide_host *h) {
  tide__close_later(h, &h->lua_close, close_node_run);
}

