// An LD_PRELOAD shim for the fault tests: it sees every open, write, pwrite, fsync, fdatasync,
// rename and unlink that a process makes on files below FAULTSHIM_DIR, and can fail one of them
// or kill the process just before or just after it.
//
//   FAULTSHIM_DIR=/abs/path    only calls on files below this directory are seen
//   FAULTSHIM_LOG=/file        appends "FUNC SITE" for each call seen; SITE is a hash of the
//                              caller's stack (module-relative addresses: stable across runs)
//   FAULTSHIM_AT=FUNC:SITE:N   the N-th call of FUNC from SITE ("*": from anywhere) ...
//   FAULTSHIM_MODE=MODE        ... fails with EIO or ENOSPC, gets SIGKILL just before
//                              (killbefore) or just after (killafter) it runs, or stops the
//                              process with SIGSTOP just before it (stopbefore: the memory
//                              audit's pause; the call runs once the process is continued)
//
// FUNC is one of open, write, pwrite, fsync, fdatasync, rename, unlink (open64, openat, pwrite64,
// renameat and unlinkat count as their plain names). Built by Scripts/test; used by the
// FaultInjectionTests and Scripts/fault-sweep.
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <execinfo.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define MAX_FDS 65536
static unsigned char watched[MAX_FDS];
static __thread int inside;  // set while the shim itself does I/O, so it sees none of it
static long matching_calls;

typedef int (*open_f)(const char *, int, ...);
typedef int (*openat_f)(int, const char *, int, ...);
typedef int (*close_f)(int);
typedef ssize_t (*write_f)(int, const void *, size_t);
typedef ssize_t (*pwrite_f)(int, const void *, size_t, off_t);
typedef int (*sync_f)(int);
typedef int (*rename_f)(const char *, const char *);
typedef int (*renameat_f)(int, const char *, int, const char *);
typedef int (*unlink_f)(const char *);
typedef int (*unlinkat_f)(int, const char *, int);

