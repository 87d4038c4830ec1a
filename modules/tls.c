/*
 * modules/tls.c - TLS sessions on tide's streams, with OpenSSL 3; part of
 * the C half of tide.net (lua/tide/net.lua drives it, docs/tls.md is the
 * manual).
 *
 *   tls_context(server, verify, cert, key, ca, alpn) -> ctx | nil, msg, code
 *       a blocking call: the files are read and the context built on the
 *       worker pool. alpn: the protocols in wire format ("\2h2\8http/1.1")
 *   tls_attach(s, ctx, server, servername, check_host, check_ip)
 *       -> true | nil, msg, code       a session on plain stream s, whose
 *                                      handshake s_handshake (stream.c) runs
 *   tls_info(s) -> {version=, cipher=, alpn=, servername=, peer_subject=,
 *                   peer_issuer=, verified=, verify_result=} | nil
 *
 * The session sits inside the stream (see stream.h): SSL_read and
 * SSL_write replace read(2) and send(2) under the stream's own buffers, so
 * every stream call works unchanged over TLS. The session does its own
 * socket I/O through a small BIO that sends with MSG_NOSIGNAL (a dead
 * peer is EPIPE, never SIGPIPE, also in a host that does not ignore it).
 *
 * Contexts are shared: one per set of options (the Lua half caches them),
 * and each session holds a reference to its context, so a context outlives
 * its userdata while sessions made from it live on.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include "tls.h"

#define CTX_MT "tide.tls.context"
#define RECORD 16384 /* plaintext of one record: SSL_write's unit here */

typedef struct tls_ctx {
  SSL_CTX *ctx;
} tls_ctx;

/* --- errors ------------------------------------------------------------------- */

static void set_msg(tide__stream *s, const char *msg, const char *code) {
  free(s->tls->msg);
  s->tls->msg = strdup(msg); /* (NULL: tide__stream_push_error has a default) */
  s->tls->code = code;
}

/* The one place that turns a failed SSL call into an error: what failed
 * (a certificate that did not verify, the reason of the first error in
 * OpenSSL's queue, or a system error), recorded in the stream. Empties the
 * queue. Returns the stream error: an errno or TIDE_STREAM_ETLS. */
static int fail(tide__stream *s, const char *what, int sslerr, int saved) {
  unsigned long e, first = ERR_peek_error();
  int cert = 0;
  char msg[320];
  s->tls_fatal = 1; /* no close_notify after a fatal error */
  while ((e = ERR_get_error()) != 0)
    if (ERR_GET_LIB(e) == ERR_LIB_SSL &&
        ERR_GET_REASON(e) == SSL_R_CERTIFICATE_VERIFY_FAILED)
      cert = 1;
  if (cert) {
    long v = SSL_get_verify_result(s->ssl);
    snprintf(msg, sizeof msg, "certificate verify failed: %s",
             X509_verify_cert_error_string(v));
    set_msg(s, msg, "ECERT");
    return TIDE_STREAM_ETLS;
  }
  if (first == 0 && sslerr == SSL_ERROR_SYSCALL) {
    if (saved) return saved; /* ECONNRESET, EPIPE, ... */
    snprintf(msg, sizeof msg, "%s: the peer closed the connection", what);
    set_msg(s, msg, "ECONNRESET");
    return TIDE_STREAM_ETLS;
  }
  {
    const char *reason = first ? ERR_reason_error_string(first) : NULL;
    snprintf(msg, sizeof msg, "%s: %s", what, reason ? reason : "protocol error");
  }
  set_msg(s, msg, "ETLS");
  return TIDE_STREAM_ETLS;
}

/* --- the socket BIO ---------------------------------------------------------- */

static BIO_METHOD *bio_method;
static pthread_once_t bio_once = PTHREAD_ONCE_INIT;

/* the BIO's data is its stream */
static int bio_write(BIO *b, const char *p, int n) {
  tide__stream *s = BIO_get_data(b);
  ssize_t r;
  do r = send(s->fd, p, (size_t)n, MSG_NOSIGNAL);
  while (r < 0 && errno == EINTR);
  BIO_clear_retry_flags(b);
  if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) BIO_set_retry_write(b);
  return (int)r;
}

