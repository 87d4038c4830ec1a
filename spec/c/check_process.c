/*
 * spec/c/check_process.c - the process-wide state of modules/process.c
 * and modules/signal.c, with libcheck: the default exits of SIGINT and
 * SIGTERM (who owns them, what they do, what is put back when the host
 * goes), and the SIGCHLD reaper used without pidfd (its list of children,
 * reaping in any order, one host at a time, freeing a host whose children
 * still run).
 */
#define _GNU_SOURCE
#include <check.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <lauxlib.h>
#include <lua.h>

#include "tide.h"

static tide_host *new_host(void) {
  char err[256] = "";
  tide_host *h = tide_host_new(NULL, err, sizeof err);
  ck_assert_msg(h != NULL, "tide_host_new: %s", err);
  return h;
}

/* tostring of the first result of Lua expression expr (static buffer) */
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

static void run(tide_host *h, const char *code) {
  lua_State *L = tide_lua(h);
  if (tide_run_string(h, code, "=test") != 0)
    ck_abort_msg("tide_run_string: %s", lua_tostring(L, -1));
}

static void (*handler_of(int signo))(int) {
  struct sigaction sa;
  sigaction(signo, NULL, &sa);
  return sa.sa_handler;
}

static volatile sig_atomic_t mine_hits;
static void mine(int signo) { (void)signo; mine_hits++; }

/* ---- the defaults ------------------------------------------------------- */

START_TEST(test_defaults_owner_and_restore) {
  tide_host *a, *b;
  signal(SIGTERM, mine);
  signal(SIGINT, SIG_DFL);
  a = new_host();
  b = new_host();
  /* a host alone changes nothing */
  ck_assert_ptr_eq(handler_of(SIGTERM), mine);
  ck_assert_str_eq(eval(a, "require('tide.signal.c').defaults()"), "true");
  ck_assert_ptr_ne(handler_of(SIGTERM), mine);
  ck_assert_ptr_ne(handler_of(SIGINT), SIG_DFL);
  /* one owner per process */
  ck_assert_str_eq(eval(b, "require('tide.signal.c').defaults()"), "false");
  ck_assert_str_eq(eval(a, "require('tide.signal.c').defaults()"), "true");
  tide_host_free(a); /* puts back what was there */
  ck_assert_ptr_eq(handler_of(SIGTERM), mine);
  ck_assert_ptr_eq(handler_of(SIGINT), SIG_DFL);
  /* free again: b may have them now */
  ck_assert_str_eq(eval(b, "require('tide.signal.c').defaults()"), "true");
  tide_host_free(b);
  ck_assert_ptr_eq(handler_of(SIGTERM), mine);
  signal(SIGTERM, SIG_DFL);
}
END_TEST

START_TEST(test_default_exit_status) {
  static const int sigs[] = {SIGTERM, SIGINT};
  int i;
  for (i = 0; i < 2; i++) {
    tide_host *h = new_host();
    eval(h, "require('tide.signal.c').defaults()");
    run(h, "tide.every(10, function() end)");
    raise(sigs[i]); /* (delivered before raise returns) */
    ck_assert_int_eq(tide_loop_run(h, TIDE_RUN_DEFAULT), -1);
    ck_assert_int_eq(tide_exit_code(h), 128 + sigs[i]);
    tide_host_free(h);
  }
}
END_TEST

START_TEST(test_watcher_takes_the_signal) {
  tide_host *h = new_host();
  eval(h, "require('tide.signal.c').defaults()");
  run(h, "local s = require 'tide.signal'\n"
         "local t = tide.every(10, function() end)\n"
         "got = s.wait('TERM', 5)\n"
         "t:stop()");
  raise(SIGTERM);
  ck_assert_int_eq(tide_loop_run(h, TIDE_RUN_DEFAULT), 0);
  ck_assert_str_eq(eval(h, "got"), "SIGTERM");
  /* the watcher is gone: the default is back */
  run(h, "tide.every(10, function() end)");
  raise(SIGTERM);
  ck_assert_int_eq(tide_loop_run(h, TIDE_RUN_DEFAULT), -1);
  ck_assert_int_eq(tide_exit_code(h), 143);
  tide_host_free(h);
}
END_TEST

/* a loop that never polls: the second signal kills (in a child process) */
START_TEST(test_second_signal_kills) {
  pid_t pid = fork();
  int st;
  ck_assert_int_ge(pid, 0);
  if (pid == 0) {
    tide_host *h = new_host();
    eval(h, "require('tide.signal.c').defaults()");
    raise(SIGINT); /* caught, waiting for the loop */
    raise(SIGINT); /* the loop never took the first one */
    _exit(0);
  }
  ck_assert_int_eq(waitpid(pid, &st, 0), pid);
  ck_assert(WIFSIGNALED(st));
  ck_assert_int_eq(WTERMSIG(st), SIGINT);
}
END_TEST

