/*
 * spec/c/check_tls.c - the TLS layer of streams (modules/tls.c, as
 * modules/tls.h gives it to stream.c), tested with libcheck on a pair of
 * sessions over a socketpair: the handshake's steps and the direction
 * each waits for, reads and writes with EAGAIN, a write that must be
 * repeated (the session state's retry), the errors and their codes, an
 * error queue left empty after every call, and close_notify.
 *
 * The streams here are bare structs (no host, no events): the layer only
 * uses the stream's descriptor, session and TLS fields. Certificates are
 * made in memory (EC P-256, self-signed).
 */
#define _GNU_SOURCE
#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

#include "../../modules/tls.h" /* (modules/ is not on the include path) */

/* ---- helpers ------------------------------------------------------------ */

static EVP_PKEY *pkey;

/* A self-signed certificate for cn, valid from now for `days` (negative:
 * expired since). */
static X509 *make_cert(const char *cn, long days) {
  X509 *x = X509_new();
  X509_NAME *name;
  ck_assert_ptr_nonnull(x);
  X509_set_version(x, 2);
  ASN1_INTEGER_set(X509_get_serialNumber(x), 1);
  if (days >= 0) {
    X509_gmtime_adj(X509_getm_notBefore(x), 0);
    X509_gmtime_adj(X509_getm_notAfter(x), days * 86400L);
  } else {
    X509_gmtime_adj(X509_getm_notBefore(x), 2 * days * 86400L);
    X509_gmtime_adj(X509_getm_notAfter(x), days * 86400L);
  }
  X509_set_pubkey(x, pkey);
  name = X509_get_subject_name(x);
  X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, (const unsigned char *)cn,
                             -1, -1, 0);
  X509_set_issuer_name(x, name);
  ck_assert_int_gt(X509_sign(x, pkey, EVP_sha256()), 0);
  return x;
}

typedef struct pair {
  int fds[2];
  tide__stream c, s; /* client, server */
  tide__stream_tls ctls, stls; /* their sessions' state */
  SSL_CTX *cctx, *sctx;
  X509 *cert;
} pair;

static void nonblock(int fd) {
  fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
}

/* A client and a server session; verify: the client checks the server's
 * certificate (made for cn, valid for days) against itself as a trusted
 * root when trust is set. */
