/*
 * host/pool.c - the worker pool: blocking calls run on threads, their
 * completions run on the loop thread.
 *
 * Jobs wait in two FIFO queues, ordinary and slow (getaddrinfo, user jobs
 * marked slow); a thread takes the older head, except that slow jobs may
 * occupy at most half the threads, so they cannot starve file work.
 * Finished jobs go to one locked list; the first one to land there makes
 * one cross-thread wake-up (event_active on a libevent event, which needs
 * evthread_use_pthreads), so a burst of completions costs one wake-up, and
 * the poll phase runs them all in one callback.
 *
 * Threads start on the first submit, with every signal blocked. A pool
 * thread touches no lua_State and no host field outside the pool's lock.
 */
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>

#include <event2/event.h>

#include "internal.h"

enum { JOB_QUEUED = 1, JOB_RUNNING, JOB_FINISHED };

typedef struct jqueue {
  tide_job *head, *tail;
  size_t len;
} jqueue;

struct tide__pool {
  tide_host *h;
  pthread_mutex_t lock;
  pthread_cond_t work_cv;
  jqueue fast, slow;   /* queued jobs (lock) */
  tide_job *finished;  /* finished jobs, newest first (lock) */
  int wake_pending;    /* the wake-up is armed (lock) */
  int running;         /* jobs running (lock) */
  int slow_running;    /* of them slow (lock) */
  int max_slow;
  int stopping;        /* (lock) */
  uint64_t seq;        /* submit order (lock) */
  int nthreads;
  pthread_t *threads;
  struct event *wake;  /* run in the poll phase */
  tide_job *cancelled; /* their done(job, 1) runs in the pending phase */
  tide__deferred cancel_node;
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

static void *thread_main(void *arg) {
  struct tide__pool *p = arg;
  pthread_mutex_lock(&p->lock);
  for (;;) {
    tide_job *j;
    while (!p->stopping && !(j = next_job(p)))
      pthread_cond_wait(&p->work_cv, &p->lock);
    if (p->stopping) break;
    j->state_ = JOB_RUNNING;
    p->running++;
    if (j->slow) p->slow_running++;
    pthread_mutex_unlock(&p->lock);

    j->work(j);

    pthread_mutex_lock(&p->lock);
    p->running--;
    if (j->slow) {
      p->slow_running--;
      if (p->slow.head) pthread_cond_signal(&p->work_cv); /* cap freed */
    }
    j->state_ = JOB_FINISHED;
    j->next_ = p->finished;
    p->finished = j;
    if (!p->wake_pending) {
      p->wake_pending = 1;
      event_active(p->wake, EV_READ, 0);
    }
  }
  pthread_mutex_unlock(&p->lock);
  return NULL;
}

/* Poll phase: the done callbacks of every finished job, oldest first. */
static void on_wake(evutil_socket_t fd, short what, void *arg) {
  struct tide__pool *p = arg;
  tide_host *h = p->h;
  tide_job *list, *rev = NULL;
  (void)fd, (void)what;
  pthread_mutex_lock(&p->lock);
  list = p->finished;
  p->finished = NULL;
  p->wake_pending = 0;
  pthread_mutex_unlock(&p->lock);
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
  p->wake = event_new(h->base, -1, 0, on_wake, p);
  if (!p->threads || !p->wake || pthread_mutex_init(&p->lock, NULL) != 0) {
    if (p->wake) event_free(p->wake);
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
    event_free(p->wake);
    free(p->threads);
    free(p);
    return -1;
  }
  if (p->max_slow > p->nthreads) p->max_slow = p->nthreads;
  h->pool = p;
  return 0;
}

int tide_pool_submit(tide_host *h, tide_job *job) {
  struct tide__pool *p;
  if (!job || !job->work || !job->done) return -1;
  if (!h->pool && pool_start(h) != 0) return -1;
  p = h->pool;
  pthread_mutex_lock(&p->lock);
  job->seq_ = p->seq++;
  job->state_ = JOB_QUEUED;
  jq_push(job->slow ? &p->slow : &p->fast, job);
  p->submitted++;
  pthread_cond_signal(&p->work_cv);
  pthread_mutex_unlock(&p->lock);
  h->refs++; /* a job in flight keeps the loop alive */
  return 0;
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
  pthread_mutex_lock(&p->lock);
  if (job->state_ == JOB_QUEUED)
    removed = jq_remove(job->slow ? &p->slow : &p->fast, job);
  pthread_mutex_unlock(&p->lock);
  if (!removed) return 0;
  job->state_ = 0;
  h->refs--;
  job->next_ = p->cancelled;
  p->cancelled = job;
  tide__defer(h, &p->cancel_node, run_cancelled);
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
  *queued = p->fast.len + p->slow.len;
  *running = p->running;
  pthread_mutex_unlock(&p->lock);
}

/* For tide_host_free, with the Lua state still open: queued jobs are
 * cancelled, running ones finish, threads are joined, and every job's done
 * runs (cancelled = 1 for all but those that finished) before this
 * returns, so none runs after the host is gone. */
void tide__pool_shutdown(tide_host *h) {
  struct tide__pool *p = h->pool;
  tide_job *j, *cancelled = NULL, *finished;
  int i;
  if (!p) return;
  pthread_mutex_lock(&p->lock);
  p->stopping = 1;
  while ((j = jq_pop(&p->fast)) || (j = jq_pop(&p->slow))) {
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
  pthread_cond_destroy(&p->work_cv);
  pthread_mutex_destroy(&p->lock);
  free(p->threads);
  free(p);
}
