/*
 * The supervisor: the only caller of fork/exec/waitpid/kill. One entry of
 * procs[] per stats slot; worker numbers 0..target-1 are relays, the keeper
 * has its own number. Invariants: a rolling restart starts one replacement
 * at a time and stops the old process only once the new one is ready; a
 * reaped relay's exact lock id is queued for the keeper until it acks; the
 * supervisor itself never talks to PostgreSQL or NATS.
 */
#define _GNU_SOURCE /* memfd_create, pipe2 */
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <inttypes.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "log.h"
#include "outbox/errors.h"
#include "signals.h"
#include "stats.h"
#include "supervisor.h"

#define KEEPER_NO OUTBOX_STATS_MAX_WORKERS /* worker number of the keeper */
#define TICK_MS 100
#define RAN_WELL_MS 1000    /* a worker ready this long is respawned at once */
#define BACKOFF_MIN_MS 1000 /* then 1 s doubling to 30 s (s6) */
#define BACKOFF_MAX_MS 30000
#define RELEASE_QUEUE 256
#define KEEPER_FLUSH_MS 5000 /* at stop: how long the keeper gets to apply releases */
#define CFG_FD 3
#define RELEASE_FD 4

typedef struct proc {
    pid_t pid; /* 0: entry unused */
    int role;
    unsigned no;
    uint64_t gen; /* configuration generation it was started with */
    char lock_id[OUTBOX_STATS_LOCKID_MAX];
    int64_t spawned_ms, ready_ms, stop_ms;
    bool stop_sent, kill_sent, retiring;
    int release_wfd; /* keeper: write end of its request pipe, else -1 */
} proc_t;

typedef struct release {
    uint64_t seq;
    pid_t sent_to;
    int64_t lo, hi; /* seqs it had in flight (0, 0: none) */
    char lock_id[OUTBOX_STATS_LOCKID_MAX];
} release_t;

typedef enum { RUNNING = 0, STOP_RELAYS, STOP_KEEPER, STOPPED } phase_t;

typedef struct sup {
    const outbox_supervisor_spec_t *spec;
    outbox_config_t cfg; /* owned */
    outbox_stats_region_t *r;
    int lock_fd;
    pid_t self;
    phase_t phase;
    int64_t phase_deadline;
    unsigned target;
    uint64_t inc; /* incarnation counter: unique lock ids */

    proc_t procs[OUTBOX_STATS_SLOTS];
    int64_t backoff_ms[KEEPER_NO + 1];
    int64_t respawn_at[KEEPER_NO + 1];
    bool fatal[KEEPER_NO + 1]; /* exited 2: not respawned until SIGHUP */

    bool ever_ready;  /* a relay has been ready since the start */
    int startup_fail; /* exit status of a relay that failed before that */

    int cfg_fd, prev_cfg_fd; /* memfds with the serialized configuration */
    uint64_t gen;
    bool rolling;
    int roll_new, roll_old; /* slots; -1 none */
    int64_t roll_deadline;
    outbox_config_t prev_cfg;
    bool have_prev;

    release_t relq[RELEASE_QUEUE];
    int nrel;
    uint64_t rel_seq;
} sup_t;

