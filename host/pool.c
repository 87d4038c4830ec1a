/*
 * host/pool.c - the worker pool: blocking calls run on threads, their
 * completions run on the loop thread.
 *
 * Jobs wait in two FIFO queues, ordinary and slow (getaddrinfo, user jobs
 * marked slow); a thread takes the older head, except that slow jobs may
 * occupy at most half the threads, so they cannot starve file work.
 * Finished jobs go to one locked list; the first one to land there makes
 * one cross-thread wake-up (a write to an eventfd that the poll phase
 * watches), so a burst of completions costs one wake-up, and the poll
 * phase runs them all in one callback.
 *
 * Threads start on the first submit, with every signal blocked. A pool
 * thread touches no lua_State and no host field outside the pool's lock.
 */
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <event2/event.h>

#include "internal.h"

enum { JOB_STAGED = 1, JOB_QUEUED, JOB_RUNNING };

typedef struct jqueue {
  tide_job *head, *tail;
  size_t len;
} jqueue;

struct tide__pool {
  tide_host *h;
  pthread_mutex_t lock; /* the queues and counters */
  pthread_cond_t work_cv;
  jqueue fast, slow;   /* queued jobs (lock) */
  jqueue staged;       /* submitted, not yet queued (loop thread only) */
  pthread_mutex_t done_lock; /* finished jobs */
  tide_job *finished;  /* finished jobs, newest first (done_lock) */
  int wake_pending;    /* the wake-up is armed (done_lock) */
  int running;         /* jobs running (lock) */
  int idle;            /* threads waiting for work (lock) */
  int slow_running;    /* of them slow (lock) */
  int max_slow;
  int stopping;        /* (lock) */
  uint64_t seq;        /* submit order (loop thread) */
  int nthreads;
  pthread_t *threads;
  int wake_fd;         /* eventfd: pool threads wake the poll phase */
  struct event *wake;  /* reads wake_fd in the poll phase */
  tide_job *cancelled; /* their done(job, 1) runs in the pending phase,
                          through h->pool_cancel (it outlives the pool) */
  uint64_t submitted, completed;
};

static void jq_push(jqueue *q, tide_job *j) {
  j->next_ = NULL;
  if (q->tail)
    q->tail->next_ = j;
  else
    q->head = j;
  q->tail = j;
  q->len++;
}

static tide_job *jq_pop(jqueue *q) {
  tide_job *j = q->head;
  if (!j) return NULL;
  q->head = j->next_;
  if (!q->head) q->tail = NULL;
  q->len--;
  j->next_ = NULL;
  return j;
}

static int jq_remove(jqueue *q, tide_job *j) {
  tide_job *prev = NULL, *x;
  for (x = q->head; x; prev = x, x = x->next_) {
    if (x != j) continue;
    if (prev)
      prev->next_ = x->next_;
    else
      q->head = x->next_;
    if (q->tail == x) q->tail = prev;
    q->len--;
    x->next_ = NULL;
    return 1;
  }
  return 0;
}

/* The next job a thread may run (lock held): the older of the two heads,
 * but no slow job while half the threads run slow ones. */
static tide_job *next_job(struct tide__pool *p) {
  tide_job *f = p->fast.head, *s = p->slow.head;
  if (s && p->slow_running >= p->max_slow) s = NULL;
  if (f && (!s || f->seq_ < s->seq_)) return jq_pop(&p->fast);
  if (s) return jq_pop(&p->slow);
  return NULL;
}

static void wake_loop(struct tide__pool *p) {
  uint64_t one = 1;
  while (write(p->wake_fd, &one, sizeof one) < 0 && errno == EINTR) {}
}

