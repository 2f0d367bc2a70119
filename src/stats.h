/*
 * The stats region: POSIX shared memory "/outbox-<instance>" written by the
 * supervisor (header block) and by each worker (its own slot), read live by
 * outboxstat. Every block has exactly one writer and writers never lock:
 * counters are relaxed 64-bit atomics, multi-field status sits behind a
 * sequence counter (odd while writing) that readers retry on. This module
 * depends on libc only, so tools/outboxstat links nothing else.
 */
#ifndef OUTBOX_STATS_H
#define OUTBOX_STATS_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#define OUTBOX_STATS_MAGIC 0x5453584f4254554fULL /* "OUTBOXST" little-endian */
#define OUTBOX_STATS_VERSION 2u                  /* any layout change bumps it */
#define OUTBOX_STATS_MAX_WORKERS 64
/* A rolling restart runs old and new side by side, plus the housekeeper
 * and its replacement: old and new never share a slot. */
#define OUTBOX_STATS_SLOTS (2 * OUTBOX_STATS_MAX_WORKERS + 2)
#define OUTBOX_STATS_NAME_MAX 64   /* instance name */
#define OUTBOX_STATS_LOCKID_MAX 96 /* lock id incl. NUL */
#define OUTBOX_STATS_CNAME_MAX 32  /* counter name incl. NUL */
/* Room for counters in the layout: appending one to stats_counters.def
 * keeps the layout (and its version) while it fits, so an older outboxstat
 * reads the new counter's name and value from the region. */
#define OUTBOX_STATS_MAX_COUNTERS 32

enum {
#define OUTBOX_COUNTER(sym, name, help) OUTBOX_STAT_##sym,
#include "stats_counters.def"
#undef OUTBOX_COUNTER
    OUTBOX_STATS_NCOUNTERS
};
_Static_assert(OUTBOX_STATS_NCOUNTERS <= OUTBOX_STATS_MAX_COUNTERS,
               "more counters than the layout has room for: grow it and bump the version");

/*
 * Latency histogram: log scale, two buckets per power of two of
 * microseconds. Bucket 0 holds [0, 1) us; bucket b >= 1 holds
 * [lo(b), lo(b+1)) with lo(1) = 1, lo(2) = 1.5, lo(3) = 2, lo(4) = 3,
 * lo(5) = 4, lo(6) = 6 ... (1 and 1.5 times each power of two); the last
 * bucket is open-ended (>= 2^27 us, ~134 s). 1 ms, 3 ms and 10 ms fall
 * into different buckets.
 */
#define OUTBOX_STATS_HIST_BUCKETS 56
unsigned outbox_stats_hist_bucket(uint64_t us); /* bucket of a latency */
uint64_t outbox_stats_hist_lower(unsigned b);   /* lower bound of b, us */

typedef enum outbox_worker_state {
    OUTBOX_WS_FREE = 0, /* slot unused */
    OUTBOX_WS_STARTING, /* forked, connecting */
    OUTBOX_WS_IDLE,     /* ready, waiting for work */
    OUTBOX_WS_CLAIMING,
    OUTBOX_WS_PUBLISHING,
    OUTBOX_WS_STOPPING,
    OUTBOX_WS_EXITED /* reaped; counters folded into the header's retired totals */
} outbox_worker_state_t;
const char *outbox_worker_state_name(unsigned state);

typedef enum outbox_worker_role {
    OUTBOX_ROLE_RELAY = 0, /* claims, publishes, marks */
    OUTBOX_ROLE_KEEPER = 1 /* lock check, retention, locks of dead workers */
} outbox_worker_role_t;

/* One worker's block: written only by that worker (and by the supervisor
 * once, after reaping it, to fold and free it). 128-byte aligned. */