static int bio_read(BIO *b, char *p, int n) {
  tide__stream *s = BIO_get_data(b);
  tide__buf *pre = &s->tls->in;
  ssize_t r;
  BIO_clear_retry_flags(b);
  if (pre->len) { /* what the stream had read before the session began */
    size_t k = pre->len < (size_t)n ? pre->len : (size_t)n;
    memcpy(p, pre->p + pre->off, k);
    pre->off += k;
    pre->len -= k;
    if (pre->len == 0) {
      free(pre->p);
      memset(pre, 0, sizeof *pre);
    }
    return (int)k;
  }
  do r = read(s->fd, p, (size_t)n);
  while (r < 0 && errno == EINTR);
  BIO_clear_retry_flags(b);
  if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) BIO_set_retry_read(b);
  return (int)r;
}

static long bio_ctrl(BIO *b, int cmd, long num, void *ptr) {
  (void)b, (void)num, (void)ptr;
  return cmd == BIO_CTRL_FLUSH ? 1 : 0; /* sends are never held back */
}

static int bio_create(BIO *b) {
  BIO_set_init(b, 1);
  return 1;
}

static int alpn_index = -1;
static void alpn_free(void *parent, void *ptr, CRYPTO_EX_DATA *ad, int idx,
                      long argl, void *argp) {
  (void)parent, (void)ad, (void)idx, (void)argl, (void)argp;
  free(ptr);
}

static void init_once(void) {
  BIO_METHOD *m = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK,
                               "tide socket");
  if (m && BIO_meth_set_write(m, bio_write) && BIO_meth_set_read(m, bio_read) &&
      BIO_meth_set_ctrl(m, bio_ctrl) && BIO_meth_set_create(m, bio_create))
    bio_method = m;
  else if (m)
    BIO_meth_free(m);
  alpn_index = SSL_CTX_get_ex_new_index(0, NULL, NULL, NULL, alpn_free);
}

/* --- the session, for stream.c ------------------------------------------------ */

ssize_t tide__tls_recv(tide__stream *s, char *buf, size_t n, int *err) {
  int r, e, saved;
  if (n > INT_MAX) n = INT_MAX;
  ERR_clear_error();
  errno = 0;
  r = SSL_read(s->ssl, buf, (int)n);
  if (r > 0) return r;
  saved = errno;
  switch ((e = SSL_get_error(s->ssl, r))) {
  case SSL_ERROR_ZERO_RETURN: /* close_notify */
    return 0;
  case SSL_ERROR_WANT_READ:
    *err = EAGAIN;
    return -1;
  case SSL_ERROR_WANT_WRITE:
    s->r_on_w = 1;
    *err = EAGAIN;
    return -1;
  case SSL_ERROR_SYSCALL:
    if (saved == 0 && ERR_peek_error() == 0) { /* the end, unannounced */
      s->tls_fatal = 1;
      return 0;
    }
    /* fall through */
  default:
    *err = fail(s, "TLS error", e, saved);
    return -1;
  }
}

ssize_t tide__tls_send(tide__stream *s, const struct iovec *iov, int niov,
                       int *err) {
  size_t done = 0;
  int i;
  for (i = 0; i < niov; i++) {
    const char *p = iov[i].iov_base;
    size_t len = iov[i].iov_len, off = 0;
    while (off < len) {
      int chunk = len - off > RECORD ? RECORD : (int)(len - off), r, e, saved;
      ERR_clear_error();
      errno = 0;
      r = SSL_write(s->ssl, p + off, chunk);
      if (r > 0) {
        off += (size_t)r;
        done += (size_t)r;
        s->tls->retry = 0;
        continue;
      }
      saved = errno;
      e = SSL_get_error(s->ssl, r);
      if (e == SSL_ERROR_WANT_WRITE || e == SSL_ERROR_WANT_READ) {
        if (e == SSL_ERROR_WANT_READ) s->w_on_r = 1;
        s->tls->retry = (size_t)chunk;
        if (done) return (ssize_t)done;
        *err = EAGAIN;
        return -1;
      }
      *err = fail(s, "TLS error", e, saved);
      return -1;
    }
  }
  return (ssize_t)done;
}

