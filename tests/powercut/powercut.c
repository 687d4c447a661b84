/*
 * powercut.c: an LD_PRELOAD shim that logs every change a process makes to
 * the SQLite files of one directory, so that a test can rebuild what a disk
 * would hold after a power cut at any moment of the run (tests/powercut/replay.py).
 *
 * Built by tests/test_power_loss.py with gcc into a temporary directory:
 *     gcc -shared -fPIC -O2 -o powercut.so powercut.c -ldl -lpthread
 *
 * Environment of the process it is preloaded into:
 *     PHS_POWERCUT_LOG  the log file (appended to; several processes may share it)
 *     PHS_POWERCUT_DIR  the directory whose "*.db", "*.db-wal" and "*.db-journal"
 *                       files are followed (an absolute, resolved path)
 *     PHS_POWERCUT_SKIP_SYNCS=1  the negative control: syncs of the followed
 *                       files and the directory return success without syncing
 *                       and are not logged, as if the service never synced (the
 *                       test must then find acknowledged records lost)
 *
 * What is logged, in the order the calls completed (one mutex per process is
 * held around each followed call and its record, so the log order is the
 * order of the calls; across processes SQLite's own file locks order them):
 *     OPEN    a followed file opened: its fd, open flags, whether it existed
 *     OPENDIR the directory itself opened (SQLite syncs it after creating a WAL)
 *     WRITE   write/pwrite on a followed fd: offset and the bytes
 *     TRUNC   ftruncate on a followed fd
 *     SYNC    fsync/fdatasync on a followed file or the directory, once it returned
 *     CLOSE   a followed fd closed
 *     UNLINK  a followed file removed
 *     SEND    an HTTP response leaving the process (send* whose bytes start with
 *             "HTTP/1."), logged BEFORE the bytes go out: every change logged
 *             ahead of it was made before the client could read the answer.
 * The -shm file is not followed: it is memory-mapped scratch that SQLite
 * rebuilds from the WAL when the first connection opens after a crash.
 *
 * Record: struct record (40 bytes, little-endian) then `plen` payload bytes.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <unistd.h>

#define MAGIC 0x54554350u /* "PCUT" */
enum { OP_OPEN = 1, OP_OPENDIR = 2, OP_WRITE = 3, OP_TRUNC = 4, OP_SYNC = 5,
       OP_CLOSE = 6, OP_UNLINK = 7, OP_SEND = 8 };
enum { FD_NONE = 0, FD_FILE = 1, FD_DIR = 2 };
#define MAX_FDS 65536
#define SEND_PREFIX 16

struct record {
    uint32_t magic;
    uint16_t op;
    uint16_t flags; /* OPEN: bit 0 = the file existed before the call */
    int32_t pid;
    int32_t fd;
    int64_t a; /* OPEN: open flags; WRITE: offset; TRUNC: length; SEND: peer port */
    int64_t b; /* WRITE: byte count; SEND: local port */
    uint32_t plen;
    uint32_t tid;
};

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static int log_fd = -1;
static char dir[PATH_MAX];
static size_t dir_len;
static int skip_syncs;
static unsigned char kinds[MAX_FDS];

static int (*real_open)(const char *, int, ...);
static int (*real_open64)(const char *, int, ...);
static int (*real_openat)(int, const char *, int, ...);
static int (*real_openat64)(int, const char *, int, ...);
static ssize_t (*real_write)(int, const void *, size_t);
static ssize_t (*real_pwrite)(int, const void *, size_t, off_t);
static ssize_t (*real_pwrite64)(int, const void *, size_t, off_t);
static int (*real_ftruncate)(int, off_t);
static int (*real_ftruncate64)(int, off_t);
static int (*real_fsync)(int);
static int (*real_fdatasync)(int);
static int (*real_close)(int);
static int (*real_unlink)(const char *);
static int (*real_unlinkat)(int, const char *, int);
static ssize_t (*real_send)(int, const void *, size_t, int);
static ssize_t (*real_sendto)(int, const void *, size_t, int, const struct sockaddr *, socklen_t);
static ssize_t (*real_sendmsg)(int, const struct msghdr *, int);