static void pair_open(pair *p, const char *cn, long days, int verify, int trust) {
  memset(p, 0, sizeof *p);
  ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM, 0, p->fds), 0);
  nonblock(p->fds[0]);
  nonblock(p->fds[1]);
  p->cert = make_cert(cn, days);
  p->sctx = SSL_CTX_new(TLS_server_method());
  p->cctx = SSL_CTX_new(TLS_client_method());
  ck_assert_int_eq(SSL_CTX_use_certificate(p->sctx, p->cert), 1);
  ck_assert_int_eq(SSL_CTX_use_PrivateKey(p->sctx, pkey), 1);
  SSL_CTX_set_mode(p->cctx, SSL_MODE_ENABLE_PARTIAL_WRITE |
                                SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
  SSL_CTX_set_mode(p->sctx, SSL_MODE_ENABLE_PARTIAL_WRITE |
                                SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
  SSL_CTX_set_options(p->cctx, SSL_OP_IGNORE_UNEXPECTED_EOF);
  SSL_CTX_set_options(p->sctx, SSL_OP_IGNORE_UNEXPECTED_EOF);
  if (verify) SSL_CTX_set_verify(p->cctx, SSL_VERIFY_PEER, NULL);
  if (trust) X509_STORE_add_cert(SSL_CTX_get_cert_store(p->cctx), p->cert);
  p->c.fd = p->fds[0];
  p->s.fd = p->fds[1];
  p->c.tls = &p->ctls;
  p->s.tls = &p->stls;
  p->c.ssl = SSL_new(p->cctx);
  p->s.ssl = SSL_new(p->sctx);
  SSL_set_fd(p->c.ssl, p->c.fd);
  SSL_set_fd(p->s.ssl, p->s.fd);
  SSL_set_connect_state(p->c.ssl);
  SSL_set_accept_state(p->s.ssl);
  SSL_set1_host(p->c.ssl, "localhost");
  p->c.handshaking = p->s.handshaking = 1;
}

static void pair_close(pair *p) {
  tide__tls_free(&p->c);
  tide__tls_free(&p->s);
  free(p->ctls.msg);
  free(p->stls.msg);
  SSL_CTX_free(p->cctx);
  SSL_CTX_free(p->sctx);
  X509_free(p->cert);
  if (p->fds[0] >= 0) close(p->fds[0]);
  if (p->fds[1] >= 0) close(p->fds[1]);
}

/* Steps both handshakes in turn until neither waits; the results. */
static void handshake(pair *p, int *rc, int *rs) {
  int i;
  *rc = *rs = 0;
  for (i = 0; i < 50; i++) {
    if (*rc != TIDE_TLS_DONE && *rc != TIDE_TLS_FAILED) *rc = tide__tls_handshake(&p->c);
    if (*rs != TIDE_TLS_DONE && *rs != TIDE_TLS_FAILED) *rs = tide__tls_handshake(&p->s);
    if ((*rc == TIDE_TLS_DONE || *rc == TIDE_TLS_FAILED) &&
        (*rs == TIDE_TLS_DONE || *rs == TIDE_TLS_FAILED))
      break;
  }
  if (*rc == TIDE_TLS_DONE) p->c.handshaking = 0;
  if (*rs == TIDE_TLS_DONE) p->s.handshaking = 0;
}

static void connected(pair *p) {
  int rc, rs;
  handshake(p, &rc, &rs);
  ck_assert_int_eq(rc, TIDE_TLS_DONE);
  ck_assert_int_eq(rs, TIDE_TLS_DONE);
}

static ssize_t send_str(tide__stream *s, const char *data, size_t n, int *err) {
  struct iovec iov;
  iov.iov_base = (void *)data;
  iov.iov_len = n;
  return tide__tls_send(s, &iov, 1, err);
}

/* ---- tests --------------------------------------------------------------- */

START_TEST(test_handshake_steps) {
  pair p;
  int r;
  pair_open(&p, "localhost", 30, 1, 1);
  /* the client speaks first; the server waits to read */
  ck_assert_int_eq(tide__tls_handshake(&p.s), TIDE_TLS_WANT_READ);
  ck_assert_int_eq(tide__tls_handshake(&p.c), TIDE_TLS_WANT_READ);
  r = tide__tls_handshake(&p.s);
  ck_assert(r == TIDE_TLS_WANT_READ || r == TIDE_TLS_DONE);
  connected(&p);
  ck_assert_int_eq(SSL_get_verify_result(p.c.ssl), X509_V_OK);
  ck_assert_int_eq((int)ERR_peek_error(), 0);
  pair_close(&p);
}
END_TEST

START_TEST(test_round_trip_and_eagain) {
  pair p;
  char buf[256];
  int err = 0;
  ssize_t n;
  pair_open(&p, "localhost", 30, 1, 1);
  connected(&p);
  n = tide__tls_recv(&p.s, buf, sizeof buf, &err);
  ck_assert_int_eq((int)n, -1);
  ck_assert_int_eq(err, EAGAIN);
  ck_assert(!p.s.r_on_w);
  n = send_str(&p.c, "hello", 5, &err);
  ck_assert_int_eq((int)n, 5);
  n = tide__tls_recv(&p.s, buf, sizeof buf, &err);
  ck_assert_int_eq((int)n, 5);
  ck_assert(memcmp(buf, "hello", 5) == 0);
  /* a small read leaves the rest in the session: pending says so */
  ck_assert_int_eq((int)send_str(&p.s, "0123456789", 10, &err), 10);
  ck_assert_int_eq((int)tide__tls_recv(&p.c, buf, 4, &err), 4);
  ck_assert_int_eq(tide__tls_pending(&p.c), 1);
  ck_assert_int_eq((int)tide__tls_recv(&p.c, buf, sizeof buf, &err), 6);
  ck_assert(memcmp(buf, "456789", 6) == 0);
  pair_close(&p);
}
END_TEST

START_TEST(test_write_retry) {
  pair p;
  int err = 0;
  size_t total = 0, got = 0, cap = 64 << 20;
  char *data = malloc(cap), *in = malloc(cap);
  ssize_t n;
  ck_assert_ptr_nonnull(data);
  ck_assert_ptr_nonnull(in);
  for (size_t i = 0; i < cap; i++) data[i] = (char)(i * 7 + 3);
  pair_open(&p, "localhost", 30, 0, 0);
  connected(&p);
  /* write until the socket is full: the last write must be repeated */
  for (;;) {
    n = send_str(&p.c, data + total, cap - total, &err);
    if (n < 0) break;
    total += (size_t)n;
    ck_assert_uint_lt(total, cap);
  }
  ck_assert_int_eq(err, EAGAIN);
  ck_assert(!p.c.w_on_r);
  ck_assert_uint_gt(p.ctls.retry, 0);
  ck_assert_uint_le(p.ctls.retry, 16384);
  /* the peer drains; the repeat (same bytes, more of them) goes through */
  while ((n = tide__tls_recv(&p.s, in + got, cap - got, &err)) > 0) got += (size_t)n;
  n = send_str(&p.c, data + total, 40000, &err);
  ck_assert_int_gt((int)n, 0);
  total += (size_t)n;
  while ((n = tide__tls_recv(&p.s, in + got, cap - got, &err)) > 0) got += (size_t)n;
  ck_assert_uint_eq(got, total);
  ck_assert(memcmp(in, data, total) == 0);
  ck_assert_uint_eq(p.ctls.retry, 0);
  pair_close(&p);
  free(data);
  free(in);
}
END_TEST

START_TEST(test_cert_errors) {
  struct { const char *cn; long days; int trust; const char *msg; } cases[] = {
      {"localhost", 30, 0, "certificate verify failed: self-signed certificate"},
      {"localhost", -1, 1, "certificate verify failed: certificate has expired"},
      {"other.example", 30, 1, "certificate verify failed: hostname mismatch"},
  };
  size_t i;
  for (i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    pair p;
    int rc, rs;
    pair_open(&p, cases[i].cn, cases[i].days, 1, cases[i].trust);
    handshake(&p, &rc, &rs);
    ck_assert_int_eq(rc, TIDE_TLS_FAILED);
    ck_assert_int_eq(p.c.rerr, TIDE_STREAM_ETLS);
    ck_assert_int_eq(p.c.werr, TIDE_STREAM_ETLS);
    ck_assert_str_eq(p.ctls.msg, cases[i].msg);
    ck_assert_str_eq(p.ctls.code, "ECERT");
    ck_assert(p.c.tls_fatal);
    ck_assert_int_eq((int)ERR_peek_error(), 0); /* nothing left behind */
    /* the server hears the client's alert */
    if (rs == TIDE_TLS_FAILED) {
      ck_assert_str_eq(p.stls.code, "ETLS");
      ck_assert(strncmp(p.stls.msg, "TLS handshake failed: ", 22) == 0);
    }
    ck_assert_int_eq((int)ERR_peek_error(), 0);
    pair_close(&p);
  }
}
END_TEST

START_TEST(test_garbage_and_hangup) {
  pair p;
  int r, err = 0;
  char buf[64];
  pair_open(&p, "localhost", 30, 0, 0);
  ck_assert_int_eq((int)write(p.c.fd, "GET / HTTP/1.0\r\n\r\n", 18), 18);
  r = tide__tls_handshake(&p.s);
  ck_assert_int_eq(r, TIDE_TLS_FAILED);
  ck_assert_str_eq(p.stls.code, "ETLS");
  ck_assert_str_eq(p.stls.msg, "TLS handshake failed: http request");
  ck_assert_int_eq((int)ERR_peek_error(), 0);
  pair_close(&p);

  /* the peer hangs up in the middle of the handshake */
  pair_open(&p, "localhost", 30, 0, 0);
  ck_assert_int_eq(tide__tls_handshake(&p.c), TIDE_TLS_WANT_READ);
  close(p.fds[1]);
  p.fds[1] = -1;
  p.s.fd = -1;
  r = tide__tls_handshake(&p.c);
  ck_assert_int_eq(r, TIDE_TLS_FAILED);
  ck_assert(p.c.rerr == ECONNRESET || (p.c.rerr == TIDE_STREAM_ETLS &&
                                       strcmp(p.ctls.code, "ECONNRESET") == 0));
  pair_close(&p);

  /* after the handshake, a hang-up without close_notify is the end */
  pair_open(&p, "localhost", 30, 0, 0);
  connected(&p);
  p.s.tls_fatal = 1; /* (no close_notify from it) */
  tide__tls_free(&p.s);
  close(p.fds[1]);
  p.fds[1] = -1;
  ck_assert_int_eq((int)tide__tls_recv(&p.c, buf, sizeof buf, &err), 0);
  pair_close(&p);
  (void)err;
}
END_TEST

START_TEST(test_close_notify) {
  pair p;
  char buf[64];
  int err = 0;
  pair_open(&p, "localhost", 30, 0, 0);
  connected(&p);
  ck_assert_int_eq(tide__tls_shutdown(&p.c), 0);
  ck_assert(p.c.tls_shut);
  ck_assert_int_eq(tide__tls_shutdown(&p.c), 0); /* once */
  ck_assert_int_eq((int)tide__tls_recv(&p.s, buf, sizeof buf, &err), 0);
  ck_assert(!p.s.tls_fatal); /* a clean end */
  /* a half-closed session still carries the other way */
  ck_assert_int_eq((int)send_str(&p.s, "late", 4, &err), 4);
  ck_assert_int_eq((int)tide__tls_recv(&p.c, buf, sizeof buf, &err), 4);
  /* free sends close_notify when the session may */
  tide__tls_free(&p.s);
  ck_assert_ptr_null(p.s.ssl);
  ck_assert_int_eq((int)tide__tls_recv(&p.c, buf, sizeof buf, &err), 0);
  pair_close(&p);
}
END_TEST

START_TEST(test_no_notify_after_failure) {
  pair p;
  char buf[64];
  int err = 0;
  ssize_t n;
  pair_open(&p, "localhost", 30, 0, 0);
  connected(&p);
  p.c.tls_fatal = 1;
  tide__tls_free(&p.c);
  n = tide__tls_recv(&p.s, buf, sizeof buf, &err);
  ck_assert_int_eq((int)n, -1); /* nothing came: no alert */
  ck_assert_int_eq(err, EAGAIN);
  pair_close(&p);
}
END_TEST

int main(void) {
  Suite *s = suite_create("tls");
  TCase *tc = tcase_create("sessions");
  SRunner *sr;
  int failed;
  signal(SIGPIPE, SIG_IGN); /* (the sessions here write with write(2)) */
  pkey = EVP_EC_gen("P-256");
  if (!pkey) return 1;
  tcase_set_timeout(tc, 60);
  tcase_add_test(tc, test_handshake_steps);
  tcase_add_test(tc, test_round_trip_and_eagain);
  tcase_add_test(tc, test_write_retry);
  tcase_add_test(tc, test_cert_errors);
  tcase_add_test(tc, test_garbage_and_hangup);
  tcase_add_test(tc, test_close_notify);
  tcase_add_test(tc, test_no_notify_after_failure);
  suite_add_tcase(s, tc);
  sr = srunner_create(s);
  srunner_run_all(sr, CK_NORMAL);
  failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  EVP_PKEY_free(pkey);
  return failed ? 1 : 0;
}
