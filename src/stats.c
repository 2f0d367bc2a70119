/*
 * The stats region: create/replace/destroy (supervisor), attach and slot
 * updates (workers), read-only snapshots (outboxstat). libc only.
 * Invariants: magic is stored last (release) at creation and zeroed first at
 * shutdown; each seq is odd only while its one writer is inside a write; a
 * reaped slot's counters are in hdr.retired or in the slot, never both, for
 * any reader that saw the same even header seq before and after its reads.
 */
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "stats.h"

/* Process-shared atomics must not fall back to a (process-local) lock, and
 * a reader of a PROT_READ mapping must be able to load them without a write. */
_Static_assert(ATOMIC_LLONG_LOCK_FREE == 2, "64-bit atomics must be lock-free");
_Static_assert(ATOMIC_INT_LOCK_FREE == 2, "32-bit atomics must be lock-free");
_Static_assert(sizeof(outbox_stats_slot_t) % 128 == 0, "slot size not a multiple of 128");
_Static_assert(sizeof(outbox_stats_header_t) % 128 == 0, "header size not a multiple of 128");
_Static_assert(offsetof(outbox_stats_region_t, slots) % 128 == 0, "slots not 128-aligned");
/* Where every layout version must keep magic, version and sizes, so that any
 * reader can say which version it found. */
_Static_assert(offsetof(outbox_stats_header_t, magic) == 0, "magic moved");
_Static_assert(offsetof(outbox_stats_header_t, version) == 8, "version moved");
_Static_assert(offsetof(outbox_stats_header_t, header_size) == 12, "header_size moved");
_Static_assert(offsetof(outbox_stats_header_t, total_size) == 16, "total_size moved");

#define RLX memory_order_relaxed
#define ACQ memory_order_acquire
#define REL memory_order_release

/* Retries of one snapshot, header and slots together; a writer stopped with
 * an odd seq costs a reader this many yields, not a hang. */
#define SNAP_TRIES 1000

static const char counter_names[OUTBOX_STATS_NCOUNTERS][OUTBOX_STATS_CNAME_MAX] = {
#define OUTBOX_COUNTER(sym, name, help) name,
#include "stats_counters.def"
#undef OUTBOX_COUNTER
};

static int64_t
now_us(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

int64_t
outbox_stats_mono_us(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

int
outbox_stats_shm_name(const char *instance, char *buf, size_t len)
{
    size_t n, i;

    if (instance == NULL) {
        return -1;
    }
    n = strlen(instance);
    if (n == 0 || n >= OUTBOX_STATS_NAME_MAX) {
        return -1;
    }
    for (i = 0; i < n; i++) {
        char c = instance[i];

        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '_' || c == '-')) {
            return -1;
        }
    }
    if ((size_t)snprintf(buf, len, "/outbox-%s", instance) >= len) {
        return -1;
    }
    return 0;
}

static void
bad_name(const char *instance, char *err, size_t errlen)
{
    snprintf(err, errlen, "invalid instance name \"%.64s\" (1-%d characters of A-Za-z0-9._-)",
             instance ? instance : "", OUTBOX_STATS_NAME_MAX - 1);
}

/* ---- seqlock (Boehm, "Can seqlocks get along with programming language
 * memory models?"): data are relaxed atomics, the fences order them. ---- */

static uint32_t
write_begin(_Atomic uint32_t *seq)
{
    uint32_t s = atomic_load_explicit(seq, RLX);

    s |= 1; /* a writer that died inside a write left it odd */
    atomic_store_explicit(seq, s, RLX);
    atomic_thread_fence(REL);
    return s;
}

static void
write_end(_Atomic uint32_t *seq, uint32_t s)
{
    atomic_store_explicit(seq, s + 1, REL);
}

/* ---- histogram ---- */

#define HIST_LAST (OUTBOX_STATS_HIST_BUCKETS - 1)

unsigned
outbox_stats_hist_bucket(uint64_t us)
{
    unsigned k;

    if (us == 0) {
        return 0;
    }
    k = 63 - (unsigned)__builtin_clzll(us);
    if (2 * k + 1 >= HIST_LAST) {
        return HIST_LAST;
    }
    /* us in [2^k, 2^(k+1)); the upper half starts at 1.5 * 2^k */
    return 2 * k + 1 + (2 * us >= (3ULL << k) ? 1 : 0);
}