static int64_t
now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int64_t
real_us(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static const char *
role_name(int role)
{
    return role == OUTBOX_ROLE_KEEPER ? "keeper" : "worker";
}

/* "worker 3" or "keeper", for log lines. */
static const char *
proc_name(const proc_t *p, char *buf, size_t len)
{
    if (p->role == OUTBOX_ROLE_KEEPER)
        snprintf(buf, len, "keeper");
    else
        snprintf(buf, len, "worker %u", p->no);
    return buf;
}

static bool
is_ready(const sup_t *s, int slot)
{
    return atomic_load_explicit(&s->r->slots[slot].ready_us, memory_order_acquire) != 0;
}

/* ---- instance lock, pid file, configuration memfd ---- */

/*
 * flock() on a shm object "/outbox-<instance>.lock". The holder unlinks it
 * at exit, so a starter that locked an object no longer under that name
 * retries with the new one (the name and the fd must be the same inode).
 */
static int
lock_instance(sup_t *s)
{
    char name[OUTBOX_STATS_NAME_MAX + 32], path[OUTBOX_STATS_NAME_MAX + 48];
    const outbox_stats_region_t *old = NULL;
    struct stat a, b;
    int why, tries;

    snprintf(name, sizeof(name), "/outbox-%s.lock", s->spec->instance);
    snprintf(path, sizeof(path), "/dev/shm%s", name);
    for (tries = 0; tries < 10; tries++) {
        s->lock_fd = shm_open(name, O_CREAT | O_RDWR | O_CLOEXEC, 0600);
        if (s->lock_fd < 0) {
            log_error("shm_open(\"%s\") failed: %s", name, strerror(errno));
            return -1;
        }
        if (flock(s->lock_fd, LOCK_EX | LOCK_NB) != 0)
            break;
        if (fstat(s->lock_fd, &a) == 0 && stat(path, &b) == 0 && a.st_ino == b.st_ino &&
            a.st_dev == b.st_dev)
            return 0;
        close(s->lock_fd); /* unlinked by the previous holder meanwhile */
        s->lock_fd = -1;
    }
    if (s->lock_fd >= 0 && errno == EWOULDBLOCK) {
        char err[256];
        long pid = 0;

        if (outbox_stats_open_ro(&old, s->spec->instance, &why, err, sizeof(err)) == 0) {
            pid = (long)old->hdr.supervisor_pid;
            outbox_stats_close_ro(old);
        }
        log_error("instance \"%s\" is already run by another outboxd supervisor (pid %ld); "
                  "use --instance to run a second one",
                  s->spec->instance, pid);
    } else {
        log_error("cannot lock instance \"%s\" (%s): %s", s->spec->instance, name, strerror(errno));
    }
    if (s->lock_fd >= 0)
        close(s->lock_fd);
    s->lock_fd = -1;
    return -1;
}

static int
write_pid_file(const sup_t *s)
{
    char buf[32];
    int fd, n;

    if (s->cfg.pid_file[0] == '\0')
        return 0;
    fd = open(s->cfg.pid_file, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) {
        log_error("pid_file %s: cannot open: %s", s->cfg.pid_file, strerror(errno));
        return -1;
    }
    n = snprintf(buf, sizeof(buf), "%d\n", (int)s->self);
    if (write(fd, buf, (size_t)n) != n) {
        log_error("pid_file %s: write failed: %s", s->cfg.pid_file, strerror(errno));
        close(fd);
        return -1;
    }
    close(fd);
    return 0;
}

/* A sealed-by-convention memfd holding the configuration text for workers. */
static int
config_memfd(const outbox_config_t *cfg)
{
    char *buf = NULL;
    size_t len = 0, off = 0;
    ssize_t n;
    int fd;

    if (outbox_config_serialize(cfg, &buf, &len) != OUTBOX_OK) {
        log_error("out of memory serializing the configuration");
        return -1;
    }
    fd = memfd_create("outboxd-config", MFD_CLOEXEC);
    if (fd < 0) {
        log_error("memfd_create() failed: %s", strerror(errno));
        free(buf);
        return -1;
    }
    while (off < len) {
        n = write(fd, buf + off, len - off);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            log_error("writing the configuration memfd failed: %s", strerror(errno));
            close(fd);
            free(buf);
            return -1;
        }
        off += (size_t)n;
    }
    free(buf);
    return fd;
}

/* ---- spawning ---- */

