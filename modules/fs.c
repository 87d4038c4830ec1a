/*
 * modules/fs.c - the C half of `require "tide.fs"` ("tide.fs.c"): file
 * system calls on the worker pool, file handles, and inotify watchers in
 * the loop. lua/tide/fs.lua checks the arguments and waits on the
 * requests these start functions return (docs/fs.md is the user's page).
 *
 * Every path call is one pool job: its work function runs on a pool
 * thread and touches only its fsreq (no lua_State, no host); its push
 * function builds the results on the loop thread; fsreq_free runs once on
 * the loop thread when the job is over, whether anyone still waits or not.
 *
 * File handles (luv style): the userdata holds a pointer to a malloc'd
 * fs_file, counted by the userdata and by every request in flight. The
 * descriptor is closed only when the file is closed (close or __gc) *and*
 * no job that uses it is in flight, so a pool thread never sees its
 * descriptor closed, or reused, under it. Descriptors are closed on the
 * pool (close(2) may flush, on NFS say), except after the pool has shut
 * down with the host, when nothing is left to block.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/inotify.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

#include <event2/event.h>

#include "internal.h"

#define FILE_MT "tide.fs.file"
#define WATCH_MT "tide.fs.watcher"
#define CHUNK 65536

/* --- errors ------------------------------------------------------------ */

static const struct { int err; const char *name; } errnames[] = {
    {EPERM, "EPERM"},       {ENOENT, "ENOENT"},       {ESRCH, "ESRCH"},
    {EINTR, "EINTR"},       {EIO, "EIO"},             {ENXIO, "ENXIO"},
    {E2BIG, "E2BIG"},       {EBADF, "EBADF"},         {EAGAIN, "EAGAIN"},
    {ENOMEM, "ENOMEM"},     {EACCES, "EACCES"},       {EFAULT, "EFAULT"},
    {EBUSY, "EBUSY"},       {EEXIST, "EEXIST"},       {EXDEV, "EXDEV"},
    {ENODEV, "ENODEV"},     {ENOTDIR, "ENOTDIR"},     {EISDIR, "EISDIR"},
    {EINVAL, "EINVAL"},     {ENFILE, "ENFILE"},       {EMFILE, "EMFILE"},
    {ETXTBSY, "ETXTBSY"},   {EFBIG, "EFBIG"},         {ENOSPC, "ENOSPC"},
    {ESPIPE, "ESPIPE"},     {EROFS, "EROFS"},         {EMLINK, "EMLINK"},
    {EPIPE, "EPIPE"},       {ENAMETOOLONG, "ENAMETOOLONG"},
    {ENOSYS, "ENOSYS"},     {ENOTEMPTY, "ENOTEMPTY"}, {ELOOP, "ELOOP"},
    {EOVERFLOW, "EOVERFLOW"}, {ENOTSUP, "ENOTSUP"},   {ECANCELED, "ECANCELED"},
    {EDQUOT, "EDQUOT"},     {ESTALE, "ESTALE"},       {ETIMEDOUT, "ETIMEDOUT"},
    {0, NULL}};

/* The errno-style name of err ("ENOENT"). */
static const char *errname(int err) {
  int i;
  for (i = 0; errnames[i].name; i++)
    if (errnames[i].err == err) return errnames[i].name;
#if defined(__GLIBC__) && (__GLIBC__ > 2 || __GLIBC_MINOR__ >= 32)
  {
    const char *s = strerrorname_np(err);
    if (s) return s;
  }
#endif
  return "EIO";
}

/* The one helper for runtime failures: pushes nil, "ENOENT: no such file
 * or directory: /path" (strerror lower-cased, as Node words it; two paths
 * as "from -> to"), "ENOENT". Loop thread only (strerror). */
static int push_fail(lua_State *L, int err, const char *path,
                     const char *path2) {
  char msg[256];
  const char *name = errname(err);
  if (err == EFBIG) {
    snprintf(msg, sizeof msg, "file too large");
  } else {
    snprintf(msg, sizeof msg, "%s", strerror(err));
    if (msg[0] >= 'A' && msg[0] <= 'Z' && !(msg[1] >= 'A' && msg[1] <= 'Z'))
      msg[0] = (char)(msg[0] - 'A' + 'a');
  }
  lua_pushnil(L);
  if (path && path2)
    lua_pushfstring(L, "%s: %s: %s -> %s", name, msg, path, path2);
  else if (path)
    lua_pushfstring(L, "%s: %s: %s", name, msg, path);
  else
    lua_pushfstring(L, "%s: %s", name, msg);
  lua_pushstring(L, name);
  return 3;
}

/* --- closing descriptors off the loop thread ---------------------------- */

/* A descriptor on its way to close(2): deferred to the pending phase (so
 * nothing is submitted from inside the pool's own completion or shutdown),
 * then run as a pool job. */
typedef struct fd_closer {
  tide_job job;
  tide__deferred node;
  int fd;
} fd_closer;

static void closer_work(tide_job *j) { close(((fd_closer *)j)->fd); }

static void closer_done(tide_job *j, int cancelled) {
  fd_closer *c = (fd_closer *)j;
  if (cancelled) close(c->fd); /* the host is going: nothing left to block */
  free(c);
}

static void closer_submit(tide_host *h, tide__deferred *d) {
  fd_closer *c = (fd_closer *)((char *)d - offsetof(fd_closer, node));
  c->job.work = closer_work;
  c->job.done = closer_done;
  if (h->pool && tide_pool_submit(h, &c->job) == 0) return;
  close(c->fd);
  free(c);
}

/* Closes fd without blocking the loop. h->pool is NULL only once the host
 * being freed has shut its pool down (every fd comes from a pool job, so
 * the pool ran before): then close at once. */
static void close_async(tide_host *h, int fd) {
  fd_closer *c;
  if (fd < 0) return;
  if (!h->pool || !(c = calloc(1, sizeof *c))) {
    close(fd);
    return;
  }
  c->fd = fd;
  tide__defer(h, &c->node, closer_submit);
}