uint64_t
outbox_stats_hist_lower(unsigned b)
{
    unsigned k;

    if (b == 0) {
        return 0;
    }
    if (b > HIST_LAST) {
        return UINT64_MAX;
    }
    k = (b - 1) / 2;
    return (b & 1) ? 1ULL << k : (3ULL << k) / 2; /* lo(2) = 1.5 rounds down to 1 */
}

uint64_t
outbox_stats_hist_quantile(const uint64_t h[OUTBOX_STATS_HIST_BUCKETS], double q)
{
    uint64_t n = 0, rank, cum = 0;
    unsigned b;

    for (b = 0; b < OUTBOX_STATS_HIST_BUCKETS; b++) {
        n += h[b];
    }
    if (n == 0) {
        return 0;
    }
    if (!(q > 0)) { /* also NaN */
        q = 0;
    }
    if (q > 1) {
        q = 1;
    }
    rank = (uint64_t)(q * (double)n + 0.999999999);
    if (rank == 0) {
        rank = 1;
    }
    if (rank > n) {
        rank = n;
    }
    for (b = 0; b < HIST_LAST; b++) {
        cum += h[b];
        if (cum >= rank) {
            return outbox_stats_hist_lower(b + 1);
        }
    }
    return outbox_stats_hist_lower(HIST_LAST);
}

const char *
outbox_worker_state_name(unsigned state)
{
    static const char *const names[] = {"free",       "starting", "idle",  "claiming",
                                        "publishing", "stopping", "exited"};

    return state < sizeof(names) / sizeof(names[0]) ? names[state] : "unknown";
}

/* ---- layout check, shared by attach and open_ro ---- */

/* 0 if the first maplen bytes (file size st_size) are a region this binary
 * can use; else -1 with err. */
static int
check_layout(const outbox_stats_header_t *h, size_t maplen, off_t st_size, const char *name,
             char *err, size_t errlen)
{
    uint64_t magic;

    if (maplen < offsetof(outbox_stats_header_t, total_size)) {
        snprintf(err, errlen,
                 "stats region %s is too small (%lld bytes): not an outbox stats region, or "
                 "still being created",
                 name, (long long)st_size);
        return -1;
    }
    magic = atomic_load_explicit(&h->magic, ACQ);
    if (magic == 0) {
        snprintf(err, errlen,
                 "stats region %s is not initialised (being created, or its supervisor shut "
                 "down)",
                 name);
        return -1;
    }
    if (magic != OUTBOX_STATS_MAGIC) {
        snprintf(err, errlen, "stats region %s: bad magic 0x%016llx: not an outbox stats region",
                 name, (unsigned long long)magic);
        return -1;
    }
    if (h->version != OUTBOX_STATS_VERSION) {
        snprintf(err, errlen,
                 "stats region %s: layout version %u differs from this binary's %u (restart "
                 "the supervisor to upgrade the layout)",
                 name, h->version, OUTBOX_STATS_VERSION);
        return -1;
    }
    if (maplen < sizeof(outbox_stats_region_t) || h->header_size != sizeof(outbox_stats_header_t) ||
        h->slot_size != sizeof(outbox_stats_slot_t) || h->nslots != OUTBOX_STATS_SLOTS ||
        h->nbuckets != OUTBOX_STATS_HIST_BUCKETS || h->ncounters > OUTBOX_STATS_MAX_COUNTERS ||
        h->total_size != sizeof(outbox_stats_region_t) || (uint64_t)st_size != h->total_size) {
        snprintf(err, errlen,
                 "stats region %s: layout version %u but sizes differ from this binary's "
                 "(size %lld, header %u, slot %u x %u; expected %zu, %zu, %zu x %d)",
                 name, h->version, (long long)st_size, h->header_size, h->slot_size, h->nslots,
                 sizeof(outbox_stats_region_t), sizeof(outbox_stats_header_t),
                 sizeof(outbox_stats_slot_t), OUTBOX_STATS_SLOTS);
        return -1;
    }
    return 0;
}

