/*
 * Stats region: layout, create/replace/destroy, modes, version and size
 * checks, histogram, slot totals, and readers racing real writer processes
 * (torn status fields, retire counted twice). Every test uses its own
 * instance name "test-<pid>-<n>"; the group teardown unlinks them all.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <time.h>
#include <unistd.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <cmocka.h>

#include "stats.h"

#define MAX_NAMES 64

static char names[MAX_NAMES][OUTBOX_STATS_NAME_MAX];
static int nnames;

static const char *const def_names[] = {
#define OUTBOX_COUNTER(sym, name, help) name,
#include "stats_counters.def"
#undef OUTBOX_COUNTER
};

/* A fresh instance name, unlinked by the group teardown. */
static const char *
new_instance(void)
{
    assert_true(nnames < MAX_NAMES);
    snprintf(names[nnames], sizeof(names[nnames]), "test-%ld-%d", (long)getpid(), nnames);
    return names[nnames++];
}

static int
unlink_all(void **state)
{
    char shm[OUTBOX_STATS_NAME_MAX + 16];
    int i;
    (void)state;

    for (i = 0; i < nnames; i++) {
        if (outbox_stats_shm_name(names[i], shm, sizeof(shm)) == 0) {
            shm_unlink(shm);
        }
    }
    return 0;
}

static int64_t
now_us(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static outbox_stats_region_t *
create_ok(const char *inst, int mode, gid_t gid)
{
    outbox_stats_region_t *r = NULL;
    char err[512] = "";

    if (outbox_stats_create(&r, inst, mode, gid, err, sizeof(err)) != 0) {
        fail_msg("create %s: %s", inst, err);
    }
    assert_non_null(r);
    return r;
}

static outbox_stats_snapshot_t *
snap_alloc(void)
{
    outbox_stats_snapshot_t *s = calloc(1, sizeof(*s));

    assert_non_null(s);
    return s;
}

static void
test_layout(void **state)
{
    const char *inst = new_instance();
    outbox_stats_region_t *r;
    int i;
    (void)state;

    assert_int_equal(sizeof(outbox_stats_slot_t) % 128, 0);
    assert_int_equal(sizeof(outbox_stats_header_t) % 128, 0);
    assert_int_equal(offsetof(outbox_stats_region_t, slots) % 128, 0);
    assert_int_equal(offsetof(outbox_stats_region_t, slots), sizeof(outbox_stats_header_t));
    /* what every layout version must keep, so a reader can name the version */
    assert_int_equal(offsetof(outbox_stats_header_t, magic), 0);
    assert_int_equal(offsetof(outbox_stats_header_t, version), 8);
    assert_int_equal(offsetof(outbox_stats_header_t, header_size), 12);
    assert_int_equal(offsetof(outbox_stats_header_t, total_size), 16);
    assert_true(OUTBOX_STATS_NCOUNTERS <= OUTBOX_STATS_MAX_COUNTERS);

    r = create_ok(inst, 0600, (gid_t)-1);
    for (i = 0; i < OUTBOX_STATS_SLOTS; i++) {
        assert_int_equal((uintptr_t)&r->slots[i] % 128, 0);
    }
    assert_int_equal(r->hdr.version, OUTBOX_STATS_VERSION);
    assert_int_equal(r->hdr.header_size, sizeof(outbox_stats_header_t));
    assert_int_equal(r->hdr.slot_size, sizeof(outbox_stats_slot_t));
    assert_int_equal(r->hdr.total_size, sizeof(outbox_stats_region_t));
    assert_int_equal(r->hdr.nslots, OUTBOX_STATS_SLOTS);
    assert_int_equal(r->hdr.nbuckets, OUTBOX_STATS_HIST_BUCKETS);
    assert_int_equal(r->hdr.ncounters, OUTBOX_STATS_NCOUNTERS);
    outbox_stats_destroy(r, inst);
}

static void
test_shm_name(void **state)
{
    static const struct {
        const char *in, *out;
    } cases[] = {
        {"default", "/outbox-default"},
        {"a.b_c-9", "/outbox-a.b_c-9"},
        {"", NULL},
        {"a/b", NULL},
        {"a b", NULL},
        {"x\n", NULL},
        {"0123456789012345678901234567890123456789012345678901234567890123", NULL},
    };
    char buf[128];
    size_t i;
    (void)state;

    for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        int rc = outbox_stats_shm_name(cases[i].in, buf, sizeof(buf));

        if (cases[i].out) {
            assert_int_equal(rc, 0);
            assert_string_equal(buf, cases[i].out);
        } else {
            assert_int_equal(rc, -1);
        }
    }
    assert_int_equal(outbox_stats_shm_name("default", buf, 8), -1); /* does not fit */
}