typedef struct outbox_stats_slot {
    _Atomic uint32_t seq;       /* odd while the status fields are being written */
    _Atomic uint32_t state;     /* outbox_worker_state_t */
    _Atomic uint32_t role;      /* outbox_worker_role_t */
    _Atomic uint32_t worker_no; /* logical worker number (lock id's slot) */
    _Atomic int64_t pid;
    _Atomic uint64_t incarnation;
    _Atomic int64_t started_us;        /* CLOCK_REALTIME, us */
    _Atomic int64_t ready_us;          /* 0 until connected + one claim pass */
    _Atomic int64_t heartbeat_us;      /* CLOCK_REALTIME, us; main loop only */
    _Atomic int64_t heartbeat_mono_us; /* CLOCK_MONOTONIC: what hang detection compares,
                                        * immune to clock steps */
    _Atomic uint64_t last_batch_size;
    _Atomic uint64_t last_batch_us; /* claim -> marks written */
    _Atomic uint64_t release_acked; /* keeper: last lock-release request done */
    _Atomic int64_t inflight_lo;    /* relay: seq range of the batch being published, */
    _Atomic int64_t inflight_hi;    /* 0 between batches (read after a crash) */
    char lock_id[OUTBOX_STATS_LOCKID_MAX];
    _Atomic uint64_t counters[OUTBOX_STATS_MAX_COUNTERS];
    _Atomic uint64_t hist[OUTBOX_STATS_HIST_BUCKETS]; /* batch latency */
} __attribute__((aligned(128))) outbox_stats_slot_t;

/* Supervisor counters (header block). */
typedef struct outbox_stats_sup {
    _Atomic uint64_t spawns;
    _Atomic uint64_t crashes;  /* worker exits other than a requested stop */
    _Atomic uint64_t restarts; /* rolling restarts completed */
    _Atomic uint64_t reloads;  /* configurations applied by SIGHUP */
    _Atomic uint64_t reload_errors;
    _Atomic uint64_t heartbeat_kills; /* hung workers killed */
} outbox_stats_sup_t;

typedef struct outbox_stats_header {
    _Atomic uint64_t magic; /* written last at creation, zeroed first at shutdown */
    uint32_t version;
    uint32_t header_size; /* sizeof(outbox_stats_header_t) */
    uint64_t total_size;
    uint32_t slot_size; /* sizeof(outbox_stats_slot_t) */
    uint32_t nslots;
    uint32_t ncounters; /* used entries of counter_names/counters/retired */
    uint32_t nbuckets;
    int64_t supervisor_pid;
    int64_t start_us;    /* CLOCK_REALTIME at creation */
    uint64_t generation; /* bumped at every creation of this instance's region */
    char instance[OUTBOX_STATS_NAME_MAX];
    char counter_names[OUTBOX_STATS_MAX_COUNTERS][OUTBOX_STATS_CNAME_MAX];
    /* supervisor-written, live: */
    _Atomic uint32_t seq;       /* odd while retired totals / slots are folded */
    _Atomic uint32_t sup_state; /* 0 running, 1 reloading, 2 rolling, 3 stopping */
    _Atomic uint32_t target_workers;
    _Atomic uint32_t live_workers;
    _Atomic int64_t sup_heartbeat_us;
    outbox_stats_sup_t sup;
    /* counters and histogram of every reaped worker, so totals survive deaths */
    _Atomic uint64_t retired[OUTBOX_STATS_MAX_COUNTERS];
    _Atomic uint64_t retired_hist[OUTBOX_STATS_HIST_BUCKETS];
} __attribute__((aligned(128))) outbox_stats_header_t;

typedef struct outbox_stats_region {
    outbox_stats_header_t hdr;
    outbox_stats_slot_t slots[OUTBOX_STATS_SLOTS];
} outbox_stats_region_t;

/* "/outbox-<instance>" into buf. -1 if the instance name is empty, too
 * long, or not [A-Za-z0-9._-]. */
int outbox_stats_shm_name(const char *instance, char *buf, size_t len);

/* ---- supervisor side ---- */

/*
 * Create the region for instance (the caller holds the instance lock, so an
 * existing region is stale and is replaced; its generation + 1 is used).
 * mode 0600, or 0640 with group gid ((gid_t)-1: none; gid_t is unsigned),
 * set exactly whatever the umask. Writes magic last.
 * 0, or -1 with one line in err (errno text, the shm name).
 */
int outbox_stats_create(outbox_stats_region_t **out, const char *instance, int mode, gid_t gid,
                        char *err, size_t errlen);
/* Zero the magic, unmap and unlink (clean shutdown). NULL ok. */
void outbox_stats_destroy(outbox_stats_region_t *r, const char *instance);

/* A free slot for a new process (state FREE), -1 if none. The supervisor
 * marks it STARTING with pid/role/worker_no/incarnation/lock_id before the
 * child runs. */
int outbox_stats_slot_alloc(outbox_stats_region_t *r, int role, unsigned worker_no,
                            uint64_t incarnation, const char *lock_id);
void outbox_stats_slot_set_pid(outbox_stats_region_t *r, int slot, pid_t pid);
/* After reaping: add the slot's counters and histogram to the retired
 * totals and free it, under the header seq so readers never count twice. */