int tide__tls_handshake(tide__stream *s) {
  int r, e, saved;
  ERR_clear_error();
  errno = 0;
  r = SSL_do_handshake(s->ssl);
  if (r == 1) return TIDE_TLS_DONE;
  saved = errno;
  e = SSL_get_error(s->ssl, r);
  if (e == SSL_ERROR_WANT_READ) return TIDE_TLS_WANT_READ;
  if (e == SSL_ERROR_WANT_WRITE) return TIDE_TLS_WANT_WRITE;
  s->rerr = s->werr = fail(s, "TLS handshake failed", e, saved);
  return TIDE_TLS_FAILED;
}

int tide__tls_pending(tide__stream *s) {
  return s->ssl && (s->tls->in.len || SSL_has_pending(s->ssl));
}

int tide__tls_shutdown(tide__stream *s) {
  int r;
  if (s->tls_shut) return 0;
  if (s->tls_fatal || s->handshaking || SSL_in_init(s->ssl) || s->fd < 0) {
    s->tls_shut = 1;
    return 0;
  }
  ERR_clear_error();
  r = SSL_shutdown(s->ssl);
  if (r < 0 && SSL_get_error(s->ssl, r) == SSL_ERROR_WANT_WRITE) {
    ERR_clear_error();
    return 1;
  }
  ERR_clear_error();
  s->tls_shut = 1; /* sent, or given up: it is best effort */
  return 0;
}

void tide__tls_free(tide__stream *s) {
  if (!s->ssl) return;
  tide__tls_shutdown(s);
  SSL_free(s->ssl);
  s->ssl = NULL;
  free(s->tls->in.p);
  memset(&s->tls->in, 0, sizeof s->tls->in);
  s->handshaking = s->r_on_w = s->w_on_r = 0;
  ERR_clear_error();
}

/* --- contexts ------------------------------------------------------------------- */

typedef struct ctx_req {
  int server, verify;
  char *cert, *key, *ca;
  unsigned char *alpn; /* wire format */
  size_t alpn_len;
  SSL_CTX *ctx;        /* the result */
  char msg[400];
  const char *code;
} ctx_req;

typedef struct alpn_list {
  unsigned len;
  unsigned char data[];
} alpn_list;

/* The server's pick among the client's protocols, in the server's order
 * of preference; none in common fails the handshake (RFC 7301). */
static int alpn_select(SSL *ssl, const unsigned char **out, unsigned char *outlen,
                       const unsigned char *in, unsigned inlen, void *arg) {
  alpn_list *a = arg;
  unsigned char *o;
  (void)ssl;
  if (SSL_select_next_proto(&o, outlen, a->data, a->len, in, inlen) !=
      OPENSSL_NPN_NEGOTIATED)
    return SSL_TLSEXT_ERR_ALERT_FATAL;
  *out = o;
  return SSL_TLSEXT_ERR_OK;
}

static void req_errno(ctx_req *r, int err, const char *path) {
  char m[128];
  snprintf(m, sizeof m, "%s", strerror(err));
  if (m[0] >= 'A' && m[0] <= 'Z' && !(m[1] >= 'A' && m[1] <= 'Z'))
    m[0] = (char)(m[0] - 'A' + 'a');
  snprintf(r->msg, sizeof r->msg, "%s: %s", m, path);
  r->code = tide__errname(err);
}

/* (pool thread) an OpenSSL failure while loading what */
static void req_fail(ctx_req *r, const char *what, const char *path) {
  unsigned long e = ERR_peek_error();
  const char *reason = e ? ERR_reason_error_string(e) : NULL;
  snprintf(r->msg, sizeof r->msg, "%s%s%s: %s", what, path ? " " : "",
           path ? path : "", reason ? reason : "unknown error");
  r->code = "ETLS";
}