static int
spawn(sup_t *s, int role, unsigned no)
{
    char lock_id[OUTBOX_STATS_LOCKID_MAX], slotbuf[16], parent[16], nm[32];
    char *argv[20];
    sigset_t all, old_mask;
    int slot, pfd[2] = {-1, -1}, argc = 0;
    pid_t pid;
    proc_t *p;

    s->inc++;
    if (role == OUTBOX_ROLE_KEEPER)
        snprintf(lock_id, sizeof(lock_id), "%s-keeper-%" PRIu64, s->spec->machine_id, s->inc);
    else
        snprintf(lock_id, sizeof(lock_id), "%s-%u-%" PRIu64, s->spec->machine_id, no, s->inc);
    slot = outbox_stats_slot_alloc(s->r, role, no, s->inc, lock_id);
    if (slot < 0) {
        log_error("no free stats slot for %s %u", role_name(role), no);
        return -1;
    }
    if (role == OUTBOX_ROLE_KEEPER && pipe2(pfd, O_CLOEXEC) != 0) {
        log_error("pipe2() failed: %s", strerror(errno));
        outbox_stats_slot_retire(s->r, slot);
        return -1;
    }
    snprintf(slotbuf, sizeof(slotbuf), "%d", slot);
    snprintf(parent, sizeof(parent), "%d", (int)s->self);
    argv[argc++] = (char *)s->spec->exe;
    argv[argc++] = "worker";
    argv[argc++] = "--role";
    argv[argc++] = role == OUTBOX_ROLE_KEEPER ? "keeper" : "relay";
    argv[argc++] = "--instance";
    argv[argc++] = (char *)s->spec->instance;
    argv[argc++] = "--slot";
    argv[argc++] = slotbuf;
    argv[argc++] = "--lock-id";
    argv[argc++] = lock_id;
    argv[argc++] = "--parent";
    argv[argc++] = parent;
    argv[argc++] = "--config-fd";
    argv[argc++] = "3";
    if (role == OUTBOX_ROLE_KEEPER) {
        argv[argc++] = "--release-fd";
        argv[argc++] = "4";
    }
    argv[argc] = NULL;

    /* Block every signal across fork and exec: a stop sent to the child
     * before its own handlers exist stays pending (exec keeps it) instead of
     * running our inherited handler in the child, where it would be lost. */
    sigfillset(&all);
    sigprocmask(SIG_SETMASK, &all, &old_mask);
    pid = fork();
    if (pid != 0)
        sigprocmask(SIG_SETMASK, &old_mask, NULL);
    if (pid < 0) {
        log_error("fork() failed: %s", strerror(errno));
        if (pfd[0] >= 0) {
            close(pfd[0]);
            close(pfd[1]);
        }
        outbox_stats_slot_retire(s->r, slot);
        return -1;
    }
    if (pid == 0) {
        int cfd, rfd = -1;

        /* The child: die with the supervisor, take the fds, run the binary
         * on disk (after an upgrade: the new code). */
        /* Signals are still blocked (see above) and stay so through exec:
         * the worker unblocks them once its handlers are installed. */
        prctl(PR_SET_PDEATHSIG, SIGTERM);
        if (getppid() != s->self)
            _exit(1);
        cfd = fcntl(s->cfg_fd, F_DUPFD, 10);
        if (pfd[0] >= 0)
            rfd = fcntl(pfd[0], F_DUPFD, 10);
        if (cfd < 0 || dup2(cfd, CFG_FD) < 0 || (rfd >= 0 && dup2(rfd, RELEASE_FD) < 0))
            _exit(1);
        execv(s->spec->exe, argv);
        fprintf(stderr, "outboxd: exec %s failed: %s\n", s->spec->exe, strerror(errno));
        _exit(127);
    }
    outbox_stats_slot_set_pid(s->r, slot, pid);
    p = &s->procs[slot];
    memset(p, 0, sizeof(*p));
    p->pid = pid;
    p->role = role;
    p->no = no;
    p->gen = s->gen;
    snprintf(p->lock_id, sizeof(p->lock_id), "%s", lock_id);
    p->spawned_ms = now_ms();
    p->release_wfd = -1;
    if (pfd[0] >= 0) {
        close(pfd[0]);
        fcntl(pfd[1], F_SETFL, fcntl(pfd[1], F_GETFL) | O_NONBLOCK);
        p->release_wfd = pfd[1];
    }
    atomic_fetch_add_explicit(&s->r->hdr.sup.spawns, 1, memory_order_relaxed);
    log_info("started %s (pid %d, lock id %s)", proc_name(p, nm, sizeof(nm)), (int)pid, lock_id);
    return slot;
}

static void
send_stop(sup_t *s, int slot, bool retire)
{
    proc_t *p = &s->procs[slot];

    if (retire)
        p->retiring = true;
    if (p->stop_sent)
        return;
    p->stop_sent = true;
    p->stop_ms = now_ms();
    /* The keeper ignores TERM/INT while we live (a Ctrl-C or a cgroup-wide
     * TERM reaches it too, and it must outlast the relays' drain): it
     * stops on USR2 from us. */
    kill(p->pid, p->role == OUTBOX_ROLE_KEEPER ? SIGUSR2 : SIGTERM);
}

static void
send_kill(sup_t *s, int slot, const char *why)
{
    proc_t *p = &s->procs[slot];

    char nm[32];

    if (p->kill_sent)
        return;

    log_error("%s (pid %d): %s: killing it", proc_name(p, nm, sizeof(nm)), (int)p->pid, why);
    p->kill_sent = true;
    kill(p->pid, SIGKILL);
}

/* ---- lock releases for reaped relays ---- */

static void
queue_release(sup_t *s, const char *lock_id, int64_t lo, int64_t hi)
{
    release_t *e;
    size_t n;

    if (s->nrel == RELEASE_QUEUE) {
        log_warn("lock-release queue full: %s's locks expire after max_lock_time",
                 s->relq[0].lock_id);
        memmove(&s->relq[0], &s->relq[1], sizeof(s->relq[0]) * (RELEASE_QUEUE - 1));
        s->nrel--;
    }
    e = &s->relq[s->nrel++];
    e->seq = ++s->rel_seq;
    e->sent_to = 0;
    e->lo = lo;
    e->hi = hi;
    n = strnlen(lock_id, sizeof(e->lock_id) - 1);
    memmove(e->lock_id, lock_id, n);
    e->lock_id[n] = '\0';
}

/* The newest live keeper not told to stop, or -1. */
static int
current_keeper(const sup_t *s)
{
    int i, best = -1;

    for (i = 0; i < OUTBOX_STATS_SLOTS; i++) {
        const proc_t *p = &s->procs[i];

        if (p->pid == 0 || p->role != OUTBOX_ROLE_KEEPER || p->stop_sent)
            continue;
        if (best < 0 || p->spawned_ms >= s->procs[best].spawned_ms)
            best = i;
    }
    return best;
}

