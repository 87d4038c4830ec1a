/*
 * host/internal.h - what the core's files share (the `tide__` names).
 */
#ifndef TIDE_INTERNAL_H
#define TIDE_INTERNAL_H

#include <stddef.h>
#include <signal.h>
#include <stdint.h>

#include "tide.h"
#include "timer.h"

struct event;

enum tide__phase {
  TIDE_PHASE_TIMERS,
  TIDE_PHASE_PENDING,
  TIDE_PHASE_POLL,
  TIDE_PHASE_CHECK,
  TIDE_PHASE_CLOSE,
  TIDE_PHASE_MAIN, /* before the loop starts, and between runs */
  TIDE_PHASE_COUNT_LOOP = TIDE_PHASE_MAIN
};

extern const char *const tide__phase_names[];

/* A deferred callback: queued for the pending phase (tide__defer) or the
 * close phase (tide__close_later). The struct is usually embedded in the
 * handle or request it belongs to. */
typedef struct tide__deferred tide__deferred;
typedef void (*tide__deferred_cb)(tide_host *h, tide__deferred *d);
struct tide__deferred {
  tide__deferred *next;
  tide__deferred_cb cb;
  int queued;
};

typedef struct tide__dlist {
  tide__deferred *head, *tail;
} tide__dlist;

/* A timer of the host: every timer in h->timers is one of these. */
typedef struct tide__ctimer tide__ctimer;
struct tide__ctimer {
  tide__timer t;
  void (*cb)(tide_host *h, tide__ctimer *ct);
};

/* An immediate (check phase); a node of the host's FIFO. */
typedef struct tide__imm tide__imm;
struct tide__imm {
  tide__imm *next, *prev;
  void (*cb)(tide_host *h, tide__imm *im);
  uint64_t seq; /* push order: the check phase runs those older than it */
  int queued;
  int ref; /* keeps the loop alive while queued */
};

struct tide_host {
  lua_State *L;
  struct event_base *base;
  struct event *poll_timer; /* bounds the poll phase's wait */
  int64_t poll_deadline;    /* the deadline it is armed for, or 0 */
  tide__timers timers;

  int64_t now;   /* cached monotonic ns, updated at each iteration's start */
  int64_t start; /* monotonic ns at creation */
  int phase;
  int running;   /* inside tide_loop_run */
  int stop;      /* tide_stop was called */
  int exiting;   /* tide.exit or main task error: code in exit_code */
  int exit_code;
  int freeing;   /* tide_host_free runs: the pool takes no more jobs */

  int refs; /* referenced, active handles: the loop is alive while > 0 */

  /* ltimer.c: Lua's timer slots, and its nodes in the check and close
   * queues */
  void **lt_chunks;
  int32_t lt_nchunks, lt_capchunks, lt_free;
  uint64_t timer_limit; /* the timers phase runs timers with seq below */
  uint64_t timer_fired; /* timers run in this timers phase */
  tide__imm lua_imm;
  tide__deferred lua_close;

  tide__imm *imm_head, *imm_tail;
  size_t imm_count;
  uint64_t imm_seq;
  tide__dlist pending, closing;

  /* Lua functions of lua/tide/core.lua called by the loop (registry refs) */
  int ref_run_task;   /* run_task(fn, ...): fn in a pooled coroutine */
  int ref_run_direct; /* run_direct(fn, ...): fn in the main state */
  int ref_start;      /* start(fn, main): fn as a new task, run at once */
  int ref_run_timers;     /* run_timers(): a run of due Lua timers */
  int ref_run_immediates; /* run_immediates(): Lua's check-phase queue */
  int ref_run_closing;    /* run_closing(): Lua's close callbacks */
  int ref_anchors;    /* the anchors table (see tide__anchor) */
  int *free_slots;    /* free slots of the anchors table */
  int nfree, cap_free, next_slot;

  /* tide.stats() */
  uint64_t iterations;
  uint64_t phase_calls[TIDE_PHASE_COUNT_LOOP];
  int64_t phase_ns[TIDE_PHASE_COUNT_LOOP];
  int64_t idle_ns;   /* time spent waiting in poll */
  int64_t poll_woke; /* when poll's first callback ran, or 0 */
  int64_t poll_end;  /* when poll returned, or 0 when it was skipped */
  /* Events always added that need no poll unless tide__poll_wanted or
   * tide__posts_waiting says so (the default signal handlers' wake-up,
   * tide_post's): the poll phase still skips its system call when nothing
   * else is added. */
  int quiet_events;
  int64_t lag_ns;  /* how late the last timer that fired was */
  int64_t lag_max_ns;
  int threads;     /* the pool's size */
  struct tide__pool *pool; /* pool.c; NULL until first used */
  tide__deferred pool_cancel; /* pool.c: cancelled jobs' done callbacks */
  int ref_complete; /* core.lua's complete(req, ...) (see request.c) */
  int ref_blocking; /* core.lua's blocking(start) -> waiting function */
  int ref_stop;     /* core.lua's stop_batches() (see tide_stop) */