static void
test_create_open_snapshot(void **state)
{
    const char *inst = new_instance();
    const outbox_stats_region_t *ro = NULL;
    outbox_stats_snapshot_t *s = snap_alloc();
    outbox_stats_region_t *r;
    int64_t before = now_us(), after;
    char err[512];
    int why = 0;
    unsigned i;
    (void)state;

    r = create_ok(inst, 0600, (gid_t)-1);
    after = now_us();
    assert_int_equal(outbox_stats_open_ro(&ro, inst, &why, err, sizeof(err)), 0);
    atomic_store(&r->hdr.target_workers, 4);
    atomic_store(&r->hdr.sup.spawns, 5);
    assert_int_equal(outbox_stats_snapshot(ro, s), 0);
    assert_int_equal(s->supervisor_pid, getpid());
    assert_true(s->start_us >= before && s->start_us <= after);
    assert_int_equal(s->generation, 1);
    assert_string_equal(s->instance, inst);
    assert_int_equal(s->target_workers, 4);
    assert_int_equal(s->spawns, 5);
    assert_int_equal(s->sup_state, 0);
    assert_int_equal(s->nslots, 0);
    assert_true(s->taken_us >= s->start_us);
    assert_int_equal(s->ncounters, OUTBOX_STATS_NCOUNTERS);
    assert_int_equal(sizeof(def_names) / sizeof(def_names[0]), OUTBOX_STATS_NCOUNTERS);
    for (i = 0; i < s->ncounters; i++) {
        assert_string_equal(s->counter_names[i], def_names[i]);
        assert_int_equal(s->total[i], 0);
    }
    assert_true(outbox_stats_supervisor_alive(ro));
    outbox_stats_close_ro(ro);
    outbox_stats_destroy(r, inst);
    free(s);
}

/* A killed supervisor's region is replaced: generation + 1, and readers
 * still mapping the old one see it dead. */
static void
test_stale_region_replaced(void **state)
{
    const char *inst = new_instance();
    const outbox_stats_region_t *old_ro = NULL, *ro = NULL;
    outbox_stats_snapshot_t *s = snap_alloc();
    outbox_stats_region_t *r1, *r2, *r3;
    char shm[96], err[512];
    int why, fd;
    (void)state;

    r1 = create_ok(inst, 0600, (gid_t)-1);
    atomic_store(&r1->hdr.sup.spawns, 7);
    assert_int_equal(outbox_stats_open_ro(&old_ro, inst, &why, err, sizeof(err)), 0);

    r2 = create_ok(inst, 0600, (gid_t)-1); /* r1 left behind: stale */
    assert_int_equal(atomic_load(&r1->hdr.magic), 0);
    assert_int_equal(outbox_stats_snapshot(old_ro, s), -1);
    assert_int_equal(outbox_stats_open_ro(&ro, inst, &why, err, sizeof(err)), 0);
    assert_int_equal(outbox_stats_snapshot(ro, s), 0);
    assert_int_equal(s->generation, 2);
    assert_int_equal(s->spawns, 0);
    outbox_stats_close_ro(ro);

    r3 = create_ok(inst, 0600, (gid_t)-1);
    assert_int_equal(r3->hdr.generation, 3);
    assert_int_equal(atomic_load(&r2->hdr.magic), 0);
    outbox_stats_close_ro(old_ro);
    munmap(r1, sizeof(*r1));
    munmap(r2, sizeof(*r2));
    outbox_stats_destroy(r3, inst);

    /* something else under the name (too small, not ours): generation 1 */
    assert_int_equal(outbox_stats_shm_name(inst, shm, sizeof(shm)), 0);
    fd = shm_open(shm, O_CREAT | O_EXCL | O_RDWR, 0600);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, "garbage", 7), 7);
    close(fd);
    r1 = create_ok(inst, 0600, (gid_t)-1);
    assert_int_equal(r1->hdr.generation, 1);
    outbox_stats_destroy(r1, inst);
    free(s);
}

static void
stat_region(const char *inst, struct stat *st)
{
    char path[128];

    snprintf(path, sizeof(path), "/dev/shm/outbox-%s", inst);
    assert_int_equal(stat(path, st), 0);
}

static void
test_modes(void **state)
{
    const char *inst = new_instance();
    outbox_stats_region_t *r;
    struct stat st;
    mode_t old = umask(077); /* without fchmod 0640 would come out 0600 */
    gid_t gid = geteuid() == 0 ? 4242 : getegid();
    (void)state;

    r = create_ok(inst, 0600, (gid_t)-1);
    stat_region(inst, &st);
    assert_int_equal(st.st_mode & 07777, 0600);
    assert_int_equal(st.st_size, sizeof(outbox_stats_region_t));
    outbox_stats_destroy(r, inst);

    r = create_ok(inst, 0640, gid);
    stat_region(inst, &st);
    assert_int_equal(st.st_mode & 07777, 0640);
    assert_int_equal(st.st_gid, gid);
    outbox_stats_destroy(r, inst);
    umask(old);
}

/* As an unprivileged user: 0600 is refused with the right reason, 0640 with
 * the user's group is readable. Needs root to switch user. */
static int
child_open_as_nobody(const char *inst)
{
    const outbox_stats_region_t *ro = NULL;
    char err[512];
    int why = 0;
    pid_t pid = fork();
    int st;

    assert_true(pid >= 0);
    if (pid == 0) {
        if (setgid(65534) != 0 || setuid(65534) != 0) {
            _exit(3);
        }
        if (outbox_stats_open_ro(&ro, inst, &why, err, sizeof(err)) == 0) {
            _exit(0);
        }
        _exit(why == EACCES && strstr(err, "permission denied on /outbox-") ? 1 : 4);
    }
    assert_int_equal(waitpid(pid, &st, 0), pid);
    assert_true(WIFEXITED(st));
    return WEXITSTATUS(st);
}