static void
flush_releases(sup_t *s)
{
    uint64_t acked = 0;
    char line[OUTBOX_STATS_LOCKID_MAX + 96];
    int i, k, n, drop = 0;

    /* Any keeper's ack counts: requests carry global sequence numbers and a
     * keeper is sent every pending one in order. */
    for (i = 0; i < OUTBOX_STATS_SLOTS; i++) {
        if (s->procs[i].pid != 0 && s->procs[i].role == OUTBOX_ROLE_KEEPER) {
            uint64_t a = atomic_load_explicit(&s->r->slots[i].release_acked, memory_order_acquire);
            if (a > acked)
                acked = a;
        }
    }
    while (drop < s->nrel && s->relq[drop].seq <= acked)
        drop++;
    if (drop > 0) {
        memmove(&s->relq[0], &s->relq[drop], sizeof(s->relq[0]) * (size_t)(s->nrel - drop));
        s->nrel -= drop;
    }
    if ((k = current_keeper(s)) < 0 || s->procs[k].release_wfd < 0)
        return;
    for (i = 0; i < s->nrel; i++) {
        release_t *e = &s->relq[i];

        if (e->sent_to == s->procs[k].pid)
            continue;
        n = snprintf(line, sizeof(line), "%" PRIu64 " %" PRId64 " %" PRId64 " %s\n", e->seq, e->lo,
                     e->hi, e->lock_id);
        if (write(s->procs[k].release_wfd, line, (size_t)n) != n)
            return; /* pipe full or keeper gone: retried next tick */
        e->sent_to = s->procs[k].pid;
    }
}

/* ---- reaping and respawning ---- */

static void
describe_status(int st, char *buf, size_t len)
{
    if (WIFEXITED(st))
        snprintf(buf, len, "exited with status %d", WEXITSTATUS(st));
    else if (WIFSIGNALED(st))
        snprintf(buf, len, "killed by signal %d (%s)%s", WTERMSIG(st), strsignal(WTERMSIG(st)),
                 WCOREDUMP(st) ? ", core dumped" : "");
    else
        snprintf(buf, len, "ended with wait status %d", st);
}

static void abort_rolling(sup_t *s, const char *why);
static void begin_stop(sup_t *s);

static void
reaped(sup_t *s, int slot, int st)
{
    proc_t *p = &s->procs[slot];
    char how[128], nm[32];
    int64_t t = now_ms();
    bool clean = WIFEXITED(st) && WEXITSTATUS(st) == 0;
    bool fatal = WIFEXITED(st) && WEXITSTATUS(st) == 2;
    bool ran_well = p->ready_ms != 0 && t - p->ready_ms >= RAN_WELL_MS;
    int64_t lo = atomic_load_explicit(&s->r->slots[slot].inflight_lo, memory_order_acquire),
            hi = atomic_load_explicit(&s->r->slots[slot].inflight_hi, memory_order_acquire);
    bool died_publishing = p->role == OUTBOX_ROLE_RELAY && !clean && lo > 0;
    unsigned no = p->no;

    describe_status(st, how, sizeof(how));
    if (p->stop_sent && (clean || p->kill_sent)) {
        log_info("%s (pid %d) %s", proc_name(p, nm, sizeof(nm)), (int)p->pid, how);
    } else {
        log_error("%s (pid %d, lock id %s) %s", proc_name(p, nm, sizeof(nm)), (int)p->pid,
                  p->lock_id, how);
        atomic_fetch_add_explicit(&s->r->hdr.sup.crashes, 1, memory_order_relaxed);
    }
    /* Exact lock id: its claimed records are free now, not after max_lock_time. */
    /* A worker that exited by itself released its own locks on the way out
     * (unless the database was away); one killed or crashed did not. */
    if (p->role == OUTBOX_ROLE_RELAY && (WIFSIGNALED(st) || (!clean && !fatal && p->ready_ms != 0)))
        queue_release(s, p->lock_id, lo, hi);
    if (p->release_wfd >= 0)
        close(p->release_wfd);
    outbox_stats_slot_retire(s->r, slot);
    if (slot == s->roll_new)
        abort_rolling(s, "the replacement exited before it was ready");
    /* Fail fast at start (not migrated, bad configuration): nothing to keep
     * running, and the operator sees the status; later, respawn instead. */
    if (!s->ever_ready && p->role == OUTBOX_ROLE_RELAY && WIFEXITED(st) && !clean &&
        !p->stop_sent && s->phase == RUNNING) {
        log_error("worker %u failed before any worker was ready: stopping", no);
        s->startup_fail = WEXITSTATUS(st);
        memset(p, 0, sizeof(*p));
        p->release_wfd = -1;
        begin_stop(s);
        return;
    }
    if (slot == s->roll_old)
        s->roll_old = -1; /* replaced anyway: the new one carries on */
    if (!p->retiring && s->phase == RUNNING) {
        if (fatal) {
            s->fatal[no] = true;
            log_error("%s exited with status 2 (fatal configuration or incompatible "
                      "binary): not respawned until SIGHUP",
                      nm);
        } else if (ran_well || p->stop_sent) {
            s->backoff_ms[no] = BACKOFF_MIN_MS;
            s->respawn_at[no] = t;
        } else if (died_publishing) {
            /* a poison record, most likely: the keeper narrows it down and
             * parks it after crash_limit; waiting longer each time would
             * only stall delivery meanwhile */
            s->respawn_at[no] = t + BACKOFF_MIN_MS;
            log_error("%s died while publishing a batch: next start in %llds", nm,
                      (long long)(BACKOFF_MIN_MS / 1000));
        } else {
            if (s->backoff_ms[no] < BACKOFF_MIN_MS)
                s->backoff_ms[no] = BACKOFF_MIN_MS;
            s->respawn_at[no] = t + s->backoff_ms[no];
            log_error("%s keeps failing: next start in %llds", nm,
                      (long long)(s->backoff_ms[no] / 1000));
            s->backoff_ms[no] =
                s->backoff_ms[no] * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : s->backoff_ms[no] * 2;
        }
    }
    memset(p, 0, sizeof(*p));
    p->release_wfd = -1;
}