static void *thread_main(void *arg) {
  struct tide__pool *p = arg;
  pthread_mutex_lock(&p->lock);
  for (;;) {
    tide_job *j;
    int slow, wake;
    while (!p->stopping && !(j = next_job(p))) {
      p->idle++;
      pthread_cond_wait(&p->work_cv, &p->lock);
      p->idle--;
    }
    if (p->stopping) break;
    j->state_ = JOB_RUNNING;
    p->running++;
    slow = j->slow;
    if (slow) p->slow_running++;
    pthread_mutex_unlock(&p->lock);

    j->work(j);

    /* Hand the job to the loop; it is the loop's from here on. */
    pthread_mutex_lock(&p->done_lock);
    j->next_ = p->finished;
    p->finished = j;
    wake = !p->wake_pending;
    p->wake_pending = 1;
    pthread_mutex_unlock(&p->done_lock);
    if (wake) wake_loop(p);

    pthread_mutex_lock(&p->lock);
    p->running--;
    if (slow) p->slow_running--;
  }
  pthread_mutex_unlock(&p->lock);
  return NULL;
}

/* Poll phase: the done callbacks of every finished job, oldest first. */
static void on_wake(evutil_socket_t fd, short what, void *arg) {
  struct tide__pool *p = arg;
  tide_host *h = p->h;
  tide_job *list, *rev = NULL;
  uint64_t n;
  (void)what;
  while (read(fd, &n, sizeof n) < 0 && errno == EINTR) {}
  pthread_mutex_lock(&p->done_lock);
  list = p->finished;
  p->finished = NULL;
  p->wake_pending = 0;
  pthread_mutex_unlock(&p->done_lock);
  while (list) { /* newest first: reverse */
    tide_job *j = list;
    list = j->next_;
    j->next_ = rev;
    rev = j;
  }
  if (rev && !h->poll_woke) h->poll_woke = tide__hrtime();
  while (rev) {
    tide_job *j = rev;
    rev = j->next_;
    j->state_ = 0;
    h->refs--;
    p->completed++;
    j->done(j, 0);
  }
  tide__pool_flush(h); /* what those callbacks submitted */
}

static int pool_start(tide_host *h) {
  struct tide__pool *p = calloc(1, sizeof *p);
  sigset_t all, old;
  int i;
  if (!p) return -1;
  p->h = h;
  p->nthreads = h->threads;
  p->max_slow = p->nthreads / 2 > 0 ? p->nthreads / 2 : 1;
  p->threads = calloc((size_t)p->nthreads, sizeof *p->threads);
  p->wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  p->wake = p->wake_fd < 0 ? NULL
            : event_new(h->base, p->wake_fd, EV_READ | EV_PERSIST, on_wake, p);
  if (!p->threads || !p->wake || event_add(p->wake, NULL) != 0 ||
      pthread_mutex_init(&p->lock, NULL) != 0 ||
      pthread_mutex_init(&p->done_lock, NULL) != 0) {
    if (p->wake) event_free(p->wake);
    if (p->wake_fd >= 0) close(p->wake_fd);
    free(p->threads);
    free(p);
    return -1;
  }
  pthread_cond_init(&p->work_cv, NULL);
  sigfillset(&all);
  pthread_sigmask(SIG_BLOCK, &all, &old); /* threads inherit the mask */
  for (i = 0; i < p->nthreads; i++)
    if (pthread_create(&p->threads[i], NULL, thread_main, p) != 0) break;
  pthread_sigmask(SIG_SETMASK, &old, NULL);
  p->nthreads = i;
  if (i == 0) {
    pthread_cond_destroy(&p->work_cv);
    pthread_mutex_destroy(&p->lock);
    pthread_mutex_destroy(&p->done_lock);
    event_free(p->wake);
    close(p->wake_fd);
    free(p->threads);
    free(p);
    return -1;
  }
  if (p->max_slow > p->nthreads) p->max_slow = p->nthreads;
  h->pool = p;
  return 0;
}

/* Submitted jobs are staged on the loop thread and queued together by
 * tide__pool_flush (before the poll phase waits, and after the completions
 * it ran): one lock and one round of wake-ups for a burst of submits. */
int tide_pool_submit(tide_host *h, tide_job *job) {
  struct tide__pool *p;
  if (!job || !job->work || !job->done || h->freeing) return -1;
  if (!h->pool && pool_start(h) != 0) return -1;
  p = h->pool;
  job->seq_ = p->seq++;
  job->state_ = JOB_STAGED;
  jq_push(&p->staged, job);
  p->submitted++;
  h->refs++; /* a job in flight keeps the loop alive */
  return 0;
}