static void
test_permission_denied(void **state)
{
    const char *inst = new_instance();
    outbox_stats_region_t *r;
    (void)state;

    if (geteuid() != 0) {
        skip();
    }
    r = create_ok(inst, 0600, (gid_t)-1);
    assert_int_equal(child_open_as_nobody(inst), 1);
    outbox_stats_destroy(r, inst);
    r = create_ok(inst, 0640, 65534);
    assert_int_equal(child_open_as_nobody(inst), 0);
    outbox_stats_destroy(r, inst);
}

/* A region written by hand, as another build of the daemon would. */
static outbox_stats_region_t *
fake_region(const char *inst, size_t size)
{
    outbox_stats_region_t *r;
    char shm[96];
    int fd;

    assert_int_equal(outbox_stats_shm_name(inst, shm, sizeof(shm)), 0);
    shm_unlink(shm);
    fd = shm_open(shm, O_CREAT | O_EXCL | O_RDWR, 0600);
    assert_true(fd >= 0);
    assert_int_equal(ftruncate(fd, (off_t)size), 0);
    if (size < sizeof(*r)) {
        close(fd);
        return NULL;
    }
    r = mmap(NULL, sizeof(*r), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    close(fd);
    assert_true(r != MAP_FAILED);
    r->hdr.version = OUTBOX_STATS_VERSION;
    r->hdr.header_size = sizeof(outbox_stats_header_t);
    r->hdr.total_size = sizeof(outbox_stats_region_t);
    r->hdr.slot_size = sizeof(outbox_stats_slot_t);
    r->hdr.nslots = OUTBOX_STATS_SLOTS;
    r->hdr.ncounters = OUTBOX_STATS_NCOUNTERS;
    r->hdr.nbuckets = OUTBOX_STATS_HIST_BUCKETS;
    r->hdr.supervisor_pid = getpid();
    atomic_store(&r->hdr.magic, OUTBOX_STATS_MAGIC);
    return r;
}

static void
expect_eproto(const char *inst, const char *msg)
{
    const outbox_stats_region_t *ro = NULL;
    outbox_stats_region_t *rw = NULL;
    char err[512] = "";
    int why = 0;

    if (outbox_stats_open_ro(&ro, inst, &why, err, sizeof(err)) == 0) {
        outbox_stats_close_ro(ro);
        fail_msg("open_ro accepted a region that should fail with \"%s\"", msg);
    }
    assert_int_equal(why, EPROTO);
    if (strstr(err, msg) == NULL) {
        fail_msg("open_ro: \"%s\" lacks \"%s\"", err, msg);
    }
    err[0] = '\0';
    assert_int_equal(outbox_stats_attach(&rw, inst, err, sizeof(err)), -1);
    if (strstr(err, msg) == NULL) {
        fail_msg("attach: \"%s\" lacks \"%s\"", err, msg);
    }
    assert_null(rw);
}

static void
test_layout_mismatch_rejected(void **state)
{
    const char *inst = new_instance();
    outbox_stats_region_t *r, *ok = NULL;
    char err[512], want[256], shm[96];
    int fd;
    (void)state;

    r = fake_region(inst, sizeof(outbox_stats_region_t));
    assert_int_equal(outbox_stats_attach(&ok, inst, err, sizeof(err)), 0); /* the fake is valid */
    outbox_stats_detach(ok);

    r->hdr.version = OUTBOX_STATS_VERSION + 1;
    snprintf(want, sizeof(want),
             "stats region /outbox-%s: layout version %u differs from this binary's %u (restart "
             "the supervisor",
             inst, OUTBOX_STATS_VERSION + 1, OUTBOX_STATS_VERSION);
    expect_eproto(inst, want);
    r->hdr.version = OUTBOX_STATS_VERSION;
    r->hdr.slot_size += 128;
    expect_eproto(inst, "sizes differ");
    r->hdr.slot_size -= 128;
    r->hdr.ncounters = OUTBOX_STATS_MAX_COUNTERS + 1;
    expect_eproto(inst, "sizes differ");
    r->hdr.ncounters = OUTBOX_STATS_NCOUNTERS;
    atomic_store(&r->hdr.magic, 0x1234);
    expect_eproto(inst, "bad magic");
    atomic_store(&r->hdr.magic, 0);
    expect_eproto(inst, "not initialised");
    munmap(r, sizeof(*r));

    fake_region(inst, 8); /* must not be read past its end */
    expect_eproto(inst, "too small");
    fake_region(inst, 0);
    expect_eproto(inst, "too small");
    r = fake_region(inst, sizeof(outbox_stats_region_t) + 4096);
    expect_eproto(inst, "sizes differ"); /* total_size says less than the object */
    munmap(r, sizeof(*r));
    r = fake_region(inst, sizeof(outbox_stats_region_t));
    munmap(r, sizeof(*r));
    assert_int_equal(outbox_stats_shm_name(inst, shm, sizeof(shm)), 0);
    fd = shm_open(shm, O_RDWR, 0);
    assert_true(fd >= 0);
    assert_int_equal(ftruncate(fd, (off_t)sizeof(outbox_stats_region_t) - 4096), 0);
    close(fd);
    expect_eproto(inst, "sizes differ"); /* header fine, object cut short */
    shm_unlink(shm);
}

static void
test_open_missing(void **state)
{
    const char *inst = new_instance();
    const outbox_stats_region_t *ro = NULL;
    outbox_stats_region_t *rw = NULL;
    char err[512], want[256];
    int why = 0;
    (void)state;

    assert_int_equal(outbox_stats_open_ro(&ro, inst, &why, err, sizeof(err)), -1);
    assert_int_equal(why, ENOENT);
    snprintf(want, sizeof(want),
             "no outboxd instance \"%s\" is running (no shared memory /outbox-%s)", inst, inst);
    assert_string_equal(err, want);
    assert_null(ro);
    assert_int_equal(outbox_stats_attach(&rw, inst, err, sizeof(err)), -1);
    assert_string_equal(err, want);
    assert_int_equal(outbox_stats_open_ro(&ro, "bad/name", &why, err, sizeof(err)), -1);
    assert_int_equal(why, EINVAL);
    assert_non_null(strstr(err, "invalid instance name"));
}

static void
test_destroy(void **state)
{
    const char *inst = new_instance();
    const outbox_stats_region_t *ro = NULL;
    outbox_stats_snapshot_t *s = snap_alloc();
    outbox_stats_region_t *r;
    char err[512];
    int why = 0;
    (void)state;

    r = create_ok(inst, 0600, (gid_t)-1);
    assert_int_equal(outbox_stats_open_ro(&ro, inst, &why, err, sizeof(err)), 0);
    assert_int_equal(outbox_stats_snapshot(ro, s), 0);
    outbox_stats_destroy(r, inst);
    assert_int_equal(outbox_stats_snapshot(ro, s), -1); /* magic zeroed first */
    outbox_stats_close_ro(ro);
    assert_int_equal(outbox_stats_open_ro(&ro, inst, &why, err, sizeof(err)), -1);
    assert_int_equal(why, ENOENT);
    outbox_stats_destroy(NULL, inst);
    outbox_stats_detach(NULL);
    outbox_stats_close_ro(NULL);
    free(s);
}

static void
test_supervisor_alive(void **state)
{
    const char *inst = new_instance();
    outbox_stats_region_t *r;
    pid_t pid;
    (void)state;

    r = create_ok(inst, 0600, (gid_t)-1);
    assert_true(outbox_stats_supervisor_alive(r));
    pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        _exit(0);
    }
    assert_int_equal(waitpid(pid, NULL, 0), pid);
    r->hdr.supervisor_pid = pid; /* reaped: gone */
    assert_false(outbox_stats_supervisor_alive(r));
    r->hdr.supervisor_pid = 1; /* alive; EPERM when not root */
    assert_true(outbox_stats_supervisor_alive(r));
    outbox_stats_destroy(r, inst);
}