/* --- file handles --------------------------------------------------------- */

typedef struct fs_file {
  tide_host *h;
  int fd;      /* -1 once handed over to be closed */
  int busy;    /* requests in flight that use fd */
  int refs;    /* the userdata, and each request in flight */
  int closed;  /* close() or __gc: no new request */
  int regular; /* a regular file: reads loop until n bytes or the end */
  char *path;  /* as opened, for messages */
} fs_file;

static void file_unref(fs_file *f) {
  if (--f->refs > 0) return;
  free(f->path);
  free(f);
}

/* The last job in flight on a closed file closes its descriptor. */
static void file_release(fs_file *f) {
  if (--f->busy == 0 && f->closed && f->fd >= 0) {
    close_async(f->h, f->fd);
    f->fd = -1;
  }
  file_unref(f);
}

/* --- requests ------------------------------------------------------------- */

typedef struct fsreq {
  tide_host *h;
  int err;            /* errno of the failure, 0 on success */
  char *path, *path2; /* copies, for the work and the messages */
  char *where;        /* the path that failed, when not path (malloc'd) */
  int mode, flags, recursive, append, atomic;
  int whence;
  int64_t off;
  size_t n, back, max;
  const char *data;   /* a Lua string, anchored while the job is in flight */
  size_t dlen;
  int anchor;
  fs_file *f;         /* file operations: the file, counted */
  int fd;             /* a copy of f->fd, or a descriptor the job owns */
  int owns_fd;        /* fd is closed by fsreq_free unless taken */
  int regular, ran, result;
  char *buf;          /* read data, or a path */
  size_t len;
  char **names;
  size_t nnames;
  struct stat st;
  int64_t pos;
} fsreq;

static fsreq *fsreq_new(lua_State *L) {
  fsreq *r = calloc(1, sizeof *r);
  if (!r) luaL_error(L, "not enough memory");
  r->h = tide_from_lua(L);
  r->fd = -1;
  r->anchor = LUA_NOREF;
  return r;
}

/* Loop thread, once per request (after its job, or instead of it). */
static void fsreq_free(void *p) {
  fsreq *r = p;
  size_t i;
  if (r->anchor != LUA_NOREF) tide__unanchor(r->h, r->h->L, r->anchor);
  if (r->owns_fd) close_async(r->h, r->fd);
  if (r->f) file_release(r->f);
  for (i = 0; i < r->nnames; i++) free(r->names[i]);
  free(r->names);
  free(r->buf);
  free(r->path);
  free(r->path2);
  free(r->where);
  free(r);
}

/* A copy of the string argument idx (checked by fs.lua: no NUL inside). */
static char *dup_arg(lua_State *L, fsreq *r, int idx) {
  size_t n;
  const char *s = lua_tolstring(L, idx, &n);
  char *d;
  if (!s) {
    fsreq_free(r);
    luaL_argerror(L, idx, "string expected");
  }
  d = malloc(n + 1);
  if (!d) {
    fsreq_free(r);
    luaL_error(L, "not enough memory");
  }
  memcpy(d, s, n + 1);
  return d;
}

static int start(lua_State *L, fsreq *r, void (*work)(void *),
                 tide_push_fn push) {
  return tide_blocking(L, r, work, push, fsreq_free, 0);
}

/* the path a failure names: the one that failed, the one asked for, or
 * the file's */
static const char *fail_path(fsreq *r) {
  if (r->where) return r->where;
  if (r->path) return r->path;
  return r->f ? r->f->path : NULL;
}

static int push_true(lua_State *L, void *p) {
  fsreq *r = p;
  if (r->err) return push_fail(L, r->err, fail_path(r), r->path2);
  lua_pushboolean(L, 1);
  return 1;
}

static int push_buf(lua_State *L, void *p) {
  fsreq *r = p;
  if (r->err) return push_fail(L, r->err, fail_path(r), r->path2);
  lua_pushlstring(L, r->buf ? r->buf : "", r->len);
  return 1;
}

static int write_all(int fd, const char *p, size_t n) {
  while (n > 0) {
    ssize_t k = write(fd, p, n);
    if (k < 0) {
      if (errno == EINTR) continue;
      return errno;
    }
    p += k;
    n -= (size_t)k;
  }
  return 0;
}

/* Grows *buf to hold cap bytes. */
static int grow(char **buf, size_t cap) {
  char *b = realloc(*buf, cap ? cap : 1);
  if (!b) return ENOMEM;
  *buf = b;
  return 0;
}

/* --- read_file, write_file ---------------------------------------------- */

/* One job: open, fstat, read to the end, close. A regular file larger than
 * max is refused before reading; any other (a device, a FIFO, /proc) is
 * read until max + 1 bytes prove it too large. */