void tide__pool_flush(tide_host *h) {
  struct tide__pool *p = h->pool;
  tide_job *j;
  size_t n;
  if (!p || !p->staged.head) return;
  n = p->staged.len;
  pthread_mutex_lock(&p->lock);
  while ((j = jq_pop(&p->staged))) {
    j->state_ = JOB_QUEUED;
    jq_push(j->slow ? &p->slow : &p->fast, j);
  }
  if (p->idle > 0) {
    if (n >= (size_t)p->idle)
      pthread_cond_broadcast(&p->work_cv);
    else
      while (n--) pthread_cond_signal(&p->work_cv);
  }
  pthread_mutex_unlock(&p->lock);
}

static void run_cancelled(tide_host *h, tide__deferred *d) {
  struct tide__pool *p = h->pool;
  tide_job *j, *rev = NULL;
  (void)d;
  if (!p) return;
  while ((j = p->cancelled)) { /* newest first: reverse */
    p->cancelled = j->next_;
    j->next_ = rev;
    rev = j;
  }
  while ((j = rev)) {
    rev = j->next_;
    j->done(j, 1);
  }
}

/* Takes a job off its queue if no thread took it yet: its done(job, 1) then
 * runs in the pending phase. Returns 1 if so, 0 if it runs or ran. */
int tide_pool_cancel(tide_host *h, tide_job *job) {
  struct tide__pool *p = h->pool;
  int removed = 0;
  if (!p || !job) return 0;
  if (job->state_ == JOB_STAGED) {
    removed = jq_remove(&p->staged, job);
  } else {
    pthread_mutex_lock(&p->lock);
    if (job->state_ == JOB_QUEUED)
      removed = jq_remove(job->slow ? &p->slow : &p->fast, job);
    pthread_mutex_unlock(&p->lock);
  }
  if (!removed) return 0;
  job->state_ = 0;
  h->refs--;
  job->next_ = p->cancelled;
  p->cancelled = job;
  tide__defer(h, &h->pool_cancel, run_cancelled);
  return 1;
}

void tide__pool_stats(tide_host *h, int *threads, size_t *queued,
                      int *running) {
  struct tide__pool *p = h->pool;
  *threads = 0;
  *queued = 0;
  *running = 0;
  if (!p) return;
  pthread_mutex_lock(&p->lock);
  *threads = p->nthreads;
  *queued = p->fast.len + p->slow.len + p->staged.len;
  *running = p->running;
  pthread_mutex_unlock(&p->lock);
}

/* For tide_host_free, with the Lua state still open: queued jobs are
 * cancelled, running ones finish, threads are joined, and every job's done
 * runs before this returns, with cancelled = 1 (their tasks go with the
 * host: only clean up), so none runs after the host is gone. */
void tide__pool_shutdown(tide_host *h) {
  struct tide__pool *p = h->pool;
  tide_job *j, *cancelled = NULL, *finished;
  int i;
  if (!p) return;
  pthread_mutex_lock(&p->lock);
  p->stopping = 1;
  while ((j = jq_pop(&p->fast)) || (j = jq_pop(&p->slow)) ||
         (j = jq_pop(&p->staged))) {
    j->next_ = cancelled;
    cancelled = j;
  }
  pthread_cond_broadcast(&p->work_cv);
  pthread_mutex_unlock(&p->lock);
  for (i = 0; i < p->nthreads; i++) pthread_join(p->threads[i], NULL);
  finished = p->finished;
  p->finished = NULL;
  run_cancelled(h, NULL); /* those cancelled before, not yet told */
  while (cancelled) {
    j = cancelled;
    cancelled = j->next_;
    j->state_ = 0;
    h->refs--;
    j->done(j, 1);
  }
  while (finished) {
    j = finished;
    finished = j->next_;
    j->state_ = 0;
    h->refs--;
    j->done(j, 1); /* its task is gone with the host: only clean up */
  }
  h->pool = NULL;
  event_free(p->wake);
  close(p->wake_fd);
  pthread_cond_destroy(&p->work_cv);
  pthread_mutex_destroy(&p->lock);
  pthread_mutex_destroy(&p->done_lock);
  free(p->threads);
  free(p);
}
