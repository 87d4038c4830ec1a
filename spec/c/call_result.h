/*
 * spec/c/call_result.h - what the check tests that call Lua through
 * tide_call share: a tide_result_fn that records the call's status and
 * its first four results as text ("true", "false", the string or number,
 * else the value's type name).
 */
#ifndef TIDE_SPEC_CALL_RESULT_H
#define TIDE_SPEC_CALL_RESULT_H

#include <stdio.h>

#include <lauxlib.h>

#include "tide.h"

typedef struct call_result {
  int called, status, n;
  char values[4][512];
  lua_State *L;
} call_result;

static void on_result(tide_host *h, lua_State *L, int status, int n,
                      void *ud) {
  call_result *r = ud;
  int i, base = lua_gettop(L) - n;
  (void)h;
  r->called++;
  r->status = status;
  r->n = n;
  r->L = L;
  for (i = 0; i < n && i < 4; i++) {
    int idx = base + 1 + i;
    const char *s = lua_isboolean(L, idx)
                        ? (lua_toboolean(L, idx) ? "true" : "false")
                        : lua_tostring(L, idx);
    snprintf(r->values[i], sizeof r->values[i], "%s",
             s ? s : luaL_typename(L, idx));
  }
}

#endif