static void read_file_work(void *p) {
  fsreq *r = p;
  struct stat st;
  size_t cap, len = 0, limit = r->max;
  int fd = open(r->path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
  if (fd < 0) {
    r->err = errno;
    return;
  }
  if (fstat(fd, &st) != 0) {
    r->err = errno;
    goto out;
  }
  if (S_ISDIR(st.st_mode)) {
    r->err = EISDIR;
    goto out;
  }
  if (S_ISREG(st.st_mode) && (uint64_t)st.st_size > (uint64_t)limit) {
    r->err = EFBIG;
    goto out;
  }
  cap = S_ISREG(st.st_mode) && st.st_size > 0 ? (size_t)st.st_size + 1 : CHUNK;
  if (cap > limit + 1) cap = limit + 1;
  if ((r->err = grow(&r->buf, cap))) goto out;
  for (;;) {
    ssize_t k;
    if (len == cap) {
      if (cap > limit) { /* limit + 1 bytes read: more than max */
        r->err = EFBIG;
        goto out;
      }
      cap = cap > (limit + 1) / 2 ? limit + 1 : cap * 2;
      if ((r->err = grow(&r->buf, cap))) goto out;
    }
    k = read(fd, r->buf + len, cap - len);
    if (k < 0) {
      if (errno == EINTR) continue;
      r->err = errno;
      goto out;
    }
    if (k == 0) break;
    len += (size_t)k;
  }
  r->len = len;
out:
  close(fd);
}

static int push_read_file(lua_State *L, void *p) {
  fsreq *r = p;
  if (r->err != EFBIG) return push_buf(L, p);
  lua_pushnil(L);
  lua_pushfstring(L,
                  "EFBIG: file too large (more than the max of %f bytes): %s",
                  (double)r->max, r->path);
  lua_pushliteral(L, "EFBIG");
  return 3;
}

/* fs.read_file(path, max) */
static int l_read_file(lua_State *L) {
  double max = luaL_checknumber(L, 2);
  fsreq *r = fsreq_new(L);
  r->path = dup_arg(L, r, 1);
  r->max = max < 0 ? 0 : (size_t)max;
  return start(L, r, read_file_work, push_read_file);
}

/* a name for the temporary file of an atomic write: random, in the same
 * folder, hidden */
static void temp_name(char *out, size_t outlen, const char *dir,
                      const char *base) {
  static const char digits[] = "abcdefghijklmnopqrstuvwxyz0123456789";
  unsigned char rnd[8];
  char suffix[9];
  int i;
  if (getrandom(rnd, sizeof rnd, GRND_NONBLOCK) != (ssize_t)sizeof rnd) {
    struct timespec ts;
    uint64_t x;
    clock_gettime(CLOCK_REALTIME, &ts);
    x = (uint64_t)ts.tv_nsec * 2654435761u ^ (uint64_t)getpid() << 32 ^
        (uint64_t)(uintptr_t)out;
    memcpy(rnd, &x, sizeof rnd);
  }
  for (i = 0; i < 8; i++) suffix[i] = digits[rnd[i] % 36];
  suffix[8] = 0;
  snprintf(out, outlen, "%s.%s.%s.tmp", dir, base, suffix);
}

/* Atomic write: a new temporary file in the target's folder, written and
 * fsync'd, renamed over the target, then the folder fsync'd so the rename
 * itself is durable. The temporary file goes away on any failure. */
static void write_atomic(fsreq *r) {
  char tmp[PATH_MAX + 64], dir[PATH_MAX];
  const char *slash = strrchr(r->path, '/'), *base;
  int fd = -1, tries, dfd;
  size_t dlen;
  if (slash) {
    dlen = (size_t)(slash - r->path) + 1; /* with the slash */
    base = slash + 1;
  } else {
    dlen = 0;
    base = r->path;
  }
  if (dlen >= sizeof dir || strlen(base) > NAME_MAX - 16) {
    r->err = ENAMETOOLONG;
    return;
  }
  memcpy(dir, r->path, dlen);
  dir[dlen] = 0;
  for (tries = 0; tries < 100; tries++) {
    temp_name(tmp, sizeof tmp, dir, base);
    fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, (mode_t)r->mode);
    if (fd >= 0 || errno != EEXIST) break;
  }
  if (fd < 0) {
    r->err = errno;
    return;
  }
  if ((r->err = write_all(fd, r->data, r->dlen)) == 0 && fsync(fd) != 0)
    r->err = errno;
  if (close(fd) != 0 && !r->err) r->err = errno;
  if (!r->err && rename(tmp, r->path) != 0) r->err = errno;
  if (r->err) {
    unlink(tmp);
    return;
  }
  dfd = open(dlen ? dir : ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) {
    /* some file systems cannot sync a folder: that is no failure */
    if (fsync(dfd) != 0 && errno != EINVAL && errno != ENOTSUP)
      r->err = errno;
    close(dfd);
  }
}

static void write_file_work(void *p) {
  fsreq *r = p;
  int fd;
  if (r->atomic) {
    write_atomic(r);
    return;
  }
  fd = open(r->path,
            O_WRONLY | O_CREAT | O_CLOEXEC | O_NOCTTY |
                (r->append ? O_APPEND : O_TRUNC),
            (mode_t)r->mode);
  if (fd < 0) {
    r->err = errno;
    return;
  }
  r->err = write_all(fd, r->data, r->dlen);
  if (close(fd) != 0 && !r->err) r->err = errno;
}

/* fs.write_file(path, data, mode, append, atomic) */
static int l_write_file(lua_State *L) {
  size_t dlen;
  const char *data = luaL_checklstring(L, 2, &dlen);
  int mode = (int)luaL_optinteger(L, 3, 0666);
  fsreq *r = fsreq_new(L);
  r->data = data;
  r->dlen = dlen;
  r->path = dup_arg(L, r, 1);
  r->mode = mode;
  r->append = lua_toboolean(L, 4);
  r->atomic = lua_toboolean(L, 5);
  r->anchor = tide__anchor(r->h, L, 2); /* the data outlives any waiter */
  return start(L, r, write_file_work, push_true);
}

/* --- stat ----------------------------------------------------------------- */

static const char *type_name(mode_t m) {
  if (S_ISREG(m)) return "file";
  if (S_ISDIR(m)) return "directory";
  if (S_ISLNK(m)) return "link";
  if (S_ISFIFO(m)) return "fifo";
  if (S_ISSOCK(m)) return "socket";
  if (S_ISCHR(m)) return "char";
  if (S_ISBLK(m)) return "block";
  return "unknown";
}

static void set_number(lua_State *L, const char *k, double v) {
  lua_pushnumber(L, v);
  lua_setfield(L, -2, k);
}