static void
reap(sup_t *s)
{
    pid_t pid;
    int st, i;

    while ((pid = waitpid(-1, &st, WNOHANG)) > 0) {
        for (i = 0; i < OUTBOX_STATS_SLOTS; i++)
            if (s->procs[i].pid == pid)
                break;
        if (i < OUTBOX_STATS_SLOTS)
            reaped(s, i, st);
    }
}

static int
count_live(const sup_t *s, int role, int *nlive)
{
    int i, n = 0, all = 0;

    for (i = 0; i < OUTBOX_STATS_SLOTS; i++) {
        if (s->procs[i].pid == 0)
            continue;
        all++;
        if (role < 0 || s->procs[i].role == role)
            n++;
    }
    if (nlive != NULL)
        *nlive = all;
    return n;
}

/* Start what is missing, retire what is beyond the target. */
static void
reconcile(sup_t *s)
{
    bool have[KEEPER_NO + 1];
    int64_t t = now_ms();
    unsigned no;
    int i;

    memset(have, 0, sizeof(have));
    for (i = 0; i < OUTBOX_STATS_SLOTS; i++) {
        proc_t *p = &s->procs[i];

        if (p->pid == 0 || p->retiring)
            continue;
        if (p->role == OUTBOX_ROLE_RELAY && p->no >= s->target) {
            log_info("worker %u (pid %d): beyond the %u wanted, stopping it", p->no, (int)p->pid,
                     s->target);
            send_stop(s, i, true);
            continue;
        }
        have[p->no] = true;
        if (p->ready_ms == 0 && is_ready(s, i)) {
            p->ready_ms = t;
            if (p->role == OUTBOX_ROLE_RELAY)
                s->ever_ready = true;
        }
    }
    for (no = 0; no <= KEEPER_NO; no++) {
        if (no >= s->target && no != KEEPER_NO)
            continue;
        if (have[no] || s->fatal[no] || t < s->respawn_at[no])
            continue;
        spawn(s, no == KEEPER_NO ? OUTBOX_ROLE_KEEPER : OUTBOX_ROLE_RELAY, no);
    }
}

/* Kill what stopped beating, and what overran the drain. */
static void
watch(sup_t *s)
{
    int64_t t = now_ms(), mt = outbox_stats_mono_us(), hb;
    char why[96];
    int i;

    for (i = 0; i < OUTBOX_STATS_SLOTS; i++) {
        proc_t *p = &s->procs[i];

        if (p->pid == 0 || p->kill_sent)
            continue;
        if (p->stop_sent && t - p->stop_ms > s->cfg.drain_timeout_ms) {
            send_kill(s, i, "still running after drain_timeout");
            continue;
        }
        /* monotonic: a wall-clock step must not look like a hang */
        hb = atomic_load_explicit(&s->r->slots[i].heartbeat_mono_us, memory_order_relaxed);
        if (hb != 0 && (mt - hb) / 1000 > s->cfg.worker_timeout_ms) {
            snprintf(why, sizeof(why), "no heartbeat for %llds (worker_timeout)",
                     (long long)((mt - hb) / 1000000));
            atomic_fetch_add_explicit(&s->r->hdr.sup.heartbeat_kills, 1, memory_order_relaxed);
            send_kill(s, i, why);
        }
    }
}

/* ---- rolling restart ---- */

