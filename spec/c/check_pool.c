/*
 * spec/c/check_pool.c - the worker pool (host/pool.c) and blocking calls
 * from Lua (host/request.c), tested through host/tide.h and
 * host/internal.h with libcheck and a real host.
 *
 * Jobs are malloc'd and freed by their done function (done owns the job),
 * so that under AddressSanitizer a pool that touches a job after handing it
 * back shows as a use-after-free. What a job saw is kept in recs[id]:
 * where its work ran, whether it ran, and when, where and how its done ran.
 *
 * Work that must stay running while the test looks blocks on a gate (a
 * condition variable the test opens); the test waits for the gate's
 * waiting count, or for the pool's counters, with a deadline, never for a
 * fixed time. Counters shared with pool threads use the __atomic builtins.
 *
 * The regression tests at the end pin bugs found while writing these.
 */
#define _GNU_SOURCE
#include <check.h>
#include <dirent.h>
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <event2/event.h>

#include "internal.h"

/* ---- helpers ------------------------------------------------------------ */

#define LOAD(x) __atomic_load_n(&(x), __ATOMIC_SEQ_CST)
#define STORE(x, v) __atomic_store_n(&(x), (v), __ATOMIC_SEQ_CST)
#define INC(x) __atomic_add_fetch(&(x), 1, __ATOMIC_SEQ_CST)
#define DEC(x) __atomic_sub_fetch(&(x), 1, __ATOMIC_SEQ_CST)