  tide_options opts;

  /* host.c: the Lua state's allocator (LuaJIT's own, wrapped to count
   * and limit), tide_post's queue, tide_call's trampoline */
  lua_Alloc alloc_f;
  void *alloc_ud;
  size_t mem_used, mem_limit;
  struct tide__posts *posts;
  int ref_call;
  /* modules/plugin.c: the sandbox's budgets (NULL until a plugin loads);
   * tide__call marks each entry from the loop into Lua for it */
  struct tide__sandbox *sandbox;
};

/* host.c: counts the Lua state's bytes in h->mem_used from now on (the
 * memory limit and plugin budgets need it; idempotent) */
void tide__count_memory(tide_host *h);

/* modules/plugin.c: a new run of Lua code begins (no plugin code has run
 * since the last one) */
void tide__sandbox_boundary(tide_host *h);

/* clock */
int64_t tide__hrtime(void);

/* loop.c */
void tide__defer(tide_host *h, tide__deferred *d, tide__deferred_cb cb);
void tide__close_later(tide_host *h, tide__deferred *d, tide__deferred_cb cb);
void tide__imm_push(tide_host *h, tide__imm *im);
void tide__imm_remove(tide_host *h, tide__imm *im);
int tide__loop_alive(const tide_host *h);
/* A handle's share of h->refs: pass whether it counted so far and whether
 * it should now (active and referenced); h->refs follows, and the new
 * state is returned to store back (it fits a 1-bit field). */
static inline unsigned tide__refs_track(tide_host *h, unsigned counted,
                                        unsigned want) {
  want = want != 0;
  if (want != counted) h->refs += want ? 1 : -1;
  return want;
}
void tide__loop_shutdown(tide_host *h);

/* host.c: calls into the Lua scheduler. fn_ref is h->ref_run_task or
 * h->ref_run_direct; the nargs values on top of h->L are the arguments
 * (the function to run first). Errors are reported, never raised. */
void tide__call(tide_host *h, int fn_ref, int nargs);
void tide__exit(tide_host *h, int code);
/* Calls the Lua function of fn_ref with no arguments; returns the number it
 * returns (how many callbacks it ran), 0 on failure. */
int64_t tide__call_count(tide_host *h, int fn_ref);

/* host.c: anchors keep a Lua value alive while C holds on to it (an armed
 * timer, a queued immediate, a pending operation): a slot in one table,
 * with the free slots kept in C. */
int tide__anchor(tide_host *h, lua_State *L, int idx);
void tide__unanchor(tide_host *h, lua_State *L, int slot);
void tide__push_anchor(tide_host *h, lua_State *L, int slot);

/* ltimer.c (also called from Lua through the FFI) */
int32_t tide__lt_start_at(tide_host *h, int32_t id, double deadline,
                          int32_t ref);
void tide__lt_stop(tide_host *h, int32_t id);
int32_t tide__lt_pop(tide_host *h);
double tide__lt_next(tide_host *h);
double tide__lt_clock(tide_host *h);
double tide__lt_cached(tide_host *h);
double tide__lt_now(tide_host *h);
void tide__lt_free_all(tide_host *h);
void tide__lua_imm_set(tide_host *h, int32_t queued, int32_t refd);
void tide__lua_close_arm(tide_host *h);

/* pool.c */
void tide__pool_stats(tide_host *h, int *threads, size_t *queued,
                      int *running);
void tide__pool_shutdown(tide_host *h);
void tide__pool_flush(tide_host *h);

/* loop.c: set (from a signal handler) when a quiet event has something
 * to deliver; the poll phase then polls. */
extern volatile sig_atomic_t tide__poll_wanted;
/* 1 when another thread has posted work the loop has not taken yet */
int tide__posts_waiting(const tide_host *h);

/* request.c */
void tide__open_requests(lua_State *L);
/* Wakes the task waiting (tide._await) on the object under the nargs - 1
 * results on top of h->L, handing it those results; from a loop callback
 * (a libevent event of a module, say). */
void tide__complete(tide_host *h, int nargs);

/* core.c: the C half of `require "tide"` */
int tide__open_core(lua_State *L);

/* modules/: the C modules built in, opened by require "tide.<name>" (or,
 * for those with a Lua half in lua/tide/<name>.lua, "tide.<name>.c").
 * A module declares its opener with this macro at the start of a line:
 *   TIDE_MODULE("tide.fs.c", tide__open_fs) { ... }
 * and the build finds it there (CMakeLists.txt writes the table
 * tide__c_modules from every such line in the C files of modules/). */
#define TIDE_MODULE(name, fn) int fn(lua_State *L)
extern const luaL_Reg tide__c_modules[];

/* lua_modules.c (generated): the embedded lua/tide/ *.lua files */
typedef struct tide__lua_module {
  const char *name;
  const unsigned char *code;
  size_t size;
} tide__lua_module;
extern const tide__lua_module tide__lua_modules[];

#endif
