/*
 * examples/embed/bench.c - what calling Lua from C costs: a plain
 * lua_pcall, a task through tide_call, and a plugin hook (p:call inside
 * that task); then the cost of running plugin code with the JIT off and
 * the budget's count hook on, on a CPU-bound function.
 *
 *   embed_bench [calls [iterations]]
 *
 * calls: per call benchmark (default 1000000); iterations: of the
 * CPU-bound loop (default 3e7; 0 leaves that part out, as for a run under
 * valgrind --tool=callgrind --dump-after=bench_call, which then reports
 * the instructions of each call benchmark on its own).
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <tide.h>

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static long done_calls, failed_calls;

static void on_done(tide_host *h, lua_State *L, int status, int n, void *ud) {
  (void)h, (void)L, (void)n, (void)ud;
  if (status == TIDE_OK)
    done_calls++;
  else
    failed_calls++;
}

static void report(const char *what, long n, double secs, double base_ns) {
  double ns = secs * 1e9 / (double)n;
  printf("%-34s %9.0f calls/s  %7.1f ns/call", what, (double)n / secs, ns);
  if (base_ns > 0) printf("  (+%.1f ns)", ns - base_ns);
  printf("\n");
}

/* n calls of the global fn through tide_call; seconds (not inlined:
 * callgrind's --dump-after names it) */
#ifdef __GNUC__
__attribute__((noinline))
#endif
static double bench_call(tide_host *h, const char *fn, long n) {
  lua_State *L = tide_lua(h);
  double t0 = now();
  long i;
  done_calls = failed_calls = 0;
  for (i = 0; i < n; i++) {
    lua_getglobal(L, fn);
    lua_pushinteger(L, i);
    if (tide_call(h, 1, on_done, NULL) != 0) {
      fprintf(stderr, "%s\n", lua_tostring(L, -1));
      exit(1);
    }
  }
  if (done_calls != n) {
    fprintf(stderr, "%ld of %ld calls ended (%ld failed)\n", done_calls, n,
            failed_calls);
    exit(1);
  }
  return now() - t0;
}

/* runs code (which sets the global `result`) and returns it, or dies */
static double eval_number(tide_host *h, const char *code) {
  lua_State *L = tide_lua(h);
  double v;
  if (tide_run_string(h, code, "=bench") != 0 ||
      tide_loop_run(h, TIDE_RUN_DEFAULT) != 0) {
    fprintf(stderr, "%s\n", lua_tostring(L, -1));
    exit(1);
  }
  lua_getglobal(L, "result");
  v = lua_tonumber(L, -1);
  lua_pop(L, 1);
  return v;
}

static const char cpu_fn[] =
    "function(n) local x = 0 for i = 1, n do x = (x + i * 7) % 1000003 end "
    "return x end";

/* seconds that f(iters) takes, f being cpu_fn after the Lua statement
 * setup (which may replace it) */
static double cpu_time(tide_host *h, double iters, const char *setup) {
  char code[1024];
  snprintf(code, sizeof code,
           "local f = %s\n%s\n"
           "local t0 = tide.hrtime() f(%.0f) result = tide.hrtime() - t0",
           cpu_fn, setup, iters);
  return eval_number(h, code);
}

int main(int argc, char **argv) {
  long n = argc > 1 ? atol(argv[1]) : 1000000, i;
  double iters = argc > 2 ? atof(argv[2]) : 3e7;
  char err[256], path[] = "/tmp/tide-bench-XXXXXX.lua", code[1024];
  tide_host *h = tide_host_new(NULL, err, sizeof err);
  lua_State *L;
  double t, base, t_jit = 0, t_nojit = 0, t_hooked, t_plugin;
  FILE *f;
  int fd;
  if (!h || n <= 0 || !(iters >= 0)) {
    fprintf(stderr, "embed_bench: %s\n", h ? "bad count" : err);
    return 1;
  }
  L = tide_lua(h);

  /* a plain lua_pcall of the function, for the base line */
  eval_number(h, "function echo(x) return x end result = 0");
  t = now();
  for (i = 0; i < n; i++) {
    lua_getglobal(L, "echo");
    lua_pushinteger(L, i);
    if (lua_pcall(L, 1, 1, 0) != 0) return 1;
    lua_pop(L, 1);
  }
  t = now() - t;
  base = t * 1e9 / (double)n;
  report("lua_pcall (no task)", n, t, 0);
  report("tide_call (a task, to a callback)", n, bench_call(h, "echo", n),
         base);

  /* CPU-bound, before any plugin: JIT, then JIT off */
  if (iters > 0) {
    t_jit = cpu_time(h, iters, "");
    t_nojit = cpu_time(h, iters, "jit.off(f)");
  }

  /* a plugin */
  fd = mkstemps(path, 4);
  if (fd < 0 || !(f = fdopen(fd, "w"))) return 1;
  fprintf(f, "return { echo = function(x) return x end, cpu = %s }\n",
          cpu_fn);
  fclose(f);
  snprintf(code, sizeof code,
           "p = assert(require('tide.plugin').load('%s', {budget = 60}))\n"
           "function hook(x) return p:call('echo', x) end\n"
           "result = 0", path);
  eval_number(h, code);
  report("tide_call, a plugin loaded", n, bench_call(h, "echo", n), base);
  report("tide_call of a plugin hook", n, bench_call(h, "hook", n), base);

  if (iters > 0) {
    t_hooked = cpu_time(h, iters, "jit.off(f)");
    t_plugin = cpu_time(h, iters, "f = function(n) "
                                  "return assert(p:call('cpu', n)) end");
    printf("\nCPU-bound loop, %.0f iterations:\n"
           "  host code, JIT on               %7.1f ms\n"
           "  host code, JIT off              %7.1f ms\n"
           "  host code, JIT off, plugin loaded %5.1f ms\n"
           "  plugin hook (JIT off, budgeted) %7.1f ms  (%.1fx the JIT, "
           "%.2fx the interpreter)\n",
           iters, t_jit * 1e3, t_nojit * 1e3, t_hooked * 1e3, t_plugin * 1e3,
           t_plugin / t_jit, t_plugin / t_nojit);
  }
  unlink(path);
  tide_host_free(h);
  return 0;
}