static double seconds(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void sleep_ms(int ms) {
  struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
  while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {}
}

/* Polls cond every 0.2 ms until it holds; fails the test after secs. */
#define WAIT_UNTIL(cond, secs)                                          \
  do {                                                                  \
    double until_ = seconds() + (secs);                                 \
    while (!(cond)) {                                                   \
      ck_assert_msg(seconds() < until_, "timed out waiting for: %s",    \
                    #cond);                                             \
      usleep(200);                                                      \
    }                                                                   \
  } while (0)

static tide_host *new_host(int threads) {
  char err[256] = "";
  tide_options o;
  tide_host *h;
  memset(&o, 0, sizeof o);
  o.threads = threads;
  h = tide_host_new(&o, err, sizeof err);
  ck_assert_msg(h != NULL, "tide_host_new: %s", err);
  return h;
}

static int pool_threads(tide_host *h) {
  int threads, running;
  size_t queued;
  tide__pool_stats(h, &threads, &queued, &running);
  return threads;
}

static size_t pool_queued(tide_host *h) {
  int threads, running;
  size_t queued;
  tide__pool_stats(h, &threads, &queued, &running);
  return queued;
}

static int pool_running(tide_host *h) {
  int threads, running;
  size_t queued;
  tide__pool_stats(h, &threads, &queued, &running);
  return running;
}

/* the gate: work blocks in gate_pass until the test opens it */
static pthread_mutex_t gate_m = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t gate_cv = PTHREAD_COND_INITIALIZER;
static int gate_is_open, gate_waiting;

static void gate_reset(void) {
  pthread_mutex_lock(&gate_m);
  gate_is_open = 0;
  gate_waiting = 0;
  pthread_mutex_unlock(&gate_m);
}

static void gate_pass(void) {
  struct timespec until;
  pthread_mutex_lock(&gate_m);
  gate_waiting++;
  clock_gettime(CLOCK_REALTIME, &until);
  until.tv_sec += 20; /* a test that never opens it fails, not hangs */
  while (!gate_is_open)
    if (pthread_cond_timedwait(&gate_cv, &gate_m, &until) == ETIMEDOUT) break;
  gate_waiting--;
  pthread_mutex_unlock(&gate_m);
}

static void gate_open(void) {
  pthread_mutex_lock(&gate_m);
  gate_is_open = 1;
  pthread_cond_broadcast(&gate_cv);
  pthread_mutex_unlock(&gate_m);
}

static int waiting_at_gate(void) {
  int n;
  pthread_mutex_lock(&gate_m);
  n = gate_waiting;
  pthread_mutex_unlock(&gate_m);
  return n;
}

/* Opens the gate from another thread after ms (for when the test thread is
 * itself blocked, in tide_host_free). */
static void *opener_main(void *arg) {
  sleep_ms((int)(intptr_t)arg);
  gate_open();
  return NULL;
}

static pthread_t gate_open_after(int ms) {
  pthread_t t;
  ck_assert_int_eq(
      pthread_create(&t, NULL, opener_main, (void *)(intptr_t)ms), 0);
  return t;
}

/* ---- jobs ------------------------------------------------------------- */

enum { MAXJOBS = 128 };

typedef struct rec {
  int ran;               /* work calls (atomic) */
  pthread_t work_thread;
  int signals_blocked;   /* work saw SIGINT..SIGCHLD all blocked */
  int done_calls;
  int cancelled;
  int done_phase;
  uint64_t done_iter;
  pthread_t done_thread;
  int ran_before_done;   /* work had run when done ran */
} rec;

static rec recs[MAXJOBS];
static int work_order[MAXJOBS], nwork; /* nwork: atomic */
static int done_order[MAXJOBS], ndone;
static int cur_slow, max_slow, cur_fast; /* atomic */
static int host_freed, late_done;
static pthread_t loop_thread;

typedef struct mjob {
  tide_job job;
  tide_host *h;
  int id;
  int gated;
  int sleep_ms;
  void (*then)(struct mjob *m); /* runs in done, before the job is freed */
} mjob;

static void reset_jobs(void) {
  memset(recs, 0, sizeof recs);
  nwork = ndone = 0;
  cur_slow = max_slow = cur_fast = 0;
  host_freed = late_done = 0;
  loop_thread = pthread_self();
  gate_reset();
}

static int all_signals_blocked(void) {
  static const int sigs[] = {SIGINT, SIGTERM, SIGHUP, SIGCHLD, SIGPIPE,
                             SIGUSR1, SIGUSR2, SIGALRM, SIGWINCH, SIGQUIT};
  sigset_t cur;
  size_t i;
  if (pthread_sigmask(SIG_BLOCK, NULL, &cur) != 0) return 0;
  for (i = 0; i < sizeof sigs / sizeof sigs[0]; i++)
    if (sigismember(&cur, sigs[i]) != 1) return 0;
  return 1;
}

static void work(tide_job *j) {
  mjob *m = (mjob *)j;
  rec *r = &recs[m->id];
  int n;
  r->work_thread = pthread_self();
  r->signals_blocked = all_signals_blocked();
  work_order[INC(nwork) - 1] = m->id;
  if (m->job.slow) {
    n = INC(cur_slow);
    for (;;) { /* max_slow = max(max_slow, n) */
      int old = LOAD(max_slow);
      if (n <= old ||
          __atomic_compare_exchange_n(&max_slow, &old, n, 0, __ATOMIC_SEQ_CST,
                                      __ATOMIC_SEQ_CST))
        break;
    }
  } else {
    INC(cur_fast);
  }
  if (m->gated) gate_pass();
  if (m->sleep_ms) sleep_ms(m->sleep_ms);
  if (m->job.slow)
    DEC(cur_slow);
  else
    DEC(cur_fast);
  INC(r->ran); /* last: the test waits on it */
}

static void done(tide_job *j, int cancelled) {
  mjob *m = (mjob *)j;
  rec *r = &recs[m->id];
  if (LOAD(host_freed)) INC(late_done);
  r->done_calls++;
  r->cancelled = cancelled;
  r->done_phase = m->h->phase;
  r->done_iter = m->h->iterations;
  r->done_thread = pthread_self();
  r->ran_before_done = LOAD(r->ran);
  done_order[ndone++] = m->id;
  if (m->then) m->then(m);
  memset(m, 0xdd, sizeof *m); /* the pool must not read it any more */
  free(m);
}

static mjob *make_job(tide_host *h, int id, int slow, int gated) {
  mjob *m = calloc(1, sizeof *m);
  ck_assert_ptr_nonnull(m);
  ck_assert_int_lt(id, MAXJOBS);
  m->job.work = work;
  m->job.done = done;
  m->job.slow = slow;
  m->h = h;
  m->id = id;
  m->gated = gated;
  return m;
}

static mjob *submit(tide_host *h, int id, int slow, int gated) {
  mjob *m = make_job(h, id, slow, gated);
  ck_assert_int_eq(tide_pool_submit(h, &m->job), 0);
  return m;
}

static int ran(int id) { return LOAD(recs[id].ran); }

/* ---- eventfds: counting the pool's wake-ups ---------------------------- */

/* The descriptors of this process that are eventfds. */
static int eventfds(int *fds, int max) {
  DIR *d = opendir("/proc/self/fd");
  struct dirent *e;
  int n = 0;
  ck_assert_ptr_nonnull(d);
  while ((e = readdir(d)) != NULL) {
    char path[320], link[64];
    ssize_t len;
    if (e->d_name[0] == '.') continue;
    snprintf(path, sizeof path, "/proc/self/fd/%s", e->d_name);
    len = readlink(path, link, sizeof link - 1);
    if (len < 0) continue;
    link[len] = '\0';
    if (strcmp(link, "anon_inode:[eventfd]") == 0 && n < max)
      fds[n++] = atoi(e->d_name);
  }
  closedir(d);
  return n;
}

static int open_fds(void) {
  DIR *d = opendir("/proc/self/fd");
  struct dirent *e;
  int n = 0;
  ck_assert_ptr_nonnull(d);
  while ((e = readdir(d)) != NULL)
    if (e->d_name[0] != '.') n++;
  closedir(d);
  return n;
}

/* The eventfd the first submit creates (the pool's wake-up). */
static int pool_wake_fd(tide_host *h, int id) {
  int before[64], after[64], nb, na, i, k, found = -1, nfound = 0;
  ck_assert_int_eq(pool_threads(h), 0);
  nb = eventfds(before, 64);
  submit(h, id, 0, 0);
  na = eventfds(after, 64);
  for (i = 0; i < na; i++) {
    int old = 0;
    for (k = 0; k < nb; k++) old |= after[i] == before[k];
    if (!old) found = after[i], nfound++;
  }
  ck_assert_msg(nfound == 1, "expected one new eventfd, found %d", nfound);
  return found;
}

/* How many times the eventfd was written since it was last read
 * (eventfd-count in /proc/self/fdinfo, in hexadecimal). */
static unsigned long long eventfd_count(int fd) {
  char path[64], line[256];
  unsigned long long v = ~0ULL;
  FILE *f;
  snprintf(path, sizeof path, "/proc/self/fdinfo/%d", fd);
  f = fopen(path, "r");
  ck_assert_ptr_nonnull(f);
  while (fgets(line, sizeof line, f))
    if (strncmp(line, "eventfd-count:", 14) == 0)
      v = strtoull(line + 14, NULL, 16);
  fclose(f);
  ck_assert_msg(v != ~0ULL, "no eventfd-count for fd %d", fd);
  return v;
}

/* ---- threads and phases -------------------------------------------------- */

/* Work runs on pool threads, as many at once as the pool has threads; done
 * runs on the loop thread, in the poll phase, once per job. */
START_TEST(test_work_on_pool_threads_done_on_loop_in_poll) {
  tide_host *h = new_host(4);
  int i;
  reset_jobs();
  for (i = 0; i < 4; i++) submit(h, i, 0, 1); /* four at the gate at once */
  for (i = 4; i < 16; i++) submit(h, i, 0, 0);
  tide__pool_flush(h);
  WAIT_UNTIL(waiting_at_gate() == 4, 5);
  ck_assert_int_eq(pool_running(h), 4);
  for (i = 0; i < 4; i++) {
    int k;
    ck_assert(!pthread_equal(recs[i].work_thread, loop_thread));
    for (k = 0; k < i; k++) /* four distinct threads */
      ck_assert(!pthread_equal(recs[i].work_thread, recs[k].work_thread));
  }
  gate_open();
  ck_assert_int_eq(tide_loop_run(h, TIDE_RUN_DEFAULT), 0);
  for (i = 0; i < 16; i++) {
    ck_assert_int_eq(recs[i].ran, 1);
    ck_assert(!pthread_equal(recs[i].work_thread, loop_thread));
    ck_assert_int_eq(recs[i].done_calls, 1);
    ck_assert_int_eq(recs[i].cancelled, 0);
    ck_assert(pthread_equal(recs[i].done_thread, loop_thread));
    ck_assert_str_eq(tide__phase_names[recs[i].done_phase], "poll");
    ck_assert_int_eq(recs[i].ran_before_done, 1);
  }
  ck_assert_int_eq(h->refs, 0);
  tide_host_free(h);
}
END_TEST

/* One thread runs jobs in submission order, ordinary and slow alike; done
 * callbacks come in the same order. */
START_TEST(test_fifo_single_thread) {
  tide_host *h = new_host(1);
  int i;
  reset_jobs();
  submit(h, 0, 0, 1); /* holds the thread while the rest queue up */
  tide__pool_flush(h);
  WAIT_UNTIL(waiting_at_gate() == 1, 5);
  for (i = 1; i < 40; i++) submit(h, i, i % 3 == 0 || i % 7 == 0, 0);
  tide__pool_flush(h);
  ck_assert_int_eq(pool_queued(h), 39);
  gate_open();
  ck_assert_int_eq(tide_loop_run(h, TIDE_RUN_DEFAULT), 0);
  ck_assert_int_eq(nwork, 40);
  ck_assert_int_eq(ndone, 40);
  for (i = 0; i < 40; i++) {
    ck_assert_msg(work_order[i] == i, "work %d ran at %d", work_order[i], i);
    ck_assert_msg(done_order[i] == i, "done %d ran at %d", done_order[i], i);
  }
  tide_host_free(h);
}
END_TEST

/* Many jobs that finish while the loop is busy elsewhere cost one write to
 * the wake-up eventfd, and all their done callbacks run in one poll phase. */
START_TEST(test_completions_batched) {
  tide_host *h = new_host(4);
  int fd, i, round;
  reset_jobs();
  fd = pool_wake_fd(h, 0);
  ck_assert_int_eq(tide_loop_run(h, TIDE_RUN_DEFAULT), 0); /* job 0 */
  ck_assert_int_eq(recs[0].done_calls, 1);
  for (round = 0; round < 2; round++) {
    int base = 1 + round * 50;
    uint64_t it;
    for (i = base; i < base + 50; i++) submit(h, i, i % 2, 0);
    tide__pool_flush(h);
    /* the loop is "busy": not running; wait until every job is handed back
     * (running drops after the hand-off) */
    WAIT_UNTIL(pool_queued(h) == 0 && pool_running(h) == 0, 5);
    for (i = base; i < base + 50; i++) ck_assert_int_eq(ran(i), 1);
    ck_assert_int_eq(eventfd_count(fd), 1);
    it = h->iterations;
    ck_assert_int_eq(tide_loop_run(h, TIDE_RUN_ONCE), 0);
    ck_assert_int_eq(h->iterations, it + 1);
    for (i = base; i < base + 50; i++) {
      ck_assert_int_eq(recs[i].done_calls, 1);
      ck_assert_uint_eq(recs[i].done_iter, it + 1);
      ck_assert_str_eq(tide__phase_names[recs[i].done_phase], "poll");
    }
    ck_assert_int_eq(eventfd_count(fd), 0); /* read by the poll phase */
  }
  tide_host_free(h);
}
END_TEST

/* ---- cancellation -------------------------------------------------------- */

/* A job no thread has taken (queued, or submitted and not yet queued) is
 * taken back: its done(job, 1) runs in the pending phase, its work never. */
START_TEST(test_cancel_queued) {
  tide_host *h = new_host(1);
  mjob *b, *c;
  reset_jobs();
  submit(h, 0, 0, 1);
  tide__pool_flush(h);
  WAIT_UNTIL(waiting_at_gate() == 1, 5);
  b = submit(h, 1, 0, 0);
  submit(h, 2, 1, 0);
  tide__pool_flush(h); /* b and 2 wait in the queues */
  c = submit(h, 3, 0, 0); /* submitted, not yet queued */
  ck_assert_int_eq(pool_queued(h), 3);
  ck_assert_int_eq(h->refs, 4);
  ck_assert_int_eq(tide_pool_cancel(h, &b->job), 1);
  ck_assert_int_eq(tide_pool_cancel(h, &c->job), 1);
  ck_assert_int_eq(tide_pool_cancel(h, &b->job), 0); /* once */
  ck_assert_int_eq(pool_queued(h), 1);
  ck_assert_int_eq(h->refs, 2);
  ck_assert_int_eq(recs[1].done_calls, 0); /* not from inside cancel */
  ck_assert_int_eq(recs[3].done_calls, 0);
  gate_open();
  ck_assert_int_eq(tide_loop_run(h, TIDE_RUN_DEFAULT), 0);
  ck_assert_int_eq(recs[1].done_calls, 1);
  ck_assert_int_eq(recs[1].cancelled, 1);
  ck_assert_int_eq(recs[1].ran, 0);
  ck_assert_str_eq(tide__phase_names[recs[1].done_phase], "pending");
  ck_assert_int_eq(recs[3].done_calls, 1);
  ck_assert_int_eq(recs[3].cancelled, 1);
  ck_assert_int_eq(recs[3].ran, 0);
  ck_assert_str_eq(tide__phase_names[recs[3].done_phase], "pending");
  ck_assert_int_eq(done_order[0], 1); /* in the order they were cancelled */
  ck_assert_int_eq(done_order[1], 3);
  ck_assert_uint_eq(recs[1].done_iter, 1); /* the next pending phase */
  for (int i = 0; i <= 2; i += 2) {
    ck_assert_int_eq(recs[i].done_calls, 1);
    ck_assert_int_eq(recs[i].cancelled, 0);
    ck_assert_int_eq(recs[i].ran, 1);
    ck_assert_str_eq(tide__phase_names[recs[i].done_phase], "poll");
  }
  ck_assert_int_eq(nwork, 2);
  ck_assert_int_eq(h->refs, 0);
  tide_host_free(h);
}
END_TEST

static tide_job kept_job; /* a job whose memory outlives its done */
static int kept_done_calls, kept_cancelled = -1;

static void kept_work(tide_job *j) { (void)j; gate_pass(); }
static void kept_done(tide_job *j, int cancelled) {
  (void)j;
  kept_done_calls++;
  kept_cancelled = cancelled;
}

/* A running job cannot be taken back: cancel returns 0 and its done comes
 * later with cancelled = 0; so does cancel of a job that is done. */
START_TEST(test_cancel_running) {
  tide_host *h = new_host(2);
  mjob *a;
  reset_jobs();
  a = submit(h, 0, 0, 1);
  tide__pool_flush(h);
  WAIT_UNTIL(waiting_at_gate() == 1, 5);
  ck_assert_int_eq(tide_pool_cancel(h, &a->job), 0);
  ck_assert_int_eq(h->refs, 1);
  ck_assert_int_eq(tide_loop_run(h, TIDE_RUN_NOWAIT), 1);
  ck_assert_int_eq(recs[0].done_calls, 0);
  gate_open();
  ck_assert_int_eq(tide_loop_run(h, TIDE_RUN_DEFAULT), 0);
  ck_assert_int_eq(recs[0].done_calls, 1);
  ck_assert_int_eq(recs[0].cancelled, 0);
  ck_assert_int_eq(recs[0].ran, 1);
  ck_assert_str_eq(tide__phase_names[recs[0].done_phase], "poll");

  memset(&kept_job, 0, sizeof kept_job);
  kept_job.work = kept_work;
  kept_job.done = kept_done;
  ck_assert_int_eq(tide_pool_submit(h, &kept_job), 0);
  ck_assert_int_eq(tide_loop_run(h, TIDE_RUN_DEFAULT), 0);
  ck_assert_int_eq(kept_done_calls, 1);
  ck_assert_int_eq(kept_cancelled, 0);
  ck_assert_int_eq(tide_pool_cancel(h, &kept_job), 0); /* done already */
  ck_assert_int_eq(h->refs, 0);
  ck_assert_int_eq(tide_loop_run(h, TIDE_RUN_DEFAULT), 0);
  ck_assert_int_eq(kept_done_calls, 1);
  tide_host_free(h);
}
END_TEST

/* Cancelling before the pool exists, or a NULL job, is a no-op. */
START_TEST(test_cancel_without_pool) {
  tide_host *h = new_host(2);
  tide_job j;
  memset(&j, 0, sizeof j);
  ck_assert_int_eq(tide_pool_cancel(h, &j), 0);
  ck_assert_int_eq(tide_pool_cancel(h, NULL), 0);
  ck_assert_int_eq(pool_threads(h), 0);
  tide_host_free(h);
}
END_TEST

/* ---- the slow class ------------------------------------------------------ */

/* With four threads, slow jobs occupy at most two of them at once; the
 * other two still run ordinary jobs, even ones submitted later. */
START_TEST(test_slow_cap_four_threads) {
  tide_host *h = new_host(4);
  int i;
  reset_jobs();
  for (i = 0; i < 6; i++) submit(h, i, 1, 1);
  tide__pool_flush(h);
  WAIT_UNTIL(LOAD(cur_slow) == 2, 5);
  /* the two idle threads did not take the queued slow jobs: ordinary jobs
   * submitted now run on them at once */
  submit(h, 10, 0, 1);
  submit(h, 11, 0, 1);
  tide__pool_flush(h);
  WAIT_UNTIL(LOAD(cur_fast) == 2, 5);
  ck_assert_int_eq(LOAD(max_slow), 2);
  ck_assert_int_eq(pool_running(h), 4);
  ck_assert_int_eq(pool_queued(h), 4);
  ck_assert_int_eq(waiting_at_gate(), 4);
  gate_open();
  ck_assert_int_eq(tide_loop_run(h, TIDE_RUN_DEFAULT), 0);
  ck_assert_int_eq(LOAD(max_slow), 2); /* also while the rest ran */
  for (i = 0; i < 6; i++) ck_assert_int_eq(recs[i].done_calls, 1);
  ck_assert_int_eq(recs[10].done_calls, 1);
  ck_assert_int_eq(recs[11].done_calls, 1);
  tide_host_free(h);
}
END_TEST

/* The cap is half the threads, at least one: with one thread slow jobs
 * still run; with two, one slow job runs beside an ordinary one. */
START_TEST(test_slow_cap_small_pools) {
  tide_host *h = new_host(1);
  reset_jobs();
  submit(h, 0, 1, 0);
  submit(h, 1, 1, 0);
  ck_assert_int_eq(tide_loop_run(h, TIDE_RUN_DEFAULT), 0);
  ck_assert_int_eq(recs[0].done_calls, 1);
  ck_assert_int_eq(recs[1].done_calls, 1);
  ck_assert_int_eq(recs[1].cancelled, 0);
  tide_host_free(h);

  h = new_host(2);
  reset_jobs();
  submit(h, 0, 1, 1);
  submit(h, 1, 1, 1);
  submit(h, 2, 0, 1);
  tide__pool_flush(h);
  WAIT_UNTIL(waiting_at_gate() == 2, 5);
  ck_assert_int_eq(LOAD(cur_slow), 1);
  ck_assert_int_eq(LOAD(cur_fast), 1);
  ck_assert_int_eq(pool_queued(h), 1);
  gate_open();
  ck_assert_int_eq(tide_loop_run(h, TIDE_RUN_DEFAULT), 0);
  ck_assert_int_eq(LOAD(max_slow), 1);
  ck_assert_int_eq(ndone, 3);
  tide_host_free(h);
}
END_TEST

/* ---- the loop's lifetime ------------------------------------------------- */

static void resubmit(mjob *m) {
  if (m->id < 5) {
    mjob *next = make_job(m->h, m->id + 1, 0, 0);
    next->then = resubmit;
    ck_assert_int_eq(tide_pool_submit(m->h, &next->job), 0);
  }
}

/* A job in flight keeps the loop alive (one ref each) and the loop sleeps
 * while it waits for it; jobs submitted from done callbacks run too. */
START_TEST(test_jobs_keep_loop_alive) {
  tide_host *h = new_host(2);
  mjob *m;
  double t0;
  uint64_t it0;
  reset_jobs();
  ck_assert_int_eq(tide_loop_run(h, TIDE_RUN_DEFAULT), 0); /* nothing */
  m = make_job(h, 0, 0, 0);
  m->sleep_ms = 100;
  ck_assert_int_eq(tide_pool_submit(h, &m->job), 0);
  ck_assert_int_eq(h->refs, 1);
  it0 = h->iterations;
  t0 = seconds();
  ck_assert_int_eq(tide_loop_run(h, TIDE_RUN_DEFAULT), 0);
  ck_assert_msg(seconds() - t0 >= 0.095, "returned after %.3f s",
                seconds() - t0);
  ck_assert_int_eq(recs[0].done_calls, 1);
  ck_assert_int_eq(h->refs, 0);
  /* it waited in poll, it did not spin */
  ck_assert_msg(h->iterations - it0 < 10, "%llu iterations",
                (unsigned long long)(h->iterations - it0));

  m = make_job(h, 1, 0, 0); /* a chain: each done submits the next */
  m->then = resubmit;
  ck_assert_int_eq(tide_pool_submit(h, &m->job), 0);
  ck_assert_int_eq(tide_loop_run(h, TIDE_RUN_DEFAULT), 0);
  ck_assert_int_eq(ndone, 6);
  ck_assert_int_eq(recs[5].done_calls, 1);
  ck_assert_int_eq(h->refs, 0);
  tide_host_free(h);
}
END_TEST

/* A job submitted from a done callback is queued when the completions
 * have run, not an iteration later: it is running by the check phase of
 * the same iteration. */
static tide__imm look_imm;
static int look_saw_running = -1, look_phase = -1;
static uint64_t look_iter;

static void look_cb(tide_host *h, tide__imm *im) {
  double until = seconds() + 2;
  (void)im;
  look_phase = h->phase;
  look_iter = h->iterations;
  while (waiting_at_gate() < 1 && seconds() < until) usleep(200);
  look_saw_running = waiting_at_gate();
  gate_open();
}

static void submit_gated_then_look(mjob *m) {
  submit(m->h, m->id + 1, 0, 1);
  memset(&look_imm, 0, sizeof look_imm);
  look_imm.cb = look_cb;
  look_imm.ref = 1;
  tide__imm_push(m->h, &look_imm);
}

START_TEST(test_submit_from_done_starts_at_once) {
  tide_host *h = new_host(2);
  mjob *m;
  reset_jobs();
  m = make_job(h, 0, 0, 0);
  m->then = submit_gated_then_look;
  ck_assert_int_eq(tide_pool_submit(h, &m->job), 0);
  ck_assert_int_eq(tide_loop_run(h, TIDE_RUN_DEFAULT), 0);
  ck_assert_int_eq(look_saw_running, 1);
  ck_assert_str_eq(tide__phase_names[look_phase], "check");
  ck_assert_uint_eq(look_iter, recs[0].done_iter);
  ck_assert_int_eq(recs[1].done_calls, 1);
  ck_assert_int_eq(recs[1].cancelled, 0);
  tide_host_free(h);
}
END_TEST

/* A cancelled job keeps the loop alive until its done has run. */
START_TEST(test_cancelled_job_done_before_loop_ends) {
  tide_host *h = new_host(1);
  mjob *b;
  reset_jobs();
  b = submit(h, 0, 0, 0);
  ck_assert_int_eq(tide_pool_cancel(h, &b->job), 1);
  ck_assert_int_eq(h->refs, 0);
  ck_assert_int_eq(tide_loop_run(h, TIDE_RUN_DEFAULT), 0);
  ck_assert_int_eq(recs[0].done_calls, 1);
  ck_assert_int_eq(recs[0].cancelled, 1);
  ck_assert_int_eq(recs[0].ran, 0);
  tide_host_free(h);
}
END_TEST

/* ---- shutdown ------------------------------------------------------------ */

/* tide_host_free with jobs in every state: finished but not yet handed to
 * done, running, queued, submitted. Each done runs exactly once, with
 * cancelled = 1, before tide_host_free returns; running ones finish first;
 * queued ones never run; the pool's threads and eventfd are gone. */
START_TEST(test_free_with_jobs_in_flight) {
  tide_host *h;
  int fds0 = open_fds(), i;
  pthread_t opener;
  reset_jobs();
  h = new_host(2);
  submit(h, 0, 0, 0);
  tide__pool_flush(h);
  WAIT_UNTIL(ran(0) == 1 && pool_running(h) == 0, 5); /* finished */
  submit(h, 1, 0, 1);
  submit(h, 2, 1, 1);
  for (i = 3; i < 6; i++) submit(h, i, i == 4, 0);
  tide__pool_flush(h);
  WAIT_UNTIL(waiting_at_gate() == 2, 5); /* 1 and 2 run */
  submit(h, 6, 0, 0);                    /* submitted, not queued */
  ck_assert_int_eq(pool_queued(h), 4);
  ck_assert_int_eq(ndone, 0);
  opener = gate_open_after(100);
  tide_host_free(h);
  STORE(host_freed, 1);
  pthread_join(opener, NULL);
  ck_assert_int_eq(ndone, 7);
  for (i = 0; i < 7; i++) {
    ck_assert_int_eq(recs[i].done_calls, 1);
    ck_assert_int_eq(recs[i].cancelled, 1);
    ck_assert(pthread_equal(recs[i].done_thread, loop_thread));
  }
  ck_assert_int_eq(recs[0].ran, 1);
  ck_assert_int_eq(recs[1].ran, 1); /* finished before free returned */
  ck_assert_int_eq(recs[2].ran, 1);
  ck_assert_int_eq(recs[1].ran_before_done, 1);
  ck_assert_int_eq(recs[2].ran_before_done, 1);
  for (i = 3; i < 7; i++) ck_assert_int_eq(recs[i].ran, 0);
  sleep_ms(50); /* nothing may come after free */
  ck_assert_int_eq(LOAD(late_done), 0);
  ck_assert_int_eq(nwork, 3);
  ck_assert_int_eq(open_fds(), fds0); /* eventfd (and base) closed */
}
END_TEST

/* A host whose pool never started, or is idle, frees cleanly. */
START_TEST(test_free_idle_pool) {
  tide_host *h = new_host(3);
  int fds0;
  tide_host_free(h);
  fds0 = open_fds();
  h = new_host(3);
  reset_jobs();
  submit(h, 0, 0, 0);
  ck_assert_int_eq(tide_loop_run(h, TIDE_RUN_DEFAULT), 0);
  ck_assert_int_eq(pool_threads(h), 3);
  tide_host_free(h);
  ck_assert_int_eq(recs[0].done_calls, 1);
  ck_assert_int_eq(open_fds(), fds0);
}
END_TEST

/* ---- signals, stats, misuse ---------------------------------------------- */

/* Pool threads block every signal, so that signals reach the loop thread;
 * starting the pool leaves the loop thread's own mask as it was. */
START_TEST(test_signals_blocked_in_pool_threads) {
  tide_host *h = new_host(4);
  sigset_t before, after, usr;
  int i;
  reset_jobs();
  sigemptyset(&usr);
  sigaddset(&usr, SIGUSR1);
  pthread_sigmask(SIG_UNBLOCK, &usr, NULL);
  pthread_sigmask(SIG_BLOCK, NULL, &before);
  for (i = 0; i < 4; i++) submit(h, i, i % 2, 1); /* on four threads */
  tide__pool_flush(h);
  WAIT_UNTIL(waiting_at_gate() == 4, 5);
  gate_open();
  ck_assert_int_eq(tide_loop_run(h, TIDE_RUN_DEFAULT), 0);
  for (i = 0; i < 4; i++)
    ck_assert_msg(recs[i].signals_blocked, "job %d: signals not blocked", i);
  pthread_sigmask(SIG_BLOCK, NULL, &after);
  ck_assert_int_eq(sigismember(&after, SIGUSR1), 0);
  for (i = 1; i < 32; i++)
    ck_assert_int_eq(sigismember(&before, i), sigismember(&after, i));
  tide_host_free(h);
}
END_TEST

/* The pool starts with its first job; stats count queued (also submitted
 * and not yet queued) and running jobs. */
START_TEST(test_stats_and_lazy_start) {
  tide_host *h = new_host(3);
  int i;
  reset_jobs();
  ck_assert_int_eq(pool_threads(h), 0);
  ck_assert_int_eq(h->threads, 3);
  ck_assert_int_eq(tide_loop_run(h, TIDE_RUN_DEFAULT), 0);
  ck_assert_int_eq(pool_threads(h), 0); /* a loop run starts nothing */
  for (i = 0; i < 5; i++) submit(h, i, 0, 1);
  ck_assert_int_eq(pool_threads(h), 3);
  ck_assert_int_eq(pool_queued(h), 5);
  ck_assert_int_eq(pool_running(h), 0);
  tide__pool_flush(h);
  WAIT_UNTIL(waiting_at_gate() == 3, 5);
  ck_assert_int_eq(pool_running(h), 3);
  ck_assert_int_eq(pool_queued(h), 2);
  gate_open();
  ck_assert_int_eq(tide_loop_run(h, TIDE_RUN_DEFAULT), 0);
  WAIT_UNTIL(pool_running(h) == 0, 5);
  ck_assert_int_eq(pool_queued(h), 0);
  ck_assert_int_eq(pool_threads(h), 3);
  tide_host_free(h);
}
END_TEST

START_TEST(test_submit_rejects_incomplete_jobs) {
  tide_host *h = new_host(2);
  tide_job j;
  memset(&j, 0, sizeof j);
  ck_assert_int_eq(tide_pool_submit(h, NULL), -1);
  ck_assert_int_eq(tide_pool_submit(h, &j), -1);
  j.work = kept_work;
  ck_assert_int_eq(tide_pool_submit(h, &j), -1);
  j.work = NULL;
  j.done = kept_done;
  ck_assert_int_eq(tide_pool_submit(h, &j), -1);
  ck_assert_int_eq(pool_threads(h), 0);
  ck_assert_int_eq(h->refs, 0);
  tide_host_free(h);
}
END_TEST

/* ---- blocking calls from Lua (request.c) --------------------------------- */

typedef struct bcall {
  int id, gated;
} bcall;

static int b_work, b_push, b_free; /* calls of each (b_work atomic) */

static void b_work_fn(void *data) {
  bcall *c = data;
  if (c->gated) gate_pass();
  INC(b_work);
}

static int b_push_fn(lua_State *L, void *data) {
  bcall *c = data;
  b_push++;
  lua_pushinteger(L, c->id * 10);
  lua_pushstring(L, tide__phase_names[tide_from_lua(L)->phase]);
  return 2;
}

static void b_free_fn(void *data) {
  b_free++;
  free(data);
}

/* blk.call(id[, gated]) -> id * 10, phase of push */
static int b_start(lua_State *L) {
  bcall *c;
  int id = (int)luaL_checkinteger(L, 1);
  c = malloc(sizeof *c);
  if (!c) return luaL_error(L, "not enough memory");
  c->id = id;
  c->gated = lua_toboolean(L, 2);
  return tide_blocking(L, c, b_work_fn, b_push_fn, b_free_fn, 0);
}

/* a push that fails (as one that runs out of memory would) */
static int b_push_raise(lua_State *L, void *data) {
  (void)data;
  b_push++;
  return luaL_error(L, "no memory for the results");
}

/* blk.bad() -> what a failing push gives the task */
static int b_start_bad(lua_State *L) {
  bcall *c = calloc(1, sizeof *c);
  if (!c) return luaL_error(L, "not enough memory");
  return tide_blocking(L, c, b_work_fn, b_push_raise, b_free_fn, 0);
}

static int open_blk(lua_State *L) {
  lua_newtable(L);
  tide_push_blocking(L, b_start, "call");
  lua_setfield(L, -2, "call");
  tide_push_blocking(L, b_start_bad, "bad");
  lua_setfield(L, -2, "bad");
  return 1;
}

static tide_host *blk_host(int threads) {
  tide_host *h = new_host(threads);
  reset_jobs();
  b_work = b_push = b_free = 0;
  tide_register_module(h, "blk", open_blk);
  return h;
}

static void run(tide_host *h, const char *code) {
  lua_State *L = tide_lua(h);
  if (tide_run_string(h, code, "=test") != 0)
    ck_abort_msg("tide_run_string: %s", lua_tostring(L, -1));
}

/* tostring(expr) in the main state */
static const char *eval(tide_host *h, const char *expr) {
  static char buf[4][512];
  static int k;
  lua_State *L = tide_lua(h);
  int top = lua_gettop(L);
  char *out = buf[k++ % 4];
  lua_getglobal(L, "tostring");
  if (luaL_loadstring(L, lua_pushfstring(L, "return %s", expr)) != 0)
    ck_abort_msg("%s", lua_tostring(L, -1));
  lua_remove(L, -2);
  if (lua_pcall(L, 0, 1, 0) != 0 || lua_pcall(L, 1, 1, 0) != 0)
    ck_abort_msg("Lua error: %s\nin: %s", lua_tostring(L, -1), expr);
  snprintf(out, sizeof buf[0], "%s", lua_tostring(L, -1));
  lua_settop(L, top);
  return out;
}

/* The calling task waits, gets push's results in the poll phase; the data
 * is freed once. */
START_TEST(test_blocking_results) {
  tide_host *h = blk_host(2);
  run(h, "local blk = require 'blk'\n"
         "local a, b = blk.call(4)\n"
         "r = table.concat({a, b, tide.phase()}, ' ')");
  ck_assert_str_eq(eval(h, "r"), "nil");
  ck_assert_int_eq(tide_loop_run(h, TIDE_RUN_DEFAULT), 0);
  ck_assert_str_eq(eval(h, "r"), "40 poll poll");
  ck_assert_int_eq(b_work, 1);
  ck_assert_int_eq(b_push, 1);
  ck_assert_int_eq(b_free, 1);
  tide_host_free(h);
}
END_TEST

/* A push that raises does not escape the poll phase: the task gets nil
 * and the message, the data is freed once, the loop goes on. */
START_TEST(test_blocking_push_error) {
  tide_host *h = blk_host(1);
  run(h, "local blk = require 'blk'\n"
         "local a, b = blk.bad()\n"
         "r = tostring(a) .. ' ' .. tostring(b)\n"
         "r2 = blk.call(2)");
  ck_assert_int_eq(tide_loop_run(h, TIDE_RUN_DEFAULT), 0);
  ck_assert_ptr_nonnull(strstr(eval(h, "r"), "nil "));
  ck_assert_ptr_nonnull(strstr(eval(h, "r"), "no memory for the results"));
  ck_assert_str_eq(eval(h, "r2"), "20");
  ck_assert_int_eq(b_push, 2);
  ck_assert_int_eq(b_free, 2);
  tide_host_free(h);
}
END_TEST

/* Cancelling a task whose call is queued takes the job back: no work, no
 * push, one free; the task ends cancelled. */
START_TEST(test_blocking_cancel_queued) {
  tide_host *h = blk_host(1);
  run(h, "local blk = require 'blk'\n"
         "t1 = tide.spawn(blk.call, 1, true)\n"
         "t2 = tide.spawn(function() blk.call(2); reached = true end)");
  tide__pool_flush(h);
  WAIT_UNTIL(waiting_at_gate() == 1, 5);
  ck_assert_int_eq(pool_queued(h), 1);
  run(h, "t2:cancel()");
  ck_assert_int_eq(pool_queued(h), 0);
  ck_assert_str_eq(eval(h, "t2:status()"), "cancelled");
  gate_open();
  ck_assert_int_eq(tide_loop_run(h, TIDE_RUN_DEFAULT), 0);
  ck_assert_str_eq(eval(h, "reached"), "nil");
  ck_assert_str_eq(eval(h, "select(2, t1:join())"), "10");
  ck_assert_int_eq(b_work, 1);
  ck_assert_int_eq(b_push, 1);
  ck_assert_int_eq(b_free, 2);
  tide_host_free(h);
}
END_TEST

/* What the counters were when snapshot() ran (then it opens the gate). */
static int snap_push = -1, snap_free = -1, snap_waiting = -1;

static int l_snapshot(lua_State *L) {
  (void)L;
  snap_push = b_push;
  snap_free = b_free;
  snap_waiting = waiting_at_gate();
  gate_open();
  return 0;
}

/* A timeout abandons a running call: the task gets nil, "timed out",
 * "ETIMEDOUT" at once; the late result is dropped (no push) and the data
 * freed once when the work ends. A queued call that times out is taken
 * back and freed in the pending phase. */
START_TEST(test_blocking_timeout) {
  tide_host *h = blk_host(1);
  tide_register(h, "snapshot", l_snapshot);
  /* the first call runs and times out; the second, queued behind it on
   * the only thread, times out too; a zero timer then looks, while the
   * first still runs */
  run(h, "local blk = require 'blk'\n"
         "local a = {tide.timeout(0.05, blk.call, 1, true)}\n"
         "local b = {tide.timeout(0.05, blk.call, 2)}\n"
         "r = table.concat({tostring(a[1]), a[2], a[3],\n"
         "                  tostring(b[1]), b[2], b[3]}, ' ')\n"
         "tide.after(0, snapshot)");
  ck_assert_int_eq(tide_loop_run(h, TIDE_RUN_DEFAULT), 0);
  ck_assert_str_eq(eval(h, "r"),
                   "nil timed out ETIMEDOUT nil timed out ETIMEDOUT");
  ck_assert_int_eq(snap_waiting, 1); /* the first still ran */
  ck_assert_int_eq(snap_push, 0);
  ck_assert_int_eq(snap_free, 1);    /* the second, taken back */
  ck_assert_int_eq(b_work, 1);
  ck_assert_int_eq(b_push, 0);       /* the late result, dropped */
  ck_assert_int_eq(b_free, 2);
  tide_host_free(h);
}
END_TEST

/* Freeing the host while a task waits on a running call and another on a
 * queued one: each data is freed once, nothing is pushed. */
START_TEST(test_blocking_host_free_while_waiting) {
  tide_host *h = blk_host(1);
  pthread_t opener;
  run(h, "local blk = require 'blk'\n"
         "tide.spawn(blk.call, 1, true)\n"
         "tide.spawn(blk.call, 2, true)");
  tide__pool_flush(h);
  WAIT_UNTIL(waiting_at_gate() == 1, 5);
  opener = gate_open_after(50);
  tide_host_free(h);
  pthread_join(opener, NULL);
  ck_assert_int_eq(b_work, 1);
  ck_assert_int_eq(b_push, 0);
  ck_assert_int_eq(b_free, 2);
}
END_TEST

/* Outside a task (the main state) the waiting function raises a clear
 * error naming the call, before anything is made or submitted. */
START_TEST(test_blocking_outside_task_raises) {
  tide_host *h = blk_host(1);
  lua_State *L = tide_lua(h);
  ck_assert_int_ne(luaL_dostring(L, "require('blk').call(1)"), 0);
  ck_assert_ptr_nonnull(strstr(lua_tostring(L, -1),
                               "'call' must be called inside a task"));
  lua_pop(L, 1);
  ck_assert_int_eq(pool_queued(h) + (size_t)pool_running(h), 0);
  ck_assert_int_eq(tide_loop_run(h, TIDE_RUN_DEFAULT), 0);
  ck_assert_int_eq(b_work, 0);
  ck_assert_int_eq(b_free, 0);
  tide_host_free(h);
}
END_TEST

/* ---- regressions ------------------------------------------------------- */

/* BUG: a task with a cancellation pending (cancelled while it ran, or a
 * tide.timeout that expired meanwhile) that makes a blocking call raises
 * the cancellation, but only after the job was submitted: the work runs
 * anyway and keeps the loop alive (core.lua's blocking() checks for a task,
 * not for a pending cancellation, before start; park() then raises without
 * closing the request). */
START_TEST(test_bug_cancelled_task_submits_nothing) {
  tide_host *h = blk_host(1);
  run(h, "t = tide.spawn(function()\n"
         "  tide.current():cancel()\n"
         "  require('blk').call(1)\n"
         "end)");
  ck_assert_str_eq(eval(h, "t:status()"), "cancelled");
  ck_assert_int_eq(pool_queued(h) + (size_t)pool_running(h), 0);
  ck_assert_int_eq(tide_loop_run(h, TIDE_RUN_DEFAULT), 0);
  ck_assert_int_eq(b_work, 0);
  tide_host_free(h);
}
END_TEST

/* BUG: tide_pool_cancel defers done(job, 1) with a node inside the pool
 * struct; tide_host_free before the next pending phase frees the pool and
 * then runs the pending list through the freed node (use-after-free, seen
 * under ASan). */
START_TEST(test_bug_free_after_cancel) {
  tide_host *h = new_host(1);
  mjob *b;
  reset_jobs();
  submit(h, 0, 0, 1);
  tide__pool_flush(h);
  WAIT_UNTIL(waiting_at_gate() == 1, 5);
  b = submit(h, 1, 0, 0);
  tide__pool_flush(h);
  ck_assert_int_eq(tide_pool_cancel(h, &b->job), 1);
  gate_open();
  tide_host_free(h);
  ck_assert_int_eq(recs[1].done_calls, 1);
  ck_assert_int_eq(recs[1].cancelled, 1);
  ck_assert_int_eq(recs[0].done_calls, 1);
}
END_TEST

static Suite *pool_suite(void) {
  Suite *s = suite_create("pool");
  TCase *th = tcase_create("threads"), *ca = tcase_create("cancel"),
        *sl = tcase_create("slow"), *life = tcase_create("lifetime"),
        *misc = tcase_create("misc"), *blk = tcase_create("blocking");
  tcase_set_timeout(th, 30);
  tcase_set_timeout(ca, 30);
  tcase_set_timeout(sl, 30);
  tcase_set_timeout(life, 30);
  tcase_set_timeout(misc, 30);
  tcase_set_timeout(blk, 30);
  tcase_add_test(th, test_work_on_pool_threads_done_on_loop_in_poll);
  tcase_add_test(th, test_fifo_single_thread);
  tcase_add_test(th, test_completions_batched);
  tcase_add_test(ca, test_cancel_queued);
  tcase_add_test(ca, test_cancel_running);
  tcase_add_test(ca, test_cancel_without_pool);
  tcase_add_test(sl, test_slow_cap_four_threads);
  tcase_add_test(sl, test_slow_cap_small_pools);
  tcase_add_test(life, test_jobs_keep_loop_alive);
  tcase_add_test(life, test_submit_from_done_starts_at_once);
  tcase_add_test(life, test_cancelled_job_done_before_loop_ends);
  tcase_add_test(life, test_free_with_jobs_in_flight);
  tcase_add_test(life, test_free_idle_pool);
  tcase_add_test(misc, test_signals_blocked_in_pool_threads);
  tcase_add_test(misc, test_stats_and_lazy_start);
  tcase_add_test(misc, test_submit_rejects_incomplete_jobs);
  tcase_add_test(blk, test_blocking_results);
  tcase_add_test(blk, test_blocking_push_error);
  tcase_add_test(blk, test_blocking_cancel_queued);
  tcase_add_test(blk, test_blocking_timeout);
  tcase_add_test(blk, test_blocking_host_free_while_waiting);
  tcase_add_test(blk, test_blocking_outside_task_raises);
  suite_add_tcase(s, th);
  suite_add_tcase(s, ca);
  suite_add_tcase(s, sl);
  suite_add_tcase(s, life);
  suite_add_tcase(s, misc);
  suite_add_tcase(s, blk);
  {
    TCase *bugs = tcase_create("regressions");
    tcase_add_test(bugs, test_bug_cancelled_task_submits_nothing);
    tcase_add_test(bugs, test_bug_free_after_cancel);
    suite_add_tcase(s, bugs);
  }
  return s;
}

int main(void) {
  SRunner *sr = srunner_create(pool_suite());
  int failed;
  srunner_run_all(sr, CK_NORMAL);
  failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