static void
end_rolling(sup_t *s)
{
    int i;

    for (i = 0; i < OUTBOX_STATS_SLOTS; i++)
        if (s->procs[i].pid != 0)
            s->procs[i].gen = s->gen;
    s->rolling = false;
    s->roll_new = s->roll_old = -1;
    if (s->phase == RUNNING) /* not "rolling" forever after an abort */
        atomic_store_explicit(&s->r->hdr.sup_state, 0, memory_order_relaxed);
    if (s->have_prev) {
        outbox_config_free(&s->prev_cfg);
        s->have_prev = false;
    }
    if (s->prev_cfg_fd >= 0) {
        close(s->prev_cfg_fd);
        s->prev_cfg_fd = -1;
    }
}

/* The replacement failed: keep the workers still running, and go back to
 * the configuration they run, so respawns use one known to work. */
static void
abort_rolling(sup_t *s, const char *why)
{
    int slot = s->roll_new;

    if (!s->rolling)
        return;
    log_error("rolling restart stopped: %s; the workers not yet replaced keep running%s", why,
              s->have_prev ? " and the previous configuration is restored" : "");
    if (slot >= 0 && s->procs[slot].pid != 0)
        send_stop(s, slot, true);
    if (s->have_prev) {
        /* the new configuration did not take: a failed reload */
        atomic_fetch_add_explicit(&s->r->hdr.sup.reload_errors, 1, memory_order_relaxed);
        outbox_config_free(&s->cfg);
        s->cfg = s->prev_cfg;
        s->have_prev = false;
        close(s->cfg_fd);
        s->cfg_fd = s->prev_cfg_fd;
        s->prev_cfg_fd = -1;
        s->target = (unsigned)s->cfg.workers;
    }
    end_rolling(s);
}

static void
start_rolling(sup_t *s, outbox_config_t *newcfg)
{
    int fd = -1;

    if (newcfg != NULL && (fd = config_memfd(newcfg)) < 0) {
        outbox_config_free(newcfg);
        return;
    }
    if (s->rolling) {
        /* A newer request replaces the one in progress; keep the oldest
         * known-good configuration to fall back to. */
        if (s->roll_new >= 0 && s->procs[s->roll_new].pid != 0)
            send_stop(s, s->roll_new, true);
        s->roll_new = s->roll_old = -1;
    }
    if (newcfg != NULL) {
        if (!s->have_prev) {
            s->prev_cfg = s->cfg;
            s->have_prev = true;
            s->prev_cfg_fd = s->cfg_fd;
        } else {
            outbox_config_free(&s->cfg);
            close(s->cfg_fd);
        }
        s->cfg = *newcfg;
        s->cfg_fd = fd;
        s->target = (unsigned)s->cfg.workers;
    }
    memset(s->fatal, 0, sizeof(s->fatal));
    memset(s->respawn_at, 0, sizeof(s->respawn_at));
    s->gen++;
    s->rolling = true;
    atomic_store_explicit(&s->r->hdr.sup_state, 2, memory_order_relaxed);
    log_info("rolling restart: replacing every worker one at a time");
}

static void
drive_rolling(sup_t *s)
{
    int i, old = -1;

    if (!s->rolling)
        return;
    if (s->roll_new >= 0) {
        if (is_ready(s, s->roll_new)) {
            if (s->roll_old >= 0 && s->procs[s->roll_old].pid != 0)
                send_stop(s, s->roll_old, true);
            s->roll_new = s->roll_old = -1;
        } else if (now_ms() > s->roll_deadline) {
            abort_rolling(s, "the replacement was not ready within ready_timeout");
            return;
        } else {
            return;
        }
    }
    /* Next: the lowest-numbered relay on an older generation, the keeper last. */
    for (i = 0; i < OUTBOX_STATS_SLOTS; i++) {
        const proc_t *p = &s->procs[i];

        if (p->pid == 0 || p->retiring || p->stop_sent || p->gen >= s->gen)
            continue;
        if (old < 0 || p->no < s->procs[old].no)
            old = i;
    }
    if (old < 0) {
        log_info("rolling restart done: every worker is of worker generation %" PRIu64, s->gen);
        atomic_fetch_add_explicit(&s->r->hdr.sup.restarts, 1, memory_order_relaxed);
        if (s->have_prev) /* a reload is applied once every worker runs it */
            atomic_fetch_add_explicit(&s->r->hdr.sup.reloads, 1, memory_order_relaxed);
        end_rolling(s);
        return;
    }
    if (!is_ready(s, old)) {
        /* Not serving anyway (starting, or failing): replace it directly. */
        send_stop(s, old, true);
        return;
    }
    s->roll_old = old;
    s->roll_new = spawn(s, s->procs[old].role, s->procs[old].no);
    if (s->roll_new < 0) {
        s->roll_old = -1;
        abort_rolling(s, "the replacement could not be started");
        return;
    }
    s->roll_deadline = now_ms() + s->cfg.ready_timeout_ms;
}

/* ---- signals ---- */