static void
test_state_names(void **state)
{
    static const char *const want[] = {"free",       "starting", "idle",  "claiming",
                                       "publishing", "stopping", "exited"};
    unsigned i;
    (void)state;

    for (i = 0; i < sizeof(want) / sizeof(want[0]); i++) {
        assert_string_equal(outbox_worker_state_name(i), want[i]);
    }
    assert_string_equal(outbox_worker_state_name(99), "unknown");
}

static void
test_hist_buckets(void **state)
{
    static const struct {
        uint64_t us;
        unsigned b;
    } cases[] = {
        {0, 0},
        {1, 1},
        {2, 3},
        {3, 4},
        {4, 5},
        {5, 5},
        {6, 6},
        {7, 6},
        {8, 7},
        {11, 7},
        {12, 8},
        {15, 8},
        {16, 9},
        {1000, 20},
        {3000, 23},
        {10000, 27},
        {(1u << 27) - 1, 54},
        {1u << 27, 55},
        {UINT64_MAX, 55},
    };
    unsigned b, prevb = 0;
    uint64_t us;
    size_t i;
    (void)state;

    for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        assert_int_equal(outbox_stats_hist_bucket(cases[i].us), cases[i].b);
    }
    assert_int_not_equal(outbox_stats_hist_bucket(1000), outbox_stats_hist_bucket(3000));
    assert_int_not_equal(outbox_stats_hist_bucket(3000), outbox_stats_hist_bucket(10000));
    assert_int_equal(outbox_stats_hist_lower(0), 0);
    assert_int_equal(outbox_stats_hist_lower(1), 1);
    assert_int_equal(outbox_stats_hist_lower(2), 1); /* 1.5 rounded down */
    assert_int_equal(outbox_stats_hist_lower(3), 2);
    assert_int_equal(outbox_stats_hist_lower(4), 3);
    assert_int_equal(outbox_stats_hist_lower(5), 4);
    assert_int_equal(outbox_stats_hist_lower(6), 6);
    assert_int_equal(outbox_stats_hist_lower(OUTBOX_STATS_HIST_BUCKETS - 1), 1u << 27);
    for (b = 1; b < OUTBOX_STATS_HIST_BUCKETS; b++) {
        assert_true(outbox_stats_hist_lower(b) >= outbox_stats_hist_lower(b - 1));
        if (b >= 3) {
            assert_true(outbox_stats_hist_lower(b) > outbox_stats_hist_lower(b - 1));
            assert_int_equal(outbox_stats_hist_bucket(outbox_stats_hist_lower(b)), b);
            assert_true(outbox_stats_hist_bucket(outbox_stats_hist_lower(b) - 1) < b);
        }
    }
    /* every latency lies in [lower(b), lower(b+1)) of its bucket */
    for (us = 0; us < (1u << 28); us += 1 + us / 64) {
        b = outbox_stats_hist_bucket(us);
        assert_true(b >= prevb);
        assert_true(outbox_stats_hist_lower(b) <= us);
        if (b + 1 < OUTBOX_STATS_HIST_BUCKETS) {
            /* lower(2) is 1.5 rounded down: no integer lies in bucket 2 */
            assert_true(us < outbox_stats_hist_lower(b == 1 ? 3 : b + 1));
        }
        prevb = b;
    }
}