/* shm_open + fstat + mmap + layout check. *why: errno-like reason. */
static int
map_region(void **out, const char *instance, bool rw, int *why, char *err, size_t errlen)
{
    char name[OUTBOX_STATS_NAME_MAX + 16];
    struct stat st;
    void *p = MAP_FAILED;
    size_t maplen = 0;
    int fd = -1, rc = -1;

    if (outbox_stats_shm_name(instance, name, sizeof(name)) < 0) {
        bad_name(instance, err, errlen);
        *why = EINVAL;
        return -1;
    }
    fd = shm_open(name, rw ? O_RDWR : O_RDONLY, 0);
    if (fd < 0) {
        *why = errno;
        if (errno == ENOENT) {
            snprintf(err, errlen, "no outboxd instance \"%s\" is running (no shared memory %s)",
                     instance, name);
        } else if (errno == EACCES) {
            snprintf(err, errlen,
                     "permission denied on %s (run as the daemon's user or a member of its "
                     "stats group)",
                     name);
        } else {
            snprintf(err, errlen, "shm_open(\"%s\") failed: %s", name, strerror(errno));
        }
        goto done;
    }
    if (fstat(fd, &st) < 0) {
        *why = errno;
        snprintf(err, errlen, "fstat(\"%s\") failed: %s", name, strerror(errno));
        goto done;
    }
    /* never map past the end of the object: touching that page is SIGBUS */
    maplen = (size_t)st.st_size < sizeof(outbox_stats_region_t) ? (size_t)st.st_size
                                                                : sizeof(outbox_stats_region_t);
    if (maplen < sizeof(uint64_t) * 2) {
        *why = EPROTO;
        check_layout(NULL, 0, st.st_size, name, err, errlen);
        goto done;
    }
    p = mmap(NULL, maplen, rw ? PROT_READ | PROT_WRITE : PROT_READ, MAP_SHARED, fd, 0);
    if (p == MAP_FAILED) {
        *why = errno;
        snprintf(err, errlen, "mmap(\"%s\") failed: %s", name, strerror(errno));
        goto done;
    }
    if (check_layout(p, maplen, st.st_size, name, err, errlen) < 0) {
        *why = EPROTO;
        goto done;
    }
    *out = p;
    p = MAP_FAILED;
    rc = 0;
done:
    if (p != MAP_FAILED) {
        munmap(p, maplen);
    }
    if (fd >= 0) {
        close(fd);
    }
    return rc;
}

/* ---- supervisor side ---- */

/* Generation of a stale region (0 unless it is a valid one of this layout);
 * its magic is zeroed so that readers still mapping it re-attach. */