static void
reload(sup_t *s)
{
    outbox_config_t n;
    char err[600], restart[256];

    if (s->spec->reload == NULL) {
        log_info("SIGHUP: no configuration file; rolling restart with the same configuration");
        start_rolling(s, NULL);
        return;
    }
    if (s->spec->reload(&n, err, sizeof(err), s->spec->reload_arg) != OUTBOX_OK) {
        log_error("reload rejected, keeping the running configuration: %s", err);
        atomic_fetch_add_explicit(&s->r->hdr.sup.reload_errors, 1, memory_order_relaxed);
        return;
    }
    outbox_config_restart_keys(&s->cfg, &n, restart, sizeof(restart));
    if (restart[0] != '\0')
        log_warn("reload: %s changed; that takes a full restart (kept as it was)", restart);
    /* restart-only keys keep their running values */
    free(n.instance);
    free(n.stats_group);
    free(n.pid_file);
    n.instance = strdup(s->cfg.instance);
    n.stats_group = strdup(s->cfg.stats_group);
    n.pid_file = strdup(s->cfg.pid_file);
    if (n.instance == NULL || n.stats_group == NULL || n.pid_file == NULL) {
        log_error("reload: out of memory");
        outbox_config_free(&n);
        return;
    }
    outbox_log_set_level((int)n.log_level);
    if (strcmp(n.log_file, s->cfg.log_file) != 0 &&
        outbox_log_open((int)n.log_level, n.log_file, NULL) != 0)
        log_error("log file %s: cannot open, logging to stderr", n.log_file);
    log_info("configuration reloaded (%lld workers): applying it by a rolling restart",
             (long long)n.workers);
    start_rolling(s, &n);
}

static void
signal_all(sup_t *s, int sig)
{
    int i;

    for (i = 0; i < OUTBOX_STATS_SLOTS; i++)
        if (s->procs[i].pid != 0)
            kill(s->procs[i].pid, sig);
}

static void
begin_stop(sup_t *s)
{
    int i;

    log_info("stopping: draining %d workers (drain_timeout %llds)",
             count_live(s, OUTBOX_ROLE_RELAY, NULL), (long long)(s->cfg.drain_timeout_ms / 1000));
    s->phase = STOP_RELAYS;
    atomic_store_explicit(&s->r->hdr.sup_state, 3, memory_order_relaxed);
    for (i = 0; i < OUTBOX_STATS_SLOTS; i++)
        if (s->procs[i].pid != 0 && s->procs[i].role == OUTBOX_ROLE_RELAY)
            send_stop(s, i, true);
}

static void
drive_stop(sup_t *s)
{
    int i, k;

    if (s->phase == STOP_RELAYS) {
        if (count_live(s, OUTBOX_ROLE_RELAY, NULL) > 0)
            return;
        s->phase = STOP_KEEPER;
        s->phase_deadline = now_ms() + KEEPER_FLUSH_MS;
    }
    if (s->phase == STOP_KEEPER) {
        k = current_keeper(s);
        /* Hand the keeper the lock ids of workers killed at the drain. */
        if (k >= 0 && s->nrel > 0 && now_ms() < s->phase_deadline) {
            flush_releases(s);
            if (s->nrel > 0)
                return;
        }
        if (s->nrel > 0)
            log_warn("%d dead workers' locks not released; they expire after max_lock_time",
                     s->nrel);
        s->nrel = 0;
        for (i = 0; i < OUTBOX_STATS_SLOTS; i++)
            if (s->procs[i].pid != 0)
                send_stop(s, i, true);
        if (count_live(s, -1, NULL) == 0)
            s->phase = STOPPED;
    }
}

static bool
handle_signals(sup_t *s)
{
    int f = outbox_signals_take();

    if (f & OUTBOX_SIG_STOP_AGAIN) {
        log_warn("second stop signal: killing every worker now");
        signal_all(s, SIGKILL);
        return false;
    }
    if ((f & OUTBOX_SIG_STOP) && s->phase == RUNNING)
        begin_stop(s);
    if (f & OUTBOX_SIG_REOPEN) {
        outbox_log_reopen();
        signal_all(s, SIGUSR1);
    }
    if (s->phase != RUNNING)
        return true;
    if (f & OUTBOX_SIG_RELOAD)
        reload(s);
    else if (f & OUTBOX_SIG_RESTART) {
        log_info("SIGUSR2: rolling restart with the same configuration");
        start_rolling(s, NULL);
    }
    if ((f & OUTBOX_SIG_MORE) && s->target < OUTBOX_STATS_MAX_WORKERS) {
        s->target++;
        log_info("SIGTTIN: %u worker%s", s->target, s->target == 1 ? "" : "s");
    } else if (f & OUTBOX_SIG_MORE) {
        log_warn("SIGTTIN ignored: already at the most workers (%d)", OUTBOX_STATS_MAX_WORKERS);
    }
    if ((f & OUTBOX_SIG_FEWER) && s->target > 1) {
        s->target--;
        log_info("SIGTTOU: %u worker%s", s->target, s->target == 1 ? "" : "s");
    } else if (f & OUTBOX_SIG_FEWER) {
        log_warn("SIGTTOU ignored: already at one worker, the fewest");
    }
    return true;
}