#define RESOLVE(name) real_##name = dlsym(RTLD_NEXT, #name)

__attribute__((constructor)) static void powercut_init(void) {
    RESOLVE(open); RESOLVE(open64); RESOLVE(openat); RESOLVE(openat64);
    RESOLVE(write); RESOLVE(pwrite); RESOLVE(pwrite64);
    RESOLVE(ftruncate); RESOLVE(ftruncate64); RESOLVE(fsync); RESOLVE(fdatasync);
    RESOLVE(close); RESOLVE(unlink); RESOLVE(unlinkat);
    RESOLVE(send); RESOLVE(sendto); RESOLVE(sendmsg);
    const char *log_path = getenv("PHS_POWERCUT_LOG");
    const char *watched = getenv("PHS_POWERCUT_DIR");
    if (log_path == NULL || watched == NULL || strlen(watched) >= sizeof dir - 1) return;
    const char *skip = getenv("PHS_POWERCUT_SKIP_SYNCS");
    skip_syncs = skip != NULL && strcmp(skip, "1") == 0;
    strcpy(dir, watched);
    dir_len = strlen(dir);
    while (dir_len > 1 && dir[dir_len - 1] == '/') dir[--dir_len] = '\0';
    log_fd = real_open(log_path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
    if (log_fd >= 0 && log_fd < MAX_FDS) kinds[log_fd] = FD_NONE;
}

/* One record and its payload in one write(): O_APPEND keeps it whole. */
static void emit(uint16_t op, uint16_t flags, int fd, int64_t a, int64_t b,
                 const void *payload, size_t plen) {
    if (log_fd < 0) return;
    struct record rec = {MAGIC, op, flags, (int32_t)getpid(), fd, a, b, (uint32_t)plen,
                         (uint32_t)gettid()};
    struct iovec iov[2] = {{&rec, sizeof rec}, {(void *)payload, plen}};
    size_t want = sizeof rec + plen;
    ssize_t done = writev(log_fd, iov, plen ? 2 : 1);
    if (done != (ssize_t)want) abort(); /* a torn log would make every cut a lie */
}

/* The absolute form of `path` opened relative to `dirfd` (AT_FDCWD only). */
static int absolute(int dirfd, const char *path, char *out) {
    if (path == NULL) return 0;
    if (path[0] == '/') {
        if (strlen(path) >= PATH_MAX) return 0;
        strcpy(out, path);
        return 1;
    }
    if (dirfd != AT_FDCWD) return 0;
    char cwd[PATH_MAX];
    if (getcwd(cwd, sizeof cwd) == NULL) return 0;
    if (strlen(cwd) + 1 + strlen(path) >= PATH_MAX) return 0;
    strcpy(out, cwd);
    strcat(out, "/");
    strcat(out, path);
    return 1;
}

static int ends_with(const char *s, const char *suffix) {
    size_t n = strlen(s), m = strlen(suffix);
    return n >= m && strcmp(s + n - m, suffix) == 0;
}

/* FD_FILE for a followed SQLite file of the directory, FD_DIR for the directory. */
static int classify(const char *abs) {
    if (dir_len == 0 || strncmp(abs, dir, dir_len) != 0) return FD_NONE;
    const char *rest = abs + dir_len;
    if (*rest == '\0' || (rest[0] == '/' && rest[1] == '\0')) return FD_DIR;
    if (rest[0] != '/' || strchr(rest + 1, '/') != NULL) return FD_NONE;
    if (ends_with(rest, ".db") || ends_with(rest, ".db-wal") || ends_with(rest, ".db-journal"))
        return FD_FILE;
    return FD_NONE;
}

static int kind_of(int fd) { return fd >= 0 && fd < MAX_FDS ? kinds[fd] : FD_NONE; }

static int do_open(int dirfd, const char *path, int flags, mode_t mode, int at, int large) {
    char abs[PATH_MAX];
    int kind = log_fd >= 0 && absolute(dirfd, path, abs) ? classify(abs) : FD_NONE;
    int fd;
    if (kind == FD_NONE) {
        if (at) return large ? real_openat64(dirfd, path, flags, mode) : real_openat(dirfd, path, flags, mode);
        return large ? real_open64(path, flags, mode) : real_open(path, flags, mode);
    }
    pthread_mutex_lock(&lock);
    int saved = errno;
    struct stat st;
    int existed = stat(abs, &st) == 0;
    errno = saved;
    if (at) fd = large ? real_openat64(dirfd, path, flags, mode) : real_openat(dirfd, path, flags, mode);
    else fd = large ? real_open64(path, flags, mode) : real_open(path, flags, mode);
    if (fd >= 0 && fd < MAX_FDS) {
        saved = errno;
        kinds[fd] = (unsigned char)kind;
        emit(kind == FD_DIR ? OP_OPENDIR : OP_OPEN, (uint16_t)existed, fd, flags, 0, abs,
             strlen(abs));
        errno = saved;
    }
    pthread_mutex_unlock(&lock);
    return fd;
}

#define MODE_ARG(flags, mode)                                         \
    mode_t mode = 0;                                                  \
    if ((flags) & (O_CREAT | O_TMPFILE)) {                            \
        va_list ap;                                                   \
        va_start(ap, flags);                                          \
        mode = (mode_t)va_arg(ap, int);                               \
        va_end(ap);                                                   \
    }

int open(const char *path, int flags, ...) { MODE_ARG(flags, mode) return do_open(AT_FDCWD, path, flags, mode, 0, 0); }
int open64(const char *path, int flags, ...) { MODE_ARG(flags, mode) return do_open(AT_FDCWD, path, flags, mode, 0, 1); }
int openat(int dirfd, const char *path, int flags, ...) { MODE_ARG(flags, mode) return do_open(dirfd, path, flags, mode, 1, 0); }
int openat64(int dirfd, const char *path, int flags, ...) { MODE_ARG(flags, mode) return do_open(dirfd, path, flags, mode, 1, 1); }

static ssize_t do_pwrite(int fd, const void *buf, size_t n, off_t off, int large) {
    if (kind_of(fd) != FD_FILE) return large ? real_pwrite64(fd, buf, n, off) : real_pwrite(fd, buf, n, off);
    pthread_mutex_lock(&lock);
    ssize_t done = large ? real_pwrite64(fd, buf, n, off) : real_pwrite(fd, buf, n, off);
    int saved = errno;
    if (done > 0) emit(OP_WRITE, 0, fd, off, done, buf, (size_t)done);
    errno = saved;
    pthread_mutex_unlock(&lock);
    return done;
}

ssize_t pwrite(int fd, const void *buf, size_t n, off_t off) { return do_pwrite(fd, buf, n, off, 0); }
ssize_t pwrite64(int fd, const void *buf, size_t n, off_t off) { return do_pwrite(fd, buf, n, off, 1); }

ssize_t write(int fd, const void *buf, size_t n) {
    if (kind_of(fd) != FD_FILE) return real_write(fd, buf, n);
    pthread_mutex_lock(&lock);
    int append = (fcntl(fd, F_GETFL) & O_APPEND) != 0;
    off_t off = lseek(fd, 0, append ? SEEK_END : SEEK_CUR);
    ssize_t done = real_write(fd, buf, n);
    int saved = errno;
    if (done > 0) emit(OP_WRITE, 0, fd, off, done, buf, (size_t)done);
    errno = saved;
    pthread_mutex_unlock(&lock);
    return done;
}

static int do_truncate(int fd, off_t length, int large) {
    if (kind_of(fd) != FD_FILE) return large ? real_ftruncate64(fd, length) : real_ftruncate(fd, length);
    pthread_mutex_lock(&lock);
    int rc = large ? real_ftruncate64(fd, length) : real_ftruncate(fd, length);
    int saved = errno;
    if (rc == 0) emit(OP_TRUNC, 0, fd, length, 0, NULL, 0);
    errno = saved;
    pthread_mutex_unlock(&lock);
    return rc;
}

int ftruncate(int fd, off_t length) { return do_truncate(fd, length, 0); }
int ftruncate64(int fd, off_t length) { return do_truncate(fd, length, 1); }

static int do_sync(int fd, int data_only) {
    if (kind_of(fd) == FD_NONE) return data_only ? real_fdatasync(fd) : real_fsync(fd);
    if (skip_syncs) return 0;
    pthread_mutex_lock(&lock);
    int rc = data_only ? real_fdatasync(fd) : real_fsync(fd);
    int saved = errno;
    if (rc == 0) emit(OP_SYNC, 0, fd, 0, 0, NULL, 0);
    errno = saved;
    pthread_mutex_unlock(&lock);
    return rc;
}

int fsync(int fd) { return do_sync(fd, 0); }
int fdatasync(int fd) { return do_sync(fd, 1); }

int close(int fd) {
    if (kind_of(fd) == FD_NONE) return real_close(fd);
    pthread_mutex_lock(&lock);
    kinds[fd] = FD_NONE;
    int rc = real_close(fd);
    int saved = errno;
    emit(OP_CLOSE, 0, fd, 0, 0, NULL, 0);
    errno = saved;
    pthread_mutex_unlock(&lock);
    return rc;
}

static int do_unlink(int dirfd, const char *path, int flags, int at) {
    char abs[PATH_MAX];
    if (log_fd < 0 || !absolute(dirfd, path, abs) || classify(abs) != FD_FILE)
        return at ? real_unlinkat(dirfd, path, flags) : real_unlink(path);
    pthread_mutex_lock(&lock);
    int rc = at ? real_unlinkat(dirfd, path, flags) : real_unlink(path);
    int saved = errno;
    if (rc == 0) emit(OP_UNLINK, 0, -1, 0, 0, abs, strlen(abs));
    errno = saved;
    pthread_mutex_unlock(&lock);
    return rc;
}

int unlink(const char *path) { return do_unlink(AT_FDCWD, path, 0, 0); }
int unlinkat(int dirfd, const char *path, int flags) { return do_unlink(dirfd, path, flags, 1); }

static int port_of(int fd, int peer) {
    struct sockaddr_storage addr;
    socklen_t len = sizeof addr;
    int rc = peer ? getpeername(fd, (struct sockaddr *)&addr, &len)
                  : getsockname(fd, (struct sockaddr *)&addr, &len);
    if (rc != 0) return -1;
    if (addr.ss_family == AF_INET) return ntohs(((struct sockaddr_in *)&addr)->sin_port);
    if (addr.ss_family == AF_INET6) return ntohs(((struct sockaddr_in6 *)&addr)->sin6_port);
    return -1;
}

/* An HTTP response about to leave: mark the moment, before the bytes go. */
static void mark_send(int fd, const void *buf, size_t n) {
    if (log_fd < 0 || n < 7 || memcmp(buf, "HTTP/1.", 7) != 0) return;
    int saved = errno;
    pthread_mutex_lock(&lock);
    emit(OP_SEND, 0, fd, port_of(fd, 1), port_of(fd, 0), buf, n < SEND_PREFIX ? n : SEND_PREFIX);
    pthread_mutex_unlock(&lock);
    errno = saved;
}

ssize_t send(int fd, const void *buf, size_t n, int flags) {
    mark_send(fd, buf, n);
    return real_send(fd, buf, n, flags);
}

ssize_t sendto(int fd, const void *buf, size_t n, int flags, const struct sockaddr *to,
               socklen_t tolen) {
    mark_send(fd, buf, n);
    return real_sendto(fd, buf, n, flags, to, tolen);
}

ssize_t sendmsg(int fd, const struct msghdr *msg, int flags) {
    if (msg != NULL && msg->msg_iovlen > 0) mark_send(fd, msg->msg_iov[0].iov_base, msg->msg_iov[0].iov_len);
    return real_sendmsg(fd, msg, flags);
}
