/*
 * host/ltimer.c - the C side of the timers, immediates and close callbacks
 * that Lua creates (tide.after, tide.every, tide.immediate, handle:close).
 *
 * These are the hottest calls of the core, so lua/tide/core.lua calls them
 * through LuaJIT's FFI (function pointers handed over by core.c) instead of
 * the Lua C API: they take and return plain numbers and never touch a
 * lua_State.
 *
 Lua keeps its timers in one FIFO list per delay (see core.lua); each
 * list has one C timer here, a numbered slot, armed at the list's first
 * deadline. Slots live in chunks that never move, because the timer
 * structure links them; free slots form a list. The timers phase hands the
 * due lists to Lua in one call: tide__lt_pop gives them one at a time, and
 * 0 at the first timer that is not due, not Lua's, or when the loop is
 * stopping. Times cross the FFI as nanoseconds since the host started, in
 * doubles.
 *
 * Immediates and close callbacks queue in Lua; Lua keeps one node in the
 * check phase's FIFO (and one in the close list) armed while its own queue
 * has work, and the loop calls Lua once per node.
 */
#include <stdio.h>
#include <stdlib.h>

#include "internal.h"

#define CHUNK 1024

typedef struct lt {
  tide__ctimer ct; /* ct.cb == NULL marks a Lua timer */
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

static lt *valid(tide_host *h, int32_t id) {
  lt *s;
  if (id <= 0 || id > h->lt_nchunks * CHUNK) return NULL;
  s = slot(h, id);
  return s->used ? s : NULL;
}

/* Arms slot id (0: a new slot) at deadline (ns since the host started).
 * Returns the slot, or -1 when memory ran out (a slot that was armed is
 * then freed). */
int32_t tide__lt_start_at(tide_host *h, int32_t id, double deadline,
                          int32_t ref) {
  lt *s = id ? valid(h, id) : NULL;
  int was;
  if (!s) {
    if ((id = slot_alloc(h)) < 0) return -1;
    s = slot(h, id);
  }
  was = tide__timer_active(&s->ct.t); /* start_at restarts it in place */
  if (tide__timer_start_at(&h->timers, &s->ct.t, h->start + (int64_t)deadline,
                           0) != 0) {
    if (was && s->ref) h->refs--;
    slot_free(h, id, s);
    return -1;
  }
  if (was && s->ref) h->refs--;
  s->ref = ref != 0;
  if (s->ref) h->refs++;
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

/* The next due list of this timers phase: its slot, which is freed (the
 * list's C timer is one-shot); 0 when the run of due Lua timers ends. Lua
 * timers are never due in the pass that started them (they wait at least
 * 1 ns past the clock read then), so they need no seq limit. */
int32_t tide__lt_pop(tide_host *h) {
  tide__timer *t;
  lt *s;
  if (h->stop || h->exiting || h->phase != TIDE_PHASE_TIMERS) return 0;
  t = tide__timers_peek(&h->timers);
  if (!t || t->deadline > h->now || ((tide__ctimer *)t)->cb) return 0;
  tide__timer_stop(&h->timers, t);
  if (!h->timer_fired++) {
    h->lag_ns = h->now - t->deadline;
    if (h->lag_ns > h->lag_max_ns) h->lag_max_ns = h->lag_ns;
  }
  s = (lt *)t;
  if (s->ref) h->refs--;
  slot_free(h, s->id, s);
  return s->id;
}

/* The deadline of the first armed timer of any kind, or -1. */
double tide__lt_next(tide_host *h) {
  tide__timer *t = tide__timers_peek(&h->timers);
  return t ? (double)(t->deadline - h->start) : -1;
}

/* The clock read now, and the iteration's cached clock. */
double tide__lt_clock(tide_host *h) {
  return (double)(tide__hrtime() - h->start);
}
double tide__lt_cached(tide_host *h) { return (double)(h->now - h->start); }

/* tide.now(): seconds of the monotonic clock, cached per iteration */
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

/* Lua runs its immediates and returns how many ran (the loop counted this
 * node as one callback) and how many are queued and referenced now. */
static void imm_node_run(tide_host *h, tide__imm *im) {
  lua_State *L = h->L;
  (void)im;
  lua_rawgeti(L, LUA_REGISTRYINDEX, h->ref_run_immediates);
  if (lua_pcall(L, 0, 3, 0) != 0) {
    fprintf(stderr, "tide: %s\n", lua_tostring(L, -1));
    lua_pop(L, 1);
    return;
  }
  h->phase_calls[TIDE_PHASE_CHECK] += lua_tointeger(L, -3) - 1;
  tide__lua_imm_set(h, (int32_t)lua_tointeger(L, -2),
                    (int32_t)lua_tointeger(L, -1));
  lua_pop(L, 3);
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

