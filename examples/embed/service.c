/*
 * examples/embed/service.c - a C service that embeds tide and lets Lua
 * plugins handle its messages.
 *
 * It speaks a line protocol over TCP, written with libevent on the host's
 * own event_base: every line a client sends goes to the hook on_message of
 * every plugin in the plugin folder, as a task (tide_call), and the
 * replies go back to the client when the task ends, so plugins may wait
 * (timers, I/O) without holding up the service. Plugins get the
 * capabilities "timer", "log", "json" and "service" (two C functions of
 * this program), run under a CPU and memory budget, and are reloaded when
 * their file changes.
 *
 *   service [-p port] [-d plugin_dir] [-m message]...
 *
 * With -m, the service handles the given messages (as client "cli"),
 * prints the replies and exits; without, it serves on 127.0.0.1:port
 * (default 7070; 0: one the system chooses, printed) until SIGINT or
 * SIGTERM.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/listener.h>

#include <tide.h>

#define MAX_CLIENTS 256

typedef struct client {
  struct bufferevent *bev;
  unsigned gen; /* bumped when the slot is reused */
  char name[32];
} client;

static tide_host *host;
static client clients[MAX_CLIENTS];
static int nclients;
static unsigned long messages;
static int cli_pending; /* -m: replies still to come */

/* --- the C functions plugins get (the "service" capability) -------------- */

/* service.clients() -> number of connected clients */
static int l_clients(lua_State *L) {
  lua_pushinteger(L, nclients);
  return 1;
}

/* service.broadcast(text) -> clients reached */
static int l_broadcast(lua_State *L) {
  size_t len;
  const char *text = luaL_checklstring(L, 1, &len);
  int i, n = 0;
  for (i = 0; i < MAX_CLIENTS; i++) {
    if (!clients[i].bev) continue;
    bufferevent_write(clients[i].bev, text, len);
    bufferevent_write(clients[i].bev, "\n", 1);
    n++;
  }
  lua_pushinteger(L, n);
  return 1;
}

/* service.messages() -> messages handled so far */
static int l_messages(lua_State *L) {
  lua_pushnumber(L, (double)messages);
  return 1;
}

static int open_service(lua_State *L) {
  static const luaL_Reg fns[] = {{"clients", l_clients},
                                 {"broadcast", l_broadcast},
                                 {"messages", l_messages},
                                 {NULL, NULL}};
  lua_newtable(L);
  luaL_register(L, NULL, fns);
  return 1;
}

/* --- the Lua side: loading plugins, dispatching a message ----------------- */

static const char bootstrap[] =
    "local plugin = require 'tide.plugin'\n"
    "local fs = require 'tide.fs'\n"
    "local dir = ...\n"
    "plugin.define('service', require 'service')\n"
    "local plugins = {}\n"
    "local names, err = fs.readdir(dir)\n"
    "if not names then error('service: plugin folder: ' .. err, 0) end\n"
    "for _, name in ipairs(names) do\n"
    "  if name:match('%.lua$') then\n"
    "    local p, perr = plugin.load(dir .. '/' .. name, {\n"
    "      grants = {'timer', 'log', 'json', 'service'},\n"
    "      budget = 0.1, memory = 32 * 2^20, max_failures = 5, watch = true,\n"
    "      on_reload = function(p, ok, rerr)\n"
    "        io.stderr:write('service: reloaded ', p.name, ': ',\n"
    "                        ok and 'ok' or rerr, '\\n')\n"
    "      end})\n"
    "    if p then plugins[#plugins + 1] = p\n"
    "    else io.stderr:write('service: not loaded: ', perr, '\\n') end\n"
    "  end\n"
    "end\n"
    "io.stderr:write('service: ', #plugins, ' plugin(s) loaded\\n')\n"
    /* dispatch(line, client) -> the replies, one line each */
    "function dispatch(line, client)\n"
    "  local out = {}\n"
    "  for _, p in ipairs(plugins) do\n"
    "    if p:has('on_message') then\n"
    "      local ok, reply = p:call('on_message', line, client)\n"
    "      local t = type(reply)\n"
    "      if ok and (t == 'string' or t == 'number') then\n"
    "        out[#out + 1] = p.name .. ': ' .. reply\n"
    "      end\n"
    "    end\n"
    "  end\n"
    "  return table.concat(out, '\\n')\n"
    "end\n";

