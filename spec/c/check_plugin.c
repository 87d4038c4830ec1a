/*
 * spec/c/check_plugin.c - tide.plugin's budgets as a C program embedding
 * tide meets them (through host/tide.h, lua.h and lauxlib.h only), with
 * libcheck: the count hook is set only while plugin code runs, and stays
 * set when the program's C code, called by a plugin, calls back into Lua;
 * and a memory limit set after the first plugin loaded leaves the host
 * freeing cleanly (run under AddressSanitizer for use-after-free).
 */
#define _GNU_SOURCE
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <lauxlib.h>
#include <lua.h>

#include "tide.h"

#include "call_result.h"

static char tmpdir[64];
static char path[128];

static tide_host *new_host(void) {
  char err[256] = "";
  tide_host *h = tide_host_new(NULL, err, sizeof err);
  ck_assert_msg(h != NULL, "tide_host_new: %s", err);
  return h;
}

/* writes the plugin file and sets the global `path` to it */
static void write_plugin(tide_host *h, const char *code) {
  FILE *f;
  snprintf(tmpdir, sizeof tmpdir, "/tmp/tide-check-plugin-XXXXXX");
  ck_assert_ptr_nonnull(mkdtemp(tmpdir));
  snprintf(path, sizeof path, "%s/p.lua", tmpdir);
  f = fopen(path, "w");
  ck_assert_ptr_nonnull(f);
  fputs(code, f);
  fclose(f);
  lua_pushstring(tide_lua(h), path);
  lua_setglobal(tide_lua(h), "path");
}

static void remove_plugin(void) {
  unlink(path);
  rmdir(tmpdir);
}

/* runs code as a task, then the loop until it is empty */
static void run(tide_host *h, const char *code) {
  lua_State *L = tide_lua(h);
  if (tide_run_string(h, code, "=test") != 0)
    ck_abort_msg("tide_run_string: %s", lua_tostring(L, -1));
  ck_assert_int_eq(tide_loop_run(h, TIDE_RUN_DEFAULT), 0);
}

static const char *global_string(tide_host *h, const char *name) {
  static char buf[512];
  lua_State *L = tide_lua(h);
  lua_getglobal(L, name);
  snprintf(buf, sizeof buf, "%s", lua_tostring(L, -1) ? lua_tostring(L, -1)
                                                       : "(not a string)");
  lua_pop(L, 1);
  return buf;
}

/* probe() -> whether a count hook is set: called by plugin code */
static int l_probe(lua_State *L) {
  lua_pushboolean(L, lua_gethook(L) != NULL &&
                         (lua_gethookmask(L) & LUA_MASKCOUNT) != 0);
  return 1;
}

START_TEST(test_hook_set_only_while_plugin_code_runs) {
  tide_host *h = new_host();
  lua_State *L = tide_lua(h);
  call_result r;
  tide_register(h, "probe", l_probe);
  write_plugin(h, "return { run = function(x) return probe.get() and x end }");
  run(h, "local plugin = require 'tide.plugin'\n"
         "plugin.define('probe', {get = probe})\n"
         "p = assert(plugin.load(path, {grants = {'probe'}}))\n"
         "function call(x) return p:call('run', x) end");
  ck_assert_ptr_null(lua_gethook(L));
  memset(&r, 0, sizeof r);
  lua_getglobal(L, "call");
  lua_pushliteral(L, "seen");
  ck_assert_int_eq(tide_call(h, 1, on_result, &r), 0);
  ck_assert_int_eq(tide_loop_run(h, TIDE_RUN_DEFAULT), 0);
  ck_assert_int_eq(r.called, 1);
  ck_assert_int_eq(r.status, TIDE_OK);
  ck_assert_str_eq(r.values[0], "true");
  ck_assert_str_eq(r.values[1], "seen"); /* the hook was set inside */
  ck_assert_ptr_null(lua_gethook(L));    /* and is not after */
  tide_host_free(h);
  remove_plugin();
}
END_TEST

static void on_inner(tide_host *h, lua_State *L, int status, int n,
                     void *ud) {
  (void)h, (void)L, (void)status, (void)n;
  (*(int *)ud)++;
}

static int inner_done;

/* reenter(): the program's C function calls Lua through tide_call while
 * the plugin's call that called it runs */
static int l_reenter(lua_State *L) {
  tide_host *h = tide_from_lua(L);
  lua_State *M = tide_lua(h);
  lua_getglobal(M, "tostring");
  lua_pushinteger(M, 1);
  if (tide_call(h, 1, on_inner, &inner_done) != 0)
    return luaL_error(L, "tide_call: %s", lua_tostring(M, -1));
  return 0;
}

START_TEST(test_busy_loop_after_c_called_back_into_lua) {
  tide_host *h = new_host();
  lua_State *L = tide_lua(h);
  call_result r;
  inner_done = 0;
  tide_register(h, "reenter", l_reenter);
  write_plugin(h, "return { run = function() host.reenter() while true do end end }");
  run(h, "local plugin = require 'tide.plugin'\n"
         "plugin.define('host', {reenter = reenter})\n"
         "p = assert(plugin.load(path, {grants = {'host'}, budget = 0.05,\n"
         "                             on_error = function() end}))\n"
         "function call() return p:call('run') end");
  memset(&r, 0, sizeof r);
  lua_getglobal(L, "call");
  ck_assert_int_eq(tide_call(h, 0, on_result, &r), 0);
  ck_assert_int_eq(tide_loop_run(h, TIDE_RUN_DEFAULT), 0);
  ck_assert_int_eq(r.called, 1);
  ck_assert_str_eq(r.values[0], "nil");
  ck_assert_msg(strstr(r.values[1], "CPU budget") != NULL, "%s", r.values[1]);
  ck_assert_int_eq(inner_done, 1);
  ck_assert_ptr_null(lua_gethook(L));
  tide_host_free(h);
  remove_plugin();
}
END_TEST

START_TEST(test_memory_limit_set_after_a_plugin) {
  tide_host *h = new_host();
  write_plugin(h, "return { fill = function(n) local t = {}\n"
                  "  for i = 1, n do t[i] = ('x'):rep(64) .. i end\n"
                  "  return #t end }");
  run(h, "p = assert(require('tide.plugin').load(path))\n"
         "assert(p:call('fill', 10))");
  tide_set_memory_limit(h, tide_memory_used(h) + ((size_t)8 << 20));
  run(h, "local ok, n = p:call('fill', 1000)\n"
         "small = tostring(ok) .. ' ' .. tostring(n)\n"
         "local big = {}\n"
         "ok = pcall(function() for i = 1, 1e6 do big[i] = ('y'):rep(100) .. i end end)\n"
         "big = nil\n"
         "limited = tostring(ok)");
  ck_assert_str_eq(global_string(h, "small"), "true 1000");
  ck_assert_str_eq(global_string(h, "limited"), "false");
  tide_host_free(h); /* the allocators are unwound without a stale one */
  remove_plugin();
}
END_TEST

int main(void) {
  Suite *s = suite_create("plugin");
  TCase *k = tcase_create("budgets");
  SRunner *sr;
  int failed;
  tcase_set_timeout(k, 60);
  tcase_add_test(k, test_hook_set_only_while_plugin_code_runs);
  tcase_add_test(k, test_busy_loop_after_c_called_back_into_lua);
  tcase_add_test(k, test_memory_limit_set_after_a_plugin);
  suite_add_tcase(s, k);
  sr = srunner_create(s);
  srunner_run_all(sr, CK_NORMAL);
  failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