/* (pool thread) a file to load: readable? (clearer than OpenSSL's word) */
static int readable(ctx_req *r, const char *path) {
  FILE *f = fopen(path, "rb");
  if (!f) {
    req_errno(r, errno, path);
    return 0;
  }
  fclose(f);
  return 1;
}

/* (pool thread) builds the context: no lua_State here */
static void ctx_work(void *data) {
  ctx_req *r = data;
  SSL_CTX *ctx;
  ERR_clear_error();
  ctx = SSL_CTX_new(r->server ? TLS_server_method() : TLS_client_method());
  if (!ctx) {
    req_fail(r, "cannot make a TLS context", NULL);
    ERR_clear_error();
    return;
  }
  SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
  SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE |
                            SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER |
                            SSL_MODE_RELEASE_BUFFERS);
  /* a peer that closes without close_notify ends the stream (as Node) */
  SSL_CTX_set_options(ctx, SSL_OP_IGNORE_UNEXPECTED_EOF | SSL_OP_NO_RENEGOTIATION);
  SSL_CTX_set_read_ahead(ctx, 1); /* a record in one read, not two */
  if (r->cert) {
    if (!readable(r, r->cert)) goto fail;
    if (SSL_CTX_use_certificate_chain_file(ctx, r->cert) != 1) {
      req_fail(r, "cannot load the certificate", r->cert);
      goto fail;
    }
  }
  if (r->key) {
    if (!readable(r, r->key)) goto fail;
    if (SSL_CTX_use_PrivateKey_file(ctx, r->key, SSL_FILETYPE_PEM) != 1) {
      req_fail(r, "cannot load the key", r->key);
      goto fail;
    }
    if (SSL_CTX_check_private_key(ctx) != 1) {
      snprintf(r->msg, sizeof r->msg, "the key %s does not match the certificate %s",
               r->key, r->cert ? r->cert : "");
      r->code = "ETLS";
      goto fail;
    }
  }
  if (r->server) {
    if (r->alpn) {
      alpn_list *a = malloc(sizeof *a + r->alpn_len);
      if (!a || SSL_CTX_set_ex_data(ctx, alpn_index, a) != 1) {
        free(a);
        req_errno(r, ENOMEM, "alpn");
        goto fail;
      }
      a->len = (unsigned)r->alpn_len;
      memcpy(a->data, r->alpn, r->alpn_len);
      SSL_CTX_set_alpn_select_cb(ctx, alpn_select, a);
    }
  } else {
    if (r->verify) {
      SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
      if (SSL_CTX_set_default_verify_paths(ctx) != 1) {
        req_fail(r, "cannot load the system's CA certificates", NULL);
        goto fail;
      }
    }
    if (r->ca) {
      if (!readable(r, r->ca)) goto fail;
      if (SSL_CTX_load_verify_locations(ctx, r->ca, NULL) != 1) {
        req_fail(r, "cannot load the CA certificates", r->ca);
        goto fail;
      }
    }
    if (r->alpn && SSL_CTX_set_alpn_protos(ctx, r->alpn, (unsigned)r->alpn_len) != 0) {
      req_fail(r, "cannot set the ALPN protocols", NULL);
      goto fail;
    }
  }
  r->ctx = ctx;
  ERR_clear_error();
  return;
fail:
  SSL_CTX_free(ctx);
  ERR_clear_error();
}

static int ctx_push(lua_State *L, void *data) {
  ctx_req *r = data;
  tls_ctx *c;
  if (!r->ctx) {
    lua_pushnil(L);
    lua_pushstring(L, r->msg);
    lua_pushstring(L, r->code ? r->code : "ETLS");
    return 3;
  }
  c = lua_newuserdata(L, sizeof *c);
  c->ctx = r->ctx;
  r->ctx = NULL;
  luaL_getmetatable(L, CTX_MT);
  lua_setmetatable(L, -2);
  return 1;
}