/* --- a message, dispatched as a task --------------------------------------- */

typedef struct pending {
  int slot;     /* the client's slot, or -1 for -m */
  unsigned gen; /* and its generation then */
} pending;

/* Runs when the dispatch task ends: the replies go to the client, if it
 * is still there. */
static void on_replies(tide_host *h, lua_State *L, int status, int n,
                       void *ud) {
  pending *p = ud;
  size_t len = 0;
  const char *text = lua_tolstring(L, -1, &len);
  (void)h, (void)n;
  if (status != TIDE_OK) {
    fprintf(stderr, "service: dispatch failed: %s\n", text ? text : "?");
  } else if (p->slot < 0) {
    printf("%s\n", len ? text : "(no reply)");
    fflush(stdout);
    cli_pending--;
  } else if (clients[p->slot].bev && clients[p->slot].gen == p->gen && len) {
    bufferevent_write(clients[p->slot].bev, text, len);
    bufferevent_write(clients[p->slot].bev, "\n", 1);
  }
  free(p);
}

static void dispatch(const char *line, size_t len, int slot) {
  lua_State *L = tide_lua(host);
  pending *p = malloc(sizeof *p);
  if (!p) return;
  p->slot = slot;
  p->gen = slot >= 0 ? clients[slot].gen : 0;
  messages++;
  lua_getglobal(L, "dispatch");
  lua_pushlstring(L, line, len);
  lua_pushstring(L, slot >= 0 ? clients[slot].name : "cli");
  if (tide_call(host, 2, on_replies, p) != 0) {
    fprintf(stderr, "service: %s\n", lua_tostring(L, -1));
    lua_pop(L, 1);
    free(p);
  }
}

/* --- the TCP side ------------------------------------------------------------ */

static void drop(int slot) {
  bufferevent_free(clients[slot].bev);
  clients[slot].bev = NULL;
  clients[slot].gen++;
  nclients--;
}

static void on_read(struct bufferevent *bev, void *arg) {
  int slot = (int)(intptr_t)arg;
  struct evbuffer *in = bufferevent_get_input(bev);
  char *line;
  size_t len;
  while ((line = evbuffer_readln(in, &len, EVBUFFER_EOL_CRLF)) != NULL) {
    dispatch(line, len, slot);
    free(line);
  }
  if (evbuffer_get_length(in) > 4096) drop(slot); /* a line too long */
}

static void on_event(struct bufferevent *bev, short what, void *arg) {
  (void)bev;
  if (what & (BEV_EVENT_EOF | BEV_EVENT_ERROR)) drop((int)(intptr_t)arg);
}

static void on_accept(struct evconnlistener *l, evutil_socket_t fd,
                      struct sockaddr *sa, int salen, void *arg) {
  struct sockaddr_in *sin = (struct sockaddr_in *)sa;
  int slot;
  (void)l, (void)salen, (void)arg;
  for (slot = 0; slot < MAX_CLIENTS && clients[slot].bev; slot++) {}
  if (slot == MAX_CLIENTS) {
    evutil_closesocket(fd);
    return;
  }
  clients[slot].bev = bufferevent_socket_new(tide_event_base(host), fd,
                                             BEV_OPT_CLOSE_ON_FREE);
  snprintf(clients[slot].name, sizeof clients[slot].name, "%s:%d",
           inet_ntoa(sin->sin_addr), ntohs(sin->sin_port));
  nclients++;
  bufferevent_setcb(clients[slot].bev, on_read, NULL, on_event,
                    (void *)(intptr_t)slot);
  bufferevent_enable(clients[slot].bev, EV_READ | EV_WRITE);
}

static struct evconnlistener *listener;
static struct event *sigint, *sigterm;

static void on_signal(evutil_socket_t sig, short what, void *arg) {
  (void)sig, (void)what, (void)arg;
  fprintf(stderr, "service: stopping\n");
  tide_stop(host);
}

