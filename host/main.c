/*
 * host/main.c - the `tide` command, a drop-in for the `lua` command line:
 *
 *   tide [options] [script [args...]]
 *
 * Options are parsed here; running them (-e, -l, the script, the REPL) is
 * lua/tide/cli.lua's job, inside the main task, so that all of it may wait.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <luajit.h>

#include "tide.h"

static const char usage[] =
    "usage: tide [options] [script [args...]]\n"
    "Available options are:\n"
    "  -e chunk     Execute string 'chunk'.\n"
    "  -l name      Require library 'name'.\n"
    "  -i           Enter interactive mode after running the script.\n"
    "  -v           Show version information.\n"
    "  -h, --help   Show this help.\n"
    "  --threads N  Worker pool size (default: TIDE_THREADPOOL_SIZE or 4).\n"
    "  --memory-limit N[K|M|G]  Most bytes the Lua state may hold.\n"
    "  --           Stop handling options.\n"
    "  -            Execute stdin and stop handling options.\n";

/* "512M" -> bytes; 0 when it is not a size */
static size_t parse_size(const char *v) {
  char *end;
  double n = strtod(v, &end);
  double unit = 1;
  if (end == v || n <= 0) return 0;
  if (*end == 'K' || *end == 'k') unit = 1024.0, end++;
  else if (*end == 'M' || *end == 'm') unit = 1024.0 * 1024, end++;
  else if (*end == 'G' || *end == 'g') unit = 1024.0 * 1024 * 1024, end++;
  if (*end != '\0' || n * unit < 1024 * 1024 || n * unit > 1e15) return 0;
  return (size_t)(n * unit);
}

static int fail(const char *msg, const char *what) {
  fprintf(stderr, "tide: %s%s%s\n%s", msg, what ? " " : "", what ? what : "",
          usage);
  return 1;
}

/* The directory part of a script path, for the module search path. */
static char *dir_of(const char *path) {
  const char *slash = strrchr(path, '/');
  if (!slash) return strdup(".");
  if (slash == path) return strdup("/");
  return strndup(path, (size_t)(slash - path));
}

int main(int argc, char **argv) {
  tide_options o;
  tide_host *h;
  lua_State *L;
  char err[256];
  char *dir = NULL;
  int i, script = 0, interactive = 0, version = 0, nactions = 0, rc;

  memset(&o, 0, sizeof o);
  signal(SIGPIPE, SIG_IGN); /* a dead peer is EPIPE, not a dead process */
  /* print's lines leave at once, to a pipe or a file too (as console.log
   * does in Node.js), not when a block of them has filled */
  setvbuf(stdout, NULL, _IOLBF, BUFSIZ);
  /* Started with 0, 1 or 2 closed, the first descriptors tide opens (an
   * eventfd, a socket) would take those numbers, and print or
   * tide.stdout would write into them: hold them with /dev/null. */
  for (i = 0; i <= 2; i++)
    if (fcntl(i, F_GETFD) < 0 && errno == EBADF &&
        open("/dev/null", i == 0 ? O_RDONLY : O_WRONLY) < 0)
      return 1; /* (no /dev/null: nowhere to say so either) */

  /* First pass: find the script and validate the options. */
  for (i = 1; i < argc; i++) {
    const char *a = argv[i];
    if (a[0] != '-') break;
    if (strcmp(a, "-") == 0) break;
    if (strcmp(a, "--") == 0) { i++; break; }
    if (strcmp(a, "-e") == 0 || strcmp(a, "-l") == 0) {
      if (++i >= argc) return fail("option needs an argument:", a);
      nactions++;
    } else if (strncmp(a, "-e", 2) == 0 || strncmp(a, "-l", 2) == 0) {
      nactions++;
    } else if (strcmp(a, "-i") == 0) {
      interactive = 1;
    } else if (strcmp(a, "-v") == 0 || strcmp(a, "--version") == 0) {
      version = 1;
    } else if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
      fputs(usage, stdout);
      return 0;
    } else if (strcmp(a, "--threads") == 0 || strncmp(a, "--threads=", 10) == 0) {
      const char *v = a[9] == '=' ? a + 10 : (++i < argc ? argv[i] : NULL);
      char *end;
      long n;
      if (!v) return fail("option needs an argument:", a);
      n = strtol(v, &end, 10);
      if (*v == '\0' || *end != '\0' || n < 1 || n > 1024)
        return fail("--threads wants a number from 1 to 1024, got", v);
      o.threads = (int)n;
    } else if (strcmp(a, "--memory-limit") == 0 ||
               strncmp(a, "--memory-limit=", 15) == 0) {
      const char *v = a[14] == '=' ? a + 15 : (++i < argc ? argv[i] : NULL);
      if (!v) return fail("option needs an argument:", a);
      o.memory_limit = parse_size(v);
      if (!o.memory_limit)
        return fail("--memory-limit wants a size of at least 1M (such as 512M), got", v);
    } else {
      return fail("unrecognized option", a);
    }
  }
  script = i < argc ? i : 0;
  if (version) {
    printf("tide %s (%s)\n", TIDE_VERSION, LUAJIT_VERSION);
    if (!script && !nactions && !interactive) return 0;
  }

  o.argc = argc;
  o.argv = argv;
  o.script_index = script ? script : argc; /* no script: options are < 0 */
  if (script && strcmp(argv[script], "-") != 0)
    o.script_dir = dir = dir_of(argv[script]);

  h = tide_host_new(&o, err, sizeof err);
  if (!h) {
    fprintf(stderr, "tide: %s\n", err);
    free(dir);
    return 1;
  }
  L = tide_lua(h);

  /* The plan for lua/tide/cli.lua: the actions in order, then the script
   * and whether to start the REPL. */
  lua_getglobal(L, "require");
  lua_pushliteral(L, "tide.cli");
  if (lua_pcall(L, 1, 1, 0) != 0) {
    fprintf(stderr, "tide: %s\n", lua_tostring(L, -1));
    tide_host_free(h);
    free(dir);
    return 1;
  }
  lua_createtable(L, 0, 4);
  lua_createtable(L, nactions * 2, 0);
  nactions = 0;
  for (i = 1; i < (script ? script : argc); i++) {
    const char *a = argv[i];
    if (strcmp(a, "--") == 0) break;
    if (a[0] == '-' && (a[1] == 'e' || a[1] == 'l')) {
      lua_pushlstring(L, a + 1, 1);
      lua_rawseti(L, -2, ++nactions);
      lua_pushstring(L, a[2] ? a + 2 : argv[++i]);
      lua_rawseti(L, -2, ++nactions);
    } else if (strcmp(a, "--threads") == 0 ||
               strcmp(a, "--memory-limit") == 0) {
      i++;
    }
  }
  lua_setfield(L, -2, "actions");
  if (script) {
    lua_pushstring(L, argv[script]);
    lua_setfield(L, -2, "script");
  }
  lua_pushboolean(L, interactive);
  lua_setfield(L, -2, "interactive");
  lua_pushboolean(L, isatty(0));
  lua_setfield(L, -2, "tty");
  lua_pushboolean(L, version);
  lua_setfield(L, -2, "version_shown");

  /* cli(plan) returns the function that becomes the main task */
  if (lua_pcall(L, 1, 1, 0) != 0 || tide_start(h, 1) != 0) {
    fprintf(stderr, "tide: %s\n", lua_tostring(L, -1));
    rc = 1;
  } else {
    tide_loop_run(h, TIDE_RUN_DEFAULT);
    rc = tide_exit_code(h) < 0 ? 0 : tide_exit_code(h);
  }
  tide_host_free(h);
  free(dir);
  return rc;
}
