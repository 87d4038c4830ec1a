/* bench/echo_count.c - a TCP ping-pong client for a fixed amount of work:
 * NCONN connections to 127.0.0.1:PORT each send MSG bytes and wait for
 * them to come back, ROUNDS times, then all close; it prints
 * "RESULT roundtrips=X seconds=S". The echo workload of bench/run.sh runs
 * for a fixed time instead; this one is for instruction counts of a
 * server (bench/callgrind.sh echo), where the work must be the same for
 * every server.
 * usage: echo_count PORT [NCONN=50] [ROUNDS=1000] [MSG=64] */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
  int port, n, rounds, i, left, one = 1;
  size_t msg;
  static char out[65536], in[65536];
  struct sockaddr_in sin;
  struct pollfd *pf;
  size_t *got;
  int *done;
  unsigned long long total = 0;
  double t0;
  if (argc < 2) {
    fprintf(stderr, "usage: %s PORT [NCONN] [ROUNDS] [MSG]\n", argv[0]);
    return 2;
  }
  port = atoi(argv[1]);
  n = argc > 2 ? atoi(argv[2]) : 50;
  rounds = argc > 3 ? atoi(argv[3]) : 1000;
  msg = argc > 4 ? (size_t)atoi(argv[4]) : 64;
  if (port < 1 || port > 65535 || n < 1 || n > 10000 || rounds < 1 ||
      msg < 1 || msg > sizeof out) {
    fprintf(stderr, "bad arguments\n");
    return 2;
  }
  memset(out, 'x', msg);
  memset(&sin, 0, sizeof sin);
  sin.sin_family = AF_INET;
  sin.sin_port = htons((unsigned short)port);
  sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  pf = calloc((size_t)n, sizeof *pf);
  got = calloc((size_t)n, sizeof *got);
  done = calloc((size_t)n, sizeof *done);
  if (!pf || !got || !done) return 1;
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
    if (write(pf[i].fd, out, msg) != (ssize_t)msg) {
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
      ssize_t r;
      if (!(pf[i].revents & (POLLIN | POLLERR | POLLHUP))) continue;
      r = read(pf[i].fd, in, msg - got[i]);
      if (r <= 0) {
        if (r < 0 && errno == EINTR) continue;
        fprintf(stderr, "connection %d: %s\n", i, r == 0 ? "closed by the server" : strerror(errno));
        return 1;
      }
      got[i] += (size_t)r;
      if (got[i] < msg) continue;
      got[i] = 0;
      total++;
      if (++done[i] == rounds) {
        pf[i].fd = -pf[i].fd - 1; /* poll skips it */
        left--;
      } else if (write(pf[i].fd, out, msg) != (ssize_t)msg) {
        perror("write");
        return 1;
      }
    }
  }
  printf("RESULT roundtrips=%llu seconds=%.3f\n", total, now() - t0);
  for (i = 0; i < n; i++) close(-pf[i].fd - 1);
  return 0;
}
