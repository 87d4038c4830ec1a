/* bench/http_count.c - an HTTP/1.1 keep-alive client for a fixed amount of
 * work: NCONN connections to 127.0.0.1:PORT each send ROUNDS requests
 * (`GET / HTTP/1.1`, one at a time, the next once the previous response
 * is complete), then all close; it prints "RESULT requests=X seconds=S".
 * The HTTP hello world workload of bench/http_run.sh runs wrk for a fixed
 * time; this one is for instruction counts of a server
 * (bench/callgrind.sh http), where the work must be the same every run.
 * A response is complete after its head and Content-Length bytes of body
 * (a chunked response or one without a length is an error here). A
 * connection the server closes after a response is opened again (as wrk
 * does).
 * With HOLD, the connections stay open (idle) HOLD seconds before they
 * close, after "HOLDING" is printed: idle keep-alive connections that
 * have served requests, for a server's memory per connection.
 * usage: http_count PORT [NCONN=50] [ROUNDS=1000] [HOLD=0] */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define BUFSZ 16384

static const char REQ[] =
    "GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: http_count\r\n"
    "Accept: */*\r\n\r\n";

struct conn {
  char buf[BUFSZ];
  size_t have;
  int done;
};

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* The length of the first complete response in b[0..n), 0 when it is not
 * complete yet, -1 when it is not one this client understands. */
static long complete(const char *b, size_t n) {
  const char *end = NULL, *p;
  size_t i;
  long len = -1;
  for (i = 3; i < n; i++)
    if (b[i] == '\n' && b[i - 1] == '\r' && b[i - 2] == '\n' && b[i - 3] == '\r') {
      end = b + i + 1;
      break;
    }
  if (!end) return n >= BUFSZ ? -1 : 0;
  for (p = b; p < end; p++) {
    if (p[0] == '\n' && end - p > 16 && strncasecmp(p + 1, "content-length:", 15) == 0) {
      len = strtol(p + 16, NULL, 10);
      break;
    }
  }
  if (len < 0) return -1;
  if ((size_t)(end - b) + (size_t)len > n) return (size_t)(end - b) + (size_t)len > BUFSZ ? -1 : 0;
  return (long)(end - b) + len;
}

int main(int argc, char **argv) {
  int port, n, rounds, hold, i, left, one = 1;
  struct sockaddr_in sin;
  struct pollfd *pf;
  struct conn *cs;
  unsigned long long total = 0, reconnects = 0;
  size_t rl = sizeof REQ - 1;
  double t0;
  if (argc < 2) {
    fprintf(stderr, "usage: %s PORT [NCONN] [ROUNDS] [HOLD]\n", argv[0]);
    return 2;
  }
  port = atoi(argv[1]);
  n = argc > 2 ? atoi(argv[2]) : 50;
  rounds = argc > 3 ? atoi(argv[3]) : 1000;
  hold = argc > 4 ? atoi(argv[4]) : 0;
  if (port < 1 || port > 65535 || n < 1 || n > 10000 || rounds < 1 || hold < 0 || hold > 600) {
    fprintf(stderr, "bad arguments\n");
    return 2;
  }
  memset(&sin, 0, sizeof sin);
  sin.sin_family = AF_INET;
  sin.sin_port = htons((unsigned short)port);
  sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  pf = calloc((size_t)n, sizeof *pf);
  cs = calloc((size_t)n, sizeof *cs);
  if (!pf || !cs) return 1;
  for (i = 0; i < n; i++) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0 || connect(fd, (struct sockaddr *)&sin, sizeof sin) < 0) {
      perror("connect");
      return 1;
    }
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    pf[i].fd = fd;
    pf[i].events = POLLIN;
  }
  t0 = now();
  for (i = 0; i < n; i++)
    if (write(pf[i].fd, REQ, rl) != (ssize_t)rl) {
      perror("write");
      return 1;
    }
  left = n;
  while (left > 0) {
    if (poll(pf, (nfds_t)n, 60000) <= 0) {
      fprintf(stderr, "no answer for 60 s\n");
      return 1;
    }
    for (i = 0; i < n; i++) {
      struct conn *c = &cs[i];
      ssize_t r;
      long len;
      if (!(pf[i].revents & (POLLIN | POLLERR | POLLHUP))) continue;
      r = read(pf[i].fd, c->buf + c->have, BUFSZ - c->have);
      if (r == 0 && c->have == 0) { /* closed between responses: as wrk, reconnect */
        int fd = socket(AF_INET, SOCK_STREAM, 0);
        close(pf[i].fd);
        if (fd < 0 || connect(fd, (struct sockaddr *)&sin, sizeof sin) < 0) {
          perror("connect");
          return 1;
        }
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        pf[i].fd = fd;
        reconnects++;
        if (write(fd, REQ, rl) != (ssize_t)rl) {
          perror("write");
          return 1;
        }
        continue;
      }
      if (r <= 0) {
        if (r < 0 && errno == EINTR) continue;
        fprintf(stderr, "connection %d: %s\n", i, r == 0 ? "closed by the server" : strerror(errno));
        return 1;
      }
      c->have += (size_t)r;
      len = complete(c->buf, c->have);
      if (len < 0) {
        fprintf(stderr, "connection %d: a response without a Content-Length or too large\n", i);
        return 1;
      }
      if (len == 0) continue;
      if ((size_t)len < c->have) {
        fprintf(stderr, "connection %d: more bytes than one response\n", i);
        return 1;
      }
      c->have = 0;
      total++;
      if (++c->done == rounds) {
        pf[i].fd = -pf[i].fd - 1; /* poll skips it */
        left--;
      } else if (write(pf[i].fd, REQ, rl) != (ssize_t)rl) {
        perror("write");
        return 1;
      }
    }
  }
  printf("RESULT requests=%llu reconnects=%llu seconds=%.3f\n", total, reconnects, now() - t0);
  if (hold > 0) {
    printf("HOLDING %d\n", n);
    fflush(stdout);
    sleep((unsigned)hold);
  }
  for (i = 0; i < n; i++) close(-pf[i].fd - 1);
  return 0;
}