static void
test_hist_quantiles(void **state)
{
    uint64_t h[OUTBOX_STATS_HIST_BUCKETS] = {0};
    (void)state;

    assert_int_equal(outbox_stats_hist_quantile(h, 0.5), 0);
    h[outbox_stats_hist_bucket(1000)] = 90; /* [768, 1024) */
    h[outbox_stats_hist_bucket(3000)] = 9;  /* [2048, 3072) */
    h[outbox_stats_hist_bucket(10000)] = 1; /* [8192, 12288) */
    assert_int_equal(outbox_stats_hist_quantile(h, 0), 1024);
    assert_int_equal(outbox_stats_hist_quantile(h, 0.5), 1024);
    assert_int_equal(outbox_stats_hist_quantile(h, 0.9), 1024);
    assert_int_equal(outbox_stats_hist_quantile(h, 0.91), 3072);
    assert_int_equal(outbox_stats_hist_quantile(h, 0.99), 3072);
    assert_int_equal(outbox_stats_hist_quantile(h, 0.999), 12288);
    assert_int_equal(outbox_stats_hist_quantile(h, 1), 12288);
    memset(h, 0, sizeof(h));
    h[0] = 1;
    assert_int_equal(outbox_stats_hist_quantile(h, 0.5), 1);
    memset(h, 0, sizeof(h));
    h[OUTBOX_STATS_HIST_BUCKETS - 1] = 3; /* open-ended: its lower bound */
    assert_int_equal(outbox_stats_hist_quantile(h, 0.99), 1u << 27);
}

static int
find_slot(const outbox_stats_snapshot_t *s, int idx)
{
    unsigned i;

    for (i = 0; i < s->nslots; i++) {
        if (s->slot_index[i] == idx) {
            return (int)i;
        }
    }
    return -1;
}

