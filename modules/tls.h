/*
 * modules/tls.h - the TLS session of a stream (modules/tls.c), as
 * stream.c drives it: the session's reads and writes in place of
 * read(2) and send(2), the handshake's steps, close_notify.
 *
 * Each call clears OpenSSL's error queue before it starts, and a failure
 * leaves its message and code in the stream (s->tls->msg, ->code) and the
 * queue empty: no error outlives the call that met it, so none can be
 * reported later by another connection.
 */
#ifndef TIDE_TLS_H
#define TIDE_TLS_H

#include <sys/types.h>
#include <sys/uio.h>

#include "stream.h"

/* tide__tls_handshake's results */
enum { TIDE_TLS_FAILED = -1, TIDE_TLS_DONE = 1, TIDE_TLS_WANT_READ,
       TIDE_TLS_WANT_WRITE };

/* SSL_read: bytes (> 0), 0 at the end of the stream, or -1 with *err an
 * errno (EAGAIN: wait; then r_on_w says whether for writability) or
 * TIDE_STREAM_ETLS. */
ssize_t tide__tls_recv(tide__stream *s, char *buf, size_t n, int *err);

/* SSL_write of the iovecs, a record at a time: the bytes taken (> 0), or
 * -1 with *err as above (EAGAIN: w_on_r says whether it waits for
 * readability). A write that must wait leaves s->tls->retry: the next
 * write must start with the same bytes, at least that many. */
ssize_t tide__tls_send(tide__stream *s, const struct iovec *iov, int n,
                       int *err);

/* One step of the handshake; on failure rerr and werr hold the error. */
int tide__tls_handshake(tide__stream *s);

/* 1 when the session holds data or records already read from the socket */
int tide__tls_pending(tide__stream *s);

/* Sends close_notify (once): 0 sent or given up, 1 wait for writability
 * and call again. Never waits. */
int tide__tls_shutdown(tide__stream *s);

/* Ends the session: close_notify if it may go without waiting (not after
 * a failure or an abort), then frees it. The descriptor stays open. */
void tide__tls_free(tide__stream *s);

/* Adds tls_context, tls_attach and tls_info to the table on top of the
 * stack (the C half of tide.net). */
void tide__tls_register(lua_State *L);

#endif