/* --- main ------------------------------------------------------------------ */

static void on_loaded(tide_host *h, lua_State *L, int status, int n,
                      void *ud) {
  (void)h, (void)n;
  if (status != TIDE_OK) {
    fprintf(stderr, "%s\n", lua_tostring(L, -1));
    *(int *)ud = 1;
  }
}

static int usage(void) {
  fprintf(stderr, "usage: service [-p port] [-d plugin_dir] [-m message]...\n");
  return 2;
}

int main(int argc, char **argv) {
  const char *dir = "plugins";
  int port = 7070, i, nmsg = 0, rc = 0;
  char err[256];
  tide_options o;
  lua_State *L;

  for (i = 1; i < argc; i++) {
    if (strcmp(argv[i], "-p") == 0 && i + 1 < argc)
      port = atoi(argv[++i]);
    else if (strcmp(argv[i], "-d") == 0 && i + 1 < argc)
      dir = argv[++i];
    else if (strcmp(argv[i], "-m") == 0 && i + 1 < argc)
      nmsg++, i++;
    else
      return usage();
  }
  signal(SIGPIPE, SIG_IGN);

  memset(&o, 0, sizeof o);
  o.memory_limit = 256u << 20; /* the whole Lua state, plugins included */
  host = tide_host_new(&o, err, sizeof err);
  if (!host) {
    fprintf(stderr, "service: %s\n", err);
    return 1;
  }
  L = tide_lua(host);
  tide_register_module(host, "service", open_service);

  /* load the plugins: a task, since reading files waits on the pool */
  if (luaL_loadbuffer(L, bootstrap, sizeof bootstrap - 1, "=service") != 0) {
    fprintf(stderr, "service: %s\n", lua_tostring(L, -1));
    tide_host_free(host);
    return 1;
  }
  lua_pushstring(L, dir);
  if (tide_call(host, 1, on_loaded, &rc) != 0 ||
      tide_loop_run(host, TIDE_RUN_DEFAULT) < 0 || rc != 0) {
    tide_host_free(host);
    return 1;
  }

  if (nmsg) { /* handle the messages given, then exit */
    cli_pending = nmsg;
    for (i = 1; i < argc; i++)
      if (strcmp(argv[i], "-m") == 0) {
        i++;
        dispatch(argv[i], strlen(argv[i]), -1);
      }
    tide_loop_run(host, TIDE_RUN_DEFAULT);
    rc = cli_pending == 0 ? 0 : 1;
    tide_host_free(host);
    return rc;
  }

  {
    struct sockaddr_in sin;
    memset(&sin, 0, sizeof sin);
    sin.sin_family = AF_INET;
    sin.sin_port = htons((unsigned short)port);
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    listener = evconnlistener_new_bind(
        tide_event_base(host), on_accept, NULL,
        LEV_OPT_CLOSE_ON_FREE | LEV_OPT_REUSEABLE, 64,
        (struct sockaddr *)&sin, sizeof sin);
  }
  if (!listener) {
    perror("service: listen");
    tide_host_free(host);
    return 1;
  }
  sigint = evsignal_new(tide_event_base(host), SIGINT, on_signal, NULL);
  sigterm = evsignal_new(tide_event_base(host), SIGTERM, on_signal, NULL);
  event_add(sigint, NULL);
  event_add(sigterm, NULL);
  { /* the port, also when the system chose it (-p 0) */
    struct sockaddr_in bound;
    socklen_t len = sizeof bound;
    if (getsockname(evconnlistener_get_fd(listener),
                    (struct sockaddr *)&bound, &len) == 0)
      port = ntohs(bound.sin_port);
  }
  fprintf(stderr, "service: listening on 127.0.0.1:%d\n", port);

  tide_ref(host); /* our listener is not a tide handle: keep the loop */
  tide_loop_run(host, TIDE_RUN_DEFAULT); /* until a signal stops it */
  tide_unref(host);

  for (i = 0; i < MAX_CLIENTS; i++)
    if (clients[i].bev) drop(i);
  evconnlistener_free(listener);
  event_free(sigint);
  event_free(sigterm);
  tide_host_free(host);
  return 0;
}