START_TEST(test_ignored_stays_ignored) {
  tide_host *h;
  void (*term)(int) = handler_of(SIGTERM); /* (check's, in its child) */
  signal(SIGINT, SIG_IGN);
  h = new_host();
  eval(h, "require('tide.signal.c').defaults()");
  ck_assert_ptr_eq(handler_of(SIGINT), SIG_IGN);
  ck_assert_ptr_ne(handler_of(SIGTERM), term);
  tide_host_free(h);
  ck_assert_ptr_eq(handler_of(SIGINT), SIG_IGN);
  ck_assert_ptr_eq(handler_of(SIGTERM), term);
  signal(SIGINT, SIG_DFL);
}
END_TEST

/* ---- the SIGCHLD reaper --------------------------------------------------- */

/* children that end in the reverse order of their start, and one with a
 * pidfd among them: each gets its own status, and no zombie is left */
START_TEST(test_reaper_any_order) {
  tide_host *h = new_host();
  int st;
  run(h, "local p, C = require 'tide.process', require 'tide.process.c'\n"
         "local kids = {}\n"
         "for i = 1, 6 do\n"
         "  C._use_pidfd(i ~= 3)\n"
         "  kids[i] = assert(p.spawn{'sh', '-c', 'sleep 0.0' .. (7 - i) .. '; exit ' .. i})\n"
         "end\n"
         "C._use_pidfd(true)\n"
         "local t = {}\n"
         "for i = 1, 6 do t[i] = kids[i]:wait(5) end\n"
         "codes = table.concat(t, ' ')");
  ck_assert_int_eq(tide_loop_run(h, TIDE_RUN_DEFAULT), 0);
  ck_assert_str_eq(eval(h, "codes"), "1 2 3 4 5 6");
  ck_assert_int_eq(waitpid(-1, &st, WNOHANG), -1);
  ck_assert_int_eq(errno, ECHILD);
  tide_host_free(h);
}
END_TEST

/* the reaper belongs to one host at a time; it is released with it */
START_TEST(test_reaper_one_host) {
  tide_host *a = new_host(), *b = new_host();
  const char *spawn_b =
      "(function() local C = require 'tide.process.c'\n"
      "  C._use_pidfd(false)\n"
      "  local ch, e, code = require('tide.process').spawn{'true'}\n"
      "  C._use_pidfd(true)\n"
      "  if ch then kid_b = ch; return 'ok' end\n"
      "  return code .. ' ' .. e end)()";
  run(a, "local C = require 'tide.process.c'\n"
         "C._use_pidfd(false)\n"
         "kid_a = require('tide.process').spawn{'sleep', '10'}\n"
         "C._use_pidfd(true)");
  ck_assert_str_eq(eval(b, spawn_b), "EBUSY true: cannot watch the child: "
                                      "Device or resource busy");
  /* a's child still runs; freeing a leaves it unreaped: kill, reap here */
  {
    int pid = atoi(eval(a, "kid_a.pid")), st;
    tide_host_free(a);
    kill(pid, SIGKILL);
    ck_assert_int_eq(waitpid(pid, &st, 0), pid);
  }
  ck_assert_str_eq(eval(b, spawn_b), "ok");
  ck_assert_int_eq(tide_loop_run(b, TIDE_RUN_DEFAULT), 0);
  ck_assert_str_eq(eval(b, "kid_b:wait()"), "0");
  tide_host_free(b);
}
END_TEST

/* a host freed while its children run (pidfd and reaper): no leak, no
 * crash; the children are left running */
START_TEST(test_free_with_running_children) {
  tide_host *h = new_host();
  int pids[2], i, st;
  run(h, "local p, C = require 'tide.process', require 'tide.process.c'\n"
         "k1 = p.spawn{'sleep', '10', stdout = 'pipe'}\n"
         "C._use_pidfd(false)\n"
         "k2 = p.spawn{'sleep', '10', stdin = 'pipe'}\n"
         "C._use_pidfd(true)");
  pids[0] = atoi(eval(h, "k1.pid"));
  pids[1] = atoi(eval(h, "k2.pid"));
  tide_host_free(h);
  for (i = 0; i < 2; i++) {
    ck_assert_int_eq(kill(pids[i], 0), 0); /* still running */
    kill(pids[i], SIGKILL);
    ck_assert_int_eq(waitpid(pids[i], &st, 0), pids[i]);
  }
}
END_TEST

static Suite *suite(void) {
  Suite *s = suite_create("process");
  TCase *c = tcase_create("signals");
  tcase_set_timeout(c, 30);
  tcase_add_test(c, test_defaults_owner_and_restore);
  tcase_add_test(c, test_default_exit_status);
  tcase_add_test(c, test_watcher_takes_the_signal);
  tcase_add_test(c, test_second_signal_kills);
  tcase_add_test(c, test_ignored_stays_ignored);
  suite_add_tcase(s, c);
  c = tcase_create("reaper");
  tcase_set_timeout(c, 30);
  tcase_add_test(c, test_reaper_any_order);
  tcase_add_test(c, test_reaper_one_host);
  tcase_add_test(c, test_free_with_running_children);
  suite_add_tcase(s, c);
  return s;
}

int main(void) {
  SRunner *r = srunner_create(suite());
  int failed;
  srunner_run_all(r, CK_NORMAL);
  failed = srunner_ntests_failed(r);
  srunner_free(r);
  return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