void outbox_stats_slot_retire(outbox_stats_region_t *r, int slot);

/* ---- worker side ---- */

/* Map the instance's region read-write and check magic, version and size.
 * 0, or -1 with a one-line reason ("stats region /outbox-x: layout version
 * 2 differs from this binary's 1 (restart the supervisor ...)"). */
int outbox_stats_attach(outbox_stats_region_t **out, const char *instance, char *err,
                        size_t errlen);
void outbox_stats_detach(outbox_stats_region_t *r); /* NULL ok */

/* Single-writer updates of one slot (no lock; readers retry on seq). */
void outbox_stats_set_state(outbox_stats_slot_t *s, unsigned state);
void outbox_stats_heartbeat(outbox_stats_slot_t *s);
void outbox_stats_set_ready(outbox_stats_slot_t *s);
/* Store absolute counter values (a worker's own monotonic totals). */
void outbox_stats_set_counters(outbox_stats_slot_t *s, const uint64_t v[OUTBOX_STATS_NCOUNTERS]);
void outbox_stats_add(outbox_stats_slot_t *s, unsigned counter, uint64_t n);
/* One finished batch: size, latency (us) into last_* and the histogram. */
void outbox_stats_batch(outbox_stats_slot_t *s, uint64_t size, uint64_t latency_us);

/* ---- reader side (outboxstat) ---- */

typedef struct outbox_stats_slot_snap {
    unsigned state, role, worker_no;
    int64_t pid;
    uint64_t incarnation;
    int64_t started_us, ready_us, heartbeat_us, heartbeat_mono_us;
    uint64_t last_batch_size, last_batch_us;
    char lock_id[OUTBOX_STATS_LOCKID_MAX];
    uint64_t counters[OUTBOX_STATS_MAX_COUNTERS]; /* ncounters used */
    uint64_t hist[OUTBOX_STATS_HIST_BUCKETS];
} outbox_stats_slot_snap_t;

typedef struct outbox_stats_snapshot {
    int64_t taken_us;
    int64_t supervisor_pid, start_us;
    uint64_t generation;
    char instance[OUTBOX_STATS_NAME_MAX];
    unsigned sup_state, target_workers, live_workers;
    int64_t sup_heartbeat_us;
    uint64_t spawns, crashes, restarts, reloads, reload_errors, heartbeat_kills;
    unsigned ncounters;
    char counter_names[OUTBOX_STATS_MAX_COUNTERS][OUTBOX_STATS_CNAME_MAX];
    uint64_t retired[OUTBOX_STATS_MAX_COUNTERS];
    uint64_t retired_hist[OUTBOX_STATS_HIST_BUCKETS];
    unsigned nslots;                                   /* used entries of slot[] */
    int slot_index[OUTBOX_STATS_SLOTS];                /* region slot of slot[i] */
    outbox_stats_slot_snap_t slot[OUTBOX_STATS_SLOTS]; /* non-FREE slots only */
    uint64_t total[OUTBOX_STATS_MAX_COUNTERS];         /* retired + live slots */
    uint64_t total_hist[OUTBOX_STATS_HIST_BUCKETS];
} outbox_stats_snapshot_t;

/* Map read-only. 0; or -1 with a one-line reason and *why set:
 * ENOENT no such instance running, EACCES permission denied, EPROTO layout
 * version or size differs (or magic not yet written). */
int outbox_stats_open_ro(const outbox_stats_region_t **out, const char *instance, int *why,
                         char *err, size_t errlen);
void outbox_stats_close_ro(const outbox_stats_region_t *r);
/* A consistent snapshot (retries on seq); 0, or -1 if the region was shut
 * down (magic zeroed) or kept changing. */
int outbox_stats_snapshot(const outbox_stats_region_t *r, outbox_stats_snapshot_t *out);
/* CLOCK_MONOTONIC in us, the clock of heartbeat_mono_us. */
int64_t outbox_stats_mono_us(void);

/* Is the region's supervisor alive? (kill(pid, 0); EPERM counts as alive) */
bool outbox_stats_supervisor_alive(const outbox_stats_region_t *r);

/* Quantile q (0..1) of a histogram, in us: the upper bound of its bucket
 * (lower bound of the next, rounded down; the open-ended last bucket gives
 * its lower bound); 0 if empty. */
uint64_t outbox_stats_hist_quantile(const uint64_t h[OUTBOX_STATS_HIST_BUCKETS], double q);

#endif