/* Supervisor and worker halves through separate mappings, as in outboxd. */
static void
test_slots_and_totals(void **state)
{
    const char *inst = new_instance();
    const outbox_stats_region_t *ro = NULL;
    outbox_stats_snapshot_t *s = snap_alloc();
    outbox_stats_region_t *r, *w = NULL;
    uint64_t v[OUTBOX_STATS_NCOUNTERS] = {0};
    int64_t before = now_us();
    char err[512];
    int a, b, c, i, why, k, n;
    (void)state;

    r = create_ok(inst, 0600, (gid_t)-1);
    assert_int_equal(outbox_stats_attach(&w, inst, err, sizeof(err)), 0);
    assert_int_equal(outbox_stats_open_ro(&ro, inst, &why, err, sizeof(err)), 0);
    a = outbox_stats_slot_alloc(r, OUTBOX_ROLE_RELAY, 0, 1, "host-1-w0");
    b = outbox_stats_slot_alloc(r, OUTBOX_ROLE_RELAY, 1, 2, "host-1-w1");
    c = outbox_stats_slot_alloc(r, OUTBOX_ROLE_KEEPER, 0, 3, "host-1-keeper");
    assert_true(a >= 0 && b >= 0 && c >= 0 && a != b && b != c && a != c);
    outbox_stats_slot_set_pid(r, a, 1001);

    assert_int_equal(outbox_stats_snapshot(ro, s), 0);
    assert_int_equal(s->nslots, 3);
    k = find_slot(s, a);
    assert_true(k >= 0);
    assert_int_equal(s->slot[k].state, OUTBOX_WS_STARTING);
    assert_int_equal(s->slot[k].pid, 1001);
    assert_int_equal(s->slot[k].incarnation, 1);
    assert_string_equal(s->slot[k].lock_id, "host-1-w0");
    assert_true(s->slot[k].started_us >= before);
    assert_int_equal(s->slot[k].heartbeat_us, s->slot[k].started_us);
    assert_int_equal(s->slot[k].ready_us, 0);
    assert_int_equal(s->slot[find_slot(s, c)].role, OUTBOX_ROLE_KEEPER);

    /* worker side */
    outbox_stats_set_state(&w->slots[a], OUTBOX_WS_IDLE);
    outbox_stats_set_ready(&w->slots[a]);
    v[OUTBOX_STAT_DELIVERED] = 100;
    v[OUTBOX_STAT_FAILED] = 3;
    outbox_stats_set_counters(&w->slots[a], v);
    v[OUTBOX_STAT_DELIVERED] = 50;
    v[OUTBOX_STAT_FAILED] = 0;
    outbox_stats_set_counters(&w->slots[b], v);
    outbox_stats_add(&w->slots[b], OUTBOX_STAT_DELIVERED, 5);
    outbox_stats_add(&w->slots[b], OUTBOX_STATS_NCOUNTERS, 5); /* out of range: ignored */
    outbox_stats_add(&w->slots[c], OUTBOX_STAT_PURGED, 9);
    outbox_stats_batch(&w->slots[a], 10, 1000);
    outbox_stats_batch(&w->slots[a], 20, 3000);
    outbox_stats_batch(&w->slots[b], 5, 10000);

    assert_int_equal(outbox_stats_snapshot(ro, s), 0);
    k = find_slot(s, a);
    assert_int_equal(s->slot[k].state, OUTBOX_WS_IDLE);
    assert_true(s->slot[k].ready_us >= s->slot[k].started_us);
    assert_int_equal(s->slot[k].last_batch_size, 20);
    assert_int_equal(s->slot[k].last_batch_us, 3000);
    assert_int_equal(s->total[OUTBOX_STAT_DELIVERED], 155);
    assert_int_equal(s->total[OUTBOX_STAT_FAILED], 3);
    assert_int_equal(s->total[OUTBOX_STAT_PURGED], 9);
    assert_int_equal(s->total_hist[outbox_stats_hist_bucket(1000)], 1);
    assert_int_equal(s->total_hist[outbox_stats_hist_bucket(10000)], 1);

    /* retire: totals unchanged, the slot's share moves to retired once */
    outbox_stats_set_state(&w->slots[a], OUTBOX_WS_EXITED);
    outbox_stats_slot_retire(r, a);
    assert_int_equal(outbox_stats_snapshot(ro, s), 0);
    assert_int_equal(s->nslots, 2);
    assert_int_equal(find_slot(s, a), -1);
    assert_int_equal(s->retired[OUTBOX_STAT_DELIVERED], 100);
    assert_int_equal(s->total[OUTBOX_STAT_DELIVERED], 155);
    assert_int_equal(s->total[OUTBOX_STAT_FAILED], 3);
    assert_int_equal(s->retired_hist[outbox_stats_hist_bucket(3000)], 1);
    assert_int_equal(s->total_hist[outbox_stats_hist_bucket(3000)], 1);
    outbox_stats_slot_retire(r, a); /* twice: no effect */
    assert_int_equal(outbox_stats_snapshot(ro, s), 0);
    assert_int_equal(s->total[OUTBOX_STAT_DELIVERED], 155);

    /* the freed slot comes back clean */
    i = outbox_stats_slot_alloc(r, OUTBOX_ROLE_RELAY, 0, 4, "host-1-w0");
    assert_int_equal(i, a);
    assert_int_equal(outbox_stats_snapshot(ro, s), 0);
    k = find_slot(s, a);
    assert_int_equal(s->slot[k].counters[OUTBOX_STAT_DELIVERED], 0);
    assert_int_equal(s->slot[k].pid, 0);
    assert_int_equal(s->slot[k].incarnation, 4);
    assert_int_equal(s->total[OUTBOX_STAT_DELIVERED], 155);

    outbox_stats_slot_retire(r, a);
    outbox_stats_slot_retire(r, b);
    outbox_stats_slot_retire(r, c);
    assert_int_equal(outbox_stats_snapshot(ro, s), 0);
    assert_int_equal(s->nslots, 0);
    assert_int_equal(s->total[OUTBOX_STAT_DELIVERED], 155);
    assert_int_equal(s->total[OUTBOX_STAT_PURGED], 9);
    for (i = 0, n = 0; i < OUTBOX_STATS_HIST_BUCKETS; i++) {
        n += (int)s->total_hist[i];
    }
    assert_int_equal(n, 3);

    /* full */
    for (i = 0; i < OUTBOX_STATS_SLOTS; i++) {
        assert_true(outbox_stats_slot_alloc(r, OUTBOX_ROLE_RELAY, (unsigned)i, 0, "x") >= 0);
    }
    assert_int_equal(outbox_stats_slot_alloc(r, OUTBOX_ROLE_RELAY, 0, 0, "x"), -1);
    assert_int_equal(outbox_stats_snapshot(ro, s), 0);
    assert_int_equal(s->nslots, OUTBOX_STATS_SLOTS);

    outbox_stats_close_ro(ro);
    outbox_stats_detach(w);
    outbox_stats_destroy(r, inst);
    free(s);
}

/* ---- readers racing writer processes ---- */

/* A writer runs until the reader has seen enough, or for at most
 * RACE_ITERS steps or RACE_US: whichever comes first. */