static void ctx_req_free(void *data) {
  ctx_req *r = data;
  free(r->cert);
  free(r->key);
  free(r->ca);
  free(r->alpn);
  if (r->ctx) SSL_CTX_free(r->ctx);
  free(r);
}

/* a copy of the optional string argument idx; 0 when out of memory */
static int opt_dup(lua_State *L, int idx, char **out) {
  const char *v = luaL_optstring(L, idx, NULL);
  *out = NULL;
  return !v || (*out = strdup(v)) != NULL;
}

/* tls_context(server, verify, cert, key, ca, alpn): the start function */
static int start_context(lua_State *L) {
  ctx_req *r = calloc(1, sizeof *r);
  size_t alen = 0;
  const char *alpn = luaL_optlstring(L, 6, NULL, &alen);
  if (!r) return luaL_error(L, "not enough memory");
  r->server = lua_toboolean(L, 1);
  r->verify = lua_toboolean(L, 2);
  if (!opt_dup(L, 3, &r->cert) || !opt_dup(L, 4, &r->key) ||
      !opt_dup(L, 5, &r->ca) || (alpn && !(r->alpn = malloc(alen)))) {
    ctx_req_free(r);
    return luaL_error(L, "not enough memory");
  }
  if (alpn) {
    memcpy(r->alpn, alpn, alen);
    r->alpn_len = alen;
  }
  return tide_blocking(L, r, ctx_work, ctx_push, ctx_req_free, 0);
}

static int l_ctx_gc(lua_State *L) {
  tls_ctx *c = luaL_checkudata(L, 1, CTX_MT);
  if (c->ctx) SSL_CTX_free(c->ctx); /* sessions keep their own reference */
  c->ctx = NULL;
  return 0;
}

/* --- sessions -------------------------------------------------------------------- */

static int push_fail(lua_State *L, const char *msg, const char *code) {
  lua_pushnil(L);
  lua_pushstring(L, msg);
  lua_pushstring(L, code);
  return 3;
}

/* tls_attach(s, ctx, server, servername, check_host, check_ip): the
 * stream's output must be flushed (the Lua half does it first). Input
 * already buffered (the peer's first handshake bytes may come before the
 * session is made) goes to the session, never to a reader: plaintext sent
 * before the handshake then fails it, rather than pass for data sent
 * under TLS (the STARTTLS injection of CVE-2011-0411). */
static int l_attach(lua_State *L) {
  tide__stream *s = tide__stream_check(L, 1);
  tls_ctx *c = luaL_checkudata(L, 2, CTX_MT);
  int server = lua_toboolean(L, 3);
  const char *sni = luaL_optstring(L, 4, NULL);
  const char *host = luaL_optstring(L, 5, NULL);
  const char *ip = luaL_optstring(L, 6, NULL);
  SSL *ssl;
  BIO *bio;
  if (s->closed || s->fd < 0) return push_fail(L, "closed", "ECANCELED");
  if (s->ssl) return luaL_error(L, "the stream already runs TLS");
  if (!(s->flags & TIDE_STREAM_SOCKET))
    return luaL_error(L, "TLS needs a socket stream");
  if (!bio_method) return push_fail(L, "cannot set up TLS", "ETLS");
  if (s->rerr || s->werr)
    return tide__stream_push_error(L, s, s->werr ? s->werr : s->rerr);
  if (s->eof || s->shut_pending || s->shut_done)
    return push_fail(L, "the stream has ended", "EPIPE");
  if (s->out.len || s->wwait)
    return push_fail(L, "output is still queued", "EBUSY");
  if (!s->tls && !(s->tls = calloc(1, sizeof *s->tls)))
    return tide__push_errno(L, ENOMEM);
  ERR_clear_error();
  if (!(ssl = SSL_new(c->ctx))) {
    ERR_clear_error();
    return tide__push_errno(L, ENOMEM);
  }
  if (!(bio = BIO_new(bio_method))) {
    SSL_free(ssl);
    ERR_clear_error();
    return tide__push_errno(L, ENOMEM);
  }
  BIO_set_data(bio, s);
  SSL_set_bio(ssl, bio, bio);
  if (server) {
    SSL_set_accept_state(ssl);
  } else {
    SSL_set_connect_state(ssl);
    if ((sni && SSL_set_tlsext_host_name(ssl, sni) != 1) ||
        (host && SSL_set1_host(ssl, host) != 1) ||
        (ip && X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), ip) != 1)) {
      SSL_free(ssl);
      ERR_clear_error();
      return push_fail(L, "invalid server name", "EINVAL");
    }
    SSL_set_hostflags(ssl, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
  }
  s->ssl = ssl;
  s->tls->in = s->in; /* (the input buffer starts anew) */
  memset(&s->in, 0, sizeof s->in);
  s->rscan = 0;
  s->handshaking = 1;
  s->tls_fatal = s->tls_shut = s->r_on_w = s->w_on_r = 0;
  s->tls->retry = 0;
  lua_pushboolean(L, 1);
  return 1;
}