static uint64_t
retire_stale(const char *name)
{
    struct stat st;
    outbox_stats_region_t *old;
    uint64_t gen = 0;
    int fd;

    fd = shm_open(name, O_RDWR, 0);
    if (fd < 0) {
        return 0;
    }
    if (fstat(fd, &st) == 0 && (uint64_t)st.st_size >= sizeof(outbox_stats_region_t)) {
        old = mmap(NULL, sizeof(*old), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
        if (old != MAP_FAILED) {
            if (atomic_load_explicit(&old->hdr.magic, ACQ) == OUTBOX_STATS_MAGIC &&
                old->hdr.version == OUTBOX_STATS_VERSION &&
                old->hdr.header_size == sizeof(outbox_stats_header_t) &&
                old->hdr.total_size == sizeof(outbox_stats_region_t)) {
                gen = old->hdr.generation;
                atomic_store_explicit(&old->hdr.magic, 0, REL);
            }
            munmap(old, sizeof(*old));
        }
    }
    close(fd);
    return gen;
}

int
outbox_stats_create(outbox_stats_region_t **out, const char *instance, int mode, gid_t gid,
                    char *err, size_t errlen)
{
    char name[OUTBOX_STATS_NAME_MAX + 16];
    outbox_stats_region_t *r = MAP_FAILED;
    outbox_stats_header_t *h;
    uint64_t gen = 0;
    int fd = -1, tries, rc = -1, created = 0, i;

    if (outbox_stats_shm_name(instance, name, sizeof(name)) < 0) {
        bad_name(instance, err, errlen);
        return -1;
    }
    mode &= 0777;
    for (tries = 0; tries < 3; tries++) {
        fd = shm_open(name, O_CREAT | O_EXCL | O_RDWR, (mode_t)mode);
        if (fd >= 0 || errno != EEXIST) {
            break;
        }
        /* left by a supervisor that was killed: we hold the instance lock */
        gen = retire_stale(name);
        if (shm_unlink(name) < 0 && errno != ENOENT) {
            snprintf(err, errlen, "shm_unlink(\"%s\") of a stale region failed: %s", name,
                     strerror(errno));
            return -1;
        }
    }
    if (fd < 0) {
        snprintf(err, errlen, "shm_open(\"%s\", O_CREAT|O_EXCL) failed: %s", name, strerror(errno));
        return -1;
    }
    created = 1;
    if (fchmod(fd, (mode_t)mode) < 0) { /* the umask applied to shm_open */
        snprintf(err, errlen, "fchmod(\"%s\", %04o) failed: %s", name, (unsigned)mode,
                 strerror(errno));
        goto done;
    }
    if (gid != (gid_t)-1 && fchown(fd, (uid_t)-1, gid) < 0) {
        snprintf(err, errlen, "fchown(\"%s\", group %ld) failed: %s", name, (long)gid,
                 strerror(errno));
        goto done;
    }
    if (ftruncate(fd, (off_t)sizeof(outbox_stats_region_t)) < 0) {
        snprintf(err, errlen, "ftruncate(\"%s\", %zu) failed: %s", name,
                 sizeof(outbox_stats_region_t), strerror(errno));
        goto done;
    }
    r = mmap(NULL, sizeof(*r), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (r == MAP_FAILED) {
        snprintf(err, errlen, "mmap(\"%s\") failed: %s", name, strerror(errno));
        goto done;
    }
    /* a new object is zero-filled: every slot FREE, every seq even */
    h = &r->hdr;
    h->version = OUTBOX_STATS_VERSION;
    h->header_size = sizeof(outbox_stats_header_t);
    h->total_size = sizeof(outbox_stats_region_t);
    h->slot_size = sizeof(outbox_stats_slot_t);
    h->nslots = OUTBOX_STATS_SLOTS;
    h->ncounters = OUTBOX_STATS_NCOUNTERS;
    h->nbuckets = OUTBOX_STATS_HIST_BUCKETS;
    h->supervisor_pid = getpid();
    h->start_us = now_us();
    h->generation = gen + 1;
    snprintf(h->instance, sizeof(h->instance), "%s", instance);
    for (i = 0; i < OUTBOX_STATS_NCOUNTERS; i++) {
        memcpy(h->counter_names[i], counter_names[i], OUTBOX_STATS_CNAME_MAX);
    }
    atomic_store_explicit(&h->sup_heartbeat_us, h->start_us, RLX);
    atomic_store_explicit(&h->magic, OUTBOX_STATS_MAGIC, REL);
    *out = r;
    r = MAP_FAILED;
    rc = 0;
done:
    if (r != MAP_FAILED) {
        munmap(r, sizeof(*r));
    }
    if (rc < 0 && created) {
        shm_unlink(name);
    }
    close(fd);
    return rc;
}

void
outbox_stats_destroy(outbox_stats_region_t *r, const char *instance)
{
    char name[OUTBOX_STATS_NAME_MAX + 16];

    if (r == NULL) {
        return;
    }
    atomic_store_explicit(&r->hdr.magic, 0, REL);
    munmap(r, sizeof(*r));
    if (outbox_stats_shm_name(instance, name, sizeof(name)) == 0) {
        shm_unlink(name);
    }
}

static void
clear_slot(outbox_stats_slot_t *s)
{
    int i;

    for (i = 0; i < OUTBOX_STATS_MAX_COUNTERS; i++) {
        atomic_store_explicit(&s->counters[i], 0, RLX);
    }
    for (i = 0; i < OUTBOX_STATS_HIST_BUCKETS; i++) {
        atomic_store_explicit(&s->hist[i], 0, RLX);
    }
    atomic_store_explicit(&s->pid, 0, RLX);
    atomic_store_explicit(&s->ready_us, 0, RLX);
    atomic_store_explicit(&s->last_batch_size, 0, RLX);
    atomic_store_explicit(&s->last_batch_us, 0, RLX);
    atomic_store_explicit(&s->release_acked, 0, RLX);
}

int
outbox_stats_slot_alloc(outbox_stats_region_t *r, int role, unsigned worker_no,
                        uint64_t incarnation, const char *lock_id)
{
    outbox_stats_slot_t *s;
    int64_t now = now_us();
    uint32_t q;
    int i;

    for (i = 0; i < OUTBOX_STATS_SLOTS; i++) {
        if (atomic_load_explicit(&r->slots[i].state, RLX) == OUTBOX_WS_FREE) {
            break;
        }
    }
    if (i == OUTBOX_STATS_SLOTS) {
        return -1;
    }
    s = &r->slots[i];
    q = write_begin(&s->seq);
    clear_slot(s);
    atomic_store_explicit(&s->role, (uint32_t)role, RLX);
    atomic_store_explicit(&s->worker_no, worker_no, RLX);
    atomic_store_explicit(&s->incarnation, incarnation, RLX);
    atomic_store_explicit(&s->started_us, now, RLX);
    atomic_store_explicit(&s->heartbeat_us, now, RLX);
    atomic_store_explicit(&s->heartbeat_mono_us, outbox_stats_mono_us(), RLX);
    /* plain bytes, like every seqlock payload that is not a word */
    memset(s->lock_id, 0, sizeof(s->lock_id));
    if (lock_id != NULL) {
        strncpy(s->lock_id, lock_id, sizeof(s->lock_id) - 1);
    }
    atomic_store_explicit(&s->state, OUTBOX_WS_STARTING, RLX);
    write_end(&s->seq, q);
    return i;
}

void
outbox_stats_slot_set_pid(outbox_stats_region_t *r, int slot, pid_t pid)
{
    outbox_stats_slot_t *s;
    uint32_t q;

    if (slot < 0 || slot >= OUTBOX_STATS_SLOTS) {
        return;
    }
    s = &r->slots[slot];
    q = write_begin(&s->seq);
    atomic_store_explicit(&s->pid, pid, RLX);
    write_end(&s->seq, q);
}

void
outbox_stats_slot_retire(outbox_stats_region_t *r, int slot)
{
    outbox_stats_header_t *h = &r->hdr;
    outbox_stats_slot_t *s;
    uint32_t hq, q;
    int i;

    if (slot < 0 || slot >= OUTBOX_STATS_SLOTS) {
        return;
    }
    s = &r->slots[slot];
    if (atomic_load_explicit(&s->state, RLX) == OUTBOX_WS_FREE) {
        return; /* retired already: folding twice would count twice */
    }
    hq = write_begin(&h->seq);
    for (i = 0; i < OUTBOX_STATS_MAX_COUNTERS; i++) {
        atomic_fetch_add_explicit(&h->retired[i], atomic_load_explicit(&s->counters[i], RLX), RLX);
    }
    for (i = 0; i < OUTBOX_STATS_HIST_BUCKETS; i++) {
        atomic_fetch_add_explicit(&h->retired_hist[i], atomic_load_explicit(&s->hist[i], RLX), RLX);
    }
    q = write_begin(&s->seq);
    clear_slot(s);
    atomic_store_explicit(&s->state, OUTBOX_WS_FREE, RLX);
    write_end(&s->seq, q);
    write_end(&h->seq, hq);
}

/* ---- worker side ---- */

int
outbox_stats_attach(outbox_stats_region_t **out, const char *instance, char *err, size_t errlen)
{
    void *p;
    int why;

    if (map_region(&p, instance, true, &why, err, errlen) < 0) {
        return -1;
    }
    *out = p;
    return 0;
}

void
outbox_stats_detach(outbox_stats_region_t *r)
{
    if (r != NULL) {
        munmap(r, sizeof(*r));
    }
}

void
outbox_stats_set_state(outbox_stats_slot_t *s, unsigned state)
{
    uint32_t q = write_begin(&s->seq);

    atomic_store_explicit(&s->state, state, RLX);
    atomic_store_explicit(&s->heartbeat_us, now_us(), RLX);
    atomic_store_explicit(&s->heartbeat_mono_us, outbox_stats_mono_us(), RLX);
    write_end(&s->seq, q);
}

void
outbox_stats_heartbeat(outbox_stats_slot_t *s)
{
    uint32_t q = write_begin(&s->seq);

    atomic_store_explicit(&s->heartbeat_us, now_us(), RLX);

    atomic_store_explicit(&s->heartbeat_mono_us, outbox_stats_mono_us(), RLX);
    write_end(&s->seq, q);
}

void
outbox_stats_set_ready(outbox_stats_slot_t *s)
{
    int64_t now = now_us();
    uint32_t q = write_begin(&s->seq);

    atomic_store_explicit(&s->ready_us, now, RLX);
    atomic_store_explicit(&s->heartbeat_us, now, RLX);
    atomic_store_explicit(&s->heartbeat_mono_us, outbox_stats_mono_us(), RLX);
    write_end(&s->seq, q);
}

void
outbox_stats_set_counters(outbox_stats_slot_t *s, const uint64_t v[OUTBOX_STATS_NCOUNTERS])
{
    uint32_t q = write_begin(&s->seq);
    int i;

    for (i = 0; i < OUTBOX_STATS_NCOUNTERS; i++) {
        atomic_store_explicit(&s->counters[i], v[i], RLX);
    }
    write_end(&s->seq, q);
}

void
outbox_stats_add(outbox_stats_slot_t *s, unsigned counter, uint64_t n)
{
    if (counter < OUTBOX_STATS_NCOUNTERS) {
        atomic_fetch_add_explicit(&s->counters[counter], n, RLX);
    }
}

void
outbox_stats_batch(outbox_stats_slot_t *s, uint64_t size, uint64_t latency_us)
{
    _Atomic uint64_t *b = &s->hist[outbox_stats_hist_bucket(latency_us)];
    uint32_t q = write_begin(&s->seq);

    atomic_store_explicit(&s->last_batch_size, size, RLX);
    atomic_store_explicit(&s->last_batch_us, latency_us, RLX);
    atomic_store_explicit(b, atomic_load_explicit(b, RLX) + 1, RLX); /* one writer */
    write_end(&s->seq, q);
}

/* ---- reader side ---- */

int
outbox_stats_open_ro(const outbox_stats_region_t **out, const char *instance, int *why, char *err,
                     size_t errlen)
{
    void *p;
    int w = 0;

    if (map_region(&p, instance, false, &w, err, errlen) < 0) {
        if (why != NULL) {
            *why = w;
        }
        return -1;
    }
    *out = p;
    return 0;
}

void
outbox_stats_close_ro(const outbox_stats_region_t *r)
{
    if (r != NULL) {
        munmap((void *)r, sizeof(*r));
    }
}

/* One slot under its seq. 0 (out->state FREE: skip it), -1 out of tries. */
static int
read_slot(const outbox_stats_slot_t *s, outbox_stats_slot_snap_t *o, unsigned nc, int *tries)
{
    uint32_t q;
    unsigned i;

    while ((*tries)-- > 0) {
        q = atomic_load_explicit(&s->seq, ACQ);
        if (q & 1) {
            sched_yield();
            continue;
        }
        o->state = atomic_load_explicit(&s->state, RLX);
        if (o->state != OUTBOX_WS_FREE) {
            o->role = atomic_load_explicit(&s->role, RLX);
            o->worker_no = atomic_load_explicit(&s->worker_no, RLX);
            o->pid = atomic_load_explicit(&s->pid, RLX);
            o->incarnation = atomic_load_explicit(&s->incarnation, RLX);
            o->started_us = atomic_load_explicit(&s->started_us, RLX);
            o->ready_us = atomic_load_explicit(&s->ready_us, RLX);
            o->heartbeat_us = atomic_load_explicit(&s->heartbeat_us, RLX);
            o->heartbeat_mono_us = atomic_load_explicit(&s->heartbeat_mono_us, RLX);
            o->last_batch_size = atomic_load_explicit(&s->last_batch_size, RLX);
            o->last_batch_us = atomic_load_explicit(&s->last_batch_us, RLX);
            memcpy(o->lock_id, s->lock_id, sizeof(o->lock_id));
            for (i = 0; i < nc; i++) {
                o->counters[i] = atomic_load_explicit(&s->counters[i], RLX);
            }
            for (i = 0; i < OUTBOX_STATS_HIST_BUCKETS; i++) {
                o->hist[i] = atomic_load_explicit(&s->hist[i], RLX);
            }
        }
        atomic_thread_fence(ACQ);
        if (atomic_load_explicit(&s->seq, RLX) == q) {
            o->lock_id[sizeof(o->lock_id) - 1] = '\0';
            return 0;
        }
    }
    return -1;
}

int
outbox_stats_snapshot(const outbox_stats_region_t *r, outbox_stats_snapshot_t *out)
{
    const outbox_stats_header_t *h = &r->hdr;
    int tries = SNAP_TRIES, i;
    unsigned nc, c, b, n;
    uint32_t hq;

    memset(out, 0, sizeof(*out));
    while (tries-- > 0) {
        if (atomic_load_explicit(&h->magic, ACQ) != OUTBOX_STATS_MAGIC) {
            return -1;
        }
        hq = atomic_load_explicit(&h->seq, ACQ);
        if (hq & 1) {
            sched_yield();
            continue;
        }
        /* identity fields are constant once magic is set */
        out->taken_us = now_us();
        out->supervisor_pid = h->supervisor_pid;
        out->start_us = h->start_us;
        out->generation = h->generation;
        memcpy(out->instance, h->instance, sizeof(out->instance));
        out->instance[sizeof(out->instance) - 1] = '\0';
        nc = h->ncounters <= OUTBOX_STATS_MAX_COUNTERS ? h->ncounters : OUTBOX_STATS_MAX_COUNTERS;
        out->ncounters = nc;
        for (c = 0; c < nc; c++) {
            memcpy(out->counter_names[c], h->counter_names[c], OUTBOX_STATS_CNAME_MAX);
            out->counter_names[c][OUTBOX_STATS_CNAME_MAX - 1] = '\0';
        }
        out->sup_state = atomic_load_explicit(&h->sup_state, RLX);
        out->target_workers = atomic_load_explicit(&h->target_workers, RLX);
        out->live_workers = atomic_load_explicit(&h->live_workers, RLX);
        out->sup_heartbeat_us = atomic_load_explicit(&h->sup_heartbeat_us, RLX);
        out->spawns = atomic_load_explicit(&h->sup.spawns, RLX);
        out->crashes = atomic_load_explicit(&h->sup.crashes, RLX);
        out->restarts = atomic_load_explicit(&h->sup.restarts, RLX);
        out->reloads = atomic_load_explicit(&h->sup.reloads, RLX);
        out->reload_errors = atomic_load_explicit(&h->sup.reload_errors, RLX);
        out->heartbeat_kills = atomic_load_explicit(&h->sup.heartbeat_kills, RLX);
        for (c = 0; c < nc; c++) {
            out->retired[c] = atomic_load_explicit(&h->retired[c], RLX);
        }
        for (b = 0; b < OUTBOX_STATS_HIST_BUCKETS; b++) {
            out->retired_hist[b] = atomic_load_explicit(&h->retired_hist[b], RLX);
        }
        n = 0;
        for (i = 0; i < OUTBOX_STATS_SLOTS; i++) {
            if (read_slot(&r->slots[i], &out->slot[n], nc, &tries) < 0) {
                return -1;
            }
            if (out->slot[n].state != OUTBOX_WS_FREE) {
                out->slot_index[n++] = i;
            }
        }
        out->nslots = n;
        atomic_thread_fence(ACQ);
        if (atomic_load_explicit(&h->seq, RLX) != hq) {
            continue; /* a slot was folded meanwhile: it may be counted twice or not at all */
        }
        for (c = 0; c < nc; c++) {
            out->total[c] = out->retired[c];
            for (i = 0; i < (int)n; i++) {
                out->total[c] += out->slot[i].counters[c];
            }
        }
        for (b = 0; b < OUTBOX_STATS_HIST_BUCKETS; b++) {
            out->total_hist[b] = out->retired_hist[b];
            for (i = 0; i < (int)n; i++) {
                out->total_hist[b] += out->slot[i].hist[b];
            }
        }
        return 0;
    }
    return -1;
}

bool
outbox_stats_supervisor_alive(const outbox_stats_region_t *r)
{
    pid_t pid = (pid_t)r->hdr.supervisor_pid;

    if (pid <= 0) {
        return false;
    }
    return kill(pid, 0) == 0 || errno == EPERM;
}