// The libc function this shim stands in front of.
#define REAL(name, type) \
    static type real_##name; \
    if (!real_##name) real_##name = (type)dlsym(RTLD_NEXT, #name)

static int below_dir(int dirfd, const char *path) {
    const char *dir = getenv("FAULTSHIM_DIR");
    if (!dir || !path) return 0;
    char full[PATH_MAX];
    if (path[0] == '/') {
        snprintf(full, sizeof full, "%s", path);
    } else if (dirfd == AT_FDCWD) {
        char cwd[PATH_MAX];
        if (!getcwd(cwd, sizeof cwd)) return 0;
        snprintf(full, sizeof full, "%s/%s", cwd, path);
    } else {
        char link[64], base[PATH_MAX];
        snprintf(link, sizeof link, "/proc/self/fd/%d", dirfd);
        ssize_t length = readlink(link, base, sizeof base - 1);
        if (length < 0) return 0;
        base[length] = 0;
        snprintf(full, sizeof full, "%s/%s", base, path);
    }
    size_t prefix = strlen(dir);
    return strncmp(full, dir, prefix) == 0 && (full[prefix] == '/' || full[prefix] == 0);
}

// A hash of the stack above the shim's wrapper: module names and module-relative addresses.
static unsigned long long caller_site(void) {
    void *frames[16];
    int count = backtrace(frames, 16);
    unsigned long long hash = 1469598103934665603ULL;
    // Frame 0 is this function, 1 the decision, 2 the wrapper: the callers start at 3.
    for (int i = 3; i < count && i < 11; i++) {
        Dl_info info;
        uintptr_t offset = (uintptr_t)frames[i];
        const char *name = "?";
        if (dladdr(frames[i], &info) && info.dli_fbase) {
            offset -= (uintptr_t)info.dli_fbase;
            if (info.dli_fname) {
                const char *slash = strrchr(info.dli_fname, '/');
                name = slash ? slash + 1 : info.dli_fname;
            }
        }
        for (const char *c = name; *c; c++) hash = (hash ^ (unsigned char)*c) * 1099511628211ULL;
        for (int b = 0; b < 8; b++) hash = (hash ^ ((offset >> (8 * b)) & 0xff)) * 1099511628211ULL;
    }
    return hash;
}

static void log_call(const char *func, unsigned long long site) {
    const char *path = getenv("FAULTSHIM_LOG");
    if (!path) return;
    REAL(open, open_f);
    REAL(write, write_f);
    REAL(close, close_f);
    int fd = real_open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
    if (fd < 0) return;
    char line[96];
    int length = snprintf(line, sizeof line, "%s %016llx\n", func, site);
    (void)real_write(fd, line, (size_t)length);
    real_close(fd);
}

// What happens to this call: 0 to run it, an errno to fail it with; SIGKILL on the spot for
// killbefore, SIGSTOP on the spot for stopbefore, and *kill_after set for killafter.
static int decide(const char *func, int *kill_after) {
    *kill_after = 0;
    inside++;
    unsigned long long site = caller_site();
    log_call(func, site);
    inside--;
    const char *at = getenv("FAULTSHIM_AT");
    const char *mode = getenv("FAULTSHIM_MODE");
    if (!at || !mode) return 0;
    char want_func[32], want_site[32];
    long want_n = 0;
    if (sscanf(at, "%31[^:]:%31[^:]:%ld", want_func, want_site, &want_n) != 3) return 0;
    if (strcmp(want_func, func) != 0) return 0;
    if (strcmp(want_site, "*") != 0 && strtoull(want_site, NULL, 16) != site) return 0;
    if (++matching_calls != want_n) return 0;
    if (strcmp(mode, "killbefore") == 0) kill(getpid(), SIGKILL);
    if (strcmp(mode, "stopbefore") == 0) {
        kill(getpid(), SIGSTOP);
        return 0;
    }
    if (strcmp(mode, "killafter") == 0) {
        *kill_after = 1;
        return 0;
    }
    return strcmp(mode, "ENOSPC") == 0 ? ENOSPC : EIO;
}

#define FAULT(func, watched_expr, failure)                      \
    int kill_after = 0;                                         \
    if (!inside && (watched_expr)) {                            \
        int error = decide(func, &kill_after);                  \
        if (error) {                                            \
            errno = error;                                      \
            return failure;                                     \
        }                                                       \
    }
#define AFTER() if (kill_after) kill(getpid(), SIGKILL)

static int is_watched(int fd) { return fd >= 0 && fd < MAX_FDS && watched[fd]; }

static int opened(int fd, int watch) {
    if (fd >= 0 && fd < MAX_FDS) watched[fd] = (unsigned char)watch;
    return fd;
}

static mode_t mode_argument(int flags, va_list arguments) {
    return (flags & (O_CREAT | O_TMPFILE)) ? (mode_t)va_arg(arguments, int) : 0;
}

// The four open calls share one body: the mode argument exists only with O_CREAT or O_TMPFILE.
#define OPEN_WRAPPER(name, type, dirfd_expression, ...)                       \
    {                                                                          \
        va_list arguments;                                                     \
        va_start(arguments, flags);                                            \
        mode_t mode = mode_argument(flags, arguments);                         \
        va_end(arguments);                                                     \
        REAL(name, type);                                                      \
        int watch = below_dir(dirfd_expression, path);                         \
        FAULT("open", watch, -1);                                              \
        int fd = opened(real_##name(__VA_ARGS__, flags, mode), watch);         \
        AFTER();                                                               \
        return fd;                                                             \
    }

int open(const char *path, int flags, ...) OPEN_WRAPPER(open, open_f, AT_FDCWD, path)
int open64(const char *path, int flags, ...) OPEN_WRAPPER(open64, open_f, AT_FDCWD, path)
int openat(int dirfd, const char *path, int flags, ...) OPEN_WRAPPER(openat, openat_f, dirfd, dirfd, path)
int openat64(int dirfd, const char *path, int flags, ...) OPEN_WRAPPER(openat64, openat_f, dirfd, dirfd, path)

int close(int fd) {
    REAL(close, close_f);
    if (fd >= 0 && fd < MAX_FDS) watched[fd] = 0;
    return real_close(fd);
}

ssize_t write(int fd, const void *buffer, size_t count) {
    REAL(write, write_f);
    FAULT("write", is_watched(fd), -1);
    ssize_t result = real_write(fd, buffer, count);
    AFTER();
    return result;
}

ssize_t pwrite(int fd, const void *buffer, size_t count, off_t offset) {
    REAL(pwrite, pwrite_f);
    FAULT("pwrite", is_watched(fd), -1);
    ssize_t result = real_pwrite(fd, buffer, count, offset);
    AFTER();
    return result;
}

ssize_t pwrite64(int fd, const void *buffer, size_t count, off_t offset) {
    REAL(pwrite64, pwrite_f);
    FAULT("pwrite", is_watched(fd), -1);
    ssize_t result = real_pwrite64(fd, buffer, count, offset);
    AFTER();
    return result;
}

int fsync(int fd) {
    REAL(fsync, sync_f);
    FAULT("fsync", is_watched(fd), -1);
    int result = real_fsync(fd);
    AFTER();
    return result;
}

int fdatasync(int fd) {
    REAL(fdatasync, sync_f);
    FAULT("fdatasync", is_watched(fd), -1);
    int result = real_fdatasync(fd);
    AFTER();
    return result;
}

int rename(const char *from, const char *to) {
    REAL(rename, rename_f);
    FAULT("rename", below_dir(AT_FDCWD, to), -1);
    int result = real_rename(from, to);
    AFTER();
    return result;
}

int renameat(int fromfd, const char *from, int tofd, const char *to) {
    REAL(renameat, renameat_f);
    FAULT("rename", below_dir(tofd, to), -1);
    int result = real_renameat(fromfd, from, tofd, to);
    AFTER();
    return result;
}

int unlink(const char *path) {
    REAL(unlink, unlink_f);
    FAULT("unlink", below_dir(AT_FDCWD, path), -1);
    int result = real_unlink(path);
    AFTER();
    return result;
}

int unlinkat(int dirfd, const char *path, int flags) {
    REAL(unlinkat, unlinkat_f);
    FAULT("unlink", below_dir(dirfd, path), -1);
    int result = real_unlinkat(dirfd, path, flags);
    AFTER();
    return result;
}