static void
publish_header(sup_t *s)
{
    int nlive = 0, relays = count_live(s, OUTBOX_ROLE_RELAY, &nlive);

    atomic_store_explicit(&s->r->hdr.target_workers, s->target, memory_order_relaxed);
    atomic_store_explicit(&s->r->hdr.live_workers, (uint32_t)relays, memory_order_relaxed);
    atomic_store_explicit(&s->r->hdr.sup_heartbeat_us, real_us(), memory_order_relaxed);
}

int
outbox_supervisor_run(const outbox_supervisor_spec_t *spec)
{
    struct pollfd pfd;
    char err[512];
    gid_t gid = (gid_t)-1;
    int mode = 0600, code = 0;
    bool clean = true;
    sup_t *s;

    if ((s = calloc(1, sizeof(*s))) == NULL) {
        log_error("out of memory starting the supervisor");
        return 1;
    }
    s->spec = spec;
    s->self = getpid();
    s->lock_fd = s->cfg_fd = s->prev_cfg_fd = -1;
    s->roll_new = s->roll_old = -1;
    s->inc = (uint64_t)real_us(); /* lock ids stay unique across supervisor restarts */
    if (outbox_config_copy(&s->cfg, spec->cfg, err, sizeof(err)) != OUTBOX_OK) {
        log_error("%s", err);
        free(s);
        return 1;
    }
    s->target = (unsigned)s->cfg.workers;
    s->gen = 1;
    outbox_signals_second_stop_exits(0);
    if (outbox_signals_install() != 0) {
        code = 1;
        goto done;
    }
    if (lock_instance(s) != 0) {
        code = 2;
        goto done;
    }
    if (s->cfg.stats_group[0] != '\0') {
        struct group *g = getgrnam(s->cfg.stats_group);

        if (g == NULL) {
            log_error("stats_group: no group \"%s\"", s->cfg.stats_group);
            code = 2;
            goto done;
        }
        gid = g->gr_gid;
        mode = 0640;
    }
    if (outbox_stats_create(&s->r, spec->instance, mode, gid, err, sizeof(err)) != 0) {
        log_error("%s", err);
        code = 2;
        goto done;
    }
    if (write_pid_file(s) != 0 || (s->cfg_fd = config_memfd(&s->cfg)) < 0) {
        code = 2;
        goto done;
    }
    log_info("supervisor of instance \"%s\" (stats /dev/shm/outbox-%s, run %" PRIu64
             "): %u worker%s + keeper",
             spec->instance, spec->instance, s->r->hdr.generation, s->target,
             s->target == 1 ? "" : "s");
    pfd.fd = outbox_signals_fd();
    pfd.events = POLLIN;
    while (s->phase != STOPPED) {
        if (!handle_signals(s)) {
            clean = false;
            break;
        }
        reap(s);
        if (s->phase == RUNNING) {
            reconcile(s);
            drive_rolling(s);
            flush_releases(s);
        } else {
            drive_stop(s);
        }
        watch(s);
        publish_header(s);
        if (s->phase != STOPPED)
            poll(&pfd, 1, TICK_MS);
    }
    if (!clean) {
        /* immediate stop: collect what we killed, bounded */
        int64_t until = now_ms() + 2000;

        while (count_live(s, -1, NULL) > 0 && now_ms() < until) {
            reap(s);
            poll(NULL, 0, 20);
        }
        code = 1;
    } else if (s->startup_fail != 0) {
        code = s->startup_fail;
    } else {
        log_info("stopped: every worker exited");
    }
done:
    if (s->r != NULL)
        outbox_stats_destroy(s->r, spec->instance);
    if (s->cfg.pid_file != NULL && s->cfg.pid_file[0] != '\0' && s->lock_fd >= 0)
        unlink(s->cfg.pid_file);
    if (s->lock_fd >= 0) {
        char name[OUTBOX_STATS_NAME_MAX + 32];

        /* unlinked while still held: see lock_instance() */
        snprintf(name, sizeof(name), "/outbox-%s.lock", spec->instance);
        shm_unlink(name);
        close(s->lock_fd);
    }
    if (s->cfg_fd >= 0)
        close(s->cfg_fd);
    if (s->prev_cfg_fd >= 0)
        close(s->prev_cfg_fd);
    if (s->have_prev)
        outbox_config_free(&s->prev_cfg);
    outbox_config_free(&s->cfg);
    free(s);
    return code;
}
