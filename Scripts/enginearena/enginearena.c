// An LD_PRELOAD shim for the memory audit: it gives SQLite (and so SQLCipher, whose buffers come
// from sqlite3_malloc) and OpenSSL's libcrypto an allocator of their own, serving every block
// from one mapping at a fixed address. A key found inside that mapping is the engine's copy; a
// key found anywhere else outside DBKey's locked, dump-excluded pages is a copy DBKey (or the
// Swift code above it) made. dbkey-memory-audit knows the address.
//
// The allocator keeps freed blocks for reuse by the same size, unwiped, as malloc does: stale
// copies the engine leaves behind stay visible (and attributed to it). The mapping is reserved
// whole but made readable only as it is used, so that a scan reads no untouched memory.
//
// Installed before main by a constructor, through SQLITE_CONFIG_MALLOC and
// CRYPTO_set_mem_functions; a process where either is refused stops at once with status 70, so
// that an audit never reports attribution it did not have. Built by Scripts/test.
#define _GNU_SOURCE
#include <dlfcn.h>
#include <pthread.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define ARENA_ADDRESS ((void *)0x5e0000000000UL)
#define ARENA_SIZE (16UL << 30)
#define HEADER 16
#define GRANULE 16
#define SMALL_CLASSES 4096  // blocks up to 64 KiB are kept per exact size

#define COMMIT_STEP (1UL << 20)

static char *arena, *arena_next, *arena_committed, *arena_end;
static void *small_free[SMALL_CLASSES];
static void *large_free;  // blocks above 64 KiB: a list, first fit
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;

static size_t rounded(size_t size) { return (size + GRANULE - 1) / GRANULE * GRANULE; }
static size_t *size_slot(void *block) { return (size_t *)((char *)block - HEADER); }

static void *arena_malloc(size_t requested) {
    size_t size = rounded(requested ? requested : 1);
    void *block = NULL;
    pthread_mutex_lock(&lock);
    if (size / GRANULE < SMALL_CLASSES) {
        void **head = &small_free[size / GRANULE];
        if (*head) {
            block = *head;
            *head = *(void **)block;
        }
    } else {
        for (void **link = &large_free; *link; link = (void **)*link) {
            if (*size_slot(*link) >= size) {
                block = *link;
                *link = *(void **)block;
                break;
            }
        }
    }
    if (!block && arena_next + HEADER + size <= arena_end) {
        if (arena_next + HEADER + size > arena_committed) {
            size_t more = (size_t)(arena_next + HEADER + size - arena_committed + COMMIT_STEP - 1) / COMMIT_STEP * COMMIT_STEP;
            if (mprotect(arena_committed, more, PROT_READ | PROT_WRITE) != 0) {
                pthread_mutex_unlock(&lock);
                return NULL;
            }
            arena_committed += more;
        }
        block = arena_next + HEADER;
        arena_next += HEADER + size;
        *size_slot(block) = size;
    }
    pthread_mutex_unlock(&lock);
    return block;
}

static void arena_free(void *block) {
    if (!block) return;
    size_t size = *size_slot(block);
    pthread_mutex_lock(&lock);
    void **head = size / GRANULE < SMALL_CLASSES ? &small_free[size / GRANULE] : &large_free;
    *(void **)block = *head;
    *head = block;
    pthread_mutex_unlock(&lock);
}

static void *arena_realloc(void *block, size_t size) {
    if (!block) return arena_malloc(size);
    if (rounded(size ? size : 1) <= *size_slot(block)) return block;
    void *moved = arena_malloc(size);
    if (moved) {
        memcpy(moved, block, *size_slot(block));
        arena_free(block);
    }
    return moved;
}

// SQLite's sqlite3_mem_methods, as sqlite3.h declares it.
struct mem_methods {
    void *(*xMalloc)(int);
    void (*xFree)(void *);
    void *(*xRealloc)(void *, int);
    int (*xSize)(void *);
    int (*xRoundup)(int);
    int (*xInit)(void *);
    void (*xShutdown)(void *);
    void *pAppData;
};
static void *sqlite_malloc(int size) { return size < 0 ? NULL : arena_malloc((size_t)size); }
static void *sqlite_realloc(void *block, int size) { return size < 0 ? NULL : arena_realloc(block, (size_t)size); }
static int sqlite_size(void *block) { return block ? (int)*size_slot(block) : 0; }
static int sqlite_roundup(int size) { return (int)rounded((size_t)size); }
static int sqlite_init(void *data) { (void)data; return 0; }
static void sqlite_shutdown(void *data) { (void)data; }
static const struct mem_methods sqlite_methods = {
    sqlite_malloc, arena_free, sqlite_realloc, sqlite_size, sqlite_roundup, sqlite_init, sqlite_shutdown, NULL};

static void *crypto_malloc(size_t size, const char *file, int line) { (void)file; (void)line; return arena_malloc(size); }
static void *crypto_realloc(void *block, size_t size, const char *file, int line) {
    (void)file; (void)line;
    return arena_realloc(block, size);
}
static void crypto_free(void *block, const char *file, int line) { (void)file; (void)line; arena_free(block); }

static void refuse(const char *message) {
    (void)!write(STDERR_FILENO, message, strlen(message));
    _exit(70);
}

__attribute__((constructor)) static void install(void) {
    arena = mmap(ARENA_ADDRESS, ARENA_SIZE, PROT_NONE,
                 MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED_NOREPLACE, -1, 0);
    if (arena != ARENA_ADDRESS) refuse("enginearena: the arena's address is taken\n");
    arena_next = arena_committed = arena;
    arena_end = arena + ARENA_SIZE;
    typedef int (*config_f)(int, ...);
    typedef int (*crypto_mem_f)(void *(*)(size_t, const char *, int),
                                void *(*)(void *, size_t, const char *, int), void (*)(void *, const char *, int));
    config_f config = (config_f)dlsym(RTLD_DEFAULT, "sqlite3_config");
    crypto_mem_f set_crypto = (crypto_mem_f)dlsym(RTLD_DEFAULT, "CRYPTO_set_mem_functions");
    if (!config || config(4 /* SQLITE_CONFIG_MALLOC */, &sqlite_methods) != 0)
        refuse("enginearena: SQLite refused the allocator\n");
    if (!set_crypto || set_crypto(crypto_malloc, crypto_realloc, crypto_free) != 1)
        refuse("enginearena: libcrypto refused the allocator\n");
}
