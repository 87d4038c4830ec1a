/*
 * spec/c/check_embed.c - embedding tide through its public header only
 * (host/tide.h, plus lua.h and lauxlib.h), with libcheck.
 *
 * These tests are what a C program that embeds tide relies on: creating
 * hosts from options, registering functions and modules, running strings
 * and files as tasks, driving the loop (to completion or step by step),
 * exit codes, several hosts in one process, and freeing a host that still
 * has work armed (run under AddressSanitizer to check for leaks and
 * use-after-free).
 */
#define _GNU_SOURCE
#include <check.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <lauxlib.h>
#include <lua.h>

#include "tide.h"

#include "call_result.h"

/* ---- helpers ------------------------------------------------------------ */

static double seconds(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static tide_host *new_host(const tide_options *o) {
  char err[256] = "";
  tide_host *h = tide_host_new(o, err, sizeof err);
  ck_assert_msg(h != NULL, "tide_host_new: %s", err);
  return h;
}

/* Evaluates a Lua expression in the host's main state, as a string
 * (tostring of the first result), copied into a static buffer. */
static const char *eval(tide_host *h, const char *expr) {
  static char buf[4][1024];
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

/* Runs a chunk as a task; fails the test if it does not load. */
static void run(tide_host *h, const char *code) {
  lua_State *L = tide_lua(h);
  int top = lua_gettop(L);
  if (tide_run_string(h, code, "=test") != 0)
    ck_abort_msg("tide_run_string: %s", lua_tostring(L, -1));
  ck_assert_int_eq(lua_gettop(L), top);
}

static char tmpdir[64];

static void make_tmpdir(void) {
  snprintf(tmpdir, sizeof tmpdir, "/tmp/tide-embed-XXXXXX");
  ck_assert_ptr_nonnull(mkdtemp(tmpdir));
}

/* Writes dir/name; returns the path (static buffer). */
static const char *write_file(const char *name, const char *text) {
  static char path[256];
  FILE *f;
  snprintf(path, sizeof path, "%s/%s", tmpdir, name);
  f = fopen(path, "w");
  ck_assert_ptr_nonnull(f);
  ck_assert_int_eq(fputs(text, f) >= 0, 1);
  ck_assert_int_eq(fclose(f), 0);
  return path;
}

static void remove_tmpdir(void) {
  char cmd[128];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
  ck_assert_int_eq(system(cmd), 0);
}

/* stderr captured into a file while the host reports errors */
static int saved_stderr = -1;
static char errpath[96];

static void capture_stderr(void) {
  int fd;
  snprintf(errpath, sizeof errpath, "/tmp/tide-embed-err-XXXXXX");
  fd = mkstemp(errpath);
  ck_assert_int_ge(fd, 0);
  fflush(stderr);
  saved_stderr = dup(2);
  dup2(fd, 2);
  close(fd);
}

static const char *captured_stderr(void) {
  static char buf[8192];
  FILE *f;
  size_t n;
  fflush(stderr);
  dup2(saved_stderr, 2);
  close(saved_stderr);
  f = fopen(errpath, "r");
  ck_assert_ptr_nonnull(f);
  n = fread(buf, 1, sizeof buf - 1, f);
  buf[n] = '\0';
  fclose(f);
  unlink(errpath);
  return buf;
}

/* ---- C functions registered into Lua -------------------------------------- */

static int calls;
static tide_host *called_host;

static int l_cfun(lua_State *L) {
  calls++;
  called_host = tide_from_lua(L);
  lua_pushinteger(L, luaL_checkinteger(L, 1) * 2);
  return 1;
}

static int l_mod_add(lua_State *L) {
  lua_pushnumber(L, luaL_checknumber(L, 1) + luaL_checknumber(L, 2));
  return 1;
}

static int module_opens;

static int luaopen_mymod(lua_State *L) {
  module_opens++;
  lua_newtable(L);
  lua_pushcfunction(L, l_mod_add);
  lua_setfield(L, -2, "add");
  lua_pushstring(L, luaL_optstring(L, 1, "?")); /* require passes the name */
  lua_setfield(L, -2, "name");
  return 1;
}

/* ---- creating a host ------------------------------------------------------ */

START_TEST(test_options_arg) {
  char *argv[] = {"tide", "-e", "script.lua", "a", "b c", NULL};
  tide_options o;
  tide_host *h;
  memset(&o, 0, sizeof o);
  o.argc = 5;
  o.argv = argv;
  o.script_index = 2;
  h = new_host(&o);
  ck_assert_str_eq(eval(h, "type(arg)"), "table");
  ck_assert_str_eq(eval(h, "arg[-2]"), "tide");
  ck_assert_str_eq(eval(h, "arg[-1]"), "-e");
  ck_assert_str_eq(eval(h, "arg[0]"), "script.lua");
  ck_assert_str_eq(eval(h, "arg[1]"), "a");
  ck_assert_str_eq(eval(h, "arg[2]"), "b c");
  ck_assert_str_eq(eval(h, "#arg"), "2");
  ck_assert_str_eq(eval(h, "arg[3]"), "nil");
  ck_assert_str_eq(eval(h, "arg[-3]"), "nil");
  ck_assert_str_eq(eval(h, "type(tide)"), "table");
  ck_assert_str_eq(eval(h, "tide.version"), TIDE_VERSION);
  /* the host copied what it needs: the caller's strings may go */
  argv[3] = "changed";
  ck_assert_str_eq(eval(h, "arg[1]"), "a");
  tide_host_free(h);
}
END_TEST

START_TEST(test_options_default_and_no_globals) {
  tide_options o;
  tide_host *h = new_host(NULL); /* NULL options: defaults */
  ck_assert_str_eq(eval(h, "type(tide)"), "table");
  ck_assert_str_eq(eval(h, "type(arg)"), "nil"); /* no argv given */
  ck_assert_str_eq(eval(h, "require('tide') == tide"), "true");
  tide_host_free(h);

  memset(&o, 0, sizeof o);
  o.no_globals = 1;
  h = new_host(&o);
  ck_assert_str_eq(eval(h, "type(tide)"), "nil");
  ck_assert_str_eq(eval(h, "type(require('tide').after)"), "function");
  tide_host_free(h);
}
END_TEST

/* script_dir goes in front of package.path: require finds its modules. */
START_TEST(test_options_script_dir) {
  tide_options o;
  tide_host *h;
  make_tmpdir();
  write_file("helper.lua", "return { answer = 42 }\n");
  memset(&o, 0, sizeof o);
  o.script_dir = tmpdir;
  h = new_host(&o);
  ck_assert_str_eq(eval(h, "require('helper').answer"), "42");
  tide_host_free(h);
  remove_tmpdir();
}
END_TEST

START_TEST(test_lua_and_base) {
  tide_host *h = new_host(NULL);
  lua_State *L = tide_lua(h), *co, *other;
  ck_assert_ptr_nonnull(L);
  ck_assert_ptr_nonnull(tide_event_base(h));
  ck_assert_ptr_eq(tide_from_lua(L), h);
  /* any coroutine of the host's state */
  co = lua_newthread(L);
  ck_assert_ptr_eq(tide_from_lua(co), h);
  lua_pop(L, 1);
  /* a Lua state that is not a host's */
  other = luaL_newstate();
  ck_assert_ptr_null(tide_from_lua(other));
  lua_close(other);
  tide_host_free(h);
}
END_TEST

START_TEST(test_free_null) { tide_host_free(NULL); }
END_TEST

/* ---- registering --------------------------------------------------------- */

START_TEST(test_register_function) {
  tide_host *h = new_host(NULL);
  calls = 0;
  called_host = NULL;
  tide_register(h, "double", l_cfun);
  ck_assert_str_eq(eval(h, "double(21)"), "42");
  ck_assert_int_eq(calls, 1);
  ck_assert_ptr_eq(called_host, h);
  /* from a task (a coroutine of the host) too */
  run(h, "tide.sleep(0); result = double(5)");
  ck_assert_int_eq(tide_loop_run(h, TIDE_RUN_DEFAULT), 0);
  ck_assert_str_eq(eval(h, "result"), "10");
  ck_assert_int_eq(calls, 2);
  ck_assert_ptr_eq(called_host, h);
  tide_host_free(h);
}
END_TEST

START_TEST(test_register_module) {
  tide_host *h = new_host(NULL);
  module_opens = 0;
  ck_assert_str_eq(eval(h, "pcall(require, 'mymod')"), "false");
  tide_register_module(h, "mymod", luaopen_mymod);
  ck_assert_int_eq(module_opens, 0); /* opened by require, not before */
  ck_assert_str_eq(eval(h, "require('mymod').add(2, 3)"), "5");
  ck_assert_str_eq(eval(h, "require('mymod').name"), "mymod");
  ck_assert_str_eq(eval(h, "require('mymod') == package.loaded.mymod"),
                   "true");
  ck_assert_int_eq(module_opens, 1); /* once */
  tide_host_free(h);
}
END_TEST

/* ---- running code ----------------------------------------------------------- */

START_TEST(test_run_string_is_a_task) {
  tide_host *h = new_host(NULL);
  calls = 0;
  tide_register(h, "cfun", l_cfun);
  /* runs at once until its first wait */
  run(h, "before = true\ntide.sleep(0.01)\ncfun(1)\nafter = true");
  ck_assert_str_eq(eval(h, "before"), "true");
  ck_assert_int_eq(calls, 0);
  ck_assert_str_eq(eval(h, "after"), "nil");
  ck_assert_int_eq(tide_loop_run(h, TIDE_RUN_DEFAULT), 0);
  ck_assert_int_eq(calls, 1);
  ck_assert_str_eq(eval(h, "after"), "true");
  ck_assert_int_eq(tide_exit_code(h), -1);
  tide_host_free(h);
}
END_TEST

START_TEST(test_run_string_syntax_error) {
  tide_host *h = new_host(NULL);
  lua_State *L = tide_lua(h);
  int top = lua_gettop(L);
  ck_assert_int_eq(tide_run_string(h, "x = = 1", "=broken"), -1);
  ck_assert_int_eq(lua_gettop(L), top + 1);
  ck_assert_int_eq(lua_type(L, -1), LUA_TSTRING);
  ck_assert_msg(strstr(lua_tostring(L, -1), "broken:1:") != NULL,
                "message: %s", lua_tostring(L, -1));
  lua_pop(L, 1);
  /* nothing was started; the host still works */
  ck_assert_str_eq(eval(h, "x"), "nil");
  ck_assert_int_eq(tide_loop_run(h, TIDE_RUN_DEFAULT), 0);
  run(h, "x = 1");
  ck_assert_str_eq(eval(h, "x"), "1");
  ck_assert_int_eq(tide_exit_code(h), -1);
  tide_host_free(h);
}
END_TEST

/* An error raised later by a task started with tide_run_string is reported
 * and does not stop the loop or set an exit code. */
START_TEST(test_run_string_task_error_is_reported) {
  tide_host *h = new_host(NULL);
  const char *err;
  run(h, "tide.after(0.02, function() later = true end)\n"
         "tide.sleep(0); error('task failed here')");
  capture_stderr();
  ck_assert_int_eq(tide_loop_run(h, TIDE_RUN_DEFAULT), 0);
  err = captured_stderr();
  ck_assert_msg(strstr(err, "task failed here") != NULL, "stderr: %s", err);
  ck_assert_str_eq(eval(h, "later"), "true");
  ck_assert_int_eq(tide_exit_code(h), -1);
  tide_host_free(h);
}
END_TEST

START_TEST(test_run_file) {
  tide_host *h = new_host(NULL);
  lua_State *L = tide_lua(h);
  const char *path;
  make_tmpdir();
  path = write_file("script.lua",
                    "local name = ...\n"
                    "from_file = 'started'\n"
                    "tide.sleep(0.001)\n"
                    "from_file = 'finished'\n");
  ck_assert_int_eq(tide_run_file(h, path), 0);
  ck_assert_str_eq(eval(h, "from_file"), "started");
  ck_assert_int_eq(tide_loop_run(h, TIDE_RUN_DEFAULT), 0);
  ck_assert_str_eq(eval(h, "from_file"), "finished");

  /* a file that does not exist, and one that does not parse */
  ck_assert_int_eq(tide_run_file(h, "/nonexistent/tide/x.lua"), -1);
  ck_assert_int_eq(lua_type(L, -1), LUA_TSTRING);
  ck_assert_ptr_nonnull(strstr(lua_tostring(L, -1), "x.lua"));
  lua_pop(L, 1);
  path = write_file("bad.lua", "local = 1\n");
  ck_assert_int_eq(tide_run_file(h, path), -1);
  ck_assert_ptr_nonnull(strstr(lua_tostring(L, -1), "bad.lua:1:"));
  lua_pop(L, 1);
  ck_assert_int_eq(lua_gettop(L), 0);
  tide_host_free(h);
  remove_tmpdir();
}
END_TEST

/* TIDE_RUN_ONCE runs one iteration per call: a host with its own loop can
 * interleave its work with tide's. */
START_TEST(test_run_once_steps) {
  tide_host *h = new_host(NULL);
  int rc, n = 0;
  char seen[64] = "";
  run(h, "steps = 0\n"
         "local function step()\n"
         "  steps = steps + 1\n"
         "  if steps < 4 then tide.immediate(step) end\n"
         "end\n"
         "tide.immediate(step)");
  ck_assert_str_eq(eval(h, "steps"), "0");
  do {
    rc = tide_loop_run(h, TIDE_RUN_ONCE);
    n++;
    strcat(seen, eval(h, "steps"));
    strcat(seen, rc == 1 ? "+" : rc == 0 ? "." : "!");
  } while (rc == 1 && n < 10);
  ck_assert_str_eq(seen, "1+2+3+4.");
  ck_assert_int_eq(tide_exit_code(h), -1);
  tide_host_free(h);
}
END_TEST

/* TIDE_RUN_ONCE waits for what is pending instead of returning at once. */
START_TEST(test_run_once_waits) {
  tide_host *h = new_host(NULL);
  int rc, n = 0;
  double t0 = seconds(), dt;
  run(h, "tide.sleep(0.02); woke = true");
  while ((rc = tide_loop_run(h, TIDE_RUN_ONCE)) == 1 && n < 100) n++;
  dt = seconds() - t0;
  ck_assert_int_eq(rc, 0);
  ck_assert_str_eq(eval(h, "woke"), "true");
  ck_assert_msg(dt >= 0.019, "woke after %.3f s", dt);
  ck_assert_msg(n <= 5, "%d iterations for one 20 ms sleep", n);
  tide_host_free(h);
}
END_TEST

/* ---- exit codes -------------------------------------------------------------- */

START_TEST(test_run_main_error) {
  tide_host *h = new_host(NULL);
  const char *path, *err;
  make_tmpdir();
  path = write_file("main.lua",
                    "tide.after(0.005, function() other = true end)\n"
                    "tide.after(5, function() never = true end)\n"
                    "tide.sleep(0.01)\n"
                    "local function inner() error('main went wrong') end\n"
                    "inner()\n"
                    "after_error = true\n");
  ck_assert_int_eq(tide_run_main(h, path), 0);
  ck_assert_int_eq(tide_exit_code(h), -1); /* not yet */
  capture_stderr();
  ck_assert_int_eq(tide_loop_run(h, TIDE_RUN_DEFAULT), -1);
  err = captured_stderr();
  ck_assert_int_eq(tide_exit_code(h), 1);
  ck_assert_str_eq(eval(h, "other"), "true");
  ck_assert_str_eq(eval(h, "never"), "nil");
  ck_assert_str_eq(eval(h, "after_error"), "nil");
  ck_assert_msg(strstr(err, "main went wrong") != NULL, "stderr: %s", err);
  ck_assert_msg(strstr(err, "traceback") != NULL, "no traceback: %s", err);
  ck_assert_msg(strstr(err, "inner") != NULL, "no frame: %s", err);
  /* it stays exiting */
  ck_assert_int_eq(tide_loop_run(h, TIDE_RUN_DEFAULT), -1);
  ck_assert_int_eq(tide_exit_code(h), 1);
  tide_host_free(h);
  remove_tmpdir();
}
END_TEST

/* An error before the main task's first wait: tide_run_main still returns
 * 0 (the chunk loaded and started) and the loop does not run. */
START_TEST(test_run_main_error_at_once) {
  tide_host *h = new_host(NULL);
  const char *path, *err;
  make_tmpdir();
  path = write_file("main.lua", "tide.after(0, function() ran = true end)\n"
                                "error('at once')\n");
  capture_stderr();
  ck_assert_int_eq(tide_run_main(h, path), 0);
  ck_assert_int_eq(tide_exit_code(h), 1);
  ck_assert_int_eq(tide_loop_run(h, TIDE_RUN_DEFAULT), -1);
  err = captured_stderr();
  ck_assert_msg(strstr(err, "at once") != NULL, "stderr: %s", err);
  ck_assert_str_eq(eval(h, "ran"), "nil");
  tide_host_free(h);
  remove_tmpdir();
}
END_TEST

START_TEST(test_exit_code) {
  tide_host *h = new_host(NULL);
  run(h, "tide.exit(7)\nreached = true");
  ck_assert_str_eq(eval(h, "reached"), "nil");
  ck_assert_int_eq(tide_exit_code(h), 7);
  ck_assert_int_eq(tide_loop_run(h, TIDE_RUN_DEFAULT), -1);
  ck_assert_int_eq(tide_exit_code(h), 7);
  tide_host_free(h);
}
END_TEST

/* tide.exit from a timer callback: the loop stops after that callback, even
 * with an equal-deadline timer due in the same pass and other work left;
 * the first reason to exit wins. */
START_TEST(test_exit_from_callback) {
  tide_host *h = new_host(NULL);
  run(h, "tide.every(0.001, function() ticks = (ticks or 0) + 1 end)\n"
         "tide.after(0.01, function() tide.exit(7); reached = true end)\n"
         "tide.after(0.01, function() second = true; tide.exit(3) end)\n"
         "tide.sleep(1); woke = true");
  ck_assert_int_eq(tide_exit_code(h), -1);
  ck_assert_int_eq(tide_loop_run(h, TIDE_RUN_DEFAULT), -1);
  ck_assert_int_eq(tide_exit_code(h), 7);
  ck_assert_str_eq(eval(h, "reached"), "nil");
  ck_assert_str_eq(eval(h, "second"), "nil");
  ck_assert_str_eq(eval(h, "woke"), "nil");
  ck_assert_str_eq(eval(h, "ticks ~= nil"), "true");
  tide_host_free(h);
}
END_TEST

START_TEST(test_exit_variants) {
  static const struct {
    const char *code;
    int status;
  } cases[] = {{"tide.exit()", 0},      {"tide.exit(0)", 0},
               {"tide.exit(true)", 0},  {"tide.exit(false)", 1},
               {"tide.exit(255)", 255}, {"tide.sleep(0); tide.exit(2)", 2}};
  size_t i;
  for (i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    tide_host *h = new_host(NULL);
    run(h, cases[i].code);
    tide_loop_run(h, TIDE_RUN_DEFAULT);
    ck_assert_msg(tide_exit_code(h) == cases[i].status, "%s: exit code %d",
                  cases[i].code, tide_exit_code(h));
    tide_host_free(h);
  }
}
END_TEST

/* ---- several hosts --------------------------------------------------------- */

START_TEST(test_two_hosts_independent) {
  tide_host *a = new_host(NULL), *b = new_host(NULL);
  ck_assert_ptr_ne(tide_lua(a), tide_lua(b));
  ck_assert_ptr_ne(tide_event_base(a), tide_event_base(b));
  ck_assert_ptr_eq(tide_from_lua(tide_lua(a)), a);
  ck_assert_ptr_eq(tide_from_lua(tide_lua(b)), b);

  calls = 0;
  tide_register(a, "cfun", l_cfun);
  ck_assert_str_eq(eval(b, "type(cfun)"), "nil");
  tide_register_module(b, "mymod", luaopen_mymod);
  ck_assert_str_eq(eval(a, "pcall(require, 'mymod')"), "false");

  run(a, "name = 'a'; tide.sleep(0.005); cfun(1); done = true");
  run(b, "name = 'b'; tide.sleep(0.005); done = true");
  ck_assert_str_eq(eval(a, "name"), "a");
  ck_assert_str_eq(eval(b, "name"), "b");

  /* running a runs only a's work */
  ck_assert_int_eq(tide_loop_run(a, TIDE_RUN_DEFAULT), 0);
  ck_assert_str_eq(eval(a, "done"), "true");
  ck_assert_str_eq(eval(b, "done"), "nil");
  ck_assert_int_eq(calls, 1);
  ck_assert_ptr_eq(called_host, a);

  /* exit of one does not touch the other */
  run(a, "tide.exit(4)");
  ck_assert_int_eq(tide_exit_code(a), 4);
  ck_assert_int_eq(tide_exit_code(b), -1);
  ck_assert_int_eq(tide_loop_run(b, TIDE_RUN_DEFAULT), 0);
  ck_assert_str_eq(eval(b, "done"), "true");
  tide_host_free(a);
  /* b outlives a */
  run(b, "tide.sleep(0.001); again = true");
  ck_assert_int_eq(tide_loop_run(b, TIDE_RUN_DEFAULT), 0);
  ck_assert_str_eq(eval(b, "again"), "true");
  tide_host_free(b);
}
END_TEST

/* Interleaved stepping of two hosts from one thread. */
START_TEST(test_two_hosts_interleaved) {
  tide_host *a = new_host(NULL), *b = new_host(NULL);
  int ra = 1, rb = 1, n = 0;
  run(a, "n = 0; for i = 1, 3 do tide.sleep(0.002); n = n + 1 end");
  run(b, "n = 0; for i = 1, 5 do tide.sleep(0.001); n = n + 10 end");
  while ((ra == 1 || rb == 1) && n++ < 1000) {
    if (ra == 1) ra = tide_loop_run(a, TIDE_RUN_NOWAIT);
    if (rb == 1) rb = tide_loop_run(b, TIDE_RUN_NOWAIT);
    usleep(200); /* stands in for the embedder's own work */
  }
  ck_assert_int_eq(ra, 0);
  ck_assert_int_eq(rb, 0);
  ck_assert_str_eq(eval(a, "n"), "3");
  ck_assert_str_eq(eval(b, "n"), "50");
  tide_host_free(a);
  tide_host_free(b);
}
END_TEST

/* One host per thread, running at the same time. */
typedef struct thread_job {
  int id, ok;
  char result[64];
} thread_job;

static void *host_thread(void *p) {
  thread_job *j = p;
  char err[128];
  tide_host *h = tide_host_new(NULL, err, sizeof err);
  lua_State *L;
  if (!h) return NULL;
  L = tide_lua(h);
  lua_pushinteger(L, j->id);
  lua_setglobal(L, "id");
  if (tide_run_string(h,
                      "local s = 0\n"
                      "for i = 1, 20 do tide.sleep(0.001); s = s + id end\n"
                      "tide.every(0.001, function() end):unref()\n"
                      "result = tostring(s)",
                      "=thread") == 0 &&
      tide_loop_run(h, TIDE_RUN_DEFAULT) == 0) {
    lua_getglobal(L, "result");
    if (lua_isstring(L, -1)) {
      snprintf(j->result, sizeof j->result, "%s", lua_tostring(L, -1));
      j->ok = tide_from_lua(L) == h;
    }
    lua_pop(L, 1);
  }
  tide_host_free(h);
  return NULL;
}

START_TEST(test_hosts_in_threads) {
  enum { N = 4 };
  pthread_t th[N];
  thread_job jobs[N];
  int i;
  memset(jobs, 0, sizeof jobs);
  for (i = 0; i < N; i++) {
    jobs[i].id = i + 1;
    ck_assert_int_eq(pthread_create(&th[i], NULL, host_thread, &jobs[i]), 0);
  }
  for (i = 0; i < N; i++) ck_assert_int_eq(pthread_join(th[i], NULL), 0);
  for (i = 0; i < N; i++) {
    char want[16];
    snprintf(want, sizeof want, "%d", 20 * (i + 1));
    ck_assert_int_eq(jobs[i].ok, 1);
    ck_assert_str_eq(jobs[i].result, want);
  }
}
END_TEST

/* ---- freeing a host that still has work ------------------------------------- */

/* bad() counts the callbacks that run; none of the ones armed by
 * busy_script may run while the host is freed. */
static int bad_calls;

static int l_bad(lua_State *L) {
  (void)L;
  bad_calls++;
  return 0;
}

static const char *busy_script =
    "local f = bad\n"
    "for i = 1, 200 do tide.after(i % 7 + 1, f, i, {i}) end\n"
    "for i = 1, 50 do tide.every(i, f) end\n"
    "tide.after(3, f):unref()\n"
    "for i = 1, 200 do tide.immediate(f, i, {i}) end\n"
    "tide.immediate(f):unref()\n"
    "local t = tide.after(1, f); t:stop(); t:again(2)\n"
    "local c = tide.after(1, f); c:close(function() closed = true end)\n"
    "local ch = tide.channel()\n"
    "for i = 1, 20 do tide.spawn(function() tide.sleep(100); f() end) end\n"
    "for i = 1, 20 do tide.spawn(function() ch:recv(50); f() end) end\n"
    "tide.spawn(function() tide.timeout(30, function() ch:recv() end); f()\n"
    "  end)\n"
    "tide.sleep(100)\n"
    "f()\n";

/* Freed before the loop ran: timers armed, immediates queued, tasks
 * waiting, a close callback queued. */
START_TEST(test_free_with_work_armed) {
  tide_host *h = new_host(NULL);
  tide_register(h, "bad", l_bad);
  run(h, busy_script);
  ck_assert_int_eq(tide_exit_code(h), -1);
  bad_calls = 0;
  tide_host_free(h); /* ASan reports leaks or bad accesses */
  ck_assert_int_eq(bad_calls, 0);
}
END_TEST

START_TEST(test_free_after_running) {
  tide_host *h = new_host(NULL);
  int i;
  tide_register(h, "bad", l_bad);
  run(h, busy_script);
  bad_calls = 0;
  for (i = 0; i < 3; i++) ck_assert_int_eq(tide_loop_run(h, TIDE_RUN_NOWAIT), 1);
  ck_assert_int_eq(bad_calls, 201); /* the immediates ran, and only they */
  ck_assert_str_eq(eval(h, "closed"), "true");
  /* more queued, then freed */
  run(h, "for i = 1, 10 do tide.immediate(bad) end");
  bad_calls = 0;
  tide_host_free(h);
  ck_assert_int_eq(bad_calls, 0);
}
END_TEST

/* A task waiting for a descriptor to become readable (the REPL's
 * tide._wait_readable, which is not public API: skipped when absent). */
START_TEST(test_free_with_readable_wait) {
  tide_host *h = new_host(NULL);
  lua_State *L = tide_lua(h);
  int p[2];
  ck_assert_int_eq(pipe(p), 0);
  if (strcmp(eval(h, "type(tide._wait_readable)"), "function") == 0) {
    lua_pushinteger(L, p[0]);
    lua_setglobal(L, "fd");
    run(h, "tide._wait_readable(fd); woke = true");
    ck_assert_int_eq(tide_loop_run(h, TIDE_RUN_NOWAIT), 1);
    ck_assert_str_eq(eval(h, "woke"), "nil");
  }
  tide_host_free(h); /* ASan: the watcher and its event must not leak */
  close(p[0]);
  close(p[1]);
}
END_TEST

START_TEST(test_free_while_exiting) {
  tide_host *h = new_host(NULL);
  run(h, "for i = 1, 10 do tide.after(i, print) end\n"
         "tide.immediate(print)\n"
         "tide.after(0, function() tide.exit(3) end)\n"
         "tide.sleep(10)");
  ck_assert_int_eq(tide_loop_run(h, TIDE_RUN_DEFAULT), -1);
  ck_assert_int_eq(tide_exit_code(h), 3);
  tide_host_free(h);
}
END_TEST

/* Many hosts created and freed: nothing accumulates (ASan counts leaks). */
START_TEST(test_many_hosts) {
  int i;
  for (i = 0; i < 50; i++) {
    tide_host *h = new_host(NULL);
    run(h, "tide.after(1, print); tide.immediate(print); tide.sleep(1)");
    tide_host_free(h);
  }
}
END_TEST

/* ---- calling Lua functions as tasks from C (tide_call) ---------------------- */

/* pushes the global function `name` and its arguments, then tide_call */
static int call_global(tide_host *h, const char *name, const char *arg,
                       call_result *r) {
  lua_State *L = tide_lua(h);
  lua_getglobal(L, name);
  if (arg) lua_pushstring(L, arg);
  return tide_call(h, arg ? 1 : 0, on_result, r);
}

START_TEST(test_call_results) {
  tide_host *h = new_host(NULL);
  lua_State *L = tide_lua(h);
  call_result r;
  int top = lua_gettop(L);
  memset(&r, 0, sizeof r);
  run(h, "function f(x) return 'got ' .. x, 42, nil end");
  ck_assert_int_eq(call_global(h, "f", "a", &r), 0);
  /* it returned at once: the callback already ran */
  ck_assert_int_eq(r.called, 1);
  ck_assert_int_eq(r.status, TIDE_OK);
  ck_assert_int_eq(r.n, 3);
  ck_assert_str_eq(r.values[0], "got a");
  ck_assert_str_eq(r.values[1], "42");
  ck_assert_str_eq(r.values[2], "nil");
  ck_assert_ptr_ne(r.L, L); /* the task's own coroutine */
  ck_assert_int_eq(lua_gettop(L), top);
  tide_host_free(h);
  ck_assert_int_eq(r.called, 1);
}
END_TEST

START_TEST(test_call_waits) {
  tide_host *h = new_host(NULL);
  call_result r;
  memset(&r, 0, sizeof r);
  run(h, "function f(x) tide.sleep(0.02); return x .. ' later', tide.phase() end");
  ck_assert_int_eq(call_global(h, "f", "done", &r), 0);
  ck_assert_int_eq(r.called, 0); /* waiting */
  ck_assert_int_eq(tide_loop_run(h, TIDE_RUN_DEFAULT), 0);
  ck_assert_int_eq(r.called, 1);
  ck_assert_int_eq(r.status, TIDE_OK);
  ck_assert_str_eq(r.values[0], "done later");
  ck_assert_str_eq(r.values[1], "timers");
  tide_host_free(h);
}
END_TEST

START_TEST(test_call_error) {
  tide_host *h = new_host(NULL);
  call_result r;
  memset(&r, 0, sizeof r);
  run(h, "function f(x)\n  tide.sleep(0.001)\n  error('bad ' .. x)\nend\n"
         "function g() error({}) end");
  capture_stderr();
  ck_assert_int_eq(call_global(h, "f", "input", &r), 0);
  ck_assert_int_eq(tide_loop_run(h, TIDE_RUN_DEFAULT), 0);
  ck_assert_int_eq(r.called, 1);
  ck_assert_int_eq(r.status, TIDE_ERROR);
  ck_assert_int_eq(r.n, 1);
  ck_assert_msg(strstr(r.values[0], "test:3: bad input") != NULL, "%s",
                r.values[0]);
  memset(&r, 0, sizeof r);
  ck_assert_int_eq(call_global(h, "g", NULL, &r), 0);
  ck_assert_int_eq(r.status, TIDE_ERROR);
  ck_assert_str_eq(r.values[0], "(error object is a table value)");
  /* the callback had the error: tide.on_error did not */
  ck_assert_str_eq(captured_stderr(), "");
  tide_host_free(h);
}
END_TEST

START_TEST(test_call_not_callable) {
  tide_host *h = new_host(NULL);
  lua_State *L = tide_lua(h);
  call_result r;
  int top = lua_gettop(L);
  memset(&r, 0, sizeof r);
  lua_pushinteger(L, 5);
  lua_pushinteger(L, 6);
  ck_assert_int_eq(tide_call(h, 1, on_result, &r), -1);
  ck_assert_int_eq(lua_gettop(L), top + 1);
  ck_assert_str_eq(lua_tostring(L, -1), "tide_call: attempt to call a number value");
  lua_pop(L, 1);
  ck_assert_int_eq(r.called, 0);
  /* a callable table is fine */
  run(h, "callable = setmetatable({}, {__call = function(self, x) return x end})");
  lua_getglobal(L, "callable");
  lua_pushliteral(L, "via __call");
  ck_assert_int_eq(tide_call(h, 1, on_result, &r), 0);
  ck_assert_str_eq(r.values[0], "via __call");
  tide_host_free(h);
}
END_TEST

/* a callback that starts the next call: the chain runs in order */
static int chain_left;
static char chain_log[256];

static void on_chain(tide_host *h, lua_State *L, int status, int n, void *ud) {
  (void)ud, (void)n;
  ck_assert_int_eq(status, TIDE_OK);
  strncat(chain_log, lua_tostring(L, -1), sizeof chain_log - strlen(chain_log) - 1);
  if (--chain_left > 0) {
    lua_getglobal(L, "step");
    lua_pushinteger(L, chain_left);
    ck_assert_int_eq(tide_call(h, 1, on_chain, NULL), 0);
  }
}

START_TEST(test_call_from_callback) {
  tide_host *h = new_host(NULL);
  lua_State *L = tide_lua(h);
  chain_left = 3;
  chain_log[0] = '\0';
  run(h, "function step(i) tide.sleep(0.001) return tostring(i) end");
  lua_getglobal(L, "step");
  lua_pushinteger(L, 3);
  ck_assert_int_eq(tide_call(h, 1, on_chain, NULL), 0);
  ck_assert_int_eq(tide_loop_run(h, TIDE_RUN_DEFAULT), 0);
  ck_assert_str_eq(chain_log, "321");
  ck_assert_int_eq(chain_left, 0);
  tide_host_free(h);
}
END_TEST

/* tide_call from a C function that a task calls: the new task starts
 * when the calling one waits */
static call_result from_c[3];
static int from_c_n;

static int l_call_from_c(lua_State *L) {
  tide_host *h = tide_from_lua(L);
  lua_State *M = tide_lua(h);
  lua_getglobal(M, "target");
  lua_pushstring(M, luaL_checkstring(L, 1));
  lua_pushinteger(L, tide_call(h, 1, on_result, &from_c[from_c_n++ % 3]));
  return 1;
}

START_TEST(test_call_from_c_function) {
  tide_host *h = new_host(NULL);
  memset(from_c, 0, sizeof from_c);
  from_c_n = 0;
  tide_register(h, "call_from_c", l_call_from_c);
  run(h, "order = ''\n"
         "function target(x) order = order .. x tide.sleep(0.001) return 'got ' .. x end\n"
         "for i = 1, 3 do\n"
         "  assert(call_from_c(tostring(i)) == 0)\n"
         "  order = order .. 'c'\n"
         "  tide.sleep(0)\n"
         "end");
  ck_assert_int_eq(tide_loop_run(h, TIDE_RUN_DEFAULT), 0);
  ck_assert_str_eq(eval(h, "order"), "c1c2c3");
  ck_assert_str_eq(from_c[0].values[0], "got 1");
  ck_assert_str_eq(from_c[2].values[0], "got 3");
  ck_assert_int_eq(from_c[2].called, 1);
  tide_host_free(h);
}
END_TEST

/* a call whose task never ends: its callback runs once, at free */
START_TEST(test_call_abandoned_at_free) {
  tide_host *h = new_host(NULL);
  call_result r;
  memset(&r, 0, sizeof r);
  run(h, "ch = tide.channel() function f() return ch:recv() end");
  ck_assert_int_eq(call_global(h, "f", NULL, &r), 0);
  ck_assert_int_eq(tide_loop_run(h, TIDE_RUN_DEFAULT), 0); /* nothing keeps it */
  ck_assert_int_eq(r.called, 0);
  tide_host_free(h);
  ck_assert_int_eq(r.called, 1);
  ck_assert_int_eq(r.status, TIDE_ERROR);
  ck_assert_str_eq(r.values[0], "the call did not finish: the host was freed");
}
END_TEST

/* a plugin hook called from C, as a C service does */
START_TEST(test_call_plugin_hook) {
  tide_host *h = new_host(NULL);
  lua_State *L = tide_lua(h);
  call_result r;
  make_tmpdir();
  write_file("hooks.lua",
             "return { on_message = function(m) tide.sleep(0.001) return m:upper() end,\n"
             "         spin = function() while true do end end }");
  lua_pushfstring(L, "%s/hooks.lua", tmpdir);
  lua_setglobal(L, "path");
  run(h, "local plugin = require 'tide.plugin'\n"
         "p = assert(plugin.load(path, {budget = 0.05, on_error = function() end}))\n"
         "function call(hook, ...) return p:call(hook, ...) end");
  ck_assert_int_eq(tide_loop_run(h, TIDE_RUN_DEFAULT), 0);
  memset(&r, 0, sizeof r);
  lua_getglobal(L, "call");
  lua_pushliteral(L, "on_message");
  lua_pushliteral(L, "hello");
  ck_assert_int_eq(tide_call(h, 2, on_result, &r), 0);
  ck_assert_int_eq(tide_loop_run(h, TIDE_RUN_DEFAULT), 0);
  ck_assert_int_eq(r.status, TIDE_OK);
  ck_assert_str_eq(r.values[0], "true");
  ck_assert_str_eq(r.values[1], "HELLO");
  memset(&r, 0, sizeof r);
  lua_getglobal(L, "call");
  lua_pushliteral(L, "spin");
  ck_assert_int_eq(tide_call(h, 1, on_result, &r), 0);
  ck_assert_int_eq(r.called, 1);
  ck_assert_str_eq(r.values[0], "nil");
  ck_assert_msg(strstr(r.values[1], "CPU budget") != NULL, "%s", r.values[1]);
  tide_host_free(h);
  remove_tmpdir();
}
END_TEST

/* ---- tide_post: work from other threads ---------------------------------- */

enum { POSTS = 1000 };

typedef struct post_state {
  tide_host *h;
  pthread_t loop_thread;
  int ran, in_order, off_thread;
} post_state;

static post_state posted;

static void on_posted(tide_host *h, void *arg) {
  int i = (int)(intptr_t)arg;
  if (i != posted.ran) posted.in_order = 0;
  if (!pthread_equal(pthread_self(), posted.loop_thread)) posted.off_thread++;
  posted.ran++;
  if (i == POSTS - 1) tide_unref(h); /* the last one lets the loop end */
}

static void *poster(void *arg) {
  int i;
  (void)arg;
  for (i = 0; i < POSTS; i++) {
    if (tide_post(posted.h, on_posted, (void *)(intptr_t)i) != 0) break;
    if (i % 100 == 0) usleep(1000);
  }
  return NULL;
}

START_TEST(test_post_from_thread) {
  tide_host *h = new_host(NULL);
  pthread_t th;
  memset(&posted, 0, sizeof posted);
  posted.h = h;
  posted.loop_thread = pthread_self();
  posted.in_order = 1;
  tide_ref(h); /* the poster's work keeps the loop alive */
  ck_assert_int_eq(pthread_create(&th, NULL, poster, NULL), 0);
  ck_assert_int_eq(tide_loop_run(h, TIDE_RUN_DEFAULT), 0);
  ck_assert_int_eq(pthread_join(th, NULL), 0);
  ck_assert_int_eq(posted.ran, POSTS);
  ck_assert_int_eq(posted.in_order, 1);
  ck_assert_int_eq(posted.off_thread, 0);
  tide_host_free(h);
}
END_TEST

/* a posted function stops the loop (the thread-safe way to stop) */
static void post_stop(tide_host *h, void *arg) {
  (void)arg;
  tide_stop(h);
}

static void *stopper(void *arg) {
  usleep(20000);
  ck_assert_int_eq(tide_post(arg, post_stop, NULL), 0);
  return NULL;
}

START_TEST(test_post_stops_the_loop) {
  tide_host *h = new_host(NULL);
  pthread_t th;
  double t0;
  run(h, "ticks = 0; tide.every(0.005, function() ticks = ticks + 1 end)");
  t0 = seconds();
  ck_assert_int_eq(pthread_create(&th, NULL, stopper, h), 0);
  ck_assert_int_eq(tide_loop_run(h, TIDE_RUN_DEFAULT), 1); /* stopped */
  ck_assert_int_eq(pthread_join(th, NULL), 0);
  ck_assert(seconds() - t0 < 5);
  ck_assert_int_ge(atoi(eval(h, "ticks")), 1);
  /* and it runs again */
  run(h, "local n = ticks; while ticks < n + 2 do tide.sleep(0.005) end; tide.exit(0)");
  ck_assert_int_eq(tide_loop_run(h, TIDE_RUN_DEFAULT), -1);
  tide_host_free(h);
}
END_TEST

static int late_runs;
static void post_count(tide_host *h, void *arg) {
  (void)h, (void)arg;
  late_runs++;
}

/* posts that the loop never polled for run when the host is freed */
START_TEST(test_post_runs_at_free) {
  tide_host *h = new_host(NULL);
  late_runs = 0;
  ck_assert_int_eq(tide_post(h, post_count, NULL), 0);
  ck_assert_int_eq(tide_post(h, post_count, NULL), 0);
  ck_assert_int_eq(tide_post(h, NULL, NULL), -1);
  ck_assert_int_eq(late_runs, 0);
  tide_host_free(h);
  ck_assert_int_eq(late_runs, 2);
}
END_TEST

/* ---- running until stopped, one iteration at a time ------------------------ */

static int l_stop_now(lua_State *L) {
  tide_stop(tide_from_lua(L));
  return 0;
}

START_TEST(test_run_until_stopped) {
  tide_host *h = new_host(NULL);
  tide_register(h, "stop_now", l_stop_now);
  run(h, "n = 0; tide.every(0.002, function() n = n + 1; if n % 3 == 0 then stop_now() end end)");
  ck_assert_int_eq(tide_loop_run(h, TIDE_RUN_DEFAULT), 1);
  ck_assert_str_eq(eval(h, "n"), "3");
  ck_assert_int_eq(tide_loop_run(h, TIDE_RUN_DEFAULT), 1);
  ck_assert_str_eq(eval(h, "n"), "6");
  /* one iteration without waiting: nothing due yet */
  ck_assert_int_eq(tide_loop_run(h, TIDE_RUN_NOWAIT), 1);
  ck_assert_str_eq(eval(h, "n"), "6");
  tide_host_free(h);
}
END_TEST

/* ---- the memory limit ------------------------------------------------------ */

START_TEST(test_memory_limit) {
  tide_options o;
  tide_host *h;
  size_t base;
  memset(&o, 0, sizeof o);
  o.memory_limit = 64u << 20;
  h = new_host(&o);
  base = tide_memory_used(h);
  ck_assert(base > 0 && base < o.memory_limit);
  run(h, "local t = {} for i = 1, 1000 do t[i] = ('x'):rep(1000) .. i end keep = t");
  ck_assert(tide_memory_used(h) > base + 1000000);
  run(h, "keep = nil collectgarbage()");
  ck_assert(tide_memory_used(h) < base + 500000);
  /* past the limit: "not enough memory", caught; the host goes on */
  run(h, "ok, err = pcall(function()\n"
         "  local t = {} for i = 1, 1e8 do t[i] = {i} end\n"
         "end)\n"
         "big = pcall(string.rep, 'x', 100 * 2^20)\n"
         "collectgarbage()");
  ck_assert_str_eq(eval(h, "ok"), "false");
  ck_assert_str_eq(eval(h, "err"), "not enough memory");
  ck_assert_str_eq(eval(h, "big"), "false");
  ck_assert(tide_memory_used(h) <= o.memory_limit);
  run(h, "tide.sleep(0.001) after = 'still serving'");
  ck_assert_int_eq(tide_loop_run(h, TIDE_RUN_DEFAULT), 0);
  ck_assert_str_eq(eval(h, "after"), "still serving");
  /* lifted */
  tide_set_memory_limit(h, 0);
  run(h, "big = pcall(string.rep, 'x', 100 * 2^20)");
  ck_assert_str_eq(eval(h, "big"), "true");
  tide_host_free(h);
}
END_TEST

START_TEST(test_options_paths) {
  tide_options o;
  tide_host *h;
  memset(&o, 0, sizeof o);
  o.path = "/opt/x/?.lua";
  o.cpath = "/opt/x/?.so";
  h = new_host(&o);
  ck_assert_str_eq(eval(h, "package.path:sub(1, 13)"), "/opt/x/?.lua;");
  ck_assert_str_eq(eval(h, "package.cpath:sub(1, 12)"), "/opt/x/?.so;");
  tide_host_free(h);
}
END_TEST

static Suite *embed_suite(void) {
  Suite *s = suite_create("embed");
  TCase *c = tcase_create("host"), *r = tcase_create("run"),
        *x = tcase_create("exit"), *m = tcase_create("hosts"),
        *f = tcase_create("free"), *k = tcase_create("calls");
  tcase_add_test(c, test_options_arg);
  tcase_add_test(c, test_options_default_and_no_globals);
  tcase_add_test(c, test_options_script_dir);
  tcase_add_test(c, test_lua_and_base);
  tcase_add_test(c, test_free_null);
  tcase_add_test(c, test_register_function);
  tcase_add_test(c, test_register_module);
  tcase_add_test(r, test_run_string_is_a_task);
  tcase_add_test(r, test_run_string_syntax_error);
  tcase_add_test(r, test_run_string_task_error_is_reported);
  tcase_add_test(r, test_run_file);
  tcase_add_test(r, test_run_once_steps);
  tcase_add_test(r, test_run_once_waits);
  tcase_add_test(x, test_run_main_error);
  tcase_add_test(x, test_run_main_error_at_once);
  tcase_add_test(x, test_exit_code);
  tcase_add_test(x, test_exit_from_callback);
  tcase_add_test(x, test_exit_variants);
  tcase_add_test(m, test_two_hosts_independent);
  tcase_add_test(m, test_two_hosts_interleaved);
  tcase_add_test(m, test_hosts_in_threads);
  tcase_add_test(f, test_free_with_work_armed);
  tcase_add_test(f, test_free_after_running);
  tcase_add_test(f, test_free_with_readable_wait);
  tcase_add_test(f, test_free_while_exiting);
  tcase_add_test(f, test_many_hosts);
  suite_add_tcase(s, c);
  suite_add_tcase(s, r);
  suite_add_tcase(s, x);
  suite_add_tcase(s, m);
  tcase_add_test(c, test_options_paths);
  tcase_add_test(k, test_call_results);
  tcase_add_test(k, test_call_waits);
  tcase_add_test(k, test_call_error);
  tcase_add_test(k, test_call_not_callable);
  tcase_add_test(k, test_call_from_callback);
  tcase_add_test(k, test_call_from_c_function);
  tcase_add_test(k, test_call_abandoned_at_free);
  tcase_add_test(k, test_call_plugin_hook);
  tcase_add_test(k, test_post_from_thread);
  tcase_add_test(k, test_post_stops_the_loop);
  tcase_add_test(k, test_post_runs_at_free);
  tcase_add_test(k, test_run_until_stopped);
  tcase_add_test(k, test_memory_limit);
  suite_add_tcase(s, f);
  suite_add_tcase(s, k);
  return s;
}

int main(void) {
  SRunner *sr = srunner_create(embed_suite());
  int failed;
  srunner_run_all(sr, CK_NORMAL);
  failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