static double seconds(struct timespec ts) {
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void push_stat_table(lua_State *L, const struct stat *st) {
  lua_createtable(L, 0, 11);
  lua_pushstring(L, type_name(st->st_mode));
  lua_setfield(L, -2, "type");
  set_number(L, "size", (double)st->st_size);
  set_number(L, "mode", (double)(st->st_mode & 07777));
  set_number(L, "mtime", seconds(st->st_mtim));
  set_number(L, "atime", seconds(st->st_atim));
  set_number(L, "ctime", seconds(st->st_ctim));
  set_number(L, "ino", (double)st->st_ino);
  set_number(L, "dev", (double)st->st_dev);
  set_number(L, "nlink", (double)st->st_nlink);
  set_number(L, "uid", (double)st->st_uid);
  set_number(L, "gid", (double)st->st_gid);
}

static int push_stat(lua_State *L, void *p) {
  fsreq *r = p;
  if (r->err) return push_fail(L, r->err, fail_path(r), NULL);
  push_stat_table(L, &r->st);
  return 1;
}

static void stat_work(void *p) {
  fsreq *r = p;
  if ((r->flags ? lstat(r->path, &r->st) : stat(r->path, &r->st)) != 0)
    r->err = errno;
}

static int stat_start(lua_State *L, int is_lstat) {
  fsreq *r = fsreq_new(L);
  r->path = dup_arg(L, r, 1);
  r->flags = is_lstat;
  return start(L, r, stat_work, push_stat);
}

static int l_stat(lua_State *L) { return stat_start(L, 0); }
static int l_lstat(lua_State *L) { return stat_start(L, 1); }

static void exists_work(void *p) {
  fsreq *r = p;
  r->result = stat(r->path, &r->st) == 0;
}

static int push_result(lua_State *L, void *p) {
  lua_pushboolean(L, ((fsreq *)p)->result);
  return 1;
}

static int l_exists(lua_State *L) {
  fsreq *r = fsreq_new(L);
  r->path = dup_arg(L, r, 1);
  return start(L, r, exists_work, push_result);
}

/* --- folders -------------------------------------------------------------- */

static int cmp_names(const void *a, const void *b) {
  return strcmp(*(char *const *)a, *(char *const *)b);
}

/* The names in folder `path` (with dfd >= 0: that open folder, which is
 * then closed), without "." and "..". Returns 0 or an errno. */
static int list_dir(const char *path, int dfd, char ***names, size_t *n) {
  DIR *d = dfd >= 0 ? fdopendir(dfd) : path ? opendir(path) : NULL;
  struct dirent *de;
  size_t cap = 0;
  int err = 0;
  *names = NULL;
  *n = 0;
  if (!d) {
    err = errno;
    if (dfd >= 0) close(dfd);
    return err;
  }
  for (;;) {
    errno = 0;
    if (!(de = readdir(d))) {
      err = errno;
      break;
    }
    if (de->d_name[0] == '.' &&
        (!de->d_name[1] || (de->d_name[1] == '.' && !de->d_name[2])))
      continue;
    if (*n == cap) {
      size_t ncap = cap ? cap * 2 : 32;
      char **nn = realloc(*names, ncap * sizeof *nn);
      if (!nn) {
        err = ENOMEM;
        break;
      }
      *names = nn;
      cap = ncap;
    }
    if (!((*names)[*n] = strdup(de->d_name))) {
      err = ENOMEM;
      break;
    }
    (*n)++;
  }
  closedir(d);
  return err;
}

static void readdir_work(void *p) {
  fsreq *r = p;
  r->err = list_dir(r->path, -1, &r->names, &r->nnames);
  if (!r->err && r->nnames > 1)
    qsort(r->names, r->nnames, sizeof *r->names, cmp_names);
}

static int push_names(lua_State *L, void *p) {
  fsreq *r = p;
  size_t i;
  if (r->err) return push_fail(L, r->err, r->path, NULL);
  lua_createtable(L, (int)r->nnames, 0);
  for (i = 0; i < r->nnames; i++) {
    lua_pushstring(L, r->names[i]);
    lua_rawseti(L, -2, (int)i + 1);
  }
  return 1;
}

static int l_readdir(lua_State *L) {
  fsreq *r = fsreq_new(L);
  r->path = dup_arg(L, r, 1);
  return start(L, r, readdir_work, push_names);
}

/* mkdir -p: every missing folder on the way, with the same mode; an
 * existing folder is no failure. */
static void mkdir_work(void *p) {
  fsreq *r = p;
  struct stat st;
  if (r->recursive) {
    char *s;
    for (s = r->path + 1; *s; s++) {
      if (*s != '/' || s[-1] == '/') continue;
      *s = 0;
      if (mkdir(r->path, (mode_t)r->mode) != 0 && errno != EEXIST) {
        r->err = errno;
        *s = '/';
        return;
      }
      *s = '/';
    }
  }
  if (mkdir(r->path, (mode_t)r->mode) == 0) return;
  r->err = errno;
  if (r->err == EEXIST && r->recursive && stat(r->path, &st) == 0 &&
      S_ISDIR(st.st_mode))
    r->err = 0;
}

/* fs.mkdir(path, mode, recursive) */
static int l_mkdir(lua_State *L) {
  int mode = (int)luaL_optinteger(L, 2, 0777);
  fsreq *r = fsreq_new(L);
  r->path = dup_arg(L, r, 1);
  r->mode = mode;
  r->recursive = lua_toboolean(L, 3);
  return start(L, r, mkdir_work, push_true);
}

/* rm -r of `name` in folder parent: descends with openat(O_NOFOLLOW), so a
 * symbolic link is removed, never followed. `path` names it for errors. */
static int rm_tree(fsreq *r, int parent, const char *name, const char *path) {
  struct stat st;
  char **names;
  size_t n, i;
  int fd, err;
  if (fstatat(parent, name, &st, AT_SYMLINK_NOFOLLOW) != 0) goto fail;
  if (!S_ISDIR(st.st_mode)) {
    if (unlinkat(parent, name, 0) != 0) goto fail;
    return 0;
  }
  fd = openat(parent, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
  if (fd < 0) goto fail;
  /* names first, removals after: no readdir over a changing folder */
  if ((err = list_dir(NULL, fcntl(fd, F_DUPFD_CLOEXEC, 0), &names, &n)) != 0) {
    close(fd);
    errno = err;
    goto fail;
  }
  err = 0;
  for (i = 0; i < n; i++) {
    if (!err) {
      size_t len = strlen(path) + strlen(names[i]) + 2;
      char *sub = malloc(len);
      if (!sub) {
        err = ENOMEM;
      } else {
        snprintf(sub, len, "%s/%s", path, names[i]);
        err = rm_tree(r, fd, names[i], sub);
        free(sub);
      }
    }
    free(names[i]);
  }
  free(names);
  close(fd);
  if (err) return err;
  if (unlinkat(parent, name, AT_REMOVEDIR) != 0) goto fail;
  return 0;
fail:
  err = errno;
  if (!r->where) r->where = strdup(path);
  return err;
}

static void remove_work(void *p) {
  fsreq *r = p;
  struct stat st;
  if (r->recursive) {
    r->err = rm_tree(r, AT_FDCWD, r->path, r->path);
    if (r->where && strcmp(r->where, r->path) == 0) {
      free(r->where);
      r->where = NULL;
    }
    return;
  }
  if (lstat(r->path, &st) != 0)
    r->err = errno;
  else if ((S_ISDIR(st.st_mode) ? rmdir(r->path) : unlink(r->path)) != 0)
    r->err = errno;
}

/* fs.remove(path, recursive) */
static int l_remove(lua_State *L) {
  fsreq *r = fsreq_new(L);
  r->path = dup_arg(L, r, 1);
  r->recursive = lua_toboolean(L, 2);
  return start(L, r, remove_work, push_true);
}

static void mkdtemp_work(void *p) {
  fsreq *r = p;
  if (!mkdtemp(r->path)) r->err = errno;
}

static int push_path(lua_State *L, void *p) {
  fsreq *r = p;
  if (r->err) return push_fail(L, r->err, r->path, NULL);
  lua_pushstring(L, r->path);
  return 1;
}

/* fs.mkdtemp(prefix): prefix .. six random characters */
static int l_mkdtemp(lua_State *L) {
  size_t n;
  const char *prefix = luaL_checklstring(L, 1, &n);
  fsreq *r = fsreq_new(L);
  if (!(r->path = malloc(n + 7))) {
    fsreq_free(r);
    return luaL_error(L, "not enough memory");
  }
  memcpy(r->path, prefix, n);
  memcpy(r->path + n, "XXXXXX", 7);
  return start(L, r, mkdtemp_work, push_path);
}

/* --- names and links ----------------------------------------------------- */

static void rename_work(void *p) {
  fsreq *r = p;
  if (rename(r->path, r->path2) != 0) r->err = errno;
}

static int l_rename(lua_State *L) {
  fsreq *r = fsreq_new(L);
  r->path = dup_arg(L, r, 1);
  r->path2 = dup_arg(L, r, 2);
  return start(L, r, rename_work, push_true);
}

/* symlink(target, path): the messages name "target -> path" */
static void symlink_work(void *p) {
  fsreq *r = p;
  if (symlink(r->path, r->path2) != 0) r->err = errno;
}

static int l_symlink(lua_State *L) {
  fsreq *r = fsreq_new(L);
  r->path = dup_arg(L, r, 1);
  r->path2 = dup_arg(L, r, 2);
  return start(L, r, symlink_work, push_true);
}

static void readlink_work(void *p) {
  fsreq *r = p;
  size_t cap = 256;
  for (;;) {
    ssize_t k;
    if ((r->err = grow(&r->buf, cap))) return;
    k = readlink(r->path, r->buf, cap);
    if (k < 0) {
      r->err = errno;
      return;
    }
    if ((size_t)k < cap) {
      r->len = (size_t)k;
      return;
    }
    cap *= 2;
  }
}

static int l_readlink(lua_State *L) {
  fsreq *r = fsreq_new(L);
  r->path = dup_arg(L, r, 1);
  return start(L, r, readlink_work, push_buf);
}

static void realpath_work(void *p) {
  fsreq *r = p;
  if (!(r->buf = realpath(r->path, NULL)))
    r->err = errno;
  else
    r->len = strlen(r->buf);
}

static int l_realpath(lua_State *L) {
  fsreq *r = fsreq_new(L);
  r->path = dup_arg(L, r, 1);
  return start(L, r, realpath_work, push_buf);
}

static void chmod_work(void *p) {
  fsreq *r = p;
  if (chmod(r->path, (mode_t)r->mode) != 0) r->err = errno;
}

static int l_chmod(lua_State *L) {
  int mode = (int)luaL_checkinteger(L, 2);
  fsreq *r = fsreq_new(L);
  r->path = dup_arg(L, r, 1);
  r->mode = mode;
  return start(L, r, chmod_work, push_true);
}

/* --- open and the file's operations --------------------------------------- */

static void open_work(void *p) {
  fsreq *r = p;
  struct stat st;
  r->fd = open(r->path, r->flags | O_CLOEXEC | O_NOCTTY, (mode_t)r->mode);
  if (r->fd < 0) {
    r->err = errno;
    return;
  }
  r->owns_fd = 1; /* closed by fsreq_free if nobody takes it */
  r->regular = fstat(r->fd, &st) == 0 && S_ISREG(st.st_mode);
}

/* The new file's userdata (a box for the fs_file pointer). */
static int push_open(lua_State *L, void *p) {
  fsreq *r = p;
  fs_file **box, *f;
  if (r->err) return push_fail(L, r->err, r->path, NULL);
  box = lua_newuserdata(L, sizeof *box); /* first: it may raise */
  *box = NULL;
  luaL_getmetatable(L, FILE_MT);
  lua_setmetatable(L, -2);
  if (!(f = calloc(1, sizeof *f))) {
    lua_pop(L, 1);
    return push_fail(L, ENOMEM, r->path, NULL);
  }
  *box = f;
  f->h = r->h;
  f->fd = r->fd;
  f->refs = 1;
  f->regular = r->regular;
  f->path = r->path; /* taken */
  r->path = NULL;
  r->owns_fd = 0;
  return 1;
}

/* fs.open(path, flags, mode): flags are O_* bits (fs.lua parses "r+" &c) */
static int l_open(lua_State *L) {
  int flags = (int)luaL_checkinteger(L, 2);
  int mode = (int)luaL_optinteger(L, 3, 0666);
  fsreq *r = fsreq_new(L);
  r->path = dup_arg(L, r, 1);
  r->flags = flags;
  r->mode = mode;
  return start(L, r, open_work, push_open);
}

/* The open file of the userdata at idx, or a raised error. */
static fs_file *check_file(lua_State *L, int idx) {
  fs_file **box = luaL_checkudata(L, idx, FILE_MT);
  if (!*box || (*box)->closed) luaL_error(L, "attempt to use a closed file");
  return *box;
}

/* A request on file f: it keeps f, and f's descriptor open, until freed. */
static fsreq *file_req(lua_State *L, fs_file *f) {
  fsreq *r = fsreq_new(L);
  r->f = f;
  r->fd = f->fd;
  r->regular = f->regular;
  f->busy++;
  f->refs++;
  return r;
}

/* up to n bytes: for a regular file, until n or the end of the file; for
 * anything else (a FIFO, a device), what one read(2) gives */
static void fread_work(void *p) {
  fsreq *r = p;
  size_t cap = r->n < CHUNK ? r->n : CHUNK, len = 0;
  if ((r->err = grow(&r->buf, cap))) return;
  for (;;) {
    ssize_t k;
    if (len == cap) {
      if (cap == r->n) break;
      cap = cap > r->n / 2 ? r->n : cap * 2;
      if ((r->err = grow(&r->buf, cap))) return;
    }
    k = read(r->fd, r->buf + len, cap - len);
    if (k < 0) {
      if (errno == EINTR) continue;
      if (len == 0) r->err = errno; /* else: the data now, the error next */
      break;
    }
    if (k == 0) break;
    len += (size_t)k;
    if (!r->regular) break;
  }
  r->len = len;
}

/* nil at the end of the file */
static int push_read(lua_State *L, void *p) {
  fsreq *r = p;
  if (r->err) return push_fail(L, r->err, fail_path(r), NULL);
  if (r->len == 0) {
    lua_pushnil(L);
    return 1;
  }
  lua_pushlstring(L, r->buf, r->len);
  return 1;
}

/* file read(ud, n) */
static int l_fread(lua_State *L) {
  fs_file *f = check_file(L, 1);
  double n = luaL_checknumber(L, 2);
  fsreq *r = file_req(L, f);
  r->n = n < 1 ? 1 : (size_t)n;
  return start(L, r, fread_work, push_read);
}

/* Reads that fs.lua buffered ahead (for lines) are given back first:
 * `back` bytes before the kernel's position is where the script is. */
static void unread(fsreq *r) {
  if (r->back > 0) lseek(r->fd, -(off_t)r->back, SEEK_CUR);
}

static void fwrite_work(void *p) {
  fsreq *r = p;
  unread(r); /* a pipe cannot seek: then its read-ahead is simply gone */
  r->err = write_all(r->fd, r->data, r->dlen);
}

/* file write(ud, data, back) */
static int l_fwrite(lua_State *L) {
  fs_file *f = check_file(L, 1);
  size_t dlen;
  const char *data = luaL_checklstring(L, 2, &dlen);
  lua_Number back = luaL_optnumber(L, 3, 0);
  fsreq *r = file_req(L, f);
  r->data = data;
  r->dlen = dlen;
  r->back = back > 0 ? (size_t)back : 0;
  r->anchor = tide__anchor(r->h, L, 2);
  return start(L, r, fwrite_work, push_true);
}

static void fseek_work(void *p) {
  fsreq *r = p;
  off_t off = (off_t)r->off;
  if (r->whence == SEEK_CUR) off -= (off_t)r->back;
  if ((r->pos = (int64_t)lseek(r->fd, off, r->whence)) < 0) r->err = errno;
}

static int push_pos(lua_State *L, void *p) {
  fsreq *r = p;
  if (r->err) return push_fail(L, r->err, fail_path(r), NULL);
  lua_pushnumber(L, (double)r->pos);
  return 1;
}

/* file seek(ud, whence, offset, back) */
static int l_fseek(lua_State *L) {
  static const char *const names[] = {"set", "cur", "end", NULL};
  static const int whence[] = {SEEK_SET, SEEK_CUR, SEEK_END};
  fs_file *f = check_file(L, 1);
  int w = luaL_checkoption(L, 2, "cur", names);
  lua_Number off = luaL_optnumber(L, 3, 0), back = luaL_optnumber(L, 4, 0);
  fsreq *r = file_req(L, f);
  r->whence = whence[w];
  r->off = (int64_t)off;
  r->back = back > 0 ? (size_t)back : 0;
  return start(L, r, fseek_work, push_pos);
}

static void fstat_work(void *p) {
  fsreq *r = p;
  if (fstat(r->fd, &r->st) != 0) r->err = errno;
}

static int l_fstat(lua_State *L) {
  fsreq *r = file_req(L, check_file(L, 1));
  return start(L, r, fstat_work, push_stat);
}

static void fsync_work(void *p) {
  fsreq *r = p;
  if (fsync(r->fd) != 0) r->err = errno;
}

static int l_fsync(lua_State *L) {
  fsreq *r = file_req(L, check_file(L, 1));
  return start(L, r, fsync_work, push_true);
}

static void fclose_work(void *p) {
  fsreq *r = p;
  r->ran = 1;
  if (close(r->fd) != 0 && errno != EINTR) r->err = errno;
}

static void fclose_free(void *p) {
  fsreq *r = p;
  r->owns_fd = !r->ran; /* taken off the queue: close it another way */
  fsreq_free(r);
}

/* file close(ud): marks the file closed. With no job in flight, returns a
 * request for close(2) (its result is close's). Otherwise returns nothing:
 * the last job in flight closes the descriptor when it ends. */
static int l_fclose(lua_State *L) {
  fs_file **box = luaL_checkudata(L, 1, FILE_MT);
  fs_file *f = *box;
  fsreq *r;
  if (!f || f->closed) return 0;
  f->closed = 1;
  if (f->busy > 0 || f->fd < 0) return 0;
  r = fsreq_new(L);
  r->fd = f->fd;
  f->fd = -1;
  r->f = f; /* for its path in messages (fd is -1 now: nothing to close) */
  f->refs++;
  f->busy++;
  return tide_blocking(L, r, fclose_work, push_true, fclose_free, 0);
}

/* __gc: never waits; the descriptor is closed on the pool. */
static int l_file_gc(lua_State *L) {
  fs_file **box = luaL_checkudata(L, 1, FILE_MT);
  fs_file *f = *box;
  if (!f) return 0;
  *box = NULL;
  if (!f->closed) {
    f->closed = 1;
    if (f->busy == 0 && f->fd >= 0) {
      close_async(f->h, f->fd);
      f->fd = -1;
    }
  }
  file_unref(f);
  return 0;
}

/* --- watchers: inotify in the loop --------------------------------------- */

typedef struct fs_watch {
  tide_host *h;
  int fd;           /* the inotify descriptor; -1 once closed */
  struct event *ev; /* while armed */
  int anchor;       /* the userdata, from armed until the close phase */
  int refd;         /* ref()/unref() */
  int counted;      /* counted in h->refs */
  int closed;
  char name[NAME_MAX + 1]; /* the watched path's last part */
  tide__deferred close_node;
} fs_watch;

#define WATCH_MASK                                                          \
  (IN_CREATE | IN_MODIFY | IN_ATTRIB | IN_DELETE | IN_DELETE_SELF |         \
   IN_MOVED_FROM | IN_MOVED_TO | IN_MOVE_SELF)

/* inotify's events in tide's four words (docs/fs.md has the table) */
static const char *event_name(uint32_t m) {
  if (m & IN_Q_OVERFLOW) return "overflow";
  if (m & IN_CREATE) return "create";
  if (m & (IN_DELETE | IN_DELETE_SELF)) return "delete";
  if (m & (IN_MOVED_FROM | IN_MOVED_TO | IN_MOVE_SELF)) return "rename";
  if (m & (IN_MODIFY | IN_ATTRIB)) return "modify";
  return NULL;
}

static void watch_count(fs_watch *w) {
  w->counted = (int)tide__refs_track(w->h, (unsigned)w->counted,
                                      w->ev && w->refd && !w->closed);
}

static void watch_release(tide_host *h, tide__deferred *d) {
  fs_watch *w = (fs_watch *)((char *)d - offsetof(fs_watch, close_node));
  int slot = w->anchor;
  w->anchor = LUA_NOREF;
  tide__unanchor(h, h->L, slot); /* may be the last reference */
}

/* Stops the watcher; its memory (the userdata) is let go in the close
 * phase, so a callback that closes it leaves watch_cb's loop safe. */
static void watch_close(fs_watch *w) {
  if (w->closed) return;
  w->closed = 1;
  watch_count(w);
  if (w->ev) {
    event_free(w->ev);
    w->ev = NULL;
  }
  if (w->fd >= 0) {
    close(w->fd); /* an inotify descriptor: closing it never blocks */
    w->fd = -1;
  }
  if (w->anchor != LUA_NOREF)
    tide__close_later(w->h, &w->close_node, watch_release);
}

/* Poll phase: one read of the queued events, each run as fn(event, name)
 * in a task; more events make the descriptor readable again. */
static void watch_cb(evutil_socket_t fd, short what, void *arg) {
  fs_watch *w = arg;
  tide_host *h = w->h;
  lua_State *L = h->L;
  char buf[16384] __attribute__((aligned(__alignof__(struct inotify_event))));
  ssize_t n = read(fd, buf, sizeof buf);
  char *p;
  int gone = 0;
  (void)what;
  if (n <= 0) return;
  for (p = buf; p < buf + n && !w->closed;) {
    const struct inotify_event *e = (const struct inotify_event *)p;
    const char *ev = event_name(e->mask);
    p += sizeof *e + e->len;
    if (e->mask & IN_IGNORED) gone = 1; /* the path went away */
    if (!ev) continue;
    tide__push_anchor(h, L, w->anchor);
    lua_getfenv(L, -1);
    lua_rawgeti(L, -1, 1);
    lua_remove(L, -2);
    lua_remove(L, -2);
    lua_pushstring(L, ev);
    if (e->len && e->name[0])
      lua_pushstring(L, e->name);
    else
      lua_pushstring(L, w->name);
    tide__call(h, h->ref_run_task, 3);
  }
  if (gone) watch_close(w);
}

static void watch_work(void *p) {
  fsreq *r = p;
  r->fd = inotify_init1(IN_CLOEXEC | IN_NONBLOCK);
  if (r->fd < 0) {
    r->err = errno;
    return;
  }
  r->owns_fd = 1;
  if (inotify_add_watch(r->fd, r->path, WATCH_MASK) < 0) r->err = errno;
}

/* the watcher, not armed yet (fs.lua arms it with its function) */
static int push_watch(lua_State *L, void *p) {
  fsreq *r = p;
  fs_watch *w;
  const char *slash, *end;
  size_t len;
  if (r->err) return push_fail(L, r->err, r->path, NULL);
  w = lua_newuserdata(L, sizeof *w);
  memset(w, 0, sizeof *w);
  w->h = r->h;
  w->fd = r->fd;
  w->anchor = LUA_NOREF;
  w->refd = 1;
  r->owns_fd = 0;
  end = r->path + strlen(r->path);
  while (end > r->path + 1 && end[-1] == '/') end--;
  for (slash = end; slash > r->path && slash[-1] != '/'; slash--) {}
  len = (size_t)(end - slash);
  if (len > NAME_MAX) len = NAME_MAX;
  memcpy(w->name, slash, len);
  w->name[len] = 0;
  luaL_getmetatable(L, WATCH_MT);
  lua_setmetatable(L, -2);
  return 1;
}

static int l_watch(lua_State *L) {
  fsreq *r = fsreq_new(L);
  r->path = dup_arg(L, r, 1);
  return start(L, r, watch_work, push_watch);
}

static fs_watch *check_watch(lua_State *L, int open) {
  fs_watch *w = luaL_checkudata(L, 1, WATCH_MT);
  if (open && w->closed) luaL_error(L, "attempt to use a closed watcher");
  return w;
}

/* watch_start(w, fn): arms the watcher with its callback */
static int l_watch_start(lua_State *L) {
  fs_watch *w = check_watch(L, 1);
  luaL_checktype(L, 2, LUA_TFUNCTION);
  if (w->ev) return luaL_error(L, "watcher already started");
  lua_createtable(L, 1, 0);
  lua_pushvalue(L, 2);
  lua_rawseti(L, -2, 1);
  lua_setfenv(L, 1);
  w->ev = event_new(w->h->base, w->fd, EV_READ | EV_PERSIST, watch_cb, w);
  if (!w->ev || event_add(w->ev, NULL) != 0) {
    watch_close(w);
    return luaL_error(L, "cannot watch the inotify descriptor");
  }
  w->anchor = tide__anchor(w->h, L, 1);
  watch_count(w);
  lua_settop(L, 1);
  return 1;
}

static int l_watch_close(lua_State *L) {
  watch_close(check_watch(L, 0));
  return 0;
}

static int l_watch_ref(lua_State *L) {
  fs_watch *w = check_watch(L, 1);
  w->refd = 1;
  watch_count(w);
  lua_settop(L, 1);
  return 1;
}

static int l_watch_unref(lua_State *L) {
  fs_watch *w = check_watch(L, 1);
  w->refd = 0;
  watch_count(w);
  lua_settop(L, 1);
  return 1;
}

/* __gc: an armed watcher is anchored, so this runs for one never armed,
 * one closed whose close phase has passed, or any at lua_close. */
static int l_watch_gc(lua_State *L) {
  fs_watch *w = luaL_checkudata(L, 1, WATCH_MT);
  if (w->closed) return 0;
  w->closed = 1;
  watch_count(w);
  if (w->ev) event_free(w->ev);
  w->ev = NULL;
  if (w->fd >= 0) close(w->fd);
  w->fd = -1;
  return 0;
}

static int l_watch_tostring(lua_State *L) {
  fs_watch *w = luaL_checkudata(L, 1, WATCH_MT);
  lua_pushfstring(L, "tide.fs.watcher (%s)", w->closed ? "closed" : "active");
  return 1;
}

/* --- the module ---------------------------------------------------------- */

/* The module's table: each path call is published with
 * tide_push_blocking under its Lua name (key, name, start); fs.lua has
 * checked the arguments by then. A file's calls are plain start
 * functions: fs.lua waits on their requests itself, so that close() can
 * wake its waiters (tide._complete). fclose and watch_start do not wait. */
TIDE_MODULE("tide.fs.c", tide__open_fs) {
  static const struct {
    const char *key, *name;
    lua_CFunction start;
  } calls[] = {
      {"read_file", "read_file", l_read_file},
      {"write_file", "write_file", l_write_file},
      {"stat", "stat", l_stat},
      {"lstat", "lstat", l_lstat},
      {"exists", "exists", l_exists},
      {"readdir", "readdir", l_readdir},
      {"mkdir", "mkdir", l_mkdir},
      {"remove", "remove", l_remove},
      {"mkdtemp", "mkdtemp", l_mkdtemp},
      {"rename", "rename", l_rename},
      {"symlink", "symlink", l_symlink},
      {"readlink", "readlink", l_readlink},
      {"realpath", "realpath", l_realpath},
      {"chmod", "chmod", l_chmod},
      {"open", "open", l_open},
      {"watch", "watch", l_watch},
      {NULL, NULL, NULL}};
  static const luaL_Reg fns[] = {
      {"fread", l_fread},   {"fwrite", l_fwrite},
      {"fseek", l_fseek},   {"fstat", l_fstat},
      {"fsync", l_fsync},   {"fclose", l_fclose},
      {"watch_start", l_watch_start},
      {NULL, NULL}};
  static const luaL_Reg watch_methods[] = {{"close", l_watch_close},
                                          {"ref", l_watch_ref},
                                          {"unref", l_watch_unref},
                                          {NULL, NULL}};
  static const struct { const char *name; int value; } flags[] = {
      {"RDONLY", O_RDONLY}, {"WRONLY", O_WRONLY}, {"RDWR", O_RDWR},
      {"CREAT", O_CREAT},   {"TRUNC", O_TRUNC},   {"APPEND", O_APPEND},
      {"EXCL", O_EXCL},     {NULL, 0}};
  const luaL_Reg *f;
  int i;

  luaL_newmetatable(L, FILE_MT);
  lua_pushcfunction(L, l_file_gc);
  lua_setfield(L, -2, "__gc");
  lua_pop(L, 1);

  luaL_newmetatable(L, WATCH_MT);
  lua_pushcfunction(L, l_watch_gc);
  lua_setfield(L, -2, "__gc");
  lua_pushcfunction(L, l_watch_tostring);
  lua_setfield(L, -2, "__tostring");
  lua_newtable(L);
  for (f = watch_methods; f->name; f++) {
    lua_pushcfunction(L, f->func);
    lua_setfield(L, -2, f->name);
  }
  lua_setfield(L, -2, "__index");
  lua_pop(L, 1);

  lua_newtable(L);
  for (i = 0; calls[i].key; i++) {
    tide_push_blocking(L, calls[i].start, calls[i].name);
    lua_setfield(L, -2, calls[i].key);
  }
  for (f = fns; f->name; f++) {
    lua_pushcfunction(L, f->func);
    lua_setfield(L, -2, f->name);
  }
  lua_newtable(L);
  for (i = 0; flags[i].name; i++) {
    lua_pushinteger(L, flags[i].value);
    lua_setfield(L, -2, flags[i].name);
  }
  lua_setfield(L, -2, "O");
  return 1;
}