#define RACE_ITERS 100000000 /* the 2 s bound ends it first, even under ASan or load */
#define RACE_US 2000000
#define RACE_MOVING 50000 /* views that saw the writer move on */

/* Shared by the test and its writer child (anonymous shared page). */
typedef struct race {
    _Atomic int go;   /* the reader is ready: start writing */
    _Atomic int done; /* the reader has seen enough */
} race_t;

static race_t *race;

static void
race_start(void)
{
    race = mmap(NULL, sizeof(*race), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    assert_true(race != MAP_FAILED);
    atomic_store(&race->go, 0);
    atomic_store(&race->done, 0);
}

static void
race_end(void)
{
    munmap(race, sizeof(*race));
    race = NULL;
}

/* In the child: wait for the reader, then time from there. */
static int64_t
race_wait_go(void)
{
    int64_t t0 = now_us();

    while (!atomic_load(&race->go) && now_us() - t0 < RACE_US) {
        sched_yield();
    }
    return now_us();
}

static int
race_over(unsigned long i, int64_t t0)
{
    return i >= RACE_ITERS || atomic_load_explicit(&race->done, memory_order_relaxed) ||
           ((i & 255) == 0 && now_us() - t0 > RACE_US);
}

/* Let the reader in between writes, as a real worker's loop does. */
static void
pause_writer(void)
{
    volatile int j;

    for (j = 0; j < 300; j++) {
    }
}

/* The seqlock protocol of stats.c, by hand, to write fields that no single
 * API call writes together. */
static void
torn_writer(outbox_stats_slot_t *s)
{
    int64_t t0 = race_wait_go();
    unsigned long i;

    for (i = 1; !race_over(i, t0); i++) {
        uint32_t q = atomic_load_explicit(&s->seq, memory_order_relaxed);

        atomic_store_explicit(&s->seq, q + 1, memory_order_relaxed);
        atomic_thread_fence(memory_order_release);
        snprintf(s->lock_id, sizeof(s->lock_id), "w-%lu", i);
        atomic_store_explicit(&s->last_batch_size, i, memory_order_relaxed);
        atomic_store_explicit(&s->last_batch_us, i, memory_order_relaxed);
        atomic_store_explicit(&s->heartbeat_us, (int64_t)i, memory_order_relaxed);
        atomic_store_explicit(&s->hist[0], i, memory_order_relaxed);
        atomic_store_explicit(&s->hist[OUTBOX_STATS_HIST_BUCKETS - 1], i, memory_order_relaxed);
        atomic_store_explicit(&s->seq, q + 2, memory_order_release);
        pause_writer();
    }
}

/* The library's own writer: one batch per step, so size == latency ==
 * number of histogram entries in every consistent view. */
static void
batch_writer(outbox_stats_slot_t *s)
{
    int64_t t0 = race_wait_go();
    unsigned long i;

    for (i = 1; !race_over(i, t0); i++) {
        outbox_stats_batch(s, i, i);
        pause_writer();
    }
}

static int
torn_check(const outbox_stats_slot_snap_t *w)
{
    char want[OUTBOX_STATS_LOCKID_MAX];
    uint64_t i = w->last_batch_size;

    snprintf(want, sizeof(want), "w-%lu", (unsigned long)i);
    return w->last_batch_us == i && (uint64_t)w->heartbeat_us == i && w->hist[0] == i &&
           w->hist[OUTBOX_STATS_HIST_BUCKETS - 1] == i && strcmp(w->lock_id, want) == 0;
}

static int
batch_check(const outbox_stats_slot_snap_t *w)
{
    uint64_t n = 0;
    unsigned b;

    for (b = 0; b < OUTBOX_STATS_HIST_BUCKETS; b++) {
        n += w->hist[b];
    }
    return w->last_batch_us == w->last_batch_size && n == w->last_batch_size;
}

/* Fork a writer on one slot; snapshot until it ends; every view must pass. */
static void
race_slot(void (*writer)(outbox_stats_slot_t *), int (*check)(const outbox_stats_slot_snap_t *))
{
    const char *inst = new_instance();
    const outbox_stats_region_t *ro = NULL;
    outbox_stats_snapshot_t *s;
    outbox_stats_region_t *r;
    unsigned long views = 0, moving = 0, bad = 0, failed = 0;
    uint64_t last = 0;
    char err[512], badlock[OUTBOX_STATS_LOCKID_MAX] = "";
    uint64_t bad_size = 0, bad_us = 0;
    int a, k, why, st;
    pid_t pid;

    r = create_ok(inst, 0600, (gid_t)-1);
    a = outbox_stats_slot_alloc(r, OUTBOX_ROLE_RELAY, 0, 1, "w-0");
    assert_true(a >= 0);
    assert_int_equal(outbox_stats_open_ro(&ro, inst, &why, err, sizeof(err)), 0);
    race_start();
    pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        writer(&r->slots[a]);
        _exit(0);
    }
    s = snap_alloc(); /* after fork: the writer child owns no heap */
    atomic_store(&race->go, 1);
    while (waitpid(pid, &st, WNOHANG) == 0) {
        if (moving >= RACE_MOVING) {
            atomic_store(&race->done, 1);
        }
        if (outbox_stats_snapshot(ro, s) < 0) {
            failed++;
            continue;
        }
        views++;
        k = find_slot(s, a);
        if (k < 0 || s->slot[k].last_batch_size == 0) {
            continue;
        }
        if (s->slot[k].last_batch_size != last) {
            moving++;
            last = s->slot[k].last_batch_size;
        }
        if (!check(&s->slot[k]) && bad++ == 0) {
            bad_size = s->slot[k].last_batch_size;
            bad_us = s->slot[k].last_batch_us;
            memcpy(badlock, s->slot[k].lock_id, sizeof(badlock));
        }
    }
    race_end();
    outbox_stats_close_ro(ro);
    outbox_stats_destroy(r, inst);
    free(s);
    print_message("    %lu views, %lu while moving, %lu torn, %lu snapshots gave up\n", views,
                  moving, bad, failed);
    assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    if (bad > 0) {
        fail_msg("%lu torn views; first: size %llu, latency %llu, lock id \"%s\"", bad,
                 (unsigned long long)bad_size, (unsigned long long)bad_us, badlock);
    }
    assert_true(moving >= 100); /* the reader really raced the writer */
    /* giving up (-1) under a writer this busy is allowed; wrong numbers are not */
}

