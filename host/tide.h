/*
 * tide.h - the public C API of libtide.
 *
 * A tide_host owns one lua_State, one libevent event_base, one timer
 * structure and one worker pool. It runs Lua scripts as tasks on a
 * loop arranged in Node.js's phases: timers, pending, poll, check, close.
 *
 * Threading: a host belongs to the thread that created it (its "loop
 * thread"). Every function here must be called from that thread, and never
 * from inside a Lua call that the host is running unless its comment says
 * so. Several hosts may run in one process, one per thread. The exceptions:
 *   - tide_post may be called from any thread, at any time between
 *     tide_host_new and tide_host_free (the caller makes sure no thread
 *     posts once tide_host_free has begun);
 *   - a pool job's work function runs on a pool thread and may call
 *     nothing here.
 * Everything else (tide_stop included) is for the loop thread; another
 * thread stops the loop with tide_post(h, fn) where fn calls tide_stop.
 */
#ifndef TIDE_H
#define TIDE_H

#include <lua.h>
#include <lauxlib.h>

#ifdef __cplusplus
extern "C" {
#endif

#define TIDE_VERSION "0.1.0"

struct event_base;
typedef struct tide_host tide_host;

/* Options for tide_host_new. Zero-initialise, then set what you need. */
typedef struct tide_options {
  int threads;             /* worker pool size; 0 = TIDE_THREADPOOL_SIZE or 4 */
  const char *script_dir;  /* prepended to package.path ("dir/?.lua;...")
                              and package.cpath ("dir/?.so;...") */
  int argc;                /* the script's arguments, for the global `arg` */
  char **argv;             /* argv[0] is the script name (arg[0]) */
  int script_index;        /* index in argv of the script (arg[0]); others
                              before it become negative indices, as in lua */
  int no_globals;          /* do not set the globals `tide` and `arg` */
  size_t memory_limit;     /* bytes the Lua state may hold; 0 = no limit.
                              Past it, allocations fail and Lua raises "not
                              enough memory" (see tide_set_memory_limit) */
  const char *path;        /* put in front of package.path (";"-separated
                              templates such as "/opt/app/lua/?.lua") */
  const char *cpath;       /* put in front of package.cpath */
} tide_options;

/* Run modes for tide_loop_run. */
typedef enum tide_run_mode {
  TIDE_RUN_DEFAULT = 0, /* until nothing referenced remains, or stopped */
  TIDE_RUN_ONCE = 1,    /* one iteration; poll waits for I/O if needed */
  TIDE_RUN_NOWAIT = 2   /* one iteration; poll never blocks */
} tide_run_mode;

/* Creates a host: a Lua state with the standard libraries and `tide`
 * loaded, and an event_base. Returns NULL (and a message in err, if given,
 * of errlen bytes) when memory or the event_base could not be had. */
tide_host *tide_host_new(const tide_options *opts, char *err, size_t errlen);

/* Closes every handle, runs the loop until the close callbacks have run,
 * closes the Lua state and frees the host. NULL is allowed. */
void tide_host_free(tide_host *h);

/* The host's Lua state and event_base, for registering functions and for
 * C code that adds its own libevent events. Do not close or free them. */
lua_State *tide_lua(tide_host *h);
struct event_base *tide_event_base(tide_host *h);

/* The host that owns L (any coroutine of it), or NULL. */
tide_host *tide_from_lua(lua_State *L);

/* Bytes the host's Lua state holds now (what the memory limit counts). */
size_t tide_memory_used(const tide_host *h);

/* Changes the memory limit (0: none). A limit below what is in use makes
 * every allocation that grows the state fail until enough is freed. */
void tide_set_memory_limit(tide_host *h, size_t bytes);

/* Sets the global `name` to a C function. */
void tide_register(tide_host *h, const char *name, lua_CFunction fn);
/* Makes `require(name)` call open (a luaopen_* style function). */
void tide_register_module(tide_host *h, const char *name, lua_CFunction open);

/* Loads a file (NULL: standard input) or a string and starts it as a task,
 * which runs at once until its first wait. `name` is the chunk name used in
 * messages. The results of tide_run_file and tide_run_string: 0 when the
 * chunk loaded and started; -1 when it did not load (message on the Lua
 * stack of tide_lua(h), popped by the caller). An error raised later by the
 * task is reported as described at tide_run_main. */
int tide_run_file(tide_host *h, const char *path);
int tide_run_string(tide_host *h, const char *code, const char *name);

/* Like tide_run_file, but the task is the host's *main* task: an error that
 * escapes it is printed with its traceback on stderr, and the loop stops
 * with exit code 1. */
int tide_run_main(tide_host *h, const char *path);

/* Pops the function on top of the Lua stack and starts it as a task, which
 * runs at once until its first wait; with is_main, as the main task.
 * Returns 0, or -1 with a message on the stack. */
int tide_start(tide_host *h, int is_main);

/* Runs the loop. Returns 0 when it ended because nothing referenced
 * remains, 1 when it returned with work still pending (TIDE_RUN_ONCE,
 * TIDE_RUN_NOWAIT or tide_stop), and -1 when the host is exiting (tide.exit
 * or an error in the main task): see tide_exit_code. */
int tide_loop_run(tide_host *h, tide_run_mode mode);

/* Makes tide_loop_run return after the callback that is running. Safe to
 * call from a Lua C function the host is running. Loop thread only: from
 * another thread, tide_post a function that calls it. */
void tide_stop(tide_host *h);

/* The exit status asked for by tide.exit, or 1 after an error in the main
 * task; -1 while the host is not exiting. */
int tide_exit_code(const tide_host *h);

/* Keep the loop alive without a handle: tide_ref adds one reference,
 * tide_unref takes one away (never below zero). A service whose other
 * threads post work holds one while they run. */
void tide_ref(tide_host *h);
void tide_unref(tide_host *h);

/* --- calling Lua from C as a task ---------------------------------------- */

enum { TIDE_OK = 0, TIDE_ERROR = 1 };

/* Receives the end of a tide_call. status TIDE_OK: the function's nresults
 * results are on top of L; TIDE_ERROR: its error message (a string, with a
 * traceback) is on top of L, nresults is 1. L is the task's own coroutine:
 * read the values, do not pop below them (they go when the callback
 * returns). The callback runs on the loop thread inside the task; it may
 * call tide_call (the new task starts once this callback's task ends),
 * tide_stop, tide_post and the pool functions, not tide_loop_run or
 * tide_host_free. It is called exactly once per started call: a call
 * whose task never ends (the host is freed while it waits) gets TIDE_ERROR
 * with "the call did not finish: the host was freed" during
 * tide_host_free. */
typedef void (*tide_result_fn)(tide_host *h, lua_State *L, int status,
                               int nresults, void *ud);

/* Pops a function and its nargs arguments (pushed in that order on
 * tide_lua(h)) and runs the function as a new task: at once, until its
 * first wait, when called from outside Lua (your libevent callback, a
 * posted function, between loop runs); from a result callback or a C
 * function that Lua calls, once the running task waits or ends.
 * cb(h, L, status, nresults, ud) runs when the task ends. Returns 0, or -1 with a message on the stack (the value is not
 * callable, or the host is being freed; cb is then not called). The task
 * keeps the loop alive only while it waits on something that does. */
int tide_call(tide_host *h, int nargs, tide_result_fn cb, void *ud);

/* --- work from other threads ---------------------------------------------- */

typedef void (*tide_post_fn)(tide_host *h, void *arg);

/* Thread-safe: queues fn(h, arg) to run on the loop thread, in the poll
 * phase, in the order posted. Many posts between two polls cost one
 * wake-up. Posts do not keep the loop alive (use tide_ref); queued ones
 * run when the loop next polls, and those still queued when the host is
 * freed run at the start of tide_host_free. Returns 0, or -1 (out of
 * memory, or the host is being freed: fn will not run). */
int tide_post(tide_host *h, tide_post_fn fn, void *arg);

/* --- the worker pool ------------------------------------------------------
 *
 * Blocking work runs on a pool of threads (TIDE_THREADPOOL_SIZE or
 * tide_options.threads, default 4), started on first use. A job's work
 * function runs on a pool thread and must not touch any lua_State or the
 * host; its done function runs afterwards on the loop thread, in the poll
 * phase. A job in flight keeps the loop alive. */

typedef struct tide_job tide_job;
typedef void (*tide_work_fn)(tide_job *job);
/* cancelled: 1 when the job never ran (tide_pool_cancel), and for every job
 * still in the pool while the host is being freed (then only release what
 * the job holds). The done function owns the job from then on. */
typedef void (*tide_done_fn)(tide_job *job, int cancelled);

struct tide_job {
  tide_work_fn work;
  tide_done_fn done;
  void *data;  /* for the caller */
  int slow;    /* a slow job (DNS, user calls that may take long): at most
                  half the threads run slow jobs at once */
  /* private to the pool */
  struct tide_job *next_;
  unsigned long long seq_;
  int state_;
};

/* Queues job (zero-initialise it, then set work, done, data, slow).
 * Returns 0, or -1 when no thread could be started. */
int tide_pool_submit(tide_host *h, tide_job *job);

/* Takes job off the queue if no thread has taken it yet; its done then
 * runs in the pending phase with cancelled = 1. Returns 1 if so, and 0 if
 * the job runs or has run (its done comes as usual). */
int tide_pool_cancel(tide_host *h, tide_job *job);

/* --- blocking calls from Lua ----------------------------------------------
 *
 * To make a blocking C function callable from Lua as a call that waits
 * (the calling task waits, the loop does not), write a start function that
 * checks its arguments, fills a struct and returns tide_blocking(...); and
 * publish it with tide_push_blocking. See docs/pool.md. */

/* Runs on the loop thread when the work is done: pushes the call's results
 * on L and returns how many. */
typedef int (*tide_push_fn)(lua_State *L, void *data);

/* In a start function (a lua_CFunction): submits work(data) to the pool and
 * pushes a request for tide_push_blocking's wrapper to wait on; returns 1,
 * which the start function returns. push(L, data) makes the results;
 * free_fn(data), if given, is called exactly once afterwards, also when the
 * call is cancelled or times out (then push is not called). Raises a Lua
 * error (after free_fn) when the pool cannot start. */
int tide_blocking(lua_State *L, void *data, void (*work)(void *data),
                  tide_push_fn push, void (*free_fn)(void *data), int slow);

/* Pushes a Lua function that calls start(...) and waits for the request it
 * returns; the function returns what push pushed. It must be called in a
 * task. name is the function's name for error messages ("bad argument #1
 * to 'name'"). */
void tide_push_blocking(lua_State *L, lua_CFunction start, const char *name);

#ifdef __cplusplus
}
#endif
#endif