static void set_name(lua_State *L, const char *field, X509_NAME *name) {
  BIO *b = BIO_new(BIO_s_mem());
  char *p;
  long n;
  if (!b) return;
  if (X509_NAME_print_ex(b, name, 0, XN_FLAG_RFC2253) >= 0 &&
      (n = BIO_get_mem_data(b, &p)) >= 0) {
    lua_pushlstring(L, p, (size_t)n);
    lua_setfield(L, -2, field);
  }
  BIO_free(b);
}

/* tls_info(s) */
static int l_info(lua_State *L) {
  tide__stream *s = tide__stream_check(L, 1);
  SSL *ssl = s->ssl;
  const unsigned char *alpn;
  unsigned alen;
  const char *name;
  X509 *peer;
  long v;
  if (!ssl) return 0;
  lua_createtable(L, 0, 8);
  lua_pushstring(L, SSL_get_version(ssl));
  lua_setfield(L, -2, "version");
  if ((name = SSL_get_cipher_name(ssl)) && strcmp(name, "(NONE)") != 0) {
    lua_pushstring(L, name);
    lua_setfield(L, -2, "cipher");
  }
  SSL_get0_alpn_selected(ssl, &alpn, &alen);
  if (alpn && alen) {
    lua_pushlstring(L, (const char *)alpn, alen);
    lua_setfield(L, -2, "alpn");
  }
  if ((name = SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name))) {
    lua_pushstring(L, name);
    lua_setfield(L, -2, "servername");
  }
  if ((peer = SSL_get0_peer_certificate(ssl))) {
    set_name(L, "peer_subject", X509_get_subject_name(peer));
    set_name(L, "peer_issuer", X509_get_issuer_name(peer));
  }
  v = SSL_get_verify_result(ssl);
  lua_pushboolean(L, peer && v == X509_V_OK &&
                         (SSL_get_verify_mode(ssl) & SSL_VERIFY_PEER));
  lua_setfield(L, -2, "verified");
  if (peer) {
    lua_pushstring(L, X509_verify_cert_error_string(v));
    lua_setfield(L, -2, "verify_result");
  }
  lua_pushboolean(L, s->handshaking ? 0 : 1);
  lua_setfield(L, -2, "established");
  return 1;
}

void tide__tls_register(lua_State *L) {
  pthread_once(&bio_once, init_once);
  if (luaL_newmetatable(L, CTX_MT)) {
    lua_pushcfunction(L, l_ctx_gc);
    lua_setfield(L, -2, "__gc");
    lua_pushliteral(L, "tide.tls.context");
    lua_setfield(L, -2, "__metatable");
  }
  lua_pop(L, 1);
  tide_push_blocking(L, start_context, "tls_context");
  lua_setfield(L, -2, "tls_context");
  lua_pushcfunction(L, l_attach);
  lua_setfield(L, -2, "tls_attach");
  lua_pushcfunction(L, l_info);
  lua_setfield(L, -2, "tls_info");
}