static void
test_no_torn_status(void **state)
{
    (void)state;
    race_slot(torn_writer, torn_check);
}

static void
test_no_torn_batch(void **state)
{
    (void)state;
    race_slot(batch_writer, batch_check);
}

/* A supervisor that allocs, fills and retires slots as fast as it can:
 * readers never count a retired slot twice nor lose it. */
#define RETIRE_N 7

static void
test_retire_race(void **state)
{
    const char *inst = new_instance();
    const outbox_stats_region_t *ro = NULL;
    outbox_stats_snapshot_t *s;
    outbox_stats_region_t *r;
    unsigned long views = 0, moving = 0, bad = 0, backwards = 0, failed = 0, iters;
    uint64_t last = 0, d;
    char err[512];
    int why, st;
    pid_t pid;
    (void)state;

    r = create_ok(inst, 0600, (gid_t)-1);
    assert_int_equal(outbox_stats_open_ro(&ro, inst, &why, err, sizeof(err)), 0);
    race_start();
    pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        int64_t t0 = race_wait_go();
        unsigned long i;
        int j;

        for (i = 0; !race_over(i + 1, t0); i++) {
            int a = outbox_stats_slot_alloc(r, OUTBOX_ROLE_RELAY, 0, i, "retire");

            if (a < 0) {
                _exit(3);
            }
            outbox_stats_add(&r->slots[a], OUTBOX_STAT_DELIVERED, RETIRE_N);
            pause_writer();
            outbox_stats_slot_retire(r, a);
            for (j = 0; j < 10; j++) { /* the reader walks all slots: give it time */
                pause_writer();
            }
        }
        /* the number of cycles, for the final total */
        atomic_store(&r->hdr.sup.spawns, i);
        _exit(0);
    }
    s = snap_alloc(); /* after fork: the writer child owns no heap */
    atomic_store(&race->go, 1);
    while (waitpid(pid, &st, WNOHANG) == 0) {
        if (moving >= RACE_MOVING) {
            atomic_store(&race->done, 1);
        }
        if (outbox_stats_snapshot(ro, s) < 0) {
            failed++;
            continue;
        }
        views++;
        d = s->total[OUTBOX_STAT_DELIVERED];
        bad += d % RETIRE_N != 0;
        backwards += d < last;
        moving += d != last;
        last = d;
    }
    assert_int_equal(outbox_stats_snapshot(ro, s), 0);
    iters = (unsigned long)s->spawns;
    d = s->total[OUTBOX_STAT_DELIVERED];
    race_end();
    outbox_stats_close_ro(ro);
    outbox_stats_destroy(r, inst);
    free(s);
    print_message("    %lu views, %lu while moving, %lu cycles, %lu snapshots gave up\n", views,
                  moving, iters, failed);
    assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    assert_int_equal(bad, 0);
    assert_int_equal(backwards, 0);
    assert_int_equal(d, (uint64_t)iters * RETIRE_N);
    assert_true(moving >= 100);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_layout),
        cmocka_unit_test(test_shm_name),
        cmocka_unit_test(test_create_open_snapshot),
        cmocka_unit_test(test_stale_region_replaced),
        cmocka_unit_test(test_modes),
        cmocka_unit_test(test_permission_denied),
        cmocka_unit_test(test_layout_mismatch_rejected),
        cmocka_unit_test(test_open_missing),
        cmocka_unit_test(test_destroy),
        cmocka_unit_test(test_supervisor_alive),
        cmocka_unit_test(test_state_names),
        cmocka_unit_test(test_hist_buckets),
        cmocka_unit_test(test_hist_quantiles),
        cmocka_unit_test(test_slots_and_totals),
        cmocka_unit_test(test_no_torn_status),
        cmocka_unit_test(test_no_torn_batch),
        cmocka_unit_test(test_retire_race),
    };
    return cmocka_run_group_tests(tests, NULL, unlink_all);
}
